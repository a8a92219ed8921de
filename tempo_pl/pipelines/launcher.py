"""Running one ``tempo-pl`` argument list (``["fit", "--config=...", ...]``) for a pipeline: in a child Python with
its output in a log file, or in this process; and stopping the children still running when a pipeline is interrupted.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Optional

from tempo_pl.cli import main as cli_main

LAUNCHERS = ("subprocess", "inprocess")
"""``subprocess``: one ``python -m tempo_pl`` per run (isolated, its memory freed, runs in parallel);
``inprocess``: in this Python (no start-up cost, one run at a time)."""


class Children:
    """The child processes a pipeline has running, so that an interrupt or a failed sibling can stop them all."""

    def __init__(self) -> None:
        self._running: dict[int, subprocess.Popen] = {}
        self._lock = threading.Lock()  # runs launched from several threads add and remove themselves

    def add(self, proc: subprocess.Popen) -> None:
        with self._lock:
            self._running[proc.pid] = proc

    def remove(self, proc: subprocess.Popen) -> None:
        with self._lock:
            self._running.pop(proc.pid, None)

    def stop(self) -> None:
        with self._lock:
            children = list(self._running.values())
        _stop(children)


def _stop(children: list[subprocess.Popen]) -> None:
    for proc in children:
        proc.send_signal(signal.SIGTERM)
    deadline = time.time() + 10
    for proc in children:
        try:
            proc.wait(timeout=max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            proc.kill()  # Lightning finishes the current step on SIGTERM; an RL step is worth no more waiting


def launch(
    args: list[str],
    launcher: str,
    log_file: Optional[Path] = None,
    *,
    threads: Optional[int] = None,
    offline: bool = False,
    children: Optional[Children] = None,
) -> float:
    """Run ``tempo-pl <args>`` and return the CPU seconds it took; raise ``RuntimeError`` naming the log file when
    the child fails.

    Args:
        args: the ``tempo-pl`` arguments, subcommand first.
        launcher: one of :data:`LAUNCHERS`.
        log_file: where a child's output goes (created with its folder); None leaves it on this console.
        threads: the child's ``OMP_NUM_THREADS``, for runs that share the cores; None inherits this environment.
        offline: default the child to ``HF_HUB_OFFLINE`` / ``HF_DATASETS_OFFLINE`` (a run that downloads nothing
            should not wait on hub lookups to time out).
        children: the registry that tracks the child while it runs, for :meth:`Children.stop`.
    """
    if launcher == "inprocess":
        return _run_inprocess(args)
    return _run_subprocess(args, log_file, _child_env(threads, offline), children or Children())


def _run_inprocess(args: list[str]) -> float:
    from unittest import mock

    cpu = time.process_time()
    # LightningCLI warns when args are given while sys.argv holds the pipeline's own arguments
    with mock.patch.object(sys, "argv", sys.argv[:1]):
        cli_main(args)
    return time.process_time() - cpu


def _child_env(threads: Optional[int], offline: bool) -> dict[str, str]:
    env = dict(os.environ)
    if threads is not None:
        env.update(OMP_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false")
    if offline:
        env.setdefault("HF_HUB_OFFLINE", "1")
        env.setdefault("HF_DATASETS_OFFLINE", "1")
    return env


def _run_subprocess(args: list[str], log_file: Optional[Path], env: dict[str, str], children: Children) -> float:
    cmd = [sys.executable, "-m", "tempo_pl", *args]
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.nullcontext() if log_file is None else log_file.open("w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=None if log is None else subprocess.STDOUT, env=env)
        children.add(proc)
        try:
            # wait4 rather than wait: it also returns the child's CPU time, a run's cost on any machine
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
        except BaseException:
            _stop([proc])  # an interrupt in this wait leaves no orphan run behind
            raise
        finally:
            children.remove(proc)
    if proc.returncode != 0:
        where = f"; its output is in {log_file}" if log_file is not None else ""
        raise RuntimeError(f"`{' '.join(cmd)}` failed with exit code {proc.returncode}{where}")
    return usage.ru_utime + usage.ru_stime

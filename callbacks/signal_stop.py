"""The stop request of SIGTERM / SIGINT / SIGUSR1, shared by the checkpoint callbacks of one run.

One path for every world size: each process's handler only notes the signal; the ranks agree on a stop through a
collective that every rank reaches in the training loop (after a training batch, after an evaluation, after a save),
never inside a handler. Lightning's own signal handlers are switched off for the fit (its SIGTERM handler calls a
collective from inside the handler when there are several processes, and its SLURM handler writes an ``hpc_ckpt``
in the middle of a step): see :func:`own_signals`.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from typing import Any, Optional

import torch
import torch.distributed as dist
from lightning.pytorch import Trainer
from lightning.pytorch.trainer.connectors.signal_connector import _SignalConnector
from lightning.pytorch.utilities import rank_zero_warn

SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
REQUEUE_SIGNAL = signal.SIGUSR1
"""SLURM's warning before preemption or the time limit (``sbatch --signal=USR1@T``): stop, save, requeue."""


class RunInterrupted(Exception):
    """A run stopped on a signal after saving its checkpoint; ``tempo-pl`` exits with 128 + the signal number."""

    def __init__(self, signum: int, rl_step: int, checkpoint: str, requeued: Optional[str] = None) -> None:
        self.signum, self.rl_step, self.checkpoint, self.requeued = signum, rl_step, checkpoint, requeued
        name = signal.Signals(signum).name
        then = (f"SLURM job {requeued} requeued: it resumes by itself" if requeued else
                "Resume with the same command and --ckpt_path last")
        super().__init__(f"stopped by {name} after {rl_step} RL steps; checkpoint {checkpoint}. {then}")


class _NoLightningSignals(_SignalConnector):
    """Lightning's signal connector with nothing registered: tempo-pl's :class:`StopRequest` handles the signals."""

    def register_signal_handlers(self) -> None:
        self.received_sigterm = False

    def teardown(self) -> None:
        pass


def own_signals(trainer: Trainer) -> None:
    """Switches Lightning's signal handlers off for ``trainer`` (SIGTERM broadcast, SLURM hpc save and requeue), so
    that a signal reaches only :class:`StopRequest`. Call before the fit registers them (a callback's ``setup``)."""
    if not isinstance(trainer._signal_connector, _NoLightningSignals):
        trainer._signal_connector = _NoLightningSignals(trainer)


class StopRequest:
    """Installed while a fit runs (by the first watching callback, restored by the last): the first signal asks the
    run to stop once the ranks agree (:meth:`agreed`); a second SIGINT stops at once (``KeyboardInterrupt``)."""

    _current: Optional["StopRequest"] = None

    def __init__(self) -> None:
        self.signum: Optional[int] = None
        self.decided = False
        self.watchers: list[Any] = []
        self._previous: dict[int, Any] = {}

    @classmethod
    def watch(cls, watcher: Any) -> Optional["StopRequest"]:
        """The run's stop request, installing the handlers for the first watcher; None off the main thread, where
        Python cannot handle signals."""
        if cls._current is None:
            request = cls()
            try:
                request._previous = {sig: signal.signal(sig, request._handle) for sig in SIGNALS}
            except ValueError:  # not the main thread
                rank_zero_warn("RLStepCheckpoint: fit runs outside the main thread; SIGTERM/SIGINT save nothing")
                return None
            cls._current = request
        cls._current.watchers.append(watcher)
        return cls._current

    def release(self, watcher: Any) -> None:
        if watcher in self.watchers:
            self.watchers.remove(watcher)
        if not self.watchers and StopRequest._current is self:
            for sig, previous in self._previous.items():
                signal.signal(sig, previous)
            StopRequest._current = None

    def is_last_watcher(self, watcher: Any) -> bool:
        return bool(self.watchers) and self.watchers[-1] is watcher

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # the second Ctrl-C: stop now, without the step in progress
        if self.signum is None:
            self.signum = signum
            os.write(2, (f"\n[tempo-pl] {signal.Signals(signum).name}: finishing the RL step in progress (and its "
                         "evaluation or save), then saving last.ckpt and stopping. Ctrl-C again stops at once, "
                         "without that step.\n").encode())

    def agreed(self, trainer: Trainer) -> bool:
        """Whether any rank was asked to stop: a collective that every rank calls at the same points of the training
        loop. Once agreed, every rank holds the same signal (the highest number asked) and later calls return True
        without communicating."""
        if self.decided:
            return True
        asked = torch.tensor([self.signum or 0], dtype=torch.int64)
        if dist.is_available() and dist.is_initialized() and trainer.world_size > 1:
            asked = asked.to(trainer.strategy.root_device)
            dist.all_reduce(asked, op=dist.ReduceOp.MAX)
        signum = int(asked.item())
        if signum:
            self.signum, self.decided = signum, True
        return self.decided


def requeue_slurm_job(signum: int, is_global_zero: bool) -> Optional[str]:
    """On SIGUSR1 inside a SLURM job, rank zero runs ``scontrol requeue <job id>``; returns the job id when the
    requeue succeeded (the same command line then resumes the run: :func:`tempo_pl.cli.resume_requeued_job`)."""
    if signum != REQUEUE_SIGNAL or not is_global_zero or not os.environ.get("SLURM_JOB_ID"):
        return None
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    job = f"{array_job}_{os.environ['SLURM_ARRAY_TASK_ID']}" if array_job else os.environ["SLURM_JOB_ID"]
    if not re.fullmatch(r"[0-9_]+", job):
        rank_zero_warn(f"not requeuing: SLURM job id {job!r} is not a number")
        return None
    try:
        done = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as err:
        print(f"[tempo-pl] scontrol requeue {job} failed ({err}); requeue the job by hand", file=sys.stderr)
        return None
    if done.returncode != 0:
        print(f"[tempo-pl] scontrol requeue {job} failed (exit {done.returncode}: {done.stderr.strip()}); requeue the "
              "job by hand", file=sys.stderr)
        return None
    return job

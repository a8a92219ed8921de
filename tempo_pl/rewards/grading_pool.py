"""The grading worker processes of this process: start, schedule, deadline, kill and replace.

math-verify's own timeout uses ``signal.alarm``, which works only in the main thread, and no signal can interrupt a
computation stuck in C. So every comparison runs in a persistent worker process
(:mod:`tempo_pl.rewards.grading_worker`) under a wall-clock deadline: the worker abandons a pair by its own alarm at
80% of the deadline, and the caller kills and replaces a worker that is still busy at the deadline. The workers of a
process are shared by its threads; a forked child starts its own.

A worker takes about a second to start: once per process, and in the background after a kill. That start-up is not
counted against a call's ``timeout``; a worker that cannot start raises ``RuntimeError`` with its own reason (the
exception it met, or how it exited), and so does one that has not started within :data:`WORKER_START_TIMEOUT_S`,
because that is a broken environment, not a wrong answer. :func:`start_workers` starts them ahead of time.

A worker that dies with a pair in flight (killed by the OS or a user, crashed in C) is replaced and the pair graded
again, once; a second death on it makes it a grader error: counted (:func:`grader_errors`), warned in the log, and
scored as not equal.
"""

from __future__ import annotations

import atexit
import logging
import math
import os
import subprocess
import sys
import threading
import time
from collections import deque
from contextlib import contextmanager
from typing import Iterator, Optional

from tempo_pl.rewards import grading_worker

log = logging.getLogger(__name__)

WORKER_START_TIMEOUT_S = 120.0
"""How long a worker may take to import math-verify before grading gives up with ``RuntimeError``."""

# The worker abandons a pair by itself after this share of the deadline, so that the caller rarely has to kill it.
_SOFT_DEADLINE_SHARE = 0.8


def check_processes(processes: Optional[int]) -> int:
    """The number of workers a caller asked for, validated; None means :func:`default_processes`."""
    if processes is None:
        return default_processes()
    if isinstance(processes, bool) or not isinstance(processes, int) or processes < 1:
        raise ValueError(f"processes must be a positive int or None, got {processes!r}")
    return processes


def default_processes() -> int:
    """Worker processes batch calls use by default: the CPUs this process may run on, shared among the local
    ranks of a ``torchrun`` job (``LOCAL_WORLD_SIZE``)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    try:
        local_ranks = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        local_ranks = 1
    return max(1, cpus // local_ranks)


# The worker loads grading_worker.py by path, not as a module of the package: the package's __init__ files may pull
# in torch, which would cost seconds and memory per worker. '' (the caller's cwd) must not shadow installed modules.
_BOOT = (
    "import sys; sys.path.pop(0)\n"
    "import importlib.util as u\n"
    "spec = u.spec_from_file_location('_tempo_pl_grading_worker', sys.argv[1])\n"
    "mod = u.module_from_spec(spec); spec.loader.exec_module(mod); mod.serve()\n"
)


class _Worker:
    """One grading process: it receives ``(pred, gold, budget_s, symmetric)`` and answers a bool."""

    def __init__(self, slot: int = 0) -> None:
        from multiprocessing.connection import Connection

        self.slot = slot  # which block of a batch's pairs this worker serves first
        self.process = subprocess.Popen(
            [sys.executable, "-c", _BOOT, os.path.abspath(grading_worker.__file__)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        self.send_conn = Connection(os.dup(self.process.stdin.fileno()), readable=False)
        self.recv_conn = Connection(os.dup(self.process.stdout.fileno()), writable=False)
        self.process.stdin.close()
        self.process.stdout.close()
        self.started_at = time.monotonic()
        self.ready = False
        self.item: Optional[int] = None  # index of the pair in flight
        self.deadline = math.inf
        self.start_error: Optional[str] = None
        """The worker's own reason when it could not start."""

    def take_start_message(self, message) -> None:
        """``"ready"``, or the worker's ``(START_FAILED, reason)``."""
        if message == "ready":
            self.ready = True
        elif isinstance(message, tuple) and message and message[0] == grading_worker.START_FAILED:
            self.start_error = str(message[1])

    def start_failure(self) -> RuntimeError:
        """The error of a worker that did not start: its own exception, else how its process ended."""
        if self.start_error is None:
            try:
                code = self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                code = None
            how = ("is still running" if code is None else f"was killed by signal {-code}" if code < 0
                   else f"exited with code {code}")
            reason = f"its process {how} before it was ready"
        else:
            reason = self.start_error
        return RuntimeError(f"a grading worker could not start: {reason} (worker: {sys.executable} "
                            f"{grading_worker.__file__})")

    def send(self, item: int, pred: str, gold: str, timeout: float, symmetric: bool = True) -> None:
        self.item, self.deadline = item, time.monotonic() + timeout
        self.send_conn.send((pred, gold, timeout * _SOFT_DEADLINE_SHARE, symmetric))

    def done(self) -> None:
        self.item, self.deadline = None, math.inf

    def alive_and_ready(self) -> bool:
        """Update ``ready`` without blocking; True while the process lives (started or still starting)."""
        try:
            if not self.ready and self.start_error is None and self.recv_conn.poll():
                self.take_start_message(self.recv_conn.recv())
        except (EOFError, OSError):
            return False
        return self.process.poll() is None

    def _close_pipes(self) -> None:
        for conn in (self.send_conn, self.recv_conn):
            try:
                conn.close()
            except OSError:
                pass

    def close(self) -> None:
        self._close_pipes()
        try:
            self.process.kill()
            self.process.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            pass

    def forget(self) -> None:
        """In a forked child: drop the pipe ends, leave the parent's process alone."""
        self._close_pipes()
        self.process.returncode = 0  # so that Popen never waits for or signals it from the child


class _WorkerPool:
    """The idle workers of this process; a caller checks workers out and returns the healthy ones."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle: list[_Worker] = []

    def acquire(self, count: int) -> list[_Worker]:
        """``count`` workers, started ones first (a worker released while still starting may be ready by now)."""
        with self._lock:
            alive = []
            for worker in self._idle:
                if worker.alive_and_ready() and worker.start_error is None:
                    alive.append(worker)
                else:
                    worker.close()
            alive.sort(key=lambda w: not w.ready)
            taken, self._idle = alive[:count], alive[count:]
        return taken + [_Worker() for _ in range(count - len(taken))]

    def release(self, workers: list[_Worker]) -> None:
        with self._lock:
            self._idle.extend(workers)

    @contextmanager
    def borrowed(self, count: int) -> Iterator[list[_Worker]]:
        """``count`` workers for one call: back to the pool when it returns, killed when it raises (a worker may
        then be mid-pair or still starting, and nothing else would ever read its answer)."""
        workers = self.acquire(count)
        try:
            yield workers
        except BaseException:
            for worker in workers:
                worker.close()
            raise
        self.release(workers)

    def shutdown(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for worker in idle:
            worker.close()

    def after_fork_in_child(self) -> None:
        for worker in self._idle:
            worker.forget()
        self._idle = []
        self._lock = threading.Lock()


_POOL = _WorkerPool()


def shutdown_workers() -> None:
    """Stop this process's idle grading workers; the next call starts new ones (they also stop at exit)."""
    _POOL.shutdown()


atexit.register(shutdown_workers)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_POOL.after_fork_in_child)


def start_workers(processes: Optional[int] = None) -> int:
    """Start grading workers ahead of time and wait until they are ready, so that the first batch does not pay
    for their start-up; returns how many idle workers the process now holds.

    Args:
        processes: how many workers to have ready (default :func:`default_processes`).
    """
    from multiprocessing.connection import wait

    with _POOL.borrowed(check_processes(processes)) as workers:
        deadline = time.monotonic() + WORKER_START_TIMEOUT_S
        while True:
            starting = [w for w in workers if not w.ready]
            if not starting:
                break
            if time.monotonic() > deadline:
                raise _start_failure(f"a grading worker did not start within {WORKER_START_TIMEOUT_S:.0f} s")
            for conn in wait([w.recv_conn for w in starting], timeout=1.0):
                worker = next(w for w in starting if w.recv_conn is conn)
                alive = worker.alive_and_ready()
                if worker.start_error is not None or (not alive and not worker.ready):
                    raise worker.start_failure()
    return len(_POOL._idle)


def _start_failure(message: str) -> RuntimeError:
    return RuntimeError(f"{message}; check that `{sys.executable} -c 'import math_verify'` works")


_GRADER_ERRORS = 0


def grader_errors() -> int:
    """Pairs of this process scored as not equal because their worker died on them twice (see the module doc)."""
    return _GRADER_ERRORS


def _count_grader_error(pred: str, gold: str) -> None:
    global _GRADER_ERRORS
    _GRADER_ERRORS += 1
    log.warning("grader error: the grading worker died twice on the pair (pred %r, gold %r); it is scored as not "
                "equal (%d grader error(s) in this process)", pred[:200], gold[:200], _GRADER_ERRORS)


class _Schedule:
    """Pending pair indices in one contiguous block per worker slot.

    Neighbouring pairs (the samples of one question, sharing its gold) go to the same worker, so that they hit
    its parse cache; a worker whose block is empty takes from the far end of the longest remaining block.
    """

    def __init__(self, count: int, slots: int) -> None:
        bounds = [count * i // slots for i in range(slots + 1)]
        self.blocks = [deque(range(bounds[i], bounds[i + 1])) for i in range(slots)]

    def next_for(self, slot: int) -> Optional[int]:
        if self.blocks[slot]:
            return self.blocks[slot].popleft()
        longest = max(self.blocks, key=len)
        return longest.pop() if longest else None


def run_pairs(pairs: list[tuple[str, str]], timeout: float, processes: int, symmetric: bool = True) -> list[bool]:
    """Compare normalised (pred, gold) pairs in up to ``processes`` workers, each pair within ``timeout``: math-verify
    with the gold as gold, or in either order when ``symmetric``."""
    from multiprocessing.connection import wait

    results = [False] * len(pairs)
    if not pairs:
        return results
    with _POOL.borrowed(max(1, min(processes, len(pairs)))) as workers:
        for slot, worker in enumerate(workers):
            worker.slot = slot
        schedule = _Schedule(len(pairs), len(workers))
        unanswered = len(pairs)
        regraded: set[int] = set()

        def died(worker: _Worker) -> int:
            """Replaces a worker that died; its pair goes back to the queue once. Returns the pairs it settles."""
            workers.remove(worker)
            worker.close()
            if not worker.ready:
                raise worker.start_failure()
            workers.append(_Worker(slot=worker.slot))
            if worker.item is None:
                return 0
            if worker.item not in regraded:
                regraded.add(worker.item)
                schedule.blocks[worker.slot].appendleft(worker.item)
                return 0
            _count_grader_error(*pairs[worker.item])
            return 1

        while unanswered:
            now = time.monotonic()
            for worker in list(workers):
                if now >= worker.deadline:
                    # too slow: the pair is wrong and the worker, maybe stuck in C code, is replaced; the
                    # replacement starts in the background whether or not this call still needs it
                    worker.close()
                    workers.remove(worker)
                    workers.append(_Worker(slot=worker.slot))
                    unanswered -= 1
                elif worker.ready and worker.item is None:
                    item = schedule.next_for(worker.slot)
                    if item is not None:
                        try:
                            worker.send(item, *pairs[item], timeout, symmetric)
                        except OSError:  # it died while idle: the pipe to it is broken
                            unanswered -= died(worker)
                elif not worker.ready and now - worker.started_at > WORKER_START_TIMEOUT_S:
                    raise _start_failure(f"a grading worker did not start within {WORKER_START_TIMEOUT_S:.0f} s")
            if not unanswered:
                break
            # wake at the next deadline, and at least once a second while a worker is starting
            wake = min([w.deadline for w in workers] + [now + 1.0])
            by_conn = {w.recv_conn: w for w in workers}
            for conn in wait(list(by_conn), timeout=max(0.0, wake - time.monotonic())):
                worker = by_conn[conn]
                try:
                    message = conn.recv()
                except (EOFError, OSError):  # the worker died: killed by the OS, or crashed in C
                    unanswered -= died(worker)
                    continue
                if not worker.ready:
                    worker.take_start_message(message)
                    if worker.start_error is not None:
                        raise worker.start_failure()
                elif worker.item is not None:
                    results[worker.item] = bool(message)
                    worker.done()
                    unanswered -= 1
    return results

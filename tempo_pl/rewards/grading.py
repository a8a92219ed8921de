r"""Answer grading: extract the final answer of a response and decide whether two answers are mathematically equal.

Extraction is string work done in the calling process, linear in the response length. Equivalence is
math-verify's (``parse`` + ``verify``, tried in both directions so that the relation is symmetric) with the
normalisation it needs around it: ``\boxed{}``, ``$...$``, ``\(...\)`` and ``\[...\]`` are unwrapped, thin-space
thousands separators (``1\,000``) are joined, and the bare answer is re-wrapped in ``$...$``, because math-verify
reads ``\{2,1\}`` or ``(1, 2)`` as LaTeX only inside math delimiters.

Bounded time. math-verify's own timeout uses ``signal.alarm``, which works only in the main thread, and no signal
can interrupt a computation stuck in C. So every comparison runs in a persistent worker process (a fresh
interpreter that imports only this file and math-verify) under a wall-clock deadline: the worker abandons a pair by
its own alarm at 80% of the deadline, and the caller kills and replaces a worker that is still busy at the
deadline. A cheap pre-filter rejects the obviously pathological answers (empty, too long, control characters,
unbalanced braces, numeric power towers, huge exponents) without a worker, and answers identical after
normalisation are equal without one. The workers of a process are shared by its threads; a forked child starts
its own.

A worker takes about a second to start: once per process, and in the background after a kill. That start-up is
not counted against a call's ``timeout``; a worker that has not started within :data:`WORKER_START_TIMEOUT_S`
raises ``RuntimeError``, because that is a broken environment, not a wrong answer. :func:`start_workers` starts
them ahead of time.

Example::

    >>> extract_answer("... so the area is $\\boxed{\\frac{3}{4}}$.")
    '\\frac{3}{4}'
    >>> is_equivalent("0.75", "\\frac34"), grade("Therefore\n#### 1,000", "1000")
    (True, True)
"""

from __future__ import annotations

import atexit
import math
import os
import re
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
from typing import Iterator, Optional

__all__ = [
    "DEFAULT_EXTRACTORS",
    "EXTRACTORS",
    "MAX_ANSWER_CHARS",
    "MIN_PAIRS_PER_WORKER",
    "WORKER_START_TIMEOUT_S",
    "answer_is_gradable",
    "are_equivalent",
    "cluster_answers",
    "default_processes",
    "extract_answer",
    "grade",
    "grade_many",
    "is_equivalent",
    "normalize_answer",
    "shutdown_workers",
    "start_workers",
]

DEFAULT_EXTRACTORS: tuple[str, ...] = ("boxed", "gsm8k")

MAX_ANSWER_CHARS = 1000
"""Answers longer than this after unwrapping are rejected unparsed: a final answer is short, a runaway generation
is not, and parsing cost grows with length (the longest MATH-500 answer has 64 characters)."""

WORKER_START_TIMEOUT_S = 120.0
"""How long a worker may take to import math-verify before grading gives up with ``RuntimeError``."""

MIN_PAIRS_PER_WORKER = 8
"""Batch calls use one worker per this many distinct pairs that need parsing, up to ``processes``. A worker
costs about a second of CPU to start (once per process) and each extra worker parses the shared golds again, so
tiny batches stay on one; a pair costs 5-30 ms, a round trip 0.2-0.3 ms. ``benchmarks/grading.py`` prints the
small-batch timings to re-check this on a given machine."""

# The worker abandons a pair by itself after this share of the deadline, so that the caller rarely has to kill it.
_SOFT_DEADLINE_SHARE = 0.8


# --------------------------------------------------------------------------------------------------- extraction

_BOXED = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
_GSM8K = re.compile(r"####[ \t]*([^\n]*)")


def _brace_depths(text: str, start: int = 0) -> Iterator[tuple[int, int]]:
    r"""``(index, depth after it)`` of every unescaped ``{`` and ``}`` from ``text[start]`` on (``\{`` is literal)."""
    depth, i, n = 0, start, len(text)
    while i < n:
        ch = text[i]
        if ch == "\\":
            i += 2
            continue
        if ch in "{}":
            depth += 1 if ch == "{" else -1
            yield i, depth
        i += 1


def _brace_group(text: str, open_at: int) -> Optional[str]:
    r"""Content of the ``{...}`` group opening at ``text[open_at]``, or None if it never closes (``\{`` is literal)."""
    for i, depth in _brace_depths(text, open_at):
        if depth == 0:
            return text[open_at + 1 : i]
    return None


def _extract_boxed(response: str) -> Optional[str]:
    last = None
    for last in _BOXED.finditer(response):
        pass
    if last is None:
        return None
    i = last.end()
    while i < len(response) and response[i] in " \t":
        i += 1
    if i < len(response) and response[i] == "{":
        content = _brace_group(response, i)
        return None if content is None else content.strip()
    token = re.match(r"[^\s$]+", response[i:])  # "\boxed 5$": the argument is one token
    return token.group(0) if token else None


def _extract_gsm8k(response: str) -> Optional[str]:
    last = None
    for last in _GSM8K.finditer(response):
        pass
    # "#### 18." states the same number as "#### 18"
    return None if last is None else last.group(1).strip().rstrip(".").strip()


EXTRACTORS = {"boxed": _extract_boxed, "gsm8k": _extract_gsm8k}
r"""Answer extractors by name. ``boxed``: the last ``\boxed{...}`` or ``\fbox{...}``, brace-matched (also
``\boxed 5``); an unterminated last box gives no answer. ``gsm8k``: the rest of the line after the last ``####``."""


def _check_extractors(extractors: Sequence[str]) -> tuple[str, ...]:
    names = (extractors,) if isinstance(extractors, str) else tuple(extractors)
    if not names or any(name not in EXTRACTORS for name in names):
        raise ValueError(f"extractors must be a non-empty sequence of {sorted(EXTRACTORS)}, got {list(names)!r}")
    return names


def extract_answer(response: str, extractors: Sequence[str] = DEFAULT_EXTRACTORS) -> Optional[str]:
    r"""The final answer of a model response, or None when it states none.

    Args:
        response: the decoded response.
        extractors: names from :data:`EXTRACTORS`, tried in order; the first that finds a non-empty answer wins.

    Example::

        >>> extract_answer("first \\boxed{1}, then \\boxed{\\{1,2\\}}")
        '\\{1,2\\}'
        >>> extract_answer("#### 42"), extract_answer("#### 42", extractors=("boxed",))
        ('42', None)
    """
    names = _check_extractors(extractors)
    if not isinstance(response, str):
        return None
    for name in names:
        answer = EXTRACTORS[name](response)
        if answer:
            return answer
    return None


# ------------------------------------------------------------------------------------------------ normalisation

_DELIMITERS = (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"))
_UNESCAPED_DOLLAR = re.compile(r"(?<!\\)\$")
# 1\,000 or 1~000: a thin space between digit groups is a thousands separator (math-verify knows 1{,}000, 10,\!080)
_THIN_SPACE_THOUSANDS = re.compile(r"(?<=\d)(?:\\[,:; ]|~)(?=\d{3}(?!\d))")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
# a numeric base raised to a numeric power tower: 9^{9^{9}}, 10^(10^8), 9^9^9 (billions of digits)
_NUMERIC_TOWER = re.compile(r"\d\s*\^\s*[{(]?\s*\d+(?:\.\d+)?\s*\^")
# an exponent of 8 digits or more: 10^{1000000000} is a 400 MB integer that GMP computes without a pause
_HUGE_EXPONENT = re.compile(r"\^\s*[{(]?\s*\d{8,}")


def normalize_answer(answer: Optional[str]) -> str:
    r"""The bare answer: ``\boxed{}`` (the last one) and math delimiters removed, thin-space thousands joined.

    Stray ``$`` (currency, or a delimiter the model did not close) are dropped: they carry no value. Anything that
    is not a string normalises to ``""``.

    Example::

        >>> normalize_answer(" $\\boxed{1\\,000}$ ")
        '1000'
    """
    if not isinstance(answer, str):
        return ""
    text = answer.strip()
    for _ in range(8):  # nested wrappers such as $\boxed{$x$}$; the cap keeps this linear
        before = text
        if _BOXED.search(text):
            boxed = _extract_boxed(text)
            if boxed is None:
                return text  # an unterminated box: left for the brace check to reject
            text = boxed
        for left, right in _DELIMITERS:
            if len(text) >= len(left) + len(right) and text.startswith(left) and text.endswith(right):
                text = text[len(left) : len(text) - len(right)].strip()
                break
        if text == before:
            break
    text = _UNESCAPED_DOLLAR.sub("", text)
    return _THIN_SPACE_THOUSANDS.sub("", text).strip()


def _braces_balanced(text: str) -> bool:
    depth = 0
    for _, depth in _brace_depths(text):
        if depth < 0:
            return False
    return depth == 0


def answer_is_gradable(answer: str) -> bool:
    r"""False for a normalised answer that the pre-filter rejects without parsing.

    Rejected: empty, longer than :data:`MAX_ANSWER_CHARS`, control characters other than tab and newlines,
    unbalanced ``{}`` (``\{`` does not count), numeric power towers such as ``9^{9^{9}}``, exponents of eight
    or more digits.
    """
    return (
        0 < len(answer) <= MAX_ANSWER_CHARS
        and _CONTROL.search(answer) is None
        and _braces_balanced(answer)
        and _NUMERIC_TOWER.search(answer) is None
        and _HUGE_EXPONENT.search(answer) is None
    )


def _prepare(pred: Optional[str], gold: Optional[str]) -> tuple[Optional[bool], str, str]:
    """Normalise a pair and decide it without a worker where possible: (verdict or None, pred, gold)."""
    p, g = normalize_answer(pred), normalize_answer(gold)
    if not (answer_is_gradable(p) and answer_is_gradable(g)):
        return False, p, g
    if p.replace(" ", "") == g.replace(" ", ""):
        return True, p, g
    return None, p, g


def _check_timeout(timeout: float) -> float:
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout < math.inf:
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
    return float(timeout)


def _check_processes(processes: Optional[int]) -> int:
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


# ------------------------------------------------------------------------------------------------------ workers

# The worker imports this file by path, not as ``tempo_pl.rewards.grading``: the package's __init__ files may pull
# in torch, which would cost seconds and memory per worker. '' (the caller's cwd) must not shadow installed modules.
_BOOT = (
    "import sys; sys.path.pop(0)\n"
    "import importlib.util as u\n"
    "spec = u.spec_from_file_location('_tempo_pl_grading_worker', sys.argv[1])\n"
    "mod = u.module_from_spec(spec); spec.loader.exec_module(mod); mod._serve()\n"
)


class _Worker:
    """One grading process: it receives ``(pred, gold, budget_s)`` and answers a bool."""

    def __init__(self, slot: int = 0) -> None:
        from multiprocessing.connection import Connection

        self.slot = slot  # which block of a batch's pairs this worker serves first
        self.process = subprocess.Popen(
            [sys.executable, "-c", _BOOT, os.path.abspath(__file__)],
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

    def send(self, item: int, pred: str, gold: str, timeout: float) -> None:
        self.item, self.deadline = item, time.monotonic() + timeout
        self.send_conn.send((pred, gold, timeout * _SOFT_DEADLINE_SHARE))

    def done(self) -> None:
        self.item, self.deadline = None, math.inf

    def alive_and_ready(self) -> bool:
        """Update ``ready`` without blocking; True while the process lives (started or still starting)."""
        try:
            if not self.ready and self.recv_conn.poll():
                self.ready = self.recv_conn.recv() == "ready"
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
                if worker.alive_and_ready():
                    alive.append(worker)
                else:
                    worker.close()
            alive.sort(key=lambda w: not w.ready)
            taken, self._idle = alive[:count], alive[count:]
        return taken + [_Worker() for _ in range(count - len(taken))]

    def release(self, workers: list[_Worker]) -> None:
        with self._lock:
            self._idle.extend(workers)

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

    workers = _POOL.acquire(_check_processes(processes))
    try:
        deadline = time.monotonic() + WORKER_START_TIMEOUT_S
        while True:
            starting = [w for w in workers if not w.ready]
            if not starting:
                break
            if time.monotonic() > deadline:
                raise _start_failure(f"a grading worker did not start within {WORKER_START_TIMEOUT_S:.0f} s")
            for conn in wait([w.recv_conn for w in starting], timeout=1.0):
                worker = next(w for w in starting if w.recv_conn is conn)
                if not worker.alive_and_ready() and not worker.ready:
                    raise _start_failure("a grading worker exited while starting")
    except BaseException:
        for worker in workers:
            worker.close()
        raise
    _POOL.release(workers)
    return len(_POOL._idle)


def _start_failure(message: str) -> RuntimeError:
    return RuntimeError(f"{message}; check that `{sys.executable} -c 'import math_verify'` works")


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


def _run_pairs(pairs: list[tuple[str, str]], timeout: float, processes: int) -> list[bool]:
    """Compare normalised (pred, gold) pairs in up to ``processes`` workers, each pair within ``timeout``."""
    from multiprocessing.connection import wait

    results = [False] * len(pairs)
    if not pairs:
        return results
    workers = _POOL.acquire(max(1, min(processes, len(pairs))))
    for slot, worker in enumerate(workers):
        worker.slot = slot
    schedule = _Schedule(len(pairs), len(workers))
    unanswered = len(pairs)
    try:
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
                        worker.send(item, *pairs[item], timeout)
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
                    workers.remove(worker)
                    worker.close()
                    if not worker.ready:
                        raise _start_failure("a grading worker exited while starting") from None
                    if worker.item is not None:
                        unanswered -= 1
                    workers.append(_Worker(slot=worker.slot))
                    continue
                if message == "ready":
                    worker.ready = True
                elif worker.item is not None:
                    results[worker.item] = bool(message)
                    worker.done()
                    unanswered -= 1
    except BaseException:
        for worker in workers:
            worker.close()
        raise
    _POOL.release(workers)
    return results


def _decide(prepared: list[tuple[Optional[bool], str, str]], timeout: float, processes: int) -> list[bool]:
    """Verdicts of prepared pairs; the undecided ones go to workers once per distinct pair (the n samples of a
    question often repeat an answer)."""
    todo = list(dict.fromkeys((p, g) for verdict, p, g in prepared if verdict is None))
    workers = max(1, min(processes, len(todo) // MIN_PAIRS_PER_WORKER))
    decided = dict(zip(todo, _run_pairs(todo, timeout, workers)))
    return [bool(verdict) if verdict is not None else decided[(p, g)] for verdict, p, g in prepared]


# ---------------------------------------------------------------------------------------------------- public API


def is_equivalent(pred: Optional[str], gold: Optional[str], timeout: float = 2.0) -> bool:
    r"""True when two bare answers are mathematically the same; False for anything unparsable or too slow.

    Equal means that math-verify accepts the pair in at least one of the two argument orders (it is lenient in
    one order only for some forms: an interval against an inequality, ``(-\infty, 3]`` against ``x \le 3``, and a
    set against a same-length tuple, ``\{1,2\}`` against ``(2,1)``; it also reads ``(1,2)`` as a possible pair).

    Args:
        pred: an answer, bare or wrapped in ``$...$`` / ``\boxed{}``; None is never equal to anything.
        gold: the reference answer, same forms. The relation is symmetric: the arguments may be swapped.
        timeout: wall-clock bound in seconds (worker start-up excluded, see the module docstring).

    Example::

        >>> is_equivalent("\\{2,1\\}", "$\\{1, 2\\}$"), is_equivalent("x=3", "3"), is_equivalent("1/3", "0.33")
        (True, True, False)
    """
    return _decide([_prepare(pred, gold)], _check_timeout(timeout), 1)[0]


def are_equivalent(
    preds: Sequence[Optional[str]],
    golds: Sequence[Optional[str]],
    processes: Optional[int] = None,
    timeout: float = 2.0,
) -> list[bool]:
    r""":func:`is_equivalent` for many pairs at once, spread over worker processes.

    Args:
        preds: answers.
        golds: one reference answer per entry of ``preds``.
        processes: most worker processes to use (default :func:`default_processes`); fewer for small batches,
            one per :data:`MIN_PAIRS_PER_WORKER` pairs that need parsing.
        timeout: per-pair bound in seconds.

    Example::

        >>> are_equivalent(["0.5", "2", None], ["\\frac12", "3", "1"])
        [True, False, False]
    """
    if len(preds) != len(golds):
        raise ValueError(f"got {len(preds)} answers but {len(golds)} golds")
    processes, timeout = _check_processes(processes), _check_timeout(timeout)
    return _decide([_prepare(p, g) for p, g in zip(preds, golds)], timeout, processes)


def grade(response: str, gold: str, timeout: float = 2.0, extractors: Sequence[str] = DEFAULT_EXTRACTORS) -> bool:
    """Extract the final answer of ``response`` (:func:`extract_answer`) and compare it with ``gold``."""
    return grade_many([response], [gold], processes=1, timeout=timeout, extractors=extractors)[0]


def grade_many(
    responses: Sequence[str],
    golds: Sequence[str],
    processes: Optional[int] = None,
    timeout: float = 2.0,
    extractors: Sequence[str] = DEFAULT_EXTRACTORS,
) -> list[bool]:
    r""":func:`grade` for many responses, each against its own gold, spread over worker processes.

    Args:
        responses: decoded responses.
        golds: one reference answer per response.
        processes: as for :func:`are_equivalent`.
        timeout: per-response bound in seconds.
        extractors: see :func:`extract_answer`.

    Example::

        >>> grade_many(["\\boxed{2}", "\\boxed{3}", "no answer"], ["2", "2", "2"])
        [True, False, False]
    """
    if len(responses) != len(golds):
        raise ValueError(f"grade_many got {len(responses)} responses but {len(golds)} golds")
    names = _check_extractors(extractors)
    answers = [extract_answer(response, names) for response in responses]
    return are_equivalent(answers, golds, processes=processes, timeout=timeout)


def cluster_answers(answers: Sequence[Optional[str]], timeout: float = 2.0) -> list[int]:
    r"""Group answers into equivalence classes; cluster ids count up in order of first appearance.

    Each answer joins the earliest cluster whose representative (first member) is equivalent to it, else opens a
    new one. None, empty and pre-filter-rejected answers each get a singleton cluster. Identical answers (after
    normalisation) are grouped without parsing, so the cost is one comparison per distinct answer and earlier
    cluster (spread over worker processes).

    Example::

        >>> cluster_answers(["1/2", "0.5", None, "\\frac12", "3", None])
        [0, 0, 1, 0, 2, 3]
    """
    timeout = _check_timeout(timeout)
    processes = default_processes()
    cluster_of_text: dict[str, int] = {}
    representatives: list[tuple[int, str]] = []  # (cluster id, normalised text), clusters of real answers only
    ids: list[int] = []
    next_id = 0
    for text in map(normalize_answer, answers):
        if not answer_is_gradable(text):
            ids.append(next_id)
            next_id += 1
            continue
        if text not in cluster_of_text:
            hits = _decide([_prepare(text, rep) for _, rep in representatives], timeout, processes)
            found = next((cid for (cid, _), hit in zip(representatives, hits) if hit), None)
            if found is None:
                found, next_id = next_id, next_id + 1
                representatives.append((found, text))
            cluster_of_text[text] = found
        ids.append(cluster_of_text[text])
    return ids


# ------------------------------------------------------------------------------------------- worker process side


class _SoftTimeout(BaseException):
    """Raised by the worker's alarm; a BaseException, so that math-verify's ``except Exception`` lets it through."""


# one pair per comparison path of math-verify: symbolic, number against set, interval against relation, numeric
_WARM_UP_PAIRS = (("x+1", "1+x"), ("\\frac{\\sqrt{2}}{2}", "\\{1,2\\}"), ("(1,2]", "x=2"), ("\\frac{14}{3}", "p-q"))


def _serve() -> None:  # pragma: no cover - runs in the worker process; exercised through the public API
    import logging
    import signal
    import warnings
    from functools import lru_cache
    from multiprocessing.connection import Connection

    # the protocol owns the original stdout; anything a library prints goes to stderr
    out = Connection(os.dup(1), readable=False)
    os.dup2(2, 1)
    inp = Connection(os.dup(0), writable=False)
    logging.disable(logging.WARNING)  # math-verify warns on every call when its own timeout is off
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the caller's to handle; it closes or kills us
    warnings.simplefilter("ignore")

    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    config = [LatexExtractionConfig(), ExprExtractionConfig()]

    @lru_cache(maxsize=4096)  # golds repeat across a rollout, answers across samples
    def parsed(text: str) -> list:
        return parse(f"${text}$", extraction_config=config, parsing_timeout=None)

    def on_alarm(signum, frame):
        raise _SoftTimeout()

    signal.signal(signal.SIGALRM, on_alarm)
    # the first parse loads the LaTeX grammar and the first comparisons of each kind import more of sympy
    # (about 0.5 s in all): pay for that before reporting ready, not inside the first pairs' deadlines
    for a, b in _WARM_UP_PAIRS:
        verify(parsed(a), parsed(b), timeout_seconds=None)
        verify(parsed(b), parsed(a), timeout_seconds=None)
    out.send("ready")
    while True:
        try:
            pred, gold, budget = inp.recv()
        except (EOFError, OSError):
            return
        verdict = False
        try:
            signal.setitimer(signal.ITIMER_REAL, max(budget, 1e-3))
            try:
                p, g = parsed(pred), parsed(gold)
                verdict = bool(p and g) and (verify(g, p, timeout_seconds=None) or verify(p, g, timeout_seconds=None))
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
        except _SoftTimeout:
            verdict = False
        except Exception:  # a parser bug must not take the worker down: the pair is simply not equal
            verdict = False
        try:
            out.send(verdict)
        except OSError:
            return

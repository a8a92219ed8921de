"""The grading worker process: answers math-verify's verdict on each ``(pred, gold, budget_s, symmetric)`` it
receives: ``verify(gold, pred)``, or either order when ``symmetric``.

:mod:`tempo_pl.rewards.grading_pool` starts it as a fresh interpreter that loads this file by path and calls
:func:`serve`, so it must import nothing but the standard library and math-verify (the package's ``__init__`` files
would pull in torch: seconds and memory per worker). It abandons a pair by its own alarm once the budget is spent;
the pool kills it if it is still busy at the caller's deadline (stuck in C code, where no signal reaches).
"""

from __future__ import annotations

import os


START_FAILED = "start failed"
"""First element of the message a worker sends instead of ``"ready"`` when it cannot start: ``(START_FAILED, reason)``."""


class _SoftTimeout(BaseException):
    """Raised by the worker's alarm; a BaseException, so that math-verify's ``except Exception`` lets it through."""


# one pair per comparison path of math-verify: symbolic, number against set, interval against relation, numeric
_WARM_UP_PAIRS = (("x+1", "1+x"), ("\\frac{\\sqrt{2}}{2}", "\\{1,2\\}"), ("(1,2]", "x=2"), ("\\frac{14}{3}", "p-q"))


def serve() -> None:  # pragma: no cover - runs in the worker process; exercised through the public API
    import logging
    import signal
    import warnings
    from multiprocessing.connection import Connection

    # the protocol owns the original stdout; anything a library prints goes to stderr
    out = Connection(os.dup(1), readable=False)
    os.dup2(2, 1)
    inp = Connection(os.dup(0), writable=False)
    logging.disable(logging.WARNING)  # math-verify warns on every call when its own timeout is off
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the caller's to handle; it closes or kills us
    warnings.simplefilter("ignore")
    try:
        parsed, verify = _start()
    except Exception as err:  # the caller raises with this, the worker's own reason
        out.send((START_FAILED, f"{type(err).__name__}: {err}"))
        return
    out.send("ready")
    while True:
        try:
            pred, gold, budget, symmetric = inp.recv()
        except (EOFError, OSError):
            return
        verdict = False
        try:
            signal.setitimer(signal.ITIMER_REAL, max(budget, 1e-3))
            try:
                p, g = parsed(pred), parsed(gold)
                verdict = bool(p and g) and (verify(g, p, timeout_seconds=None)
                                             or (symmetric and verify(p, g, timeout_seconds=None)))
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


def _start():  # pragma: no cover - runs in the worker process
    """math-verify imported and warmed up; returns the cached parser and ``verify``."""
    import signal
    from functools import lru_cache

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
    return parsed, verify

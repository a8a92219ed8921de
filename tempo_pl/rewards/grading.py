r"""Answer grading: extract the final answer of a response and decide whether two answers are mathematically equal.

This module is the grader's public face; the work is done in four others, one concern each:

- :mod:`~tempo_pl.rewards.answer_extraction`: the final answer of a response (``\boxed{}``, ``####``; in
  ``lenient`` mode also "the answer is ..." and the last LaTeX or plain expression, an expression without math
  delimiters read whole), string work in the calling process, linear in the response length;
- :mod:`~tempo_pl.rewards.answer_normalization`: the bare answer (``$...$``, ``\(...\)``, ``\[...\]`` and boxes
  unwrapped, ``1\,000`` joined) and the pre-filter that rejects pathological answers without parsing;
- :mod:`~tempo_pl.rewards.grading_pool`: the worker processes that bound each comparison in wall-clock time;
- :mod:`~tempo_pl.rewards.grading_worker`: what a worker runs, math-verify's ``parse`` + ``verify``.

Equivalence is math-verify's on the bare answer re-wrapped in ``$...$`` (math-verify reads ``\{2,1\}`` or
``(1, 2)`` as LaTeX only inside math delimiters). Between two answers (:func:`is_equivalent`, clustering) it is tried
in both directions so that the relation is symmetric; a response against its gold (:func:`grade`) is math-verify's
verdict with the gold as the gold, as the reference's reward calls it: an answer that is only part of the gold
(``11a+c`` for ``7 = 11a+c``, ``0`` for ``a + 3z = 0``, the set ``\{1,3\}`` for the pair ``(3,1)``) is wrong.
Answers identical after normalisation are equal without a worker, before any pre-filter: a power tower that is
the gold answer verbatim is right.

Example::

    >>> extract_answer("... so the area is $\\boxed{\\frac{3}{4}}$.")
    '\\frac{3}{4}'
    >>> is_equivalent("0.75", "\\frac34"), grade("Therefore\n#### 1,000", "1000")
    (True, True)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Optional

from tempo_pl.rewards.answer_extraction import (
    DEFAULT_EXTRACTORS,
    EXTRACTION_MODES,
    EXTRACTORS,
    check_extraction,
    check_extractors,
    extract_answer,
)
from tempo_pl.rewards.answer_normalization import MAX_ANSWER_CHARS, answer_is_gradable, normalize_answer
from tempo_pl.rewards.grading_pool import (
    WORKER_START_TIMEOUT_S,
    check_processes,
    default_processes,
    run_pairs,
    shutdown_workers,
    start_workers,
)

__all__ = [
    "DEFAULT_EXTRACTORS",
    "EXTRACTION_MODES",
    "EXTRACTORS",
    "MAX_ANSWER_CHARS",
    "MIN_PAIRS_PER_WORKER",
    "WORKER_START_TIMEOUT_S",
    "answer_is_gradable",
    "are_equivalent",
    "cluster_answers",
    "default_processes",
    "extract_answer",
    "extractor_chain",
    "grade",
    "grade_many",
    "gold_problem",
    "is_equivalent",
    "normalize_answer",
    "shutdown_workers",
    "start_workers",
]

MIN_PAIRS_PER_WORKER = 8
"""Batch calls use one worker per this many distinct pairs that need parsing, up to ``processes``. A worker
costs about a second of CPU to start (once per process) and each extra worker parses the shared golds again, so
tiny batches stay on one; a pair costs 5-30 ms, a round trip 0.2-0.3 ms. ``benchmarks/grading_speed.py`` prints the
small-batch timings to re-check this on a given machine."""


def _prepare(pred: Optional[str], gold: Optional[str]) -> tuple[Optional[bool], str, str]:
    """Normalise a pair and decide it without a worker where possible: (verdict or None, pred, gold)."""
    p, g = normalize_answer(pred), normalize_answer(gold)
    if not p or not g:
        return False, p, g
    # identical answers first: the pre-filter guards parsing cost, and comparing two strings parses nothing
    if p.replace(" ", "") == g.replace(" ", ""):
        return True, p, g
    if not (answer_is_gradable(p) and answer_is_gradable(g)):
        return False, p, g
    return None, p, g


def gold_problem(gold: Optional[str]) -> Optional[str]:
    r"""Why no response can ever be graded equal to ``gold`` (empty, not a string), or None when one can.

    Every other gold is matched at least by a response that states it verbatim (identical answers are equal before
    any pre-filter), so a ``None`` here means the gold is gradable. Example::

        >>> gold_problem("$$"), gold_problem(None), gold_problem("9^{9^{9}}")
        ('it is empty after removing $...$ and \boxed{}', 'it is not a string (NoneType)', None)
    """
    if not isinstance(gold, str):
        return f"it is not a string ({type(gold).__name__})"
    if not normalize_answer(gold):
        return "it is empty after removing $...$ and \\boxed{}"
    return None


def _check_timeout(timeout: float) -> float:
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout < math.inf:
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
    return float(timeout)


def _decide(
    prepared: list[tuple[Optional[bool], str, str]], timeout: float, processes: int, symmetric: bool = True
) -> list[bool]:
    """Verdicts of prepared pairs; the undecided ones go to workers once per distinct pair (the n samples of a
    question often repeat an answer)."""
    todo = list(dict.fromkeys((p, g) for verdict, p, g in prepared if verdict is None))
    workers = max(1, min(processes, len(todo) // MIN_PAIRS_PER_WORKER))
    decided = dict(zip(todo, run_pairs(todo, timeout, workers, symmetric)))
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
        timeout: wall-clock bound in seconds (worker start-up excluded, see :mod:`~tempo_pl.rewards.grading_pool`).

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
    *,
    symmetric: bool = True,
) -> list[bool]:
    r""":func:`is_equivalent` for many pairs at once, spread over worker processes.

    Args:
        preds: answers.
        golds: one reference answer per entry of ``preds``.
        processes: most worker processes to use (default :func:`default_processes`); fewer for small batches,
            one per :data:`MIN_PAIRS_PER_WORKER` pairs that need parsing.
        timeout: per-pair bound in seconds.
        symmetric: equal when math-verify accepts either order (default); False: with ``golds`` as the gold only.

    Example::

        >>> are_equivalent(["0.5", "2", None], ["\\frac12", "3", "1"])
        [True, False, False]
    """
    if len(preds) != len(golds):
        raise ValueError(f"got {len(preds)} answers but {len(golds)} golds")
    processes, timeout = check_processes(processes), _check_timeout(timeout)
    return _decide([_prepare(p, g) for p, g in zip(preds, golds)], timeout, processes, symmetric)


def extractor_chain(extractors: Optional[Sequence[str]], extraction: str) -> tuple[str, ...]:
    """The extractors a call uses: ``extractors`` when given (with the default ``extraction`` only), else the chain
    of ``extraction`` (:data:`EXTRACTION_MODES`)."""
    chain = check_extraction(extraction)
    if extractors is None:
        return chain
    if extraction != "boxed":
        raise ValueError(f"give either extractors ({list(extractors)!r}) or extraction={extraction!r}, not both")
    return check_extractors(extractors)


def grade(
    response: str,
    gold: str,
    timeout: float = 2.0,
    extractors: Optional[Sequence[str]] = None,
    *,
    extraction: str = "boxed",
) -> bool:
    r"""Extract the final answer of ``response`` (:func:`extract_answer`) and compare it with ``gold``.

    Args:
        response: a decoded response; anything that is not a string is wrong.
        gold: the reference answer.
        timeout: wall-clock bound in seconds; a slower comparison is wrong.
        extractors: an explicit extractor chain (:data:`EXTRACTORS`); default: the chain of ``extraction``.
        extraction: ``boxed`` (``\boxed{}`` and ``####`` only: the training reward, as the reference) or
            ``lenient`` (then "the answer is ...", then the last LaTeX or plain expression: evaluation of answers
            written in prose).

    Example::

        >>> grade("So the answer is 3/4.", "0.75"), grade("So the answer is 3/4.", "0.75", extraction="lenient")
        (False, True)
    """
    return grade_many([response], [gold], processes=1, timeout=timeout, extractors=extractors,
                      extraction=extraction)[0]


def grade_many(
    responses: Sequence[str],
    golds: Sequence[str],
    processes: Optional[int] = None,
    timeout: float = 2.0,
    extractors: Optional[Sequence[str]] = None,
    *,
    extraction: str = "boxed",
) -> list[bool]:
    r""":func:`grade` for many responses, each against its own gold, spread over worker processes.

    Args:
        responses: decoded responses.
        golds: one reference answer per response.
        processes: as for :func:`are_equivalent`.
        timeout: per-response bound in seconds.
        extractors: see :func:`extract_answer`; default: the chain of ``extraction``.
        extraction: ``boxed`` or ``lenient``, see :func:`grade`.

    Example::

        >>> grade_many(["\\boxed{2}", "\\boxed{3}", "no answer"], ["2", "2", "2"])
        [True, False, False]
    """
    if len(responses) != len(golds):
        raise ValueError(f"grade_many got {len(responses)} responses but {len(golds)} golds")
    names = extractor_chain(extractors, extraction)
    answers = [extract_answer(response, names) for response in responses]
    return are_equivalent(answers, golds, processes=processes, timeout=timeout, symmetric=False)


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


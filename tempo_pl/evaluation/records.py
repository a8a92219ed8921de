"""Evaluation metrics over n sampled responses per question: accuracy, diversity and critic calibration.

The evaluation loop scores each question once (:func:`score_question` or, batched, :func:`score_questions`: grade,
extract, cluster answers), then calls :func:`summarize_questions` for the numbers it logs:

- ``mean@n``: average accuracy over the n samples ("avg@16" in the TEMPO tables).
- ``pass@j`` for each requested j <= n: the unbiased estimator 1 - C(n-c, j)/C(n, j) (c correct samples).
- ``maj@n``: accuracy of the majority answer (answers grouped by mathematical equivalence, no-answer samples do
  not vote; a tie goes to the answer that appeared first).
- ``distinct_answers``: distinct answers per question; ``answer_entropy``: entropy (nats) of the answer
  distribution, both over the samples that state an answer; ``no_answer_rate``: share of samples without one.
- with critic values (the last-token value V in [-1, 1] of each response): ``critic_auroc`` (AUROC of V against
  correctness), ``critic_ece`` (expected calibration error of (V+1)/2, 10 equal-width bins) and
  ``critic_explained_variance`` (1 - Var(s - V)/Var(s) with s = +1 correct / -1 wrong, the reference code's
  definition) and ``critic_brier`` (mean squared error of (V+1)/2 against 1 correct / 0 wrong: 0 is perfect, 0.25
  is a constant V = 0), pooled over all responses; NaN where undefined (all responses right, or all wrong). Pooled AUROC
  mostly measures whether the critic tells easy questions from hard ones; ``critic_within_question_auroc`` is the
  AUROC among the responses of one question, averaged over the questions with right and wrong responses (NaN if
  none): whether the critic can rank the samples of a question, which is what a critic-valued reward on
  unlabeled questions needs (0.5 = no better than chance).

Every key is averaged over questions, each question weighing the same.

Example::

    >>> record = score_question("q1", "4", ["\\\\boxed{4}", "\\\\boxed{2+2}", "\\\\boxed{5}", "no idea"])
    >>> record.correct, record.clusters
    ([True, True, False, False], [0, 0, 1, 2])
    >>> summarize_questions([record], ks=[1, 2])["pass@2"]  # 1 - C(2,2)/C(4,2) = 1 - 1/6
    0.8333333333333334
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Union

import torch
from torchmetrics.classification import BinaryAUROC, BinaryCalibrationError
from torchmetrics.regression import ExplainedVariance

from tempo_pl.rewards.graders import Grader, MathGrader
from tempo_pl.rewards.grading import (
    are_equivalent,
    cluster_answers,
    extract_answer,
    extractor_chain,
)
from tempo_pl.rewards.group_answers import answer_entropy, answered_cluster_sizes, majority_cluster

__all__ = [
    "CALIBRATION_BINS",
    "QuestionResult",
    "answer_entropy",
    "critic_calibration",
    "majority_correct",
    "pass_at_k",
    "score_question",
    "score_questions",
    "summarize_questions",
    "write_question_jsonl",
]

CALIBRATION_BINS = 10
"""Equal-width confidence bins of ``critic_ece``."""


@dataclass
class QuestionResult:
    """The n graded responses of one question.

    Args:
        question_id: the row id of the question.
        gold: its reference answer.
        responses: the n decoded responses.
        answers: the extracted final answer of each response, None where it states none.
        correct: whether each response is graded correct.
        values: optional last-token critic value of each response.
        clusters: answer cluster id of each response (equivalent answers share an id, numbered in order of first
            appearance; every no-answer response has its own); computed by :func:`summarize_questions` if None.
        prompt: the prompt text the policy read (chat template applied, after any left truncation), when known.
        response_lengths: each response's length in tokens (its EOS included), when known.
        truncated: whether each response hit the token limit without an EOS, when known.
        scores: each response's share of the gold's parts answered right, for graders of several parts (physics);
            ``correct`` is then "every part right".

    Example::

        >>> record = QuestionResult("q1", "4", ["\\\\boxed{4}", "?"], ["4", None], [True, False], values=[0.8, -0.6])
        >>> record.n, record.num_correct
        (2, 1)
    """

    question_id: str
    gold: str
    responses: list[str]
    answers: list[Optional[str]]
    correct: list[bool]
    values: Optional[list[float]] = None
    clusters: Optional[list[int]] = None
    prompt: Optional[str] = None
    response_lengths: Optional[list[int]] = None
    truncated: Optional[list[bool]] = None
    scores: Optional[list[float]] = None

    def __post_init__(self) -> None:
        n = len(self.responses)
        if n == 0:
            raise ValueError(f"QuestionResult {self.question_id!r} has no responses")
        for name in ("answers", "correct", "values", "clusters", "response_lengths", "truncated", "scores"):
            value = getattr(self, name)
            if value is not None and len(value) != n:
                raise ValueError(
                    f"QuestionResult {self.question_id!r}: {name} has {len(value)} entries, responses has {n}"
                )

    @property
    def n(self) -> int:
        return len(self.responses)

    @property
    def num_correct(self) -> int:
        return sum(bool(c) for c in self.correct)


# ------------------------------------------------------------------------------------------------ pure metrics


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct: the chance that k of them, drawn without replacement,
    contain a correct one. 1 - C(n-c, k)/C(n, k), and 1 when n - c < k.

    Example::

        >>> pass_at_k(4, 1, 2)  # 1 - C(3,2)/C(4,2) = 1 - 3/6
        0.5
    """
    for name, value in (("n", n), ("c", c), ("k", k)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"pass_at_k: {name} must be an int, got {value!r}")
    if not 0 <= c <= n:
        raise ValueError(f"pass_at_k: need 0 <= c <= n, got c={c}, n={n}")
    if not 1 <= k <= n:
        raise ValueError(f"pass_at_k: need 1 <= k <= n, got k={k}, n={n}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)  # exact integers, one correctly rounded division


def majority_correct(record: QuestionResult, clusters: Sequence[int]) -> bool:
    """Whether the majority answer of a question is correct.

    The majority is the cluster with the most responses among those that state an answer; a tie goes to the
    cluster that appeared first (:func:`~tempo_pl.rewards.group_answers.majority_cluster`, the vote TTRL's
    reward takes). The cluster is correct when its first response is (members are equivalent answers, so they
    share a verdict). False when no response states an answer.
    """
    winner, _ = majority_cluster(clusters, record.answers)
    return winner is not None and bool(record.correct[list(clusters).index(winner)])


def critic_calibration(values: torch.Tensor, correct: torch.Tensor) -> dict[str, float]:
    """AUROC, expected calibration error and explained variance of critic values against correctness.

    Args:
        values: (N,) last-token values V, nominally in [-1, 1] (the +-1 reward scale); (V+1)/2 is read as the
            probability of being correct, clamped to [0, 1].
        correct: (N,) bools.

    Returns ``critic_auroc``, ``critic_ece``, ``critic_explained_variance`` and ``critic_brier``; AUROC and
    explained variance are NaN when all responses share a verdict (they are undefined there).
    """
    values = values.detach().double().flatten()
    target = correct.detach().flatten().long()
    if values.numel() != target.numel() or values.numel() == 0:
        raise ValueError(
            f"critic_calibration needs as many values as verdicts, got {values.numel()} and {target.numel()}"
        )
    both_classes = 0 < int(target.sum()) < target.numel()
    probability = ((values + 1) / 2).clamp(0, 1)
    score = target.double() * 2 - 1
    return {
        "critic_auroc": float(BinaryAUROC()(probability, target)) if both_classes else math.nan,
        "critic_ece": float(BinaryCalibrationError(n_bins=CALIBRATION_BINS, norm="l1")(probability, target)),
        "critic_explained_variance": float(ExplainedVariance()(values, score)) if both_classes else math.nan,
        "critic_brier": float(((probability - target.double()) ** 2).mean()),
    }


# -------------------------------------------------------------------------------------------------- entry points


def score_questions(
    question_ids: Sequence[str],
    golds: Sequence[str],
    responses: Sequence[Sequence[str]],
    values: Optional[Sequence[Optional[Sequence[float]]]] = None,
    *,
    extractors: Optional[Sequence[str]] = None,
    extraction: str = "boxed",
    timeout: float = 2.0,
    processes: Optional[int] = None,
    graders: Optional[Sequence[Grader]] = None,
) -> list[QuestionResult]:
    """Grade and cluster the responses of many questions, grading all of them in one parallel batch.

    Args:
        question_ids: one id per question.
        golds: one reference answer per question.
        responses: the n responses of each question.
        values: optional last-token critic values, one list per question (or None for a question without).
        extractors: answer extractors, see :func:`tempo_pl.rewards.grading.extract_answer`; default: the chain of
            ``extraction``.
        extraction: ``boxed`` or ``lenient`` (see :func:`tempo_pl.rewards.grading.grade`).
        timeout: per-comparison grading bound in seconds.
        processes: grading worker processes (default: the available CPUs).
        graders: the grader of each question (docs/graders.md); default: math for all. A question whose grader is
            not the math grader is extracted, graded and clustered by it (``extractors`` then do not apply), and
            its record keeps each response's share of parts right in ``scores``.
    """
    if graders is not None and not all(isinstance(g, MathGrader) for g in graders):
        return _score_with_graders(question_ids, golds, responses, values, graders, extraction, timeout, processes)
    if not len(question_ids) == len(golds) == len(responses):
        raise ValueError(
            f"score_questions got {len(question_ids)} ids, {len(golds)} golds and {len(responses)} response lists"
        )
    if values is not None and len(values) != len(question_ids):
        raise ValueError(f"score_questions got {len(values)} value lists for {len(question_ids)} questions")
    chain = extractor_chain(extractors, extraction)
    answers = [[extract_answer(r, chain) for r in group] for group in responses]
    flat_answers = [a for group in answers for a in group]
    flat_golds = [g for g, group in zip(golds, answers) for _ in group]
    flat_correct = are_equivalent(flat_answers, flat_golds, processes=processes, timeout=timeout, symmetric=False)
    records, start = [], 0
    for i, (qid, gold, group) in enumerate(zip(question_ids, golds, responses)):
        stop = start + len(group)
        question_values = None if values is None or values[i] is None else [float(v) for v in values[i]]
        records.append(
            QuestionResult(
                question_id=str(qid),
                gold=gold,
                responses=list(group),
                answers=answers[i],
                correct=flat_correct[start:stop],
                values=question_values,
                clusters=cluster_answers(answers[i], timeout=timeout),
            )
        )
        start = stop
    return records


def _score_with_graders(question_ids, golds, responses, values, graders, extraction, timeout, processes):
    """:func:`score_questions` with a grader per question: one grading call per grader over its questions."""
    if not len(question_ids) == len(golds) == len(responses) == len(graders):
        raise ValueError(f"score_questions got {len(question_ids)} ids, {len(golds)} golds, {len(responses)} response "
                         f"lists and {len(graders)} graders")
    verdicts: list = [None] * len(question_ids)
    for grader in dict.fromkeys(graders):
        mine = [i for i, g in enumerate(graders) if g is grader]
        flat = grader.grade([r for i in mine for r in responses[i]], [golds[i] for i in mine for _ in responses[i]],
                            timeout=timeout, processes=processes, extraction=extraction)
        start = 0
        for i in mine:
            verdicts[i], start = flat[start:start + len(responses[i])], start + len(responses[i])
    records = []
    for i, (qid, gold, group, grader) in enumerate(zip(question_ids, golds, responses, graders)):
        answers = [grader.extract(r, extraction) if isinstance(r, str) else None for r in group]
        answers = [a if a is not None and a.strip() else None for a in answers]
        records.append(QuestionResult(
            question_id=str(qid), gold=gold, responses=list(group), answers=answers,
            correct=[v.correct for v in verdicts[i]],
            values=None if values is None or values[i] is None else [float(v) for v in values[i]],
            clusters=grader.cluster(answers, timeout=timeout), scores=[v.score for v in verdicts[i]]))
    return records


def score_question(
    question_id: str,
    gold: str,
    responses: Sequence[str],
    values: Optional[Sequence[float]] = None,
    *,
    extractors: Optional[Sequence[str]] = None,
    extraction: str = "boxed",
    timeout: float = 2.0,
    processes: Optional[int] = None,
) -> QuestionResult:
    """Grade and cluster the n responses of one question (see :func:`score_questions`)."""
    return score_questions(
        [question_id], [gold], [responses], None if values is None else [values],
        extractors=extractors, extraction=extraction, timeout=timeout, processes=processes,
    )[0]


def summarize_questions(records: Sequence[QuestionResult], ks: Sequence[int]) -> dict[str, float]:
    """The evaluation numbers of a set of questions, each averaged over questions (see the module docstring).

    Args:
        records: one per question, all with the same number n of responses.
        ks: the j of the ``pass@j`` keys; those above n are left out (n samples cannot estimate them).

    Returns keys ``mean@n``, ``pass@j``, ``maj@n``, ``distinct_answers``, ``answer_entropy``, ``no_answer_rate``,
    ``score@n`` (the mean share of parts right) when every record has ``scores``, and, when every record carries
    values, ``critic_auroc``, ``critic_ece``, ``critic_explained_variance``, ``critic_brier`` and
    ``critic_within_question_auroc``.
    """
    if not records:
        raise ValueError("summarize_questions needs at least one QuestionResult")
    bad_k = [k for k in ks if isinstance(k, bool) or not isinstance(k, int) or k < 1]
    if bad_k:
        raise ValueError(f"ks must be positive ints, got {list(ks)!r}")
    n = records[0].n
    for record in records:
        if record.n != n:
            raise ValueError(
                f"question {record.question_id!r} has {record.n} responses, question "
                f"{records[0].question_id!r} has {n}: summarize_questions needs the same n for all"
            )
    with_values = [r.values is not None for r in records]
    if any(with_values) and not all(with_values):
        missing = records[with_values.index(False)].question_id
        raise ValueError(f"question {missing!r} has no critic values while others do")

    def mean(xs) -> float:
        xs = list(xs)
        return sum(xs) / len(xs)

    clusters = [r.clusters if r.clusters is not None else cluster_answers(r.answers) for r in records]
    counts = [answered_cluster_sizes(c, r.answers) for r, c in zip(records, clusters)]
    summary = {f"mean@{n}": mean(r.num_correct / n for r in records)}
    for k in sorted(set(ks)):
        if k <= n:
            summary[f"pass@{k}"] = mean(pass_at_k(n, r.num_correct, k) for r in records)
    summary[f"maj@{n}"] = mean(float(majority_correct(r, c)) for r, c in zip(records, clusters))
    summary["distinct_answers"] = mean(len(c) for c in counts)
    summary["answer_entropy"] = mean(answer_entropy(list(c.values())) for c in counts)
    summary["no_answer_rate"] = mean(sum(a is None for a in r.answers) / n for r in records)
    if all(r.scores is not None for r in records):
        summary[f"score@{n}"] = mean(sum(r.scores) / n for r in records)
    if all(with_values):
        values = torch.tensor([v for r in records for v in r.values], dtype=torch.float64)
        correct = torch.tensor([bool(c) for r in records for c in r.correct])
        summary.update(critic_calibration(values, correct))
        summary["critic_within_question_auroc"] = within_question_auroc(records)
    return summary


def within_question_auroc(records: Sequence[QuestionResult]) -> float:
    """Mean over questions with both right and wrong responses of the AUROC of their critic values; NaN if none.

    Example::

        >>> a = QuestionResult("a", "1", ["x"] * 3, ["1", "2", "3"], [True, False, False], values=[0.5, -0.5, 0.1])
        >>> b = QuestionResult("b", "1", ["x"] * 2, ["1", "2"], [True, False], values=[0.2, 0.3])
        >>> within_question_auroc([a, b])  # a ranks its right response first (1.0), b last (0.0)
        0.5
    """
    scores = []
    for record in records:
        if record.values is None:
            raise ValueError(f"question {record.question_id!r} has no critic values")
        target = torch.tensor([bool(c) for c in record.correct]).long()
        if 0 < int(target.sum()) < target.numel():
            values = torch.tensor(record.values, dtype=torch.float64)
            scores.append(float(BinaryAUROC()(values, target)))
    return sum(scores) / len(scores) if scores else math.nan


def write_question_jsonl(path: Union[str, os.PathLike], records: Sequence[QuestionResult]) -> Path:
    """Write one JSON object per question (the :class:`QuestionResult` fields: id, gold, responses, answers, verdicts,
    critic values, clusters, the rendered prompt, response lengths in tokens and ``truncated`` flags); returns the
    path written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(asdict(record), ensure_ascii=False) + "\n")
    return path

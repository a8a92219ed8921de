"""What the n responses to one prompt say together: their answers, equivalence clusters, majority and entropy.

One copy of the voting rules, shared by the label-free rewards (TTRL's majority vote, EMPO's cluster share), their
pseudo-label metrics and the evaluation summary (``maj@n``, ``distinct_answers``, ``answer_entropy``).

Example::

    >>> answers = ["4", None, "5", "2+2"]
    >>> clusters = [0, 1, 2, 0]  # as the grader's cluster_answers numbers them
    >>> majority_cluster(clusters, answers), answered_cluster_sizes(clusters, answers)
    ((0, 2), {0: 2, 2: 1})
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Optional

from tempo_pl.rewards.graders import MATH, Grader, row_graders
from tempo_pl.types import Rollout


def rows_by_group(rollout: Rollout) -> dict[int, list[int]]:
    """Row indices of each prompt group, keyed by group id, rows in rollout order."""
    groups: dict[int, list[int]] = {}
    for row, group in enumerate(rollout.group_ids.tolist()):
        groups.setdefault(group, []).append(row)
    return groups


def group_grader(rollout: Rollout, group: int) -> Grader:
    """The grader of a prompt group (its dataset's ``grader:``; math by default)."""
    return row_graders(rollout.prompt_batch)[group]


def extracted_answers(texts: list[str], grader: Grader = MATH) -> list[Optional[str]]:
    """The final answer of each response as ``grader`` reads it; ``None`` when there is none (an empty answer
    counts as none)."""
    answers = []
    for text in texts:
        try:
            answer = grader.extract(text)
        except Exception:  # model output never raises: an answer the grader cannot read is none
            answer = None
        answers.append(answer if answer is not None and answer.strip() else None)
    return answers


def answer_clusters(answers: list[Optional[str]], timeout: float, grader: Grader = MATH) -> list[int]:
    """Equivalence-cluster id per answer (``grader``'s equivalence); every missing answer is a singleton cluster of
    its own."""
    clusters = grader.cluster(answers, timeout=timeout)
    # The grader already makes missing answers singletons; relabelling them with ids no real cluster uses keeps
    # the rewards correct even if a grader version grouped the Nones together.
    return [-1 - k if a is None else c for k, (a, c) in enumerate(zip(answers, clusters))]


def cluster_sizes(clusters: Sequence[int]) -> dict[int, int]:
    """Members of each cluster, keyed by cluster id in order of first appearance."""
    return dict(Counter(clusters))


def answered_cluster_sizes(clusters: Sequence[int], answers: Sequence[Optional[str]]) -> dict[int, int]:
    """:func:`cluster_sizes` over the rows that state an answer: the votes each answer gets."""
    return cluster_sizes([cluster for cluster, answer in zip(clusters, answers) if answer is not None])


def majority_cluster(clusters: Sequence[int], answers: Sequence[Optional[str]]) -> tuple[Optional[int], int]:
    """The cluster with the most votes among rows that have an answer, and its vote count.

    Ties go to the cluster whose first member appears first, so the result depends only on row order.
    Returns ``(None, 0)`` when no row has an answer.
    """
    votes = answered_cluster_sizes(clusters, answers)
    if not votes:
        return None, 0
    winner = max(votes, key=votes.__getitem__)  # max keeps the first of equal counts: the earliest cluster
    return winner, votes[winner]


def answer_entropy(counts: Sequence[int]) -> float:
    """Shannon entropy in nats of a distribution given by counts (0 for an empty or one-answer distribution).

    Example::

        >>> round(answer_entropy([2, 2]), 6)  # ln 2
        0.693147
    """
    total = sum(counts)
    return -sum(c / total * math.log(c / total) for c in counts if c > 0) if total else 0.0

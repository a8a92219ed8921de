"""Label-free rewards of the prior test-time-training methods: TTRL, EMPO and Intuitor (docs/algorithm.md, "Rewards").

Each replaces P(correct | x, y) with a functional of the policy itself (its own votes, its own answer
distribution, its own certainty) and never reads ``PromptBatch.answers``: they are TEMPO's "incomplete EM"
baselines. All of them see whole groups: the n samples of one prompt, found through ``rollout.group_ids``.
"""

from __future__ import annotations

from typing import Optional

import torch

from tempo_pl.algorithms.advantages import masked_mean
from tempo_pl.rewards.base import RewardOutput, RewardSource, checked_timeout, mean_or_zero
from tempo_pl.rewards.group_answers import (
    answer_clusters,
    answer_entropy,
    cluster_sizes,
    extracted_answers,
    group_grader,
    majority_cluster,
    rows_by_group,
)
from tempo_pl.types import ForwardStats, Rollout


def _check_group_sizes(groups: dict[int, list[int]], needed: int, key: str, source: str) -> None:
    small = {g: len(rows) for g, rows in groups.items() if len(rows) < needed}
    if small:
        raise ValueError(f"{source}: {key}={needed} but groups {small} (group id: rows) have fewer rows")


class MajorityVote(RewardSource):
    """TTRL's reward: 1 if a response's answer is equivalent to its group's majority answer, else 0.

    The first ``n_votes`` rows of each group vote; answers are clustered by equivalence under the prompt's grader
    (math by default: ``2+2`` and ``4`` vote together; docs/graders.md), and the largest cluster wins. Rows without an
    answer cast no vote and always score 0, so a group where no response has an answer scores all 0. Ties
    between clusters go to the cluster whose first member appears first in the group. (The reference code's
    ``binarize_max`` rewards every tied cluster and lets empty answers win; this follows TTRL's single label.)

    Args:
        n_votes: rows per group that vote (the first ``n_votes``); ``None`` means all n. TTRL votes with 64.
        n_train: rows per group trained on (the first ``n_train``, i.i.d. samples like the rest), returned as
            ``keep_rows``; ``None`` trains on all n. TTRL trains on 32 of its 64 votes.
        timeout: seconds the grader may spend on one equivalence check.

    Example::

        reward = MajorityVote(n_votes=64, n_train=32)  # with rollout.n = 64
        out = reward(rollout, stats)
        out.scores     # (N,) 0.0 or 1.0
        out.keep_rows  # (N,) bool, True on the first 32 rows of each group
        out.metrics["majority_ratio"]
    """

    name = "majority_vote"

    def __init__(self, n_votes: Optional[int] = None, n_train: Optional[int] = None, timeout: float = 2.0) -> None:
        if n_votes is not None and n_votes < 1:
            raise ValueError(f"MajorityVote: n_votes must be >= 1 or None, got {n_votes}")
        if n_train is not None and n_train < 1:
            raise ValueError(f"MajorityVote: n_train must be >= 1 or None, got {n_train}")
        self.timeout = checked_timeout("MajorityVote", timeout)
        self.n_votes = n_votes
        self.n_train = n_train

    def __call__(self, rollout: Rollout, stats: ForwardStats) -> RewardOutput:
        groups = rows_by_group(rollout)
        for key, needed in (("n_votes", self.n_votes), ("n_train", self.n_train)):
            if needed is not None:
                _check_group_sizes(groups, needed, key, "MajorityVote")
        device = rollout.response_mask.device
        scores = torch.zeros(rollout.num_rows, dtype=torch.float32)
        keep_rows = None if self.n_train is None else torch.zeros(rollout.num_rows, dtype=torch.bool)
        ratios = []
        for group, rows in groups.items():
            grader = group_grader(rollout, group)
            answers = extracted_answers([rollout.texts[r] for r in rows], grader)
            clusters = answer_clusters(answers, self.timeout, grader)
            votes = len(rows) if self.n_votes is None else self.n_votes
            winner, count = majority_cluster(clusters[:votes], answers[:votes])
            ratios.append(count / votes)
            for row, cluster, answer in zip(rows, clusters, answers):
                if winner is not None and answer is not None and cluster == winner:
                    scores[row] = 1.0
            if keep_rows is not None:
                keep_rows[rows[: self.n_train]] = True
        metrics = {"majority_ratio": mean_or_zero(ratios)}
        return RewardOutput(
            scores=scores.to(device),
            metrics=metrics,
            keep_rows=None if keep_rows is None else keep_rows.to(device),
        )


class SemanticCluster(RewardSource):
    """EMPO's reward: the share of the group whose answer is equivalent to this response's answer.

    A group's answers are clustered by equivalence; a response scores (its cluster's size) / (group size). A
    missing or empty answer is a singleton cluster of its own, so it scores 1/n. The logged
    ``semantic_entropy`` is the mean over groups of -sum_c p_c ln p_c with p_c = |c| / n (nats).

    Args:
        timeout: seconds the grader may spend on one equivalence check.

    Example::

        reward = SemanticCluster()
        out = reward(rollout, stats)  # group answers 4, 2+2, 5, none -> 0.5, 0.5, 0.25, 0.25
        out.metrics["semantic_entropy"]
    """

    name = "semantic_cluster"

    def __init__(self, timeout: float = 2.0) -> None:
        self.timeout = checked_timeout("SemanticCluster", timeout)

    def __call__(self, rollout: Rollout, stats: ForwardStats) -> RewardOutput:
        scores = torch.zeros(rollout.num_rows, dtype=torch.float32)
        entropies = []
        for group, rows in rows_by_group(rollout).items():
            grader = group_grader(rollout, group)
            clusters = answer_clusters(extracted_answers([rollout.texts[r] for r in rows], grader), self.timeout,
                                       grader)
            sizes = cluster_sizes(clusters)
            n = len(rows)
            for row, cluster in zip(rows, clusters):
                scores[row] = sizes[cluster] / n
            entropies.append(answer_entropy(list(sizes.values())))
        metrics = {"semantic_entropy": mean_or_zero(entropies)}
        return RewardOutput(scores=scores.to(rollout.response_mask.device), metrics=metrics)


class SelfCertainty(RewardSource):
    """Intuitor's reward: the response's mean per-token self-certainty, KL(Uniform_V || pi(. | x, y_<t)).

    The loop computes the per-token values into ``ForwardStats.self_certainty`` in its no-grad pass because
    ``needs_self_certainty`` is True; this source averages them over the valid response tokens only (padding
    never dilutes a short response). Scores are unbounded above and >= 0.

    Example::

        reward = SelfCertainty()
        out = reward(rollout, stats)  # stats.self_certainty: (N, R)
        out.metrics["self_certainty_mean"]
    """

    needs_self_certainty = True
    name = "self_certainty"

    def __call__(self, rollout: Rollout, stats: ForwardStats) -> RewardOutput:
        certainty = self.required_stat(stats, "self_certainty")
        if certainty.shape != rollout.response_mask.shape:
            raise ValueError(
                f"SelfCertainty: self_certainty has shape {tuple(certainty.shape)}, "
                f"response_mask {tuple(rollout.response_mask.shape)}"
            )
        # a row's mean over its valid tokens only: padding never dilutes a short response
        scores = masked_mean(certainty.float(), rollout.response_mask, dim=-1)
        return RewardOutput(scores=scores, metrics={"self_certainty_mean": mean_or_zero(scores)})

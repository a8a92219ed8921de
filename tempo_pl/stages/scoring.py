"""The score stage: one outcome per row, the labeled reward (ground truth) on labeled rows and the unlabeled reward
source (critic value, majority vote, ...) on unlabeled rows (``docs/algorithm.md``, "Rewards")."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from tempo_pl.rewards.base import RewardOutput, RewardSource
from tempo_pl.types import ForwardStats, Rollout

LABELED_SCORES = "labeled_scores"
"""Key of ``Rollout.extra`` holding the labeled rows' scores (0 on unlabeled rows): graded once, during group
filtering, and read again by the score stage."""


def grade_labeled(source: RewardSource, rollout: Rollout) -> Tensor:
    """``source``'s scores of the labeled rows, 0 on unlabeled rows."""
    scores = torch.zeros(rollout.num_rows, device=rollout.response_mask.device)
    labeled_groups = [g for g, labeled in enumerate(rollout.prompt_batch.is_labeled) if labeled]
    if labeled_groups:
        sub = rollout.select_groups(labeled_groups)
        scores[rollout.group_rows(labeled_groups)] = source(sub, ForwardStats.zeros(sub)).scores.float()
    return scores


def score_rollout(
    rollout: Rollout, stats: ForwardStats, labeled: RewardSource, unlabeled: Optional[RewardSource]
) -> RewardOutput:
    """Every row's outcome. Labeled rows reuse ``rollout.extra[LABELED_SCORES]`` when filtering already graded them;
    the unlabeled source sees its groups whole, with their rows' forward statistics, and its metrics are returned
    under ``reward/<source name>/``."""
    graded = rollout.extra.get(LABELED_SCORES)
    scores = (graded if graded is not None else grade_labeled(labeled, rollout)).clone().float()
    metrics: dict[str, float] = {}
    keep_rows = None
    unlabeled_groups = [g for g, is_labeled in enumerate(rollout.prompt_batch.is_labeled) if not is_labeled]
    if unlabeled_groups:
        if unlabeled is None:
            raise ValueError("unlabeled rows in the batch but no unlabeled_reward (and no critic) is configured")
        rows = rollout.group_rows(unlabeled_groups)
        out = unlabeled(rollout.select_groups(unlabeled_groups), stats.select(rows))
        scores[rows] = out.scores.float().to(scores.device)
        metrics.update({f"reward/{unlabeled.name}/{k}": v for k, v in out.metrics.items()})
        if out.keep_rows is not None:
            keep_rows = torch.ones(rollout.num_rows, dtype=torch.bool, device=scores.device)
            keep_rows[rows] = out.keep_rows.bool().to(scores.device)
    return RewardOutput(scores=scores, metrics=metrics, keep_rows=keep_rows)


def apply_keep_rows(
    rollout: Rollout, stats: ForwardStats, reward: RewardOutput
) -> tuple[Rollout, ForwardStats, RewardOutput]:
    """The rows a reward source asked to train on (TTRL votes over more samples than it trains on); as is when it
    asked for all."""
    if reward.keep_rows is None:
        return rollout, stats, reward
    rows = torch.nonzero(reward.keep_rows, as_tuple=False).flatten()
    return rollout.select_rows(rows), stats.select(rows), RewardOutput(reward.scores[rows], reward.metrics, None)

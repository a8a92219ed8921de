"""The score stage: one outcome per row, the labeled reward (ground truth) on labeled rows and the unlabeled reward
source (critic value, majority vote, ...) on unlabeled rows (``docs/algorithm.md``, "Rewards")."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from tempo_pl.rewards.base import RewardOutput, RewardSource
from tempo_pl.rewards.critic import CriticValue
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


def schedule_updates_critic(trainer, horizon: int = 10_000) -> bool:
    """Whether the run's schedule plans a critic update in its first ``horizon`` RL steps (a callback with
    ``plan(rl_step)``, as EMSchedule; True when there is none to ask)."""
    planners = [cb for cb in getattr(trainer, "callbacks", []) if callable(getattr(cb, "plan", None))]
    if not planners:
        return True
    steps = min(int(getattr(trainer, "estimated_stepping_batches", horizon) or horizon), horizon)
    return any(planner.plan(step).update_critic for planner in planners for step in range(max(steps, 1)))


def value_head_is_zero(critic: torch.nn.Module) -> bool:
    """Every weight of the critic's ``score`` head is 0 (a fresh head with ``head_init_std: 0``): all values are the
    head's bias, the same for every response."""
    heads = [p for name, p in critic.named_parameters() if "score" in name.split(".") and name.endswith("weight")]
    if not heads:
        return False
    full = lambda p: p.full_tensor() if hasattr(p, "full_tensor") else p  # noqa: E731
    return all(float(full(p.detach()).abs().max()) == 0.0 for p in heads)


def check_critic_reward_can_learn(
    unlabeled: Optional[RewardSource], critic: Optional[torch.nn.Module], critic_frozen: bool, updates_critic: bool
) -> None:
    """Refuse a run whose only reward on D_U is a critic value that can never differ between responses: a zero value
    head that no update will ever move (frozen critic, or a schedule without E-steps)."""
    if not isinstance(unlabeled, CriticValue) or critic is None or not value_head_is_zero(critic):
        return
    if critic_frozen or not updates_critic:
        why = "its learning rate is 0" if critic_frozen else "the schedule never updates it (no E-step)"
        raise ValueError(
            "the D_U reward is the critic's value, but the critic's value head is zero-initialised "
            f"(critic.head_init_std: 0) and {why}: every D_U reward would be 0 and the policy could not learn. "
            "Start the critic from a trained one (critic.name_or_path: the zero-RL critic, as the reference's "
            "fixed-critic runs do) or let the schedule recalibrate it"
        )

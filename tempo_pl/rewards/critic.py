"""TEMPO's reward for unlabeled rows: the critic's value at the end of the response."""

from __future__ import annotations

from tempo_pl.algorithms.advantages import last_token_value
from tempo_pl.rewards.base import RewardOutput, RewardSource, mean_or_zero
from tempo_pl.types import ForwardStats, Rollout


class CriticValue(RewardSource):
    """Scores each response by the critic's last-token value, V(x, y_<T): TEMPO's M-step reward on D_U.

    The critic regresses +1/-1 outcomes on D_L, so the value estimates 2 P(correct) - 1 (docs/algorithm.md,
    "Rewards"). Labels are never read; the loop computes ``ForwardStats.values`` before scoring because
    ``needs_values`` is True.

    Example::

        reward = CriticValue()
        out = reward(rollout, stats)  # stats.values: (N, R)
        out.scores  # (N,) the value at each row's last valid index
        out.metrics["value_last_mean"]
    """

    needs_values = True
    name = "critic_value"

    def __call__(self, rollout: Rollout, stats: ForwardStats) -> RewardOutput:
        values = self.required_stat(stats, "values", "the run must have a critic")
        # V(x, y_<T): the value of the state before the last token, unclamped (docs/algorithm.md, "Rewards")
        scores = last_token_value(values.float(), rollout.response_mask.to(values.device).float())
        return RewardOutput(scores=scores, metrics={"value_last_mean": mean_or_zero(scores)})

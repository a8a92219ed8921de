"""TEMPO's reward for unlabeled rows: the critic's value at the end of the response."""

from __future__ import annotations

from torch import Tensor

from tempo_pl.rewards.base import RewardOutput, RewardSource
from tempo_pl.types import ForwardStats, Rollout


def last_valid_values(values: Tensor, response_mask: Tensor) -> Tensor:
    """The value at each row's last valid response index, ``response_mask.sum(-1) - 1`` clamped at 0.

    Because the critic's value at index t is V(x, y_<t) (spec 4.2), this is the state just before the last
    token (usually EOS); for a truncated row it is the state before the last generated token. A row with no
    valid token reads index 0, which the masked values hold at 0.

    Args:
        values: (N, R) critic values, already multiplied by the response mask.
        response_mask: (N, R) 1 on valid response tokens, right-padded.

    Returns:
        (N,) values, unclamped (spec 5 step 1: the clamp to [-1, 1] is commented out in the reference code).
    """
    if values.shape != response_mask.shape:
        raise ValueError(f"values has shape {tuple(values.shape)}, response_mask {tuple(response_mask.shape)}")
    last = (response_mask.sum(-1).long() - 1).clamp(min=0)
    return values.gather(-1, last.unsqueeze(-1)).squeeze(-1)


class CriticValue(RewardSource):
    """Scores each response by the critic's last-token value, V(x, y_<T): TEMPO's M-step reward on D_U.

    The critic regresses +1/-1 outcomes on D_L, so the value estimates 2 P(correct) - 1 (spec 11.3). Labels are
    never read; the loop computes ``ForwardStats.values`` before scoring because ``needs_values`` is True.

    Example::

        reward = CriticValue()
        out = reward(rollout, stats)  # stats.values: (N, R)
        out.scores  # (N,) the value at each row's last valid index
        out.metrics["value_last_mean"]
    """

    needs_values = True
    name = "critic_value"

    def __call__(self, rollout: Rollout, stats: ForwardStats) -> RewardOutput:
        if stats.values is None:
            raise ValueError(
                "CriticValue needs ForwardStats.values; the run must have a critic (needs_values is True)"
            )
        scores = last_valid_values(stats.values.float(), rollout.response_mask)
        mean = scores.mean().item() if scores.numel() else 0.0
        return RewardOutput(scores=scores, metrics={"value_last_mean": mean})

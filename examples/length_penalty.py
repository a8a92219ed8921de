"""A research subclass of TempoModule: penalise long responses in the unlabeled reward.

Override one stage, inherit the rest. Run it with the tiny config:

    PYTHONPATH=examples tempo-pl fit --config configs/tiny.yaml \
        --model.class_path length_penalty.LengthPenalizedTempo --model.init_args.length_penalty 0.001
"""

from __future__ import annotations

from tempo_pl.module import TempoModule
from tempo_pl.rewards.base import RewardOutput


class LengthPenalizedTempo(TempoModule):
    """TEMPO whose unlabeled rows score ``critic value - length_penalty * response length``.

    Args:
        length_penalty: reward subtracted per response token on unlabeled rows.
        **kwargs: everything :class:`~tempo_pl.module.TempoModule` takes.
    """

    def __init__(self, *args, length_penalty: float = 0.001, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if length_penalty < 0:
            raise ValueError(f"length_penalty must be >= 0, got {length_penalty}")
        self.length_penalty = length_penalty

    def score(self, rollout, stats) -> RewardOutput:
        out = super().score(rollout, stats)
        unlabeled = ~rollout.is_labeled
        penalty = self.length_penalty * rollout.response_mask.sum(-1).float() * unlabeled.float()
        out.scores = out.scores - penalty.to(out.scores.device)
        if unlabeled.any():
            out.metrics["length_penalty/mean"] = float(penalty[unlabeled].mean())
        return out

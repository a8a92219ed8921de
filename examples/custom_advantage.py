"""A new advantage estimator, registered and named from YAML: no subclass of TempoModule needed.

``median_baseline`` scores each response against the median of its group (a baseline that one lucky or unlucky
sample cannot move, unlike GRPO's mean) and spreads that advantage over the response's tokens. Run it on the tiny
config:

    PYTHONPATH=examples tempo-pl fit --config configs/tiny.yaml --config examples/custom_advantage.yaml
"""

from __future__ import annotations

import torch
from torch import Tensor

from tempo_pl.algorithms import AdvantageBatch, register_advantage


@register_advantage("median_baseline")
@torch.no_grad()
def median_baseline(batch: AdvantageBatch, config) -> tuple[Tensor, Tensor]:
    """``score - median(scores of the group)`` on every valid token; the returns equal the advantages (no critic)."""
    per_row = torch.empty_like(batch.scores, dtype=torch.float)
    for group in batch.group_ids.unique():
        rows = batch.group_ids == group
        per_row[rows] = batch.scores[rows].float() - batch.scores[rows].float().median()
    advantages = per_row.unsqueeze(-1) * batch.mask
    return advantages, advantages

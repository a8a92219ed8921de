"""Mini-batch optimization of one RL step: rows cut into mini-batches (one optimizer step each) and micro-batches
(one forward/backward each), over ``ppo_epochs`` passes (``docs/algorithm.md``, "One RL step")."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np
import torch
from torch import Tensor

from tempo_pl.models import sequence_inputs
from tempo_pl.types import Rollout

MicroLoss = Callable[[Tensor], "tuple[Tensor, dict[str, Any]]"]
"""``rows -> (loss, metrics)`` of one micro-batch of rows."""


def index_chunks(total: int, size: int) -> list[Tensor]:
    """``arange(total)`` cut into consecutive pieces of at most ``size``."""
    return [torch.arange(start, min(start + size, total)) for start in range(0, total, size)]


def row_inputs(rollout: Rollout, device: torch.device) -> Callable[[Tensor], tuple[Tensor, Tensor, Tensor, Tensor]]:
    """Concatenates prompt and response once; returns ``rows -> (input ids, attention mask, response ids,
    response mask)`` of those rows on ``device``."""
    ids, attn, _ = sequence_inputs(rollout)

    def take(rows: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return (ids[rows].to(device), attn[rows].to(device), rollout.response_ids[rows].to(device),
                rollout.response_mask[rows].to(device))

    return take


def grad_norm(optimizer: torch.optim.Optimizer) -> float:
    """The 2-norm of all gradients the optimizer holds (sharded DTensor gradients are reduced to the global norm)."""
    grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    if not grads:
        return 0.0
    total = torch.nn.utils.get_total_norm(grads, norm_type=2.0)
    full_tensor = getattr(total, "full_tensor", None)
    return float(full_tensor() if full_tensor is not None else total)


@dataclass
class MiniBatchPlan:
    rows_per_mini_batch: int
    rows_per_micro_batch: int
    epochs: int
    grad_clip: float
    """Gradient-norm clip (0 = off)."""


def optimize(
    num_rows: int,
    plan: MiniBatchPlan,
    optimizer: torch.optim.Optimizer,
    scheduler: Optional[Any],
    micro_loss: MicroLoss,
    backward: Callable[[Tensor], None],
    clip_gradients: Callable[[torch.optim.Optimizer, float], None],
) -> dict[str, float]:
    """``plan.epochs`` passes of mini-batch steps; gradients accumulate over micro-batches, each loss weighted by its
    share of the mini-batch's rows (the reference's micro-batch scale). Returns the mean of every metric over
    micro-batches, ``grad_norm`` (before clipping: how far it was cut) per step, and the last ``lr``."""
    acc: dict[str, list[float]] = {}
    for _ in range(plan.epochs):
        for mini in index_chunks(num_rows, plan.rows_per_mini_batch):
            optimizer.zero_grad(set_to_none=True)
            for micro in index_chunks(len(mini), plan.rows_per_micro_batch):
                rows = mini[micro]
                loss, metrics = micro_loss(rows)
                backward(loss * (len(rows) / len(mini)))
                _accumulate(acc, metrics)
            _accumulate(acc, {"grad_norm": grad_norm(optimizer)})
            if plan.grad_clip > 0:
                clip_gradients(optimizer, plan.grad_clip)
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
    out = {k: float(np.mean(v)) for k, v in acc.items()}
    out["lr"] = optimizer.param_groups[0]["lr"]
    return out


def _accumulate(acc: dict[str, list[float]], values: dict[str, Any]) -> None:
    for k, v in values.items():
        acc.setdefault(k, []).append(float(v.detach()) if isinstance(v, Tensor) else float(v))

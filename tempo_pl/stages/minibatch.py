"""Mini-batch optimization of one RL step: rows cut into mini-batches (one optimizer step each) and micro-batches
(one forward/backward each), over ``ppo_epochs`` passes (``docs/algorithm.md``, "One RL step")."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np
import torch
from torch import Tensor

from tempo_pl.models import sequence_inputs
from tempo_pl.stages.ranks import Ranks
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


def mini_batches(
    num_rows: int, rows_per_mini_batch: int, labeled: Optional[Tensor] = None,
    generator: Optional[torch.Generator] = None,
) -> list[Tensor]:
    """Row indices of each mini-batch. Without ``generator``: consecutive rows in order. With it: shuffled, and
    stratified by ``labeled`` so every mini-batch holds its share of labeled and of unlabeled rows (a mixed step's
    optimizer steps then each see both kinds, not D_L first and D_U after)."""
    if generator is None:
        return index_chunks(num_rows, rows_per_mini_batch)
    count = max(1, math.ceil(num_rows / rows_per_mini_batch))
    kinds = [torch.arange(num_rows)] if labeled is None else [
        torch.nonzero(labeled.cpu(), as_tuple=False).flatten(), torch.nonzero(~labeled.cpu(), as_tuple=False).flatten()]
    parts = [torch.tensor_split(rows[torch.randperm(len(rows), generator=generator)], count) for rows in kinds]
    dealt = [torch.cat([part[i] for part in parts]) for i in range(count)]
    return [rows for rows in dealt if len(rows)]


def optimize(
    num_rows: int,
    plan: MiniBatchPlan,
    optimizer: torch.optim.Optimizer,
    scheduler: Optional[Any],
    micro_loss: MicroLoss,
    backward: Callable[[Tensor], None],
    clip_gradients: Callable[[torch.optim.Optimizer, float], None],
    labeled: Optional[Tensor] = None,
    generator: Optional[torch.Generator] = None,
    units: Optional[Callable[[Tensor], float]] = None,
    ranks: Ranks = Ranks(),
) -> dict[str, float]:
    """``plan.epochs`` passes of mini-batch steps (see :func:`mini_batches`), gradients accumulated over
    micro-batches.

    ``units(rows)`` counts what a micro-batch's loss averages over (rows with a valid token for the sequence-mean
    losses, valid tokens for ``token-mean``; the critic counts labeled rows only). Each micro-batch loss is weighted
    by its units over the mini-batch's units on ALL ranks, times the number of ranks (which DDP and FSDP divide by
    again): the step's gradient is the mean over the mini-batch's units wherever they sit, as one process on the
    ranks' rows together would compute it. Without ``units`` every row counts one. A mini-batch with no unit on any
    rank (a critic mini-batch without a labeled row) takes no optimizer step: Adam would still move the weights on a
    zero gradient. A step whose gradient norm is not finite is skipped and its gradients dropped, as the reference
    does. Returns the mean of every metric over micro-batches, ``grad_norm`` (before clipping) per step, the counts
    ``nonfinite_grad_skips`` and ``skipped_mini_batches``, and the last ``lr``."""
    units = units or (lambda rows: float(len(rows)))
    acc: dict[str, list[float]] = {}
    counts = {"nonfinite_grad_skips": 0.0, "skipped_mini_batches": 0.0}
    for _ in range(plan.epochs):
        for mini in mini_batches(num_rows, plan.rows_per_mini_batch, labeled, generator):
            total = ranks.sum([units(mini)])[0]
            if total == 0:
                counts["skipped_mini_batches"] += 1
                continue
            optimizer.zero_grad(set_to_none=True)
            for micro in index_chunks(len(mini), plan.rows_per_micro_batch):
                rows = mini[micro]
                loss, metrics = micro_loss(rows)
                backward(loss * (units(rows) * ranks.world / total))
                _accumulate(acc, metrics)
            norm = grad_norm(optimizer)
            _accumulate(acc, {"grad_norm": norm})
            if not math.isfinite(norm):
                optimizer.zero_grad(set_to_none=True)
                counts["nonfinite_grad_skips"] += 1
                continue
            if plan.grad_clip > 0:
                clip_gradients(optimizer, plan.grad_clip)
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
    out = {k: float(np.mean(v)) for k, v in acc.items()}
    out.update(counts)
    out["lr"] = optimizer.param_groups[0]["lr"]
    return out


def loss_units(mask: Tensor, agg_mode: str) -> Callable[[Tensor], float]:
    """``rows -> `` the number of what a loss aggregated with ``agg_mode`` averages over in those rows of ``mask``:
    valid tokens for ``token-mean``, rows with a valid token for the sequence means."""
    if agg_mode == "token-mean":
        return lambda rows: float(mask[rows].sum())
    return lambda rows: float((mask[rows] != 0).any(dim=-1).sum())


def _accumulate(acc: dict[str, list[float]], values: dict[str, Any]) -> None:
    for k, v in values.items():
        acc.setdefault(k, []).append(float(v.detach()) if isinstance(v, Tensor) else float(v))

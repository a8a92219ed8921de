"""Mini-batch optimization of one RL step: rows cut into mini-batches (one optimizer step each) and micro-batches
(one forward/backward each, ``micro_batch_size`` rows or a token budget), over ``ppo_epochs`` passes
(``docs/algorithm.md``, "One RL step" and "Micro-batches and long responses")."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np
import torch
from torch import Tensor

from tempo_pl.models.forward import sequence_inputs
from tempo_pl.stages.ranks import Ranks
from tempo_pl.types import Rollout

MicroLoss = Callable[[Tensor], "tuple[Tensor, dict[str, Any]]"]
"""``rows -> (loss, metrics)`` of one micro-batch of rows."""


def index_chunks(total: int, size: int) -> list[Tensor]:
    """``arange(total)`` cut into consecutive pieces of at most ``size``."""
    return [torch.arange(start, min(start + size, total)) for start in range(0, total, size)]


def token_budget_chunks(prompt_tokens: Tensor, response_tokens: Tensor, budget: int) -> list[Tensor]:
    """Positions ``0..n-1`` of rows with these prompt and response lengths, grouped into micro-batches of at most
    ``budget`` padded tokens: rows x (longest prompt + longest response) of the group, the width a micro-batch has
    once :func:`row_inputs` has cut the padding every row of it shares. Rows go longest first, each group taking rows
    while they fit, so rows of like lengths share a pass; a row longer than the budget is a group of its own."""
    order = torch.argsort(prompt_tokens + response_tokens, descending=True, stable=True).tolist()
    groups: list[list[int]] = []
    width = (0, 0)
    for i in order:
        grown = (max(width[0], int(prompt_tokens[i])), max(width[1], int(response_tokens[i])))
        if not groups or (len(groups[-1]) + 1) * sum(grown) > budget:
            groups.append([])
            grown = (int(prompt_tokens[i]), int(response_tokens[i]))
        groups[-1].append(i)
        width = grown
    return [torch.tensor(group, dtype=torch.long) for group in groups]


def row_tokens(rollout: Rollout) -> tuple[Tensor, Tensor]:
    """Each row's prompt tokens and response tokens (without padding)."""
    return (rollout.prompt_mask != 0).sum(-1), (rollout.response_mask != 0).sum(-1)


def row_inputs(rollout: Rollout, device: torch.device) -> Callable[[Tensor], tuple[Tensor, Tensor, Tensor, Tensor]]:
    """Concatenates prompt and response once; returns ``rows -> (input ids, attention mask, response ids,
    response mask)`` of those rows on ``device``, without the padding columns all of them share: the prompt's on the
    left, the response's on the right (so the response columns number at most R; :func:`full_width` pads a result
    back). A valid token's position counts the valid tokens before it, so no result changes."""
    ids, attn, _ = sequence_inputs(rollout)
    prompt_width = rollout.prompt_ids.shape[1]

    def take(rows: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        first = int((rollout.prompt_mask[rows] != 0).any(0).long().argmax()) if prompt_width else 0
        used = (rollout.response_mask[rows] != 0).any(0).nonzero()
        last = int(used.max()) + 1 if len(used) else min(1, rollout.response_ids.shape[1])
        columns = slice(first, prompt_width + last)
        return (ids[rows, columns].to(device), attn[rows, columns].to(device),
                rollout.response_ids[rows, :last].to(device), rollout.response_mask[rows, :last].to(device))

    return take


def full_width(per_token: Tensor, width: int) -> Tensor:
    """A (rows, r) result of :func:`row_inputs`' response columns zero-padded on the right to ``width`` columns."""
    return torch.nn.functional.pad(per_token, (0, width - per_token.shape[-1]))


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
    tokens_per_micro_batch: Optional[int] = None
    """Token budget of a micro-batch (:func:`token_budget_chunks`) instead of ``rows_per_micro_batch``."""
    row_tokens: Optional[tuple[Tensor, Tensor]] = None
    """Every row's prompt and response tokens (:func:`row_tokens`), read with ``tokens_per_micro_batch``."""

    @staticmethod
    def of(training, rollout: Rollout, grad_clip: float) -> "MiniBatchPlan":
        """The plan of ``training`` (a :class:`~tempo_pl.config.TrainingConfig`) for ``rollout``: as many
        mini-batches as ``mini_batch_size`` prompts make, of the rows there are (a reward that keeps only some rows
        leaves groups of unequal size, so the rows are not prompts x n)."""
        prompts = max(len(rollout.prompt_batch), 1)
        rows_per_mini_batch = max(1, math.ceil(training.mini_batch_size * rollout.num_rows / prompts))
        return MiniBatchPlan(rows_per_mini_batch, training.micro_batch_size,
                             training.ppo_epochs, grad_clip, training.micro_batch_tokens, row_tokens(rollout))

    def micro_batches(self, mini: Tensor, ranks: Ranks = Ranks()) -> list[Tensor]:
        """The micro-batches of a mini-batch's rows, as positions in ``mini``. Under a token budget every rank
        makes as many as the rank that needs most (its largest groups halved; the ranks' mini-batches hold as many
        rows): each backward pass of DDP or FSDP is a collective that all ranks must join."""
        if self.tokens_per_micro_batch is None:  # in row order: the rows of a prompt share a pass, and run it once
            order = torch.argsort(mini, stable=True)
            return [order[chunk] for chunk in index_chunks(len(mini), self.rows_per_micro_batch)]
        prompt, response = self.row_tokens
        groups = token_budget_chunks(prompt[mini], response[mini], self.tokens_per_micro_batch)
        wanted = max(ranks.gather(len(groups))) if ranks.world > 1 else len(groups)
        while len(groups) < wanted and max(len(g) for g in groups) > 1:
            largest = max(range(len(groups)), key=lambda i: len(groups[i]))
            groups[largest:largest + 1] = list(torch.tensor_split(groups[largest], 2))
        return groups


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
    rows_with_loss: Optional[Tensor] = None,
) -> dict[str, float]:
    """``plan.epochs`` passes of mini-batch steps (see :func:`mini_batches`), gradients accumulated over
    micro-batches.

    Micro-batches hold ``plan.rows_per_micro_batch`` rows, or rows grouped by length within a token budget
    (``plan.tokens_per_micro_batch``). ``rows_with_loss`` (bool per row) keeps only those rows of each mini-batch once
    it is dealt: a row whose loss is masked out entirely (an unlabeled row in the critic's update) adds no unit and no
    gradient, so it gets no forward or backward pass (on several ranks, each keeps as many rows as the rank with the
    most); the deal, and the RNG it draws from, are those of every row.

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
            if rows_with_loss is not None:
                has_loss = rows_with_loss.cpu()[mini]
                keep = int(has_loss.sum())
                if ranks.world > 1:  # as many rows on every rank (rows without loss weigh 0): the same passes
                    keep = int(max(ranks.gather(keep)))
                mini = mini[torch.argsort((~has_loss).long(), stable=True)[:keep]]
            total = ranks.sum([units(mini)])[0]
            if total == 0:
                counts["skipped_mini_batches"] += 1
                continue
            optimizer.zero_grad(set_to_none=True)
            for micro in plan.micro_batches(mini, ranks):
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

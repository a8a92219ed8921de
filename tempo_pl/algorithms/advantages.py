"""Advantage estimators and the masked statistics they are built from.

Every function here is a pure tensor function: no Lightning, no models. Shapes follow one convention:

- ``N`` rows (responses) and ``R`` padded response positions;
- ``mask`` (N, R) float, 1 on valid response tokens (0/1 in practice; fractional weights are honoured by the masked
  statistics);
- ``group_ids`` (N,) long, the prompt a row was sampled from (any integers; they need not be contiguous);
- ``is_labeled`` (N,) bool.

Estimators return ``(advantages, returns)``, both (N, R) and zero on padding. ``returns`` are the critic's regression
targets (estimators without a critic return the advantages there, as verl does). Estimators run under
``torch.no_grad()``: advantages and targets are constants of the losses, never a path for gradients into the critic.

No function produces NaN for a fully masked row or an all-empty batch: statistics over nothing are 0 (mean and
variance), so whitening nothing gives zeros.

Example::

    >>> import torch
    >>> mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    >>> values = torch.tensor([[0.2, 0.4, 0.0], [0.1, 0.3, 0.5]])
    >>> outcomes = torch.tensor([1.0, last_token_value(values, mask)[1].item()])
    >>> adv, returns = em_token_advantage(outcomes, values, mask)
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from tempo_pl.algorithms.checks import check_rows, check_same_shape

AllReduce = Callable[[Tensor], Tensor]
"""Sums a tensor over every rank and returns the sum on every rank (identity on one process)."""

__all__ = [
    "masked_sum",
    "masked_mean",
    "masked_var",
    "masked_whiten",
    "last_valid_index",
    "last_token_value",
    "em_token_advantage",
    "em_advantage",
    "gae_advantage",
    "grpo_advantage",
    "rloo_advantage",
]


def masked_sum(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Sum of ``x * mask``; padded entries never contribute, even when ``x`` holds inf or NaN there."""
    weighted = torch.where(mask != 0, x, torch.zeros_like(x)) * mask
    return weighted.sum() if dim is None else weighted.sum(dim)


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None, all_reduce: AllReduce | None = None) -> Tensor:
    """Mean of ``x`` over entries where ``mask`` is non-zero (weighted by ``mask``).

    Args:
        x: values, any shape.
        mask: same shape as ``x``.
        dim: reduce over this dimension only (e.g. ``-1`` for a per-row mean); ``None`` reduces over everything.
        all_reduce: sums a tensor over every rank (``dim=None`` only): the mean is then over the valid entries of all
            ranks' batches, as one process would compute it on their concatenation.

    Returns 0 where there is nothing to average (a fully masked row, an empty batch); the gradient there is 0 too.
    """
    check_same_shape(x=x, mask=mask)
    total = masked_sum(x, mask, dim)
    count = mask.sum() if dim is None else mask.sum(dim)
    if all_reduce is not None:
        if dim is not None:
            raise ValueError("masked_mean: all_reduce needs dim=None (a mean over every valid entry)")
        total, count = all_reduce(torch.stack([total, count.to(total.dtype)]))
    # a safe denominator rather than where(count > 0, total / count, 0): the latter back-propagates 0 * inf = NaN
    safe_count = torch.where(count > 0, count, torch.ones_like(count))
    return total / safe_count


def masked_var(x: Tensor, mask: Tensor, unbiased: bool = True, all_reduce: AllReduce | None = None) -> Tensor:
    """Variance of ``x`` over all valid entries (of every rank's batch with ``all_reduce``, see :func:`masked_mean`).

    ``unbiased`` applies Bessel's correction n / (n - 1), n = ``mask.sum()``, as verl's ``masked_var`` does. With
    fewer than two valid entries the unbiased variance is undefined; it is reported as 0 instead of raising, so that a
    batch with one valid token whitens to 0 rather than failing a training step.
    """
    check_same_shape(x=x, mask=mask)
    mean = masked_mean(x, mask, all_reduce=all_reduce)
    var = masked_mean((x - mean) ** 2, mask, all_reduce=all_reduce)
    if not unbiased:
        return var
    count = mask.sum() if all_reduce is None else all_reduce(mask.sum().reshape(1))[0]
    # branch-free, so that no device sync is needed on GPU
    bessel = torch.where(count > 1, count / (count - 1).clamp(min=1e-12), torch.zeros_like(count))
    return var * bessel


def masked_whiten(
    x: Tensor, mask: Tensor, shift_mean: bool = True, eps: float = 1e-8, all_reduce: AllReduce | None = None
) -> Tensor:
    """``(x - mu) / sqrt(var + eps)`` with ``mu`` and the unbiased ``var`` taken over all valid entries.

    Args:
        shift_mean: when False the mean is added back after scaling (only the scale is normalised).
        eps: added to the variance, not the std (the reference's convention).
        all_reduce: sums over ranks, so ``mu`` and ``var`` are those of every rank's rows together (the reference's
            single driver sees the whole step's batch); see :func:`masked_mean`.

    Padded positions are not zeroed here; callers re-mask.
    """
    mean = masked_mean(x, mask, all_reduce=all_reduce)
    var = masked_var(x, mask, unbiased=True, all_reduce=all_reduce)
    whitened = (x - mean) * torch.rsqrt(var + eps)
    return whitened if shift_mean else whitened + mean


def last_valid_index(mask: Tensor) -> Tensor:
    """Index of each row's last valid position, (N,) long; 0 for a fully masked row.

    On right-padded response masks this is ``sum(mask) - 1`` clamped at 0 (the reference's formula); it also stays
    right on a mask with holes, where that formula would point inside the response.
    """
    positions = torch.arange(mask.shape[-1], device=mask.device)
    return torch.where(mask != 0, positions, torch.zeros_like(positions)).amax(dim=-1).long()


def last_token_value(values: Tensor, mask: Tensor) -> Tensor:
    """The critic's value at each row's last valid position, (N,); 0 for a fully masked row.

    With the one-token shift of the critic (value at t is V(x, y_<t)) this is the read-out just before the final token.
    """
    check_same_shape(values=values, mask=mask)
    picked = values.gather(-1, last_valid_index(mask).unsqueeze(-1)).squeeze(-1)
    has_tokens = (mask != 0).any(dim=-1)
    return torch.where(has_tokens, picked, torch.zeros_like(picked))


@torch.no_grad()
def em_token_advantage(
    outcomes: Tensor, values: Tensor, mask: Tensor, whiten: bool = True, all_reduce: AllReduce | None = None
) -> tuple[Tensor, Tensor]:
    """TEMPO's ``em_token`` estimator (``docs/algorithm.md``, "Advantages"): token advantage ``z - V(x, y_<t)`` with the critic as baseline.

    Args:
        outcomes: (N,) terminal outcome ``z`` of each row. The caller passes the verifier's +-1 for labeled rows and,
            for unlabeled rows, the TEMPO reward: the critic's :func:`last_token_value` (unclamped, like the reference).
        values: (N, R) critic values ``V(x, y_<t)`` from the pre-update critic.
        mask: (N, R) response mask.
        whiten: whiten over ALL valid tokens of the batch at once, labeled and unlabeled rows together (the reference's
            global scope: no per-group baseline, longer responses weigh more).
        all_reduce: sums over ranks: whitening then covers every rank's rows (see :func:`masked_whiten`).

    Returns:
        ``adv`` (N, R), zero on padding, and ``returns`` = ``z`` broadcast over valid tokens (the critic's targets).
    """
    check_same_shape(values=values, mask=mask)
    check_rows(outcomes, "outcomes", mask)
    valid = mask != 0
    raw = torch.where(valid, outcomes.unsqueeze(-1) - values, torch.zeros_like(values)) * mask
    adv = masked_whiten(raw, mask, all_reduce=all_reduce) * mask if whiten else raw
    returns = outcomes.unsqueeze(-1) * mask
    return adv, returns


def _group_index(group_ids: Tensor) -> tuple[Tensor, int]:
    """Map arbitrary group ids to 0..G-1."""
    _, inverse = torch.unique(group_ids, return_inverse=True)
    return inverse, int(inverse.max().item()) + 1 if inverse.numel() else 0


def _group_mean_std_count(scores: Tensor, group_ids: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per row: its group's mean, unbiased std and size (groups of one get std 0 here; callers decide)."""
    index, num_groups = _group_index(group_ids)

    def per_group(fill: float) -> Tensor:
        return torch.full((num_groups,), fill, dtype=scores.dtype, device=scores.device)

    count = per_group(0.0).index_add_(0, index, torch.ones_like(scores))
    mean = per_group(0.0).index_add_(0, index, scores) / count
    # a constant group gets its value back exactly: sum / n can be off by an ulp, and an ulp / eps is not 0
    lowest = per_group(math.inf).scatter_reduce(0, index, scores, "amin")
    highest = per_group(-math.inf).scatter_reduce(0, index, scores, "amax")
    mean = torch.where(lowest == highest, lowest, mean)
    squared = per_group(0.0).index_add_(0, index, (scores - mean[index]) ** 2)
    var = squared / (count - 1).clamp(min=1)
    return mean[index], var.sqrt()[index], count[index]


@torch.no_grad()
def grpo_advantage(
    scores: Tensor, mask: Tensor, group_ids: Tensor, norm_by_std: bool = True, eps: float = 1e-6
) -> tuple[Tensor, Tensor]:
    """GRPO outcome advantage: ``(s - mean_g) / (std_g + eps)`` broadcast to every valid token.

    Args:
        scores: (N,) one score per response.
        mask: (N, R) response mask.
        group_ids: (N,) prompt index of each row.
        norm_by_std: divide by the group std (GRPO); False keeps only the mean baseline (Dr. GRPO).
        eps: added to the std, so an all-equal group gives 0, not NaN.

    The std is unbiased (``torch.std``). A group of one row uses mean 0 and std 1, verl's convention: its score passes
    through unchanged (up to ``1 / (1 + eps)``). Returns ``(adv, adv)``.
    """
    check_rows(scores, "scores", mask)
    check_rows(group_ids, "group_ids", mask)
    mean, std, count = _group_mean_std_count(scores, group_ids)
    single = count == 1
    mean = torch.where(single, torch.zeros_like(mean), mean)
    std = torch.where(single, torch.ones_like(std), std)
    per_row = (scores - mean) / (std + eps) if norm_by_std else scores - mean
    adv = per_row.unsqueeze(-1) * mask
    return adv, adv


@torch.no_grad()
def rloo_advantage(scores: Tensor, mask: Tensor, group_ids: Tensor) -> tuple[Tensor, Tensor]:
    """REINFORCE leave-one-out: ``s_i`` minus the mean of the other rows of its group, broadcast to valid tokens.

    A group of one has no other rows to compare with: its score passes through unchanged (no baseline), as the
    reference's registered ``rloo`` does. Returns ``(adv, adv)``.
    """
    check_rows(scores, "scores", mask)
    check_rows(group_ids, "group_ids", mask)
    mean, _, count = _group_mean_std_count(scores, group_ids)
    # mean of the others = (n * mean - s) / (n - 1), so s - that = n / (n - 1) * (s - mean)
    per_row = torch.where(count > 1, count / (count - 1).clamp(min=1) * (scores - mean), scores)
    adv = per_row.unsqueeze(-1) * mask
    return adv, adv


@torch.no_grad()
def em_advantage(
    outcomes: Tensor,
    values: Tensor,
    mask: Tensor,
    group_ids: Tensor,
    is_labeled: Tensor,
    clamp_unlabeled: bool = True,
    eps: float = 1e-6,
) -> tuple[Tensor, Tensor]:
    """The reference's sequence-level ``em`` estimator (``docs/algorithm.md``, "Advantages"; the reference's HiPhO script).

    Args:
        outcomes: (N,) as for :func:`em_token_advantage`: +-1 on labeled rows, the critic's last-token value on
            unlabeled rows.
        values: (N, R) critic values; they are the critic targets of unlabeled rows.
        mask, group_ids, is_labeled: see the module docstring.
        clamp_unlabeled: clamp unlabeled outcomes to [-1, 1] (the reference does) before the group normalisation.
        eps: added to the group std, as in :func:`grpo_advantage`.

    Returns:
        ``adv``: GRPO group normalisation of the scores, broadcast to valid tokens; 0 for a group of one row (one
        response per prompt), as the reference. ``returns``: the outcome on labeled rows, the critic's own values on
        unlabeled rows (so an unlabeled row asks the critic for no change).
    """
    check_same_shape(values=values, mask=mask)
    check_rows(outcomes, "outcomes", mask)
    check_rows(is_labeled, "is_labeled", mask)
    labeled = is_labeled.bool()
    scores = outcomes if not clamp_unlabeled else torch.where(labeled, outcomes, outcomes.clamp(-1.0, 1.0))
    adv, _ = grpo_advantage(scores, mask, group_ids, norm_by_std=True, eps=eps)
    # a group of one row is its own baseline: advantage 0, as the reference's `em` (GRPO passes such a score through)
    _, _, count = _group_mean_std_count(scores, group_ids)
    adv = torch.where((count == 1).unsqueeze(-1), torch.zeros_like(adv), adv)
    returns = torch.where(labeled.unsqueeze(-1), outcomes.unsqueeze(-1).expand_as(values), values) * mask
    return adv, returns


@torch.no_grad()
def gae_advantage(
    scores: Tensor, values: Tensor, mask: Tensor, gamma: float = 1.0, lam: float = 1.0, whiten: bool = True,
    all_reduce: AllReduce | None = None,
) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation with the score as a reward on each row's last valid token.

    The recursion runs backwards over valid tokens only (padding and masked holes are skipped, carrying the next
    value and the running advantage across them); the value after the last valid token is 0.

    Args:
        scores: (N,) outcome reward per response.
        values: (N, R) critic values ``V(x, y_<t)``.
        mask: (N, R) response mask.
        gamma: discount.
        lam: GAE lambda. With ``gamma = lam = 1`` the advantage is ``score - V_t`` (Monte-Carlo).
        whiten: whiten the advantages over all valid tokens of the batch (of every rank's batch with ``all_reduce``).

    Returns:
        ``adv`` (whitened if asked, zero on padding) and ``returns`` = raw GAE advantage + values (the critic targets).
    """
    check_same_shape(values=values, mask=mask)
    check_rows(scores, "scores", mask)
    valid = mask != 0
    values = torch.where(valid, values, torch.zeros_like(values))
    has_tokens = valid.any(dim=-1)
    rewards = torch.zeros_like(values)
    terminal_reward = torch.where(has_tokens, scores, 0.0).to(values.dtype)
    rewards.scatter_(-1, last_valid_index(mask).unsqueeze(-1), terminal_reward.unsqueeze(-1))

    step_mask = valid.to(values.dtype)
    next_value = torch.zeros_like(values[:, 0])
    running = torch.zeros_like(values[:, 0])
    reversed_adv = []
    for t in reversed(range(values.shape[-1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        candidate = delta + gamma * lam * running
        on = step_mask[:, t]
        next_value = on * values[:, t] + (1 - on) * next_value
        running = on * candidate + (1 - on) * running
        reversed_adv.append(running)
    raw = torch.stack(reversed_adv[::-1], dim=-1) * step_mask
    returns = (raw + values) * step_mask
    adv = masked_whiten(raw, mask, all_reduce=all_reduce) * step_mask if whiten else raw
    return adv, returns

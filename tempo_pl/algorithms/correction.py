"""Correction of the gap between the sampler and the trainer (``docs/algorithm.md``, "Rollout correction").

The engine samples a response with log-probs ``log pi_sampler`` (vLLM in bf16, a stale copy of the weights) that
differ from the trainer's ``log pi_old`` of the same tokens. The policy loss is an expectation under pi_old, so each
token's loss is weighed by the importance ratio ``pi_old / pi_sampler``, truncated at ``cap`` (truncated importance
sampling, TIS: the reference's ``tis_imp_ratio_cap``), or the tokens (rows) whose ratio leaves ``[1/cap, cap]`` are
left out of the loss (masking). The sequence variants use one ratio per row, ``exp(sum_t log(pi_old / pi_sampler))``.

Shapes: (N, R) log-probs and ``mask`` (1 on valid tokens). Example::

    >>> import torch
    >>> old = torch.log(torch.tensor([[0.5, 0.2]]))
    >>> sampler = torch.log(torch.tensor([[0.25, 0.2]]))
    >>> fix = rollout_correction(old, sampler, torch.ones(1, 2), "token_tis", cap=1.5)
    >>> fix.weights.tolist()  # ratios 2 and 1; 2 truncated at 1.5
    [[1.5, 1.0]]
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from tempo_pl.algorithms.advantages import masked_mean, masked_sum
from tempo_pl.algorithms.checks import check_choice, check_same_shape

__all__ = ["CORRECTION_MODES", "Correction", "rollout_correction", "check_correction_cap"]

CORRECTION_MODES = ("none", "token_tis", "sequence_tis", "token_mask", "sequence_mask")


@dataclass
class Correction:
    weights: Tensor
    """(N, R) weight of each token's policy loss: the truncated ratio (TIS), 1 for the masking variants."""
    keep: Tensor
    """(N, R) 1 on the tokens that stay in the policy loss, 0 on those masked out (all 1 for TIS)."""
    metrics: dict[str, Tensor]
    """``weight_mean`` (over kept valid tokens), ``truncated_fraction`` (TIS) or ``masked_fraction`` (masking): the
    share of valid tokens (token variants) or rows (sequence variants) the cap cut; ``gap_before``: mean
    ``|log(pi_old / pi_sampler)|``; ``gap_after``: mean ``|log(pi_old / pi_sampler) - log(weight)|`` over what stays
    in the loss (the part of the log-ratio no weight accounts for), both per token or per row as the variant works."""


def check_correction_cap(mode: str, cap: float, name: str = "algorithm.rollout_correction_cap") -> None:
    """A TIS cap is > 0 (the reference's ``tis_imp_ratio_cap``); a masking cap is > 1 (the band is [1/cap, cap])."""
    if mode.endswith("_tis") and not cap > 0:
        raise ValueError(f"{name} must be > 0 for {mode}, got {cap}")
    if mode.endswith("_mask") and not cap > 1:
        raise ValueError(f"{name} must be > 1 for {mode} (tokens with a ratio outside [1/cap, cap] are masked), "
                         f"got {cap}")


def rollout_correction(old_logprobs: Tensor, sampler_logprobs: Tensor, mask: Tensor, mode: str,
                       cap: float) -> Correction:
    """Per-token weights and keep mask of the correction ``mode`` (one of :data:`CORRECTION_MODES` but ``none``).

    Args:
        old_logprobs: (N, R) ``log pi_old``, the trainer's log-probs of the sampled tokens before the update.
        sampler_logprobs: (N, R) ``log pi_sampler``, the log-probs the engine drew the tokens with.
        mask: (N, R) response mask.
        mode: ``token_tis`` (``min(pi_old / pi_sampler, cap)`` per token), ``sequence_tis`` (the same with the row's
            ratio), ``token_mask`` / ``sequence_mask`` (tokens / rows whose ratio is outside [1/cap, cap] masked).
        cap: truncation (TIS) or band (masking); ``inf`` leaves the ratios untruncated.
    """
    check_choice("mode", mode, CORRECTION_MODES[1:])
    check_same_shape(old_logprobs=old_logprobs, sampler_logprobs=sampler_logprobs, mask=mask)
    check_correction_cap(mode, cap, "cap")
    valid = (mask != 0).to(old_logprobs.dtype)
    log_ratio = torch.where(mask != 0, old_logprobs - sampler_logprobs, torch.zeros_like(old_logprobs))
    per_row = mode.startswith("sequence")
    if per_row:
        log_ratio = masked_sum(log_ratio, mask, dim=-1).unsqueeze(-1).expand_as(mask)
    ratio = torch.exp(log_ratio)
    if mode.endswith("_tis"):
        weights = ratio.clamp(max=cap) if math.isfinite(cap) else ratio
        keep = torch.ones_like(valid)
        cut = ratio > cap
    else:
        cut = (log_ratio > math.log(cap)) | (log_ratio < -math.log(cap))
        weights = torch.ones_like(ratio)
        keep = (~cut).to(valid.dtype)
    # per row (sequence variants: each row's first valid token stands for the row) or per valid token
    unit = _first_valid(valid) if per_row else valid
    residual = (log_ratio - torch.log(weights)).abs()
    with torch.no_grad():
        metrics = {
            "weight_mean": masked_mean(weights, valid * keep),
            ("truncated_fraction" if mode.endswith("_tis") else "masked_fraction"): masked_mean(cut.to(valid.dtype),
                                                                                             unit),
            "gap_before": masked_mean(log_ratio.abs(), unit),
            "gap_after": masked_mean(residual, unit * keep),
        }
    return Correction(weights=weights * valid, keep=keep * valid, metrics=metrics)


def _first_valid(valid: Tensor) -> Tensor:
    """1 on each row's first valid token, 0 elsewhere (rows without one have none)."""
    first = torch.zeros_like(valid)
    rows = valid.any(dim=-1).nonzero().flatten()
    first[rows, valid[rows].argmax(dim=-1)] = 1
    return first

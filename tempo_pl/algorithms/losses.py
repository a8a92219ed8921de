"""Policy and value losses as pure tensor functions (``docs/algorithm.md``, "Losses").

Shapes: (N, R) for log-probs, advantages, values and the response ``mask`` (float, 1 on valid tokens). Each loss
returns ``(loss, metrics)``: a scalar that back-propagates into ``logprobs`` / ``values`` only, and a dict of detached
scalar tensors for logging. A batch with no valid token gives a differentiable 0 and finite metrics, so a mini-batch
that happens to hold only unlabeled rows (value loss) is a no-op rather than a NaN.

Example::

    >>> import torch
    >>> mask = torch.ones(2, 3)
    >>> logp = torch.zeros(2, 3, requires_grad=True)
    >>> loss, metrics = gspo_policy_loss(logp, torch.zeros(2, 3), torch.ones(2, 3), mask, 3e-4, 5e-4)
    >>> loss.backward()
"""

from __future__ import annotations

import torch
from torch import Tensor

from tempo_pl.algorithms.advantages import masked_mean, masked_sum
from tempo_pl.algorithms.checks import check_choice, check_same_shape

__all__ = [
    "AGG_MODES",
    "VALUE_CLIP_MODES",
    "KL_KINDS",
    "aggregate_loss",
    "gspo_policy_loss",
    "ppo_clip_policy_loss",
    "value_loss",
    "kl_penalty",
    "add_policy_regularizers",
]

AGG_MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum")
VALUE_CLIP_MODES = ("sequence", "token", "none")
KL_KINDS = ("kl", "abs", "mse", "low_var_kl")

# exp() of a log-ratio beyond this would overflow in half precision; the reference clamps GSPO at the same value
_MAX_LOG_RATIO = 10.0
# token-level PPO ratios are clamped further out (verl's stability clamp); beyond it the ratio is clipped anyway
_PPO_LOG_RATIO_BOUND = 20.0


def _check_clip(clip_low: float, clip_high: float) -> None:
    if not 0.0 <= clip_low < 1.0:
        raise ValueError(f"clip_low must be in [0, 1) (the ratio's lower bound is 1 - clip_low), got {clip_low}")
    if clip_high < 0.0:
        raise ValueError(f"clip_high must be >= 0, got {clip_high}")


def aggregate_loss(loss_mat: Tensor, mask: Tensor, mode: str) -> Tensor:
    """Reduce a per-token loss (N, R) to a scalar.

    Args:
        loss_mat: per-token loss.
        mask: response mask, same shape.
        mode: ``"token-mean"`` (every valid token of the batch weighs the same, long responses weigh more),
            ``"seq-mean-token-mean"`` (mean over tokens within a row, then over rows: every response weighs the same;
            GSPO and the reference's value loss) or ``"seq-mean-token-sum"`` (sum over a row's tokens, mean over rows).

    Rows without a valid token are left out of the sequence means. When nothing is valid the result is a
    differentiable 0 with a zero gradient.
    """
    check_choice("mode", mode, AGG_MODES)
    check_same_shape(loss_mat=loss_mat, mask=mask)
    if mode == "token-mean":
        return masked_mean(loss_mat, mask)
    row_has_tokens = ((mask != 0).any(dim=-1)).to(loss_mat.dtype)
    if mode == "seq-mean-token-mean":
        per_row = masked_mean(loss_mat, mask, dim=-1)
    else:
        per_row = masked_sum(loss_mat, mask, dim=-1)
    return masked_mean(per_row, row_has_tokens)


def _clip_metrics(
    unclipped: Tensor, clipped: Tensor, ratio: Tensor, logprobs: Tensor, old_logprobs: Tensor, mask: Tensor
) -> dict[str, Tensor]:
    with torch.no_grad():
        return {
            "clipfrac": masked_mean((clipped > unclipped).to(ratio.dtype), mask),
            "approx_kl": masked_mean(old_logprobs - logprobs, mask),
            "ratio_mean": masked_mean(ratio, mask),
        }


def gspo_policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_low: float,
    clip_high: float,
    agg_mode: str = "seq-mean-token-mean",
) -> tuple[Tensor, dict[str, Tensor]]:
    """GSPO with token-level advantages ("GSPO-token"), the TEMPO actor loss (``docs/algorithm.md``, "Losses").

    The sequence ratio ``s_i = exp(mean_t(logp - old_logp))`` (length-normalised, masked) is shared by every token of
    a row; the per-token ratio ``s_i * exp(logp_t - sg[logp_t])`` has the value ``s_i`` and the gradient of token t
    alone. The log-ratio is clamped at <= 10 (no gradient beyond). Per token the loss is the pessimistic
    ``max(-A * ratio, -A * clip(ratio, 1 - clip_low, 1 + clip_high))``.

    Args:
        logprobs: (N, R) current policy log-probs, with grad.
        old_logprobs: (N, R) log-probs of the policy that sampled (or of the step's start).
        advantages: (N, R) token advantages.
        mask: (N, R) response mask.
        clip_low: epsilon below 1 (TEMPO: 3e-4).
        clip_high: epsilon above 1 (TEMPO: 5e-4).
        agg_mode: see :func:`aggregate_loss`; GSPO is defined with ``"seq-mean-token-mean"``.

    Returns:
        The loss and ``clipfrac`` (valid tokens where the clipped branch was taken), ``approx_kl`` (masked mean of
        ``old_logp - logp``) and ``ratio_mean``.

    Example::

        >>> loss, m = gspo_policy_loss(logp, old_logp, adv, mask, clip_low=3e-4, clip_high=5e-4)
    """
    check_same_shape(logprobs=logprobs, old_logprobs=old_logprobs, advantages=advantages, mask=mask)
    _check_clip(clip_low, clip_high)
    seq_log_ratio = masked_mean(logprobs - old_logprobs, mask, dim=-1)
    log_ratio = logprobs - logprobs.detach() + seq_log_ratio.detach().unsqueeze(-1)
    ratio = torch.exp(log_ratio.clamp(max=_MAX_LOG_RATIO))
    return _pessimistic_clip_loss(ratio, advantages, mask, clip_low, clip_high, agg_mode, logprobs, old_logprobs)


def _pessimistic_clip_loss(
    ratio: Tensor, advantages: Tensor, mask: Tensor, clip_low: float, clip_high: float, agg_mode: str,
    logprobs: Tensor, old_logprobs: Tensor, dual_clip: float = 0.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """``agg(max(-A * r, -A * clip(r, 1 - clip_low, 1 + clip_high)))`` and its metrics: the surrogate shared by
    GSPO (sequence ratio) and token-level PPO. With ``dual_clip`` = c > 1, a token with a negative advantage loses at
    most ``-A * c`` (dual-clip PPO, the reference's token-level loss), so a huge ratio cannot blow the update up."""
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    per_token = torch.maximum(unclipped, clipped)
    metrics = _clip_metrics(unclipped, clipped, ratio, logprobs, old_logprobs, mask)
    if dual_clip > 0:
        cap = -advantages * dual_clip
        negative = advantages < 0
        with torch.no_grad():
            metrics["clipfrac_lower"] = masked_mean(((per_token > cap) & negative).to(ratio.dtype), mask)
        per_token = torch.where(negative, torch.minimum(per_token, cap), per_token)
    return aggregate_loss(per_token, mask, agg_mode), metrics


def ppo_clip_policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_low: float,
    clip_high: float,
    agg_mode: str = "token-mean",
    dual_clip: float = 3.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Token-level PPO clip with separate bounds ("clip-higher" when ``clip_high > clip_low``, as in DAPO).

    Per token ``r = exp(logp - old_logp)`` (log-ratio clamped to [-20, 20] for stability) and the loss is
    ``max(-A * r, -A * clip(r, 1 - clip_low, 1 + clip_high))``, capped at ``-A * dual_clip`` on tokens with a
    negative advantage (dual-clip PPO, as the reference's ``vanilla`` loss with ``clip_ratio_c = 3``; 0 = off; the
    metric ``clipfrac_lower`` is the share of tokens the cap cut). Other arguments and metrics as in
    :func:`gspo_policy_loss`.

    Example::

        >>> loss, m = ppo_clip_policy_loss(logp, old_logp, adv, mask, clip_low=0.2, clip_high=0.28)
    """
    check_same_shape(logprobs=logprobs, old_logprobs=old_logprobs, advantages=advantages, mask=mask)
    _check_clip(clip_low, clip_high)
    if dual_clip and dual_clip <= 1.0:
        raise ValueError(f"dual_clip must be > 1 (or 0 = off), got {dual_clip}")
    ratio = torch.exp((logprobs - old_logprobs).clamp(-_PPO_LOG_RATIO_BOUND, _PPO_LOG_RATIO_BOUND))
    return _pessimistic_clip_loss(ratio, advantages, mask, clip_low, clip_high, agg_mode, logprobs, old_logprobs,
                                  dual_clip=dual_clip)


def value_loss(
    values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    mask: Tensor,
    cliprange: float,
    clip_mode: str = "sequence",
    agg_mode: str = "seq-mean-token-mean",
) -> tuple[Tensor, dict[str, Tensor]]:
    """Clipped squared error of the critic against its targets: ``0.5 * agg(max((v - G)^2, (v_clip - G)^2))``.

    Args:
        values: (N, R) new critic predictions, with grad.
        old_values: (N, R) the predictions the advantages were computed with.
        returns: (N, R) targets ``G``.
        mask: (N, R) the tokens to train on. The E-step passes ``response_mask * is_labeled[:, None]`` so only labeled
            rows count.
        cliprange: ``c`` >= 0, how far the critic may move from ``old_values``.
        clip_mode: ``"sequence"`` (the reference): shift each whole row by ``clip(D, -c, c) - D`` where
            ``D`` is the row's masked mean of ``v - v_old``; the shift is not detached, so once clipped the row's
            mean stops receiving gradient while its shape still trains. ``"token"``: the standard per-token
            ``v_old + clip(v - v_old, -c, c)``. ``"none"``: plain squared error.
        agg_mode: see :func:`aggregate_loss`; the reference uses ``"seq-mean-token-mean"``.

    Returns:
        The loss and ``vf_clipfrac`` (sequence: the share of valid tokens whose row has ``|D| > c``, token-weighted
        as the reference logs it; token: the share of valid tokens where the clipped branch was taken; none: 0) and
        ``vpred_mean`` (masked mean of ``values``).

    Example::

        >>> loss, m = value_loss(v, v_old, returns, mask * is_labeled[:, None].float(), cliprange=0.1)
    """
    check_choice("clip_mode", clip_mode, VALUE_CLIP_MODES)
    check_same_shape(values=values, old_values=old_values, returns=returns, mask=mask)
    if cliprange < 0:
        raise ValueError(f"cliprange must be >= 0, got {cliprange}")
    unclipped = (values - returns) ** 2
    if clip_mode == "none":
        per_token = unclipped
        clipfrac = torch.zeros((), dtype=values.dtype, device=values.device)
    elif clip_mode == "token":
        clipped_values = old_values + (values - old_values).clamp(-cliprange, cliprange)
        clipped = (clipped_values - returns) ** 2
        per_token = torch.maximum(unclipped, clipped)
        clipfrac = masked_mean((clipped > unclipped).to(values.dtype), mask)
    else:
        shift = masked_mean(values - old_values, mask, dim=-1)
        clipped_values = values + (shift.clamp(-cliprange, cliprange) - shift).unsqueeze(-1)
        clipped = (clipped_values - returns) ** 2
        per_token = torch.maximum(unclipped, clipped)
        # token-weighted, as the reference logs it: a clipped row of 3 tokens counts three times a row of 1
        row_clipped = (shift.abs() > cliprange).to(values.dtype).unsqueeze(-1).expand_as(values)
        clipfrac = masked_mean(row_clipped, mask)
    loss = 0.5 * aggregate_loss(per_token, mask, agg_mode)
    return loss, {"vf_clipfrac": clipfrac.detach(), "vpred_mean": masked_mean(values, mask).detach()}


def kl_penalty(logprobs: Tensor, ref_logprobs: Tensor, kind: str = "low_var_kl") -> Tensor:
    """Per-token estimate of KL(pi || pi_ref) from sampled-token log-probs, (N, R); mask it with the caller's mask.

    Kinds (J. Schulman, "Approximating KL divergence"): ``"kl"`` k1 = ``logp - ref``; ``"abs"`` ``|logp - ref|``;
    ``"mse"`` k2 = ``0.5 * (logp - ref)^2``; ``"low_var_kl"`` k3 = ``exp(ref - logp) - (ref - logp) - 1``, with the
    log-ratio clamped to [-20, 20] and the result to [-10, 10] so one outlier token cannot dominate.
    """
    check_choice("kind", kind, KL_KINDS)
    check_same_shape(logprobs=logprobs, ref_logprobs=ref_logprobs)
    diff = logprobs - ref_logprobs
    if kind == "kl":
        return diff
    if kind == "abs":
        return diff.abs()
    if kind == "mse":
        return 0.5 * diff**2
    log_ratio = (-diff).clamp(-_PPO_LOG_RATIO_BOUND, _PPO_LOG_RATIO_BOUND)
    return (torch.exp(log_ratio) - log_ratio - 1).clamp(-10.0, 10.0)


def add_policy_regularizers(
    loss: Tensor,
    metrics: dict[str, Tensor],
    mask: Tensor,
    config,
    entropy: Tensor | None = None,
    logprobs: Tensor | None = None,
    ref_logprobs: Tensor | None = None,
    rows: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """The policy objective: ``loss - entropy_coef * entropy + kl_coef * KL(pi || ref)``, each term aggregated with
    ``config.loss_agg_mode``.

    Args:
        loss: the clipped policy-gradient loss; ``metrics`` its metrics (``pg_loss`` is added).
        mask: response mask of the micro-batch.
        config: reads ``entropy_coef``, ``kl_coef``, ``kl_kind`` and ``loss_agg_mode`` (an ``AlgorithmConfig``).
        entropy: per-token entropy of the micro-batch (needed when ``entropy_coef > 0``).
        logprobs: per-token log-probs of the micro-batch; ``ref_logprobs`` the reference's, of the whole batch,
            indexed by ``rows`` (needed when ``kl_coef > 0``).
    """
    metrics = {**metrics, "pg_loss": loss.detach()}
    if config.entropy_coef > 0:
        bonus = aggregate_loss(entropy, mask, config.loss_agg_mode)
        loss = loss - config.entropy_coef * bonus
        metrics["entropy_bonus"] = bonus.detach()
    if config.kl_coef > 0:
        ref = ref_logprobs if rows is None else ref_logprobs[rows]
        kl = aggregate_loss(kl_penalty(logprobs, ref, kind=config.kl_kind), mask, config.loss_agg_mode)
        loss = loss + config.kl_coef * kl
        metrics["kl_ref"] = kl.detach()
    return loss, metrics

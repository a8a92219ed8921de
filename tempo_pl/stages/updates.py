"""The micro-batch losses of the two updates: the critic's value loss on labeled rows (E-step) and the policy's
clipped loss on every row (M-step), as ``rows -> (loss, metrics)`` closures for :func:`~tempo_pl.stages.minibatch.optimize`.
The loss functions themselves are the module's overridable ``value_loss`` / ``policy_loss``."""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor, nn

from tempo_pl.algorithms.losses import add_policy_regularizers
from tempo_pl.models.forward import critic_response_values, policy_response_stats
from tempo_pl.stages.minibatch import MicroLoss
from tempo_pl.types import ForwardStats, Rollout

RowInputs = Callable[[Tensor], "tuple[Tensor, Tensor, Tensor, Tensor]"]


def critic_micro_loss(
    critic: nn.Module, inputs: RowInputs, rollout: Rollout, stats: ForwardStats, returns: Tensor,
    value_loss: Callable[..., "tuple[Tensor, dict[str, Tensor]]"], own_values: bool = False,
) -> MicroLoss:
    """The value loss of a micro-batch, masked to its labeled rows (unlabeled rows' targets are the critic's own).

    ``own_values``: the no-grad pass left the labeled rows' values out (the critic goes first: one epoch of one
    mini-batch, so every forward here runs on the weights before the step); each labeled row's values come from
    this forward, detached, as its old values (the clip is then exact), and are written into ``stats.values`` for
    the advantages that follow."""
    labeled = rollout.is_labeled.float().unsqueeze(-1)

    def micro_loss(rows: Tensor) -> tuple[Tensor, dict[str, Any]]:
        ids, attn, _, resp_mask = inputs(rows)
        width = resp_mask.shape[1]  # the response columns some row of the micro-batch uses
        values = critic_response_values(critic, ids, attn, resp_mask)
        mask = resp_mask.float() * labeled[rows].to(resp_mask.device)
        if own_values:
            keep = rollout.is_labeled[rows].bool().cpu()
            stats.values[rows[keep], :width] = values.detach()[keep.to(values.device)].float()
        loss, metrics = value_loss(values, stats.values[rows, :width], returns[rows, :width], mask)
        return loss, {"loss": loss, **metrics}

    return micro_loss


def policy_micro_loss(
    policy: nn.Module, inputs: RowInputs, rollout: Rollout, stats: ForwardStats, advantages: Tensor, config,
    temperature: float, policy_loss: Callable[..., "tuple[Tensor, dict[str, Tensor]]"],
) -> MicroLoss:
    """The policy loss of a micro-batch with its entropy and KL terms (``config`` is the ``AlgorithmConfig``).

    When ``stats.old_logprobs`` is None the update is on-policy: each row's old log-probs are its own from this
    forward, detached (ratio exactly 1), and they and the entropy are written into ``stats`` for the step's
    metrics (every row is visited once: one epoch of one mini-batch)."""
    on_policy = stats.old_logprobs is None
    if on_policy:
        stats.old_logprobs = torch.zeros_like(rollout.response_mask, dtype=torch.float)
        stats.entropy = torch.zeros_like(stats.old_logprobs)

    def micro_loss(rows: Tensor) -> tuple[Tensor, dict[str, Any]]:
        ids, attn, resp_ids, resp_mask = inputs(rows)
        width = resp_mask.shape[1]  # the response columns some row of the micro-batch uses
        mask = resp_mask.float()
        # an entropy that is only logged stays out of the graph
        out = policy_response_stats(policy, ids, attn, resp_ids, resp_mask, temperature=temperature,
                                    with_entropy=config.entropy_coef > 0 or on_policy,
                                    entropy_grad=config.entropy_coef > 0)
        if on_policy:
            stats.old_logprobs[rows, :width] = out["logprobs"].detach().float().to(stats.old_logprobs.device)
            stats.entropy[rows, :width] = out["entropy"].detach().float().to(stats.entropy.device)
        old = stats.old_logprobs[rows, :width].to(out["logprobs"].device)
        ref = stats.ref_logprobs[rows, :width] if stats.ref_logprobs is not None else None
        loss, metrics = policy_loss(out["logprobs"], old, advantages[rows, :width], mask)
        loss, metrics = add_policy_regularizers(loss, metrics, mask, config, entropy=out.get("entropy"),
                                                logprobs=out["logprobs"], ref_logprobs=ref)
        return loss, {"loss": loss, **metrics}

    return micro_loss

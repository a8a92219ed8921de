"""The micro-batch losses of the two updates: the critic's value loss on labeled rows (E-step) and the policy's
clipped loss on every row (M-step), as ``rows -> (loss, metrics)`` callables for
:func:`~tempo_pl.stages.minibatch.optimize`, and what each update returns. The loss functions themselves are the
module's overridable ``value_loss`` / ``policy_loss``."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable, Optional

import torch
from torch import Tensor, nn

from tempo_pl.algorithms.correction import rollout_correction
from tempo_pl.algorithms.losses import add_policy_regularizers
from tempo_pl.models.forward import critic_response_values, policy_response_stats
from tempo_pl.types import ForwardStats, Rollout

RowInputs = Callable[[Tensor], "tuple[Tensor, Tensor, Tensor, Tensor]"]


@dataclass
class CriticUpdate:
    """What the critic update made: its metrics (names under ``critic/``) and, when it gave the labeled rows' values
    from its own forward (the critic goes first), every row's values: those of its forward on labeled rows, the
    no-grad pass's on the others."""

    metrics: dict[str, float]
    values: Optional[Tensor] = None


@dataclass
class PolicyUpdate:
    """What the policy update made: its metrics (names under ``policy/``) and, when it was on-policy, every row's
    old log-probs and entropy from its own forward."""

    metrics: dict[str, float]
    old_logprobs: Optional[Tensor] = None
    entropy: Optional[Tensor] = None


class CriticMicroLoss:
    """The value loss of a micro-batch, masked to its labeled rows (unlabeled rows' targets are the critic's own).

    ``own_values``: the no-grad pass left the labeled rows' values out (the critic goes first: one epoch of one
    mini-batch, so every forward here runs on the weights before the step); each labeled row's values come from
    this forward, detached, as its old values (the clip is then exact), and are kept in :attr:`values` (the no-grad
    pass's on the other rows) for the advantages that follow."""

    def __init__(self, critic: nn.Module, inputs: RowInputs, rollout: Rollout, stats: ForwardStats, returns: Tensor,
                 value_loss: Callable[..., "tuple[Tensor, dict[str, Tensor]]"], own_values: bool = False) -> None:
        self.critic, self.inputs, self.rollout, self.returns = critic, inputs, rollout, returns
        self.value_loss, self.own_values = value_loss, own_values
        self.values = stats.values.clone() if own_values else stats.values
        self.labeled = rollout.is_labeled.float().unsqueeze(-1)

    def __call__(self, rows: Tensor) -> tuple[Tensor, dict[str, Any]]:
        ids, attn, _, resp_mask = self.inputs(rows)
        width = resp_mask.shape[1]  # the response columns some row of the micro-batch uses
        values = critic_response_values(self.critic, ids, attn, resp_mask)
        mask = resp_mask.float() * self.labeled[rows].to(resp_mask.device)
        if self.own_values:
            keep = self.rollout.is_labeled[rows].bool().cpu()
            self.values[rows[keep], :width] = values.detach()[keep.to(values.device)].float()
        loss, metrics = self.value_loss(values, self.values[rows, :width], self.returns[rows, :width], mask)
        return loss, {"loss": loss, **metrics}


def critic_micro_loss(
    critic: nn.Module, inputs: RowInputs, rollout: Rollout, stats: ForwardStats, returns: Tensor,
    value_loss: Callable[..., "tuple[Tensor, dict[str, Tensor]]"], own_values: bool = False,
) -> CriticMicroLoss:
    """The critic's micro-batch loss (:class:`CriticMicroLoss`)."""
    return CriticMicroLoss(critic, inputs, rollout, stats, returns, value_loss, own_values)


class PolicyMicroLoss:
    """The policy loss of a micro-batch with its entropy and KL terms (``config`` is the ``AlgorithmConfig``).

    When ``stats.old_logprobs`` is None the update is on-policy: each row's old log-probs are its own from this
    forward, detached (ratio exactly 1), and they and the entropy are kept in :attr:`old_logprobs` and
    :attr:`entropy` for the step's metrics (every row is visited once: one epoch of one mini-batch)."""

    def __init__(self, policy: nn.Module, inputs: RowInputs, rollout: Rollout, stats: ForwardStats, advantages: Tensor,
                 config, temperature: float, policy_loss: Callable[..., "tuple[Tensor, dict[str, Tensor]]"],
                 keep: Optional[Tensor] = None) -> None:
        self.policy, self.inputs, self.advantages, self.config, self.keep = policy, inputs, advantages, config, keep
        self.temperature, self.policy_loss, self.ref_logprobs = temperature, policy_loss, stats.ref_logprobs
        self.on_policy = stats.old_logprobs is None
        self.old_logprobs, self.entropy = stats.old_logprobs, None
        if self.on_policy:
            self.old_logprobs = torch.zeros_like(rollout.response_mask, dtype=torch.float)
            self.entropy = torch.zeros_like(self.old_logprobs)

    def __call__(self, rows: Tensor) -> tuple[Tensor, dict[str, Any]]:
        config = self.config
        ids, attn, resp_ids, resp_mask = self.inputs(rows)
        width = resp_mask.shape[1]  # the response columns some row of the micro-batch uses
        mask = resp_mask.float()
        if self.keep is not None:  # tokens the rollout correction masked leave the loss
            mask = mask * self.keep[rows, :width].to(mask.device)
        # an entropy that is only logged stays out of the graph
        out = policy_response_stats(self.policy, ids, attn, resp_ids, resp_mask, temperature=self.temperature,
                                    with_entropy=config.entropy_coef > 0 or self.on_policy,
                                    entropy_grad=config.entropy_coef > 0)
        if self.on_policy:
            self.old_logprobs[rows, :width] = out["logprobs"].detach().float().to(self.old_logprobs.device)
            self.entropy[rows, :width] = out["entropy"].detach().float().to(self.entropy.device)
        old = self.old_logprobs[rows, :width].to(out["logprobs"].device)
        ref = self.ref_logprobs[rows, :width] if self.ref_logprobs is not None else None
        loss, metrics = self.policy_loss(out["logprobs"], old, self.advantages[rows, :width], mask)
        loss, metrics = add_policy_regularizers(loss, metrics, mask, config, entropy=out.get("entropy"),
                                                logprobs=out["logprobs"], ref_logprobs=ref)
        return loss, {"loss": loss, **metrics}


def policy_micro_loss(
    policy: nn.Module, inputs: RowInputs, rollout: Rollout, stats: ForwardStats, advantages: Tensor, config,
    temperature: float, policy_loss: Callable[..., "tuple[Tensor, dict[str, Tensor]]"], keep: Optional[Tensor] = None,
) -> PolicyMicroLoss:
    """The policy's micro-batch loss (:class:`PolicyMicroLoss`); ``keep`` (N, R) masks tokens out of it."""
    return PolicyMicroLoss(policy, inputs, rollout, stats, advantages, config, temperature, policy_loss, keep)


def corrected_advantages(
    rollout: Rollout, stats: ForwardStats, advantages: Tensor, config, engine_name: str
) -> tuple[Tensor, Optional[Tensor], dict[str, float]]:
    """The advantages under ``config.rollout_correction`` (``config`` is the ``AlgorithmConfig``): each token's
    scaled by its weight (for the clipped losses, whose per-token loss scales with the advantage, this is the
    reference's weighting of each token's loss), the tokens the correction keeps (None when it is off) and its
    metrics under ``rollout/correction/``. The old log-probs are the no-grad pass's."""
    if config.rollout_correction == "none":
        return advantages, None, {}
    if rollout.sampling_logprobs is None or stats.old_logprobs is None:
        raise ValueError(f"algorithm.rollout_correction={config.rollout_correction!r}: the rollout engine "
                         f"{engine_name} gave no sampling log-probs for this rollout")
    old = stats.old_logprobs
    mask = rollout.response_mask.float().to(old.device)
    fix = rollout_correction(old, rollout.sampling_logprobs.to(old.device), mask, config.rollout_correction,
                             config.rollout_correction_cap)
    metrics = {f"rollout/correction/{name}": float(value) for name, value in fix.metrics.items()}
    return advantages * fix.weights.to(advantages.device), fix.keep, metrics


def stats_made_by_updates(stats: ForwardStats, critic: CriticUpdate, policy: PolicyUpdate) -> ForwardStats:
    """The step's statistics with what the updates gave from their own forwards (the labeled rows' values when the
    critic went first; old log-probs and entropy when the policy update was on-policy)."""
    made = {"values": critic.values, "old_logprobs": policy.old_logprobs, "entropy": policy.entropy}
    return replace(stats, **{name: tensor for name, tensor in made.items() if tensor is not None})

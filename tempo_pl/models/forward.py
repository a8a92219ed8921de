"""The forward passes of the training loop: model inputs of a rollout, the policy's per-token statistics and the
critic's per-token values over the response columns.

Nothing here knows Lightning: the stages (:mod:`tempo_pl.stages`) and evaluation call these.

Example::

    input_ids, attention_mask, position_ids = sequence_inputs(rollout)
    stats = policy_response_stats(policy, input_ids, attention_mask, rollout.response_ids, rollout.response_mask)
    values = critic_response_values(critic, input_ids, attention_mask, rollout.response_mask)
"""

from __future__ import annotations

import inspect
from typing import Optional

import torch
from torch import Tensor, nn

from tempo_pl.algorithms.token_stats import head_token_stats
from tempo_pl.models.hf import hf_model, position_ids_from_mask
from tempo_pl.models.lm_head import stats_instead_of_logits
from tempo_pl.models.shared_prompts import (
    forward_on_shared_prompts,
    prompt_groups,
    response_positions,
    whole_pass,
)
from tempo_pl.types import Rollout


def sequence_inputs(rollout: Rollout) -> tuple[Tensor, Tensor, Tensor]:
    """Model inputs for a rollout: prompt (left-padded, P columns) then response (right-padded), so response token t
    sits at column P + t.

    Returns ``(input_ids, attention_mask, position_ids)``; positions count attended tokens only, exactly as
    ``generate`` numbers them, so the recomputed log-probs match the sampler's.
    """
    input_ids = torch.cat([rollout.prompt_ids, rollout.response_ids], dim=1)
    attention_mask = torch.cat([rollout.prompt_mask.long(), (rollout.response_mask > 0).long()], dim=1)
    return input_ids, attention_mask, position_ids_from_mask(attention_mask)


def _accepts(model: nn.Module, argument: str) -> bool:
    return argument in inspect.signature(hf_model(model).forward).parameters


def policy_response_stats(
    policy: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    response_ids: Tensor,
    response_mask: Tensor,
    temperature: float = 1.0,
    with_entropy: bool = True,
    with_self_certainty: bool = False,
    position_ids: Optional[Tensor] = None,
    entropy_grad: bool = True,
) -> dict[str, Tensor]:
    """Per-token statistics of the policy over the response columns, each (N, R) float32, zero outside the mask.

    The logits at position P-1+t predict response token t; they are divided by the sampling ``temperature`` first,
    so ``logprobs`` are those of the distribution the rollout was drawn from (before top-k/top-p truncation).
    Gradients flow outside ``torch.no_grad`` (into the entropy only with ``entropy_grad``). The LM head runs on valid
    response tokens only, a chunk at a time (:func:`~tempo_pl.algorithms.token_stats.head_token_stats`): no (N, R,
    vocabulary) logits are ever held. Rows that share a prompt run it once (:mod:`tempo_pl.models.shared_prompts`).
    Returns ``{"logprobs", "entropy"?, "self_certainty"?}``; ``self_certainty`` is KL(Uniform || pi) per token.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    position_ids = position_ids_from_mask(attention_mask) if position_ids is None else position_ids
    num_response = response_ids.shape[1]
    kwargs = {"logits_to_keep": num_response + 1} if _accepts(policy, "logits_to_keep") else {}
    inputs = (input_ids, attention_mask, position_ids)
    groups = prompt_groups(policy, input_ids, attention_mask, num_response)  # the n rows of a prompt run it once
    stats = lambda head, outputs: head_token_stats(  # noqa: E731  (outputs: the head's inputs, of each pass)
        head, response_positions(outputs, num_response, groups), response_ids, response_mask, temperature,
        with_entropy, entropy_grad, with_self_certainty)
    with stats_instead_of_logits(hf_model(policy).get_output_embeddings(), stats, 1 + (groups is not None)) as made:
        out = (whole_pass(policy, *inputs, **kwargs) if groups is None else
               forward_on_shared_prompts(policy, groups, *inputs, num_response)[1]).logits
    if out is not made.get("stats"):  # the model reworks its head's output (soft-capping...): whole logits
        out = stats(nn.Identity(), [whole_pass(policy, *inputs, **kwargs).logits])
    names = ["logprobs"] + ["entropy"] * with_entropy + ["self_certainty"] * with_self_certainty
    return dict(zip(names, out.unbind(-1)))


def critic_response_values(
    critic: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    response_mask: Tensor,
    position_ids: Optional[Tensor] = None,
) -> Tensor:
    """V(x, y_<t) for every response index t, (N, R) float32, times the response mask.

    The value at response index t is the head's read-out of the hidden state at position P-1+t, the token before
    y_t: the value of the state before emitting y_t (docs/algorithm.md, "Advantages").
    """
    position_ids = position_ids_from_mask(attention_mask) if position_ids is None else position_ids
    num_response = response_mask.shape[1]
    groups = prompt_groups(critic, input_ids, attention_mask, num_response)  # the n rows of a prompt run it once
    inputs = (input_ids, attention_mask, position_ids)
    passes = ([whole_pass(critic, *inputs)] if groups is None else
              forward_on_shared_prompts(critic, groups, *inputs, num_response))
    values = response_positions([out.logits for out in passes], num_response, groups)[..., 0].float()
    return values * response_mask.to(values.dtype)

"""The no-grad pass over a rollout that every RL step makes before its updates: the policy's old log-probs and
entropy, the critic's values, and (when asked) self-certainty and the reference policy's log-probs."""

from __future__ import annotations

import contextlib
from typing import Callable, Optional

import torch
from torch import Tensor, nn

from tempo_pl.stages.minibatch import full_width, index_chunks, row_inputs
from tempo_pl.models.forward import critic_response_values, policy_response_stats
from tempo_pl.types import ForwardStats, Rollout


@torch.no_grad()
def rollout_stats(
    rollout: Rollout,
    policy: nn.Module,
    critic: Optional[nn.Module],
    device: torch.device,
    batch_rows: int,
    temperature: float,
    with_self_certainty: bool = False,
    reference: Optional[Callable[[], contextlib.AbstractContextManager]] = None,
    with_policy: bool = True,
    value_rows: Optional[Tensor] = None,
) -> ForwardStats:
    """Statistics of every row, ``batch_rows`` rows per forward pass, with the models in eval mode (restored to
    train mode after). ``reference()`` enters a context that yields the reference model (KL); None skips it.
    ``with_policy=False`` skips the policy's pass (its log-probs and entropy stay None) unless self-certainty needs
    it: an on-policy update takes them from its own training forward. ``value_rows`` (bool per row) limits the
    critic's pass to those rows; the others' values stay 0 until the critic update's forward gives them."""
    with_policy = with_policy or with_self_certainty
    parts: dict[str, list] = {"logprobs": [], "entropy": [], "self_certainty": [], "ref": []}
    policy.eval()
    if critic is not None:
        critic.eval()
    inputs = row_inputs(rollout, device)
    width = rollout.response_ids.shape[1]
    for rows in index_chunks(rollout.num_rows, batch_rows):
        ids, attn, resp_ids, resp_mask = inputs(rows)  # without the padding columns the rows share
        if with_policy:
            out = policy_response_stats(policy, ids, attn, resp_ids, resp_mask, temperature=temperature,
                                        with_entropy=True, with_self_certainty=with_self_certainty)
            parts["logprobs"].append(full_width(out["logprobs"], width))
            parts["entropy"].append(full_width(out["entropy"], width))
            if with_self_certainty:
                parts["self_certainty"].append(full_width(out["self_certainty"], width))
        if reference is not None:
            with reference() as ref_model:
                ref = policy_response_stats(ref_model, ids, attn, resp_ids, resp_mask, temperature=temperature,
                                            with_entropy=False)
            parts["ref"].append(full_width(ref["logprobs"], width))
    values = None if critic is None else critic_values(critic, rollout, inputs, batch_rows, device, value_rows)
    policy.train()
    if critic is not None:
        critic.train()
    cat = lambda k: torch.cat(parts[k]).float() if parts[k] else None  # noqa: E731
    return ForwardStats(old_logprobs=cat("logprobs"), entropy=cat("entropy"), values=values,
                        self_certainty=cat("self_certainty"), ref_logprobs=cat("ref"))


@torch.no_grad()
def critic_values(critic: nn.Module, rollout: Rollout, inputs: Callable, batch_rows: int, device: torch.device,
                  rows_wanted: Optional[Tensor] = None) -> Tensor:
    """(N, R) float32 values of the wanted rows (all without ``rows_wanted``), ``batch_rows`` rows per pass; 0 on
    the others. The rows of a group stay together, so a group's prompt still runs once."""
    values = torch.zeros(rollout.num_rows, rollout.response_ids.shape[1], device=device)
    chosen = (torch.arange(rollout.num_rows) if rows_wanted is None else
              torch.nonzero(rows_wanted.cpu(), as_tuple=False).flatten())
    for part in index_chunks(len(chosen), batch_rows):
        rows = chosen[part]
        ids, attn, _, resp_mask = inputs(rows)
        values[rows.to(device)] = full_width(critic_response_values(critic, ids, attn, resp_mask),
                                             values.shape[1]).float()
    return values

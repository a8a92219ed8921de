"""The no-grad pass over a rollout that every RL step makes before its updates: the policy's old log-probs and
entropy, the critic's values, and (when asked) self-certainty and the reference policy's log-probs."""

from __future__ import annotations

import contextlib
from typing import Callable, Optional

import torch
from torch import nn

from tempo_pl.stages.minibatch import full_width, index_chunks, row_inputs
from tempo_pl.models import critic_response_values, policy_response_stats
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
) -> ForwardStats:
    """Statistics of every row, ``batch_rows`` rows per forward pass, with the models in eval mode (restored to
    train mode after). ``reference()`` enters a context that yields the reference model (KL); None skips it.
    ``with_policy=False`` skips the policy's pass (its log-probs and entropy stay None) unless self-certainty needs
    it: an on-policy update takes them from its own training forward."""
    with_policy = with_policy or with_self_certainty
    parts: dict[str, list] = {"logprobs": [], "entropy": [], "self_certainty": [], "values": [], "ref": []}
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
        if critic is not None:
            parts["values"].append(full_width(critic_response_values(critic, ids, attn, resp_mask), width))
        if reference is not None:
            with reference() as ref_model:
                ref = policy_response_stats(ref_model, ids, attn, resp_ids, resp_mask, temperature=temperature,
                                            with_entropy=False)
            parts["ref"].append(full_width(ref["logprobs"], width))
    policy.train()
    if critic is not None:
        critic.train()
    cat = lambda k: torch.cat(parts[k]).float() if parts[k] else None  # noqa: E731
    return ForwardStats(old_logprobs=cat("logprobs"), entropy=cat("entropy"), values=cat("values"),
                        self_certainty=cat("self_certainty"), ref_logprobs=cat("ref"))

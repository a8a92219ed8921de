"""One forward pass over rows that share prompts: each distinct prompt runs once, then every row's response runs on
its prompt's keys and values.

The n responses of a group are sampled from one prompt, so a pass over prompt + response columns computes every
prompt n times. Here the distinct prompts run once (with a KV cache the caller provides), the cache is copied to the
rows (an index, so gradients flow back into the one prompt pass), and the response columns run on top of it with the
row's own attention mask and positions. The results are those of the whole pass (the same keys, values, masks and
positions reach every response token); the prompt columns cost 1/n of the work. The hidden state of a prompt's last
position, which predicts the first response token, comes from the prompt pass.

:func:`shared_prompt_cache` does the same for ``generate``: each prompt is prefilled once for its n samples.

It is used where it is safe: a model whose forward takes a ``cache`` (Hugging Face models, peft models and the
shared-base views around them), not sharded with FSDP (two forwards before one backward) and without gradient
checkpointing (which turns caches off); otherwise the caller runs the whole pass.

Example::

    groups = prompt_groups(model, input_ids, attention_mask, num_response)   # None: every prompt is different
    if groups is not None:
        prompt_out, response_out = forward_on_shared_prompts(model, groups, input_ids, attention_mask, position_ids,
                                                             num_response)
"""

from __future__ import annotations

import inspect
from typing import Any, NamedTuple, Optional

import torch
from torch import Tensor, nn

from tempo_pl.models.hf import hf_model, position_ids_from_mask


class PromptGroups(NamedTuple):
    first: Tensor
    """(G,) the first row of each distinct prompt."""
    of_row: Tensor
    """(N,) each row's group: ``first[of_row[i]]`` holds row i's prompt."""


def prompt_groups(model: nn.Module, input_ids: Tensor, attention_mask: Tensor, num_response: int
                  ) -> Optional[PromptGroups]:
    """The rows' prompt groups when some rows share a prompt and ``model`` can run them once; None otherwise."""

    width = input_ids.shape[1] - num_response
    if width < 1 or len(input_ids) < 2 or not _can_share(model, hf_model(model)):
        return None
    prompts = torch.cat([input_ids[:, :width], attention_mask[:, :width].to(input_ids.dtype)], 1)
    unique, of_row = torch.unique(prompts, dim=0, return_inverse=True)
    if len(unique) == len(prompts):
        return None
    rows = torch.arange(len(prompts), device=prompts.device)
    first = torch.full((len(unique),), len(prompts), device=prompts.device).scatter_reduce(0, of_row, rows, "amin")
    return PromptGroups(first, of_row)


def _can_share(model: nn.Module, hf: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    checkpointing = getattr(hf, "is_activation_checkpointing", None)  # transformers >= 5's name
    if checkpointing is None:
        checkpointing = getattr(hf, "is_gradient_checkpointing", False)
    if any(isinstance(m, FSDPModule) for m in (model, hf)) or checkpointing:
        return False
    return "cache" in inspect.signature(hf.forward).parameters


def forward_on_shared_prompts(
    model: nn.Module, groups: PromptGroups, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor,
    num_response: int, **kwargs: Any,
) -> tuple[Any, Any]:
    """The model's outputs of the prompt pass (one row per group) and of the response pass (every row, the response
    columns only); ``kwargs`` go to both calls (``logits_to_keep``, say)."""
    from transformers import DynamicCache


    width = input_ids.shape[1] - num_response
    first = groups.first
    cache = DynamicCache(config=hf_model(model).config)  # filled in place, whatever the model's output type
    prompt_out = model(input_ids=input_ids[first, :width], attention_mask=attention_mask[first, :width],
                       position_ids=position_ids[first, :width], cache=cache, use_cache=True, **kwargs)
    cache.batch_select_indices(groups.of_row)
    response_out = model(input_ids=input_ids[:, width:], attention_mask=attention_mask,
                         position_ids=position_ids[:, width:], cache=cache, use_cache=False, **kwargs)
    return prompt_out, response_out


def shared_prompt_cache(model: nn.Module, prompt_ids: Tensor, prompt_mask: Tensor, n: int) -> Optional[Any]:
    """For ``generate`` of n samples per prompt: the KV cache of every prompt but its last token, computed once per
    prompt and copied to its n rows (``generate`` then runs the last token and samples); None where ``model`` cannot
    share (see :func:`prompt_groups`) or there is nothing to share."""
    from transformers import DynamicCache


    hf = hf_model(model)
    if n < 2 or prompt_ids.shape[1] < 2 or not _can_share(model, hf):
        return None
    cache = DynamicCache(config=hf.config)
    positions = position_ids_from_mask(prompt_mask)
    model(input_ids=prompt_ids[:, :-1], attention_mask=prompt_mask[:, :-1], position_ids=positions[:, :-1],
          cache=cache, use_cache=True)
    cache.batch_repeat_interleave(n)
    return cache


def whole_pass(model: nn.Module, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor, **kwargs: Any):
    """The model's output of one pass over every column (no KV cache: nothing decodes after it, and a cache would
    hold every layer's keys)."""
    return model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False,
                 **kwargs)


def response_positions(outputs: list[Tensor], num_response: int, groups: Optional[PromptGroups]) -> Tensor:
    """Positions P-1 .. P+R-2 (those that predict the response tokens) of one whole pass's per-position output, or
    of a shared-prompt pass's two: the prompt's last position copied to its rows, then the response columns but the
    last."""
    if len(outputs) == 1:
        return outputs[0][:, -num_response - 1 : -1]
    return torch.cat([outputs[0][groups.of_row, -1:], outputs[1][:, :-1]], 1)

"""The Hugging Face model inside a wrapped model, and positions that count attended tokens only.

A leaf: the builders, the forward passes, shared-prompt passes, the engines and the FSDP2 recipe all read it.
"""

from __future__ import annotations

from torch import Tensor, nn
from transformers import PreTrainedModel


def position_ids_from_mask(attention_mask: Tensor) -> Tensor:
    """0, 1, 2, ... over the attended tokens; padding gets 0 (it is never attended)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def hf_model(model: nn.Module) -> PreTrainedModel:
    """The Hugging Face ``PreTrainedModel`` inside a model: itself, a peft model's base, or a shared-base view's."""
    if isinstance(model, PreTrainedModel):
        return model
    get_base = getattr(model, "get_base_model", None)
    base = get_base() if callable(get_base) else None
    if isinstance(base, PreTrainedModel):
        return base
    raise TypeError(f"cannot find the Hugging Face model inside {type(model).__name__}")

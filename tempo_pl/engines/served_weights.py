"""The policy's weights as a separate inference engine serves them: Hugging Face checkpoint names, full tensors.

A rollout engine with its own copy of the weights (vLLM) takes them as ``(name, tensor)`` pairs in the names of the
causal LM's checkpoint (``model.layers.0.self_attn.q_proj.weight``, ``lm_head.weight``). :func:`served_weights`
yields them from the live policy without building a second model:

- LoRA: each adapted layer yields its base weight plus the policy adapter's delta (``W + B @ A * alpha / r``),
  computed for that layer alone; the adapters stay unmerged in the trained model. A 4-bit (QLoRA) base weight is
  dequantized first, so the engine serves the weights the trainer computes with, in full precision, rather than a
  re-quantized merge (:func:`tempo_pl.models.lora.merged_model` is the whole-model copy these pairs are tested against).
- FSDP2: the parameters are gathered one FSDP unit (a decoder layer, then the root's embeddings, norm and head) at
  a time and freed before the next unit is gathered, so a rank never holds more than one unit's full weights (and
  the copies it hands out, which the consumer frees) on top of its shards. Every rank must iterate to the end
  (each unit's all-gather is a collective).

Example::

    for name, tensor in served_weights(policy):      # a plain, peft, shared-base or FSDP2-sharded policy
        engine_model.load_weights([(name, tensor)])
"""

from __future__ import annotations

import contextlib
import sys
from typing import Iterator, Optional

from torch import Tensor, nn

from tempo_pl.models.hf import hf_model
from tempo_pl.models.shared_base import POLICY_ADAPTER, PolicyView


def served_weights(model: nn.Module) -> Iterator[tuple[str, Tensor]]:
    """``(checkpoint name, full tensor)`` of every parameter of the policy's causal LM, LoRA adapters merged."""
    hf = hf_model(model)
    adapter = _policy_adapter(model)
    units = _fsdp_units(hf)
    unit_ids = {id(unit) for unit in units}
    for unit in units:
        prefix = _name_in(hf, unit)
        with _gathered(unit) as sharded:
            for name, tensor in _unit_weights(unit, prefix, adapter, stop=unit_ids - {id(unit)}):
                # a gathered parameter lives in FSDP2's all-gather buffer, which the reshard frees: a consumer that
                # keeps a tensor past the next unit (vLLM defers a vocab-padded embedding's copy) needs its own
                yield name, tensor.clone() if sharded else tensor


def release_gathered(model: nn.Module) -> None:
    """Free the full parameters of an FSDP2-sharded policy that are still gathered (a caller's gather, or the root's,
    which FSDP2 keeps after a forward that no backward follows); a no-op on an unsharded model.

    An engine that serves its own copy of the weights calls it before sampling, so no gathered parameters stay in
    memory, beside the engine's copy, for the whole rollout.
    """
    from torch.distributed.fsdp import FSDPModule

    for module in hf_model(model).modules():
        if isinstance(module, FSDPModule):
            module.reshard()


# ----------------------------------------------------------------------------------------------------------- helpers


def _policy_adapter(model: nn.Module) -> Optional[str]:
    """The adapter a shared-base policy runs (the base also holds the critic's); None = each layer's active ones."""
    return POLICY_ADAPTER if isinstance(model, PolicyView) else None


def _fsdp_units(hf: nn.Module) -> list[nn.Module]:
    """The FSDP2 modules of ``hf`` (each gathers its own parameters only), or ``[hf]`` when it is not sharded."""
    from torch.distributed.fsdp import FSDPModule

    units = [m for m in hf.modules() if isinstance(m, FSDPModule)]
    if not units:
        return [hf]
    if units[0] is not hf:
        raise ValueError(f"{type(hf).__name__} has FSDP2 modules inside but is not sharded itself (shard_model shards "
                         "the root too): its root parameters would be read as shards")
    # the root last: its embeddings and head are gathered after every layer, for no longer than their own transfer
    return units[1:] + units[:1]


def _name_in(root: nn.Module, module: nn.Module) -> str:
    if module is root:
        return ""
    return next(name for name, m in root.named_modules() if m is module)


@contextlib.contextmanager
def _gathered(unit: nn.Module) -> Iterator[bool]:
    """Gathers an FSDP2 unit for the block and frees it after; yields whether it was sharded."""
    from torch.distributed.fsdp import FSDPModule

    if not isinstance(unit, FSDPModule):
        yield False
        return
    unit.unshard()  # this unit's parameter group only: FSDP2's unshard does not recurse into nested units
    try:
        yield True
    finally:
        unit.reshard()


def _unit_weights(
    module: nn.Module, prefix: str, adapter: Optional[str], stop: set[int]
) -> Iterator[tuple[str, Tensor]]:
    """The weights of ``module``'s subtree, without the subtrees of the modules in ``stop`` (other FSDP units)."""
    from peft.tuners.lora import LoraLayer

    dot = f"{prefix}." if prefix else ""
    if isinstance(module, LoraLayer):
        base = module.get_base_layer()
        yield f"{dot}weight", _merged_weight(module, adapter)
        if getattr(base, "bias", None) is not None:
            yield f"{dot}bias", base.bias.detach()
        return
    for name, param in module.named_parameters(recurse=False):
        yield f"{dot}{name}", param.detach()
    for name, child in module.named_children():
        if id(child) not in stop:
            yield from _unit_weights(child, f"{dot}{name}", adapter, stop)


def _merged_weight(layer: nn.Module, adapter: Optional[str]) -> Tensor:
    """A LoRA layer's base weight (dequantized when 4-bit) plus the deltas of the adapters the policy runs."""
    from peft.utils.integrations import dequantize_module_weight

    base = layer.get_base_layer()
    weight = _dequantized(base) if _is_4bit(base) else dequantize_module_weight(base)
    weight = weight.detach()
    if layer.merged or getattr(layer, "disable_adapters", False):
        return weight  # the deltas are in the weight already, or the policy runs without them
    adapters = [adapter] if adapter is not None else list(layer.active_adapters)
    deltas = [layer.get_delta_weight(name) for name in adapters if name in layer.lora_A]
    if not deltas:
        return weight
    merged = weight.float()
    for delta in deltas:
        merged = merged + delta.detach().float()
    return merged.to(weight.dtype)


def _is_4bit(layer: nn.Module) -> bool:
    # by the layer, not its weight: FSDP2 gathers a Params4bit as a plain parameter
    if "bitsandbytes" not in sys.modules:  # no 4-bit layer can exist; do not pay for the import
        return False
    import bitsandbytes as bnb

    return isinstance(layer, bnb.nn.Linear4bit)


def _dequantized(base: nn.Module) -> Tensor:
    """A bitsandbytes 4-bit weight in its compute dtype. Under FSDP2 the gathered weight carries no quantization
    state: the layer keeps it (``quant_state``), as its own forward reads it."""
    import bitsandbytes as bnb

    state = getattr(base.weight, "quant_state", None) or getattr(base, "quant_state", None)
    if state is None:
        raise ValueError(f"{type(base).__name__}: a 4-bit weight without quantization state cannot be dequantized")
    return bnb.functional.dequantize_4bit(base.weight.data, state).to(state.dtype)

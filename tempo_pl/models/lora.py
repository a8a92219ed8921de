"""LoRA and QLoRA: adapter configs, 4-bit bases (bitsandbytes), and merging the adapters back into plain weights.

The builders (:mod:`tempo_pl.models.builders`, :mod:`tempo_pl.models.shared_base`) configure adapters and 4-bit bases
through
these helpers; everything that writes a Hugging Face folder (the SFT stage, :class:`~tempo_pl.callbacks.HFExport`,
:func:`tempo_pl.run.export.export_hf`) merges through :func:`merged_model`, so a saved model is always a plain
checkpoint that loads without peft.

Example::

    plain = merged_model(policy)                     # a copy with the adapters merged; ``policy`` keeps them
    save_merged(critic, "ckpt/critic", tokenizer)    # AutoModelForTokenClassification.from_pretrained loads it
"""

from __future__ import annotations

import copy
import os
import sys
import tempfile
from pathlib import Path
from typing import Optional, Union

import torch
from torch import nn


def lora_config(lora, task_type: str, modules_to_save: Optional[list[str]] = None):
    """peft's ``LoraConfig`` of a :class:`~tempo_pl.models.builders.LoraSpec`."""
    from peft import LoraConfig

    return LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        task_type=task_type,
        modules_to_save=modules_to_save,
    )


def bnb_config(dtype: torch.dtype, skip_modules: Optional[list[str]]):
    """NF4 with double quantization, computing and storing in ``dtype``; ``skip_modules`` stay in full precision."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=dtype,
        # storage in the compute dtype lets FSDP2 shard the packed weights with the rest of the parameters
        bnb_4bit_quant_storage=dtype,
        llm_int8_skip_modules=skip_modules,
    )


def quantize_via_disk(model: nn.Module, auto_cls, quantization_config, **load_kwargs) -> nn.Module:
    """bitsandbytes quantizes at load time only: save the (random) model and load it back in 4-bit.

    Every rank writes its own copy: ``save_pretrained`` writes nothing on ranks other than 0 once torch.distributed
    is initialised, so the files are written directly (the config, and the weights with shared tensors stored once).
    """
    from safetensors.torch import save_model

    with tempfile.TemporaryDirectory(prefix="tempo_pl_4bit_") as tmp:
        model.config.to_json_file(os.path.join(tmp, "config.json"))
        save_model(model, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
        return auto_cls.from_pretrained(tmp, quantization_config=quantization_config, **load_kwargs)


def is_loaded_quantized(model: nn.Module) -> bool:
    """True when transformers loaded ``model`` with a quantization config."""
    return getattr(model, "is_quantized", False) or getattr(model, "hf_quantizer", None) is not None


def disable_bnb_avx512bf16(model: nn.Module) -> int:
    """Keep every bitsandbytes 4-bit layer on the kernel that has a backward pass; returns how many were changed.

    On an AVX512-BF16 CPU, bitsandbytes repacks a 4-bit weight for a faster inference kernel at the first eval-mode
    no-grad forward (e.g. ``generate``). That kernel has no autograd: after it, LoRA gradients are silently wrong or
    None. Setting ``support_avx512bf16_for_cpu = False`` prevents the repacking; a weight already repacked is
    converted back (its absmax keeps the bfloat16 rounding of the repacking).
    """
    if "bitsandbytes" not in sys.modules:  # no 4-bit layer can exist; do not pay for the import
        return 0
    import bitsandbytes as bnb
    from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse

    changed = 0
    for module in model.modules():
        if not isinstance(module, bnb.nn.Linear4bit):
            continue
        if getattr(module, "support_avx512bf16_for_cpu", False):
            module.support_avx512bf16_for_cpu = False
            changed += 1
        weight = module.weight
        # a weight sharded by FSDP2 is a plain DTensor without a state; the flag above keeps its gathered copies
        # from being repacked, and a weight can only have been repacked before sharding, with its state
        if getattr(getattr(weight, "quant_state", None), "packing_format_for_cpu", False):
            weight.data, weight.quant_state = _convert_weight_packed_for_cpu_inverse(weight.data, weight.quant_state)
            module.quant_state = weight.quant_state
    return changed


def merged_model(model: nn.Module, in_place: bool = False) -> nn.Module:
    """A plain Hugging Face model of ``model`` with its LoRA adapters merged into the weights.

    A peft model is merged in a copy, so the live model keeps training with its adapters; ``in_place=True`` merges
    the model itself (for a model built only to be exported, where a copy would double the memory). A shared-base
    view builds its own standalone model (always a copy: the base holds the other view's adapter too). Any other
    model is returned as it is.
    """
    from peft import PeftModel

    standalone = getattr(model, "merged_model", None)
    if callable(standalone):
        return standalone()
    if isinstance(model, PeftModel):
        return (model if in_place else copy.deepcopy(model)).merge_and_unload()
    return model


def save_merged(model: nn.Module, path: Union[str, Path], tokenizer=None, in_place: bool = False) -> Path:
    """Write :func:`merged_model` of ``model`` (and ``tokenizer``, when given) to the folder ``path``; returns it.

    A policy loads back with ``build_policy(ModelSpec(name_or_path=path))``, a critic (token-classification format)
    with ``build_critic(CriticSpec(name_or_path=path))``.
    """
    path = Path(path)
    merged_model(model, in_place=in_place).save_pretrained(path)
    if tokenizer is not None:
        tokenizer.save_pretrained(path)
    return path

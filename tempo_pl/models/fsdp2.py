"""FSDP2 sharding of TEMPO's models: the recipe, ``fully_shard`` per decoder layer and per model root, rank-0
initialisation, and the gathered policy of a ``generate`` call.

:class:`~tempo_pl.strategies.FSDP2Strategy` carries an :class:`FSDP2Recipe`; ``TempoModule.configure_model`` calls
:func:`shard_module` after building the models, and generation runs under :func:`gathered_for_generation`.
"""


from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Iterator, Optional

import torch
import torch.distributed as dist
from torch import nn

from tempo_pl.models.builders import DTYPES
from tempo_pl.models.hf import hf_model

#: attributes of a TempoModule that hold models to shard, in this order
MODEL_ATTRIBUTES = ("policy", "critic", "reference")


@dataclass
class FSDP2Recipe:
    """How :func:`shard_module` shards each model of a :class:`~tempo_pl.module.TempoModule`.

    Example::

        FSDP2Recipe(param_dtype="bfloat16", cpu_offload=True)     # 14B policy + 14B critic on 8 x 80 GB
        FSDP2Recipe(param_dtype=None, activation_checkpointing=False)   # float32 on CPU (tests)
    """

    param_dtype: Optional[str] = "bfloat16"
    """Dtype of the all-gathered parameters, i.e. of forward and backward compute (FSDP2 ``MixedPrecisionPolicy``);
    the sharded parameters and the optimizer keep the dtype the model was built in (``ModelSpec.dtype``). None =
    compute in the parameter dtype. With a 4-bit base it must equal the quant storage dtype (``ModelSpec.dtype``)."""
    reduce_dtype: Optional[str] = "float32"
    """Dtype of the gradient reduce-scatter; None = ``param_dtype``."""
    activation_checkpointing: bool = True
    """Recompute each decoder layer's activations in the backward pass (non-reentrant); models without trainable
    parameters (a frozen reference) are never checkpointed."""
    cpu_offload: bool = False
    """Keep sharded parameters, gradients and optimizer state in CPU memory (FSDP2 ``CPUOffloadPolicy``); the
    optimizer step then runs on the CPU. Pinned memory on CUDA."""
    reshard_after_forward: bool = True
    """Free each layer's gathered parameters after its forward (ZeRO-3); False keeps them until the backward
    (ZeRO-2: less communication, more memory). The root module always keeps them, as FSDP2 does by default."""
    rank0_init: bool = False
    """Only global rank 0 builds the models with real weights; the other ranks build them on the meta device and
    receive their shards from rank 0 after sharding, so a 14B model is read and materialised once, not once per rank
    (the other ranks read the checkpoint's ``config.json`` only). For ``config`` models and checkpoints alike; not
    with 4-bit bases, which quantize while loading."""

    def __post_init__(self) -> None:
        for name in ("param_dtype", "reduce_dtype"):
            value = getattr(self, name)
            if value is not None and value not in DTYPES:
                raise ValueError(f"FSDP2Recipe.{name} must be one of {sorted(DTYPES)} or null, got {value!r}")

    def mixed_precision(self):
        from torch.distributed.fsdp import MixedPrecisionPolicy

        return MixedPrecisionPolicy(
            param_dtype=DTYPES[self.param_dtype] if self.param_dtype else None,
            reduce_dtype=DTYPES[self.reduce_dtype] if self.reduce_dtype else None,
        )

    def offload_policy(self, device: torch.device):
        from torch.distributed.fsdp import CPUOffloadPolicy, OffloadPolicy

        if not self.cpu_offload:
            return OffloadPolicy()
        return CPUOffloadPolicy(pin_memory=device.type == "cuda")


# ------------------------------------------------------------------------------------------------------ sharding


def shard_module(module: nn.Module, device_mesh, recipe: Optional[FSDP2Recipe] = None) -> None:
    """Apply FSDP2 to every model of ``module`` (``policy``, ``critic``, ``reference``): each decoder layer, then the
    model's root (embeddings, final norm, LM head or value head), on the data-parallel dimension of ``device_mesh``.

    Called by ``TempoModule.configure_model`` when the trainer's strategy gave the module a device mesh. The recipe
    is ``trainer.strategy.recipe`` for an :class:`FSDP2Strategy`, else the defaults. Models built on the meta device
    (``FSDP2Recipe.rank0_init``) are materialised from global rank 0's weights after sharding.

    Args:
        module: the LightningModule holding the models.
        device_mesh: the mesh from the strategy (``"data_parallel"`` and ``"tensor_parallel"`` dims) or a 1-D mesh.
        recipe: overrides the strategy's recipe.
    """
    recipe = recipe or _recipe_of(module)
    mesh = _data_parallel_mesh(device_mesh)
    models = [getattr(module, name, None) for name in MODEL_ATTRIBUTES]
    models = [m for m in models if m is not None]
    if recipe.rank0_init:
        _check_rank0_init(models)
    for model in models:
        shard_model(model, mesh, recipe)


def shard_model(model: nn.Module, mesh, recipe: FSDP2Recipe) -> nn.Module:
    """FSDP2 on one model (a ``PreTrainedModel``, a peft model around one, or a shared-base view); returns it.

    A model whose Hugging Face root is already sharded (the second view of a shared base) only gets its own extra
    modules sharded (the critic's value head).
    """
    from torch.distributed.fsdp import FSDPModule, fully_shard

    hf = hf_model(model)
    device = _mesh_device(mesh)
    rank0_full_state = _rank0_full_state(model, mesh) if recipe.rank0_init else None
    kwargs = dict(
        mesh=mesh,
        mp_policy=recipe.mixed_precision(),
        offload_policy=recipe.offload_policy(device),
    )
    if not isinstance(hf, FSDPModule):
        _check_quantized_dtype(hf, recipe)
        trainable = any(p.requires_grad for p in hf.parameters())
        if recipe.activation_checkpointing and trainable:
            hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        for layer in decoder_layers(hf):
            fully_shard(layer, reshard_after_forward=recipe.reshard_after_forward, **kwargs)
        fully_shard(hf, **kwargs)
    for extra in _modules_outside(model, hf):
        fully_shard(extra, **kwargs)
    if rank0_full_state is not None:
        _materialise_from_rank0(model, rank0_full_state, device)
    initialise_roots(model)
    return model


def initialise_roots(model: nn.Module) -> None:
    """Run FSDP2's lazy initialisation of ``model``'s roots now that all of its units are sharded (idempotent).

    FSDP2 makes the first FSDP module to run a forward the root and, at that moment, switches the root's
    reshard-after-forward off. Done here, the root is the model's root whatever touches the model first, and a gather
    before any forward (a rollout engine loading its own copy, :func:`gathered_for_generation`) sees the settings
    training keeps: restoring a pre-initialisation setting left the root resharding after every forward, and a
    shared-base critic, whose loss flows through the root's final norm but not its outputs, then ran its backward on
    freed parameters (a segfault on 2 ranks).
    """
    from torch.distributed.fsdp import FSDPModule

    for module in model.modules():  # pre-order: a root before its units, which its initialisation claims
        if isinstance(module, FSDPModule):
            module._get_fsdp_state()._lazy_init()


def decoder_layers(hf: nn.Module) -> list[nn.Module]:
    """The decoder layers of a Hugging Face model: the modules whose class the model names in ``_no_split_modules``."""
    names = set(getattr(hf, "_no_split_modules", None) or [])
    layers = [m for m in hf.modules() if type(m).__name__ in names]
    if not layers:
        raise ValueError(
            f"{type(hf).__name__} names no decoder layer class in _no_split_modules ({sorted(names)}); FSDP2 shards "
            "per decoder layer"
        )
    return layers


def _modules_outside(model: nn.Module, hf: nn.Module) -> list[nn.Module]:
    """Direct parameter-holding children of ``model`` that are not part of ``hf`` (a shared-base critic's head)."""
    inside = {id(p) for p in hf.parameters()}
    extra = []
    for child in model.children():
        params = list(child.parameters())
        if params and not any(id(p) in inside for p in params):
            extra.append(child)
    return extra


def _recipe_of(module: nn.Module) -> FSDP2Recipe:
    trainer = getattr(module, "_trainer", None)
    recipe = getattr(getattr(trainer, "strategy", None), "recipe", None)
    return recipe if isinstance(recipe, FSDP2Recipe) else FSDP2Recipe()


def _data_parallel_mesh(device_mesh):
    names = device_mesh.mesh_dim_names or ()
    if "tensor_parallel" in names and device_mesh["tensor_parallel"].size() > 1:
        raise ValueError(
            f"tensor_parallel_size={device_mesh['tensor_parallel'].size()}: TEMPO's models are sharded with FSDP2 "
            "only; use FSDP2Strategy (tensor_parallel_size=1)"
        )
    return device_mesh["data_parallel"] if "data_parallel" in names else device_mesh


def _mesh_device(mesh) -> torch.device:
    if mesh.device_type == "cpu":
        return torch.device("cpu")
    return torch.device(mesh.device_type, torch.accelerator.current_device_index())


def _quantized_params(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if type(p).__name__ == "Params4bit"]


def _check_quantized_dtype(hf: nn.Module, recipe: FSDP2Recipe) -> None:
    """A 4-bit weight is packed bytes viewed in the storage dtype: an all-gather that casts it destroys it."""
    quantized = _quantized_params(hf)
    if not quantized:
        return
    name, param = quantized[0]
    if recipe.param_dtype is None or DTYPES[recipe.param_dtype] != param.dtype:
        raise ValueError(
            f"FSDP2Recipe.param_dtype={recipe.param_dtype!r} but the 4-bit weights (e.g. {name}) are stored as "
            f"{param.dtype}: set param_dtype to the model's dtype ({str(param.dtype).removeprefix('torch.')}) so the "
            "packed weights are gathered without a cast"
        )


def _check_rank0_init(models: list[nn.Module]) -> None:
    for model in models:
        if _quantized_params(model):
            raise ValueError("FSDP2Recipe.rank0_init does not support 4-bit bases (they quantize at load time)")


def _rank0_full_state(model: nn.Module, mesh) -> Optional[dict]:
    """Rank 0's full (unsharded) state before sharding: the weights every rank receives its shard of."""
    if mesh.get_rank() != 0:
        if not any(t.is_meta for t in model.parameters()):
            raise RuntimeError("FSDP2Recipe.rank0_init: a rank other than 0 built real weights; build under the "
                               "strategy's tensor_init_context (TempoModule.configure_model does)")
        return {}
    if any(t.is_meta for t in model.parameters()):
        raise RuntimeError("FSDP2Recipe.rank0_init: rank 0 must build real weights, got meta tensors")
    return {
        "params": model.state_dict(),
        "buffers": {name: buf for name, buf in model.named_buffers()},
    }


def _materialise_from_rank0(model: nn.Module, rank0_state: dict, device: torch.device) -> None:
    """Allocate the meta shards, then scatter rank 0's weights and broadcast its buffers (non-persistent ones such
    as rotary frequencies are not in the state dict)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    if any(t.is_meta for t in model.parameters()) or any(b.is_meta for b in model.buffers()):
        model.to_empty(device=device)
    set_model_state_dict(
        model,
        rank0_state.get("params", {}),
        options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True),
    )
    source = rank0_state.get("buffers", {})
    for name, buf in model.named_buffers():
        if dist.get_rank() == 0:
            buf.copy_(source[name].to(buf.device))
        dist.broadcast(buf, src=0)


def move_unsharded_states(model: nn.Module, device: torch.device) -> None:
    from torch.distributed.tensor import DTensor

    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if not isinstance(param, DTensor):
                module._parameters[name] = nn.Parameter(param.to(device), requires_grad=param.requires_grad)
        for name, buf in module.named_buffers(recurse=False):
            module._buffers[name] = buf.to(device)


# ---------------------------------------------------------------------------------------------------- generation


@contextlib.contextmanager
def gathered_for_generation(model: nn.Module) -> Iterator[nn.Module]:
    """All-gather a sharded model's parameters once for a whole ``generate`` call, free them afterwards.

    Without it, FSDP2 gathers and frees every layer at every decoding step: once per generated token. Inside the
    block every FSDP module stays unsharded (its reshard-after-forward is switched off); on exit the parameters are
    resharded and each module's own setting is restored. A model without FSDP modules passes through.

    Example::

        with gathered_for_generation(policy):
            sequences = policy.generate(input_ids, max_new_tokens=512)
    """
    from torch.distributed.fsdp import FSDPModule

    fsdp_modules = [m for m in model.modules() if isinstance(m, FSDPModule)]
    if not fsdp_modules:
        yield model
        return
    # the settings saved here are the ones training keeps: shard_model initialised the roots (initialise_roots)
    saved = [_reshard_setting(m) for m in fsdp_modules]
    try:
        handles = [m.unshard(async_op=True) for m in fsdp_modules]
        for handle in handles:
            if handle is not None:
                handle.wait()
        for m in fsdp_modules:
            m.set_reshard_after_forward(False, recurse=False)
        yield model
    finally:
        for m, setting in zip(fsdp_modules, saved):
            _restore_reshard_setting(m, setting)
            m.reshard()


def _reshard_setting(module) -> tuple[Any, list[Any]]:
    # FSDP2 has a setter but no getter for reshard-after-forward; these two fields are what the setter writes
    state = module._get_fsdp_state()
    return state._auto_reshard_after_forward, [g.post_forward_mesh_info for g in _param_groups(state)]


def _restore_reshard_setting(module, setting: tuple[Any, list[Any]]) -> None:
    state = module._get_fsdp_state()
    state._auto_reshard_after_forward = setting[0]
    for group, info in zip(_param_groups(state), setting[1]):
        group.post_forward_mesh_info = info


def _param_groups(state) -> list[Any]:
    # torch >= 2.12 keeps a list of parameter groups per FSDP state; earlier releases hold one group or None
    groups = getattr(state, "_fsdp_param_groups", None)
    if groups is not None:
        return list(groups)
    group = getattr(state, "_fsdp_param_group", None)
    return [] if group is None else [group]

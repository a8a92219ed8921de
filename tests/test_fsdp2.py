"""FSDP2 on one process (tempo_pl.models.fsdp2, tempo_pl.strategies): the recipe, sharding, generation's gather and
its reshard setting, shared-base views, offloaded shards, the parameter-group layouts of torch versions."""

from __future__ import annotations


import pytest
import torch

from _tiny_run import (one_rank_process_group)

pytestmark = pytest.mark.filterwarnings("ignore")

PROBE = [[7, 23, 41, 5, 66, 12, 30, 3], [40, 41, 42, 43, 44, 45, 46, 47]]
"""Fixed token ids the sharded and unsharded models are compared on."""


def test_recipe_rejects_unknown_dtype() -> None:
    from tempo_pl.models.fsdp2 import FSDP2Recipe

    with pytest.raises(ValueError, match="param_dtype"):
        FSDP2Recipe(param_dtype="bf16")
    with pytest.raises(ValueError, match="reduce_dtype"):
        FSDP2Recipe(reduce_dtype="fp32")


def test_recipe_builds_the_fsdp_policies() -> None:
    from torch.distributed.fsdp import CPUOffloadPolicy

    from tempo_pl.models.fsdp2 import FSDP2Recipe

    mp = FSDP2Recipe(param_dtype="bfloat16", reduce_dtype=None).mixed_precision()
    assert (mp.param_dtype, mp.reduce_dtype) == (torch.bfloat16, None)
    assert not isinstance(FSDP2Recipe().offload_policy(torch.device("cpu")), CPUOffloadPolicy)
    offload = FSDP2Recipe(cpu_offload=True).offload_policy(torch.device("cpu"))
    assert isinstance(offload, CPUOffloadPolicy) and offload.pin_memory is False


def test_strategy_is_data_parallel_only() -> None:
    from tempo_pl.models.fsdp2 import FSDP2Recipe
    from tempo_pl.strategies import FSDP2Strategy

    strategy = FSDP2Strategy(FSDP2Recipe(cpu_offload=True), data_parallel_size=2)
    assert strategy._tensor_parallel_size == 1 and strategy.recipe.cpu_offload
    with pytest.raises(ValueError, match="data_parallel_size"):
        FSDP2Strategy(data_parallel_size=0)


def test_decoder_layers_and_hf_model(tiny_policy_spec) -> None:
    from dataclasses import replace

    from tempo_pl.models.builders import LoraSpec, build_policy
    from tempo_pl.models.hf import hf_model
    from tempo_pl.models.fsdp2 import decoder_layers

    policy = build_policy(replace(tiny_policy_spec, lora=LoraSpec(r=2)))
    hf = hf_model(policy)
    assert type(hf).__name__ == "Qwen3ForCausalLM" and hf_model(hf) is hf
    assert [type(m).__name__ for m in decoder_layers(hf)] == ["Qwen3DecoderLayer"] * 2
    with pytest.raises(ValueError, match="_no_split_modules"):
        decoder_layers(torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match="Hugging Face model"):
        hf_model(torch.nn.Linear(2, 2))


def test_four_bit_weights_need_param_dtype_of_their_storage(tiny_policy_spec) -> None:
    from tempo_pl.models.fsdp2 import FSDP2Recipe, _check_quantized_dtype

    class Params4bit(torch.nn.Parameter):  # stands in for bitsandbytes' class: the check reads the type name
        pass

    model = torch.nn.Linear(4, 4)
    model.weight = Params4bit(torch.zeros(8, 1, dtype=torch.bfloat16), requires_grad=False)
    _check_quantized_dtype(model, FSDP2Recipe(param_dtype="bfloat16"))
    with pytest.raises(ValueError, match="param_dtype='float32'.*weight.*bfloat16"):
        _check_quantized_dtype(model, FSDP2Recipe(param_dtype="float32"))
    with pytest.raises(ValueError, match="param_dtype=None"):
        _check_quantized_dtype(model, FSDP2Recipe(param_dtype=None))


@pytest.fixture
def one_rank_mesh(monkeypatch):
    """A 1-rank gloo process group and its mesh on a free port, torn down after the test."""
    from torch.distributed.device_mesh import init_device_mesh

    with one_rank_process_group(monkeypatch):
        yield init_device_mesh("cpu", (1, 1), mesh_dim_names=("data_parallel", "tensor_parallel"))


def _post_forward(module) -> list:
    from tempo_pl.models.fsdp2 import _param_groups

    return [g.post_forward_mesh_info for g in _param_groups(module._get_fsdp_state())]


def test_param_groups_reads_both_torch_layouts() -> None:
    # torch 2.11 (the H200 image) keeps one group per FSDP state, torch 2.13 a list: the GPU check met the former
    from types import SimpleNamespace

    from tempo_pl.models.fsdp2 import _param_groups

    assert _param_groups(SimpleNamespace(_fsdp_param_groups=("a", "b"))) == ["a", "b"]
    assert _param_groups(SimpleNamespace(_fsdp_param_group="a")) == ["a"]
    assert _param_groups(SimpleNamespace(_fsdp_param_group=None)) == []


def test_sharding_keeps_outputs_and_generation_restores_reshard_setting(tiny_policy_spec, one_rank_mesh) -> None:
    from tempo_pl.models.builders import build_policy
    from torch.distributed.fsdp import FSDPModule

    from tempo_pl.models.fsdp2 import FSDP2Recipe, gathered_for_generation, shard_model

    policy = build_policy(tiny_policy_spec)
    ids = torch.tensor(PROBE)
    with torch.no_grad():
        before = policy(input_ids=ids).logits
    shard_model(policy, one_rank_mesh["data_parallel"], FSDP2Recipe(param_dtype=None))
    assert isinstance(policy, FSDPModule) and policy.is_gradient_checkpointing
    layer = policy.model.layers[0]
    saved = _post_forward(layer)
    assert saved[0] is not None  # a decoder layer reshards after its forward
    with gathered_for_generation(policy):
        assert _post_forward(layer) == [None]
        with torch.no_grad():
            inside = policy(input_ids=ids).logits
    assert _post_forward(layer) == saved
    torch.testing.assert_close(inside, before)


def test_shard_model_initialises_the_root_before_any_forward(tiny_policy_spec, one_rank_mesh) -> None:
    # an engine with its own weights loads them (unit by unit) before the policy's first forward, and no generation
    # gather initialises the root for it: sharding does, so every first gather sees training's settings
    from tempo_pl.models.builders import build_policy
    from tempo_pl.models.fsdp2 import FSDP2Recipe, gathered_for_generation, shard_model

    policy = build_policy(tiny_policy_spec)
    shard_model(policy, one_rank_mesh["data_parallel"], FSDP2Recipe(param_dtype=None))
    layer = policy.model.layers[0]
    assert policy._get_fsdp_state()._is_root is True and layer._get_fsdp_state()._is_root is False
    assert _post_forward(policy) == [None]  # the root keeps its parameters after a forward, as in training
    assert _post_forward(layer)[0] is not None
    with gathered_for_generation(policy):
        pass
    assert _post_forward(policy) == [None] and _post_forward(layer)[0] is not None


def test_recipe_options_reach_fsdp(tiny_policy_spec, one_rank_mesh) -> None:
    from torch.distributed.fsdp import CPUOffloadPolicy

    from tempo_pl.models.builders import build_policy
    from tempo_pl.models.fsdp2 import FSDP2Recipe, shard_module

    class Holder(torch.nn.Module):  # what shard_module reads from a TempoModule: its model attributes
        pass

    holder = Holder()
    holder.policy = build_policy(tiny_policy_spec)
    holder.reference = build_policy(tiny_policy_spec).requires_grad_(False)
    recipe = FSDP2Recipe(param_dtype=None, reshard_after_forward=False, cpu_offload=True)
    shard_module(holder, one_rank_mesh, recipe)
    from tempo_pl.models.fsdp2 import _param_groups

    layer_group = _param_groups(holder.policy.model.layers[0]._get_fsdp_state())[0]
    assert _post_forward(holder.policy.model.layers[0]) == [None]  # ZeRO-2: kept until the backward
    assert isinstance(layer_group.offload_policy, CPUOffloadPolicy)
    # activation checkpointing on the trained model only: the frozen reference never runs a backward
    assert holder.policy.is_gradient_checkpointing and not holder.reference.is_gradient_checkpointing
    loss = holder.policy(input_ids=torch.tensor(PROBE), labels=torch.tensor(PROBE)).loss
    loss.backward()
    assert all(p.grad is not None for p in holder.policy.parameters())


def test_shared_base_views_shard_and_keep_their_gradients_apart(tiny_policy_spec, one_rank_mesh) -> None:
    """Shared base under FSDP2: the base and both adapters are sharded once (under the policy), the critic's head
    as its own FSDP module; each view's backward reaches only its own trainable tensors."""
    from dataclasses import replace

    from torch.distributed.fsdp import FSDPModule

    from tempo_pl.models.builders import CriticSpec, LoraSpec
    from tempo_pl.models.forward import critic_response_values
    from tempo_pl.models.shared_base import build_shared_actor_critic
    from tempo_pl.models.fsdp2 import FSDP2Recipe, shard_module

    class Holder(torch.nn.Module):
        pass

    holder = Holder()
    holder.policy, holder.critic = build_shared_actor_critic(replace(tiny_policy_spec, lora=LoraSpec(r=2)),
                                                             CriticSpec(seed=1, head_init_std=0.1))
    shard_module(holder, one_rank_mesh, FSDP2Recipe(param_dtype=None))
    assert isinstance(holder.policy.get_base_model(), FSDPModule) and isinstance(holder.critic.score, FSDPModule)
    ids = torch.tensor(PROBE)
    for view, loss in (
        (holder.critic, lambda: critic_response_values(holder.critic, ids, torch.ones_like(ids), torch.ones(2, 3)).sum()),
        (holder.policy, lambda: holder.policy(input_ids=ids, labels=ids).loss),
    ):
        for p in holder.parameters():
            p.grad = None
        loss().backward()
        own = {id(p) for p in view.parameters() if p.requires_grad}
        with_grad = {id(p) for p in holder.parameters() if p.grad is not None}
        with_grad |= {id(p) for p in holder.critic.parameters() if p.grad is not None}
        assert with_grad == own, type(view).__name__


def test_tensor_parallel_mesh_is_refused(one_rank_mesh) -> None:
    from tempo_pl.models.fsdp2 import _data_parallel_mesh

    class FakeMesh:
        mesh_dim_names = ("data_parallel", "tensor_parallel")

        def __getitem__(self, name):
            return type("Dim", (), {"size": lambda self: 2 if name == "tensor_parallel" else 1})()

    with pytest.raises(ValueError, match="tensor_parallel_size=2"):
        _data_parallel_mesh(FakeMesh())
    assert _data_parallel_mesh(one_rank_mesh).mesh_dim_names == ("data_parallel",)


def test_offloaded_shards_stay_where_fsdp_put_them(one_rank_mesh) -> None:
    """With cpu_offload the strategy moves only what FSDP2 does not manage: buffers and plain parameters."""
    from torch.distributed.tensor import Shard, distribute_tensor

    from tempo_pl.models.fsdp2 import move_unsharded_states

    model = torch.nn.Linear(2, 2)
    model.weight = torch.nn.Parameter(distribute_tensor(torch.ones(2, 2), one_rank_mesh["data_parallel"], [Shard(0)]))
    model.register_buffer("scale", torch.ones(2))
    move_unsharded_states(model, torch.device("meta"))
    assert model.scale.is_meta and model.bias.is_meta and model.bias.requires_grad
    assert model.weight.device.type == "cpu"



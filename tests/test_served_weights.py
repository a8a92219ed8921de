"""The policy's weights as a separate engine serves them (tempo_pl.engines.served_weights): checkpoint names, LoRA merged,
4-bit dequantized, FSDP2 gathered one unit at a time."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from _tiny_run import one_rank_process_group

PROBE = torch.tensor([[7, 23, 41, 5, 66, 12, 30, 3], [40, 41, 42, 43, 44, 45, 46, 47]])


def _randomize_lora_b(model: torch.nn.Module) -> None:
    # a fresh adapter's B is zero: without this every merge would be the base weight
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5, generator=torch.Generator().manual_seed(len(name)))


def _served_logits(policy: torch.nn.Module) -> tuple[torch.Tensor, set[str]]:
    """Logits of a plain transformers model loaded with the served weights, and the names it did not receive."""
    from transformers import AutoModelForCausalLM

    from tempo_pl.models.hf import hf_model
    from tempo_pl.engines.served_weights import served_weights

    plain = AutoModelForCausalLM.from_config(hf_model(policy).config)
    weights = dict(served_weights(policy))
    unexpected = set(weights) - set(plain.state_dict())
    assert not unexpected, f"names the checkpoint does not have: {sorted(unexpected)[:4]}"
    missing = plain.load_state_dict(weights, strict=False).missing_keys
    with torch.no_grad():
        return plain(input_ids=PROBE).logits, set(missing)


def _logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=PROBE).logits


def test_a_full_policy_serves_its_own_parameters(tiny_policy_spec) -> None:
    from tempo_pl.models.builders import build_policy
    from tempo_pl.engines.served_weights import served_weights

    policy = build_policy(tiny_policy_spec)
    served = dict(served_weights(policy))
    assert served.keys() == dict(policy.named_parameters()).keys()
    assert all(torch.equal(served[name], param) for name, param in policy.named_parameters())


def test_lora_serves_the_merged_weights_and_leaves_the_adapters_unmerged(tiny_policy_spec) -> None:
    from tempo_pl.models.lora import merged_model
    from tempo_pl.models.builders import LoraSpec, build_policy
    from tempo_pl.engines.served_weights import served_weights

    policy = build_policy(replace(tiny_policy_spec, lora=LoraSpec(r=4, alpha=8)))
    _randomize_lora_b(policy)
    before = {n: p.clone() for n, p in policy.named_parameters()}
    served = dict(served_weights(policy))
    reference = merged_model(policy).state_dict()
    assert served.keys() == reference.keys()
    for name, tensor in served.items():
        torch.testing.assert_close(tensor, reference[name], rtol=0, atol=1e-6, msg=name)
    # the adapters moved the weights (the test can fail), and the live model kept them apart
    assert not torch.equal(served["model.layers.0.mlp.down_proj.weight"],
                           policy.get_base_model().model.layers[0].mlp.down_proj.base_layer.weight)
    assert all(torch.equal(p, before[n]) for n, p in policy.named_parameters())
    logits, missing = _served_logits(policy)
    assert not missing
    torch.testing.assert_close(logits, _logits(policy), rtol=0, atol=1e-5)


def test_qlora_serves_the_dequantized_base_plus_the_adapter(tiny_policy_spec) -> None:
    from tempo_pl.models.builders import LoraSpec, build_policy

    policy = build_policy(replace(tiny_policy_spec, lora=LoraSpec(r=4, alpha=8), load_in_4bit=True))
    _randomize_lora_b(policy)
    logits, missing = _served_logits(policy)
    assert not missing
    # full-precision merge: only the float order of base + delta differs from the trainer's forward
    torch.testing.assert_close(logits, _logits(policy), rtol=0, atol=1e-4)


def test_a_shared_base_serves_the_policy_adapter_even_after_the_critic_ran(tiny_policy_spec) -> None:
    from tempo_pl.models.builders import CriticSpec, LoraSpec
    from tempo_pl.models.shared_base import build_shared_actor_critic

    policy, critic = build_shared_actor_critic(replace(tiny_policy_spec, lora=LoraSpec(r=4), load_in_4bit=True),
                                               CriticSpec(seed=1, lora=LoraSpec(r=4)))
    _randomize_lora_b(policy.model)
    expected = _logits(policy)
    critic(input_ids=PROBE)  # leaves the critic adapter active on every layer
    logits, missing = _served_logits(policy)
    assert not missing
    torch.testing.assert_close(logits, expected, rtol=0, atol=1e-4)


@pytest.fixture
def one_rank_mesh(monkeypatch):
    from torch.distributed.device_mesh import init_device_mesh

    with one_rank_process_group(monkeypatch):
        yield init_device_mesh("cpu", (1,), mesh_dim_names=("data_parallel",))


def _unsharded_units(model: torch.nn.Module) -> list[str]:
    from torch.distributed.fsdp import FSDPModule

    from tempo_pl.models.fsdp2 import _param_groups

    return [name for name, m in model.named_modules() if isinstance(m, FSDPModule)
            and any(g.is_unsharded for g in _param_groups(m._get_fsdp_state()))]


def test_fsdp2_gathers_one_unit_at_a_time_and_serves_the_full_lora_merge(tiny_policy_spec, one_rank_mesh) -> None:
    from torch.distributed.fsdp import FSDPModule

    from tempo_pl.models.builders import LoraSpec, build_policy
    from tempo_pl.models.hf import hf_model
    from tempo_pl.engines.served_weights import release_gathered, served_weights
    from tempo_pl.models.fsdp2 import FSDP2Recipe, gathered_for_generation, shard_model

    policy = build_policy(replace(tiny_policy_spec, lora=LoraSpec(r=4, alpha=8)))
    _randomize_lora_b(policy)
    expected = {name: tensor.clone() for name, tensor in served_weights(policy)}
    shard_model(policy, one_rank_mesh, FSDP2Recipe(param_dtype=None))
    assert isinstance(hf_model(policy), FSDPModule)
    policy(input_ids=PROBE, labels=PROBE).loss.backward()  # where a policy update leaves the model: all resharded
    assert _unsharded_units(policy) == []
    seen: dict[str, torch.Tensor] = {}
    gathered_while_serving: list[list[str]] = []
    for name, tensor in served_weights(policy):
        gathered_while_serving.append(_unsharded_units(policy))
        assert not isinstance(tensor, torch.distributed.tensor.DTensor), name
        seen[name] = tensor.clone()
    assert seen.keys() == expected.keys()
    for name, tensor in seen.items():
        torch.testing.assert_close(tensor, expected[name], rtol=0, atol=1e-6, msg=name)
    # never more than one unit gathered, every unit gathered once, and all of them freed at the end
    assert max(len(units) for units in gathered_while_serving) == 1
    assert len({tuple(units) for units in gathered_while_serving}) == 1 + len(policy.get_base_model().model.layers)
    assert _unsharded_units(policy) == []
    # a caller's whole-model gather is freed by release_gathered, and the caller's exit still works
    with gathered_for_generation(policy):
        assert len(_unsharded_units(policy)) == 1 + len(policy.get_base_model().model.layers)
        release_gathered(policy)
        assert _unsharded_units(policy) == []
    assert _unsharded_units(policy) == []
    torch.testing.assert_close(_served_logits(policy)[0], _logits(policy), rtol=0, atol=1e-5)


def test_fsdp2_around_a_shared_qlora_base_serves_the_dequantized_policy(tiny_policy_spec, one_rank_mesh) -> None:
    """FSDP2 gathers a 4-bit weight as a plain parameter (its quantization state stays on the layer): the layer, not
    the weight's type, says it is to be dequantized."""
    from tempo_pl.models.builders import CriticSpec, LoraSpec
    from tempo_pl.models.shared_base import build_shared_actor_critic
    from tempo_pl.models.fsdp2 import FSDP2Recipe, shard_module

    class Holder(torch.nn.Module):
        pass

    holder = Holder()
    holder.policy, holder.critic = build_shared_actor_critic(
        replace(tiny_policy_spec, lora=LoraSpec(r=4), load_in_4bit=True), CriticSpec(seed=1, lora=LoraSpec(r=4)))
    _randomize_lora_b(holder.policy.model)
    expected = _logits(holder.policy)
    shard_module(holder, one_rank_mesh, FSDP2Recipe(param_dtype="float32"))
    holder.policy(input_ids=PROBE, labels=PROBE).loss.backward()
    holder.critic(input_ids=PROBE)  # the critic adapter active, as after an E-step
    logits, missing = _served_logits(holder.policy)
    assert not missing and _unsharded_units(holder.policy) == []
    torch.testing.assert_close(logits, expected, rtol=0, atol=1e-4)


@pytest.mark.parametrize("param_dtype", ["bfloat16", None])
def test_vllm_serves_the_dtype_fsdp2_gathers_in(tiny_policy_spec, one_rank_mesh, param_dtype) -> None:
    """The module gathers nothing for vLLM, so the parameters it sees are the float32 shards: the dtype vLLM serves
    (when not set) is the one FSDP2's gathers, ``served_weights`` included, hand out."""
    from tempo_pl.models.builders import build_policy
    from tempo_pl.models.hf import hf_model
    from tempo_pl.engines.served_weights import served_weights
    from tempo_pl.models.fsdp2 import FSDP2Recipe, shard_model
    from tempo_pl.engines.vllm import _compute_dtype

    policy = build_policy(tiny_policy_spec)
    assert _compute_dtype(policy) == torch.float32
    shard_model(policy, one_rank_mesh, FSDP2Recipe(param_dtype=param_dtype))
    expected = torch.bfloat16 if param_dtype else torch.float32
    assert _compute_dtype(hf_model(policy)) == expected
    assert {tensor.dtype for _, tensor in served_weights(policy)} == {expected}
    assert {p.dtype for p in policy.parameters()} == {torch.float32}  # what hf.dtype alone would have said

"""Shared 4-bit base (tempo_pl.models.shared_base): two adapters that train independently, memory, the CPU 4-bit trap."""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from _weights import draw_parameters

pytestmark = pytest.mark.filterwarnings("ignore")

IDS = torch.tensor([[7, 23, 41, 5, 66, 12], [40, 41, 42, 43, 44, 45]])


def _qlora(spec):
    from tempo_pl.models.builders import LoraSpec

    return replace(spec, lora=LoraSpec(r=4, alpha=8), load_in_4bit=True, dtype="bfloat16")


@pytest.fixture(scope="module")
def shared_qlora():
    from tempo_pl.models.builders import CriticSpec, ModelSpec
    from tempo_pl.models.shared_base import build_shared_actor_critic
    from tempo_pl.models.tiny import BUILTIN_CHAR, tiny_qwen3_config

    spec = _qlora(ModelSpec(config=tiny_qwen3_config(vocab_size=100), tokenizer=BUILTIN_CHAR, seed=0))
    policy, critic = build_shared_actor_critic(spec, CriticSpec(seed=1))
    draw_parameters(policy.model, seed=2)
    return spec, policy, critic


def _snapshot(module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _changed(before: dict, after: dict, keep) -> set[str]:
    # bytewise: packed 4-bit weights viewed as bfloat16 hold NaN patterns, and NaN != NaN
    same = lambda a, b: torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8))  # noqa: E731
    return {k for k in before if keep(k) and not same(before[k], after[k])}


def _values_loss(critic, rows=IDS) -> torch.Tensor:
    from tempo_pl.models.forward import critic_response_values

    mask = torch.ones(rows.shape[0], 3)
    values = critic_response_values(critic, rows, torch.ones_like(rows), mask)
    return ((values - 1.0) ** 2).mean()


def _policy_loss(policy, rows=IDS) -> torch.Tensor:
    from tempo_pl.models.forward import policy_response_stats

    out = policy_response_stats(policy, rows, torch.ones_like(rows), rows[:, -3:], torch.ones(rows.shape[0], 3))
    return -out["logprobs"].mean()


def test_each_view_lists_only_what_its_optimizer_updates(shared_qlora) -> None:
    from tempo_pl.models.shared_base import CRITIC_ADAPTER, POLICY_ADAPTER, adapter_parameters

    _, policy, critic = shared_qlora
    policy_trainable = {id(p) for p in policy.parameters() if p.requires_grad}
    critic_trainable = {id(p) for p in critic.parameters() if p.requires_grad}
    policy_adapter = {id(p) for p in adapter_parameters(policy.model, POLICY_ADAPTER)}
    critic_adapter = {id(p) for p in adapter_parameters(policy.model, CRITIC_ADAPTER)}
    # 2 layers x 7 adapted linears (q, k, v, o, gate, up, down) x (A, B) = 28 tensors per adapter
    assert len(policy_adapter) == len(critic_adapter) == 28
    assert policy_trainable == policy_adapter
    assert critic_trainable == critic_adapter | {id(critic.score.weight), id(critic.score.bias)}
    # the frozen 4-bit base is held once, under the policy view; the critic view's own state is its head
    assert sorted(critic.state_dict()) == ["score.bias", "score.weight"]
    assert any(type(p).__name__ == "Params4bit" for p in policy.model.parameters())


def test_critic_update_leaves_the_policy_adapter_untouched_and_back(shared_qlora) -> None:
    _, policy, critic = shared_qlora
    policy_opt = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=1e-2)
    critic_opt = torch.optim.AdamW([p for p in critic.parameters() if p.requires_grad], lr=1e-2)
    is_policy_adapter = lambda k: "lora_" in k and ".default." in k  # noqa: E731
    is_critic_adapter = lambda k: "lora_" in k and ".critic." in k  # noqa: E731
    is_base = lambda k: "lora_" not in k  # noqa: E731

    before = {**_snapshot(policy), **{f"head.{k}": v for k, v in _snapshot(critic).items()}}
    critic_opt.zero_grad()
    _values_loss(critic).backward()
    # only the active adapter is in the graph: the policy adapter gets no gradient at all
    assert all(p.grad is None for p in policy.parameters() if p.requires_grad)
    critic_opt.step()
    after = {**_snapshot(policy), **{f"head.{k}": v for k, v in _snapshot(critic).items()}}
    assert _changed(before, after, is_policy_adapter) == set()
    assert _changed(before, after, is_base) == {"head.score.weight", "head.score.bias"}
    assert len(_changed(before, after, is_critic_adapter)) == 28

    policy_opt.zero_grad()
    critic_opt.zero_grad(set_to_none=True)
    _policy_loss(policy).backward()
    assert all(p.grad is None for p in critic.parameters())
    policy_opt.step()
    final = {**_snapshot(policy), **{f"head.{k}": v for k, v in _snapshot(critic).items()}}
    assert _changed(after, final, is_critic_adapter) == set()
    assert _changed(after, final, is_base) == set()
    assert len(_changed(after, final, is_policy_adapter)) == 28


def test_views_compute_what_a_single_adapter_model_computes(tiny_policy_spec) -> None:
    """Full-precision base: the policy view equals build_policy's model; the critic view is the head on the critic
    adapter's final hidden states."""
    from tempo_pl.models.builders import CriticSpec, LoraSpec, build_policy
    from tempo_pl.models.shared_base import CRITIC_ADAPTER, activate_adapter, build_shared_actor_critic

    spec = replace(tiny_policy_spec, lora=LoraSpec(r=4, alpha=8))
    policy, critic = build_shared_actor_critic(spec, CriticSpec(seed=1))
    draw_parameters(policy.model, seed=3)
    alone = build_policy(spec)
    with torch.no_grad():
        for name, param in alone.named_parameters():
            param.copy_(dict(policy.model.named_parameters())[name])
        torch.testing.assert_close(policy(input_ids=IDS).logits, alone(input_ids=IDS).logits)

        # head = e_0 with bias 0.5: every value is hidden[..., 0] + 0.5
        critic.score.weight.zero_()
        critic.score.weight[0, 0] = 1.0
        critic.score.bias.fill_(0.5)
        values = critic(input_ids=IDS).logits
        activate_adapter(policy.model, CRITIC_ADAPTER)
        hidden = policy.get_base_model().model(input_ids=IDS).last_hidden_state
        torch.testing.assert_close(values[..., 0], hidden[..., 0] + 0.5)
        # the policy view switches back to its own adapter, whatever ran before
        torch.testing.assert_close(policy(input_ids=IDS).logits, alone(input_ids=IDS).logits)
        assert not torch.allclose(critic(input_ids=IDS).logits[..., 0], policy(input_ids=IDS).logits[..., 0])


def test_shared_base_holds_about_half_the_bytes_of_two_qlora_models(tiny_policy_spec) -> None:
    from tempo_pl.models.builders import CriticSpec, build_critic, build_policy
    from tempo_pl.models.shared_base import build_shared_actor_critic

    # wider than the tiny default so the 4-bit base, not the adapters, dominates (as in a real model)
    config = {**tiny_policy_spec.config, "hidden_size": 256, "head_dim": 64, "intermediate_size": 1024}
    spec = _qlora(replace(tiny_policy_spec, config=config))
    critic_spec = CriticSpec(seed=1, lora=spec.lora, load_in_4bit=True, dtype="bfloat16")

    def nbytes(*models) -> int:
        seen, total = set(), 0
        for model in models:
            for t in list(model.parameters()) + list(model.buffers()):
                if t.data_ptr() not in seen:
                    seen.add(t.data_ptr())
                    total += t.numel() * t.element_size()
        return total

    separate = nbytes(build_policy(spec), build_critic(critic_spec, spec))
    policy, critic = build_shared_actor_critic(spec, critic_spec)
    shared = nbytes(policy.model, critic)
    # separately: 2 bases + 2 adapters (+ the critic's head); shared: 1 base + 2 adapters + the head
    assert shared < 0.6 * separate


def _gradients(view, loss) -> dict[str, torch.Tensor]:
    for p in view.parameters():
        p.grad = None
    loss(view).backward()
    return {n: p.grad.clone() if p.grad is not None else None for n, p in view.named_parameters() if p.requires_grad}


def _assert_same_gradients(got: dict, expected: dict, what: str) -> None:
    dead = [n for n, g in got.items() if g is None or not g.abs().sum() > 0]
    assert expected and dead == [], f"{what}: no gradient for {dead[:3]}"
    for name, grad in got.items():
        torch.testing.assert_close(grad, expected[name], msg=lambda m: f"{what} {name}: {m}")


def test_after_generate_every_lora_parameter_still_gets_its_gradient(shared_qlora) -> None:
    """The AVX512-BF16 trap (``tempo_pl.models.lora.disable_bnb_avx512bf16``): an eval-mode no-grad forward must not
    leave the 4-bit layers on the inference kernel, whose output has no gradient path through the base weight.
    Generate through the rollout engine, run the critic's value pass, then both views must get the gradients they
    got before, none of them 0."""
    from tempo_pl.config import SamplingConfig
    from tempo_pl.engines.hf_generate import HFGenerateEngine
    from tempo_pl.models.tiny import build_char_tokenizer
    from tempo_pl.types import PromptBatch

    _, policy, critic = shared_qlora
    expected = {"policy": _gradients(policy, _policy_loss), "critic": _gradients(critic, _values_loss)}
    engine = HFGenerateEngine(build_char_tokenizer(), SamplingConfig(n=2, max_new_tokens=4))
    prompts = PromptBatch(ids=["a"], prompts=["1+1="], answers=[None], is_labeled=[False])
    assert engine.generate(policy, prompts).response_ids.shape[0] == 2
    critic.eval()
    with torch.no_grad():
        critic(input_ids=IDS)
    critic.train()
    _assert_same_gradients(_gradients(policy, _policy_loss), expected["policy"], "policy")
    _assert_same_gradients(_gradients(critic, _values_loss), expected["critic"], "critic")


def _cpu_has_avx512_bf16() -> bool:
    try:
        return "avx512_bf16" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


@pytest.mark.skipif(not _cpu_has_avx512_bf16(), reason="the trap exists on AVX512-BF16 CPUs only")
def test_the_gradient_check_catches_the_avx512_trap(shared_qlora) -> None:
    """Control, on a fresh copy (the trap leaves rounded weights behind): with the fast inference kernel re-enabled,
    one eval no-grad forward changes the gradients, which is what the test above would report."""
    import bitsandbytes as bnb

    from tempo_pl.models.builders import CriticSpec
    from tempo_pl.models.shared_base import build_shared_actor_critic

    spec = shared_qlora[0]
    policy, _ = build_shared_actor_critic(spec, CriticSpec(seed=1))
    draw_parameters(policy.model, seed=2)
    expected = _gradients(policy, _policy_loss)
    for layer in policy.modules():
        if isinstance(layer, bnb.nn.Linear4bit):
            layer.support_avx512bf16_for_cpu = True
    policy.eval()
    with torch.no_grad():
        policy(input_ids=IDS)
    policy.train()
    with pytest.raises(AssertionError):
        _assert_same_gradients(_gradients(policy, _policy_loss), expected, "policy")


def test_build_errors_name_the_bad_key(tiny_policy_spec) -> None:
    from tempo_pl.models.builders import CriticSpec
    from tempo_pl.models.shared_base import build_shared_actor_critic

    with pytest.raises(ValueError, match="policy.lora"):
        build_shared_actor_critic(tiny_policy_spec, CriticSpec())
    lora_spec = _qlora(tiny_policy_spec)
    with pytest.raises(ValueError, match="critic.name_or_path"):
        build_shared_actor_critic(lora_spec, CriticSpec(name_or_path="somewhere"))
    with pytest.raises(ValueError, match="critic spec"):
        build_shared_actor_critic(lora_spec, None)


def test_distributed_checkpoint_names_both_views_and_restores_what_trains_on(tiny_policy_spec) -> None:
    """torch.distributed.checkpoint (what FSDP2 checkpoints go through) on a module holding both views: the critic
    adapter is named once, under the policy view that owns it; the state round-trips into the same parameter
    objects, so both optimizers keep updating every trainable tensor after a save and a restore."""
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_optimizer_state_dict,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    from tempo_pl.models.builders import CriticSpec, LoraSpec
    from tempo_pl.models.shared_base import build_shared_actor_critic

    holder = torch.nn.Module()
    holder.policy, holder.critic = build_shared_actor_critic(replace(tiny_policy_spec, lora=LoraSpec(r=2)),
                                                             CriticSpec(seed=1, head_init_std=0.1))
    views = {"policy": (holder.policy, _policy_loss), "critic": (holder.critic, _values_loss)}
    optimizers = {name: torch.optim.AdamW([p for p in view.parameters() if p.requires_grad], lr=1e-2)
                  for name, (view, _) in views.items()}

    def train_step() -> None:
        for name, (view, loss) in views.items():
            optimizers[name].zero_grad()
            loss(view).backward()
            optimizers[name].step()

    def trainable() -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in holder.named_parameters() if p.requires_grad}

    # every name a view gives resolves by attribute to that parameter
    for view, _ in views.values():
        assert all(view.get_parameter(n) is p for n, p in view.named_parameters())
    # and, as nn.Module's contract says (DCP walks modules by it), a view's own parameters exclude the shared model's
    assert list(holder.critic.named_parameters(recurse=False)) == []
    train_step()
    model_state = {k: v.clone() for k, v in get_model_state_dict(holder).items()}
    optim_states = {name: copy.deepcopy(get_optimizer_state_dict(holder, opt)) for name, opt in optimizers.items()}
    saved = trainable()
    critic_adapter = {k for k in model_state if ".lora_" in k and ".critic." in k}
    assert len(critic_adapter) == 28 and all(k.startswith("policy.model.") for k in critic_adapter)
    assert not any(k.startswith("critic.shared") for k in model_state)
    assert set(optim_states["critic"]["state"]) == critic_adapter | {"critic.score.weight", "critic.score.bias"}
    assert len(optim_states["policy"]["state"]) == 28

    train_step()
    set_model_state_dict(holder, model_state)
    for name, opt in optimizers.items():
        set_optimizer_state_dict(holder, opt, optim_states[name])
    restored = trainable()
    assert all(torch.equal(restored[n], saved[n]) for n in saved)
    for name, (view, _) in views.items():
        held = {id(p) for group in optimizers[name].param_groups for p in group["params"]}
        assert held == {id(p) for p in view.parameters() if p.requires_grad}, name
    train_step()
    after = trainable()
    assert sorted(n for n in saved if torch.equal(after[n], saved[n])) == []
    assert len(saved) == 2 * 28 + 2

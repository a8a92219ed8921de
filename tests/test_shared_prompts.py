"""Rows that share a prompt run it once: the policy's statistics, their gradients and the critic's values equal those
of the whole pass, for plain, LoRA and shared-base models; no sharing where prompts differ or caches are off."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

import tempo_pl.models.forward as forward_passes
from tempo_pl.models.builders import CriticSpec, LoraSpec, build_critic, build_policy
from tempo_pl.models.forward import critic_response_values, policy_response_stats
from tempo_pl.models.hf import position_ids_from_mask
from tempo_pl.models.shared_prompts import prompt_groups


def _batch(seed: int = 0):
    """3 prompts (4, 6 and 2 tokens, left-padded to 6) x 3 rows, responses of 1 to 7 tokens (right-padded)."""
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([4, 6, 2])
    prompt_mask = (torch.arange(6) >= 6 - lengths.unsqueeze(1)).long().repeat_interleave(3, 0)
    prompt = (torch.randint(4, 100, (3, 6), generator=generator).repeat_interleave(3, 0)) * prompt_mask
    response_lengths = torch.tensor([7, 1, 3, 5, 7, 2, 4, 6, 1])
    response_mask = (torch.arange(7) < response_lengths.unsqueeze(1)).float()
    response = torch.randint(4, 100, (9, 7), generator=generator) * response_mask.long()
    return torch.cat([prompt, response], 1), torch.cat([prompt_mask, response_mask.long()], 1), response, response_mask


def _whole(monkeypatch):
    """Every row runs its prompt (the sharing switched off)."""
    monkeypatch.setattr(forward_passes, "prompt_groups", lambda *args: None)


def test_groups_name_each_distinct_prompt_once(tiny_policy_spec):
    policy = build_policy(tiny_policy_spec)
    ids, attention, response, _ = _batch()
    groups = prompt_groups(policy, ids, attention, response.shape[1])
    assert sorted(groups.first.tolist()) == [0, 3, 6]  # the first row of each group of 3
    assert torch.equal(groups.of_row, groups.of_row[[0, 0, 0, 3, 3, 3, 6, 6, 6]])
    assert [groups.of_row[groups.first[g]].item() for g in range(3)] == [0, 1, 2]
    assert torch.equal(ids[groups.first[groups.of_row], :6], ids[:, :6])
    assert prompt_groups(policy, ids[[0, 3, 6]], attention[[0, 3, 6]], response.shape[1]) is None  # all different
    policy.gradient_checkpointing_enable({"use_reentrant": False})
    assert prompt_groups(policy, ids, attention, response.shape[1]) is None  # checkpointing turns caches off


@pytest.mark.parametrize("lora", [False, True])
def test_policy_stats_on_shared_prompts_equal_the_whole_pass_with_gradients(tiny_policy_spec, monkeypatch, lora):
    spec = dataclasses.replace(tiny_policy_spec, lora=LoraSpec(r=4, alpha=8)) if lora else tiny_policy_spec
    policy = build_policy(spec)
    twin = copy.deepcopy(policy)
    ids, attention, response, mask = _batch(1)
    weights = torch.randn(2, *response.shape)

    def run(model):
        stats = policy_response_stats(model, ids, attention, response, mask, temperature=0.9)
        ((stats["logprobs"] * weights[0]).sum() + (stats["entropy"] * weights[1]).sum()).backward()
        return stats

    calls = []
    policy.register_forward_pre_hook(lambda m, args, kwargs: calls.append(kwargs["input_ids"].shape), with_kwargs=True)
    shared = run(policy)
    _whole(monkeypatch)
    whole = run(twin)
    assert calls == [(3, 6), (9, 7)]  # 3 prompts, then 9 responses on their copied keys and values
    for key in ("logprobs", "entropy"):
        torch.testing.assert_close(shared[key], whole[key], rtol=0, atol=1e-5)
    for (name, a), b in zip(policy.named_parameters(), twin.parameters()):
        if a.requires_grad:
            torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=1e-5, msg=name)


def test_critic_values_on_shared_prompts_equal_the_whole_pass(tiny_policy_spec, monkeypatch):
    critic = build_critic(CriticSpec(init_from_policy=True, seed=0, head_init_std=0.5), tiny_policy_spec).eval()
    ids, attention, response, mask = _batch(2)
    with torch.no_grad():
        shared = critic_response_values(critic, ids, attention, mask)
        _whole(monkeypatch)
        whole = critic_response_values(critic, ids, attention, mask)
    torch.testing.assert_close(shared, whole, rtol=0, atol=1e-5)
    assert shared.abs().max() > 0 and (shared[mask == 0] == 0).all()


def test_a_shared_base_runs_its_prompts_once_for_both_views(tiny_policy_spec, monkeypatch):
    from tempo_pl.models.shared_base import build_shared_actor_critic

    spec = dataclasses.replace(tiny_policy_spec, lora=LoraSpec(r=4, alpha=8))
    policy, critic = build_shared_actor_critic(spec, CriticSpec(seed=0, head_init_std=0.5))
    ids, attention, response, mask = _batch(3)
    with torch.no_grad():
        stats, values = policy_response_stats(policy, ids, attention, response, mask), critic_response_values(
            critic, ids, attention, mask)
        _whole(monkeypatch)
        whole_stats = policy_response_stats(policy, ids, attention, response, mask)
        whole_values = critic_response_values(critic, ids, attention, mask)
    torch.testing.assert_close(stats["logprobs"], whole_stats["logprobs"], rtol=0, atol=1e-5)
    torch.testing.assert_close(values, whole_values, rtol=0, atol=1e-5)
    positions = position_ids_from_mask(attention)
    assert positions[0, 6 - 4] == 0 and positions[0, 6] == 4  # the first response token follows its 4-token prompt

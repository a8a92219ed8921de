"""Log-probs, entropy and self-certainty computed a chunk of positions at a time through the LM head: the values and
the gradients of the whole-logits path, no call of the head on more than one chunk, padding never computed."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from tempo_pl.algorithms import token_stats
from tempo_pl.algorithms.token_stats import (
    entropy_from_logits,
    head_token_stats,
    logprobs_from_logits,
    self_certainty_from_logits,
)
from tempo_pl.models.builders import build_policy
from tempo_pl.models.forward import policy_response_stats
from tempo_pl.models.hf import position_ids_from_mask


def _whole_logits_stats(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor, temperature: float):
    """The unchunked path: every position's logits at once, then the statistics, times the mask."""
    logits = (logits if logits.dtype == torch.float64 else logits.float()) / temperature
    return torch.stack([logprobs_from_logits(logits, labels) * mask, entropy_from_logits(logits) * mask,
                        self_certainty_from_logits(logits) * mask], -1)


def test_chunked_head_stats_equal_the_whole_logits_values_and_gradients_in_float64(monkeypatch):
    torch.manual_seed(0)
    vocab, temperature = 7, 0.7
    monkeypatch.setattr(token_stats, "LOGITS_CHUNK_ELEMENTS", 3 * vocab)  # 3 positions per chunk
    head = nn.Linear(4, vocab).double()
    hidden = torch.randn(2, 5, 4, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, vocab, (2, 5))
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]], dtype=torch.float64)  # 9 valid: chunks of 3, 3, 3
    weights = torch.randn(2, 5, 3, dtype=torch.float64)  # a loss that reads every column

    chunked = head_token_stats(head, hidden, labels, mask, temperature, with_self_certainty=True)
    grads = torch.autograd.grad((chunked * weights).sum(), [hidden, head.weight, head.bias])
    whole = _whole_logits_stats(head(hidden), labels, mask, temperature)
    expected = torch.autograd.grad((whole * weights).sum(), [hidden, head.weight, head.bias])

    assert chunked.shape == (2, 5, 3) and chunked.dtype == torch.float64  # float64 logits stay float64
    torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-12)
    assert (chunked[0, 4] == 0).all()
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    assert grads[0][0, 4].abs().max() == 0  # a padded position takes no gradient


def test_a_detached_entropy_gives_no_gradient_and_the_same_values():
    torch.manual_seed(1)
    head = nn.Linear(3, 5)
    hidden = torch.randn(1, 4, 3, requires_grad=True)
    labels, mask = torch.randint(0, 5, (1, 4)), torch.ones(1, 4)
    live = head_token_stats(head, hidden, labels, mask)
    detached = head_token_stats(head, hidden, labels, mask, entropy_grad=False)
    torch.testing.assert_close(live, detached)
    (grad,) = torch.autograd.grad(detached[..., 1].sum(), hidden, allow_unused=True, materialize_grads=True)
    assert grad.abs().max() == 0
    (grad,) = torch.autograd.grad(live[..., 1].sum(), hidden)
    assert grad.abs().max() > 0


def test_a_banned_token_adds_nothing_to_the_entropy_or_its_gradient():
    logits = torch.tensor([[0.0, 0.0, -math.inf]], requires_grad=True)
    entropy = entropy_from_logits(logits)
    entropy.sum().backward()
    assert entropy.item() == pytest.approx(math.log(2.0))
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().max() < 1e-7  # a uniform pair is a maximum


def _inputs(seed: int = 0):
    torch.manual_seed(seed)
    # row 0: two prompt pads on the left and two response pads on the right; row 1 unpadded
    prompt = torch.randint(4, 100, (2, 6))
    prompt_mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    response = torch.randint(4, 100, (2, 7))
    response_mask = torch.tensor([[1, 1, 1, 1, 1, 0, 0], [1] * 7], dtype=torch.float)
    ids = torch.cat([prompt, response], 1)
    attention = torch.cat([prompt_mask, response_mask.long()], 1)
    return ids, attention, response, response_mask


def test_policy_stats_in_chunks_equal_the_whole_logits_path_with_gradients(tiny_policy_spec, monkeypatch):
    policy = build_policy(tiny_policy_spec)
    twin = copy.deepcopy(policy)
    ids, attention, response, response_mask = _inputs()
    head = policy.get_output_embeddings()
    calls: list[int] = []
    original = head.forward
    head.forward = lambda x: (calls.append(x.shape[:-1].numel()), original(x))[1]
    monkeypatch.setattr(token_stats, "LOGITS_CHUNK_ELEMENTS", 4 * 100)  # 4 of the 12 valid positions per chunk

    stats = policy_response_stats(policy, ids, attention, response, response_mask, temperature=0.8,
                                  with_self_certainty=True)
    weights = torch.randn(3, *response.shape)
    sum(((stats[k] * w).sum() for k, w in zip(("logprobs", "entropy", "self_certainty"), weights))).backward()

    logits = twin(input_ids=ids, attention_mask=attention, position_ids=position_ids_from_mask(attention),
                  use_cache=False).logits[:, -8:-1]
    whole = _whole_logits_stats(logits, response, response_mask, 0.8)
    (whole * weights.permute(1, 2, 0)).sum().backward()

    torch.testing.assert_close(torch.stack([stats["logprobs"], stats["entropy"], stats["self_certainty"]], -1),
                               whole, rtol=0, atol=1e-5)
    for (name, got), want in zip(policy.named_parameters(), twin.parameters()):
        torch.testing.assert_close(got.grad, want.grad, rtol=0, atol=1e-5, msg=name)
    # the forward's own head call sees no position; the chunks: 4 + 4 + 4 valid positions, forward and recompute
    assert calls[0] == 0 and max(calls) == 4 and sum(calls[1:]) == 2 * 12


def test_policy_stats_without_gradients_take_no_recompute(tiny_policy_spec, monkeypatch):
    policy = build_policy(tiny_policy_spec).eval()
    ids, attention, response, response_mask = _inputs(1)
    monkeypatch.setattr(token_stats, "LOGITS_CHUNK_ELEMENTS", 5 * 100)
    with torch.no_grad():
        chunked = policy_response_stats(policy, ids, attention, response, response_mask)
        monkeypatch.setattr(token_stats, "LOGITS_CHUNK_ELEMENTS", 2**27)
        whole = policy_response_stats(policy, ids, attention, response, response_mask)
    for key in ("logprobs", "entropy"):
        torch.testing.assert_close(chunked[key], whole[key], rtol=0, atol=1e-6)
    assert not chunked["logprobs"].requires_grad


class SoftCapped(nn.Module):
    """A policy whose forward reworks its head's output (as Gemma's soft-capping does)."""

    def __init__(self, inner: nn.Module, cap: float) -> None:
        super().__init__()
        self.inner, self.cap = inner, cap

    def get_base_model(self) -> nn.Module:
        return self.inner

    def forward(self, **kwargs):
        out = self.inner(**kwargs)
        out.logits = torch.tanh(out.logits / self.cap) * self.cap
        return out


def test_a_model_that_reworks_its_logits_is_scored_on_its_final_logits(tiny_policy_spec):
    inner = build_policy(tiny_policy_spec).eval()
    policy = SoftCapped(inner, cap=0.5)
    ids, attention, response, response_mask = _inputs(2)
    with torch.no_grad():
        stats = policy_response_stats(policy, ids, attention, response, response_mask)
        logits = policy(input_ids=ids, attention_mask=attention, position_ids=position_ids_from_mask(attention),
                        use_cache=False).logits[:, -8:-1]
    expected = logprobs_from_logits(logits, response) * response_mask
    torch.testing.assert_close(stats["logprobs"], expected, rtol=0, atol=1e-6)
    # every log-prob of a distribution capped at 0.5 lies within 2 * 0.5 of -log V
    valid = response_mask.bool()
    assert (stats["logprobs"][valid] + math.log(100)).abs().max() <= 1.0 + 1e-5


def test_no_hook_is_left_on_the_head(tiny_policy_spec):
    policy = build_policy(tiny_policy_spec)
    ids, attention, response, response_mask = _inputs(3)
    policy_response_stats(policy, ids, attention, response, response_mask)
    head = policy.get_output_embeddings()
    assert not head._forward_hooks and not head._forward_pre_hooks
    assert policy(input_ids=ids).logits.shape == (2, 13, 100)

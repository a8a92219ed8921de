"""Per-token log-probs, entropy, self-certainty and explained variance, checked by hand."""

import math

import pytest
import torch

from tempo_pl.algorithms.token_stats import (
    entropy_from_logits,
    explained_variance,
    logprobs_from_logits,
    self_certainty_from_logits,
)

torch.set_num_threads(1)

# softmax([0, ln 2, ln 3]) = (1, 2, 3) / 6
LOGITS = torch.tensor([[[0.0, math.log(2.0), math.log(3.0)]]], dtype=torch.float64)


def test_logprobs_by_hand():
    labels = torch.tensor([[2]])
    # log(3/6) = -0.693147
    assert logprobs_from_logits(LOGITS, labels).item() == pytest.approx(math.log(0.5))
    # log(1/6) = -1.791759
    assert logprobs_from_logits(LOGITS, torch.tensor([[0]])).item() == pytest.approx(-math.log(6.0))


def test_logprobs_gradient_is_onehot_minus_softmax():
    logits = LOGITS.clone().requires_grad_()
    logprobs_from_logits(logits, torch.tensor([[2]])).sum().backward()
    # d log p_2 / d l = e_2 - p = (-1/6, -2/6, 1 - 3/6)
    assert torch.allclose(logits.grad, torch.tensor([[[-1 / 6, -1 / 3, 0.5]]], dtype=torch.float64))


def test_entropy_by_hand():
    # H = 1/6 ln 6 + 1/3 ln 3 + 1/2 ln 2 = 0.298627 + 0.366204 + 0.346574 = 1.011404
    expected = math.log(6) / 6 + math.log(3) / 3 + math.log(2) / 2
    assert entropy_from_logits(LOGITS).item() == pytest.approx(expected)
    assert entropy_from_logits(LOGITS).item() == pytest.approx(1.011404, abs=1e-6)


def test_entropy_with_a_banned_token_is_finite():
    # two equal tokens and one at -inf: H = ln 2
    logits = torch.tensor([[0.0, 0.0, -math.inf]])
    assert entropy_from_logits(logits).item() == pytest.approx(math.log(2.0))


def test_self_certainty_by_hand():
    # -ln 3 - mean(ln 1/6, ln 1/3, ln 1/2) = -1.098612 + (1.791759 + 1.098612 + 0.693147) / 3 = 0.095894
    expected = -math.log(3) + (math.log(6) + math.log(3) + math.log(2)) / 3
    assert self_certainty_from_logits(LOGITS).item() == pytest.approx(expected)
    assert self_certainty_from_logits(LOGITS).item() == pytest.approx(0.095894, abs=1e-6)


def test_uniform_logits_have_max_entropy_and_zero_self_certainty():
    logits = torch.full((2, 3, 7), 1.3)
    assert torch.allclose(entropy_from_logits(logits), torch.full((2, 3), math.log(7.0)))
    assert torch.allclose(self_certainty_from_logits(logits), torch.zeros(2, 3), atol=1e-6)


def test_half_precision_is_upcast_in_chunks_and_matches_float64():
    torch.manual_seed(0)
    # 3 * 400 = 1200 rows: more than one upcast chunk of 1024
    logits = (torch.randn(3, 400, 8) * 4).to(torch.bfloat16)
    labels = torch.randint(0, 8, (3, 400))
    exact = logits.double()
    expected_logp = torch.log_softmax(exact, -1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    logp = logprobs_from_logits(logits, labels)
    assert logp.dtype == torch.float32 and logp.shape == (3, 400)
    assert torch.allclose(logp.double(), expected_logp, atol=1e-5)
    probs = torch.softmax(exact, -1)
    expected_entropy = -(probs * torch.log_softmax(exact, -1)).sum(-1)
    assert torch.allclose(entropy_from_logits(logits).double(), expected_entropy, atol=1e-5)
    expected_certainty = -math.log(8) - torch.log_softmax(exact, -1).mean(-1)
    assert torch.allclose(self_certainty_from_logits(logits).double(), expected_certainty, atol=1e-5)


def test_logprobs_rejects_mismatched_labels():
    with pytest.raises(ValueError, match="labels"):
        logprobs_from_logits(LOGITS, torch.tensor([[1, 2]]))


def test_explained_variance_by_hand():
    y = torch.tensor([[1.0, -1.0, 1.0], [-1.0, 0.0, 0.0]])
    y_pred = torch.tensor([[0.5, -0.5, 0.5], [-0.5, 99.0, 99.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    # valid y = (1, -1, 1, -1): mean 0, unbiased var 4/3; residual (.5, -.5, .5, -.5): var 1/3 -> 1 - 0.25 = 0.75
    assert explained_variance(y_pred, y, mask).item() == pytest.approx(0.75)
    assert explained_variance(y, y, mask).item() == pytest.approx(1.0)


def test_explained_variance_of_constant_targets_is_zero():
    y = torch.ones(2, 2)
    assert explained_variance(torch.zeros(2, 2), y, torch.ones(2, 2)).item() == 0.0
    assert explained_variance(torch.zeros(2, 2), y, torch.zeros(2, 2)).item() == 0.0

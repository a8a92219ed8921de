"""Masked statistics and advantage estimators, checked against numbers worked out by hand."""

import math

import pytest
import torch

from tempo_pl.algorithms.advantages import (
    em_advantage,
    em_token_advantage,
    gae_advantage,
    grpo_advantage,
    last_token_value,
    last_valid_index,
    masked_mean,
    masked_var,
    masked_whiten,
    rloo_advantage,
)

torch.set_num_threads(1)


def t(rows):
    return torch.tensor(rows, dtype=torch.float64)


# ---------------------------------------------------------------- masked statistics


def test_masked_mean_global_and_per_row_ignore_padding_even_if_infinite():
    x = t([[1.0, 2.0, math.inf], [4.0, 5.0, 6.0]])
    mask = t([[1, 1, 0], [0, 0, 0]])
    # global: (1 + 2) / 2 = 1.5; per row: row 0 (1 + 2) / 2 = 1.5, row 1 has nothing -> 0
    assert masked_mean(x, mask).item() == pytest.approx(1.5)
    assert torch.allclose(masked_mean(x, mask, dim=-1), t([1.5, 0.0]))


def test_masked_mean_gradient_is_finite_on_empty_rows_and_batches():
    x = torch.ones(2, 3, dtype=torch.float64, requires_grad=True)
    mask = t([[1, 1, 0], [0, 0, 0]])
    masked_mean(x, mask, dim=-1).sum().backward()
    # d/dx of row 0's mean is 1/2 on its two valid entries; the empty row gets 0, not NaN
    assert torch.equal(x.grad, t([[0.5, 0.5, 0.0], [0.0, 0.0, 0.0]]))

    x.grad = None
    out = masked_mean(x, torch.zeros(2, 3, dtype=torch.float64))
    out.backward()
    assert out.item() == 0.0 and torch.equal(x.grad, torch.zeros_like(x))


def test_masked_var_unbiased_and_biased():
    x = t([[1.0, 2.0, 3.0, 100.0]])
    mask = t([[1, 1, 1, 0]])
    # mean 2; squared deviations 1 + 0 + 1 = 2; biased 2/3, unbiased 2/(3-1) = 1
    assert masked_var(x, mask).item() == pytest.approx(1.0)
    assert masked_var(x, mask, unbiased=False).item() == pytest.approx(2 / 3)


def test_masked_var_with_fewer_than_two_valid_entries_is_zero():
    x = t([[5.0, 7.0]])
    assert masked_var(x, t([[1, 0]])).item() == 0.0
    assert masked_var(x, t([[0, 0]])).item() == 0.0


def test_masked_whiten_by_hand():
    x = t([[2.0, 4.0, 6.0, -50.0]])
    mask = t([[1, 1, 1, 0]])
    # mean 4; unbiased var (4 + 0 + 4) / 2 = 4; std 2 -> (-1, 0, 1)
    assert torch.allclose(masked_whiten(x, mask)[0, :3], t([-1.0, 0.0, 1.0]), atol=1e-7)
    # shift_mean=False adds the mean back: (-1 + 4, 0 + 4, 1 + 4)
    assert torch.allclose(masked_whiten(x, mask, shift_mean=False)[0, :3], t([3.0, 4.0, 5.0]), atol=1e-7)


def test_masked_whiten_eps_is_added_to_the_variance():
    x = t([[0.0, 2.0]])
    mask = t([[1, 1]])
    # mean 1, unbiased var (1 + 1) / 1 = 2; eps = 2 -> (x - 1) / sqrt(4) = (-0.5, 0.5)
    assert torch.allclose(masked_whiten(x, mask, eps=2.0), t([[-0.5, 0.5]]))


def test_masked_whiten_of_nothing_or_one_token_is_zero_not_nan():
    x = t([[3.0, 1.0]])
    assert torch.equal(masked_whiten(x, t([[0, 0]])) * t([[0, 0]]), t([[0.0, 0.0]]))
    # one valid token: mean = x, var reported 0 -> (3 - 3) / sqrt(1e-8) = 0
    assert masked_whiten(x, t([[1, 0]]))[0, 0].item() == 0.0


def test_last_valid_index_and_value():
    mask = t([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1]])
    values = t([[0.1, 0.2, 0.3, 0.9], [0.5, 0.6, 0.7, 0.8], [0.7, 0.7, 0.7, 0.7], [0.1, 0.1, 0.1, 0.4]])
    # sum(mask) - 1 clamped at 0: 2, 0, 0, 3
    assert last_valid_index(mask).tolist() == [2, 0, 0, 3]
    assert last_valid_index(mask).dtype == torch.long
    # the fully masked row reads 0, not values[2, 0]
    assert torch.allclose(last_token_value(values, mask), t([0.3, 0.5, 0.0, 0.4]))


def test_last_valid_index_with_a_hole_points_at_the_last_valid_token():
    # sum - 1 would give 1, a masked position; the last valid token is at 2
    assert last_valid_index(t([[1, 0, 1, 0]])).tolist() == [2]


# ---------------------------------------------------------------- em_token


def _em_token_batch():
    mask = t([[1, 1, 0], [1, 1, 1]])
    values = t([[0.2, 0.4, 9.0], [0.1, 0.3, 0.5]])  # 9.0 sits on padding and must be ignored
    # row 0 labeled, correct: z = +1; row 1 unlabeled: z = its last-token value 0.5
    outcomes = torch.stack([torch.tensor(1.0, dtype=torch.float64), last_token_value(values, mask)[1]])
    return outcomes, values, mask


def test_em_token_advantage_raw_and_returns():
    outcomes, values, mask = _em_token_batch()
    adv, returns = em_token_advantage(outcomes, values, mask, whiten=False)
    # raw (z - v) * mask: row 0: 1 - .2 = .8, 1 - .4 = .6; row 1: .5-.1 = .4, .5-.3 = .2, .5-.5 = 0 (last token is 0)
    assert torch.allclose(adv, t([[0.8, 0.6, 0.0], [0.4, 0.2, 0.0]]))
    assert torch.allclose(returns, t([[1.0, 1.0, 0.0], [0.5, 0.5, 0.5]]))


def test_em_token_advantage_whitens_globally_over_labeled_and_unlabeled_tokens():
    outcomes, values, mask = _em_token_batch()
    adv, _ = em_token_advantage(outcomes, values, mask)
    # valid raw values .8 .6 .4 .2 0: mean .4; deviations .4 .2 0 -.2 -.4; squares sum .4; unbiased var .4/4 = .1
    s = math.sqrt(0.1 + 1e-8)
    expected = t([[0.4 / s, 0.2 / s, 0.0], [0.0, -0.2 / s, -0.4 / s]])
    assert torch.allclose(adv, expected, atol=1e-9)
    assert adv[0, 0].item() == pytest.approx(1.264911, abs=1e-6)


def test_em_token_advantage_empty_batch_and_masked_row():
    values = t([[0.3, 0.2], [0.1, 0.4]])
    adv, returns = em_token_advantage(t([1.0, -1.0]), values, torch.zeros(2, 2, dtype=torch.float64))
    assert torch.equal(adv, torch.zeros(2, 2, dtype=torch.float64)) and torch.equal(returns, adv)
    # row 1 fully masked: it contributes nothing and gets zeros; row 0 alone: raw (0.7, 0.8) -> mean .75, var .005
    adv, returns = em_token_advantage(t([1.0, -1.0]), values, t([[1, 1], [0, 0]]))
    s = math.sqrt(0.005 + 1e-8)
    assert torch.allclose(adv, t([[-0.05 / s, 0.05 / s], [0.0, 0.0]]), atol=1e-9)
    assert torch.equal(returns[1], t([0.0, 0.0]))


def test_em_token_advantage_is_a_constant_for_the_losses():
    values = t([[0.3, 0.2]]).requires_grad_()
    adv, returns = em_token_advantage(t([1.0]), values, t([[1, 1]]))
    assert not adv.requires_grad and not returns.requires_grad


def test_em_token_advantage_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="outcomes"):
        em_token_advantage(t([1.0, 2.0, 3.0]), t([[0.0, 0.0]]), t([[1, 1]]))


# ---------------------------------------------------------------- GRPO / RLOO / em


def test_grpo_advantage_by_hand():
    scores = t([1.0, -1.0, -1.0, 1.0, 1.0, 0.5])
    groups = torch.tensor([0, 0, 0, 1, 1, 2])
    mask = t([[1, 1]] * 5 + [[1, 0]])
    adv, returns = grpo_advantage(scores, mask, groups)
    # group 0: mean -1/3; deviations 4/3, -2/3, -2/3; unbiased var (16/9 + 4/9 + 4/9) / 2 = 4/3; std 1.1547005
    std0 = math.sqrt(4 / 3)
    # group 1: all equal -> 0 / (0 + eps) = 0; group 2 (one row): mean 0, std 1 -> 0.5 / (1 + 1e-6)
    per_row = [(4 / 3) / (std0 + 1e-6), (-2 / 3) / (std0 + 1e-6), (-2 / 3) / (std0 + 1e-6), 0.0, 0.0, 0.5 / (1 + 1e-6)]
    expected = t(per_row).unsqueeze(-1) * mask
    assert torch.allclose(adv, expected)
    assert adv[0, 0].item() == pytest.approx(1.154700, abs=1e-5)
    assert adv[5, 1].item() == 0.0  # padding
    assert torch.equal(adv, returns)


def test_grpo_advantage_without_std_and_with_non_contiguous_group_ids():
    scores = t([1.0, -1.0, -1.0, 3.0])
    groups = torch.tensor([7, 7, 7, 2])
    adv, _ = grpo_advantage(scores, torch.ones(4, 1, dtype=torch.float64), groups, norm_by_std=False)
    # group 7: mean -1/3 -> 4/3, -2/3, -2/3; group 2 alone: mean 0 -> 3
    assert torch.allclose(adv.squeeze(-1), t([4 / 3, -2 / 3, -2 / 3, 3.0]))


def test_grpo_advantage_all_equal_scores_are_zero():
    adv, _ = grpo_advantage(t([0.7, 0.7, 0.7]), torch.ones(3, 2, dtype=torch.float64), torch.tensor([0, 0, 0]))
    assert torch.equal(adv, torch.zeros(3, 2, dtype=torch.float64))
    # float32: (0.9 + 0.9 + 0.9) / 3 - 0.9 = -6e-8, and -6e-8 / eps = -0.06 without the exact constant-group mean
    adv, _ = grpo_advantage(torch.full((3,), 0.9), torch.ones(3, 2), torch.tensor([0, 0, 0]))
    assert torch.equal(adv, torch.zeros(3, 2))


def test_rloo_advantage_by_hand():
    scores = t([1.0, 0.0, 0.0, 5.0])
    groups = torch.tensor([0, 0, 0, 1])
    mask = t([[1, 1], [1, 1], [1, 0], [1, 1]])
    adv, returns = rloo_advantage(scores, mask, groups)
    # row 0: 1 - mean(0, 0) = 1; rows 1, 2: 0 - mean(1, 0) = -0.5; row 3 alone has no baseline: its score, 5
    assert torch.allclose(adv, t([[1.0, 1.0], [-0.5, -0.5], [-0.5, 0.0], [5.0, 5.0]]))
    assert torch.equal(adv, returns)


def _em_batch():
    # group 0 labeled (+1, -1, -1); group 1 unlabeled with critic outcomes 1.7, -0.3, 0.2
    outcomes = t([1.0, -1.0, -1.0, 1.7, -0.3, 0.2])
    values = t([[0.1, 0.2], [0.3, 0.4], [0.5, 0.6], [0.7, 1.7], [0.2, -0.3], [0.2, 5.0]])
    mask = t([[1, 1]] * 5 + [[1, 0]])
    groups = torch.tensor([0, 0, 0, 1, 1, 1])
    is_labeled = torch.tensor([True, True, True, False, False, False])
    return outcomes, values, mask, groups, is_labeled


def test_em_advantage_clamps_unlabeled_scores_then_normalises_per_group():
    outcomes, values, mask, groups, is_labeled = _em_batch()
    adv, returns = em_advantage(outcomes, values, mask, groups, is_labeled)
    # group 0: mean -1/3, std sqrt(4/3) (as in the GRPO test) -> 1.1547, -0.5774, -0.5774
    std0 = math.sqrt(4 / 3)
    # group 1 clamped to (1, -0.3, 0.2): mean 0.3; deviations .7 -.6 -.1; squares .49 + .36 + .01 = .86; var .43
    std1 = math.sqrt(0.43)
    per_row = [4 / 3 / (std0 + 1e-6), -2 / 3 / (std0 + 1e-6), -2 / 3 / (std0 + 1e-6)]
    per_row += [0.7 / (std1 + 1e-6), -0.6 / (std1 + 1e-6), -0.1 / (std1 + 1e-6)]
    assert torch.allclose(adv, t(per_row).unsqueeze(-1) * mask)
    assert adv[3, 0].item() == pytest.approx(1.067489, abs=1e-5)
    # returns: labeled rows the outcome, unlabeled rows the critic's own values (masked)
    expected_returns = t([[1, 1], [-1, -1], [-1, -1], [0.7, 1.7], [0.2, -0.3], [0.2, 0.0]])
    assert torch.allclose(returns, expected_returns)


def test_em_advantage_without_clamp_uses_the_raw_critic_outcome():
    outcomes, values, mask, groups, is_labeled = _em_batch()
    adv, _ = em_advantage(outcomes, values, mask, groups, is_labeled, clamp_unlabeled=False)
    # group 1 raw (1.7, -0.3, 0.2): mean 0.53333; deviations 1.16667, -0.83333, -0.33333
    # squares 1.36111 + 0.69444 + 0.11111 = 2.16667; var 1.08333; std 1.04083 -> 1.12090 for row 3
    assert adv[3, 0].item() == pytest.approx(1.120897, abs=1e-5)
    assert adv[4, 0].item() == pytest.approx(-0.800640, abs=1e-5)


# ---------------------------------------------------------------- GAE


def test_gae_by_hand_with_discount():
    values = t([[0.5, 0.2, -0.1, 7.0]])
    mask = t([[1, 1, 1, 0]])
    adv, returns = gae_advantage(t([1.0]), values, mask, gamma=0.9, lam=0.5, whiten=False)
    # reward 1 on t=2, the last valid token; gamma * lam = 0.45
    # t=2: delta = 1 + 0.9 * 0 - (-0.1) = 1.1;           A2 = 1.1
    # t=1: delta = 0 + 0.9 * (-0.1) - 0.2 = -0.29;       A1 = -0.29 + 0.45 * 1.1 = 0.205
    # t=0: delta = 0 + 0.9 * 0.2 - 0.5 = -0.32;          A0 = -0.32 + 0.45 * 0.205 = -0.22775
    assert torch.allclose(adv, t([[-0.22775, 0.205, 1.1, 0.0]]))
    # returns = A + V: -0.22775 + 0.5, 0.205 + 0.2, 1.1 - 0.1
    assert torch.allclose(returns, t([[0.27225, 0.405, 1.0, 0.0]]))


def test_gae_with_gamma_lambda_one_is_monte_carlo():
    values = t([[0.5, 0.2, -0.1]])
    adv, returns = gae_advantage(t([1.0]), values, t([[1, 1, 1]]), whiten=False)
    # A_t = R - V_t: 0.5, 0.8, 1.1; returns are R everywhere
    assert torch.allclose(adv, t([[0.5, 0.8, 1.1]]))
    assert torch.allclose(returns, t([[1.0, 1.0, 1.0]]))


def test_gae_skips_masked_holes():
    values = t([[0.5, 9.0, 0.2]])
    adv, _ = gae_advantage(t([1.0]), values, t([[1, 0, 1]]), gamma=0.9, lam=1.0, whiten=False)
    # t=2: delta = 1 - 0.2 = 0.8, A2 = 0.8; t=1 skipped (next value stays 0.2, running stays 0.8)
    # t=0: delta = 0.9 * 0.2 - 0.5 = -0.32; A0 = -0.32 + 0.9 * 0.8 = 0.4
    assert torch.allclose(adv, t([[0.4, 0.0, 0.8]]))


def test_gae_whitened_and_an_empty_row():
    values = t([[0.0, 0.5], [0.5, 3.0], [0.2, 0.2]])
    mask = t([[1, 1], [1, 0], [0, 0]])
    adv, returns = gae_advantage(t([1.0, -1.0, 1.0]), values, mask)
    # gamma = lam = 1: row 0: (1, 0.5); row 1: -1 - 0.5 = -1.5; row 2 empty
    # valid (1, .5, -1.5): mean 0; var (1 + .25 + 2.25) / 2 = 1.75
    s = math.sqrt(1.75 + 1e-8)
    assert torch.allclose(adv, t([[1 / s, 0.5 / s], [-1.5 / s, 0.0], [0.0, 0.0]]))
    assert torch.allclose(returns, t([[1.0, 1.0], [-1.0, 0.0], [0.0, 0.0]]))

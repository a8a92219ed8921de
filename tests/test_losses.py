"""Loss aggregation, GSPO / PPO policy losses, the value loss and KL penalties, checked by hand."""

import math

import pytest
import torch

from tempo_pl.algorithms.losses import (
    AGG_MODES,
    aggregate_loss,
    gspo_policy_loss,
    kl_penalty,
    ppo_clip_policy_loss,
    value_loss,
)

torch.set_num_threads(1)


def t(rows):
    return torch.tensor(rows, dtype=torch.float64)


# ---------------------------------------------------------------- aggregation

LOSS = [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]]
MASK = [[1, 1, 0], [1, 1, 1], [0, 0, 0]]


@pytest.mark.parametrize(
    "mode, expected",
    [
        ("token-mean", 18 / 5),  # (1 + 2 + 4 + 5 + 6) / 5 valid tokens
        ("seq-mean-token-mean", 3.25),  # rows (1 + 2) / 2 = 1.5 and 15 / 3 = 5; empty row 2 left out: 6.5 / 2
        ("seq-mean-token-sum", 9.0),  # rows 3 and 15; empty row left out: 18 / 2
    ],
)
def test_aggregate_loss_modes(mode, expected):
    assert aggregate_loss(t(LOSS), t(MASK), mode).item() == pytest.approx(expected)


def test_aggregate_loss_ignores_non_finite_padding():
    loss = t(LOSS)
    loss[0, 2] = math.nan
    loss[2, 0] = math.inf
    for mode in AGG_MODES:
        assert math.isfinite(aggregate_loss(loss, t(MASK), mode).item())


def test_aggregate_loss_with_nothing_valid_is_a_differentiable_zero():
    loss_mat = t(LOSS).requires_grad_()
    for mode in AGG_MODES:
        out = aggregate_loss(loss_mat, torch.zeros(3, 3, dtype=torch.float64), mode)
        assert out.item() == 0.0 and out.requires_grad
        out.backward()
        assert torch.equal(loss_mat.grad, torch.zeros(3, 3, dtype=torch.float64))


def test_aggregate_loss_rejects_an_unknown_mode_naming_the_valid_ones():
    with pytest.raises(ValueError, match="seq-mean-token-mean"):
        aggregate_loss(t(LOSS), t(MASK), "token-sum")


# ---------------------------------------------------------------- GSPO

CLIP_LOW, CLIP_HIGH = 0.1, 0.2  # ratio range [0.9, 1.2]


def _gspo_batch():
    # row 0: log-ratios (0.3, 0.1) -> sequence log-ratio 0.2, s0 = e^0.2 = 1.221403 (above 1.2)
    # row 1: one valid token, log-ratio -0.5 -> s1 = e^-0.5 = 0.606531 (below 0.9)
    # row 2: log-ratios (-0.2, -0.4) -> -0.3, s2 = e^-0.3 = 0.740818 (below 0.9)
    old = t([[-1.0, -2.0], [-1.0, -1.0], [-0.5, -0.7]])
    logp = (old + t([[0.3, 0.1], [-0.5, 40.0], [-0.2, -0.4]])).requires_grad_()  # 40 sits on padding
    adv = t([[1.0, -1.0], [2.0, 2.0], [-1.0, -2.0]])
    mask = t([[1, 1], [1, 0], [1, 1]])
    return logp, old, adv, mask


def test_gspo_loss_value_and_metrics_by_hand():
    logp, old, adv, mask = _gspo_batch()
    loss, metrics = gspo_policy_loss(logp, old, adv, mask, CLIP_LOW, CLIP_HIGH)
    s0, s1, s2 = math.exp(0.2), math.exp(-0.5), math.exp(-0.3)
    # per token max(-A s, -A clip(s, 0.9, 1.2)):
    # row 0 t0 A=+1: max(-1.2214, -1.2) = -1.2 (clipped, high side); t1 A=-1: max(1.2214, 1.2) = 1.2214 (unclipped)
    # row 1 A=+2: max(-1.2131, -1.8) = -1.2131 (unclipped: a low ratio with A > 0 is not clipped)
    # row 2 A=-1: max(0.7408, 0.9) = 0.9 (clipped, low side); A=-2: max(1.4816, 1.8) = 1.8 (clipped)
    row0 = (-1.2 + s0) / 2
    row1 = -2 * s1
    row2 = (0.9 + 1.8) / 2
    assert loss.item() == pytest.approx((row0 + row1 + row2) / 3)
    assert loss.item() == pytest.approx(0.0492135, abs=1e-6)
    # clipped branch on 3 of the 5 valid tokens
    assert metrics["clipfrac"].item() == pytest.approx(0.6)
    # approx_kl = mean(old - logp) = -(0.3 + 0.1 - 0.5 - 0.2 - 0.4) / 5 = 0.14
    assert metrics["approx_kl"].item() == pytest.approx(0.14)
    # every token of a row carries the row's sequence ratio: (2 s0 + s1 + 2 s2) / 5
    assert metrics["ratio_mean"].item() == pytest.approx((2 * s0 + s1 + 2 * s2) / 5)


def test_gspo_gradient_is_minus_advantage_times_sequence_ratio_over_length():
    logp, old, adv, mask = _gspo_batch()
    loss, _ = gspo_policy_loss(logp, old, adv, mask, CLIP_LOW, CLIP_HIGH)
    loss.backward()
    s0, s1 = math.exp(0.2), math.exp(-0.5)
    # seq-mean-token-mean over 3 rows: d loss / d logp_t = -A_t * s_i / |y_i| / 3 on unclipped tokens, 0 on clipped
    # row 0 t1: -(-1) * s0 / 2 / 3 = 0.203567; row 1 t0: -2 * s1 / 1 / 3 = -0.404354
    expected = t([[0.0, s0 / 6], [-2 * s1 / 3, 0.0], [0.0, 0.0]])
    assert torch.allclose(logp.grad, expected)


def test_gspo_without_clipping_matches_a_plain_sequence_ratio_objective():
    logp, old, adv, mask = _gspo_batch()
    loss, metrics = gspo_policy_loss(logp, old, adv, mask, clip_low=0.9, clip_high=10.0)
    s0, s1, s2 = math.exp(0.2), math.exp(-0.5), math.exp(-0.3)
    # nothing clipped: rows (-s0 + s0) / 2 = 0, -2 s1, (s2 + 2 s2) / 2 = 1.5 s2
    assert loss.item() == pytest.approx((0.0 - 2 * s1 + 1.5 * s2) / 3)
    assert metrics["clipfrac"].item() == 0.0


def test_gspo_log_ratio_is_clamped_at_ten_without_gradient():
    old = t([[0.0, 0.0]])
    logp = t([[12.0, 12.0]]).requires_grad_()
    loss, _ = gspo_policy_loss(logp, old, t([[-1.0, -1.0]]), t([[1, 1]]), CLIP_LOW, CLIP_HIGH)
    # ratio e^min(12, 10) = e^10 for A = -1: max(e^10, 1.2) = e^10
    assert loss.item() == pytest.approx(math.exp(10.0))
    loss.backward()
    assert torch.equal(logp.grad, torch.zeros_like(logp))


def test_gspo_token_mean_aggregation_is_honoured():
    logp, old, adv, mask = _gspo_batch()
    loss, _ = gspo_policy_loss(logp, old, adv, mask, CLIP_LOW, CLIP_HIGH, agg_mode="token-mean")
    s0, s1 = math.exp(0.2), math.exp(-0.5)
    # same per-token losses, averaged over the 5 valid tokens
    assert loss.item() == pytest.approx((-1.2 + s0 - 2 * s1 + 0.9 + 1.8) / 5)


def test_gspo_empty_batch_gives_zero_loss_and_finite_metrics():
    logp = torch.zeros(2, 3, dtype=torch.float64, requires_grad=True)
    zeros = torch.zeros(2, 3, dtype=torch.float64)
    loss, metrics = gspo_policy_loss(logp, zeros, torch.ones_like(zeros), zeros, CLIP_LOW, CLIP_HIGH)
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(logp.grad, torch.zeros(2, 3, dtype=torch.float64))
    assert all(math.isfinite(v.item()) for v in metrics.values())


def test_policy_losses_validate_clip_ranges():
    logp, old, adv, mask = _gspo_batch()
    with pytest.raises(ValueError, match="clip_low"):
        gspo_policy_loss(logp, old, adv, mask, 1.5, 0.2)
    with pytest.raises(ValueError, match="clip_high"):
        ppo_clip_policy_loss(logp, old, adv, mask, 0.2, -0.1)


# ---------------------------------------------------------------- PPO clip-higher


def test_ppo_clip_higher_value_metrics_and_gradient_by_hand():
    ratios = [1.5, 1.5, 0.5, 0.5, 1.15, 0.85]
    old = t([[-1.0] * 6])
    logp = (old + torch.log(t([ratios]))).requires_grad_()
    adv = t([[1.0, -1.0, -1.0, 1.0, 1.0, -1.0]])
    loss, metrics = ppo_clip_policy_loss(logp, old, adv, torch.ones(1, 6, dtype=torch.float64), CLIP_LOW, CLIP_HIGH)
    # max(-A r, -A clip(r, 0.9, 1.2)) per token:
    # r=1.5  A=+1: max(-1.5, -1.2) = -1.2   clipped (high)
    # r=1.5  A=-1: max( 1.5,  1.2) =  1.5   unclipped
    # r=0.5  A=-1: max( 0.5,  0.9) =  0.9   clipped (low)
    # r=0.5  A=+1: max(-0.5, -0.9) = -0.5   unclipped
    # r=1.15 A=+1: -1.15 both: inside [0.9, 1.2] (a symmetric 0.1 clip would have cut it at 1.1)
    # r=0.85 A=-1: max(0.85, 0.9) = 0.9     clipped (low side uses 0.1)
    assert loss.item() == pytest.approx((-1.2 + 1.5 + 0.9 - 0.5 - 1.15 + 0.9) / 6)  # 0.075
    assert metrics["clipfrac"].item() == pytest.approx(3 / 6)
    assert metrics["ratio_mean"].item() == pytest.approx(sum(ratios) / 6)
    assert metrics["approx_kl"].item() == pytest.approx(-sum(math.log(r) for r in ratios) / 6)
    loss.backward()
    # token-mean: d/dlogp_t = -A_t r_t / 6 where unclipped, 0 where clipped
    expected = t([[0.0, 1.5 / 6, 0.0, -0.5 / 6, -1.15 / 6, 0.0]])
    assert torch.allclose(logp.grad, expected)


# ---------------------------------------------------------------- value loss


def _value_batch():
    # row 0: old (0, 0), new (0.6, 0.4): sequence shift D = 0.5 > c = 0.1 -> clipped to 0.1
    #        shifted prediction v + (0.1 - 0.5) = (0.2, 0.0); targets +1
    # row 1: old (0.5, 0.5), new (0.55, 0.45): D = 0, not clipped; targets -1
    values = t([[0.6, 0.4], [0.55, 0.45]]).requires_grad_()
    old = t([[0.0, 0.0], [0.5, 0.5]])
    returns = t([[1.0, 1.0], [-1.0, -1.0]])
    return values, old, returns, torch.ones(2, 2, dtype=torch.float64)


def test_value_loss_sequence_clip_by_hand():
    values, old, returns, mask = _value_batch()
    loss, metrics = value_loss(values, old, returns, mask, cliprange=0.1)
    # row 0: unclipped (0.4^2, 0.6^2) = (.16, .36), clipped (0.8^2, 1.0^2) = (.64, 1.0) -> max (.64, 1.0), mean .82
    # row 1: (1.55^2, 1.45^2) = (2.4025, 2.1025), mean 2.2525
    # 0.5 * seq-mean-token-mean = 0.5 * (0.82 + 2.2525) / 2 = 0.768125
    assert loss.item() == pytest.approx(0.768125)
    assert metrics["vf_clipfrac"].item() == pytest.approx(0.5)  # 1 of 2 sequences clipped
    assert metrics["vpred_mean"].item() == pytest.approx(0.5)  # (0.6 + 0.4 + 0.55 + 0.45) / 4
    loss.backward()
    # row 0, clipped: v~_t = v_t - mean(v) + const, so d/dv_s = 1/4 * sum_t e_t (delta_ts - 1/2), e = (-0.8, -1.0)
    #   s=0: (-0.4 + 0.5) / 4 = 0.025; s=1: (0.4 - 0.5) / 4 = -0.025 (the clipped mean gets no push)
    # row 1, unclipped: d/dv_s = 0.5 * (1/2) * (1/2) * 2 e_s = e_s / 4, e = (1.55, 1.45)
    assert torch.allclose(values.grad, t([[0.025, -0.025], [0.3875, 0.3625]]))


def test_value_loss_token_clip_by_hand():
    values, old, returns, mask = _value_batch()
    loss, metrics = value_loss(values, old, returns, mask, cliprange=0.1, clip_mode="token")
    # row 0: each token clipped to 0 + 0.1: (0.9^2, 0.9^2) = (.81, .81) > unclipped (.16, .36) -> mean .81
    # row 1: |v - v_old| = 0.05 <= 0.1, both branches equal -> 2.2525
    assert loss.item() == pytest.approx(0.5 * (0.81 + 2.2525) / 2)  # 0.765625
    assert metrics["vf_clipfrac"].item() == pytest.approx(2 / 4)  # 2 of 4 tokens took the clipped branch
    loss.backward()
    # row 0 sits on the flat part of the clamp: no gradient; row 1 as before: e_s / 4
    assert torch.allclose(values.grad, t([[0.0, 0.0], [0.3875, 0.3625]]))


def test_value_loss_without_clip_is_half_mse():
    values, old, returns, mask = _value_batch()
    loss, metrics = value_loss(values, old, returns, mask, cliprange=0.1, clip_mode="none")
    # 0.5 * ((.16 + .36) / 2 + 2.2525) / 2 = 0.628125
    assert loss.item() == pytest.approx(0.628125)
    assert metrics["vf_clipfrac"].item() == 0.0


def test_value_loss_labeled_rows_only_through_the_mask_and_token_mean():
    values, old, returns, _ = _value_batch()
    is_labeled = torch.tensor([True, False])
    mask = torch.ones(2, 2, dtype=torch.float64) * is_labeled.unsqueeze(-1)
    loss, metrics = value_loss(values, old, returns, mask, cliprange=0.1, agg_mode="token-mean")
    # only row 0: 0.5 * (.64 + 1.0) / 2 = 0.41
    assert loss.item() == pytest.approx(0.41)
    assert metrics["vf_clipfrac"].item() == pytest.approx(1.0)


def test_value_loss_with_no_labeled_row_is_a_differentiable_zero():
    values, old, returns, _ = _value_batch()
    for clip_mode in ("sequence", "token", "none"):
        values.grad = None
        loss, metrics = value_loss(values, old, returns, torch.zeros(2, 2, dtype=torch.float64), 0.1, clip_mode)
        loss.backward()
        assert loss.item() == 0.0 and torch.equal(values.grad, torch.zeros(2, 2, dtype=torch.float64))
        assert metrics["vf_clipfrac"].item() == 0.0 and metrics["vpred_mean"].item() == 0.0


def test_value_loss_validates_its_options():
    values, old, returns, mask = _value_batch()
    with pytest.raises(ValueError, match="clip_mode"):
        value_loss(values, old, returns, mask, 0.1, clip_mode="row")
    with pytest.raises(ValueError, match="cliprange"):
        value_loss(values, old, returns, mask, -0.1)


# ---------------------------------------------------------------- KL penalty


def test_kl_penalty_kinds_by_hand():
    logp, ref = t([-1.0, -2.0]), t([-1.5, -1.0])
    # logp - ref = (0.5, -1.0)
    assert torch.allclose(kl_penalty(logp, ref, "kl"), t([0.5, -1.0]))
    assert torch.allclose(kl_penalty(logp, ref, "abs"), t([0.5, 1.0]))
    assert torch.allclose(kl_penalty(logp, ref, "mse"), t([0.125, 0.5]))
    # k3 with d = ref - logp = (-0.5, 1.0): e^d - d - 1 = (0.606531 + 0.5 - 1, 2.718282 - 2) = (0.106531, 0.718282)
    assert torch.allclose(kl_penalty(logp, ref), t([math.exp(-0.5) - 0.5, math.e - 2.0]))


def test_low_var_kl_is_clamped_to_ten():
    # d = 15: e^15 - 16 is huge -> 10
    assert kl_penalty(t([0.0]), t([15.0]), "low_var_kl").item() == 10.0


def test_kl_penalty_rejects_unknown_kind():
    with pytest.raises(ValueError, match="low_var_kl"):
        kl_penalty(t([0.0]), t([0.0]), "k4")


def test_ppo_dual_clip_caps_the_loss_of_negative_advantages():
    # one token, A = -1, ratio 4 (log 4 - 0): clipped surrogate max(4, 1.28) = 4, capped at -A * 3 = 3 with no gradient
    logp = torch.tensor([[math.log(4.0)]], requires_grad=True)
    loss, m = ppo_clip_policy_loss(logp, torch.zeros(1, 1), torch.tensor([[-1.0]]), torch.ones(1, 1), 0.2, 0.28)
    loss.backward()
    assert loss.item() == pytest.approx(3.0) and logp.grad.item() == 0.0
    assert m["clipfrac_lower"].item() == 1.0
    logp.grad = None
    loss, m = ppo_clip_policy_loss(logp, torch.zeros(1, 1), torch.tensor([[-1.0]]), torch.ones(1, 1), 0.2, 0.28,
                                   dual_clip=0.0)
    loss.backward()
    assert loss.item() == pytest.approx(4.0) and logp.grad.item() == pytest.approx(4.0) and "clipfrac_lower" not in m
    # a positive advantage is never capped: A = 1, ratio 0.5 -> max(-0.5, -0.8) = -0.5
    loss, _ = ppo_clip_policy_loss(torch.log(torch.tensor([[0.5]])), torch.zeros(1, 1), torch.ones(1, 1),
                                   torch.ones(1, 1), 0.2, 0.28)
    assert loss.item() == pytest.approx(-0.5)
    with pytest.raises(ValueError, match="dual_clip must be > 1"):
        ppo_clip_policy_loss(logp, torch.zeros(1, 1), torch.ones(1, 1), torch.ones(1, 1), 0.2, 0.28, dual_clip=0.5)

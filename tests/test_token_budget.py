"""Token-budget micro-batches: rows grouped by length within the budget, the padding a micro-batch's rows share cut
off, every rank making as many passes, and the step's gradient that of fixed row micro-batches (float64)."""

from __future__ import annotations

import copy

import pytest
import torch

from tempo_pl.algorithms.losses import value_loss
from tempo_pl.algorithms.registry import policy_loss_fn
from tempo_pl.config import AlgorithmConfig, TrainingConfig
from tempo_pl.models.builders import CriticSpec, build_critic, build_policy
from tempo_pl.models.forward import policy_response_stats, sequence_inputs
from tempo_pl.stages.minibatch import (
    MiniBatchPlan,
    full_width,
    loss_units,
    optimize,
    row_inputs,
    row_tokens,
    token_budget_chunks,
)
from tempo_pl.stages.ranks import Ranks
from tempo_pl.stages.updates import critic_micro_loss, policy_micro_loss
from tempo_pl.types import ForwardStats, Rollout
from _rollouts import prompt_batch, rollout_from_tokens


def test_rows_are_grouped_longest_first_within_the_budget():
    prompt = torch.tensor([2, 5, 3, 2, 4, 1])
    response = torch.tensor([10, 1, 2, 9, 30, 2])  # totals 12, 6, 5, 11, 34, 3
    groups = token_budget_chunks(prompt, response, budget=24)
    # 4 (34 tokens) alone; 0 and 3: 2 x (2 + 10) = 24; then 1, 2, 5: 3 x (5 + 2) = 21
    assert [g.tolist() for g in groups] == [[4], [0, 3], [1, 2, 5]]
    for g in groups:
        assert len(g) == 1 or len(g) * (int(prompt[g].max()) + int(response[g].max())) <= 24
    assert sorted(torch.cat(groups).tolist()) == list(range(6))
    assert [g.tolist() for g in token_budget_chunks(prompt, response, budget=1000)] == [[4, 0, 3, 1, 2, 5]]


def test_every_rank_makes_as_many_micro_batches_as_the_busiest():
    plan = MiniBatchPlan(6, 1, 1, 0.0, tokens_per_micro_batch=1000,
                         row_tokens=(torch.full((6,), 2), torch.arange(1, 7)))
    assert len(plan.micro_batches(torch.arange(6))) == 1
    busier = Ranks(world=2, gather=lambda count: [count, 4])
    groups = plan.micro_batches(torch.arange(6), busier)
    assert len(groups) == 4 and sorted(torch.cat(groups).tolist()) == list(range(6))


def _rollout(seed: int = 0) -> Rollout:
    """8 rows (4 prompts x 2) of prompts 2..7 tokens (left-padded to 7) and responses 1..12 tokens (right-padded)."""
    generator = torch.Generator().manual_seed(seed)
    prompt_lengths = [2, 2, 7, 7, 3, 3, 5, 5]
    response_lengths = [12, 1, 3, 11, 2, 2, 9, 4]
    rows = len(prompt_lengths)
    prompts = torch.randint(4, 100, (rows, 7), generator=generator).tolist()
    responses = torch.randint(4, 100, (rows, 12), generator=generator).tolist()
    batch = prompt_batch([str(i) for i in range(4)], ["1", "1", None, None], prompts=[""] * 4)
    return rollout_from_tokens(batch, 2, [row[7 - p:] for row, p in zip(prompts, prompt_lengths)],
                               [row[:r] for row, r in zip(responses, response_lengths)])


def test_row_inputs_cut_the_padding_the_rows_share_and_change_no_statistic(tiny_policy_spec):
    rollout = _rollout()
    take = row_inputs(rollout, torch.device("cpu"))
    ids, attn, resp_ids, resp_mask = take(torch.tensor([4, 7]))  # prompts of 3 and 5 tokens, responses of 2 and 4
    assert ids.shape == (2, 5 + 4) and resp_ids.shape == resp_mask.shape == (2, 4)
    assert attn[0].tolist() == [0, 0, 1, 1, 1, 1, 1, 0, 0]
    policy = build_policy(tiny_policy_spec).eval()
    full_ids, full_attn, _ = sequence_inputs(rollout)
    with torch.no_grad():
        cut = policy_response_stats(policy, ids, attn, resp_ids, resp_mask)
        whole = policy_response_stats(policy, full_ids[[4, 7]], full_attn[[4, 7]], rollout.response_ids[[4, 7]],
                                      rollout.response_mask[[4, 7]])
    for key in ("logprobs", "entropy"):
        torch.testing.assert_close(full_width(cut[key], 12), whole[key], rtol=0, atol=1e-5)


@pytest.mark.parametrize("which,loss,agg", [("policy", "gspo", "seq-mean-token-mean"),
                                            ("policy", "ppo", "token-mean"),
                                            ("critic", "ppo", "seq-mean-token-mean")])
def test_a_token_budget_gives_the_gradient_of_fixed_micro_batches_in_float64(tiny_policy_spec, which, loss, agg):
    torch.manual_seed(0)
    rollout = _rollout(1)
    alg = AlgorithmConfig(advantage="grpo", policy_loss=loss, loss_agg_mode=agg, clip_low=0.2, clip_high=0.2,
                          cliprange_value=0.5)
    if which == "policy":
        base = build_policy(tiny_policy_spec).double()
    else:
        base = build_critic(CriticSpec(init_from_policy=True, seed=0, head_init_std=0.1), tiny_policy_spec).double()
    shape = rollout.response_mask.shape
    stats = ForwardStats(old_logprobs=torch.randn(shape, dtype=torch.float64) * 0.1 - 4.6, entropy=None,
                         values=torch.randn(shape, dtype=torch.float64) * 0.3)
    advantages = torch.randn(shape, dtype=torch.float64)
    mask = rollout.response_mask * (rollout.is_labeled.unsqueeze(-1) if which == "critic" else 1)
    widths = []

    def run(plan: MiniBatchPlan) -> torch.nn.Module:
        model = copy.deepcopy(base)
        take = row_inputs(rollout, torch.device("cpu"))

        def inputs(rows):
            out = take(rows)
            widths.append(out[0].shape)
            return out

        if which == "policy":
            micro = policy_micro_loss(model, inputs, rollout, stats, advantages, alg, 1.0,
                                      lambda *a: policy_loss_fn(loss).fn(*a, alg))
        else:
            micro = critic_micro_loss(model, inputs, rollout, stats, advantages,
                                      lambda v, old, ret, m: value_loss(v, old, ret, m, 0.5, agg_mode=agg))
        optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
        optimize(rollout.num_rows, plan, optimizer, None, micro, lambda v: v.backward(), lambda *a: None,
                 units=loss_units(mask, agg))
        return model

    fixed = run(MiniBatchPlan(8, 3, 1, 0.0))
    fixed_shapes, widths[:] = list(widths), []
    budget = run(MiniBatchPlan(8, 3, 1, 0.0, tokens_per_micro_batch=40, row_tokens=row_tokens(rollout)))
    # rows in order, 3 at a time: 3 x (7 + 12), 3 x (7 + 11), 2 x (5 + 9) = 139 tokens
    assert [tuple(s) for s in fixed_shapes] == [(3, 19), (3, 18), (2, 14)]
    # longest first (row totals 18, 14, 14, 10, 9, 5, 5, 3) while they fit in 40: rows 3, 0 = 2 x (7 + 12); rows
    # 6, 2 = 2 x (7 + 9); rows 7, 4, 5, 1 = 4 x (5 + 4): 106 tokens
    assert [tuple(s) for s in widths] == [(2, 19), (2, 16), (4, 9)]
    for (name, a), b in zip(fixed.named_parameters(), budget.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-9, msg=name)  # SGD with lr 1: the gradients agree
    assert any(not torch.equal(a, b) for a, b in zip(base.parameters(), budget.parameters()))


def test_the_config_key_reaches_the_plan_and_is_checked():
    rollout = _rollout()
    plan = MiniBatchPlan.of(TrainingConfig(mini_batch_size=2, micro_batch_tokens=64), rollout, 1.0)
    assert plan.tokens_per_micro_batch == 64 and plan.rows_per_mini_batch == 4
    assert plan.row_tokens[0].tolist() == [2, 2, 7, 7, 3, 3, 5, 5]
    assert plan.row_tokens[1].tolist() == [12, 1, 3, 11, 2, 2, 9, 4]
    assert MiniBatchPlan.of(TrainingConfig(), rollout, 1.0).tokens_per_micro_batch is None
    with pytest.raises(ValueError, match="micro_batch_tokens"):
        TrainingConfig(micro_batch_tokens=0)


def test_the_critic_update_runs_on_its_labeled_rows_only_with_the_same_step(tiny_policy_spec):
    rollout = _rollout(2)  # rows 0-3 labeled
    base = build_critic(CriticSpec(init_from_policy=True, seed=0, head_init_std=0.1), tiny_policy_spec).double()
    shape = rollout.response_mask.shape
    stats = ForwardStats(old_logprobs=None, entropy=None, values=torch.randn(shape, dtype=torch.float64) * 0.3)
    returns = torch.randn(shape, dtype=torch.float64)
    mask = rollout.response_mask * rollout.is_labeled.unsqueeze(-1)

    def run(rows_with_loss):
        model, seen = copy.deepcopy(base), []
        take = row_inputs(rollout, torch.device("cpu"))
        micro = critic_micro_loss(model, lambda rows: (seen.extend(rows.tolist()), take(rows))[1], rollout, stats,
                                  returns, lambda v, old, ret, m: value_loss(v, old, ret, m, 0.5))
        generator = torch.Generator().manual_seed(3)
        out = optimize(rollout.num_rows, MiniBatchPlan(4, 2, 2, 0.0), torch.optim.SGD(model.parameters(), lr=1.0),
                       None, micro, lambda v: v.backward(), lambda *a: None, labeled=rollout.is_labeled,
                       generator=generator, units=loss_units(mask, "seq-mean-token-mean"),
                       rows_with_loss=rows_with_loss)
        return model, seen, generator.get_state(), out

    every, every_seen, every_rng, every_out = run(None)
    labeled, labeled_seen, labeled_rng, labeled_out = run(rollout.is_labeled)
    assert sorted(every_seen) == sorted(list(range(8)) * 2)  # 2 epochs of every row
    assert sorted(labeled_seen) == sorted(list(range(4)) * 2)  # 2 epochs of the labeled rows alone
    assert torch.equal(every_rng, labeled_rng)
    assert every_out["skipped_mini_batches"] == labeled_out["skipped_mini_batches"] == 0
    for (name, a), b in zip(every.named_parameters(), labeled.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-9, msg=name)


def test_ranks_keep_as_many_rows_when_their_rows_with_loss_differ():
    """Another rank has 3 rows with a loss in its mini-batch, this one 1: it keeps 2 rows without a loss (they weigh
    0), so both ranks hold 3 rows and make 2 passes."""
    seen = []
    other_rank_has_3 = Ranks(world=2, gather=lambda count: [count, 3],
                             sum=lambda values: [values[0] + 3.0])

    def micro_loss(rows):
        seen.append(rows.tolist())
        return torch.zeros((), requires_grad=True), {}

    with_loss = torch.tensor([False, True, False, False])
    optimize(4, MiniBatchPlan(4, 2, 1, 0.0), torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0), None,
             micro_loss, lambda v: v.backward(), lambda *a: None, units=lambda rows: float(with_loss[rows].sum()),
             ranks=other_rank_has_3, rows_with_loss=with_loss)
    assert seen == [[0, 1], [2]]  # the row with a loss (1) and two without, 3 in all, in row order

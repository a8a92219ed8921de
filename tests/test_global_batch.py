"""The step across ranks computes what one process computes on the concatenated batch: whitening from all-reduced
sums (pure functions, two threads standing in for two ranks)."""

from __future__ import annotations

import threading

import pytest
import torch

from tempo_pl.algorithms.advantages import em_advantage, em_token_advantage, gae_advantage, masked_whiten
from tempo_pl.algorithms.losses import value_loss


class ThreadAllReduce:
    """A sum over ``world`` threads, each calling ``reduce(rank)(tensor)`` in the same order (as ranks do)."""

    def __init__(self, world: int) -> None:
        self.world = world
        self.barrier = threading.Barrier(world)
        self.slots: list = [None] * world

    def reduce(self, rank: int):
        def all_reduce(t: torch.Tensor) -> torch.Tensor:
            self.slots[rank] = t.clone()
            self.barrier.wait()
            total = sum(self.slots)
            self.barrier.wait()
            return total

        return all_reduce


def run_ranks(world: int, fn):
    """``fn(rank, all_reduce)`` on ``world`` threads; returns their results in rank order."""
    reducer, out = ThreadAllReduce(world), [None] * world

    def work(rank: int) -> None:
        out[rank] = fn(rank, reducer.reduce(rank))

    threads = [threading.Thread(target=work, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def batch(seed: int, rows: int = 6, length: int = 5):
    g = torch.Generator().manual_seed(seed)
    values = torch.randn(rows, length, generator=g, dtype=torch.float64)
    lengths = torch.randint(1, length + 1, (rows,), generator=g)
    mask = (torch.arange(length) < lengths.unsqueeze(-1)).double()
    outcomes = torch.randn(rows, generator=g, dtype=torch.float64)
    return outcomes, values, mask


@pytest.mark.parametrize("estimator", ["em_token", "gae"])
def test_two_ranks_whiten_as_one_process_on_the_concatenated_batch(estimator):
    parts = [batch(seed) for seed in (1, 2)]
    parts[1] = tuple(t[:4] for t in parts[1])  # ranks may hold different numbers of rows and tokens
    whole = [torch.cat([p[i] for p in parts]) for i in range(3)]

    def advantages(outcomes, values, mask, all_reduce=None):
        if estimator == "em_token":
            return em_token_advantage(outcomes, values, mask, all_reduce=all_reduce)[0]
        return gae_advantage(outcomes, values, mask, all_reduce=all_reduce)[0]

    expected = advantages(*whole)
    per_rank = run_ranks(2, lambda rank, reduce: advantages(*parts[rank], all_reduce=reduce))
    assert torch.allclose(torch.cat(per_rank), expected, atol=1e-12)
    # without the all-reduce each rank whitens alone, which is what the per-rank code did
    assert not torch.allclose(torch.cat([advantages(*p) for p in parts]), expected, atol=1e-3)


def test_whitening_by_hand_over_two_ranks():
    # rank 0 holds 1, 2; rank 1 holds 3, 5 (one padded entry): mean 2.75, unbiased var (3.0625+0.5625+0.0625+5.0625)/3
    x = [torch.tensor([[1.0, 2.0]]), torch.tensor([[3.0, 5.0, 99.0]])]
    masks = [torch.ones(1, 2), torch.tensor([[1.0, 1.0, 0.0]])]
    out = run_ranks(2, lambda rank, reduce: masked_whiten(x[rank], masks[rank], all_reduce=reduce))
    std = (8.75 / 3 + 1e-8) ** 0.5
    assert out[0].tolist()[0] == pytest.approx([(1 - 2.75) / std, (2 - 2.75) / std])
    assert out[1].tolist()[0][:2] == pytest.approx([(3 - 2.75) / std, (5 - 2.75) / std])


def test_em_gives_a_group_of_one_row_advantage_zero():
    values = torch.zeros(3, 2)
    mask = torch.ones(3, 2)
    adv, _ = em_advantage(torch.tensor([1.0, -1.0, 0.7]), values, mask, group_ids=torch.tensor([0, 0, 1]),
                          is_labeled=torch.tensor([True, True, False]))
    assert adv[2].tolist() == [0.0, 0.0]  # one response for that prompt: its own baseline
    assert adv[0, 0] == pytest.approx(1 / (2**0.5 + 1e-6)) and adv[1, 0] == pytest.approx(-1 / (2**0.5 + 1e-6))


def test_sequence_value_clipfrac_is_token_weighted():
    # row 0 (3 tokens) moves by 0.5 > 0.1 and is clipped; row 1 (1 token) moves by 0.05 and is not: 3 of 4 tokens
    old = torch.zeros(2, 3)
    values = torch.tensor([[0.5, 0.5, 0.5], [0.05, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    _, metrics = value_loss(values, old, torch.ones(2, 3), mask, cliprange=0.1, clip_mode="sequence")
    assert metrics["vf_clipfrac"].item() == pytest.approx(0.75)

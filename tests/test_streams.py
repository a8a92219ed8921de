"""PromptStream (seeded, rank-aware, resumable sampler) and EMStreams (source switching, mixed batches)."""

import pytest
import torch

from tempo_pl.data.streams import EMStreams, PromptRow, PromptStream, rows_to_batch
from tempo_pl.types import PromptBatch


def make_rows(n, prefix="u", labeled=False):
    return [PromptRow(f"{prefix}:{i}", f"question {i}", f"{i}" if labeled else None, labeled) for i in range(n)]


def draw_ids(stream, batches, count=None):
    return [[row.id for row in stream.next_rows(count)] for _ in range(batches)]


def expected_order(n, seed, epoch, rank=0, world_size=1):
    """The documented contract: randperm seeded with seed + epoch, tail dropped, every world_size-th index."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch))
    usable = (n // world_size) * world_size
    return perm[:usable][rank::world_size].tolist()


def test_stream_is_deterministic_and_follows_the_seeded_permutation():
    rows = make_rows(12)
    a, b = PromptStream(rows, 4, seed=7), PromptStream(rows, 4, seed=7)
    assert draw_ids(a, 6) == draw_ids(b, 6)

    order = expected_order(12, seed=7, epoch=0)
    fresh = PromptStream(rows, 4, seed=7)
    assert draw_ids(fresh, 3) == [[f"u:{i}" for i in order[k : k + 4]] for k in (0, 4, 8)]

    other_seed = PromptStream(rows, 4, seed=8)
    assert draw_ids(other_seed, 3) != draw_ids(PromptStream(rows, 4, seed=7), 3)


def test_next_returns_a_prompt_batch_and_iter_is_the_stream_itself():
    stream = PromptStream(make_rows(8, "l", labeled=True), 2, seed=1)
    assert iter(stream) is stream
    batch = next(stream)
    assert isinstance(batch, PromptBatch) and len(batch) == 2
    assert batch.answers == [i.split(":")[1] for i in batch.ids]  # row "l:i" carries answer "i"
    assert batch.is_labeled == [True, True]


def test_two_ranks_draw_disjoint_prompts_of_equal_count():
    # 11 rows on 2 ranks: the permutation's last index is dropped, each rank gets 11 // 2 = 5 rows per epoch;
    # with batches of 2, each rank draws 2 batches (4 rows) and drops its 5th row (drop_last).
    rows = make_rows(11)
    r0, r1 = (PromptStream(rows, 2, seed=3, rank=r, world_size=2) for r in (0, 1))
    assert r0.rows_per_epoch == r1.rows_per_epoch == 5
    seen0 = [i for batch in draw_ids(r0, 2) for i in batch]
    seen1 = [i for batch in draw_ids(r1, 2) for i in batch]
    assert len(seen0) == len(seen1) == 4
    assert not set(seen0) & set(seen1)

    perm = expected_order(11, seed=3, epoch=0)
    assert seen0 == [f"u:{i}" for i in perm[0:10:2][:4]]  # every other index from 0
    assert seen1 == [f"u:{i}" for i in perm[1:10:2][:4]]  # every other index from 1
    # Both ranks roll into epoch 1 on the next draw, in lock step.
    r0.next_rows(), r1.next_rows()
    assert (r0.epoch, r0.offset) == (r1.epoch, r1.offset) == (1, 2)


def test_drop_last_and_epoch_rollover():
    # 10 rows, batches of 4: epoch 0 serves 2 batches (8 rows) and drops 2; the 3rd batch opens epoch 1.
    stream = PromptStream(make_rows(10), 4, seed=5)
    epoch0 = draw_ids(stream, 2)
    assert stream.state_dict() == {"epoch": 0, "offset": 8, "seed": 5, "num_rows": 10, "world_size": 1}
    third = draw_ids(stream, 1)[0]
    assert stream.state_dict()["epoch"] == 1 and stream.state_dict()["offset"] == 4
    assert [i for b in epoch0 for i in b] == [f"u:{i}" for i in expected_order(10, 5, 0)[:8]]
    assert third == [f"u:{i}" for i in expected_order(10, 5, 1)[:4]]


def test_every_epoch_visits_each_row_once_in_a_new_order():
    stream = PromptStream(make_rows(8), 4, seed=1)
    epochs = [[i for b in draw_ids(stream, 2) for i in b] for _ in range(3)]
    for ids in epochs:
        assert sorted(ids) == sorted(f"u:{i}" for i in range(8))
    assert len({tuple(ids) for ids in epochs}) == 3


def test_state_round_trip_mid_epoch_resumes_exactly():
    rows = make_rows(10)
    uninterrupted = PromptStream(rows, 3, seed=2)
    draw_ids(uninterrupted, 2)  # 6 of 9 usable rows of epoch 0
    state = uninterrupted.state_dict()
    assert state == {"epoch": 0, "offset": 6, "seed": 2, "num_rows": 10, "world_size": 1}

    resumed = PromptStream(rows, 3, seed=2)
    resumed.load_state_dict(dict(state))
    # The next 5 batches cross into epochs 1 and 2 (3 batches of 3 per epoch).
    assert draw_ids(resumed, 5) == draw_ids(uninterrupted, 5)
    assert resumed.state_dict() == uninterrupted.state_dict() == {
        "epoch": 2, "offset": 3, "seed": 2, "num_rows": 10, "world_size": 1
    }


@pytest.mark.parametrize(
    "change, message",
    [({"num_rows": 11}, "11 rows"), ({"seed": 3}, "seed 3"), ({"world_size": 2}, "2 rank"),
     ({"offset": 99}, "invalid")],
)
def test_load_state_refuses_another_dataset_seed_or_world_size(change, message):
    stream = PromptStream(make_rows(10), 3, seed=2, name="unlabeled")
    state = {**stream.state_dict(), **change}
    with pytest.raises(ValueError, match=message) as error:
        stream.load_state_dict(state)
    assert "'unlabeled'" in str(error.value)


def test_empty_or_too_small_dataset_raises_when_drawn_from():
    empty = PromptStream([], 2, name="labeled")  # constructing is fine: frozen runs never draw D_L
    with pytest.raises(ValueError, match="'labeled' has no rows"):
        next(empty)
    small = PromptStream(make_rows(3), 2, world_size=2, name="unlabeled")  # 3 // 2 = 1 row per rank < 2
    with pytest.raises(ValueError, match="needs at least 4 rows, the dataset has 3"):
        next(small)


@pytest.mark.parametrize("kwargs", [{"batch_size": 0}, {"world_size": 0}, {"rank": 2, "world_size": 2}, {"seed": 1.5}])
def test_stream_arguments_are_checked(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs)) if "rank" not in kwargs else "rank"):
        PromptStream(make_rows(4), **{"batch_size": 2, **kwargs})


def make_streams(n_labeled=8, n_unlabeled=12, batch_size=4, fraction=0.5):
    return EMStreams(
        PromptStream(make_rows(n_labeled, "l", labeled=True), batch_size, seed=1, name="labeled"),
        PromptStream(make_rows(n_unlabeled, "u"), batch_size, seed=1, name="unlabeled"),
        mixed_labeled_fraction=fraction,
    )


def test_only_the_selected_stream_advances():
    streams = make_streams()
    streams.source = "labeled"
    for _ in range(3):
        batch = next(streams)
        assert all(batch.is_labeled) and all(i.startswith("l:") for i in batch.ids)
    assert streams.unlabeled.state_dict()["offset"] == 0 and streams.unlabeled.epoch == 0
    # 3 labeled batches of 4 from 8 rows: epoch 0 gives 2, the 3rd opens epoch 1.
    assert (streams.labeled.epoch, streams.labeled.offset) == (1, 4)

    streams.source = "unlabeled"
    first_unlabeled = next(streams)
    assert first_unlabeled.ids == [row.id for row in PromptStream(make_rows(12, "u"), 4, seed=1).next_rows()]
    assert first_unlabeled.answers == [None] * 4 and first_unlabeled.is_labeled == [False] * 4
    assert (streams.labeled.epoch, streams.labeled.offset) == (1, 4)


def test_mixed_batch_puts_labeled_rows_first_and_advances_both():
    streams = make_streams(batch_size=8, n_labeled=8, n_unlabeled=12, fraction=0.25)
    streams.source = "mixed"
    batch = next(streams)
    # round(8 * 0.25) = 2 labeled rows, then 8 - 2 = 6 unlabeled rows.
    assert batch.is_labeled == [True] * 2 + [False] * 6
    assert all(a is not None for a in batch.answers[:2]) and batch.answers[2:] == [None] * 6
    assert streams.labeled.offset == 2 and streams.unlabeled.offset == 6


def test_mixed_fraction_zero_never_touches_an_empty_labeled_stream():
    streams = make_streams(n_labeled=0, fraction=0.0)
    streams.source = "mixed"
    assert next(streams).is_labeled == [False] * 4
    assert streams.mixed_labeled_count == 0


def test_iter_does_not_reset_positions_and_there_is_no_len():
    streams = make_streams()
    next(streams), next(streams)
    assert iter(streams) is streams
    assert streams.unlabeled.offset == 8
    with pytest.raises(TypeError):
        len(streams)


def test_em_streams_state_round_trip():
    streams = make_streams()
    streams.source = "mixed"
    next(streams)
    streams.source = "labeled"
    next(streams)
    state = streams.state_dict()
    assert state["labeled"]["offset"] == 6 and state["unlabeled"]["offset"] == 2 and state["source"] == "labeled"
    resumed = make_streams()
    resumed.load_state_dict(state)
    for source in ("unlabeled", "mixed", "labeled", "unlabeled"):
        streams.source = resumed.source = source
        assert next(resumed).ids == next(streams).ids


def test_em_streams_checks_source_fraction_and_batch_sizes():
    streams = make_streams()
    with pytest.raises(ValueError, match="source must be one of"):
        streams.source = "test"
    with pytest.raises(ValueError, match=r"mixed_labeled_fraction must be in \[0, 1\]"):
        make_streams(fraction=1.5)
    with pytest.raises(ValueError, match="share a batch_size"):
        EMStreams(PromptStream(make_rows(4), 2), PromptStream(make_rows(4), 3))


def test_rows_to_batch_keeps_order_and_fields():
    rows = [PromptRow("a:1", "p1", "3", True), PromptRow("b:2", "p2", None, False)]
    batch = rows_to_batch(rows)
    assert (batch.ids, batch.prompts, batch.answers, batch.is_labeled) == (
        ["a:1", "b:2"], ["p1", "p2"], ["3", None], [True, False]
    )

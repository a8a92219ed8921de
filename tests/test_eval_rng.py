"""An evaluation leaves the training's random stream as it found it: the eval DataLoaders draw their base seed from
their own generator, not from the global torch RNG, so the rollout after a mid-run evaluation is the one a run
without it samples."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests._tiny_run import fit, rollout_records, tiny_config
from tempo_pl.data.datamodule import TempoDataModule
from tempo_pl.data.sources import DatasetSpec


def _datamodule() -> TempoDataModule:
    dm = TempoDataModule(
        labeled=DatasetSpec("synthetic:labeled?size=8"),
        eval_sets=[DatasetSpec("synthetic:heldout?size=4", name="heldout"),
                   DatasetSpec("synthetic:unlabeled?size=4", name="unlabeled")],
        batch_size=4, eval_batch_size=2,
    )
    dm.setup("fit")
    return dm


def test_iterating_the_eval_loaders_leaves_the_global_rng_unchanged() -> None:
    dm = _datamodule()
    torch.manual_seed(123)
    expected = torch.rand(4)
    torch.manual_seed(123)
    batches = [batch for loader in dm.val_dataloader() for batch in loader]
    assert len(batches) == 4  # two sets of 4 rows in batches of 2: the loaders did run
    assert torch.equal(torch.rand(4), expected)


def test_eval_loaders_yield_the_same_batches_every_time() -> None:
    dm = _datamodule()
    first = [b for loader in dm.val_dataloader() for b in loader]
    second = [b for loader in dm.val_dataloader() for b in loader]
    assert [b.ids for b in first] == [b.ids for b in second]


@pytest.mark.slow
def test_a_mid_run_evaluation_leaves_the_next_rollout_unchanged(tmp_path: Path) -> None:
    def with_eval_after_step_1(cfg: dict) -> None:
        cfg["trainer"].update(num_sanity_val_steps=0, limit_val_batches=1, val_check_interval=1)

    def without_eval(cfg: dict) -> None:
        cfg["trainer"].update(num_sanity_val_steps=0, limit_val_batches=0)

    runs = {}
    for name, edit in (("eval", with_eval_after_step_1), ("plain", without_eval)):
        folder = tmp_path / name
        folder.mkdir()
        fit(tiny_config(folder, edit, steps=2, validate=True), folder)
        runs[name] = rollout_records(folder / "rollouts")
    evaluated = list((tmp_path / "eval" / "runs").rglob("events.out.tfevents*"))
    assert evaluated, "the evaluated run wrote no logs"
    steps = lambda records: sorted({r["rl_step"] for r in records})  # noqa: E731
    assert steps(runs["eval"]) == steps(runs["plain"]) == [0, 1]
    # step 1's rollout comes after the evaluation that followed step 0 in the first run only (timings aside)
    sampled = lambda records: [{k: v for k, v in r.items() if k != "metrics"} for r in records]  # noqa: E731
    assert sampled(runs["eval"]) == sampled(runs["plain"])

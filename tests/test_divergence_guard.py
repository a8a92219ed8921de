"""A run whose updates keep failing (non-finite loss or gradient, or a gradient norm over
``training.max_grad_norm_abort``) stops after ``training.nonfinite_patience`` RL steps in a row, naming the step and
the quantity; each failed step is warned on the console."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest

from _tiny_run import tiny_config, write_config
from tempo_pl.callbacks import DivergenceGuard, TrainingDiverged
from tempo_pl.callbacks.divergence_guard import update_problems
from tempo_pl.config import TrainingConfig

FINE = {"train/policy/loss": 0.5, "train/policy/grad_norm": 2.0, "train/policy/nonfinite_grad_skips": 0.0}
NAN_GRAD = {"train/policy/loss": 0.5, "train/policy/grad_norm": math.nan, "train/policy/nonfinite_grad_skips": 2.0}
INF_LOSS = {"train/critic/loss": math.inf, "train/critic/grad_norm": 1.0, "train/critic/nonfinite_grad_skips": 0.0}


def test_update_problems_name_the_update_and_the_quantity() -> None:
    assert update_problems(FINE, None) == {"policy": None}
    assert update_problems(NAN_GRAD, None) == {
        "policy": "the policy's gradient norm was not finite (nan; 2 optimizer step(s) skipped)"}
    assert update_problems(INF_LOSS, None) == {"critic": "the critic's loss was not finite (inf)"}
    assert update_problems(FINE, 1.5) == {
        "policy": "the policy's gradient norm 2 exceeded training.max_grad_norm_abort (1.5)"}
    assert update_problems(FINE, 2.5) == {"policy": None}
    assert update_problems({"train/score/labeled_mean": 1.0}, 1.0) == {}


def _step(guard: DivergenceGuard, rl_step: int, metrics: dict) -> None:
    module = SimpleNamespace(last_step=SimpleNamespace(rl_step=rl_step, metrics=metrics))
    guard.on_train_batch_end(SimpleNamespace(world_size=1), module, None, None, rl_step)


def test_the_run_stops_after_patience_failed_updates_in_a_row() -> None:
    guard = DivergenceGuard(patience=2)
    with pytest.warns(UserWarning, match="RL step 0: the policy's gradient norm was not finite"):
        _step(guard, 0, NAN_GRAD)
    _step(guard, 1, FINE)  # a good policy update resets its count
    assert guard.failed_in_a_row == {"policy": 0}
    with pytest.warns(UserWarning, match="1 of training.nonfinite_patience: 2 policy updates in a row"):
        _step(guard, 2, NAN_GRAD)
    _step(guard, 2, NAN_GRAD)  # the same step seen again (a second batch-end hook) is not counted twice
    with pytest.warns(UserWarning, match="RL step 3: the critic's loss was not finite"):
        _step(guard, 3, INF_LOSS)  # a step without a policy update keeps the policy's count
    with pytest.raises(TrainingDiverged, match=r"training diverged at RL step 4: the policy's gradient norm was not "
                                               r"finite .* in 2 policy update\(s\) in a row") as err:
        _step(guard, 4, NAN_GRAD)
    assert err.value.rl_step == 4
    assert guard.state_dict() == {"failed_in_a_row": {"policy": 2, "critic": 1}}


def test_options_are_checked() -> None:
    with pytest.raises(ValueError, match="training.nonfinite_patience must be >= 1"):
        TrainingConfig(nonfinite_patience=0)
    with pytest.raises(ValueError, match="training.max_grad_norm_abort must be > 0"):
        TrainingConfig(max_grad_norm_abort=0.0)


def test_a_huge_learning_rate_stops_the_run_with_a_named_message(tmp_path: Path, capsys) -> None:
    from tempo_pl.cli import main

    def edit(cfg):
        cfg["model"]["init_args"]["policy_optimizer"]["init_args"]["lr"] = 1e10
        cfg["model"]["init_args"].setdefault("training", {})["nonfinite_patience"] = 2

    config = write_config(tiny_config(tmp_path, edit, steps=8), tmp_path / "cfg.yaml")
    with pytest.warns(UserWarning, match="RL step 1: .*1 of training.nonfinite_patience: 2 policy updates in a row"):
        with pytest.raises(SystemExit) as exit_info:  # the first failure is warned, the second ends the run
            main(["fit", "--config", str(config)])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert last.startswith("[tempo-pl] error: training diverged at RL step "), err[-3000:]
    assert "the policy's" in last and "not finite" in last and "training.nonfinite_patience: 2" in last

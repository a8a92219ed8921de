"""TempoProgressBar: the RL step's stage, phase and clock beside the bar, the evaluation in progress, tokens generated;
installed by `tempo-pl fit` when the bar is on and the config names none."""

from __future__ import annotations

import logging
import re

import pytest
from lightning.pytorch.profilers import SimpleProfiler

from _tiny_run import build, tiny_config
from tempo_pl.callbacks import TempoProgressBar
from tempo_pl.callbacks.progress_bar import StageProfiler, StageState


def test_the_stage_text_follows_the_step_and_the_evaluation():
    state = StageState()
    assert state.text() == ""
    state.step(3, "E")
    assert state.text() == "RL step 3 E"
    state.stage_start("generation")
    assert re.fullmatch(r"RL step 3 E · generation 0:0\d", state.text())
    state.stage_stop("generation")
    state.step_done(tokens=2048, generation_s=4.0)
    assert (state.tokens, state.tokens_per_s) == (2048, 512.0)
    state.evaluation("heldout", 32)
    assert re.fullmatch(r"evaluating heldout \(32 questions\) 0:0\d", state.text())
    state.evaluation_done()
    assert state.text() == "RL step 3 E"


def test_the_profiler_is_passed_through_and_reports_the_stages():
    inner, state = SimpleProfiler(), StageState()
    profiler = StageProfiler(inner, state)
    state.step(0, "M")
    with profiler.profile("tempo/update"):
        assert state.stage == "update"
    with profiler.profile("[Callback]x.on_train_batch_end"):
        assert state.stage is None
    assert set(inner.recorded_durations) == {"tempo/update", "[Callback]x.on_train_batch_end"}
    assert profiler.describe == inner.describe and profiler.recorded_durations is inner.recorded_durations


def test_refresh_rate_is_validated():
    with pytest.raises(ValueError, match="refresh_rate must be an integer >= 0"):
        TempoProgressBar(refresh_rate=-1)


@pytest.mark.slow
def test_fit_shows_every_stage_of_every_step_and_the_evaluation(tmp_path, caplog):
    def edit(cfg):
        cfg["trainer"]["enable_progress_bar"] = True

    cli = build(tiny_config(tmp_path, edit, steps=2, validate=True), tmp_path)
    bar = cli.trainer.progress_bar_callback
    assert isinstance(bar, TempoProgressBar)  # added by the CLI: the config names no progress bar
    profiler = cli.trainer.profiler
    with caplog.at_level(logging.DEBUG, logger="tempo_pl.callbacks.progress_bar"):
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    lines = [r.getMessage() for r in caplog.records if r.name == "tempo_pl.callbacks.progress_bar"]
    for step, phase in ((0, "E"), (1, "M")):
        for stage in ("generation", "scoring", "update"):
            assert f"RL step {step} ({phase}): {stage}" in lines
        assert any(line.startswith(f"RL step {step} ({phase}) done: ") and "tokens generated" in line for line in lines)
    assert "evaluation: heldout, 4 questions" in lines
    generated = int(sum(float(r.rollout.response_mask.sum()) for r in [cli.model.last_step]))
    assert bar.state.tokens >= generated > 0
    assert bar.get_metrics(cli.trainer, cli.model)["tokens"] == f"{bar.state.tokens:,}"
    assert cli.trainer.profiler is profiler  # the trainer's profiler is given back


def test_the_cli_adds_the_bar_only_when_the_config_has_none(tmp_path):
    off = build(tiny_config(tmp_path, steps=1), tmp_path, name="off.yaml")  # enable_progress_bar: false
    assert off.trainer.progress_bar_callback is None

    def own(cfg):
        cfg["trainer"]["enable_progress_bar"] = True
        cfg["trainer"]["callbacks"].append({"class_path": "lightning.pytorch.callbacks.TQDMProgressBar"})

    mine = build(tiny_config(tmp_path, own, steps=1), tmp_path, name="own.yaml")
    assert type(mine.trainer.progress_bar_callback).__name__ == "TQDMProgressBar"

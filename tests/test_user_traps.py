"""What a new user trips over: an eval set capped by trainer.limit_val_batches without a word, dataset options
documented nowhere but --print_config, and a failed first command that leaves a run folder behind."""

from __future__ import annotations

import dataclasses
import inspect
import re
from pathlib import Path

import pytest
from lightning.pytorch import Trainer

from _tiny_run import ROOT, tiny_config, write_config
from tempo_pl.cli import main
from tempo_pl.data import TempoDataModule
from tempo_pl.data.datamodule import warn_capped_eval_sets
from tempo_pl.data.sources import DatasetSpec
from tempo_pl.run.run_folder import COMMAND_NAME, removed_on_early_failure


def capped_module(limit, eval_size: int = 10) -> TempoDataModule:
    dm = TempoDataModule(eval_sets=[DatasetSpec(f"synthetic:heldout?size={eval_size}", name="heldout"),
                                    DatasetSpec("synthetic:heldout?size=3&seed=5", name="small")], eval_batch_size=4)
    dm.trainer = Trainer(limit_val_batches=limit, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    dm.setup("validate")
    return dm


def test_limit_val_batches_that_cuts_an_eval_set_warns_naming_the_cap_and_the_questions_left_out():
    with pytest.warns(UserWarning, match=re.escape(
            "trainer.limit_val_batches = 1 caps every evaluation set at 1 batch(es) of 4 prompts: heldout 4 of 10 "
            "questions; val/* metrics cover those questions only")):
        capped_module(1).val_dataloader()
    with pytest.warns(UserWarning, match="limit_val_batches = 0.5 caps .*: heldout 4 of 10 questions"):
        capped_module(0.5).val_dataloader()  # 3 batches -> int(1.5) = 1


@pytest.mark.parametrize("limit, size", [(1.0, 10), (0, 10), (3, 10), (1, 4), (None, 10)])
def test_no_warning_when_nothing_is_cut(limit, size, recwarn):
    if limit is None:
        assert not warn_capped_eval_sets(None, ["heldout"], [size], 4)
    else:
        capped_module(limit, size).val_dataloader()
    assert not [w for w in recwarn if "limit_val_batches" in str(w.message)]


def test_every_dataset_option_is_documented_in_docs_data_md():
    text = (ROOT / "docs" / "data.md").read_text()
    options = [f.name for f in dataclasses.fields(DatasetSpec)]
    options += [name for name in inspect.signature(TempoDataModule.__init__).parameters if name != "self"]
    missing = [name for name in options if f"`{name}`" not in text]
    assert not missing, f"docs/data.md does not document {missing}"
    assert "TEMPO_PL_DATA_DIR" in text and "limit_val_batches" in text
    readme = (ROOT / "README.md").read_text()
    assert "docs/data.md" in readme


def failing_config(tmp_path: Path, validate: bool = False) -> Path:
    def edit(cfg):
        cfg["data"]["init_args"]["eval_sets"] = [{"path": str(tmp_path / "missing.jsonl")}]
    return write_config(tiny_config(tmp_path, edit, validate=validate), tmp_path / "config.yaml")


@pytest.mark.parametrize("command", ["fit", "validate"])
def test_a_command_that_fails_before_its_first_step_leaves_no_folder(tmp_path, command, capsys):
    config = failing_config(tmp_path, validate=command == "validate")
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        main([command, "--config", str(config)])
    assert not (tmp_path / "runs").exists()  # runs/tiny/version_0 and the folders above it that it created
    assert "the run failed before its first RL step: removed" in capsys.readouterr().err


def test_a_failure_after_the_first_step_or_in_an_existing_folder_keeps_it(tmp_path):
    def fail(created, log_dir, before_first_step):
        with pytest.raises(RuntimeError):
            with removed_on_early_failure(created, log_dir, before_first_step):
                log_dir.mkdir(parents=True, exist_ok=True)
                (log_dir / "events").write_text("x")
                raise RuntimeError("boom")

    run = tmp_path / "a" / "version_0"
    fail(tmp_path / "a", run, lambda: False)  # past the first RL step
    assert run.is_dir()
    fail(None, run, lambda: True)  # the folder was there before (a resumed run)
    assert run.is_dir()
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "last.ckpt").write_text("x")
    fail(tmp_path / "a", run, lambda: True)  # a checkpoint was written
    assert run.is_dir()
    fail(tmp_path / "b", tmp_path / "b" / "tiny" / "version_0", lambda: True)
    assert not (tmp_path / "b").exists()
    (tmp_path / "c" / "tiny" / "version_1").mkdir(parents=True)  # another run started there meanwhile
    fail(tmp_path / "c", tmp_path / "c" / "tiny" / "version_0", lambda: True)
    assert sorted(p.name for p in (tmp_path / "c" / "tiny").iterdir()) == ["version_1"]


def test_the_command_that_made_a_run_folder_is_recorded(tmp_path):
    from tempo_pl.run.run_folder import claim, run_command

    claim(tmp_path / "v0", resuming=False, command="validate")
    assert (tmp_path / "v0" / COMMAND_NAME).read_text() == "validate\n" and run_command(tmp_path / "v0") == "validate"
    assert run_command(tmp_path / "nothing") is None

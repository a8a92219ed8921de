"""The CLI around runs: every subcommand in --help, the run folder --ckpt_path last resumes, the refusal to write into
a folder that holds a run or that a live run holds, folders checked writable before any step, checkpoints counted
and named in RL steps, and the table `tempo-pl validate` prints."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from _tiny_run import build, tiny_config, write_config
from tempo_pl.cli import LIGHTNING_SUBCOMMANDS, PIPELINES, main
from tempo_pl.run.run_folder import LOCK_NAME, claim, pin_version_for_resume, release

# ------------------------------------------------------------------------------------------------ --help


def test_help_lists_every_subcommand_with_a_description(capsys):
    main(["--help"])
    out = capsys.readouterr().out
    for name, text in {**LIGHTNING_SUBCOMMANDS, **{k: v[1] for k, v in PIPELINES.items()}}.items():
        assert f"  {name} " in out and text in out
    main([])
    assert capsys.readouterr().out == out


@pytest.mark.parametrize("subcommand", ["fit", "validate", "export", "demo", "compare", "plot"])
def test_every_subcommand_has_its_own_help(subcommand, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([subcommand, "--help"])
    assert exit_info.value.code == 0
    usage = capsys.readouterr().out.splitlines()[0]
    assert usage.startswith("usage: tempo-pl") and subcommand in usage


# ------------------------------------------------------------------------------------------------ run folders


def _logger(save_dir: Path, version=None) -> dict:
    return {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
            "init_args": {"save_dir": str(save_dir), "name": "tiny", "version": version}}


def test_ckpt_path_last_pins_the_newest_run_folder(tmp_path):
    assert pin_version_for_resume(_logger(tmp_path), None) is None  # nothing to resume: a new run starts
    for n in (0, 3, 10):
        (tmp_path / "tiny" / f"version_{n}").mkdir(parents=True)
    (tmp_path / "tiny" / "version_x").mkdir()
    logger = _logger(tmp_path)
    assert pin_version_for_resume(logger, None) == tmp_path / "tiny" / "version_10"
    assert logger["init_args"]["version"] == 10
    explicit = _logger(tmp_path, version="mine")
    assert pin_version_for_resume(explicit, None) is None and explicit["init_args"]["version"] == "mine"
    csv = {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": str(tmp_path), "name": "tiny"}}
    assert pin_version_for_resume([csv], None) == tmp_path / "tiny" / "version_10"
    assert pin_version_for_resume({"class_path": "my.Logger", "init_args": {"version": None}}, None) is None


def test_a_folder_holding_a_run_is_refused_unless_resumed(tmp_path):
    run = tmp_path / "runs" / "demo" / "tempo"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("x: 1\n")
    with pytest.raises(FileExistsError) as info:
        claim(run, resuming=False, command="fit")
    message = str(info.value)
    assert str(run) in message and "config.yaml" in message
    assert "--trainer.logger.init_args.version=NAME" in message and "--ckpt_path last" in message
    with pytest.raises(FileExistsError, match="remove the folder$"):
        claim(run, resuming=False, command="validate")
    lock = claim(run, resuming=True, command="fit")
    assert json.loads(lock.read_text())["pid"] == os.getpid()
    release(lock)
    assert not lock.exists()
    claim(tmp_path / "fresh", resuming=False, command="fit")  # an empty or new folder is fine


def test_a_folder_a_live_run_holds_is_refused(tmp_path):
    import socket

    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock = tmp_path / LOCK_NAME
        lock.write_text(json.dumps({"pid": sleeper.pid, "host": socket.gethostname(), "started": "now"}))
        with pytest.raises(RuntimeError, match=f"in use by a live run \\(pid {sleeper.pid}"):
            claim(tmp_path, resuming=True, command="fit")
    finally:
        sleeper.kill()
        sleeper.wait()
    claim(tmp_path, resuming=True, command="fit")  # the holder is gone: its lock is stale
    assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()


@pytest.mark.slow
def test_a_second_run_with_the_same_explicit_version_is_refused_and_writes_nothing(tmp_path):
    def edit(cfg):
        cfg["trainer"]["logger"]["init_args"]["version"] = "exp"

    path = write_config(tiny_config(tmp_path, edit, steps=1), tmp_path / "cfg.yaml")
    main(["fit", "--config", str(path)])
    run = tmp_path / "runs" / "tiny" / "exp"
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*")}
    with pytest.raises(FileExistsError, match=f"{run}.*already holds a run"):
        main(["fit", "--config", str(path)])
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*")} == before
    main(["fit", "--config", str(path), "--ckpt_path", "last"])  # resuming it is allowed (a finished run: no step)


@pytest.mark.slow
@pytest.mark.parametrize("callback", ["RLStepCheckpoint", "RolloutSampleLogger"])
def test_an_unwritable_folder_fails_before_any_step(tmp_path, callback):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")

    def edit(cfg):
        for entry in cfg["trainer"]["callbacks"]:
            if entry["class_path"].endswith(callback):
                entry.setdefault("init_args", {})["dirpath"] = str(blocker / "sub")

    cli = build(tiny_config(tmp_path, edit, steps=2, validate=True), tmp_path)
    with pytest.raises(PermissionError, match=f"{blocker / 'sub'}.*not writable.*set dirpath"):
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert cli.model.rl_step == 0 and not list(tmp_path.rglob("*.jsonl"))  # no evaluation, no step


@pytest.mark.slow
def test_checkpoints_are_counted_and_named_in_rl_steps(tmp_path):
    """4 RL steps, evaluation every 2, numbered checkpoints every 2: step000002 and step000004 hold 2 and 4 steps
    (after their evaluation), whatever trainer.global_step counted (several optimizer steps per RL step)."""

    def edit(cfg):
        cfg["trainer"]["val_check_interval"] = 2
        for entry in cfg["trainer"]["callbacks"]:
            if entry["class_path"].endswith("RLStepCheckpoint"):
                entry["init_args"] = {"every_n_rl_steps": 2, "save_top_k": -1}

    cli = build(tiny_config(tmp_path, edit, steps=4, validate=True), tmp_path)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    folder = Path(cli.trainer.log_dir) / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == ["last.ckpt", "step000002.ckpt", "step000004.ckpt"]
    for name, steps in (("step000002.ckpt", 2), ("step000004.ckpt", 4), ("last.ckpt", 4)):
        saved = torch.load(folder / name, map_location="cpu", weights_only=False)
        assert saved["tempo"]["rl_step"] == steps
        schedule = next(v for k, v in saved["callbacks"].items() if k.startswith("EMSchedule"))
        assert sum(schedule["phase_counts"].values()) == steps
        (state,) = [v for k, v in saved["callbacks"].items() if k.startswith("RLStepCheckpoint")]
        assert state["last_eval"]["rl_step"] == steps  # written after the evaluation of that point
        assert saved["global_step"] > steps  # Lightning's counter counts optimizer steps
    eval_files = sorted(p.name for p in (Path(cli.trainer.log_dir) / "eval").iterdir())
    assert eval_files == ["heldout_step000000.jsonl", "heldout_step000002.jsonl", "heldout_step000004.jsonl"]


def test_checkpoint_options_are_validated():
    from tempo_pl.callbacks import RLStepCheckpoint

    with pytest.raises(ValueError, match="every_n_rl_steps must be an integer >= 1"):
        RLStepCheckpoint(every_n_rl_steps=0)
    with pytest.raises(ValueError, match="save_on_signal writes last.ckpt"):
        RLStepCheckpoint(save_last=False, save_top_k=-1)
    with pytest.raises(ValueError, match="saves nothing"):
        RLStepCheckpoint(save_last=False, save_top_k=0, save_on_signal=False)
    with pytest.raises(ValueError, match="must hold \\{rl_step\\}"):
        RLStepCheckpoint(filename="epoch{epoch}")


@pytest.mark.slow
def test_validate_prints_a_table_of_its_metrics(tmp_path, capsys):
    path = write_config(tiny_config(tmp_path, validate=True), tmp_path / "cfg.yaml")
    main(["validate", "--config", str(path)])
    out = capsys.readouterr().out
    assert "evaluation" in out and "heldout" in out
    for metric in ("mean@2", "pass@1", "pass@2", "maj@2", "distinct_answers"):
        assert metric in out

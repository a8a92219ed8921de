"""Checkpoints run no code when read (export, fit and validate refuse a crafted pickle), a failed or killed save
leaves the previous file as it was, a damaged or missing ``last.ckpt`` is named and an older intact checkpoint is
resumed instead (never step 0 in the old folder)."""

from __future__ import annotations

import builtins
import contextlib
import errno
import os
import re
import subprocess
import time
from pathlib import Path

import pytest
import torch

from _tiny_run import tiny_config, write_config
from tempo_pl.run import checkpoint_io
from tempo_pl.run.checkpoint_io import (CheckpointWriteError, DamagedCheckpoint, UnsafeCheckpoint, check_intact,
                                    load_checkpoint_file, resolve_last, save_checkpoint_file)


class WritesAFile:
    """A pickle whose loading creates ``marker`` (``open(marker, "w")``): code run by ``torch.load``."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return builtins.open, (self.marker, "w")


def _crafted(tmp_path: Path) -> tuple[Path, Path]:
    marker = tmp_path / "code_ran"
    path = tmp_path / "crafted.ckpt"
    torch.save({"hyper_parameters": {"policy": {}}, "state_dict": {}, "payload": WritesAFile(marker)}, path)
    return path, marker


def test_export_refuses_a_crafted_checkpoint_without_running_it(tmp_path: Path, capsys) -> None:
    from tempo_pl.cli import main

    path, marker = _crafted(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["export", str(path), str(tmp_path / "out")])
    assert exit_info.value.code == 1
    assert not marker.exists() and not (tmp_path / "out").exists()
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert str(path) in err and "refusing the checkpoint" in err and "io.open" in err


@pytest.mark.parametrize("subcommand", ["fit", "validate"])
def test_fit_and_validate_refuse_a_crafted_checkpoint(subcommand: str, tmp_path: Path, capsys) -> None:
    from tempo_pl.cli import main

    path, marker = _crafted(tmp_path)
    config = write_config(tiny_config(tmp_path, steps=1), tmp_path / "cfg.yaml")
    with pytest.raises(SystemExit) as exit_info:
        main([subcommand, "--config", str(config), "--ckpt_path", str(path)])
    assert exit_info.value.code == 1
    assert not marker.exists()
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert str(path) in err and "weights_only=True" in err


def test_spec_dataclasses_of_a_module_built_in_python_load(tmp_path: Path) -> None:
    from tempo_pl.models.builders import LoraSpec, ModelSpec

    spec = ModelSpec(name_or_path="x", lora=LoraSpec(r=2, alpha=4))
    save_checkpoint_file({"hyper_parameters": {"policy": spec}}, tmp_path / "a.ckpt")
    assert load_checkpoint_file(tmp_path / "a.ckpt")["hyper_parameters"]["policy"] == spec


# ------------------------------------------------------------------------------------------------ atomic saves
def _state(value: float) -> dict:
    return {"state_dict": {"w": torch.full((1000,), value)}, "tempo": {"rl_step": int(value)}}


def _disk_full(*_args) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_save_on_a_full_disk_keeps_the_previous_file_and_says_so(tmp_path: Path, monkeypatch) -> None:
    last = tmp_path / "last.ckpt"
    save_checkpoint_file(_state(1.0), last)
    before = last.read_bytes()
    monkeypatch.setattr(checkpoint_io.os, "fsync", _disk_full)
    with pytest.raises(CheckpointWriteError) as err:
        save_checkpoint_file(_state(2.0), last)
    monkeypatch.undo()
    assert str(last) in str(err.value) and "disk is full (ENOSPC" in str(err.value)
    assert "previous file is kept unchanged" in str(err.value)
    assert last.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]  # the temporary file is gone
    assert load_checkpoint_file(last)["tempo"]["rl_step"] == 1


def test_a_killed_save_keeps_the_previous_file_and_the_next_save_clears_its_leftover(tmp_path: Path) -> None:
    last = tmp_path / "last.ckpt"
    save_checkpoint_file(_state(1.0), last)
    before = last.read_bytes()
    leftover = checkpoint_io.temp_path(last).with_name(".last.ckpt.tmp-999999")
    leftover.write_bytes(before[:100])  # what a process killed during its write leaves
    assert last.read_bytes() == before and check_intact(last) is None

    def interrupted(file) -> None:
        file.write(b"PK partial")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        checkpoint_io.write_atomically(last, interrupted)
    assert last.read_bytes() == before
    save_checkpoint_file(_state(3.0), last)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]
    assert load_checkpoint_file(last)["tempo"]["rl_step"] == 3


@pytest.mark.parametrize("damage, reason", [
    (lambda b: b[: len(b) // 2], "not a whole torch.save archive"),
    (lambda b: b"", "empty (0 bytes)"),
    (lambda b: b[:3000] + bytes([b[3000] ^ 0xFF]) + b[3001:], "CRC-32"),
])
def test_a_damaged_file_is_named_with_the_reason(tmp_path: Path, damage, reason: str) -> None:
    path = tmp_path / "last.ckpt"
    save_checkpoint_file(_state(1.0), path)
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(DamagedCheckpoint, match=re.escape(reason)) as err:
        load_checkpoint_file(path)
    assert str(path) in str(err.value)


def test_last_falls_back_to_the_newest_intact_step_checkpoint(tmp_path: Path) -> None:
    folder, run = tmp_path / "run" / "checkpoints", tmp_path / "run"
    for step in (2, 4, 6):
        save_checkpoint_file(_state(float(step)), folder / f"step{step:06d}.ckpt")
    (folder / "step000006.ckpt").write_bytes((folder / "step000006.ckpt").read_bytes()[:500])
    for step in (2, 4, 6):  # written in this order
        os.utime(folder / f"step{step:06d}.ckpt", (time.time() + step, time.time() + step))
    assert resolve_last([folder], run) != ("last", None)
    chosen, note = resolve_last([folder], run)  # last.ckpt missing
    assert chosen == str(folder / "step000004.ckpt")
    assert "last.ckpt" in note and "does not exist" in note and "step000006.ckpt passed over" in note
    (folder / "last.ckpt").write_bytes(b"")
    chosen, note = resolve_last([folder], run)
    assert chosen == str(folder / "step000004.ckpt") and "empty" in note
    save_checkpoint_file(_state(7.0), folder / "last.ckpt")
    assert resolve_last([folder], run) == ("last", None)


def test_last_refuses_a_run_folder_without_an_intact_checkpoint(tmp_path: Path) -> None:
    folder, run = tmp_path / "run" / "checkpoints", tmp_path / "run"
    assert resolve_last([folder], run) == ("last", None)  # nothing there yet: a first start
    run.mkdir()
    (run / "config.yaml").write_text("x")
    with pytest.raises(DamagedCheckpoint, match="cannot be resumed") as err:
        resolve_last([folder], run)
    assert str(folder / "last.ckpt") in str(err.value) and "does not exist" in str(err.value)


def test_unsafe_checkpoint_reason_names_what_it_asked_for(tmp_path: Path) -> None:
    path, marker = _crafted(tmp_path)
    with pytest.raises(UnsafeCheckpoint, match="io.open"):
        load_checkpoint_file(path)
    assert not marker.exists()


@pytest.mark.slow
def test_extending_a_finished_run_through_limit_train_batches_says_why_not(tmp_path: Path, capsys) -> None:
    from tempo_pl.cli import main

    short = write_config(tiny_config(tmp_path, steps=1), tmp_path / "short.yaml")
    longer = write_config(tiny_config(tmp_path, steps=3), tmp_path / "long.yaml")
    main(["fit", "--config", str(short), "--ckpt_path", "last"])
    main(["fit", "--config", str(short), "--ckpt_path", "last"])  # the same budget: done, and said so
    assert "had already finished (RL step 1); nothing is left to train" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(longer), "--ckpt_path", "last"])
    assert exit_info.value.code == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "ended its run's 1 epoch(s) at RL step 1" in last and "asks for 3" in last and "max_epochs" in last
    # raising max_epochs, as the message says, trains the extra steps
    main(["fit", "--config", str(longer), "--ckpt_path", "last", "--trainer.max_epochs=2"])
    run = next((tmp_path / "runs" / "tiny").glob("version_*"))
    assert load_checkpoint_file(run / "checkpoints" / "last.ckpt")["tempo"]["rl_step"] > 1


# ------------------------------------------------------------------------------------------------ whole runs
def _checkpoints_in(folder: Path, every: int = 1, keep_steps: bool = False):
    def edit(cfg):
        callbacks = cfg["trainer"]["callbacks"]
        for callback in callbacks:
            if callback["class_path"].endswith("RLStepCheckpoint"):
                callback["init_args"]["dirpath"] = str(folder)
        if keep_steps:
            callbacks.append({"class_path": "tempo_pl.callbacks.RLStepCheckpoint", "init_args": {
                "every_n_rl_steps": every, "save_top_k": -1, "save_last": False, "save_on_signal": False,
                "dirpath": str(folder)}})
    return edit


@contextlib.contextmanager
def _tmpfs(mount_point: Path, size: str):
    mount_point.mkdir(parents=True, exist_ok=True)
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount_point)],
                          capture_output=True, text=True, timeout=30)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({made.stderr.strip()}); the patched-write test covers ENOSPC")
    try:
        yield lambda new_size: subprocess.run(["mount", "-o", f"remount,size={new_size}", str(mount_point)],
                                              check=True, timeout=30)
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], timeout=30)


@pytest.mark.slow
def test_a_save_on_a_full_tmpfs_keeps_last_ckpt_byte_identical_and_resumable(tmp_path: Path, capsys) -> None:
    from tempo_pl.cli import main

    disk = tmp_path / "disk"
    with _tmpfs(disk, "64m") as resize:
        config = write_config(tiny_config(tmp_path, _checkpoints_in(disk), steps=1), tmp_path / "cfg.yaml")
        main(["fit", "--config", str(config), "--ckpt_path", "last"])
        last = disk / "last.ckpt"
        before = last.read_bytes()
        resize(f"{len(before) * 3 // 2 // 4096 * 4096}")  # room for the file, not for a second one beside it
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit_info:  # one more RL step, whose save does not fit
            main(["fit", "--config", str(config), "--ckpt_path", "last", "--trainer.max_epochs=2"])
        assert exit_info.value.code == 1
        said = capsys.readouterr().err.strip().splitlines()[-1]
        assert said == (f"[tempo-pl] error: could not write the checkpoint {str(last)!r}: the disk is full (ENOSPC: "
                        "No space left on device); the previous file is kept unchanged")
        assert last.read_bytes() == before and sorted(p.name for p in disk.iterdir()) == ["last.ckpt"]
        resize("64m")
        main(["fit", "--config", str(config), "--ckpt_path", "last", "--trainer.max_epochs=2"])
        assert load_checkpoint_file(last)["tempo"]["rl_step"] == 2


@pytest.mark.slow
def test_a_damaged_last_ckpt_resumes_from_the_newest_intact_step_checkpoint(tmp_path: Path, capsys) -> None:
    from tempo_pl.cli import main

    folder = tmp_path / "ckpts"
    config = write_config(tiny_config(tmp_path, _checkpoints_in(folder, keep_steps=True), steps=2),
                          tmp_path / "cfg.yaml")
    main(["fit", "--config", str(config), "--ckpt_path", "last"])
    assert sorted(p.name for p in folder.iterdir()) == ["last.ckpt", "step000001.ckpt", "step000002.ckpt"]
    last = folder / "last.ckpt"
    last.write_bytes(last.read_bytes()[:1000])  # truncated, as a save cut short by a full disk left it before
    capsys.readouterr()
    main(["fit", "--config", str(config), "--ckpt_path", "last", "--trainer.max_epochs=2"])
    err = capsys.readouterr().err
    assert (f"--ckpt_path last: {str(last)!r} cannot be resumed (1000 bytes that are not a whole torch.save archive"
            in err)
    assert f"resuming from {str(folder / 'step000002.ckpt')!r}, the newest intact checkpoint" in err
    assert load_checkpoint_file(last)["tempo"]["rl_step"] > 2
    for path in folder.iterdir():
        path.unlink()
    with pytest.raises(SystemExit) as exit_info:  # no checkpoint left: the run is not restarted in its own folder
        main(["fit", "--config", str(config), "--ckpt_path", "last", "--trainer.max_epochs=3"])
    assert exit_info.value.code == 1
    said = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"damaged checkpoint {str(last)!r}: the file does not exist" in said and "cannot be resumed" in said

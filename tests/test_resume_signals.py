"""Interrupted runs resumed with the same command line (``tempo-pl fit --config cfg.yaml --ckpt_path last``) log what
an uninterrupted run logs: every RL step once, at its step, with the same scalars, prompts, eval files and
checkpoint; after SIGKILL in the middle of a step, after SIGTERM (the checkpoint written on the signal is the one
resumed), and after two resumes in a row.

The runs are real ``python -m tempo_pl`` processes on the tiny config (6 RL steps, evaluation before training and
every 2 steps, a checkpoint after every step). A test engine (tests/_pausing_engine.py) notes each training rollout
in a file and pauses, so that a signal lands while a step is generating."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from _tiny_run import tiny_config, write_config

TESTS = Path(__file__).resolve().parent
STEPS = 6
# wall-clock scalars differ between any two runs
UNTIMED = ("train/time/", "train/perf/")


def _config(folder: Path, every_n_rl_steps: int = 1, rollout_ahead: int = 0) -> Path:
    def edit(cfg):
        if rollout_ahead:  # with the correction: the saved next rollout carries the sampler's log-probs
            cfg["model"]["init_args"]["training"]["rollout_ahead"] = rollout_ahead
            cfg["model"]["init_args"]["algorithm"]["rollout_correction"] = "token_tis"
        trainer = cfg["trainer"]
        trainer["val_check_interval"] = 2
        for callback in trainer["callbacks"]:
            if callback["class_path"].endswith("RLStepCheckpoint"):
                callback["init_args"]["every_n_rl_steps"] = every_n_rl_steps
        trainer["callbacks"] = [c for c in trainer["callbacks"] if not c["class_path"].endswith("RolloutSampleLogger")]
        # default folder: <log_dir>/rollouts, inside the run folder that --ckpt_path last resumes
        trainer["callbacks"].append({"class_path": "tempo_pl.callbacks.RolloutSampleLogger",
                                     "init_args": {"max_samples": 2}})
        cfg["model"]["init_args"]["rollout_engine"] = "_pausing_engine.PausingEngine"

    folder.mkdir(parents=True, exist_ok=True)
    return write_config(tiny_config(folder, edit, steps=STEPS, validate=True), folder / "cfg.yaml")


def _fit(folder: Path, interrupt: tuple[int, int] | None = None, pause: float = 0.0, env: dict | None = None,
         resume_arg: bool = True) -> subprocess.CompletedProcess:
    """``python -m tempo_pl fit --config cfg.yaml --ckpt_path last`` in ``folder`` (without ``--ckpt_path`` when not
    ``resume_arg``; ``env`` added to the environment); with ``interrupt=(signal, k)`` the signal is sent while this
    process's k-th training rollout (1-based) pauses."""
    log = folder / "rollout_calls.txt"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
           "TEMPO_TEST_STEP_LOG": str(log), "TEMPO_TEST_STEP_PAUSE": str(pause),
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1", **(env or {})}
    command = [sys.executable, "-m", "tempo_pl", "fit", "--config", "cfg.yaml",
               *(["--ckpt_path", "last"] if resume_arg else []), "--trainer.enable_progress_bar=false"]
    process = subprocess.Popen(command, cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if interrupt is not None:
        signum, k = interrupt
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and process.poll() is None:
            calls = log.read_text().split() if log.exists() else []
            if calls.count(str(process.pid)) >= k:
                break
            time.sleep(0.05)
        assert process.poll() is None, "the run ended before the signal was sent"
        time.sleep(min(0.3, pause / 3))
        os.kill(process.pid, signum)
    out, err = process.communicate(timeout=600)
    return subprocess.CompletedProcess(command, process.returncode, out, err)


def _run_folder(folder: Path) -> Path:
    (run,) = (folder / "runs" / "tiny").iterdir()  # one version folder: every resume went on in it
    return run


def _scalar_events(run: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar point TensorBoard shows (the interrupted run's points after the resumed step are purged by the
    restart marker); a step logged twice would appear twice here."""
    from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

    acc = EventAccumulator(str(run), size_guidance={SCALARS: 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]
            if not tag.startswith(UNTIMED)}


def _outputs(folder: Path) -> dict:
    run = _run_folder(folder)
    rollouts = [json.loads(line) for line in (run / "rollouts" / "rank0.jsonl").read_text().splitlines()]
    evals = {p.name: [{k: v for k, v in json.loads(line).items() if k != "timing"}
                      for line in p.read_text().splitlines()] for p in sorted((run / "eval").glob("*.jsonl"))}
    last = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    return {"scalars": _scalar_events(run), "rollouts": rollouts, "evals": evals, "last": last}


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("straight")
    _config(folder)
    result = _fit(folder)
    assert result.returncode == 0, result.stderr[-3000:]
    return _outputs(folder)


@pytest.fixture(scope="module")
def straight_ahead(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("straight_ahead")
    _config(folder, rollout_ahead=1)
    result = _fit(folder)
    assert result.returncode == 0, result.stderr[-3000:]
    return _outputs(folder)


def _assert_same_run(resumed: dict, straight: dict) -> None:
    assert sorted(resumed["scalars"]) == sorted(straight["scalars"])
    for tag, points in straight["scalars"].items():
        got = resumed["scalars"][tag]
        assert [s for s, _ in got] == [s for s, _ in points], f"{tag}: steps {got} vs {points}"
        assert [v for _, v in got] == pytest.approx([v for _, v in points], rel=1e-5, abs=1e-7, nan_ok=True), tag
    assert [r["rl_step"] for r in resumed["rollouts"]] == list(range(STEPS))
    for mine, theirs in zip(resumed["rollouts"], straight["rollouts"]):
        assert (mine["phase"], mine["prompt_ids"]) == (theirs["phase"], theirs["prompt_ids"])
        assert mine["scores"] == pytest.approx(theirs["scores"], abs=1e-6)
    assert list(resumed["evals"]) == [f"heldout_step{s:06d}.jsonl" for s in (0, 2, 4, 6)]
    assert resumed["evals"] == straight["evals"]
    assert resumed["last"]["tempo"]["rl_step"] == straight["last"]["tempo"]["rl_step"] == STEPS
    for key, value in straight["last"]["state_dict"].items():
        torch.testing.assert_close(resumed["last"]["state_dict"][key], value, msg=key)


@pytest.mark.slow
def test_sigkill_in_the_middle_of_a_step_then_resume(tmp_path: Path, straight: dict) -> None:
    _config(tmp_path)
    killed = _fit(tmp_path, interrupt=(signal.SIGKILL, 4), pause=1.0)  # during RL step 3
    assert killed.returncode == -signal.SIGKILL
    run = _run_folder(tmp_path)
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["tempo"]["rl_step"] == 3
    resumed = _fit(tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming the run in {run}" in resumed.stderr
    _assert_same_run(_outputs(tmp_path), straight)


@pytest.mark.slow
def test_sigterm_saves_after_the_step_and_that_checkpoint_is_resumed(tmp_path: Path, straight: dict) -> None:
    _config(tmp_path)
    stopped = _fit(tmp_path, interrupt=(signal.SIGTERM, 2), pause=1.0)  # during RL step 1
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr[-3000:]
    run = _run_folder(tmp_path)
    assert "stopped by SIGTERM after 2 RL steps" in stopped.stderr
    saved = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert saved["tempo"]["rl_step"] == 2  # the step in progress finished and its evaluation ran, then the save
    assert (run / "eval" / "heldout_step000002.jsonl").is_file()
    resumed = _fit(tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Restoring states from the checkpoint path at" in resumed.stderr
    assert "Resumed at RL step 2: its evaluation was logged again" in resumed.stderr
    _assert_same_run(_outputs(tmp_path), straight)


@pytest.mark.slow
def test_two_resumes_in_a_row(tmp_path: Path, straight: dict) -> None:
    _config(tmp_path)
    first = _fit(tmp_path, interrupt=(signal.SIGKILL, 2), pause=1.0)  # during RL step 1
    assert first.returncode == -signal.SIGKILL
    second = _fit(tmp_path, interrupt=(signal.SIGINT, 2), pause=1.0)  # resumed at 1; Ctrl-C during RL step 2
    assert second.returncode == 128 + signal.SIGINT, second.stderr[-3000:]
    assert "stopped by SIGINT after 3 RL steps" in second.stderr
    third = _fit(tmp_path)
    assert third.returncode == 0, third.stderr[-3000:]
    _assert_same_run(_outputs(tmp_path), straight)


@pytest.mark.slow
def test_steps_after_the_last_checkpoint_are_redone_and_logged_once(tmp_path: Path, straight: dict) -> None:
    """Checkpoints every 2 RL steps, SIGKILL during step 3: steps 2 and 3 run again. What the killed run had logged
    for step 2 (scalars, rollout line) is replaced, not duplicated."""
    _config(tmp_path, every_n_rl_steps=2)
    killed = _fit(tmp_path, interrupt=(signal.SIGKILL, 4), pause=1.0)
    assert killed.returncode == -signal.SIGKILL
    run = _run_folder(tmp_path)
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["tempo"]["rl_step"] == 2
    logged = [json.loads(line)["rl_step"] for line in (run / "rollouts" / "rank0.jsonl").read_text().splitlines()]
    assert logged == [0, 1, 2]  # step 2 ran (and was logged) after the last checkpoint
    resumed = _fit(tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _assert_same_run(_outputs(tmp_path), straight)


@pytest.mark.slow
def test_sigkill_with_rollouts_one_step_ahead_then_resume(tmp_path: Path, straight_ahead: dict) -> None:
    """``training.rollout_ahead: 1``: the 4th training rollout is step 3's, collected while step 2 updates. The
    checkpoint after step 1 holds step 2's rollout (sampled before step 1's update, which no checkpoint can redo):
    the resumed run trains on it and logs what the straight run logs."""
    _config(tmp_path, rollout_ahead=1)
    killed = _fit(tmp_path, interrupt=(signal.SIGKILL, 4), pause=1.0)
    assert killed.returncode == -signal.SIGKILL
    run = _run_folder(tmp_path)
    saved = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["tempo"]
    assert saved["rl_step"] == 2 and saved["rollout_ahead"]["next_rollout"]["rollout"]["sampling_logprobs"] is not None
    resumed = _fit(tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    outputs = _outputs(tmp_path)
    _assert_same_run(outputs, straight_ahead)
    assert [v for _, v in outputs["scalars"]["train/rollout/staleness"]] == [
        v for _, v in straight_ahead["scalars"]["train/rollout/staleness"]]


def _slurm_env(tmp_path: Path, restarts: int) -> dict:
    """The variables a 1-task SLURM job step has (what Lightning's SLURMEnvironment reads), and a fake ``scontrol``
    first on PATH that appends its arguments to ``scontrol_calls.txt``."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "scontrol_calls.txt"}\n')
    scontrol.chmod(0o755)
    return {"SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "tempo", "SLURM_NTASKS": "1", "SLURM_NTASKS_PER_NODE": "1",
            "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_NNODES": "1",
            "SLURM_NODELIST": "127.0.0.1", "SLURM_RESTART_COUNT": str(restarts),
            "PATH": os.pathsep.join([str(bin_dir), os.environ["PATH"]])}


@pytest.mark.slow
def test_slurm_preemption_saves_requeues_and_the_same_command_resumes(tmp_path: Path, straight: dict) -> None:
    """SIGUSR1 (``sbatch --signal=USR1@T``) during RL step 1: the step and its evaluation finish, last.ckpt is written
    in the run folder, ``scontrol requeue`` is called once; the requeued job's command line (the sbatch script's,
    without ``--ckpt_path``) resumes that run in its folder and ends as the uninterrupted run."""
    _config(tmp_path)
    stopped = _fit(tmp_path, interrupt=(signal.SIGUSR1, 2), pause=1.0, env=_slurm_env(tmp_path, 0), resume_arg=False)
    assert stopped.returncode == 128 + signal.SIGUSR1, stopped.stderr[-3000:]
    assert "stopped by SIGUSR1 after 2 RL steps" in stopped.stderr and "SLURM job 4242 requeued" in stopped.stderr
    assert (tmp_path / "scontrol_calls.txt").read_text().splitlines() == ["requeue 4242"]
    run = _run_folder(tmp_path)
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["tempo"]["rl_step"] == 2
    assert not list(tmp_path.rglob("hpc_ckpt*"))  # Lightning's own SLURM save is off: one path only
    requeued = _fit(tmp_path, env=_slurm_env(tmp_path, 1), resume_arg=False)
    assert requeued.returncode == 0, requeued.stderr[-3000:]
    assert "requeued SLURM job (restart 1): resuming" in requeued.stderr
    assert (tmp_path / "scontrol_calls.txt").read_text().splitlines() == ["requeue 4242"]
    _assert_same_run(_outputs(tmp_path), straight)

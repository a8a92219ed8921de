"""A signal to one rank of a 2-process run (gloo, DDP and FSDP2) stops both ranks at the next point they all reach,
saves ``last.ckpt`` and exits 143 on both within 60 s, whether it lands during an RL step, an evaluation or a
checkpoint save; the resumed run ends where the uninterrupted one does (scalars, rollouts, eval files, weights).

Each rank is a real ``python -m tempo_pl fit`` process started by the test (``LOCAL_RANK``/``WORLD_SIZE``, as a
launcher sets them), so the signal reaches exactly one rank. One run is interrupted three times in a row (during a
step, then during an evaluation, then during a save) and resumed each time with the same command line."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from _tiny_run import ROOT, subprocess_env, tiny_config, write_config

TESTS = Path(__file__).resolve().parent
STEPS = 6
STOP_WITHIN_S = 60
UNTIMED = ("train/time/", "train/perf/")
STRATEGIES = {"ddp": "ddp_find_unused_parameters_true",
              "fsdp2": yaml.safe_load((ROOT / "configs" / "fsdp2_tiny.yaml").read_text())["trainer"]["strategy"]}


def _config(folder: Path, strategy: str) -> Path:
    def edit(cfg: dict) -> None:
        trainer = cfg["trainer"]
        trainer.update(devices=2, strategy=STRATEGIES[strategy], val_check_interval=2)
        trainer["callbacks"] = [c for c in trainer["callbacks"] if not c["class_path"].endswith("RolloutSampleLogger")]
        trainer["callbacks"] += [{"class_path": "tempo_pl.callbacks.RolloutSampleLogger", "init_args": {"max_samples": 2}},
                                 {"class_path": "_pausing_engine.PauseInSave"}]
        cfg["model"]["init_args"]["rollout_engine"] = "_pausing_engine.PausingEvalEngine"
        cfg["data"]["init_args"]["batch_size"] = 2  # per rank: the 4 prompts of configs/tiny.yaml's step

    folder.mkdir(parents=True, exist_ok=True)
    return write_config(tiny_config(folder, edit, steps=STEPS, validate=True), folder / "cfg.yaml")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _entries(log: Path) -> list[str]:
    return log.read_text().split() if log.exists() else []


def _after(entries: list[str], pid: int, trained: int, kind: str) -> bool:
    """Whether ``pid`` logged ``trained`` training rollouts and then a ``kind`` entry (eval, save)."""
    seen = 0
    for entry in entries:
        if entry == str(pid):
            seen += 1
        elif seen >= trained and (kind == "train" or entry == f"{kind}:{pid}"):
            return True
    return kind == "train" and seen >= trained


def _fit(folder: Path, stop: tuple[int, int, str] | None = None, pause: float = 2.0) -> list[tuple[int, str]]:
    """Both ranks of ``tempo-pl fit --config cfg.yaml --ckpt_path last`` in ``folder``; with ``stop=(rank, k, kind)``
    SIGTERM goes to that rank once it did k training rollouts and then entered ``kind`` (train: the k-th rollout;
    eval; save), where it pauses ``pause`` s. Returns each rank's (exit code, stderr), asserting that both exited
    within :data:`STOP_WITHIN_S` of the signal."""
    log = folder / "calls.txt"
    log.unlink(missing_ok=True)
    port = _free_port()
    kind = stop[2] if stop else None
    processes = []
    for rank in range(2):
        env = {**subprocess_env(), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": "2",
               "NODE_RANK": "0", "LOCAL_RANK": str(rank), "TEMPO_TEST_STEP_LOG": str(log),
               "TEMPO_TEST_EVAL_LOG": str(log), "TEMPO_TEST_SAVE_LOG": str(log),
               "TEMPO_TEST_STEP_PAUSE": str(pause if kind == "train" else 0),
               "TEMPO_TEST_EVAL_PAUSE": str(pause if kind == "eval" else 0),
               "TEMPO_TEST_SAVE_PAUSE": str(pause if kind == "save" else 0),
               "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
        err = open(folder / f"rank{rank}.err", "w")
        processes.append(subprocess.Popen(
            [sys.executable, "-m", "tempo_pl", "fit", "--config", "cfg.yaml", "--ckpt_path", "last",
             "--trainer.enable_progress_bar=false"], cwd=folder, env=env, stdout=subprocess.DEVNULL, stderr=err))
    deadline = time.monotonic() + 400
    try:
        if stop is not None:
            rank, trained, kind = stop
            target = processes[rank]
            while not _after(_entries(log), target.pid, trained, kind):
                assert time.monotonic() < deadline and all(p.poll() is None for p in processes), \
                    f"the run ended before the signal was sent:\n{(folder / 'rank0.err').read_text()[-3000:]}"
                time.sleep(0.05)
            time.sleep(0.3)
            os.kill(target.pid, signal.SIGTERM)
            deadline = time.monotonic() + STOP_WITHIN_S
        for p in processes:
            p.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        pytest.fail(f"a rank was still running {STOP_WITHIN_S} s after SIGTERM:\n"
                    + "\n".join((folder / f"rank{r}.err").read_text()[-2000:] for r in range(2)))
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
                p.wait()
    return [(p.returncode, (folder / f"rank{r}.err").read_text()) for r, p in enumerate(processes)]


def _run_folder(folder: Path) -> Path:
    (run,) = (folder / "runs" / "tiny").iterdir()  # one version folder: every resume went on in it
    return run


def _checkpoint(path: Path, tmp: Path) -> dict:
    """``rl_step`` and weights of a checkpoint file, or of a sharded (DCP) checkpoint folder."""
    if path.is_dir():
        from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

        flat = tmp / f"{path.parent.parent.name}-{time.monotonic_ns()}.pt"
        dcp_to_torch_save(path, flat)
        weights = torch.load(flat, map_location="cpu", weights_only=False)["state_dict"]
        meta = torch.load(path / "meta.pt", map_location="cpu", weights_only=False)
        return {"rl_step": meta["tempo"]["rl_step"], "weights": weights}
    state = torch.load(path, map_location="cpu", weights_only=False)
    return {"rl_step": state["tempo"]["rl_step"], "weights": state["state_dict"]}


def _outputs(folder: Path) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

    run = _run_folder(folder)
    acc = EventAccumulator(str(run), size_guidance={SCALARS: 0})
    acc.Reload()
    scalars = {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]
               if not tag.startswith(UNTIMED)}
    rollouts = [json.loads(line) for line in (run / "rollouts" / "rank0.jsonl").read_text().splitlines()]
    evals = {p.name: [{k: v for k, v in json.loads(line).items() if k != "timing"}
                      for line in p.read_text().splitlines()] for p in sorted((run / "eval").glob("*.jsonl"))}
    return {"scalars": scalars, "rollouts": rollouts, "evals": evals,
            "last": _checkpoint(run / "checkpoints" / "last.ckpt", folder)}


def _assert_stopped(ranks: list[tuple[int, str]], rl_steps: int, run: Path, tmp: Path) -> None:
    for rank, (code, err) in enumerate(ranks):
        assert code == 128 + signal.SIGTERM, f"rank {rank} exited {code}:\n{err[-3000:]}"
    assert f"stopped by SIGTERM after {rl_steps} RL steps" in ranks[0][1]
    assert "stopped by" not in ranks[1][1]  # one line per run
    assert _checkpoint(run / "checkpoints" / "last.ckpt", tmp)["rl_step"] == rl_steps


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp2"])
def test_sigterm_to_one_rank_during_a_step_an_evaluation_and_a_save(tmp_path: Path, strategy: str) -> None:
    straight = tmp_path / "straight"
    _config(straight, strategy)
    ranks = _fit(straight)
    assert [code for code, _ in ranks] == [0, 0], ranks[0][1][-3000:]
    # the evaluation metrics are gathered on every rank: no Lightning advice to reduce them, per metric
    assert not any("It is recommended to use `self.log('val/" in err for _, err in ranks)
    expected = _outputs(straight)

    folder = tmp_path / "stopped"
    _config(folder, strategy)
    # rank 1, during RL step 1: the step and the evaluation after it finish, then both ranks save and stop
    stopped = _fit(folder, stop=(1, 2, "train"))
    run = _run_folder(folder)
    _assert_stopped(stopped, 2, run, tmp_path)
    # rank 0, during the evaluation after RL step 3 (the resumed run's second rollout): stop once it ends
    _assert_stopped(_fit(folder, stop=(0, 2, "eval")), 4, run, tmp_path)
    # rank 1, during the save after RL step 4 (the resumed run's first rollout): stop once it is written
    _assert_stopped(_fit(folder, stop=(1, 1, "save")), 5, run, tmp_path)
    assert [code for code, _ in _fit(folder)] == [0, 0]

    resumed = _outputs(folder)
    assert sorted(resumed["scalars"]) == sorted(expected["scalars"])
    for tag, points in expected["scalars"].items():
        got = resumed["scalars"][tag]
        assert [s for s, _ in got] == [s for s, _ in points], f"{tag}: steps {got} vs {points}"
        assert [v for _, v in got] == pytest.approx([v for _, v in points], rel=1e-5, abs=1e-7, nan_ok=True), tag
    assert [r["rl_step"] for r in resumed["rollouts"]] == list(range(STEPS))
    for mine, theirs in zip(resumed["rollouts"], expected["rollouts"]):
        assert (mine["phase"], mine["prompt_ids"]) == (theirs["phase"], theirs["prompt_ids"])
        assert mine["scores"] == pytest.approx(theirs["scores"], abs=1e-6)
    assert list(resumed["evals"]) == [f"heldout_step{s:06d}.jsonl" for s in (0, 2, 4, 6)]
    assert resumed["evals"] == expected["evals"]
    assert resumed["last"]["rl_step"] == expected["last"]["rl_step"] == STEPS
    for key, value in expected["last"]["weights"].items():
        torch.testing.assert_close(resumed["last"]["weights"][key], value, msg=key)

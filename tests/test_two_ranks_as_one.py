"""One RL step on 2 processes (DDP over gloo) computes what 1 process computes on the ranks' prompts as one batch:
the same kept groups, advantages, losses and updated weights (docs/algorithm.md, "One RL step")."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from _tiny_run import ROOT, schedule, subprocess_env, tiny_config, write_config

STEPS = 2


def _config(out: Path, ranks: int, strategy=None, num_nodes: int = 1) -> Path:
    """configs/tiny.yaml's global batch of 4 prompts over ``ranks`` processes (``num_nodes`` nodes), recorded."""

    def edit(cfg: dict) -> None:
        schedule(cfg)["init_args"] = {"mode": "mixed"}
        cfg["trainer"]["devices"] = ranks // num_nodes
        cfg["trainer"]["num_nodes"] = num_nodes
        if ranks > 1:
            cfg["trainer"]["strategy"] = strategy or "ddp_find_unused_parameters_true"
        cfg["model"]["class_path"] = "_fixed_engine.RecordingTempo"
        args = cfg["model"]["init_args"]
        args["rollout_engine"] = {"class_path": "_fixed_engine.FixedEngine"}
        # per rank: 2 prompts (1 labeled, 1 unlabeled) in one mini-batch; one process: the 4 of both ranks
        args["training"] = {"mini_batch_size": 2 * (3 - ranks), "micro_batch_size": 64, "group_filter": True,
                            "max_generation_batches": 4}
        cfg["data"]["init_args"]["batch_size"] = 2 * (3 - ranks)
        # SGD: the weights move by the gradients themselves; Adam's first steps move every weight by about its lr
        # whatever the gradient's size, so float noise of 1e-9 in a near-zero gradient would show as 1e-6 there
        for name in ("policy_optimizer", "critic_optimizer"):
            args[name] = {"class_path": "torch.optim.SGD", "init_args": {"lr": 0.05}}
        cfg["trainer"]["logger"]["init_args"]["save_dir"] = str(out / "runs")

    out.mkdir()
    cfg = tiny_config(out, edit, steps=STEPS)
    cfg["trainer"]["callbacks"] = [cb for cb in cfg["trainer"]["callbacks"] if "RolloutSampleLogger" not in cb["class_path"]]
    return write_config(cfg, out / "config.yaml")


def _env(out: Path) -> dict:
    return {**subprocess_env(), "TEMPO_TEST_OUT": str(out),
            "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])}


def _results(out: Path, ranks: int) -> list[dict]:
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(ranks)]


def _run(tmp_path: Path, devices: int) -> list[dict]:
    out = tmp_path / f"devices{devices}"
    path = _config(out, devices)
    done = subprocess.run([sys.executable, "-m", "tempo_pl", "fit", "--config", str(path)], cwd=out, env=_env(out),
                          capture_output=True, text=True, timeout=540)
    assert done.returncode == 0, done.stderr[-4000:]
    return _results(out, devices)


def _assert_ranks_compute_one_process(one: dict, two: list[dict]) -> None:
    for step in range(STEPS):
        single = one["records"][step]
        ranks = [r["records"][step] for r in two]
        # the same groups, shared out equally, in the one-process order
        assert ranks[0]["rows"] + ranks[1]["rows"] == single["rows"]
        assert len(ranks[0]["rows"]) == len(ranks[1]["rows"])
        adv_single = dict(zip(single["rows"], single["adv"]))
        for rank in ranks:
            for row, adv in zip(rank["rows"], rank["adv"]):
                assert adv == pytest.approx(adv_single[row], abs=1e-6), f"step {step} row {row}"
        # losses: each rank's is the mean over its own units; weighted by them they give the one-process loss
        assert (ranks[0]["policy_loss"] + ranks[1]["policy_loss"]) / 2 == pytest.approx(single["policy_loss"], abs=1e-6)
        labeled = [sum(rank["labeled"]) for rank in ranks]  # the critic's units: labeled rows
        if single["critic_loss"] is not None:
            weighted = sum(n * rank["critic_loss"] for n, rank in zip(labeled, ranks) if n) / sum(labeled)
            assert weighted == pytest.approx(single["critic_loss"], abs=1e-6)
    # the test covers what it claims: a labeled group was filtered (and refilled), and the ranks held unequal numbers
    # of labeled rows, where a per-rank mean would weigh the critic's rows differently from one process
    assert any(sum(r["labeled"]) < 8 for r in one["records"])
    assert any(sum(two[0]["records"][s]["labeled"]) != sum(two[1]["records"][s]["labeled"]) for s in range(STEPS))
    assert any(not torch.equal(one["policy"][k], one["initial_policy"][k]) for k in one["policy"])
    for name in ("policy", "critic"):
        for key, value in one[name].items():
            assert torch.allclose(two[0][name][key], value, atol=1e-6), f"{name}.{key}"
            assert torch.equal(two[0][name][key], two[1][name][key])  # DDP keeps the ranks identical


@pytest.mark.slow
def test_two_ranks_compute_what_one_process_computes_on_their_batch(tmp_path: Path) -> None:
    (one,), two = _run(tmp_path, 1), _run(tmp_path, 2)
    _assert_ranks_compute_one_process(one, two)

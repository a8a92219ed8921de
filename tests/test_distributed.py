"""The tiny config on 2 processes (DDP over gloo): it completes, ranks draw different prompts, groups stay whole."""

from __future__ import annotations

import pytest

import os
import subprocess
import sys
from pathlib import Path


from _tiny_run import rollout_records, schedule, tiny_config, write_config


@pytest.mark.slow
def test_ddp_two_processes_split_prompts_and_keep_groups_whole(tmp_path: Path) -> None:
    def edit(cfg: dict) -> None:
        schedule(cfg)["init_args"] = {"mode": "mixed"}
        cfg["trainer"]["devices"] = 2
        # an E-step's backward reaches the critic only: DDP must not wait for the policy's gradients
        cfg["trainer"]["strategy"] = "ddp_find_unused_parameters_true"

    cfg = tiny_config(tmp_path, edit, steps=2, validate=True)
    cfg["trainer"]["val_check_interval"] = 2
    path = write_config(cfg, tmp_path / "ddp.yaml")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-m", "tempo_pl", "fit", "--config", str(path)], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=540)
    assert out.returncode == 0, out.stderr[-4000:]
    ranks = [rollout_records(tmp_path / "rollouts", rank) for rank in (0, 1)]
    n = cfg["model"]["init_args"]["sampling"]["n"]
    assert [len(r) for r in ranks] == [2, 2]
    for step in range(2):
        ids0, ids1 = ranks[0][step]["prompt_ids"], ranks[1][step]["prompt_ids"]
        assert ids0 and ids1
        assert not set(ids0) & set(ids1), f"step {step}: both ranks drew {set(ids0) & set(ids1)}"
        for rank in ranks:
            assert rank[step]["group_sizes"] == [n] * len(rank[step]["prompt_ids"])
    # validation before and after training: each rank graded its share, rank 0 wrote every question once
    evals = sorted((tmp_path / "runs" / "tiny").glob("version_*/eval/heldout_step*.jsonl"))
    assert [p.name for p in evals] == ["heldout_step000000.jsonl", "heldout_step000002.jsonl"]
    assert len(evals[0].read_text().splitlines()) == 4
    # both ranks stepped the same optimizers: their logged losses are the local ones, but each finished every step
    assert all("train/policy/loss" in r["metrics"] for rank in ranks for r in rank)

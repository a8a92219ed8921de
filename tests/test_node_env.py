"""The local rank and ranks per node come from the launcher's variables: torchrun's, else srun's, never the global
rank (on a second node of 8 GPUs, global rank 9 is device 1)."""

from __future__ import annotations

import pytest

from tempo_pl.run.node_env import local_rank, local_world_size

LAUNCHER_VARS = ("LOCAL_RANK", "LOCAL_WORLD_SIZE", "SLURM_LOCALID", "SLURM_NTASKS_PER_NODE", "RANK", "SLURM_PROCID")


@pytest.fixture(autouse=True)
def _no_launcher(monkeypatch) -> None:
    for key in LAUNCHER_VARS:
        monkeypatch.delenv(key, raising=False)


def test_srun_second_node_uses_slurm_localid_not_the_global_rank(monkeypatch) -> None:
    monkeypatch.setenv("SLURM_PROCID", "9")
    monkeypatch.setenv("RANK", "9")
    monkeypatch.setenv("SLURM_LOCALID", "1")
    monkeypatch.setenv("SLURM_NTASKS_PER_NODE", "8(x2)")
    assert (local_rank(), local_world_size()) == (1, 8)


def test_torchrun_variables_come_first(monkeypatch) -> None:
    monkeypatch.setenv("LOCAL_RANK", "3")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    monkeypatch.setenv("SLURM_LOCALID", "0")
    monkeypatch.setenv("SLURM_NTASKS_PER_NODE", "8")
    assert (local_rank(), local_world_size()) == (3, 4)


def test_no_launcher_is_local_rank_zero_of_one() -> None:
    assert (local_rank(), local_world_size()) == (0, 1)


def test_grader_pool_shares_the_node_cpus_among_its_srun_ranks(monkeypatch) -> None:
    from tempo_pl.rewards import grading_pool

    monkeypatch.setattr(grading_pool.os, "sched_getaffinity", lambda pid: set(range(16)))
    monkeypatch.setenv("SLURM_NTASKS_PER_NODE", "4")
    assert grading_pool.default_processes() == 4

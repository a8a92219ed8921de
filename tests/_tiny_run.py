"""Helpers of the end-to-end tests: run the CLI on a modified copy of configs/tiny.yaml and read what it wrote."""

from __future__ import annotations

import contextlib
import copy
import json
import os
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import yaml

ROOT = Path(__file__).resolve().parents[1]


def subprocess_env() -> dict[str, str]:
    """For a test's multi-process worker: offline, one thread, and no rendezvous variables a test of this session
    may have left behind."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "GLOBAL_RANK")}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    return env


@contextlib.contextmanager
def one_rank_process_group(monkeypatch) -> Iterator[None]:
    """A 1-rank gloo process group on a free port for the block, torn down after it (a test's 1-rank mesh)."""
    import socket

    import torch.distributed as dist

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(port))
    dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def finish_worker() -> None:
    """Ends a multi-process worker once its results are on disk: the process group is closed and the process exits
    with 0 at once, since the interpreter's own shutdown sometimes aborts in a C++ thread destructor ("terminate
    called without an active exception"), which would turn a finished run into exit code -6."""
    import sys

    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
TINY = ROOT / "configs" / "tiny.yaml"


def tiny_config(tmp_path: Path, edit: Optional[Callable[[dict], None]] = None, steps: int = 4,
                validate: bool = False) -> dict:
    """configs/tiny.yaml with logs under tmp_path, ``steps`` RL steps, a rollout logger, optional edits."""
    cfg = yaml.safe_load(TINY.read_text())
    cfg = copy.deepcopy(cfg)
    trainer = cfg["trainer"]
    trainer["limit_train_batches"] = steps
    trainer["logger"]["init_args"]["save_dir"] = str(tmp_path / "runs")
    trainer["enable_progress_bar"] = False
    trainer["enable_model_summary"] = False
    if not validate:
        trainer["num_sanity_val_steps"] = 0
        trainer["limit_val_batches"] = 0
    trainer["callbacks"].append({"class_path": "tempo_pl.callbacks.RolloutSampleLogger",
                                 "init_args": {"max_samples": 2, "dirpath": str(tmp_path / "rollouts")}})
    if edit is not None:
        edit(cfg)
    return cfg


def write_config(cfg: dict, path: Path) -> Path:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def schedule(cfg: dict) -> dict:
    return next(cb for cb in cfg["trainer"]["callbacks"] if cb["class_path"].endswith("EMSchedule"))


def build(cfg: dict, tmp_path: Path, name: str = "config.yaml", extra: tuple[str, ...] = ()) -> Any:
    """The CLI objects (trainer, model, datamodule) of a config, not run."""
    from tempo_pl.cli import TempoCLI

    path = write_config(cfg, tmp_path / name)
    return TempoCLI(args=["--config", str(path), *extra], run=False)


def fit(cfg: dict, tmp_path: Path, ckpt_path: Optional[str] = None, name: str = "config.yaml"):
    cli = build(cfg, tmp_path, name)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=ckpt_path)
    return cli


def rollout_records(folder: Path, rank: int = 0) -> list[dict]:
    path = folder / f"rank{rank}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_cli(subcommand: str, cfg: dict, tmp_path: Path):
    """``tempo-pl <subcommand> --config`` on a config written under tmp_path, as a user runs it; returns the run's
    logger version folder and its TensorBoard scalars (an ``EventAccumulator``, loaded)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from tempo_pl.cli import main

    path = write_config(cfg, tmp_path / f"{subcommand}.yaml")
    main([subcommand, "--config", str(path)])
    (version,) = list((tmp_path / "runs" / "tiny").glob("version_*"))
    scalars = EventAccumulator(str(version))
    scalars.Reload()
    return version, scalars


def straight_and_resumed(tmp_path: Path, edit: Callable[[dict], None], steps: int) -> tuple[list, list, list]:
    """Two epochs of ``steps`` RL steps straight, and the same as one epoch, a checkpoint and a resumed second epoch
    (``edit`` sets max_epochs to 2). Returns the rollout records of the straight run, of the first half, and of the
    split run."""
    straight_dir, split_dir = tmp_path / "straight", tmp_path / "split"
    straight_dir.mkdir(), split_dir.mkdir()
    fit(tiny_config(straight_dir, edit, steps=steps), straight_dir)
    first = tiny_config(split_dir, edit, steps=steps)
    first["trainer"]["max_epochs"] = 1
    cli = fit(first, split_dir, name="first.yaml")
    cli.trainer.save_checkpoint(split_dir / "mid.ckpt")
    first_half = rollout_records(split_dir / "rollouts")
    fit(tiny_config(split_dir, edit, steps=steps), split_dir, ckpt_path=str(split_dir / "mid.ckpt"), name="second.yaml")
    return rollout_records(straight_dir / "rollouts"), first_half, rollout_records(split_dir / "rollouts")

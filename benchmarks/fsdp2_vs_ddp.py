"""RL step time of FSDP2 against DDP: the same tiny run on the same number of processes, measured in one go.

Runs ``configs/fsdp2_tiny.yaml`` over ``configs/tiny.yaml`` (FSDP2 per decoder layer, activation checkpointing)
and the same configs with ``strategy: ddp_find_unused_parameters_true`` one after the other, each for ``--steps`` RL
steps without evaluation, reads every step's ``train/time/step_s`` back from TensorBoard, and prints the medians (the
first step, which pays for lazy initialisation, left out) and their ratio. On a CPU with gloo this measures the
sharding's overhead (an all-gather per layer in every forward and backward, activation recomputation), not its memory
savings, which only a large model shows.

    python benchmarks/fsdp2_vs_ddp.py                 # 2 processes on the CPU, 8 RL steps each
    python benchmarks/fsdp2_vs_ddp.py --accelerator gpu --devices 8
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from tempo_pl.run.config_layers import config_args

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = (ROOT / "configs" / "tiny.yaml", ROOT / "configs" / "fsdp2_tiny.yaml")
STRATEGIES = {"fsdp2": None, "ddp": "ddp_find_unused_parameters_true"}


PARTS = ("step_s", "generation_s", "scoring_s", "update_s")
"""``train/time/*`` scalars reported: the whole RL step and its three stages."""


def run(name: str, folder: Path, steps: int, devices: int, accelerator: str) -> dict[str, float]:
    """One fit; returns the median over RL steps 1.. of each of :data:`PARTS` (seconds)."""
    from tempo_pl.pipelines.report import read_scalars

    args = [
        sys.executable, "-m", "tempo_pl", "fit", *config_args(CONFIGS),
        f"--trainer.devices={devices}", f"--trainer.accelerator={accelerator}",
        f"--trainer.limit_train_batches={steps}", "--trainer.limit_val_batches=0", "--trainer.num_sanity_val_steps=0",
        "--trainer.enable_progress_bar=false",
        f"--trainer.logger.init_args.save_dir={folder}", "--trainer.logger.init_args.name=",
        f"--trainer.logger.init_args.version={name}",
    ]
    if STRATEGIES[name] is not None:
        args.append(f"--trainer.strategy={STRATEGIES[name]}")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{name} run failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    curves = read_scalars(folder / name)
    return {part: statistics.median(v for step, v in curves[f"train/time/{part}"] if step >= 1) for part in PARTS}


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8, help="RL steps per run (the first is not counted)")
    parser.add_argument("--devices", type=int, default=2, help="processes (GPUs with --accelerator gpu)")
    parser.add_argument("--accelerator", default="cpu", choices=["cpu", "gpu"])
    args = parser.parse_args(argv)
    if args.steps < 2:
        parser.error("--steps must be >= 2: the first step is not counted")
    medians = {}
    with tempfile.TemporaryDirectory(prefix="tempo_fsdp2_vs_ddp_") as tmp:
        for name in STRATEGIES:
            medians[name] = run(name, Path(tmp), args.steps, args.devices, args.accelerator)
    print(f"{args.devices} processes on {args.accelerator}, {args.steps - 1} RL steps counted, "
          "configs/fsdp2_tiny.yaml over configs/tiny.yaml")
    print("| median s | " + " | ".join(PARTS) + " |")
    print("|---" * (len(PARTS) + 1) + "|")
    for name in STRATEGIES:
        print(f"| {name} | " + " | ".join(f"{medians[name][p]:.3f}" for p in PARTS) + " |")
    ratio = medians["fsdp2"]["step_s"] / medians["ddp"]["step_s"]
    print(f"FSDP2 / DDP RL step time: {ratio:.2f}")
    return {"fsdp2": medians["fsdp2"], "ddp": medians["ddp"], "ratio": ratio}


if __name__ == "__main__":
    main()

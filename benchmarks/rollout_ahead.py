"""Rollouts one step ahead (``training.rollout_ahead: 1``) against the straight step, measured in the same run: the
median step time, steps per hour as a ratio to the straight step, and the trainer's idle share (the share of a step
the trainer spends waiting for rollouts: the whole collection with ``rollout_ahead: 0``; drawing the next batch and
waiting for the sampler thread with ``1``). The first step of each run is left out (warm-up, and with ``1`` it
collects its own rollout).

On the CPU the sampler thread and the update share the cores: the overlap is functional, not faster. On a GPU the
next step's generation overlaps this step's update (``benchmarks/gpu_check.py``'s rollout_ahead row, vLLM when it is
installed, at a generation-heavy shape; the target is >= 1.3x steps per hour).

    python benchmarks/rollout_ahead.py           # the tiny model on the CPU (configs/tiny.yaml's sizes)
    python benchmarks/rollout_ahead.py --gpu     # a 0.5B-class Qwen3 with 2k-token responses on one GPU
    python benchmarks/gpu_check.py --runs rollout_ahead     # the same shape with vLLM (when installed)
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from vllm_vs_generate import EngineSizes  # noqa: E402  (a sibling script)


@dataclass
class Shape(EngineSizes):
    """The model and generation workload of :class:`EngineSizes`, and the RL steps each run takes."""

    steps: int


CPU = Shape(hidden=64, layers=2, heads=4, kv_heads=2, intermediate=128, vocab=100, prompts=4, n=4, max_new_tokens=48,
            steps=6)
CPU_SMOKE = Shape(hidden=64, layers=2, heads=4, kv_heads=2, intermediate=128, vocab=100, prompts=2, n=2,
                  max_new_tokens=8, steps=3)
GPU = Shape(hidden=896, layers=24, heads=14, kv_heads=2, intermediate=4864, vocab=32768, prompts=16, n=4,
            max_new_tokens=2048, steps=4)


def make_module(shape: Shape, tokenizer: str, rollout_ahead: int, on_gpu: bool, use_vllm: bool):
    from tempo_pl.config import AlgorithmConfig, TrainingConfig
    from tempo_pl.models.builders import CriticSpec, ModelSpec
    from tempo_pl.module import TempoModule
    from tempo_pl.config import SamplingConfig

    config = shape.qwen3_config()
    engine = None
    if use_vllm:
        from functools import partial

        from tempo_pl.engines.vllm import VLLMEngine

        engine = partial(VLLMEngine, dtype="bfloat16", gpu_memory_utilization=0.3)
    rows = shape.prompts * shape.n
    return TempoModule(
        policy=ModelSpec(config=config, tokenizer=tokenizer, seed=0, dtype="float32"),
        critic=CriticSpec(seed=1, dtype="float32"),
        sampling=SamplingConfig(n=shape.n, max_new_tokens=shape.max_new_tokens, max_prompt_length=512),
        algorithm=AlgorithmConfig(clip_low=0.2, clip_high=0.28, rollout_correction="token_tis"),
        training=TrainingConfig(mini_batch_size=max(shape.prompts // 2, 1), micro_batch_size=max(rows // 4, 1),
                                forward_batch_size=rows, group_filter=False, rollout_ahead=rollout_ahead),
        policy_optimizer=lambda params: torch.optim.AdamW(params, lr=1e-5, weight_decay=0.0),
        critic_optimizer=lambda params: torch.optim.AdamW(params, lr=1e-5, weight_decay=0.01),
        rollout_engine=engine,
    )


def run(shape: Shape, tokenizer: str, rollout_ahead: int, on_gpu: bool, use_vllm: bool, root: Path) -> list[dict]:
    """Each RL step's logged metrics (names without ``train/``) of one fit."""
    from lightning.pytorch import Callback, Trainer, seed_everything

    from tempo_pl.callbacks import EMSchedule
    from tempo_pl.data.datamodule import TempoDataModule
    from tempo_pl.data.sources import DatasetSpec

    seed_everything(0, verbose=False)
    steps: list[dict] = []

    class Record(Callback):
        def on_train_batch_end(self, trainer, pl_module, *args):
            steps.append({k.removeprefix("train/"): v for k, v in pl_module.last_step.metrics.items()})

    size = 4 * shape.prompts * (shape.steps + 1)
    data = TempoDataModule(labeled=DatasetSpec(path=f"synthetic:labeled?size={size}"),
                           unlabeled=DatasetSpec(path=f"synthetic:unlabeled?size={size}"), batch_size=shape.prompts)
    trainer = Trainer(accelerator="gpu" if on_gpu else "cpu", devices=1, max_epochs=1, limit_train_batches=shape.steps,
                      limit_val_batches=0, num_sanity_val_steps=0, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(root),
                      callbacks=[EMSchedule(mode="mixed"), Record()])
    trainer.fit(make_module(shape, tokenizer, rollout_ahead, on_gpu, use_vllm), datamodule=data)
    return steps


def summarise(steps: list[dict]) -> dict[str, float]:
    """Median step seconds and median idle share over the steps after the first."""
    measured = steps[1:] or steps
    idle = [(s.get("time/generation_s", 0.0) + s.get("time/sampler_wait_s", 0.0)) / s["time/step_s"]
            for s in measured]
    return {"step_s": statistics.median(s["time/step_s"] for s in measured), "idle_share": statistics.median(idle),
            "staleness": max(s.get("rollout/staleness", 0.0) for s in steps)}


def main_lines(shape: Shape, tokenizer: str, on_gpu: bool, use_vllm: bool = False) -> tuple[list[str], bool]:
    """The comparison as text lines, and whether both runs trained every step."""
    engine = "vLLM" if use_vllm else "transformers generate"
    lines = [f"rollout_ahead 0 vs 1 on {torch.cuda.get_device_name() if on_gpu else 'cpu'} ({engine}): Qwen3 hidden "
             f"{shape.hidden}, {shape.layers} layers; {shape.prompts} prompts x {shape.n} responses of <= "
             f"{shape.max_new_tokens} tokens, {shape.steps} RL steps (medians after the first step)"]
    results = {}
    with tempfile.TemporaryDirectory(prefix="tempo_rollout_ahead_") as tmp:
        for ahead in (0, 1):
            steps = run(shape, tokenizer, ahead, on_gpu, use_vllm, Path(tmp) / str(ahead))
            results[ahead] = summarise(steps) if len(steps) == shape.steps else None
    ok = all(r is not None for r in results.values())
    for ahead, r in results.items():
        lines.append(f"- rollout_ahead {ahead}: " + ("FAILED" if r is None else
                     f"step {r['step_s']:.3f} s, trainer idle {100 * r['idle_share']:.0f}% of the step, "
                     f"max staleness {r['staleness']:.0f}"))
    if ok:
        lines.append(f"- steps per hour, rollout_ahead 1 / 0: {results[0]['step_s'] / results[1]['step_s']:.2f}x")
    return lines, ok


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu", action="store_true", help="the GPU shape on one GPU (vLLM when installed)")
    parser.add_argument("--smoke", action="store_true", help="the smallest shape, 3 steps (a test of the script)")
    args = parser.parse_args(argv)
    if args.gpu and not torch.cuda.is_available():
        parser.error("--gpu: no CUDA device")
    shape = GPU if args.gpu else CPU_SMOKE if args.smoke else CPU
    start = time.perf_counter()
    if args.gpu:  # the character tokenizer; gpu_check.py's row runs this shape with a BPE one and vLLM
        lines, ok = main_lines(replace(shape, vocab=100), "builtin:char", True)
    else:
        torch.set_num_threads(max(torch.get_num_threads() // 2, 1))  # the sampler thread gets the other half
        lines, ok = main_lines(shape, "builtin:char", False)
    print("\n".join(lines) + f"\ntotal {time.perf_counter() - start:.0f} s")
    return 0 if ok else 1



if __name__ == "__main__":
    sys.exit(main())

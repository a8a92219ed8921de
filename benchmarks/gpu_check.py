"""GPU check: a random ~0.4B Qwen3 through TEMPO steps with bf16, QLoRA on a shared base, FSDP2, and FSDP2 around
the shared QLoRA base, on one GPU; then vLLM against transformers' generate and a weight-sync round trip.

Runs offline (random weights from a config, a BPE tokenizer trained on the synthetic task) in a few minutes on one
GPU, then prints one summary table: step time, generation tokens/s, peak GPU memory, and whether every trainable
tensor of the policy and the critic moved (gradients flowed through the whole model). Exits non-zero when a run
fails or a model did not train. The vLLM rows (``benchmarks/vllm_vs_generate.py``: tokens/s of both engines on a
0.49B model at 1k-token responses, and the log-prob gap before and after a weight sync) are skipped, with a line
that says so, where vLLM is not installed.

    python benchmarks/gpu_check.py                 # on a GPU (about 0.37B parameters per model)
    python benchmarks/gpu_check.py --cpu-smoke     # tiny sizes on the CPU, 2 steps per run (the test suite runs it)
    python benchmarks/gpu_check.py --runs fsdp2_qlora_shared vllm_vs_generate   # some checks only
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from lightning.pytorch import Callback, Trainer  # noqa: E402
from torch.distributed.tensor import DTensor  # noqa: E402

import vllm_vs_generate  # noqa: E402  (beside this script: run as a script, its folder is on sys.path)
from vllm_vs_generate import EngineSizes, build_tokenizer_dir  # noqa: E402


@dataclass
class Sizes(EngineSizes):
    """Model and workload of one check: the vLLM check's, with RL steps and a LoRA rank."""

    steps: int
    lora_r: int


GPU = Sizes(hidden=1024, layers=24, heads=16, kv_heads=8, intermediate=3072, vocab=32768, prompts=8, n=4,
            max_new_tokens=256, steps=3, lora_r=32)
CPU_SMOKE = Sizes(hidden=64, layers=2, heads=4, kv_heads=2, intermediate=128, vocab=512, prompts=2, n=2,
                  max_new_tokens=8, steps=2, lora_r=4)


RUNS = ("bf16", "qlora_shared", "fsdp2", "fsdp2_qlora_shared")
VLLM_CHECK = "vllm_vs_generate"
QLORA_RUNS = ("qlora_shared", "fsdp2_qlora_shared")


@dataclass
class Result:
    name: str
    ok: bool = False
    params: float = 0.0  # parameters of the policy, billions
    trainable: float = 0.0  # trainable parameters of policy + critic, millions
    step_s: list[float] = field(default_factory=list)
    gen_tokens_per_s: list[float] = field(default_factory=list)
    peak_gib: float = 0.0
    moved: dict[str, str] = field(default_factory=dict)  # per model: "moved/total" trainable tensors
    error: Optional[str] = None


class StepProbe(Callback):
    """Records each RL step's timings and, over the run, which trainable tensors of policy and critic moved."""

    def __init__(self, result: Result) -> None:
        self.result = result
        self.before: dict[str, list[torch.Tensor]] = {}

    @staticmethod
    def _trainable(pl_module) -> dict[str, list[torch.Tensor]]:
        models = {"policy": pl_module.policy, "critic": pl_module.critic}
        out = {}
        for name, model in models.items():
            if model is not None:
                params = [p for p in model.parameters() if p.requires_grad]
                # the whole tensor of a sharded parameter (a collective: every rank runs this probe), so a rank
                # whose shard of a small tensor is empty does not count it as unmoved
                out[name] = [(p.full_tensor() if isinstance(p, DTensor) else p).detach().float().clone()
                             for p in params]
        return out

    def on_train_start(self, trainer, pl_module) -> None:
        self.before = self._trainable(pl_module)
        policy = pl_module.policy
        # numel of a sharded (DTensor) parameter is its full size
        self.result.params = sum(p.numel() for p in policy.parameters()) / 1e9
        self.result.trainable = sum(p.numel() for m in (policy, pl_module.critic) if m is not None
                                    for p in m.parameters() if p.requires_grad) / 1e6

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        metrics = pl_module.last_step.metrics if getattr(pl_module, "last_step", None) else {}
        step = _metric(metrics, "time/step_s")
        gen = _metric(metrics, "perf/generated_tokens_per_s")
        if step is not None:
            self.result.step_s.append(step)
        if gen is not None:
            self.result.gen_tokens_per_s.append(gen)

    def on_train_end(self, trainer, pl_module) -> None:
        after = self._trainable(pl_module)
        for name, tensors in after.items():
            moved = sum(not torch.equal(a, b) for a, b in zip(self.before[name], tensors))
            self.result.moved[name] = f"{moved}/{len(tensors)}"


def _metric(metrics: dict, name: str) -> Optional[float]:
    for key, value in metrics.items():
        if key == name or key.endswith("/" + name):
            return float(value)
    return None


def make_module(kind: str, sizes: Sizes, tokenizer: str, on_gpu: bool):
    """The TempoModule of one check: ``bf16`` (full fine-tuning, bf16 autocast), ``qlora_shared`` (NF4 base shared
    by two LoRA adapters), ``fsdp2`` (full fine-tuning sharded by FSDP2, bf16 compute), ``fsdp2_qlora_shared`` (the
    shared NF4 base and its two adapters sharded by FSDP2)."""
    from tempo_pl.config import AlgorithmConfig, TrainingConfig
    from tempo_pl.models.builders import CriticSpec, LoraSpec, ModelSpec
    from tempo_pl.module import TempoModule
    from tempo_pl.config import SamplingConfig

    config = sizes.qwen3_config()
    base = dict(config=config, tokenizer=tokenizer, seed=0, attn_implementation="sdpa")
    if kind in QLORA_RUNS:
        lora = LoraSpec(r=sizes.lora_r, alpha=2 * sizes.lora_r)
        # 4-bit storage in the compute dtype; bfloat16 on the GPU, float32 for the CPU smoke run
        dtype = "bfloat16" if on_gpu else "float32"
        policy = ModelSpec(**base, dtype=dtype, load_in_4bit=True, lora=lora, gradient_checkpointing=True)
        critic = CriticSpec(seed=1, lora=lora)
    else:
        # float32 master weights: a bfloat16 weight would swallow updates of lr x Adam's unit step
        policy = ModelSpec(**base, dtype="float32", gradient_checkpointing=kind == "bf16")
        critic = CriticSpec(seed=1, dtype="float32", gradient_checkpointing=kind == "bf16")
    kwargs = dict(
        policy=policy,
        critic=critic,
        sampling=SamplingConfig(n=sizes.n, max_new_tokens=sizes.max_new_tokens, max_prompt_length=512),
        algorithm=AlgorithmConfig(clip_low=0.2, clip_high=0.28),
        training=TrainingConfig(mini_batch_size=sizes.prompts, micro_batch_size=sizes.prompts * sizes.n,
                                forward_batch_size=sizes.prompts * sizes.n, group_filter=False),
        policy_optimizer=lambda params: torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0),
        critic_optimizer=lambda params: torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01),
    )
    return TempoModule(**kwargs, shared_base=kind in QLORA_RUNS)


def run_check(kind: str, sizes: Sizes, tokenizer: str, root: Path, on_gpu: bool) -> Result:
    from tempo_pl.callbacks import EMSchedule
    from tempo_pl.data.datamodule import TempoDataModule
    from tempo_pl.data.sources import DatasetSpec
    from tempo_pl.models.fsdp2 import FSDP2Recipe
    from tempo_pl.strategies import FSDP2Strategy

    result = Result(kind)
    try:
        module = make_module(kind, sizes, tokenizer, on_gpu)
        size = 8 * sizes.prompts * sizes.steps
        data = TempoDataModule(
            labeled=DatasetSpec(path=f"synthetic:labeled?size={size}"),
            unlabeled=DatasetSpec(path=f"synthetic:unlabeled?size={size}"),
            batch_size=sizes.prompts,
        )
        probe = StepProbe(result)
        strategy, precision = "auto", "32-true"
        if kind == "fsdp2":
            recipe = FSDP2Recipe(param_dtype="bfloat16" if on_gpu else None, activation_checkpointing=True)
            strategy = FSDP2Strategy(recipe)
        elif kind == "fsdp2_qlora_shared":
            # the packed 4-bit weights are gathered in their storage dtype (the QLoRA dtype of make_module)
            recipe = FSDP2Recipe(param_dtype="bfloat16" if on_gpu else "float32", activation_checkpointing=True)
            strategy = FSDP2Strategy(recipe)
        elif kind == "bf16" and on_gpu:
            precision = "bf16-mixed"
        trainer = Trainer(
            accelerator="gpu" if on_gpu else "cpu", devices=1, strategy=strategy, precision=precision,
            max_epochs=1, limit_train_batches=sizes.steps, limit_val_batches=0, num_sanity_val_steps=0,
            logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
            callbacks=[EMSchedule(mode="mixed"), probe], default_root_dir=str(root / kind),
        )
        if on_gpu:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        trainer.fit(module, datamodule=data)
        if on_gpu:
            result.peak_gib = torch.cuda.max_memory_allocated() / 1024**3
        moved_all = all(v.split("/")[0] == v.split("/")[1] for v in result.moved.values())
        result.ok = bool(result.moved) and moved_all and len(result.step_s) == sizes.steps
        del trainer, module
    except Exception:  # one failed check must not hide the others' numbers
        result.error = "\n".join(traceback.format_exc().splitlines()[-40:])
    return result


def render(results: list[Result], sizes: Sizes, device: str) -> str:
    lines = [
        f"GPU check on {device}: Qwen3 hidden {sizes.hidden}, {sizes.layers} layers, vocab {sizes.vocab}; "
        f"{sizes.prompts} prompts x {sizes.n} responses of <= {sizes.max_new_tokens} tokens, {sizes.steps} RL steps",
        "| run | policy params (B) | trainable (M) | step s (median) | gen tok/s (median) | peak GiB "
        "| tensors moved (policy, critic) | ok |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        step = statistics.median(r.step_s) if r.step_s else float("nan")
        gen = statistics.median(r.gen_tokens_per_s) if r.gen_tokens_per_s else float("nan")
        moved = ", ".join(f"{k} {v}" for k, v in r.moved.items()) or "-"
        lines.append(f"| {r.name} | {r.params:.3f} | {r.trainable:.1f} | {step:.2f} | {gen:.0f} | {r.peak_gib:.1f} "
                     f"| {moved} | {'yes' if r.ok else 'NO'} |")
    for r in results:
        if r.error:
            lines.append(f"\n{r.name} failed:\n{r.error}")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny sizes on the CPU, two RL steps per run")
    parser.add_argument("--runs", nargs="+", default=[*RUNS, VLLM_CHECK], choices=[*RUNS, VLLM_CHECK],
                        help=f"which checks to run, in this order ({VLLM_CHECK} last, whatever its place)")
    args = parser.parse_args(argv)
    on_gpu = not args.cpu_smoke
    if on_gpu and not torch.cuda.is_available():
        parser.error("no CUDA device: run with --cpu-smoke on a CPU machine")
    if not on_gpu:
        torch.set_num_threads(1)
    sizes = CPU_SMOKE if args.cpu_smoke else GPU
    device = torch.cuda.get_device_name() if on_gpu else "cpu"
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="tempo_gpu_check_") as tmp:
        root = Path(tmp)
        tokenizer = build_tokenizer_dir(sizes, root / "tokenizer")
        results = [run_check(kind, sizes, tokenizer, root, on_gpu) for kind in args.runs if kind in RUNS]
        if results:
            print(render(results, sizes, device), flush=True)
        vllm_ok = True
        if VLLM_CHECK in args.runs:
            engine_sizes = vllm_vs_generate.CPU_SMOKE if args.cpu_smoke else vllm_vs_generate.GPU
            lines, vllm_ok = vllm_vs_generate.main_lines(engine_sizes, tokenizer, on_gpu)
            print("\n" + "\n".join(lines))
    print(f"total {time.perf_counter() - start:.0f} s")
    return 0 if all(r.ok for r in results) and vllm_ok else 1


if __name__ == "__main__":
    sys.exit(main())

"""tempo-pl's GRPO step against TRL's ``GRPOTrainer`` on the same saved tiny Qwen3, and TEMPO's step against the
critic-free one.

Every side loads the same saved model and tokenizer, samples n responses to each of the same prompts (chat template,
temperature 1, exactly ``--tokens`` new tokens: EOS is held off by ``min_new_tokens`` on both sides), scores them with
the same reward function and takes one AdamW step of a GSPO loss (sequence-level ratio, seq-mean-token-mean,
clip 3e-4 / 5e-4, no KL) over one batch of prompts x n rows in one forward/backward pass, in float32 on the CPU.
A step's time is the wall time between the ends of consecutive steps, everything included (generation, scoring,
the update, the framework's loop and logging); generation tokens/s are the tokens over the time inside
``model.generate``. Each run is a fresh process of one side that takes ``--warmup`` steps, then ``--steps`` timed
ones; runs of the sides alternate, ``--runs`` times, and the medians are compared.

Sides: ``trl`` (``GRPOTrainer``), ``grpo`` (tempo-pl critic-free: advantage grpo, EMSchedule unlabeled),
``tempo_frozen`` (TEMPO: a critic from the policy's backbone, a mixed batch of labeled and unlabeled prompts,
critic learning rate 0, as the 7B and 8B paper configs) and ``tempo`` (the same with the critic trained).

TRL is an optional benchmark dependency: install it in a virtual environment of its own with this package
(``pip install torch==2.13.0 && pip install -e ".[bench]"``) and run the script with that environment's python.
Without TRL the tempo-pl sides still run and the TRL ratios are left out.

    python benchmarks/vs_trl.py                                  # tiny (hidden 64, 2 layers) and 19M (512, 8)
    python benchmarks/vs_trl.py --sizes tiny --runs 5 --sides trl grpo
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

SIZES = {
    # the tiny config's model (configs/tiny.yaml) and one of about 19M parameters
    "tiny": dict(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=128),
    "19m": dict(hidden_size=512, num_layers=8, num_heads=8, num_kv_heads=4, intermediate_size=1024),
}
SIDES = ("trl", "grpo", "tempo_frozen", "tempo")
TRL_MISSING = ("TRL is not installed: it is an optional benchmark dependency. Install it in a virtual environment of "
               "its own (python -m venv /tmp/trl-venv; /tmp/trl-venv/bin/pip install torch==2.13.0; "
               "/tmp/trl-venv/bin/pip install -e '.[bench]') and run this script with that python. "
               "Running the tempo-pl sides only.")
CLIP_LOW, CLIP_HIGH, LR = 3e-4, 5e-4, 1e-6
STAGES = ("generation", "scoring", "update")
"""A tempo-pl step's stages as the module times them (``train/time/<stage>_s``): collection with generation, the
no-grad pass (the critic's values) with scoring and advantages, the critic and policy updates (with the advantages
when the critic goes first: its own forward then gives the labeled rows' values, and scoring holds the unlabeled
rows' pass alone)."""


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--sides", nargs="+", default=list(SIDES), choices=list(SIDES))
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--n", type=int, default=4, help="samples per prompt")
    parser.add_argument("--tokens", type=int, default=64, help="new tokens of every response")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps at the start of each run")
    parser.add_argument("--steps", type=int, default=3, help="timed steps of each run")
    parser.add_argument("--runs", type=int, default=3, help="runs of each side, alternating")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads of every side")
    parser.add_argument("--worker", choices=SIDES, help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# ----------------------------------------------------------------------------------------------- shared pieces
def problems(count: int, start: int = 0) -> list[str]:
    return [f"Compute {7 * i + 3} * {i + 11} and add {'1' * (1 + i % 5)}. Box the answer."
            for i in range(start, start + count)]


def reward(prompts, completions, **kwargs) -> list[float]:
    """A reward that spreads within every group: the share of digits in the completion's text."""
    texts = [c if isinstance(c, str) else c[-1]["content"] for c in completions]
    return [sum(ch.isdigit() for ch in t) / max(len(t), 1) for t in texts]


def save_model(size: str, folder: Path) -> Path:
    from tempo_pl.models.builders import ModelSpec, build_policy, build_tokenizer
    from tempo_pl.models.tiny import BUILTIN_CHAR, tiny_qwen3_config

    spec = ModelSpec(config=tiny_qwen3_config(vocab_size=100, **SIZES[size]), tokenizer=BUILTIN_CHAR, seed=0)
    path = folder / size
    build_policy(spec).save_pretrained(path)
    build_tokenizer(spec).save_pretrained(path)
    return path


class GenerateClock:
    """Wraps ``model.generate``: forces ``tokens`` new tokens (no EOS before) and adds up its time and tokens."""

    def __init__(self, model, tokens: int) -> None:
        self.seconds, self.tokens, self.calls = 0.0, 0, 0
        inner = model.generate

        def generate(*args, **kwargs):
            kwargs["min_new_tokens"] = tokens
            kwargs["max_new_tokens"] = tokens
            start = time.perf_counter()
            out = inner(*args, **kwargs)
            self.seconds += time.perf_counter() - start
            self.calls += 1
            prompt = kwargs.get("input_ids", args[0] if args else None)
            sequences = out.sequences if hasattr(out, "sequences") else out
            self.tokens += sequences.shape[0] * (sequences.shape[1] - prompt.shape[1])
            return out

        model.generate = generate


class StepClock:
    """The time of each step: from the end of the previous step (or the start) to its own end."""

    def __init__(self) -> None:
        self.ends = [time.perf_counter()]
        self.generate: list[tuple[float, int]] = []
        self.stages: list[dict[str, float]] = []

    def step_ended(self, clock: GenerateClock, stages: Optional[dict[str, float]] = None) -> None:
        self.ends.append(time.perf_counter())
        self.generate.append((clock.seconds, clock.tokens))
        if stages is not None:
            self.stages.append(stages)

    def report(self, warmup: int) -> dict:
        steps = [b - a for a, b in zip(self.ends, self.ends[1:])][warmup:]
        gen = [(b[0] - a[0], b[1] - a[1]) for a, b in zip([(0.0, 0)] + self.generate, self.generate)][warmup:]
        out = {"step_seconds": steps, "generate_seconds": [s for s, _ in gen], "generate_tokens": [t for _, t in gen]}
        for name in STAGES if self.stages else ():
            out[f"{name}_seconds"] = [stages[name] for stages in self.stages[warmup:]]
        return out


# ----------------------------------------------------------------------------------------------- the sides
def run_trl(args: argparse.Namespace, model_dir: str) -> dict:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    rows = args.prompts * args.n
    total = args.warmup + args.steps
    data = Dataset.from_list([{"prompt": [{"role": "user", "content": p}]} for p in problems(args.prompts * total)])
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype="float32")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.padding_side = "left"
    clock, steps = GenerateClock(model, args.tokens), StepClock()

    class Timing(TrainerCallback):
        def on_train_begin(self, *a, **k):
            steps.ends = [time.perf_counter()]

        def on_step_end(self, *a, **k):
            steps.step_ended(clock)

    config = GRPOConfig(
        output_dir=tempfile.mkdtemp(prefix="vs_trl_"), per_device_train_batch_size=rows, num_generations=args.n,
        gradient_accumulation_steps=1, steps_per_generation=1, num_iterations=1, max_steps=total,
        max_completion_length=args.tokens, temperature=1.0, top_p=1.0, top_k=0, learning_rate=LR,
        weight_decay=0.0, lr_scheduler_type="constant", beta=0.0, epsilon=CLIP_LOW, epsilon_high=CLIP_HIGH,
        importance_sampling_level="sequence", loss_type="grpo", scale_rewards="group", max_grad_norm=1.0,
        use_cpu=True, bf16=False, fp16=False, report_to="none", save_strategy="no", logging_steps=1,
        disable_tqdm=True, shuffle_dataset=False, dataloader_num_workers=0, seed=0,
    )
    trainer = GRPOTrainer(model=model, reward_funcs=[reward], args=config, train_dataset=data,
                          processing_class=tokenizer, callbacks=[Timing()])
    trainer.train()
    return steps.report(args.warmup)


def run_tempo(args: argparse.Namespace, model_dir: str, side: str) -> dict:
    from functools import partial

    import torch
    from datasets import Dataset
    from lightning.pytorch import Callback, Trainer, seed_everything

    from tempo_pl.callbacks import EMSchedule
    from tempo_pl.config import AlgorithmConfig, TrainingConfig
    from tempo_pl.data.datamodule import TempoDataModule
    from tempo_pl.data.sources import DatasetSpec
    from tempo_pl.models.builders import CriticSpec, ModelSpec
    from tempo_pl.module import TempoModule
    from tempo_pl.rewards.function_reward import FunctionReward
    from tempo_pl.config import SamplingConfig

    seed_everything(0, verbose=False)
    total = args.warmup + args.steps
    rows = args.prompts * args.n
    texts = problems(args.prompts * total)
    critic = side != "grpo"
    unlabeled = DatasetSpec(data=Dataset.from_list([{"id": str(i), "problem": t} for i, t in enumerate(texts)]),
                            name="u")
    labeled = DatasetSpec(data=Dataset.from_list([{"id": str(i), "problem": t, "answer": "1"}
                                                  for i, t in enumerate(problems(len(texts), len(texts)))]), name="l")
    data = TempoDataModule(labeled=labeled if critic else None, unlabeled=unlabeled, batch_size=args.prompts,
                           prompt_template="{problem}")
    module = TempoModule(
        policy=ModelSpec(name_or_path=model_dir),
        critic=CriticSpec(init_from_policy=True, seed=0, head_init_std=0.02) if critic else None,  # lr 0 needs a head
        sampling=SamplingConfig(n=args.n, temperature=1.0, max_new_tokens=args.tokens, max_prompt_length=512),
        algorithm=AlgorithmConfig(advantage="em_token" if critic else "grpo", policy_loss="gspo",
                                  clip_low=CLIP_LOW, clip_high=CLIP_HIGH),
        training=TrainingConfig(mini_batch_size=args.prompts, micro_batch_size=rows, forward_batch_size=rows,
                                group_filter=False),
        # labeled rows take the same reward as the critic-free side's rows: the difference is the critic's alone
        labeled_reward=FunctionReward(reward, name="digits"),
        unlabeled_reward=None if critic else FunctionReward(reward, name="digits"),
        policy_optimizer=partial(torch.optim.AdamW, lr=LR, weight_decay=0.0),
        critic_optimizer=partial(torch.optim.AdamW, lr=0.0 if side == "tempo_frozen" else LR, weight_decay=0.0),
    )
    steps, holder = StepClock(), {}

    class Timing(Callback):
        def on_train_start(self, trainer, pl_module):
            holder["clock"] = GenerateClock(pl_module.policy, args.tokens)
            steps.ends = [time.perf_counter()]

        def on_train_batch_end(self, trainer, pl_module, *a):
            logged = pl_module.last_step.metrics
            steps.step_ended(holder["clock"], {name: logged[f"train/time/{name}_s"] for name in STAGES})

    trainer = Trainer(accelerator="cpu", devices=1, max_epochs=1, limit_train_batches=total, limit_val_batches=0,
                      num_sanity_val_steps=0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False,
                      callbacks=[EMSchedule(mode="mixed" if critic else "unlabeled"), Timing()])
    trainer.fit(module, datamodule=data)
    return steps.report(args.warmup)


# ----------------------------------------------------------------------------------------------- the driver
def run_side(args: argparse.Namespace, side: str, model_dir: Path) -> dict:
    command = [sys.executable, __file__, "--worker", side, "--model", str(model_dir), "--prompts", str(args.prompts),
               "--n", str(args.n), "--tokens", str(args.tokens), "--warmup", str(args.warmup),
               "--steps", str(args.steps), "--threads", str(args.threads)]
    done = subprocess.run(command, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"side {side} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(lines[-1])


def main(argv=None) -> None:
    args = parse_args(argv)
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(args.threads)
    if args.worker:
        result = run_trl(args, args.model) if args.worker == "trl" else run_tempo(args, args.model, args.worker)
        print(json.dumps(result))
        return
    sides = list(args.sides)
    if "trl" in sides and importlib.util.find_spec("trl") is None:
        print(TRL_MISSING)
        sides.remove("trl")
    if not sides:
        return
    with tempfile.TemporaryDirectory(prefix="vs_trl_models_") as folder:
        for size in args.sizes:
            model_dir = save_model(size, Path(folder))
            params = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(model_dir).parameters())
            results = {side: {} for side in sides}
            for _ in range(args.runs):
                for side in sides:
                    for key, values in run_side(args, side, model_dir).items():
                        results[side].setdefault(key, []).extend(values)
            report(size, params, args, results)


def report(size: str, params: int, args: argparse.Namespace, results: dict) -> None:
    print(f"\n== {size}: Qwen3 {SIZES[size]}, {params / 1e6:.2f}M parameters; {args.prompts} prompts x {args.n} "
          f"samples x {args.tokens} tokens; {args.runs} runs x {args.steps} timed steps per side, "
          f"{args.threads} thread(s)")
    step, gen = {}, {}
    for side, r in results.items():
        step[side] = statistics.median(r["step_seconds"])
        gen[side] = sum(r["generate_tokens"]) / sum(r["generate_seconds"])
        print(f"{side:<13}: step median {step[side]:7.3f} s (min {min(r['step_seconds']):.3f}, max "
              f"{max(r['step_seconds']):.3f}); generate {gen[side]:8.1f} tokens/s")
        if r.get("update_seconds"):
            print(" " * 15 + "stage medians: " + ", ".join(
                f"{name} {statistics.median(r[f'{name}_seconds']):.3f} s" for name in STAGES))
    if "trl" in step and "grpo" in step:
        print(f"step throughput tempo-pl grpo / TRL : {step['trl'] / step['grpo']:.2f}x (target >= 1.2)")
        print(f"generation tokens/s tempo-pl / TRL  : {gen['grpo'] / gen['trl']:.2f}x")
    for side, target in (("tempo_frozen", 1.1), ("tempo", 1.35)):
        if side in step and "grpo" in step:
            print(f"step time {side} / critic-free grpo : {step[side] / step['grpo']:.2f}x (target <= {target})")
    if "tempo_frozen" in step and "grpo" in step:
        # the frozen critic's whole cost is its value pass: one no-grad forward of a model of the policy's size over
        # every row (em_token reads V_t at every token), timed inside the scoring stage
        value_pass = (statistics.median(results["tempo_frozen"]["scoring_seconds"])
                      - statistics.median(results["grpo"]["scoring_seconds"]))
        print(f"the frozen critic's value pass: {value_pass:.3f} s = {value_pass / step['grpo']:.2f} of the "
              f"critic-free step (a frozen critic's step costs 1 + this, whatever else is shared)")


if __name__ == "__main__":
    main()

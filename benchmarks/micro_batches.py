"""Tokens/s of a policy update over rows of mixed lengths: a token budget per micro-batch against fixed row
micro-batches of the same memory peak, in the same run.

One step is ``tempo_pl.stages.minibatch.optimize`` with the policy's GSPO micro-loss and AdamW over one mini-batch of
every row, as ``TempoModule.update_policy`` runs it. Responses are 16 to 1,024 tokens (log-uniform, shuffled) after
prompts of 24 to 40. The fixed plan takes ``budget // (longest prompt + longest response)`` rows per micro-batch:
the most rows a pass can hold without ever exceeding the budget's padded tokens, so both plans have the same worst
case. Also shown: the fixed plan without the padding cut (every pass as wide as the rollout, as before token budgets).
Runs alternate between the plans; medians are compared. Peak memory is the live-tensor meter of
``logprobs_memory.py``.

    python benchmarks/micro_batches.py                       # 48 rows, budget 8,192 tokens, hidden 128, 2 layers
    python benchmarks/micro_batches.py --rows 64 --budget 16384 --hidden 256 --layers 4
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from _live_bytes import LiveBytes  # noqa: E402

from tempo_pl.algorithms.registry import policy_loss_fn  # noqa: E402
from tempo_pl.config import AlgorithmConfig  # noqa: E402
from tempo_pl.models.builders import ModelSpec, build_policy  # noqa: E402
from tempo_pl.models.forward import sequence_inputs  # noqa: E402
from tempo_pl.stages.minibatch import MiniBatchPlan, loss_units, optimize, row_inputs, row_tokens  # noqa: E402
from tempo_pl.stages.updates import policy_micro_loss  # noqa: E402
from tempo_pl.models.tiny import tiny_qwen3_config  # noqa: E402
from tempo_pl.types import ForwardStats, PromptBatch, Rollout  # noqa: E402


def mixed_rollout(rows: int, shortest: int, longest: int, seed: int = 0) -> Rollout:
    generator = torch.Generator().manual_seed(seed)
    ratios = torch.arange(rows) / max(rows - 1, 1)
    lengths = (shortest * (longest / shortest) ** ratios).round().long()
    lengths = lengths[torch.randperm(rows, generator=generator)]
    prompts = torch.randint(24, 41, (rows,), generator=generator)
    width_p, width_r = int(prompts.max()), int(lengths.max())
    prompt_mask = (torch.arange(width_p) >= width_p - prompts.unsqueeze(1)).long()
    response_mask = (torch.arange(width_r) < lengths.unsqueeze(1)).float()
    prompt_ids = torch.randint(4, 100, (rows, width_p), generator=generator) * prompt_mask
    response_ids = torch.randint(4, 100, (rows, width_r), generator=generator) * response_mask.long()
    batch = PromptBatch([str(i) for i in range(rows)], [""] * rows, [None] * rows, [False] * rows)
    return Rollout(prompt_ids, prompt_mask, response_ids, response_mask, texts=[""] * rows,
                   group_ids=torch.arange(rows), is_labeled=torch.zeros(rows, dtype=torch.bool),
                   truncated=torch.zeros(rows, dtype=torch.bool), prompt_batch=batch)


def full_width_inputs(rollout: Rollout):
    """Every pass as wide as the rollout: what ``row_inputs`` gave before it cut shared padding."""
    ids, attn, _ = sequence_inputs(rollout)
    return lambda rows: (ids[rows], attn[rows], rollout.response_ids[rows], rollout.response_mask[rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=48)
    parser.add_argument("--budget", type=int, default=8192, help="tokens per micro-batch")
    parser.add_argument("--shortest", type=int, default=16)
    parser.add_argument("--longest", type=int, default=1024)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (1: on a shared machine more threads wait on each other)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    rollout = mixed_rollout(args.rows, args.shortest, args.longest)
    spec = ModelSpec(config=tiny_qwen3_config(vocab_size=100, hidden_size=args.hidden, num_layers=args.layers,
                                              num_heads=4, num_kv_heads=2, intermediate_size=2 * args.hidden,
                                              max_position_embeddings=2 * (args.longest + 64)),
                     tokenizer="builtin:char", seed=0)
    base = build_policy(spec)
    alg = AlgorithmConfig(advantage="grpo")
    shape = rollout.response_mask.shape
    generator = torch.Generator().manual_seed(1)
    stats = ForwardStats(old_logprobs=-4.6 + 0.01 * torch.randn(shape, generator=generator), entropy=None)
    advantages = torch.randn(rollout.num_rows, 1, generator=generator).expand(shape).contiguous()
    prompt_tokens, response_tokens = row_tokens(rollout)
    widest = int(prompt_tokens.max() + response_tokens.max())
    rows_fixed = max(1, args.budget // widest)
    plans = {
        "fixed rows, full width": (MiniBatchPlan(args.rows, rows_fixed, 1, 1.0), full_width_inputs(rollout)),
        "fixed rows": (MiniBatchPlan(args.rows, rows_fixed, 1, 1.0), row_inputs(rollout, torch.device("cpu"))),
        "token budget": (MiniBatchPlan(args.rows, rows_fixed, 1, 1.0, args.budget, (prompt_tokens, response_tokens)),
                         row_inputs(rollout, torch.device("cpu"))),
    }

    def step(name: str, meter: bool = False):
        plan, inputs = plans[name]
        model = copy.deepcopy(base)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
        shapes = []

        def counted(rows):
            out = inputs(rows)
            shapes.append(tuple(out[0].shape))
            return out

        loss = policy_micro_loss(model, counted, rollout, stats, advantages, alg, 1.0,
                                 lambda *a: policy_loss_fn(alg.policy_loss).fn(*a, alg))
        live = LiveBytes() if meter else None
        start = time.perf_counter()
        with live or contextlib.nullcontext():
            optimize(rollout.num_rows, plan, optimizer, None, loss, lambda v: v.backward(),
                     lambda opt, value: torch.nn.utils.clip_grad_norm_(model.parameters(), value),
                     units=loss_units(rollout.response_mask, alg.loss_agg_mode))
        return time.perf_counter() - start, shapes, (live.peak if live else 0)

    tokens = int(rollout.response_mask.sum() + rollout.prompt_mask.sum())
    peaks = {name: step(name, meter=True) for name in plans}  # also the warm-up
    times = {name: [] for name in plans}
    for _ in range(args.repeats):
        for name in plans:
            times[name].append(step(name)[0])
    print(f"{args.rows} rows: prompts 24-40 tokens, responses {args.shortest}-{args.longest} tokens (log-uniform), "
          f"{tokens} tokens in all; Qwen3 hidden {args.hidden}, {args.layers} layers, fp32, CPU, "
          f"{args.threads} threads; one GSPO step with AdamW; {args.repeats} alternating repeats, medians")
    print(f"budget {args.budget} tokens; fixed plans: {rows_fixed} rows per micro-batch (budget // {widest}, the "
          f"widest row)")
    rates = {}
    for name in plans:
        median = statistics.median(times[name])
        rates[name] = tokens / median
        _, shapes, peak = peaks[name]
        padded = sum(rows * width for rows, width in shapes)
        print(f"{name:<23}: {rates[name]:8.0f} tokens/s (median {median:.2f} s); {len(shapes):3d} passes, "
              f"{padded} padded tokens, largest pass {max(r * w for r, w in shapes)} tokens; "
              f"peak {peak / 2**20:.0f} MiB")
    print(f"ratio token budget / fixed rows : {rates['token budget'] / rates['fixed rows']:.2f} (target >= 1.3)")
    print(f"ratio token budget / full width : {rates['token budget'] / rates['fixed rows, full width']:.2f}")


if __name__ == "__main__":
    main()

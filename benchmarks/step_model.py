"""A cost model of one RL step of the paper configs (configs/tempo/{olmo3_7b,qwen3_8b,qwen3_14b}_aime.yaml) on 1, 2,
4 and 8 nodes of 8 GPUs: step time and memory per GPU, for vLLM colocated with training and for a separate vLLM
server, with ``rollout_ahead`` 0 and 1. A model on paper, not a measurement; docs/multinode.md shows its table.

What it counts (per rank; the global batch of each config is kept, so W ranks take ``global / W`` prompts each):

- generation: decoding is memory-bound. Each decode step reads the weights once and the KV cache of the rows still
  running, at ``DECODE_BW_EFFICIENCY`` of the GPU's memory bandwidth, plus a fixed overhead per step (kernel launches,
  sampling, Python). The batch runs until its longest response ends (``max_new_tokens``); the rows hold
  ``MEAN_RESPONSE_FRACTION`` of it on average. Compute is checked too (2 FLOPs per parameter and token).
- generation capacity: the rows decoding at once are those whose KV cache (at the mean length) fits beside the
  bfloat16 weights in ``KV_MEMORY_FRACTION`` of the GPU; more rows decode in waves.
- update: FLOPs = ``UPDATE_FLOPS_PER_PARAM_TOKEN`` x (policy + critic parameters) x tokens (mixed step: each model's
  forward, backward and activation checkpointing's recomputed forward, 8, plus one forward without grad, 2) at
  ``UPDATE_MFU``, plus a fixed time per pass (one micro-batch of one model, with or without grad). Under FSDP2 every
  micro-batch's forward gathers the weights and its backward reduce-scatters the gradients; the slower of compute
  and that traffic counts (FSDP2 prefetches, so they overlap).
- weight sync: colocated, each rank's engine gathers the whole policy in bfloat16 from the shards; a server receives
  it over the network.
- memory: docs/memory.md's accounting (benchmarks/memory_table.py) on the config with W ranks and its per-rank batch.

Calibration: the overhead per decode step of Hugging Face ``generate`` and the update's time per pass are fitted to
the ``bf16`` row of docs/gpu_check.md (H200); ``fsdp2`` is the check. The 0.37B model of that row is dominated by
fixed costs, so the utilisation of a 7B-14B update cannot be fitted on it: ``UPDATE_MFU`` is assumed. vLLM has no measured GPU row yet: its overhead per
decode step is an assumption (CUDA graphs), stated in ``VLLM_DECODE_OVERHEAD_S``. The published figures of
:data:`PUBLISHED` are what its predictions are held against.

Usage::

    python benchmarks/step_model.py               # the table (markdown)
    python benchmarks/step_model.py --calibration # the calibration rows, measured and modelled
"""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import yaml

import memory_table  # a sibling script: run as a script, its folder is first on the path

from tempo_pl.run.config_layers import read_layers

GIB = 1024**3


@dataclass(frozen=True)
class Gpu:
    name: str
    bf16_flops: float  # dense peak
    hbm_bytes_per_s: float
    memory_gib: float
    nvlink_bytes_per_s: float  # per GPU, within a node
    network_bytes_per_s: float  # per GPU, between nodes (one 400 Gb/s NIC per GPU)


H100 = Gpu("H100", 989e12, 3.35e12, 80, 450e9, 50e9)
H200 = Gpu("H200", 989e12, 4.8e12, 141, 450e9, 50e9)
H20 = Gpu("H20", 148e12, 4.0e12, 96, 450e9, 50e9)

DECODE_BW_EFFICIENCY = 0.6
"""Fraction of memory bandwidth a decode step reaches (assumed; typical of batched decoding)."""
MEAN_RESPONSE_FRACTION = 0.5
"""Mean response length over ``max_new_tokens`` (assumed; reasoning runs on AIME often hit the limit)."""
UPDATE_FLOPS_PER_PARAM_TOKEN = 10
"""FLOPs per parameter and token of one model in a mixed step: forward 2, backward 4, recomputed forward 2, a forward
without grad (old log-probs or values) 2."""
PASSES_PER_MICRO_BATCH = 4
"""Policy and critic, each with and without grad."""
UPDATE_MFU = 0.35
"""Model-FLOPs utilisation of a 7B-14B FSDP2 update in bfloat16 (assumed)."""
KV_MEMORY_FRACTION = 0.9
VLLM_DECODE_OVERHEAD_S = 0.004
"""Overhead of one vLLM decode step, CUDA graphs on (assumed: no vLLM GPU row is measured yet)."""
GPUS_PER_NODE = 8
NODES = (1, 2, 4, 8)


@dataclass(frozen=True)
class CalibrationRow:
    """A measured row of docs/gpu_check.md and the workload behind it (benchmarks/gpu_check.py's GPU sizes)."""

    name: str
    policy_params: float
    critic_params: float
    weight_bytes: float  # bytes per weight that generate reads (float32 master weights under bf16 autocast)
    rows: int  # one micro-batch: gpu_check passes the whole batch at once
    prompt_tokens: int
    response_tokens: int
    step_s: float
    gen_tokens_per_s: float


GPU_CHECK_ROWS = (
    CalibrationRow("bf16", 0.369e9, 0.336e9, 4, 32, 40, 256, 10.51, 967),
    CalibrationRow("fsdp2", 0.369e9, 0.336e9, 2, 32, 40, 256, 10.09, 949),
)
"""docs/gpu_check.md, H200, 2026-11-28 (gen tok/s and step s are medians of 3 steps; prompts of ~40 tokens)."""


@dataclass(frozen=True)
class Calibration:
    hf_decode_overhead_s: float
    update_pass_s: float


def fit_calibration(row: CalibrationRow = GPU_CHECK_ROWS[0], gpu: Gpu = H200) -> Calibration:
    """The decode overhead and update utilisation that reproduce ``row`` exactly."""
    decode_step = row.rows / row.gen_tokens_per_s
    overhead = decode_step - _decode_memory_s(row.policy_params * row.weight_bytes, 0.0, gpu)
    gen_s = row.rows * row.response_tokens / row.gen_tokens_per_s
    update = row.step_s - gen_s - _update_flops_s(row, gpu)
    return Calibration(overhead, update / PASSES_PER_MICRO_BATCH)


def _update_flops_s(row: CalibrationRow, gpu: Gpu) -> float:
    tokens = row.rows * (row.prompt_tokens + row.response_tokens)
    return UPDATE_FLOPS_PER_PARAM_TOKEN * (row.policy_params + row.critic_params) * tokens / (gpu.bf16_flops * UPDATE_MFU)


def _decode_memory_s(weight_bytes: float, kv_bytes: float, gpu: Gpu) -> float:
    return (weight_bytes + kv_bytes) / (gpu.hbm_bytes_per_s * DECODE_BW_EFFICIENCY)


def predict_calibration_row(row: CalibrationRow, calibration: Calibration, gpu: Gpu = H200) -> tuple[float, float]:
    """(step s, generation tokens/s) of a gpu_check row: Hugging Face generate, every row runs to the limit."""
    decode_step = calibration.hf_decode_overhead_s + _decode_memory_s(row.policy_params * row.weight_bytes, 0.0, gpu)
    gen_s = row.response_tokens * decode_step
    update = _update_flops_s(row, gpu) + PASSES_PER_MICRO_BATCH * calibration.update_pass_s
    return gen_s + update, row.rows * row.response_tokens / gen_s


# ------------------------------------------------------------------------------------------ the paper configs


@dataclass(frozen=True)
class Workload:
    config: str
    model: str
    params: float  # policy
    critic_params: float
    global_prompts: int
    n: int
    prompt_tokens: int
    max_response_tokens: int
    kv_bytes_per_token: float


def config_layers(config: str) -> tuple[Path, Path]:
    """A paper run's config files: the AIME base, then the model's overlay."""
    return memory_table.CONFIG_DIR / "aime.yaml", memory_table.CONFIG_DIR / f"{config}.yaml"


def workload(config: str) -> Workload:
    cfg = read_layers(config_layers(config))
    model = next(v for k, v in memory_table.CONFIG_MODELS.items() if config.startswith(k))
    init, data = cfg["model"]["init_args"], cfg["data"]["init_args"]
    sampling = init["sampling"]
    ranks = int(cfg["trainer"]["devices"]) * int(cfg["trainer"].get("num_nodes", 1))
    kv = memory_table.kv_bytes_per_row(model, 1024) / 1024
    return Workload(config, model, memory_table.count_parameters(model).total,
                    memory_table.count_parameters(model, with_lm_head=False).total, int(data["batch_size"]) * ranks,
                    int(sampling["n"]), int(sampling["max_prompt_length"]) // 4, int(sampling["max_new_tokens"]), kv)


@dataclass(frozen=True)
class Prediction:
    config: str
    nodes: int
    layout: str  # colocated | server
    rollout_ahead: int
    generation_s: float
    update_s: float
    sync_s: float
    step_s: float
    memory_gib: float  # per training GPU


def generation_s(w: Workload, rows: int, gpu: Gpu, overhead_s: float = VLLM_DECODE_OVERHEAD_S,
                 tensor_parallel: int = 1) -> float:
    """Continuous-batched decoding of ``rows`` responses on ``tensor_parallel`` GPUs."""
    mean = MEAN_RESPONSE_FRACTION * w.max_response_tokens
    free = gpu.memory_gib * GIB * KV_MEMORY_FRACTION - 2 * w.params / tensor_parallel
    at_once = max(1, int(free // ((w.prompt_tokens + mean) * w.kv_bytes_per_token / tensor_parallel)))
    waves = -(-rows // at_once)
    steps = waves * w.max_response_tokens  # the longest response of a wave keeps it decoding
    weight_read = steps * 2 * w.params / tensor_parallel
    kv_read = rows * (w.prompt_tokens * mean + mean * mean / 2) * w.kv_bytes_per_token / tensor_parallel
    memory = steps * overhead_s + _decode_memory_s(weight_read, kv_read, gpu)
    compute = 2 * w.params * rows * mean / (tensor_parallel * gpu.bf16_flops * 0.5)
    return max(memory, compute)


def update_s(w: Workload, rows: int, ranks: int, gpu: Gpu, calibration: Calibration) -> float:
    """The update of ``rows`` rows, one row per micro-batch (the paper configs' micro_batch_size 1)."""
    mean = MEAN_RESPONSE_FRACTION * w.max_response_tokens
    tokens = rows * (w.prompt_tokens + mean)
    compute = UPDATE_FLOPS_PER_PARAM_TOKEN * (w.params + w.critic_params) * tokens / (gpu.bf16_flops * UPDATE_MFU)
    passes = PASSES_PER_MICRO_BATCH if w.critic_params else PASSES_PER_MICRO_BATCH // 2  # no critic: policy only
    fixed = rows * passes * calibration.update_pass_s
    if ranks == 1:
        return compute + fixed
    bandwidth = gpu.nvlink_bytes_per_s if ranks <= GPUS_PER_NODE else gpu.network_bytes_per_s
    # per row and model: bf16 weights gathered for the forward without grad, the forward and the backward (3 x 2
    # bytes), float32 gradients reduce-scattered (4 bytes)
    traffic = rows * 10 * (w.params + w.critic_params) * (ranks - 1) / ranks / bandwidth
    return max(compute, traffic) + fixed


def memory_gib(config: str, ranks: int, layout: str) -> float:
    """docs/memory.md's peak per GPU with ``ranks`` ranks sharing the global batch (the server layout's training
    GPUs hold no rollout)."""
    cfg = read_layers(config_layers(config))
    global_prompts = int(cfg["data"]["init_args"]["batch_size"]) * int(cfg["trainer"]["devices"])
    cfg["trainer"]["devices"] = ranks
    cfg["data"]["init_args"]["batch_size"] = max(1, global_prompts // ranks)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"{config}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        row = memory_table.estimate([path])
    return (row.resident + (row.training if layout == "server" else max(row.training, row.rollout)))


def predict(config: str, nodes: int, layout: str, rollout_ahead: int, gpu: Gpu = H100,
            calibration: Optional[Calibration] = None) -> Prediction:
    """One step of ``config`` on ``nodes`` x 8 GPUs. ``server``: half the GPUs train, half serve vLLM (tensor
    parallel 1, the rows shared among them); ``rollout_ahead`` 1 overlaps the next batch's generation with this
    update where generation has GPUs of its own (server), and changes nothing colocated (the GPUs are time-shared)."""
    calibration = calibration or fit_calibration()
    w = workload(config)
    gpus = nodes * GPUS_PER_NODE
    train_ranks = gpus if layout == "colocated" else gpus // 2
    rows_per_trainer = w.global_prompts * w.n / train_ranks
    if layout == "colocated":
        gen = generation_s(w, int(rows_per_trainer), gpu)
        bandwidth = gpu.nvlink_bytes_per_s if nodes == 1 else gpu.network_bytes_per_s
        sync = 2 * w.params * (train_ranks - 1) / train_ranks / bandwidth
    else:
        gen = generation_s(w, int(w.global_prompts * w.n / (gpus - train_ranks)), gpu)
        sync = 2 * w.params / (gpu.network_bytes_per_s * GPUS_PER_NODE)  # to the servers, over every NIC of a node
    upd = update_s(w, int(rows_per_trainer), train_ranks, gpu, calibration)
    overlapped = layout == "server" and rollout_ahead == 1
    step = max(gen, upd + sync) if overlapped else gen + upd + sync
    return Prediction(config, nodes, layout, rollout_ahead, gen, upd, sync, step, memory_gib(config, train_ranks, layout))


PAPER_CONFIGS = ("olmo3_7b_aime", "qwen3_8b_aime", "qwen3_14b_aime")

PUBLISHED = {"verl_dapo_7b_16xH20_s_per_step": 749.0, "verl_dapo_7b_16xH20_one_step_off_s_per_step": 520.0,
             "nemo_rl_grpo_llama31_8b_16xH100_tokens_per_s_per_gpu": 1562.0}
"""Published figures to hold the model against (verl's one-step-off recipe page; NeMo-RL's performance page)."""


def published_comparison(calibration: Calibration) -> list[str]:
    """The model on the published workloads, with shapes assumed where the sources do not state them: DAPO on
    Qwen2.5-7B without a critic, 512 prompts x 16 responses of up to 20k tokens (verl's DAPO recipe); GRPO on Llama-3.1-8B, 512 x 16
    responses of up to 4k tokens, no critic."""
    dapo = Workload("dapo", "Qwen2.5-7B", 7.6e9, 0.0, 512, 16, 1024, 20480, 2 * 28 * 4 * 128 * 2)
    rows = 512 * 16 // 16
    sync = 2 * dapo.params / H20.network_bytes_per_s
    gen, upd = generation_s(dapo, rows, H20), update_s(dapo, rows, 16, H20, calibration)
    off_gen, off_upd = generation_s(dapo, rows * 2, H20), update_s(dapo, rows * 2, 8, H20, calibration)
    llama = Workload("grpo", "Llama-3.1-8B", 8.0e9, 0.0, 512, 16, 256, 4096, 2 * 32 * 8 * 128 * 2)
    l_gen, l_upd = generation_s(llama, rows, H100), update_s(llama, rows, 16, H100, calibration)
    tokens = 512 * 16 * (llama.prompt_tokens + MEAN_RESPONSE_FRACTION * llama.max_response_tokens)
    return [f"| verl DAPO 7B on 16 H20, s/step | 749 | {gen + upd + sync:.0f} |",
            f"| same, one-step-off (8 train + 8 generate), s/step | 520 | {max(off_gen, off_upd + sync):.0f} |",
            f"| NeMo-RL GRPO Llama-3.1-8B on 16 H100, tokens/s/GPU | 1562 | {tokens / (l_gen + l_upd) / 16:.0f} |"]


def render(gpu: Gpu = H100) -> str:
    calibration = fit_calibration()
    lines = [f"Step model on {gpu.name} nodes of 8 (benchmarks/step_model.py; calibrated: HF decode overhead "
             f"{calibration.hf_decode_overhead_s * 1e3:.1f} ms/step, {calibration.update_pass_s:.2f} s per update pass; "
             f"assumed: update MFU {UPDATE_MFU}, vLLM overhead {VLLM_DECODE_OVERHEAD_S * 1e3:.0f} ms/step, mean "
             f"response {MEAN_RESPONSE_FRACTION} x max_new_tokens)", "",
             "| config | nodes | colocated: generation + update + sync s | colocated step s (ahead 0 and 1) | "
             "server step s, ahead 0 | server step s, ahead 1 | GiB/GPU colocated | GiB/GPU server's trainers |",
             "|---|---|---|---|---|---|---|---|"]
    for config in PAPER_CONFIGS:
        for nodes in NODES:
            colocated = predict(config, nodes, "colocated", 0, gpu, calibration)
            server = [predict(config, nodes, "server", ahead, gpu, calibration) for ahead in (0, 1)]
            lines.append(f"| {config} | {nodes} | {colocated.generation_s:.0f} + {colocated.update_s:.0f} + "
                         f"{colocated.sync_s:.1f} | {colocated.step_s:.0f} | {server[0].step_s:.0f} | "
                         f"{server[1].step_s:.0f} | {colocated.memory_gib:.1f} | {server[0].memory_gib:.1f} |")
    lines += ["", "| published | figure | model |", "|---|---|---|", *published_comparison(calibration)]
    return "\n".join(lines)


def calibration_table() -> str:
    calibration = fit_calibration()
    lines = ["| gpu_check row | step s measured | modelled | gen tok/s measured | modelled |", "|---|---|---|---|---|"]
    for row in GPU_CHECK_ROWS:
        step, gen = predict_calibration_row(row, calibration)
        lines.append(f"| {row.name} | {row.step_s:.2f} | {step:.2f} | {row.gen_tokens_per_s:.0f} | {gen:.0f} |")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calibration", action="store_true", help="print the calibration rows only")
    parser.add_argument("--gpu", choices=("H100", "H200"), default="H100")
    args = parser.parse_args(argv)
    text = calibration_table() if args.calibration else render({"H100": H100, "H200": H200}[args.gpu])
    print(text)
    return text


if __name__ == "__main__":
    main()

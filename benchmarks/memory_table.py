"""Estimated GPU memory per rank of the paper runs (configs/tempo: aime.yaml + a model [+ its QLoRA] overlay), written
to docs/memory.md.

Nothing is downloaded: the architecture numbers of the three hub models are stored below (with their source), turned
into Hugging Face configs and instantiated on the meta device, so every parameter is counted exactly, by kind. The
run settings (GPUs, FSDP2 recipe, dtypes, 4-bit, LoRA rank, batch, lengths) are read from each run's YAML layers.
The estimate is a model, not a measurement; what it counts:

- weights / grads / optimizer: what stays on the GPU between steps. Full fine-tuning keeps ``ModelSpec.dtype`` master
  weights, gradients of the same dtype and two AdamW moments, sharded over the ranks (on the CPU with
  ``cpu_offload``, shown apart). QLoRA keeps NF4 linear weights (0.5 byte + absmax, double-quantized), the other
  weights in the model dtype, and float32 adapters with their gradients and moments.
- training: one micro-batch forward/backward: the decoder layers FSDP2 holds gathered (2 + the root), the activation
  checkpoints (one hidden state per layer and token), one layer's recomputation, and the response logits in float32
  with log-softmax, entropy and their gradients (16 bytes per token and vocabulary entry; the largest single item).
- rollout: the policy gathered for ``generate`` (FSDP2) plus the KV cache of the rank's batch (batch x n rows of
  prompt + response tokens; sliding-window layers keep their window only).

Usage::

    python benchmarks/memory_table.py            # print the table
    python benchmarks/memory_table.py --write    # regenerate docs/memory.md
"""

from __future__ import annotations

import argparse
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from tempo_pl.run.config_layers import read_layers

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = ROOT / "configs" / "tempo"
DOC = ROOT / "docs" / "memory.md"
GPU_GIB = 80
GIB = 1024**3

#: architecture numbers of the hub models (config.json of each repository), the fields a parameter count needs
HUB_CONFIGS = {
    "OLMo3-7B": {
        "source": "allenai/Olmo-3-1025-7B config.json",
        "model_type": "olmo3", "vocab_size": 100278, "hidden_size": 4096, "num_hidden_layers": 32,
        "num_attention_heads": 32, "num_key_value_heads": 32, "intermediate_size": 11008,
        "sliding_window": 4096, "tie_word_embeddings": False,  # 3 of every 4 layers use the window
    },
    "Qwen3-8B": {
        "source": "Qwen/Qwen3-8B config.json",
        "model_type": "qwen3", "vocab_size": 151936, "hidden_size": 4096, "num_hidden_layers": 36,
        "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128, "intermediate_size": 12288,
        "tie_word_embeddings": False,
    },
    "Qwen3-14B": {
        "source": "Qwen/Qwen3-14B config.json",
        "model_type": "qwen3", "vocab_size": 151936, "hidden_size": 5120, "num_hidden_layers": 40,
        "num_attention_heads": 40, "num_key_value_heads": 8, "head_dim": 128, "intermediate_size": 17408,
        "tie_word_embeddings": False,
    },
}
#: which hub model each config file trains (the YAMLs name local Stage-1 checkpoints, not the hub repository)
CONFIG_MODELS = {"olmo3_7b": "OLMo3-7B", "qwen3_8b": "Qwen3-8B", "qwen3_14b": "Qwen3-14B"}

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
NF4_BYTES = 0.5 + 1 / 64 + 4 / (64 * 256)  # 4-bit codes + 8-bit absmax per 64 + float32 absmax per 256 blocks
LOGIT_BYTES_TRAIN = 16  # float32 logits, log-softmax, softmax for the entropy, and the logits' gradient
ADAM_BYTES = 8  # two moments per trainable parameter, in its dtype (float32 here)


@dataclass
class ParamCounts:
    """Parameters of one model, by kind."""

    total: int
    linear: int  # decoder-layer linear weights: what NF4 quantizes and LoRA adapts
    lora_per_rank: int  # sum of (in + out) over the decoder-layer linears: LoRA parameters per unit of rank
    per_layer: int  # one decoder layer
    root: int  # embeddings, final norm, LM head (what FSDP2's root module holds)


@dataclass
class Row:
    config: str
    model: str
    setup: str
    gpus: int
    weights: float
    grads: float
    optimizer: float
    training: float
    rollout: float
    cpu: float
    prompts_per_generate: int  # the most prompts (x n rows) one generate call can hold within the GPU

    @property
    def resident(self) -> float:
        return self.weights + self.grads + self.optimizer

    @property
    def peak(self) -> float:
        return self.resident + max(self.training, self.rollout)


@functools.lru_cache(maxsize=None)
def count_parameters(model_name: str, with_lm_head: bool = True) -> ParamCounts:
    """Exact parameter counts of a hub model, from its stored config, on the meta device."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    fields = {k: v for k, v in HUB_CONFIGS[model_name].items() if k not in ("source", "model_type")}
    config = AutoConfig.for_model(HUB_CONFIGS[model_name]["model_type"], **fields)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    layers = model.model.layers
    linear = lora = 0
    for module in layers.modules():
        if isinstance(module, torch.nn.Linear):
            linear += module.weight.numel()
            lora += module.in_features + module.out_features
    total = sum(p.numel() for p in model.parameters())
    head = model.lm_head.weight.numel()
    if not with_lm_head:  # the critic: a value head (hidden -> 1, with bias) instead of the LM head
        total += config.hidden_size + 1 - head
        head = config.hidden_size + 1
    per_layer = sum(p.numel() for p in layers[0].parameters())
    return ParamCounts(total=total, linear=linear, lora_per_rank=lora, per_layer=per_layer,
                       root=total - per_layer * len(layers))


def kv_bytes_per_row(model_name: str, tokens: int) -> float:
    """KV cache of one sequence of ``tokens`` tokens in bfloat16; sliding-window layers hold their window."""
    from transformers import AutoConfig

    fields = {k: v for k, v in HUB_CONFIGS[model_name].items() if k not in ("source", "model_type")}
    config = AutoConfig.for_model(HUB_CONFIGS[model_name]["model_type"], **fields)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    per_token_layer = 2 * config.num_key_value_heads * head_dim * 2
    window = getattr(config, "sliding_window", None)
    layer_types = getattr(config, "layer_types", None) or ["full_attention"] * config.num_hidden_layers
    held = sum(min(tokens, window) if kind == "sliding_attention" and window else tokens for kind in layer_types)
    return held * per_token_layer


def _init_args(node: Optional[dict]) -> dict:
    return (node or {}).get("init_args", node or {}) if isinstance(node, dict) else {}


def estimate(layers: Sequence[Path]) -> Row:
    """The memory estimate of one run: its config files, base first (the row is named by the last one)."""
    cfg = read_layers(layers)
    stem = Path(layers[-1]).stem
    model_name = next(v for k, v in CONFIG_MODELS.items() if stem.startswith(k))
    trainer, init = cfg["trainer"], cfg["model"]["init_args"]
    data = _init_args(cfg["data"])
    strategy = trainer.get("strategy")
    fsdp = isinstance(strategy, dict) and strategy["class_path"].endswith("FSDP2Strategy")
    recipe = _init_args(strategy).get("recipe", {}) if fsdp else {}
    gpus = int(trainer.get("devices", 1)) if fsdp else 1
    compute_bytes = DTYPE_BYTES[recipe.get("param_dtype") or init["policy"].get("dtype", "float32")] if fsdp else 2

    hub = HUB_CONFIGS[model_name]
    hidden, vocab, layers = hub["hidden_size"], hub["vocab_size"], hub["num_hidden_layers"]
    sampling, training = init["sampling"], init["training"]
    prompt, response, n = sampling["max_prompt_length"], sampling["max_new_tokens"], sampling["n"]
    tokens = prompt + response
    prompts = int(data["batch_size"])
    # prompts per generate call: training.generation_batch_size chunks the rank's batch (None = all at once)
    per_generate = min(prompts, int(training.get("generation_batch_size") or prompts))

    models = [("policy", init["policy"], count_parameters(model_name, with_lm_head=True))]
    if init.get("critic") is not None:
        models.append(("critic", init["critic"], count_parameters(model_name, with_lm_head=False)))

    weights = grads = optimizer = cpu = gathered = 0.0
    for _, spec, counts in models:
        master = DTYPE_BYTES[spec.get("dtype", "float32")]
        if spec.get("load_in_4bit"):
            adapters = counts.lora_per_rank * spec["lora"]["r"]
            weights += counts.linear * NF4_BYTES + (counts.total - counts.linear) * master + adapters * 4
            grads += adapters * 4
            optimizer += adapters * ADAM_BYTES
            continue
        shard = counts.total / gpus
        resident = (shard * master, shard * master, shard * ADAM_BYTES)
        if recipe.get("cpu_offload"):
            cpu += sum(resident)
        else:
            weights, grads, optimizer = weights + resident[0], grads + resident[1], optimizer + resident[2]
        if fsdp:  # two decoder layers in flight and the root, gathered in the compute dtype
            gathered = max(gathered, (2 * counts.per_layer + counts.root) * compute_bytes)

    micro = int(training["micro_batch_size"])
    intermediate = hub["intermediate_size"]
    heads, kv_heads = hub["num_attention_heads"], hub["num_key_value_heads"]
    head_dim = hub.get("head_dim", hidden // heads)
    checkpoints = micro * tokens * hidden * 2 * layers
    one_layer = micro * tokens * (6 * hidden + 2 * (heads + 2 * kv_heads) * head_dim + 3 * intermediate) * 2
    logits = micro * (response + 1) * vocab * LOGIT_BYTES_TRAIN
    training_bytes = gathered + checkpoints + one_layer + logits
    policy_counts = models[0][2]
    generation_weights = policy_counts.total * compute_bytes if fsdp else 0.0
    kv_row = kv_bytes_per_row(model_name, tokens)
    rollout_bytes = generation_weights + per_generate * n * kv_row
    free_for_kv = GPU_GIB * GIB - (weights + grads + optimizer) - generation_weights
    prompts_per_generate = max(int(free_for_kv // (n * kv_row)), 0)

    setup = (
        f"FSDP2, {recipe.get('param_dtype') or 'param dtype'} compute" + (", CPU offload" if recipe.get("cpu_offload") else "")
        if fsdp else f"QLoRA r={init['policy']['lora']['r']}"
    )
    setup += f", {prompts}x{n} rows" + (f", generate {per_generate}x{n}" if per_generate < prompts else "")
    return Row(stem, model_name, setup, gpus, weights / GIB, grads / GIB, optimizer / GIB, training_bytes / GIB,
               rollout_bytes / GIB, cpu / GIB, prompts_per_generate)


def config_runs() -> list[tuple[Path, ...]]:
    """Every paper run's layers: ``aime.yaml`` and a model's overlay, and after it the model's QLoRA overlay."""
    base, runs = CONFIG_DIR / "aime.yaml", []
    for model in sorted(p for p in CONFIG_DIR.glob("*_aime.yaml") if any(p.stem.startswith(k) for k in CONFIG_MODELS)):
        runs.append((base, model))
        qlora = model.with_name(f"{model.stem}_qlora.yaml")
        if qlora.is_file():
            runs.append((base, model, qlora))
    return sorted(runs, key=lambda layers: layers[-1].stem)


def render(rows: list[Row]) -> str:
    sources = "\n".join(f"- {name}: {info['source']}" for name, info in HUB_CONFIGS.items())
    lines = [
        "# Estimated GPU memory per rank of the paper configs",
        "",
        "Generated by `python benchmarks/memory_table.py --write` from the runs of `configs/tempo` (`aime.yaml`, a",
        "model's overlay, its QLoRA overlay) and the stored model configs; do not edit by hand. GiB per GPU; `peak` =",
        "resident + the larger of the training and rollout phases; `fits` compares the peak with "
        f"{GPU_GIB} GiB. `CPU` is",
        "what CPU offload keeps in host memory per rank.",
        "Training is one micro-batch of full-length responses (the logits dominate it); rollout is one `generate`",
        "call over `training.generation_batch_size` prompts of the rank's batch, or the whole batch when it is unset",
        "(the KV cache dominates it). `prompts/generate` is the most prompts (with their n responses) one `generate`",
        "call can hold; the configs set `generation_batch_size` at or below it.",
        "",
        "| config | model | setup | GPUs | weights | grads | optimizer | training | rollout | peak | fits | CPU "
        "| prompts/generate |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        fits = "yes" if r.peak <= GPU_GIB else "no"
        lines.append(
            f"| {r.config} | {r.model} | {r.setup} | {r.gpus} | {r.weights:.1f} | {r.grads:.1f} | {r.optimizer:.1f} "
            f"| {r.training:.1f} | {r.rollout:.1f} | {r.peak:.1f} | {fits} | {r.cpu:.1f} | {r.prompts_per_generate} |"
        )
    lines += ["", "Model configs (architecture numbers stored in the script):", "", sources, ""]
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help=f"write {DOC.relative_to(ROOT)}")
    args = parser.parse_args(argv)
    text = render([estimate(layers) for layers in config_runs()])
    if args.write:
        DOC.parent.mkdir(parents=True, exist_ok=True)
        DOC.write_text(text)
    print(text)
    return text


if __name__ == "__main__":
    main()

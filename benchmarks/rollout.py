"""Throughput of HFGenerateEngine against a bare ``model.generate`` on the same batch, model and seeds.

The engine adds the chat template, tokenization, masking and decoding around ``generate``; this measures what that
costs. Both sides sample the same tokens (same seeds, checked), so the ratio of tokens/s is the ratio of wall
times. Repeats alternate between the two and the medians are compared.

    python benchmarks/rollout.py                      # hidden 256, 4 layers, 16 prompts x 4 samples, 64 new tokens
    python benchmarks/rollout.py --device cuda --hidden 1024 --layers 8
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from tempo_pl.models.builders import ModelSpec, build_policy, build_tokenizer  # noqa: E402
from tempo_pl.config import SamplingConfig  # noqa: E402
from tempo_pl.engines.hf_generate import HFGenerateEngine, encode_prompts  # noqa: E402
from tempo_pl.models.tiny import BUILTIN_CHAR, tiny_qwen3_config  # noqa: E402
from tempo_pl.types import PromptBatch  # noqa: E402


def _prompts(count: int) -> PromptBatch:
    texts = [f"Compute {7 * i + 3} * {i + 11} and add {'1' * (1 + i % 5)}. Box the answer." for i in range(count)]
    return PromptBatch([str(i) for i in range(count)], texts, answers=[None] * count, is_labeled=[False] * count)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    spec = ModelSpec(
        config=tiny_qwen3_config(
            vocab_size=100, hidden_size=args.hidden, num_layers=args.layers, num_heads=8, num_kv_heads=4,
            intermediate_size=2 * args.hidden,
        ),
        tokenizer=BUILTIN_CHAR,
        seed=0,
    )
    tokenizer = build_tokenizer(spec)
    model = build_policy(spec).to(device).eval()
    batch = _prompts(args.prompts)
    sampling = SamplingConfig(n=args.n, max_new_tokens=args.new_tokens, max_prompt_length=512)
    engine = HFGenerateEngine(tokenizer, sampling)

    # the bare baseline gets its inputs ready-made: templating and tokenization are the engine's overhead
    enc = tokenizer.pad({"input_ids": encode_prompts(tokenizer, batch.prompts)}, return_tensors="pt")
    input_ids = enc["input_ids"].repeat_interleave(args.n, 0).to(device)
    attention_mask = enc["attention_mask"].repeat_interleave(args.n, 0).to(device)
    bare_kwargs = dict(
        do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=args.new_tokens,
        eos_token_id=[tokenizer.eos_token_id], pad_token_id=tokenizer.pad_token_id,
    )

    def bare(call: int) -> tuple[float, torch.Tensor]:
        torch.manual_seed(1000 + call)  # the same seed as the engine's call of the same number
        _sync(device)
        start = time.perf_counter()
        with torch.no_grad():
            out = model.generate(input_ids=input_ids, attention_mask=attention_mask, **bare_kwargs)
        _sync(device)
        return time.perf_counter() - start, out[:, input_ids.shape[1] :]

    def ours(call: int):
        torch.manual_seed(1000 + call)
        _sync(device)
        start = time.perf_counter()
        rollout = engine.generate(model, batch)
        _sync(device)
        return time.perf_counter() - start, rollout

    bare(0), ours(0)  # warm-up (lazy imports, allocator, kernels)
    bare_times, engine_times, tokens = [], [], 0
    same = True
    for call in range(1, args.repeats + 1):
        t_bare, raw = bare(call)
        t_engine, rollout = ours(call)
        bare_times.append(t_bare)
        engine_times.append(t_engine)
        tokens = int(rollout.response_mask.sum())
        width = rollout.response_ids.shape[1]
        same &= torch.equal(raw[:, :width].masked_fill(rollout.response_mask == 0, 0),
                            rollout.response_ids.masked_fill(rollout.response_mask == 0, 0))

    bare_tps = tokens / statistics.median(bare_times)
    engine_tps = tokens / statistics.median(engine_times)
    print(f"model: Qwen3 hidden={args.hidden} layers={args.layers} on {device}; "
          f"{args.prompts} prompts x {args.n} samples, <= {args.new_tokens} new tokens; {args.repeats} repeats")
    print(f"identical samples: {same}; valid response tokens per call: {tokens}")
    print(f"bare model.generate : {bare_tps:9.1f} tokens/s (median {statistics.median(bare_times) * 1e3:.1f} ms)")
    print(f"HFGenerateEngine    : {engine_tps:9.1f} tokens/s (median {statistics.median(engine_times) * 1e3:.1f} ms)")
    print(f"ratio engine / bare : {engine_tps / bare_tps:.3f} (target >= 0.9)")


if __name__ == "__main__":
    main()

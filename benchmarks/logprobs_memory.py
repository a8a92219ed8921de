"""Peak memory of the policy's log-probs and entropy at Qwen3's vocabulary: chunked through the LM head against the
whole-logits path, in the same run, and their largest differences (log-probs, entropy, every parameter gradient).

The chunked path is ``tempo_pl.models.forward.policy_response_stats`` as training calls it. The whole-logits path is what it
replaced: the model's (1, R, V) logits, then ``logprobs_from_logits`` and ``entropy_from_logits`` on all of them.
Both run forward and backward of ``sum(log-probs) + sum(entropy)`` on one row, a tiny Qwen3 (hidden 32, one layer)
with a 151,936-token vocabulary.

Memory is counted by one meter for both paths: the bytes of every tensor storage created during the pass and still
alive, sampled after every operation (a ``TorchDispatchMode``; weights that exist before the pass are not counted).
The whole-logits path at 16,384 tokens needs about 50 GB, more than a small machine has: when it would not fit in
half the available memory it runs on the meta device (shapes only, the same operations, nothing allocated) for its
peak, and the values and gradients are compared on the first ``--check-tokens`` tokens, where both paths run for
real. The meter's peak of the real and the meta whole-logits runs at that length is printed too: they agree.

    python benchmarks/logprobs_memory.py                      # 16,384 tokens, checked on 1,024
    python benchmarks/logprobs_memory.py --tokens 4096 --check-tokens 4096 --device cuda
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import time
from typing import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from _live_bytes import LiveBytes  # noqa: E402

from tempo_pl.algorithms.token_stats import LOGITS_CHUNK_ELEMENTS, entropy_from_logits, logprobs_from_logits  # noqa
from tempo_pl.models.builders import ModelSpec, build_policy  # noqa: E402
from tempo_pl.models.forward import policy_response_stats  # noqa: E402
from tempo_pl.models.tiny import tiny_qwen3_config  # noqa: E402

QWEN3_VOCAB = 151_936
PROMPT = 32
GIB = 2**30


def chunked(model, ids, attention, response, mask) -> dict[str, torch.Tensor]:
    return policy_response_stats(model, ids, attention, response, mask)


def whole_logits(model, ids, attention, response, mask) -> dict[str, torch.Tensor]:
    """The path before chunking: every response position's logits at once, upcast, then the statistics."""
    logits = model(input_ids=ids, attention_mask=attention, use_cache=False,
                   logits_to_keep=response.shape[1] + 1).logits[:, -response.shape[1] - 1 : -1].float()
    return {"logprobs": logprobs_from_logits(logits, response) * mask, "entropy": entropy_from_logits(logits) * mask}


def run(path: Callable, model, tokens: int, device: torch.device, seed: int = 0):
    """Forward and backward of one row through ``path``: (peak bytes, seconds, stats, parameter gradients)."""
    generator = torch.Generator().manual_seed(seed)
    vocab = model.get_output_embeddings().out_features
    ids = torch.randint(4, vocab, (1, PROMPT + tokens), generator=generator).to(device)
    response = ids[:, PROMPT:]
    # one row, no padding: the model needs no mask (a meta tensor cannot be asked whether it is all ones)
    attention = torch.ones_like(ids) if device.type != "meta" else None
    mask = torch.ones(response.shape, device=device)
    model.zero_grad(set_to_none=True)
    meter = LiveBytes()
    start = time.perf_counter()
    with meter, unpacked_on_meta(device):
        stats = path(model, ids, attention, response, mask)
        (stats["logprobs"].sum() + stats["entropy"].sum()).backward()
    seconds = time.perf_counter() - start
    grads = {name: p.grad.detach().clone() for name, p in model.named_parameters()}
    return meter.peak, seconds, {k: v.detach() for k, v in stats.items()}, grads


@contextlib.contextmanager
def unpacked_on_meta(device: torch.device):
    """transformers asks position ids whether several sequences are packed in a row, a question about values that a
    meta tensor cannot answer; the row is one sequence."""
    if device.type != "meta":
        yield
        return
    from transformers import masking_utils

    original = masking_utils.find_packed_sequence_indices
    masking_utils.find_packed_sequence_indices = lambda position_ids: None
    try:
        yield
    finally:
        masking_utils.find_packed_sequence_indices = original


def available_bytes() -> int:
    with open("/proc/meminfo") as f:
        fields = dict(line.split(":", 1) for line in f)
    return int(fields["MemAvailable"].split()[0]) * 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=16_384, help="response tokens of the row")
    parser.add_argument("--check-tokens", type=int, default=1024,
                        help="tokens on which both paths run for real when the whole-logits one does not fit")
    parser.add_argument("--vocab", type=int, default=QWEN3_VOCAB)
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (1: on a shared machine more threads wait on each other)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    spec = ModelSpec(config=tiny_qwen3_config(vocab_size=args.vocab, hidden_size=args.hidden, num_layers=1,
                                              num_heads=2, num_kv_heads=1, intermediate_size=2 * args.hidden,
                                              max_position_embeddings=PROMPT + args.tokens + 1),
                     tokenizer="builtin:char", seed=0)
    model = build_policy(spec).to(device)
    meta_model = copy.deepcopy(model).to("meta")

    chunk_peak, chunk_seconds, _, _ = run(chunked, model, args.tokens, device)
    # the whole-logits path holds about 7 (R, V) float32 tensors at once (measured: 8.1 GiB at 2,048 tokens)
    fits = 8 * args.tokens * args.vocab * 4 < available_bytes() / 2 or device.type == "cuda"
    if fits:
        whole_peak, whole_seconds, _, _ = run(whole_logits, model, args.tokens, device)
        check = args.tokens
    else:
        whole_peak, whole_seconds, _, _ = run(whole_logits, meta_model, args.tokens, torch.device("meta"))
        check = min(args.check_tokens, args.tokens)
    check_chunk_peak, _, stats, grads = run(chunked, model, check, device)
    check_whole_peak, _, ref_stats, ref_grads = run(whole_logits, model, check, device)
    check_meta_peak = run(whole_logits, meta_model, check, torch.device("meta"))[0]

    chunk = max(1, LOGITS_CHUNK_ELEMENTS // args.vocab)
    print(f"one row: {PROMPT} prompt + {args.tokens} response tokens, vocabulary {args.vocab}, Qwen3 hidden "
          f"{args.hidden}, 1 layer, float32, on {device}; chunks of {chunk} positions; forward + backward")
    print(f"peak memory, chunked      : {chunk_peak / GIB:8.3f} GiB ({chunk_seconds:.1f} s)")
    where = "run" if fits else "counted on the meta device: it needs more than half the available memory"
    print(f"peak memory, whole logits : {whole_peak / GIB:8.3f} GiB ({where}"
          + (f", {whole_seconds:.1f} s)" if fits else ")"))
    print(f"ratio chunked / whole     : {chunk_peak / whole_peak:.4f} (target <= 1/8 = 0.125)")
    print(f"values and gradients compared on {check} response tokens, both paths run "
          f"(peaks there: chunked {check_chunk_peak / GIB:.3f} GiB, whole {check_whole_peak / GIB:.3f} GiB, "
          f"whole on meta {check_meta_peak / GIB:.3f} GiB)")
    for key in ("logprobs", "entropy"):
        print(f"max |difference| {key:<9}: {(stats[key] - ref_stats[key]).abs().max().item():.3e} (target <= 1e-5)")
    worst = max(grads, key=lambda name: (grads[name] - ref_grads[name]).abs().max())
    scale = max(ref_grads[name].abs().max().item() for name in ref_grads)
    print(f"max |difference| gradient : {(grads[worst] - ref_grads[worst]).abs().max().item():.3e} ({worst}; "
          f"largest gradient entry {scale:.3e}) (target <= 1e-5)")


if __name__ == "__main__":
    main()

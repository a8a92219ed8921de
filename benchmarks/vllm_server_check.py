"""VLLMServerEngine against a vLLM server of its own (``tempo-pl serve`` on 127.0.0.1): rollout tokens/s and the
weight sync per policy update. Part of ``benchmarks/gpu_check.py`` (the ``vllm_server`` run); runs on its own too.

The server serves the same random Qwen3 as ``benchmarks/vllm_vs_generate.py`` (0.49B on a GPU, 30% of its memory,
beside the trainer's process; tiny on vLLM's CPU backend). One batch is sampled after a warm-up call, then three
policy updates (every weight perturbed) are each pushed to the server and timed: gathering, streaming over the gloo
group, loading in place. ``ok`` when the sampling log-prob gap to the trainer after the last push is under the
dtype's tolerance and at most a tenth of the gap before it.

    python benchmarks/vllm_server_check.py              # on a GPU
    python benchmarks/vllm_server_check.py --cpu-smoke  # tiny sizes on vLLM's CPU backend (starting it takes minutes)
"""

from __future__ import annotations

import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Optional

import torch
import vllm_vs_generate  # noqa: E402  (beside this script)
import yaml
from vllm_vs_generate import (
    GAP_TOLERANCE,
    EngineSizes,
    _gap,
    _prompt_batch,
    _timed,
    vllm_missing,
)

SERVER_START_TIMEOUT_S = 900


def _start_server(spec: dict, folder: Path, on_gpu: bool) -> tuple[subprocess.Popen, str]:
    from tempo_pl.engines.server_http import wait_until_up

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = folder / "policy.yaml"
    config.write_text(yaml.safe_dump({"model": {"init_args": {"policy": spec}}}))
    memory = ["--gpu-memory-utilization", "0.3"] if on_gpu else ["--enforce-eager", "--kv-cache-memory-bytes",
                                                                  str(256 * 2**20)]
    log = open(folder / "server.log", "w")
    process = subprocess.Popen([sys.executable, "-m", "tempo_pl", "serve", "--config", str(config), "--port",
                                str(port), "--model-dir", str(folder / "model"), "--", "--max-model-len", "4096",
                                *memory], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(url, SERVER_START_TIMEOUT_S)
    except Exception:
        os.killpg(process.pid, signal.SIGKILL)
        raise RuntimeError("the vLLM server did not start:\n" + (folder / "server.log").read_text()[-4000:])
    return process, url


def run(sizes: EngineSizes, tokenizer_dir: str, on_gpu: bool,
        baseline_tokens_per_s: Optional[float] = None) -> tuple[list[str], bool]:
    """The check's printed lines and whether it passed; ``baseline_tokens_per_s``: VLLMEngine's figure, when the
    same run measured it (``benchmarks/vllm_vs_generate.py``)."""
    from tempo_pl.config import SamplingConfig

    from tempo_pl.models.builders import ModelSpec, build_policy, build_tokenizer
    from tempo_pl.engines.vllm_server import VLLMServerEngine

    dtype = "bfloat16" if on_gpu else "float32"
    spec = dict(config=sizes.qwen3_config(), tokenizer=tokenizer_dir, seed=0, dtype=dtype)
    tokenizer = build_tokenizer(ModelSpec(**spec))
    policy = build_policy(ModelSpec(**spec)).to("cuda" if on_gpu else "cpu").eval()
    params = sum(p.numel() for p in policy.parameters()) / 1e9
    sampling = SamplingConfig(n=sizes.n, temperature=1.0, max_new_tokens=sizes.max_new_tokens, max_prompt_length=512)
    with tempfile.TemporaryDirectory(prefix="tempo_server_check_") as tmp:
        process, url = _start_server(spec, Path(tmp), on_gpu)
        try:
            engine = VLLMServerEngine(tokenizer, sampling, urls=[url])
            _, first_call = _timed(lambda: engine.generate(policy, _prompt_batch(1),
                                                           sampling=SamplingConfig(n=1, max_new_tokens=4)))
            first_load = engine.last_sync_s
            torch.manual_seed(0)
            rollout, seconds = _timed(lambda: engine.generate(policy, _prompt_batch(sizes.prompts)))
            tokens = int(rollout.response_mask.sum())
            syncs = []
            check = _prompt_batch(min(sizes.prompts, 4))
            generator = torch.Generator(device=next(policy.parameters()).device).manual_seed(1)
            for _ in range(3):
                with torch.no_grad():  # a policy update the server has not seen yet
                    for p in policy.parameters():
                        p.add_(torch.randn(p.shape, generator=generator, device=p.device, dtype=p.dtype)
                               * 0.2 * p.float().std())
                stale = _gap(policy, engine.generate(policy, check), sampling.temperature)
                engine.sync_weights(policy)
                syncs.append(engine.last_sync_s)
            synced = _gap(policy, engine.generate(policy, check), sampling.temperature)
        finally:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=120)
    ok = synced[1] < GAP_TOLERANCE[dtype] and synced[0] <= stale[0] / 10
    device = torch.cuda.get_device_name() if on_gpu else "cpu"
    versus = f"{tokens / seconds / baseline_tokens_per_s:.2f}x" if baseline_tokens_per_s else "-"
    return [
        f"VLLMServerEngine on {device} (server on 127.0.0.1, {params * 1e3:.1f}M parameters, {dtype}); "
        f"{sizes.prompts} prompts x {sizes.n} responses of <= {sizes.max_new_tokens} tokens",
        "| engine | response tokens | seconds | tokens/s | vs VLLMEngine | first call s |",
        "|---|---|---|---|---|---|",
        f"| vllm_server | {tokens} | {seconds:.2f} | {tokens / seconds:.0f} | {versus} | {first_call:.1f} |",
        f"server weight sync: {statistics.median(syncs):.3f} s per update (median of {[round(s, 3) for s in syncs]}; "
        f"first load {first_load:.3f} s; {engine.last_sync_bytes / 2**20:.1f} MiB per server); sampling log-prob "
        f"gap after an unseen update: max {stale[1]:.2e}; after the sync: mean {synced[0]:.2e}, max {synced[1]:.2e} "
        f"(tolerance {GAP_TOLERANCE[dtype]:g}) -> {'ok' if ok else 'NOT OK'}",
    ], ok


def main_lines(sizes: EngineSizes, tokenizer_dir: str, on_gpu: bool,
               baseline_tokens_per_s: Optional[float] = None) -> tuple[list[str], bool]:
    """:func:`run`'s lines, the skip line when vLLM is absent, or the failure's traceback."""
    missing = vllm_missing()
    if missing:
        return [missing.replace("vLLM vs generate", "VLLMServerEngine")], True
    try:
        return run(sizes, tokenizer_dir, on_gpu, baseline_tokens_per_s)
    except Exception:  # the other checks' numbers still print
        return ["VLLMServerEngine check failed:", *traceback.format_exc().splitlines()[-40:]], False


def main(argv: Optional[list[str]] = None) -> int:
    return vllm_vs_generate.engine_check_main(argv, __doc__.splitlines()[0], main_lines)


if __name__ == "__main__":
    sys.exit(main())

"""The scripts of benchmarks/: the memory table of docs/memory.md, the FSDP2-vs-DDP timing and the GPU check, run
or imported on the CPU so they cannot rot between lends of a GPU."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from _tiny_run import (ROOT, subprocess_env)

pytestmark = pytest.mark.filterwarnings("ignore")


def _benchmark(name: str):
    import importlib.util

    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses resolve their annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def test_parameter_and_kv_counts_match_the_architecture() -> None:
    table = _benchmark("memory_table")
    counts = table.count_parameters("Qwen3-14B")
    # per layer: q, o 5120x5120 (40 heads x 128) = 26,214,400 each; k, v 5120x1024 (8 x 128) = 5,242,880 each;
    # MLP 3 x 5120x17408 = 267,386,880; q/k norms 2 x 128; 2 layer norms 2 x 5120  ->  330,311,936
    assert counts.per_layer == 330_311_936
    # 40 layers + embeddings and LM head 2 x 151936x5120 = 1,555,824,640 + final norm 5120
    assert counts.total == 40 * 330_311_936 + 1_555_824_640 + 5120 == 14_768_307_200
    # LoRA on every decoder linear: r x (in + out) summed: q, o 2 x 10240, k, v 2 x 6144, MLP 3 x 22528 per layer
    assert counts.lora_per_rank == 40 * (2 * 10240 + 2 * 6144 + 3 * 22528)
    # KV cache of one 2048 + 16384 token sequence in bfloat16: 40 layers x 18432 x (k, v) x 8 heads x 128 x 2 bytes
    assert table.kv_bytes_per_row("Qwen3-14B", 18432) == 40 * 18432 * 2 * 8 * 128 * 2
    # OLMo3-7B: 8 full-attention layers hold every token, 24 sliding-window layers 4096; 32 kv heads
    assert table.kv_bytes_per_row("OLMo3-7B", 18432) == (8 * 18432 + 24 * 4096) * 2 * 32 * 128 * 2


def test_memory_doc_is_generated_from_the_configs() -> None:
    table = _benchmark("memory_table")
    rows = [table.estimate(layers) for layers in table.config_runs()]
    assert {r.config for r in rows} == {f"{m}{q}" for m in ("olmo3_7b_aime", "qwen3_8b_aime", "qwen3_14b_aime",
                                                              "qwen3_4b_hipho") for q in ("", "_qlora")}
    assert (ROOT / "docs" / "memory.md").read_text() == table.render(rows), "run benchmarks/memory_table.py --write"
    for row in rows:
        assert row.gpus == (1 if row.config.endswith("_qlora") else 8), row
        assert row.peak <= table.GPU_GIB, row  # every config fits an 80 GB GPU, generation chunked where it must be


def test_generation_batch_size_bounds_the_rollout_estimate(tmp_path: Path) -> None:
    table = _benchmark("memory_table")
    base, source = ROOT / "configs" / "tempo" / "aime.yaml", ROOT / "configs" / "tempo" / "qwen3_14b_aime.yaml"
    cfg = yaml.safe_load(source.read_text())
    chunked = table.estimate((base, source))
    del cfg["model"]["init_args"]["training"]["generation_batch_size"]
    whole = tmp_path / "qwen3_14b_aime.yaml"
    whole.write_text(yaml.safe_dump(cfg))
    unchunked = table.estimate((base, whole))
    # 16 prompts per rank at once hold 8 times the KV cache of 2 at a time, on top of the gathered bf16 weights
    weights = table.count_parameters("Qwen3-14B").total * 2 / table.GIB
    assert unchunked.rollout - weights == pytest.approx(8 * (chunked.rollout - weights), rel=1e-9)
    assert unchunked.training == chunked.training
    assert unchunked.peak > table.GPU_GIB >= chunked.peak


@pytest.mark.slow
def test_fsdp2_vs_ddp_benchmark_times_both_strategies() -> None:
    bench = _benchmark("fsdp2_vs_ddp")
    result = bench.main(["--steps", "2"])
    for name in ("fsdp2", "ddp"):
        parts = result[name]
        assert set(parts) == set(bench.PARTS) and all(v > 0 for v in parts.values()), parts
        assert parts["step_s"] >= parts["generation_s"] + parts["update_s"]  # the stages are parts of the step
    assert result["ratio"] == pytest.approx(result["fsdp2"]["step_s"] / result["ddp"]["step_s"])


@pytest.mark.slow
def test_gpu_check_runs_on_cpu() -> None:
    proc = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--cpu-smoke"], cwd=ROOT, env=subprocess_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| ") and not line.startswith("| run")]
    assert [r.split("|")[1].strip() for r in rows] == ["bf16", "qlora_shared", "fsdp2", "fsdp2_qlora_shared"]
    # every trainable tensor of policy and critic moved in every run (e.g. "policy 28/28, critic 30/30")
    assert all(r.rstrip(" |").endswith("yes") for r in rows), rows



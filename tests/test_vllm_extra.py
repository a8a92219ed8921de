"""The vLLM engine without vLLM installed: the module imports, its options are checked, and building it names the
optional extra. (The engine itself is tested where vLLM is installed: tests/vllm_engine/, .ci/run's second stage.)"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from _tiny_run import build, tiny_config

ROOT = Path(__file__).resolve().parents[1]


def test_the_engine_module_imports_without_importing_vllm() -> None:
    code = "import sys, tempo_pl.engines.vllm; assert 'vllm' not in sys.modules, 'vllm imported'"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_building_the_engine_without_vllm_names_the_extra(monkeypatch, tmp_path: Path) -> None:
    """Named from YAML with every option, the engine is built by the module's factory call: without vLLM, that call
    says how to install it."""
    from tempo_pl.config import SamplingConfig

    options = {"gpu_memory_utilization": 0.25, "kv_cache_memory_bytes": 2**26, "max_model_len": 4096,
               "enforce_eager": True, "tensor_parallel_size": 1, "enable_sleep_mode": False, "dtype": "bfloat16"}

    def edit(cfg: dict) -> None:
        cfg["model"]["init_args"]["rollout_engine"] = {"class_path": "tempo_pl.engines.vllm.VLLMEngine",
                                                       "init_args": options}

    cli = build(tiny_config(tmp_path, edit), tmp_path)
    monkeypatch.setitem(sys.modules, "vllm", None)  # as if not installed, also where it is
    with pytest.raises(ImportError, match=r'VLLMEngine needs vLLM.*pip install -e "\.\[vllm\]"'):
        cli.model.engine_factory(_tokenizer(), SamplingConfig(), None)


def _tokenizer():
    from tempo_pl.models.tiny import build_char_tokenizer

    return build_char_tokenizer()


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("gpu_memory_utilization", 0.0, "gpu_memory_utilization must be in"),
        ("gpu_memory_utilization", 1.5, "gpu_memory_utilization must be in"),
        ("kv_cache_memory_bytes", 0, "kv_cache_memory_bytes must be positive"),
        ("max_model_len", 1, "max_model_len must be >= 2"),
        ("tensor_parallel_size", 0, "tensor_parallel_size must be >= 1"),
        ("dtype", "fp8", "dtype must be one of"),
    ],
)
def test_bad_engine_options_are_refused_before_vllm_is_needed(monkeypatch, option: str, value, message: str) -> None:
    from tempo_pl.config import SamplingConfig
    from tempo_pl.engines.vllm import VLLMEngine

    monkeypatch.setitem(sys.modules, "vllm", None)
    with pytest.raises(ValueError, match=f"VLLMEngine.{message}"):
        VLLMEngine(_tokenizer(), SamplingConfig(), **{option: value})


def test_the_gpu_checks_vllm_rows_are_skipped_with_a_line_without_vllm() -> None:
    code = ("import sys; sys.modules['vllm'] = None; sys.path.insert(0, 'benchmarks'); import gpu_check; "
            "sys.exit(gpu_check.main(['--cpu-smoke', '--runs', 'vllm_vs_generate']))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "vLLM vs generate: skipped, vLLM is not installed (pip install -e \".[vllm]\"" in proc.stdout
    assert "| engine |" not in proc.stdout

"""benchmarks/rollout_ahead.py and its gpu_check.py rows, smoke-tested on the CPU (the GPU figures need a GPU)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from _tiny_run import subprocess_env

ROOT = Path(__file__).resolve().parents[1]


def _benchmark(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))  # as a script sees its folder: its sibling vllm_vs_generate
    spec = importlib.util.spec_from_file_location("rollout_ahead", ROOT / "benchmarks" / "rollout_ahead.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "rollout_ahead", module)  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_the_summary_leaves_the_first_step_out_and_counts_waiting_as_idle(monkeypatch):
    steps = [{"time/step_s": 9.0, "time/generation_s": 9.0},
             {"time/step_s": 2.0, "time/generation_s": 0.5, "time/sampler_wait_s": 0.5, "rollout/staleness": 1.0},
             {"time/step_s": 4.0, "time/generation_s": 1.0, "rollout/staleness": 0.0},
             {"time/step_s": 3.0, "time/generation_s": 0.3, "time/sampler_wait_s": 1.2, "rollout/staleness": 1.0}]
    summary = _benchmark(monkeypatch).summarise(steps)
    assert summary == {"step_s": 3.0, "idle_share": pytest.approx(0.5), "staleness": 1.0}  # idle 0.5, 0.25, 0.5


@pytest.mark.slow
def test_the_gpu_checks_rollout_ahead_rows_run_on_cpu():
    proc = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--cpu-smoke", "--runs", "rollout_ahead"],
                          cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("- ")]
    assert rows[0].startswith("- rollout_ahead 0: step ") and "max staleness 0" in rows[0]
    assert rows[1].startswith("- rollout_ahead 1: step ") and "max staleness 1" in rows[1]
    assert rows[2].startswith("- steps per hour, rollout_ahead 1 / 0: ")

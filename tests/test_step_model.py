"""benchmarks/step_model.py reproduces the GPU rows it is calibrated on (docs/gpu_check.md) and, on one node, the
memory of docs/memory.md; its predictions move the way its terms say."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import step_model  # noqa: E402
import memory_table  # noqa: E402


def test_reproduces_the_gpu_check_rows() -> None:
    calibration = step_model.fit_calibration()
    fitted, check = step_model.GPU_CHECK_ROWS
    assert step_model.predict_calibration_row(fitted, calibration) == pytest.approx((10.51, 967), rel=1e-9)
    step, gen = step_model.predict_calibration_row(check, calibration)  # fsdp2: not fitted
    assert step == pytest.approx(check.step_s, rel=0.05)
    assert gen == pytest.approx(check.gen_tokens_per_s, rel=0.05)
    # the fitted constants are those of a 0.37B model with Hugging Face generate: ~33 ms per decode step
    assert calibration.hf_decode_overhead_s == pytest.approx(0.0326, abs=1e-3)


def test_one_node_memory_is_docs_memory_md() -> None:
    for config in step_model.PAPER_CONFIGS:
        row = memory_table.estimate(step_model.config_layers(config))
        assert step_model.memory_gib(config, 8, "colocated") == pytest.approx(row.peak, rel=1e-9)
        assert step_model.memory_gib(config, 8, "server") == pytest.approx(row.resident + row.training, rel=1e-9)


def test_predictions_follow_nodes_layout_and_rollout_ahead() -> None:
    calibration = step_model.fit_calibration()
    steps = [step_model.predict("qwen3_8b_aime", nodes, "colocated", 0, calibration=calibration).step_s
             for nodes in step_model.NODES]
    assert steps == sorted(steps, reverse=True)  # the global batch is shared by more GPUs
    colocated_ahead = step_model.predict("qwen3_8b_aime", 2, "colocated", 1, calibration=calibration)
    assert colocated_ahead.step_s == pytest.approx(steps[1])  # time-shared GPUs: nothing to overlap
    server = [step_model.predict("qwen3_8b_aime", 2, "server", ahead, calibration=calibration) for ahead in (0, 1)]
    assert server[0].step_s == pytest.approx(server[0].generation_s + server[0].update_s + server[0].sync_s)
    assert server[1].step_s == pytest.approx(max(server[1].generation_s, server[1].update_s + server[1].sync_s))

"""benchmarks/vs_trl.py without TRL (an optional benchmark dependency): its arguments, the message, and a tempo-pl
side's timed steps in-process on a tiny saved model."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "vs_trl.py"


@pytest.fixture(scope="module")
def vs_trl():
    spec = importlib.util.spec_from_file_location("vs_trl", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_arguments_default_to_both_sizes_and_every_side(vs_trl):
    args = vs_trl.parse_args([])
    assert args.sizes == ["tiny", "19m"] and args.sides == ["trl", "grpo", "tempo_frozen", "tempo"]
    assert (args.prompts, args.n, args.tokens, args.runs) == (16, 4, 64, 3) and args.worker is None
    with pytest.raises(SystemExit):
        vs_trl.parse_args(["--sizes", "70b"])


@pytest.mark.skipif(importlib.util.find_spec("trl") is not None, reason="TRL is installed here")
def test_without_trl_the_script_says_it_is_optional_and_runs_no_trl_side(vs_trl, capsys):
    vs_trl.main(["--sides", "trl"])
    out = capsys.readouterr().out
    assert "optional benchmark dependency" in out and ".[bench]" in out and "tempo-pl sides only" in out


@pytest.mark.slow  # a Lightning fit of 3 steps: about 10 s on 2 shared cores
def test_the_tempo_side_times_its_steps_and_generation(vs_trl, tmp_path):
    model_dir = vs_trl.save_model("tiny", tmp_path)
    args = vs_trl.parse_args(["--prompts", "2", "--n", "2", "--tokens", "3", "--warmup", "1", "--steps", "2"])
    result = vs_trl.run_tempo(args, str(model_dir), "grpo")
    assert len(result["step_seconds"]) == 2 and all(s > 0 for s in result["step_seconds"])
    assert result["generate_tokens"] == [2 * 2 * 3, 2 * 2 * 3]  # every response forced to 3 tokens
    assert all(0 < g < s for g, s in zip(result["generate_seconds"], result["step_seconds"]))
    # the module's own stage clocks: inside the step, and generation's holds the generate calls
    stages = [result[f"{name}_seconds"] for name in vs_trl.STAGES]
    assert all(len(times) == 2 for times in stages)
    assert all(sum(parts) < s for *parts, s in zip(*stages, result["step_seconds"]))
    assert all(g <= c for g, c in zip(result["generate_seconds"], result["generation_seconds"]))
    assert vs_trl.reward(["p"], ["a1b2"]) == [0.5]


def test_the_report_gives_the_ratios_and_the_frozen_critics_value_pass(vs_trl, capsys):
    def side(step: float, scoring: float) -> dict:
        return {"step_seconds": [step], "generate_seconds": [1.0], "generate_tokens": [100],
                "generation_seconds": [1.0], "scoring_seconds": [scoring], "update_seconds": [step - 1.0 - scoring]}

    results = {"trl": {"step_seconds": [3.0], "generate_seconds": [1.0], "generate_tokens": [50]},
               "grpo": side(2.0, 0.01), "tempo_frozen": side(2.3, 0.31), "tempo": side(2.6, 0.2)}
    vs_trl.report("tiny", 90_000, vs_trl.parse_args([]), results)
    out = capsys.readouterr().out
    assert "grpo / TRL : 1.50x" in out and "tokens/s tempo-pl / TRL  : 2.00x" in out
    assert "tempo_frozen / critic-free grpo : 1.15x" in out and "tempo / critic-free grpo : 1.30x" in out
    assert "value pass: 0.300 s = 0.15 of the critic-free step" in out

"""An engine that serves its own copy of the weights (``serves_own_weights``, as VLLMEngine does) under FSDP2: the
module gathers nothing around its ``generate`` calls, and training goes exactly as with transformers' engine, which
samples from the gathered policy.

The 2-process part runs this file as a script (``python tests/test_own_weights_engine.py OUT``), as
tests/test_strategies.py does: Lightning's launcher re-executes it for rank 1. One launch fits configs/fsdp2_tiny.yaml's
strategy twice on the same data and seed, once with :class:`RecordingEngine` (transformers on the policy itself) and
once with :class:`OwnCopyEngine` (transformers on a plain copy loaded from ``served_weights`` at the first call and
after every policy update, VLLMEngine's contract without vLLM), and writes what each rank saw.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from _tiny_run import ROOT, build, finish_worker, rollout_records, subprocess_env, tiny_config

from tempo_pl.engines.hf_generate import HFGenerateEngine

pytestmark = pytest.mark.filterwarnings("ignore")

WORKER_TIMEOUT_S = 420
ENGINES = ("gathering", "own_copy")
LOSSES = {"E": "critic/loss", "M": "policy/loss"}


class RecordingEngine(HFGenerateEngine):
    """transformers' engine on the policy itself (the module gathers it first); records, per call, whether the
    policy's decoder layers held their FSDP2 shards (DTensor parameters) or gathered full parameters."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.layers_sharded: list[bool] = []

    def generate(self, model, prompts, n=None, sampling=None):
        from torch.distributed.tensor import DTensor

        from tempo_pl.models.hf import hf_model

        layers = hf_model(model).model.layers
        self.layers_sharded.append(all(isinstance(p, DTensor) for layer in layers for p in layer.parameters()))
        return super().generate(self.sampler(model), prompts, n, sampling)

    def sampler(self, model):
        return model


class OwnCopyEngine(RecordingEngine):
    """Samples from a plain (unsharded) copy of the policy, loaded from ``served_weights`` at the first call and by
    ``sync_weights`` after every policy update."""

    serves_own_weights = True

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.copy = None
        self.weight_syncs = 0

    def sampler(self, model):
        if self.copy is None:
            from transformers import AutoModelForCausalLM

            from tempo_pl.models.hf import hf_model

            # the copy's random initialisation must not move the trainer's RNG, which draws the samples
            with torch.random.fork_rng(devices=[]):
                self.copy = AutoModelForCausalLM.from_config(hf_model(model).config)
            self.sync_weights(model)
        return self.copy

    def sync_weights(self, model) -> None:
        from tempo_pl.engines.served_weights import served_weights

        if self.copy is None:
            return
        result = self.copy.load_state_dict(dict(served_weights(model)), strict=False)
        assert not result.missing_keys and not result.unexpected_keys, result
        self.weight_syncs += 1


def engine_config(out: Path) -> dict:
    """configs/tiny.yaml with fsdp2_tiny.yaml's strategy on 2 ranks: a sanity evaluation before any forward, then
    E, M, E, M (evaluated after step 2 and at the end), with a policy step large enough to change the samples."""

    def edit(cfg: dict) -> None:
        trainer, init = cfg["trainer"], cfg["model"]["init_args"]
        trainer["devices"] = 2
        fsdp2 = yaml.safe_load((ROOT / "configs" / "fsdp2_tiny.yaml").read_text())
        trainer["strategy"] = fsdp2["trainer"]["strategy"]
        trainer["callbacks"] = [c for c in trainer["callbacks"] if not c["class_path"].endswith("RLStepCheckpoint")]
        cfg["data"]["init_args"]["batch_size"] = 2
        init["training"].update(mini_batch_size=2)
        init["policy_optimizer"]["init_args"]["lr"] = 1e-2

    return tiny_config(out, edit, steps=4, validate=True)


def run_engine(out: Path, engine: str) -> None:
    """One fit with ``engine``; each rank writes what its engine saw and, for the copy, how far the copy's weights
    are from the trained policy's."""
    from tempo_pl.engines.served_weights import served_weights

    out.mkdir(parents=True, exist_ok=True)
    cli = build(engine_config(out), out)
    cli.model.engine_factory = OwnCopyEngine if engine == "own_copy" else RecordingEngine
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    used = cli.model.engine
    result = {"layers_sharded": used.layers_sharded, "weight_syncs": getattr(used, "weight_syncs", None)}
    served = dict(served_weights(cli.model.policy))  # collective: every rank iterates
    if engine == "own_copy":
        copy = used.copy.state_dict()
        result["copy_max_diff"] = max(float((copy[name] - t).abs().max()) for name, t in served.items())
    (out / f"rank{cli.trainer.global_rank}.json").write_text(json.dumps(result))


# --------------------------------------------------------------------------------------------------------- tests


@pytest.fixture(scope="module")
def two_engine_runs(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("own_weights")
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), str(out)], cwd=ROOT, env=subprocess_env(),
                          capture_output=True, text=True, timeout=WORKER_TIMEOUT_S)
    if proc.returncode != 0:
        pytest.fail(f"2-process worker failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return out


def _seen(out: Path, engine: str, rank: int) -> dict:
    return json.loads((out / engine / f"rank{rank}.json").read_text())


def test_vllm_declares_its_own_weights_and_transformers_does_not() -> None:
    from tempo_pl.engines.vllm import VLLMEngine  # imports without vLLM

    assert VLLMEngine.serves_own_weights is True and HFGenerateEngine.serves_own_weights is False


@pytest.mark.slow
def test_the_module_gathers_for_transformers_and_not_for_an_engine_with_its_own_weights(two_engine_runs: Path) -> None:
    # sanity evaluation, 4 RL steps, evaluations after steps 2 and 4: 7 generate calls per rank
    for rank in (0, 1):
        assert _seen(two_engine_runs, "gathering", rank)["layers_sharded"] == [False] * 7
        own = _seen(two_engine_runs, "own_copy", rank)
        assert own["layers_sharded"] == [True] * 7
        # loaded at the first call (the sanity evaluation, before any forward), then after each M-step's update
        assert own["weight_syncs"] == 1 + 2
        assert own["copy_max_diff"] == 0.0


@pytest.mark.slow
def test_an_engine_with_its_own_weights_trains_as_the_gathering_engine(two_engine_runs: Path) -> None:
    for rank in (0, 1):
        gathering, own = (rollout_records(two_engine_runs / engine / "rollouts", rank) for engine in ENGINES)
        assert [r["phase"] for r in own] == ["E", "M", "E", "M"]
        for a, b in zip(gathering, own):
            # the same responses, step 3 included (sampled after step 1's update: only a synced copy gives them)
            assert (a["prompt_ids"], a["response_lengths"]) == (b["prompt_ids"], b["response_lengths"])
            assert [s["response"] for s in a["samples"]] == [s["response"] for s in b["samples"]]
            # the same update: the phase's loss agrees to the 6 decimals the rollout log keeps
            assert _loss(b, a["phase"]) == pytest.approx(_loss(a, a["phase"]), abs=2e-6), (rank, a["rl_step"])


def _loss(record: dict, phase: str) -> float:
    (value,) = [v for k, v in record["metrics"].items() if k.endswith("/" + LOSSES[phase])]
    return value


if __name__ == "__main__":
    torch.set_num_threads(1)
    for name in ENGINES:
        run_engine(Path(sys.argv[1]) / name, name)
    finish_worker()

"""Rollouts one step ahead (``training.rollout_ahead: 1``, docs/algorithm.md "Rollouts one step ahead"): the rollout
step t trains on is drawn where the straight loop would draw it, sampled from the weights step t-1 started with, and
trained on by the ordinary update; checkpoints carry it (tests/test_resume_signals.py kills and resumes such a run)."""

from __future__ import annotations

from functools import partial

import pytest
import torch

from tempo_pl.config import TrainingConfig
from tempo_pl.engines.hf_generate import HFGenerateEngine
from tempo_pl.stages.ahead import RolloutAhead

STEPS = 4


def fingerprint(model: torch.nn.Module) -> float:
    return float(sum(p.detach().double().sum() for p in model.parameters()))


class RecordingEngine(HFGenerateEngine):
    """Notes, for each ``generate`` call, the prompts and the fingerprint of the weights it sampled with."""

    calls: list = []

    def generate(self, model, prompts, n=None, sampling=None):
        rollout = super().generate(model, prompts, n, sampling)
        if sampling is None:  # training, not evaluation
            RecordingEngine.calls.append((list(prompts.ids), fingerprint(model), rollout))
        return rollout


class ReplayEngine(HFGenerateEngine):
    """Returns the rollout recorded for the same prompts, sampling nothing."""

    recorded: dict = {}

    def generate(self, model, prompts, n=None, sampling=None):
        return ReplayEngine.recorded[tuple(prompts.ids)]


def make_module(tiny_policy_spec, engine, rollout_ahead: int):
    from tempo_pl.config import AlgorithmConfig
    from tempo_pl.models.builders import CriticSpec
    from tempo_pl.module import TempoModule
    from tempo_pl.config import SamplingConfig

    return TempoModule(policy=tiny_policy_spec, critic=CriticSpec(init_from_policy=True, seed=0, head_init_std=0.5),
                       sampling=SamplingConfig(n=2, max_new_tokens=8, max_prompt_length=64),
                       algorithm=AlgorithmConfig(rollout_correction="token_tis"),
                       training=TrainingConfig(mini_batch_size=2, micro_batch_size=4, group_filter=False,
                                               rollout_ahead=rollout_ahead),
                       policy_optimizer=partial(torch.optim.AdamW, lr=1e-2),
                       critic_optimizer=partial(torch.optim.AdamW, lr=1e-2), rollout_engine=engine)


def fit(module, mode: str = "alternate") -> list[dict]:
    from lightning.pytorch import Callback, Trainer, seed_everything

    from tempo_pl.callbacks import EMSchedule
    from tempo_pl.data.datamodule import TempoDataModule
    from tempo_pl.data.sources import DatasetSpec

    seed_everything(5, verbose=False)
    steps: list[dict] = []

    class Record(Callback):
        def on_train_batch_start(self, trainer, pl_module, *args):
            steps.append({"start_weights": fingerprint(pl_module.policy)})

        def on_train_batch_end(self, trainer, pl_module, *args):
            record = pl_module.last_step
            steps[-1].update(prompts=list(record.rollout.prompt_batch.ids), phase=record.plan.phase,
                             metrics=dict(record.metrics))

    data = TempoDataModule(labeled=DatasetSpec(path="synthetic:labeled?size=16"),
                           unlabeled=DatasetSpec(path="synthetic:unlabeled?size=16"), batch_size=2)
    trainer = Trainer(accelerator="cpu", max_epochs=1, limit_train_batches=STEPS, limit_val_batches=0, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      callbacks=[EMSchedule(mode=mode, e_steps=1, m_steps=2) if mode == "alternate"
                                 else EMSchedule(mode=mode), Record()])
    trainer.fit(module, datamodule=data)
    return steps


@pytest.mark.parametrize("mode", ["alternate", "mixed"])
def test_each_rollout_is_sampled_from_the_weights_one_step_before_the_step_that_trains_on_it(tiny_policy_spec, mode):
    RecordingEngine.calls = []
    ahead = make_module(tiny_policy_spec, RecordingEngine, rollout_ahead=1)
    steps = fit(ahead, mode)
    calls = RecordingEngine.calls
    RecordingEngine.calls = []
    straight_steps = fit(make_module(tiny_policy_spec, RecordingEngine, rollout_ahead=0), mode)

    assert len(steps) == STEPS and len(calls) == STEPS + 1  # the last step collects one rollout no step uses
    # drawn where the straight loop draws: the same prompts and phases, step by step
    assert [s["prompts"] for s in steps] == [s["prompts"] for s in straight_steps]
    assert [s["phase"] for s in steps] == [s["phase"] for s in straight_steps]
    assert [ids for ids, _, _ in calls[:STEPS]] == [s["prompts"] for s in steps]
    # step 0's own rollout and step 1's are both sampled from the weights step 0 starts with; step t's (t >= 2) from
    # the weights step t-1 started with
    sampled_with = [weights for _, weights, _ in calls]
    assert sampled_with[0] == sampled_with[1] == steps[0]["start_weights"]
    for t in range(2, STEPS + 1):
        assert sampled_with[t] == steps[t - 1]["start_weights"], t
    # staleness: the policy updates between the sampling weights and the step's own
    updates_before = [0]
    for s in steps:
        updates_before.append(updates_before[-1] + int(s["phase"] != "E"))
    expected = [0] + [updates_before[t] - updates_before[t - 1] for t in range(1, STEPS)]
    assert [s["metrics"]["train/rollout/staleness"] for s in steps] == expected
    assert max(expected) == 1  # some step trains on a rollout one update stale
    assert all(s["metrics"]["train/time/sampler_wait_s"] >= 0 for s in steps)
    # step 0 is the straight loop's step 0: the same rollout from the same weights and RNG
    for key, value in straight_steps[0]["metrics"].items():
        if not key.startswith(("train/time/", "train/perf/")):
            assert steps[0]["metrics"][key] == value, key

    # the explicit reference: the straight loop (rollout_ahead 0) fed those rollouts trains to the same weights
    ReplayEngine.recorded = {tuple(ids): rollout for ids, _, rollout in calls}
    replay = make_module(tiny_policy_spec, ReplayEngine, rollout_ahead=0)
    replayed = fit(replay, mode)
    for a, b in zip(ahead.policy.parameters(), replay.policy.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    for a, b in zip(ahead.critic.parameters(), replay.critic.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    for mine, theirs in zip(steps, replayed):
        for key in ("train/policy/loss", "train/critic/loss", "train/rollout/correction/gap_before"):
            if key in theirs["metrics"]:
                assert mine["metrics"][key] == theirs["metrics"][key], key


def test_the_option_is_checked():
    with pytest.raises(ValueError, match="training.rollout_ahead must be 0 or 1"):
        TrainingConfig(rollout_ahead=2)


def test_the_next_rollout_survives_a_checkpoint_to_the_byte(tiny_policy_spec, tiny_tokenizer):
    from tempo_pl.models.builders import build_policy
    from tempo_pl.config import SamplingConfig
    from tempo_pl.types import PromptBatch

    engine = HFGenerateEngine(tiny_tokenizer, SamplingConfig(n=2, max_new_tokens=6))
    engine.sampling_logprobs = True
    batch = PromptBatch(ids=["a", "b"], prompts=["1+1=", "2+2="], answers=["2", None], is_labeled=[True, False])
    rollout = engine.generate(build_policy(tiny_policy_spec), batch)
    rollout.extra["labeled_scores"] = torch.tensor([1.0, -1.0, 0.0, 0.0])
    ahead = RolloutAhead()
    ahead.launch(lambda: (rollout, {"filter/kept_fraction": 1.0}), policy_updates=3, background=True)
    assert ahead.wait() >= 0
    state = ahead.state_dict()
    buffer = __import__("io").BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    loaded = RolloutAhead()
    loaded.load_state_dict(torch.load(buffer, weights_only=True), torch.device("cpu"))
    back = loaded.take()
    assert back.policy_updates == 3 and back.metrics == {"filter/kept_fraction": 1.0}
    assert back.rollout.prompt_batch == rollout.prompt_batch and back.rollout.texts == rollout.texts
    for name in ("prompt_ids", "prompt_mask", "response_ids", "response_mask", "sampling_logprobs", "group_ids",
                 "is_labeled", "truncated"):
        assert torch.equal(getattr(back.rollout, name), getattr(rollout, name)), name
    assert torch.equal(back.rollout.extra["labeled_scores"], rollout.extra["labeled_scores"])
    assert loaded.take() is None and RolloutAhead().state_dict() == {}


def test_an_error_of_the_collection_reaches_the_step():
    ahead = RolloutAhead()

    def broken():
        raise RuntimeError("sampler died")

    restored = []
    ahead.launch(broken, policy_updates=0, background=True, after_wait=lambda: restored.append(True))
    with pytest.raises(RuntimeError, match="sampler died"):
        ahead.wait()
    assert restored == [True] and ahead.take() is None


def test_the_paper_configs_leave_both_switches_off_and_say_how_to_turn_them_on():
    from pathlib import Path

    import yaml

    configs = sorted((Path(__file__).resolve().parents[1] / "configs" / "tempo").glob("*.yaml"))
    assert configs
    hinted = 0
    for path in configs:  # a base and its overlays: the file that sets `algorithm` carries the hint
        text = path.read_text()
        init = (yaml.safe_load(text).get("model") or {}).get("init_args") or {}
        assert "rollout_correction" not in (init.get("algorithm") or {}), path.name
        assert "rollout_ahead" not in (init.get("training") or {}), path.name
        hint = [line for line in text.splitlines() if line.lstrip().startswith("#") and "rollout_ahead: 1" in line]
        if "algorithm" in init:
            assert len(hint) == 1 and "rollout_correction: token_tis" in hint[0], path.name
            hinted += 1
    assert hinted >= 2  # the AIME base and the HiPhO configs at least

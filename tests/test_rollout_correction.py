"""The rollout correction (``algorithm.rollout_correction``, docs/algorithm.md "Rollout correction"): weights and
masks worked out by hand, the loss it gives, the HF engine's sampling log-probs, and the refusal of an engine
without them."""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch

from tempo_pl.algorithms.correction import rollout_correction
from tempo_pl.algorithms.registry import policy_loss_fn
from tempo_pl.config import AlgorithmConfig

# row 0: token ratios pi_old / pi_sampler = 2, 0.5, 3; row 1: 1, 2 and a padding column
OLD = torch.log(torch.tensor([[0.5, 0.2, 0.9], [0.6, 0.1, 1.0]], dtype=torch.float64))
SAMPLER = torch.log(torch.tensor([[0.25, 0.4, 0.3], [0.6, 0.05, 0.5]], dtype=torch.float64))
MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]], dtype=torch.float64)
L2, L3 = math.log(2.0), math.log(3.0)


def close(tensor, expected) -> None:
    torch.testing.assert_close(torch.as_tensor(tensor, dtype=torch.float64),
                               torch.as_tensor(expected, dtype=torch.float64), rtol=0, atol=1e-12)


def test_token_tis_truncates_each_token_ratio_at_the_cap():
    fix = rollout_correction(OLD, SAMPLER, MASK, "token_tis", cap=2.5)
    close(fix.weights, [[2.0, 0.5, 2.5], [1.0, 2.0, 0.0]])
    close(fix.keep, MASK)
    close(fix.metrics["weight_mean"], 8.0 / 5)
    close(fix.metrics["truncated_fraction"], 1.0 / 5)
    close(fix.metrics["gap_before"], (3 * L2 + L3) / 5)
    close(fix.metrics["gap_after"], math.log(3.0 / 2.5) / 5)  # only the truncated token keeps a gap


def test_sequence_tis_weighs_every_token_by_the_rows_truncated_ratio():
    fix = rollout_correction(OLD, SAMPLER, MASK, "sequence_tis", cap=2.5)
    close(fix.weights, [[2.5, 2.5, 2.5], [2.0, 2.0, 0.0]])  # row ratios 2 * 0.5 * 3 = 3 and 1 * 2 = 2
    close(fix.metrics["weight_mean"], (3 * 2.5 + 2 * 2.0) / 5)
    close(fix.metrics["truncated_fraction"], 1.0 / 2)  # rows
    close(fix.metrics["gap_before"], (L3 + L2) / 2)
    close(fix.metrics["gap_after"], math.log(3.0 / 2.5) / 2)


def test_token_mask_leaves_tokens_outside_the_band_out():
    fix = rollout_correction(OLD, SAMPLER, MASK, "token_mask", cap=2.5)  # band [0.4, 2.5]
    close(fix.weights, MASK)
    close(fix.keep, [[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]])
    close(fix.metrics["masked_fraction"], 1.0 / 5)
    close(fix.metrics["gap_after"], 3 * L2 / 4)  # the kept tokens' gaps, not reweighted


def test_sequence_mask_leaves_rows_outside_the_band_out():
    fix = rollout_correction(OLD, SAMPLER, MASK, "sequence_mask", cap=2.5)
    close(fix.keep, [[0.0, 0.0, 0.0], [1.0, 1.0, 0.0]])  # row 0's ratio 3 is outside [0.4, 2.5]
    close(fix.metrics["masked_fraction"], 1.0 / 2)
    close(fix.metrics["gap_after"], L2)


def test_the_weighted_loss_is_each_tokens_loss_times_its_weight():
    """At ratio 1 (log-probs equal to the old ones) the PPO token loss is -A: the corrected token-mean loss is
    -sum(A * w) / tokens = -(2 - 0.5 + 5 + 0.5 + 2) / 5."""
    adv = torch.tensor([[1.0, -1.0, 2.0], [0.5, 1.0, 0.0]], dtype=torch.float64)
    fix = rollout_correction(OLD, SAMPLER, MASK, "token_tis", cap=2.5)
    config = AlgorithmConfig(policy_loss="ppo", clip_low=0.2, clip_high=0.28, loss_agg_mode="token-mean")
    loss, _ = policy_loss_fn("ppo").fn(OLD.clone(), OLD, adv * fix.weights, MASK * fix.keep, config)
    close(loss, -9.0 / 5)


@pytest.mark.parametrize("loss_name, agg", [("gspo", "seq-mean-token-mean"), ("ppo", "token-mean")])
def test_an_infinite_cap_with_the_samplers_log_probs_equal_gives_todays_loss(loss_name, agg):
    gen = torch.Generator().manual_seed(0)
    old = -torch.rand(4, 6, generator=gen, dtype=torch.float64) * 3
    logp = (old + torch.randn(4, 6, generator=gen, dtype=torch.float64) * 0.1).requires_grad_()
    adv = torch.randn(4, 6, generator=gen, dtype=torch.float64)
    mask = (torch.arange(6) < torch.tensor([[6], [3], [1], [5]])).double()
    config = AlgorithmConfig(policy_loss=loss_name, clip_low=0.2, clip_high=0.28, loss_agg_mode=agg)
    for mode in ("token_tis", "sequence_tis"):
        fix = rollout_correction(old, old.clone(), mask, mode, cap=math.inf)
        assert torch.equal(fix.weights, mask) and torch.equal(fix.keep, mask)
        corrected, _ = policy_loss_fn(loss_name).fn(logp, old, adv * fix.weights, mask * fix.keep, config)
        today, _ = policy_loss_fn(loss_name).fn(logp, old, adv, mask, config)
        assert torch.equal(corrected, today)


def test_the_caps_are_checked_with_the_key_named():
    with pytest.raises(ValueError, match="rollout_correction_cap must be > 1 for token_mask"):
        AlgorithmConfig(rollout_correction="token_mask", rollout_correction_cap=1.0)
    with pytest.raises(ValueError, match="rollout_correction_cap must be > 0 for token_tis"):
        AlgorithmConfig(rollout_correction="token_tis", rollout_correction_cap=0.0)
    with pytest.raises(ValueError, match="rollout_correction must be one of"):
        AlgorithmConfig(rollout_correction="tis")


# ---------------------------------------------------------------------------------------------- the engine
def test_the_hf_engines_sampling_log_probs_are_the_trainers_forward(tiny_policy_spec, tiny_tokenizer):
    from tempo_pl.models.builders import build_policy
    from tempo_pl.models.forward import policy_response_stats
    from tempo_pl.config import SamplingConfig
    from tempo_pl.engines.hf_generate import HFGenerateEngine
    from tempo_pl.stages.minibatch import full_width, row_inputs
    from tempo_pl.types import PromptBatch

    torch.manual_seed(0)
    policy = build_policy(tiny_policy_spec).float()
    for temperature in (1.0, 0.7):
        engine = HFGenerateEngine(tiny_tokenizer, SamplingConfig(n=3, max_new_tokens=12, temperature=temperature))
        batch = PromptBatch(ids=["a", "b"], prompts=["1+1=", "what is 22+3?"], answers=["2", None],
                            is_labeled=[True, False])
        assert engine.generate(policy, batch).sampling_logprobs is None  # off unless asked for
        engine.sampling_logprobs = True
        rollout = engine.generate(policy, batch)
        ids, attn, resp_ids, resp_mask = row_inputs(rollout, torch.device("cpu"))(torch.arange(rollout.num_rows))
        with torch.no_grad():
            trainer = policy_response_stats(policy, ids, attn, resp_ids, resp_mask, temperature=temperature)
        trainer_logprobs = full_width(trainer["logprobs"], rollout.response_ids.shape[1])
        assert rollout.response_mask.sum() > 10
        torch.testing.assert_close(rollout.sampling_logprobs, trainer_logprobs * rollout.response_mask,
                                   rtol=0, atol=1e-5)


def _module(tiny_policy_spec, engine=None, **algorithm):
    from tempo_pl.config import TrainingConfig
    from tempo_pl.models.builders import CriticSpec
    from tempo_pl.module import TempoModule
    from tempo_pl.config import SamplingConfig

    return TempoModule(policy=tiny_policy_spec, critic=CriticSpec(init_from_policy=True, head_init_std=0.5),
                       sampling=SamplingConfig(n=2, max_new_tokens=8, max_prompt_length=64),
                       algorithm=AlgorithmConfig(**algorithm),
                       training=TrainingConfig(mini_batch_size=4, micro_batch_size=4, group_filter=False),
                       policy_optimizer=partial(torch.optim.AdamW, lr=1e-3), rollout_engine=engine)


def test_an_engine_without_sampling_log_probs_is_refused_by_name(tiny_policy_spec):
    class PlainEngine:
        def __init__(self, tokenizer, sampling, batch_size):
            pass

        def generate(self, model, prompts, n=None, sampling=None):
            raise AssertionError("never reached")

    module = _module(tiny_policy_spec, engine=PlainEngine, rollout_correction="token_tis")
    with pytest.raises(ValueError, match=r"rollout_correction='token_tis'.*rollout engine PlainEngine gives none"):
        module.configure_model()
    plain = _module(tiny_policy_spec, engine=PlainEngine)
    plain.configure_model()  # no correction, nothing asked of the engine


def test_a_fit_with_the_correction_logs_it_and_trains(tiny_policy_spec, tmp_path):
    from lightning.pytorch import Callback, Trainer, seed_everything

    from tempo_pl.callbacks import EMSchedule
    from tempo_pl.data.datamodule import TempoDataModule
    from tempo_pl.data.sources import DatasetSpec

    seed_everything(0, verbose=False)
    module = _module(tiny_policy_spec, rollout_correction="token_tis", rollout_correction_cap=1.5)
    logged: list[dict] = []

    class Record(Callback):
        def on_train_batch_end(self, trainer, pl_module, *args):
            logged.append(dict(pl_module.last_step.metrics))

    data = TempoDataModule(labeled=DatasetSpec(path="synthetic:labeled?size=8"),
                           unlabeled=DatasetSpec(path="synthetic:unlabeled?size=8"), batch_size=4)
    trainer = Trainer(accelerator="cpu", max_epochs=1, limit_train_batches=2, limit_val_batches=0, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      callbacks=[EMSchedule(mode="mixed"), Record()], default_root_dir=tmp_path)
    trainer.fit(module, datamodule=data)
    assert module.engine.sampling_logprobs
    for step in logged:
        # the sampler and the trainer are the same fp32 model: ratios within float noise of 1, none truncated
        assert step["train/rollout/correction/weight_mean"] == pytest.approx(1.0, abs=1e-4)
        assert step["train/rollout/correction/truncated_fraction"] == 0.0
        assert 0 <= step["train/rollout/correction/gap_after"] <= step["train/rollout/correction/gap_before"] < 1e-4
        assert step["train/policy/loss"] != 0.0

"""The critic goes first (docs/algorithm.md, "The critic's own values"): with one epoch of one mini-batch its update's
forward gives the labeled rows' values, the no-grad pass computes the unlabeled rows' alone, and the step is the step
the separate pass makes."""

from __future__ import annotations

from functools import partial

import pytest
import torch

from tempo_pl.algorithms.registry import advantage_estimator, register_advantage


def make_module(tiny_policy_spec, advantage: str = "em_token", critic_lr: float = 1e-3, module_cls=None,
                shared_base: bool = False, **training):
    from dataclasses import replace

    from tempo_pl.config import AlgorithmConfig, TrainingConfig
    from tempo_pl.models.builders import CriticSpec, LoraSpec
    from tempo_pl.module import TempoModule
    from tempo_pl.config import SamplingConfig

    cls = module_cls or TempoModule
    critic = CriticSpec(init_from_policy=True, seed=0, head_init_std=0.5)
    if shared_base:  # one base, a LoRA adapter each (here unquantised: the order is under test, not 4-bit)
        tiny_policy_spec = replace(tiny_policy_spec, lora=LoraSpec(r=4, alpha=8))
        critic = replace(critic, lora=LoraSpec(r=4, alpha=8))
    return cls(policy=tiny_policy_spec, critic=critic, shared_base=shared_base,
               sampling=SamplingConfig(n=3, max_new_tokens=8, max_prompt_length=256),
               algorithm=AlgorithmConfig(advantage=advantage),
               training=TrainingConfig(**{"mini_batch_size": 4, "micro_batch_size": 2, "group_filter": False,
                                          **training}),
               policy_optimizer=partial(torch.optim.AdamW, lr=1e-3),
               critic_optimizer=partial(torch.optim.AdamW, lr=critic_lr))


class SeparatePass:
    """Mixed in to keep the order of the separate no-grad pass: values of every row, then advantages, then critic."""

    def critic_goes_first(self, rollout) -> bool:
        return False


def fit(module, monkeypatch, steps: int = 2) -> tuple[list[dict], list[int]]:
    """Trains ``steps`` mixed steps; returns each step's logged metrics and the rows of each no-grad critic pass."""
    from lightning.pytorch import Callback, Trainer, seed_everything

    import tempo_pl.stages.forward as forward
    from tempo_pl.callbacks import EMSchedule
    from tempo_pl.data.datamodule import TempoDataModule
    from tempo_pl.data.sources import DatasetSpec

    seed_everything(3, verbose=False)
    passes: list[int] = []
    from tempo_pl.models.forward import critic_response_values as inner

    def counted(critic, input_ids, *args, **kwargs):
        passes.append(len(input_ids))
        return inner(critic, input_ids, *args, **kwargs)

    monkeypatch.setattr(forward, "critic_response_values", counted)
    logged: list[dict] = []

    class Record(Callback):
        def on_train_batch_end(self, trainer, pl_module, *args):
            rollout = pl_module.last_step.rollout
            logged.append({**pl_module.last_step.metrics, "rows": rollout.num_rows,
                           "labeled_rows": int(rollout.is_labeled.sum())})

    data = TempoDataModule(labeled=DatasetSpec(path="synthetic:labeled?size=8"),
                           unlabeled=DatasetSpec(path="synthetic:unlabeled?size=8"), batch_size=4)
    trainer = Trainer(accelerator="cpu", max_epochs=1, limit_train_batches=steps, limit_val_batches=0, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      callbacks=[EMSchedule(mode="mixed"), Record()])
    trainer.fit(module, datamodule=data)
    return logged, passes


def test_estimators_declare_whether_labeled_targets_read_values():
    assert advantage_estimator("em_token").labeled_returns_from_scores
    assert advantage_estimator("em").labeled_returns_from_scores
    for name in ("gae", "grpo", "rloo"):
        assert not advantage_estimator(name).labeled_returns_from_scores

    @register_advantage("test_own_values_default", needs_critic=True)
    def custom(batch, config):
        return batch.values, batch.values

    assert not advantage_estimator("test_own_values_default").labeled_returns_from_scores


@pytest.mark.parametrize("advantage,shared_base", [("em_token", False), ("em", False), ("em_token", True)])
def test_the_critic_going_first_makes_the_step_of_the_separate_pass(tiny_policy_spec, monkeypatch, advantage,
                                                                     shared_base):
    from tempo_pl.module import TempoModule

    first = make_module(tiny_policy_spec, advantage, shared_base=shared_base)
    separate = make_module(tiny_policy_spec, advantage, shared_base=shared_base,
                           module_cls=type("Separate", (SeparatePass, TempoModule), {}))
    first_logged, first_passes = fit(first, monkeypatch)
    separate_logged, separate_passes = fit(separate, monkeypatch)

    rows = [step["rows"] for step in first_logged]
    unlabeled = [step["rows"] - step["labeled_rows"] for step in first_logged]
    assert all(0 < u < r for u, r in zip(unlabeled, rows))  # mixed batches: both kinds in every step
    # the no-grad pass: every row with the separate pass, the unlabeled rows alone when the critic goes first
    assert sum(separate_passes) == sum(rows) and sum(first_passes) == sum(unlabeled)

    for a, b in zip(first.critic.parameters(), separate.critic.parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    for a, b in zip(first.policy.parameters(), separate.policy.parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    for a, b in zip(first_logged, separate_logged):
        for key in ("train/critic/loss", "train/critic/vpred_mean", "train/critic/grad_norm", "train/policy/loss",
                    "train/advantages/mean", "train/advantages/max", "train/values/labeled_mean",
                    "train/values/unlabeled_mean", "train/values/explained_variance", "train/returns/mean"):
            assert a[key] == pytest.approx(b[key], abs=1e-6), key
    assert "train/critic/loss" in first_logged[0] and first_logged[0]["train/critic/loss"] > 0


def test_the_critic_keeps_the_separate_pass_where_it_cannot_go_first(tiny_policy_spec, monkeypatch):
    from tempo_pl.module import TempoModule
    from tempo_pl.types import StepPlan

    class OwnAdvantages(TempoModule):
        def advantages(self, rollout, stats, scores):
            return super().advantages(rollout, stats, scores)

    class OwnScore(TempoModule):  # may read every row's values
        def score(self, rollout, stats):
            return super().score(rollout, stats)

    class OwnCriticUpdate(TempoModule):  # may not write the labeled rows' values
        def update_critic(self, rollout, stats, returns):
            return super().update_critic(rollout, stats, returns)

    cases = {
        "gae": make_module(tiny_policy_spec, "gae"),  # its targets read the values
        "frozen": make_module(tiny_policy_spec, critic_lr=0.0),  # no update to take values from
        "two mini-batches": make_module(tiny_policy_spec, mini_batch_size=2),  # the second sees updated weights
        "separate pass asked for": make_module(tiny_policy_spec, on_policy_ratio=False),
        "advantages overridden": make_module(tiny_policy_spec, module_cls=OwnAdvantages),
        "score overridden": make_module(tiny_policy_spec, module_cls=OwnScore),
        "update_critic overridden": make_module(tiny_policy_spec, module_cls=OwnCriticUpdate),
    }
    for name, module in cases.items():
        logged, passes = fit(module, monkeypatch, steps=1)
        assert sum(passes) == logged[0]["rows"], name
    plain = make_module(tiny_policy_spec)
    logged, passes = fit(plain, monkeypatch, steps=1)
    assert sum(passes) == logged[0]["rows"] - logged[0]["labeled_rows"]
    plain.set_step_plan(StepPlan("M", "unlabeled", update_critic=False, update_policy=True))
    assert not plain.critic_goes_first(plain.last_step.rollout)

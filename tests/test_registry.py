"""Registries of advantage estimators and policy losses: lookup, errors, `module:name`, and an estimator registered
by an example and named from YAML."""

from __future__ import annotations

import sys

import pytest
import torch

from _tiny_run import ROOT, fit, tiny_config
from tempo_pl.algorithms import AdvantageBatch, advantage_estimator, policy_loss_fn, register_advantage
from tempo_pl.algorithms.registry import advantage_names, policy_loss_names
from tempo_pl.config import AlgorithmConfig
from tempo_pl.types import ForwardStats


def test_builtins_are_registered_with_their_critic_needs():
    assert {"em", "em_token", "gae", "grpo", "rloo"} <= set(advantage_names())
    assert {name: advantage_estimator(name).needs_critic for name in ("em", "em_token", "gae", "grpo", "rloo")} == {
        "em": True, "em_token": True, "gae": True, "grpo": False, "rloo": False}
    assert {"gspo", "ppo"} <= set(policy_loss_names())


def test_unknown_names_list_the_registered_ones():
    with pytest.raises(ValueError, match=r"algorithm.advantage must be one of \[.*'grpo'.*\] or 'module:name'"):
        AlgorithmConfig(advantage="median")
    with pytest.raises(ValueError, match=r"algorithm.policy_loss must be one of \[.*'gspo', 'ppo'.*\]"):
        AlgorithmConfig(policy_loss="dapo")
    with pytest.raises(ValueError, match="cannot import module 'no_such_module'"):
        AlgorithmConfig(advantage="no_such_module:median")
    with pytest.raises(ValueError, match="importing 'math' registered no advantage estimator named 'sqrt'"):
        advantage_estimator("math:sqrt")


def test_a_name_cannot_be_taken_twice():
    @register_advantage("test_only_twice")
    def first(batch, config):
        return batch.mask, batch.mask

    register_advantage("test_only_twice")(first)  # the same function again is harmless
    with pytest.raises(ValueError, match="'test_only_twice' is already registered"):
        register_advantage("test_only_twice")(lambda batch, config: (batch.mask, batch.mask))


def test_builtin_grpo_through_the_registry_matches_hand_numbers():
    # group 0 scores 1, 0 -> mean 0.5, unbiased std sqrt(0.5) -> +-0.5 / 0.7071 = +-0.7071; a group of one row
    # passes its score through (mean 0, std 1: verl's convention), 3 / (1 + 1e-6)
    batch = AdvantageBatch(scores=torch.tensor([1.0, 0.0, 3.0]), mask=torch.tensor([[1.0, 1.0], [1.0, 0.0], [1.0, 1.0]]),
                           group_ids=torch.tensor([0, 0, 1]), is_labeled=torch.tensor([True, True, False]))
    adv, returns = advantage_estimator("grpo").fn(batch, AlgorithmConfig(advantage="grpo", policy_loss="ppo",
                                                                       loss_agg_mode="token-mean"))
    assert adv[:, 0].tolist() == pytest.approx([0.70711, -0.70711, 3.0], abs=1e-4)
    assert adv[1, 1] == 0.0 and torch.equal(adv, returns)


def _example_module():
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        import custom_advantage
    finally:
        sys.path.remove(str(ROOT / "examples"))
    return custom_advantage


def test_example_estimator_by_hand():
    example = _example_module()
    batch = AdvantageBatch(scores=torch.tensor([1.0, -1.0, -1.0, 0.5, 2.0]), mask=torch.ones(5, 2),
                           group_ids=torch.tensor([0, 0, 0, 1, 1]), is_labeled=torch.zeros(5, dtype=torch.bool))
    adv, returns = advantage_estimator("custom_advantage:median_baseline").fn(batch, AlgorithmConfig())
    # group 0 median -1 -> 2, 0, 0; group 1 of two values: torch's median is the lower one, 0.5 -> 0, 1.5
    assert adv[:, 0].tolist() == pytest.approx([2.0, 0.0, 0.0, 0.0, 1.5])
    assert torch.equal(adv, returns)
    assert advantage_estimator("median_baseline").fn is example.median_baseline


def test_example_estimator_runs_from_yaml(tmp_path, monkeypatch):
    """configs/tiny.yaml with examples/custom_advantage.yaml layered on it: the run's advantages are the example's."""
    import yaml

    monkeypatch.syspath_prepend(str(ROOT / "examples"))
    overlay = yaml.safe_load((ROOT / "examples" / "custom_advantage.yaml").read_text())

    def edit(cfg: dict) -> None:
        cfg["model"]["init_args"]["algorithm"].update(overlay["model"]["init_args"]["algorithm"])

    cli = fit(tiny_config(tmp_path, edit, steps=2), tmp_path)
    module = cli.model
    assert module.algorithm.advantage == "custom_advantage:median_baseline"
    record = module.last_step
    adv, _ = module.advantages(record.rollout, ForwardStats.zeros(record.rollout), record.scores)
    scores, groups = record.scores, record.rollout.group_ids
    medians = torch.stack([scores[groups == g].median() for g in groups])
    assert torch.allclose(adv, (scores - medians).unsqueeze(-1) * record.rollout.response_mask)

"""The step as the reference computes it (docs/algorithm.md, "One RL step"): mixed mini-batches, the on-policy
ratio, non-finite gradients, a critic that is not trained, and what "frozen critic" means."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from _tiny_run import ROOT, fit, rollout_records, schedule, straight_and_resumed, tiny_config
from tempo_pl.stages.minibatch import MiniBatchPlan, loss_units, mini_batches, optimize


def test_every_mini_batch_of_a_mixed_step_holds_both_kinds_and_the_deal_is_seeded():
    labeled = torch.tensor([True] * 8 + [False] * 8)  # labeled first, as collection leaves them
    in_order = mini_batches(16, 4, labeled)
    assert [bool(labeled[rows].all()) for rows in in_order] == [True, True, False, False]
    dealt = mini_batches(16, 4, labeled, torch.Generator().manual_seed(0))
    assert all(labeled[rows].any() and (~labeled[rows]).any() for rows in dealt)
    assert sorted(torch.cat(dealt).tolist()) == list(range(16))  # every row exactly once
    again = mini_batches(16, 4, labeled, torch.Generator().manual_seed(0))
    assert [r.tolist() for r in dealt] == [r.tolist() for r in again]


def test_a_non_finite_gradient_skips_the_step_and_is_counted():
    model = torch.nn.Linear(2, 1)
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    x = torch.randn(4, 2)

    def nan_loss(rows):
        loss = model(x[rows]).sum() * float("nan")
        return loss, {"loss": loss}

    out = optimize(4, MiniBatchPlan(2, 2, 1, grad_clip=1.0), opt, None, nan_loss, lambda loss: loss.backward(),
                   lambda *a: None)
    assert out["nonfinite_grad_skips"] == 2.0
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert all(p.grad is None for p in model.parameters())


def test_a_critic_mini_batch_without_a_labeled_row_takes_no_step():
    model = torch.nn.Linear(2, 1)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    steps = []
    opt.step = (lambda step: lambda *a, **k: (steps.append(1), step(*a, **k))[1])(opt.step)
    labeled = torch.tensor([True, True, False, False])

    def loss(rows):
        value = (model(torch.ones(len(rows), 2)).squeeze(-1) * labeled[rows].float()).mean()
        return value, {"loss": value}

    out = optimize(4, MiniBatchPlan(2, 2, 1, grad_clip=0.0), opt, None, loss, lambda v: v.backward(), lambda *a: None,
                   units=lambda rows: float(labeled[rows].sum()))
    assert len(steps) == 1 and out["skipped_mini_batches"] == 1.0


def _mixed(cfg: dict) -> None:
    schedule(cfg)["init_args"] = {"mode": "mixed"}


def test_first_update_of_a_one_mini_batch_step_is_exactly_on_policy_in_bf16(tmp_path: Path):
    def edit(cfg: dict) -> None:
        _mixed(cfg)
        args = cfg["model"]["init_args"]
        args["policy"]["dtype"] = "bfloat16"
        args["training"]["mini_batch_size"] = 4  # the whole batch of 4 prompts: one mini-batch, one epoch
        args["algorithm"].update(clip_low=3e-4, clip_high=5e-4)  # GSPO's own clip: any ratio drift would show

    cli = fit(tiny_config(tmp_path, edit, steps=1), tmp_path)
    metrics = cli.model.last_step.metrics
    assert metrics["train/policy/clipfrac"] == 0.0
    assert metrics["train/policy/ratio_mean"] == 1.0
    assert "train/policy/entropy" in metrics  # from the training forward: no separate no-grad pass was made


def test_nan_gradient_in_a_fit_leaves_the_policy_unchanged(tmp_path: Path):
    def edit(cfg: dict) -> None:
        _mixed(cfg)
        cfg["model"]["class_path"] = "_nan_policy.NanPolicyLoss"

    tiny = tiny_config(tmp_path, edit, steps=1)
    from _tiny_run import build

    cli = build(tiny, tmp_path)
    cli.model.configure_model()
    before = {k: v.detach().clone() for k, v in cli.model.policy.state_dict().items()}
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    after = cli.model.policy.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    metrics = cli.model.last_step.metrics
    # 4 prompts in mini-batches of 2: both policy steps skipped; the critic's were not
    assert metrics["train/policy/nonfinite_grad_skips"] == 2.0
    assert metrics["train/critic/nonfinite_grad_skips"] == 0.0
    assert math.isnan(metrics["train/policy/loss"])


def test_frozen_critic_config_trains_with_spread_rewards_and_an_unchanged_critic(tmp_path: Path):
    """configs/tempo/frozen_critic.yaml over configs/tiny.yaml: the mixed step with a critic at lr 0, which is never
    updated (no critic backward) while its values still reward D_U rows."""
    from _tiny_run import build

    from tempo_pl.run.config_layers import read_layers

    cfg = read_layers([ROOT / "configs/tiny.yaml", ROOT / "configs/tempo/frozen_critic.yaml"])
    cfg["trainer"].update(limit_train_batches=2, num_sanity_val_steps=0, limit_val_batches=0,
                          enable_progress_bar=False, enable_model_summary=False)
    cfg["trainer"]["logger"]["init_args"]["save_dir"] = str(tmp_path / "runs")
    cfg["trainer"]["callbacks"].append({"class_path": "tempo_pl.callbacks.RolloutSampleLogger",
                                        "init_args": {"max_samples": 2, "dirpath": str(tmp_path / "rollouts")}})
    cli = build(cfg, tmp_path)
    cli.model.configure_model()
    critic_before = {k: v.detach().clone() for k, v in cli.model.critic.state_dict().items()}
    policy_before = {k: v.detach().clone() for k, v in cli.model.policy.state_dict().items()}
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    record = cli.model.last_step
    unlabeled = ~record.rollout.is_labeled
    assert unlabeled.any() and record.scores[unlabeled].std() > 0  # the D_U rewards differ between responses
    assert all(torch.equal(critic_before[k], v) for k, v in cli.model.critic.state_dict().items())
    assert any(not torch.equal(policy_before[k], v) for k, v in cli.model.policy.state_dict().items())
    for step in rollout_records(tmp_path / "rollouts"):
        assert not any(k.startswith("train/critic/") for k in step["metrics"])  # no critic update ran
        assert "train/values/mean" in step["metrics"]  # but its values were computed


def test_a_zero_value_head_that_is_never_updated_is_refused(tmp_path: Path):
    def edit(cfg: dict) -> None:
        _mixed(cfg)
        cfg["model"]["init_args"]["critic_optimizer"]["init_args"]["lr"] = 0.0

    with pytest.raises(ValueError, match="zero-initialised .* and its learning rate is 0"):
        fit(tiny_config(tmp_path, edit, steps=1), tmp_path)

    def no_e_steps(cfg: dict) -> None:
        schedule(cfg)["init_args"] = {"mode": "unlabeled"}

    (tmp_path / "b").mkdir()
    with pytest.raises(ValueError, match="the schedule never updates it"):
        fit(tiny_config(tmp_path / "b", no_e_steps, steps=1), tmp_path / "b")


def test_mixed_resume_continues_the_mini_batch_deal(tmp_path: Path):
    """With two mini-batches per mixed step the row deal is random: a resumed run continues its generator."""
    from test_module import _assert_same_trajectory

    def edit(cfg: dict) -> None:
        _mixed(cfg)
        cfg["trainer"]["max_epochs"] = 2

    straight, _, resumed = straight_and_resumed(tmp_path, edit, steps=2)
    _assert_same_trajectory(straight, resumed)


def test_micro_batches_weigh_by_the_units_their_loss_averages_over():
    """A critic mini-batch of 4 rows, 3 labeled, in micro-batches of 2 (2 labeled, then 1): the gradient is the mean
    over the 3 labeled rows, as one micro-batch of all 4 gives it."""
    torch.manual_seed(0)
    x, y = torch.randn(4, 3), torch.randn(4)
    labeled = torch.tensor([True, True, True, False])
    mask = labeled.float().unsqueeze(-1)
    base = torch.nn.Linear(3, 1)

    def run(rows_per_micro: int):
        import copy

        model = copy.deepcopy(base)
        opt = torch.optim.SGD(model.parameters(), lr=0.5)

        def micro_loss(rows):
            m = mask[rows].squeeze(-1)
            per_row = (model(x[rows]).squeeze(-1) - y[rows]) ** 2
            loss = (per_row * m).sum() / m.sum().clamp(min=1)  # the mean over the micro-batch's labeled rows
            return loss, {"loss": loss}

        optimize(4, MiniBatchPlan(4, rows_per_micro, 1, grad_clip=0.0), opt, None, micro_loss,
                 lambda v: v.backward(), lambda *a: None, units=loss_units(mask, "seq-mean-token-mean"))
        return model

    whole, split = run(4), run(2)
    for a, b in zip(whole.parameters(), split.parameters()):
        assert torch.allclose(a, b, atol=1e-6)
    assert loss_units(torch.tensor([[1.0, 1.0], [1.0, 0.0], [0.0, 0.0]]), "token-mean")(torch.arange(3)) == 3.0

"""End-to-end tests of the TEMPO loop on the tiny offline config: resume, label isolation, logging, subclassing."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from _tiny_run import ROOT, fit, rollout_records, run_cli, schedule, straight_and_resumed, tiny_config

pytestmark = pytest.mark.filterwarnings("ignore")

LOSS_KEYS = ("train/critic/loss", "train/policy/loss", "train/policy/pg_loss")


def _trajectory(records: list[dict]) -> list[tuple]:
    return [(r["rl_step"], r["phase"], tuple(r["prompt_ids"]), tuple(r["scores"]),
             tuple(r["metrics"].get(k) for k in LOSS_KEYS)) for r in records]


def _assert_same_trajectory(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x["rl_step"] == y["rl_step"] and x["phase"] == y["phase"]
        assert x["prompt_ids"] == y["prompt_ids"], f"step {x['rl_step']}: different prompts"
        assert x["scores"] == pytest.approx(y["scores"], abs=1e-6)
        for key in LOSS_KEYS:
            assert (key in x["metrics"]) == (key in y["metrics"])
            if key in x["metrics"]:
                assert x["metrics"][key] == pytest.approx(y["metrics"][key], abs=1e-6), f"step {x['rl_step']} {key}"


def _alternate_2_2(cfg: dict) -> None:
    schedule(cfg)["init_args"] = {"mode": "alternate", "e_steps": 2, "m_steps": 2}


def test_resume_mid_phase_matches_straight_run(tmp_path: Path) -> None:
    """6 RL steps straight == 3 steps, checkpoint, resume, 3 more: same prompts in the same order, same losses."""

    def edit(cfg: dict) -> None:
        _alternate_2_2(cfg)
        cfg["trainer"]["max_epochs"] = 2

    straight, first_half, resumed = straight_and_resumed(tmp_path, edit, steps=3)
    # the schedule stopped inside an M phase: E, E, M | M, E, E
    assert [r["phase"] for r in first_half] == ["E", "E", "M"]
    assert [r["phase"] for r in straight] == ["E", "E", "M", "M", "E", "E"]
    # the comparison below is over real numbers: each step logged the loss of what it updated
    assert all("train/critic/loss" in r["metrics"] for r in straight if r["phase"] == "E")
    assert all("train/policy/loss" in r["metrics"] for r in straight if r["phase"] == "M")
    assert [r["rl_step"] for r in resumed] == list(range(6))
    _assert_same_trajectory(straight, resumed)


def _labeled_unlabeled_files(folder: Path, scramble: bool) -> tuple[Path, Path]:
    from tempo_pl.data.synthetic import SyntheticTaskSpec, make_split, write_jsonl

    spec = SyntheticTaskSpec()
    labeled = make_split(spec, "labeled")[:24]
    unlabeled = make_split(spec, "unlabeled")[:24]
    if scramble:
        rng = random.Random(123)
        unlabeled = [{**row, "answer": str(rng.randint(-10**6, 10**6))} for row in unlabeled]
    return write_jsonl(labeled, folder / "dl.jsonl"), write_jsonl(unlabeled, folder / "du.jsonl")


def test_scrambled_unlabeled_answers_do_not_change_training(tmp_path: Path) -> None:
    """Label isolation: every D_U answer replaced by a random number, the trajectory is identical."""
    runs = []
    for scramble in (False, True):
        folder = tmp_path / ("scrambled" if scramble else "original")
        folder.mkdir()
        dl, du = _labeled_unlabeled_files(folder, scramble)

        def edit(cfg: dict, dl=dl, du=du) -> None:
            schedule(cfg)["init_args"] = {"mode": "mixed"}
            cfg["data"]["init_args"]["labeled"] = {"path": str(dl), "name": "dl"}
            cfg["data"]["init_args"]["unlabeled"] = {"path": str(du), "name": "du"}

        cli = fit(tiny_config(folder, edit, steps=3), folder)
        held = cli.datamodule.heldout_answers
        assert len(held) == 24  # the answers were read, for evaluation only
        runs.append(rollout_records(folder / "rollouts"))
    assert all(r["phase"] == "EM" for r in runs[0])
    assert all("train/critic/loss" in r["metrics"] and "train/policy/loss" in r["metrics"] for r in runs[0])
    assert any(not lab for r in runs[0] for lab in r["is_labeled"])
    _assert_same_trajectory(runs[0], runs[1])


REQUIRED_SCALARS = [
    "train/phase", "train/rl_step",
    "train/score/labeled_mean", "train/score/unlabeled_mean", "train/score/unlabeled_std",
    "train/advantages/mean", "train/advantages/max", "train/advantages/min",
    "train/returns/mean", "train/values/mean", "train/values/explained_variance",
    "train/critic/loss", "train/critic/vf_clipfrac",
    "train/policy/loss", "train/policy/clipfrac", "train/policy/approx_kl", "train/policy/entropy",
    "train/response/length_mean", "train/response/length_max", "train/response/clip_fraction",
    "train/filter/kept_fraction",
    "train/time/generation_s", "train/time/update_s", "train/perf/tokens_per_s",
]


def test_tiny_config_logs_every_metric_per_rl_step(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path, validate=True)
    cfg["trainer"]["enable_progress_bar"] = True
    version, acc = run_cli("fit", cfg, tmp_path)
    tags = set(acc.Tags()["scalars"])
    missing = [t for t in REQUIRED_SCALARS if t not in tags]
    assert not missing, f"not logged: {missing}"
    phases = [e.value for e in acc.Scalars("train/phase")]
    assert [e.step for e in acc.Scalars("train/phase")] == [0, 1, 2, 3]
    assert phases == [0.0, 1.0, 0.0, 1.0]  # E, M, E, M
    # a metric an M-step does not produce is absent at M-steps, not repeated from the E-step before
    assert [e.step for e in acc.Scalars("train/critic/loss")] == [0, 2]
    assert [e.step for e in acc.Scalars("train/policy/loss")] == [1, 3]
    # validation before training and every 2 RL steps, with per-question records beside the logs
    val_tags = [t for t in tags if t.startswith("val/heldout/")]
    assert "val/heldout/mean@2" in val_tags and "val/heldout/pass@2" in val_tags
    assert sorted({e.step for e in acc.Scalars("val/heldout/mean@2")}) == [0, 2, 4]
    files = sorted((version / "eval").glob("heldout_step*.jsonl"))
    assert [f.name for f in files] == ["heldout_step000000.jsonl", "heldout_step000002.jsonl",
                                       "heldout_step000004.jsonl"]
    rows = [json.loads(line) for line in files[0].read_text().splitlines()]
    assert len(rows) == 4 and all(len(r["correct"]) == 2 for r in rows)


def test_group_filter_drops_labeled_groups_without_signal_and_bounds_regeneration(tmp_path: Path) -> None:
    """A random policy fails every labeled prompt: all labeled groups are filtered, at most max_generation_batches
    are drawn, and the step is skipped rather than crashing."""

    def edit(cfg: dict) -> None:
        schedule(cfg)["init_args"] = {"mode": "alternate", "e_steps": 1, "m_steps": 1}
        cfg["model"]["init_args"]["training"].update(group_filter=True, max_generation_batches=3)

    cli = fit(tiny_config(tmp_path, edit, steps=2), tmp_path)
    records = rollout_records(tmp_path / "rollouts")
    e_step = records[0]
    assert e_step["phase"] == "E"
    assert e_step["metrics"]["train/filter/generation_batches"] == 3.0
    assert e_step["metrics"]["train/filter/kept_fraction"] == 0.0
    assert e_step["metrics"]["train/skipped_step"] == 1.0
    assert e_step["prompt_ids"] == []
    # unlabeled groups are never filtered
    assert records[1]["metrics"]["train/filter/kept_fraction"] == 1.0
    # the E-step drew 3 batches of 4 prompts from D_L (stream offsets count rows), the M-step one batch from D_U
    state = cli.datamodule.streams.state_dict()
    assert (state["labeled"]["epoch"], state["labeled"]["offset"]) == (0, 12)
    assert (state["unlabeled"]["epoch"], state["unlabeled"]["offset"]) == (0, 4)


def test_example_subclass_runs(tmp_path: Path) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("length_penalty", ROOT / "examples" / "length_penalty.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)

    def edit(cfg: dict) -> None:
        cfg["model"]["class_path"] = "length_penalty.LengthPenalizedTempo"
        cfg["model"]["init_args"]["length_penalty"] = 0.01
        schedule(cfg)["init_args"] = {"mode": "unlabeled"}

    import sys

    sys.modules["length_penalty"] = example
    cli = fit(tiny_config(tmp_path, edit, steps=1), tmp_path)
    assert isinstance(cli.model, example.LengthPenalizedTempo)
    record = rollout_records(tmp_path / "rollouts")[0]
    # the subclass's score = critic value - 0.01 * length; the zero-initialised critic head values are 0
    lengths = cli.model.last_step.rollout.response_mask.sum(-1)
    assert record["scores"] == pytest.approx((-0.01 * lengths).tolist(), abs=1e-5)
    assert "train/length_penalty/mean" in record["metrics"]


def test_module_requires_em_schedule(tmp_path: Path) -> None:
    def edit(cfg: dict) -> None:
        cfg["trainer"]["callbacks"] = [cb for cb in cfg["trainer"]["callbacks"]
                                       if not cb["class_path"].endswith("EMSchedule")]

    with pytest.raises(RuntimeError, match="EMSchedule"):
        fit(tiny_config(tmp_path, edit, steps=1), tmp_path)


def test_config_errors_name_the_key() -> None:
    from tempo_pl.config import AlgorithmConfig, TrainingConfig

    with pytest.raises(ValueError, match="algorithm.advantage"):
        AlgorithmConfig(advantage="ppo")
    with pytest.raises(ValueError, match="gamma/lam"):
        AlgorithmConfig(advantage="em_token", lam=0.95)
    with pytest.raises(ValueError, match="training.mini_batch_size"):
        TrainingConfig(mini_batch_size=0)


def test_kl_entropy_and_schedulers_are_applied(tmp_path: Path) -> None:
    """KL to a frozen reference copy and the entropy bonus enter the loss; LR schedulers step once per optimizer step."""

    def edit(cfg: dict) -> None:
        schedule(cfg)["init_args"] = {"mode": "mixed"}
        args = cfg["model"]["init_args"]
        args["algorithm"].update(kl_coef=0.1, kl_kind="low_var_kl", entropy_coef=0.01)
        args["policy_scheduler"] = {"class_path": "torch.optim.lr_scheduler.StepLR",
                                    "init_args": {"step_size": 1, "gamma": 0.5}}
        args["critic_scheduler"] = {"class_path": "torch.optim.lr_scheduler.StepLR",
                                    "init_args": {"step_size": 1, "gamma": 0.1}}

    cli = fit(tiny_config(tmp_path, edit, steps=2), tmp_path)
    assert cli.model.reference is not None
    records = rollout_records(tmp_path / "rollouts")
    for r in records:
        assert "train/policy/kl_ref" in r["metrics"] and "train/policy/entropy_bonus" in r["metrics"]
    # 4 prompts x 4 samples per step, mini-batches of 2 prompts: 2 optimizer steps of each model per RL step
    policy_opt, critic_opt = cli.model.optimizers()
    assert policy_opt.param_groups[0]["lr"] == pytest.approx(1e-4 * 0.5**4)
    assert critic_opt.param_groups[0]["lr"] == pytest.approx(1e-4 * 0.1**4)
    assert cli.trainer.global_step == 8  # optimizer steps of both optimizers, not RL steps


def test_validate_subcommand_logs_and_writes_records(tmp_path: Path) -> None:
    version, acc = run_cli("validate", tiny_config(tmp_path, validate=True), tmp_path)
    for key in ("mean@2", "pass@1", "pass@2", "maj@2", "distinct_answers", "answer_entropy", "no_answer_rate"):
        assert f"val/heldout/{key}" in acc.Tags()["scalars"], key
    records = [json.loads(x) for x in (version / "eval" / "heldout_step000000.jsonl").read_text().splitlines()]
    assert [len(r["answers"]) for r in records] == [2, 2, 2, 2]
    assert all(r["values"] is not None for r in records)  # the critic's last-token values, for calibration

"""``tempo-pl demo``: step scaling, stage commands, the summary's numbers, and a shortened demo end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tempo_pl.pipelines import demo, demo_config, demo_stages, demo_summary
from tempo_pl.pipelines.demo_config import DemoConfig
from tempo_pl.pipelines.demo_stages import STAGES, TEST_TIME_METHODS
from tempo_pl.run.config_layers import read_layers

SUMMARY_KEYS = {
    "k", "steps", "mean_at_k_start", "mean_at_k_final", "pass_at_k_start", "pass_at_k_final",
    "heldout_mean_at_k_final", "heldout_pass_at_k_final", "wall_seconds",
}


# ----------------------------------------------------------------------------------------------- step counts


def test_scaled_rounds_and_keeps_at_least_one_step():
    assert demo.scaled(600, 1.0) == 600
    assert demo.scaled(600, 0.01) == 6  # 600 * 0.01
    assert demo.scaled(40, 0.01) == 1  # 0.4 rounds to 0, raised to the minimum of 1
    assert demo.scaled(40, 1.5) == 60


def test_a_test_time_scale_multiplies_the_rl_steps_only_and_keeps_the_evaluation_steps():
    assert demo.test_time_schedule(40, 10, 1.0, 2.0) == (80, 10)
    assert demo.test_time_schedule(40, 10, 0.5, 2.0) == (40, 5)
    assert demo.test_time_schedule(40, 10, 1.0, 1.5) == (60, 10)


def test_a_test_time_scale_shares_the_stage_1_models_and_names_its_runs_and_report(tmp_path):
    cfg = DemoConfig(out=tmp_path, test_time_scale=2, seeds=2)
    names = [s.name for s in cfg.stages]
    assert names[:2] == ["sft", "zero_rl"] and names[-1] == "report_x2"
    assert {s.name for s in cfg.stages if s.method == "tempo"} == {"tempo_x2", "tempo_seed1_x2"}
    for name in ("sft", "zero_rl"):  # a finished 1x demo's stage-1 models are reused
        (tmp_path / name).mkdir()
        (tmp_path / name / "done.json").write_text("{}")
    assert not demo_stages.is_done(tmp_path, "report_x2")
    (tmp_path / "summary.json").write_text("{}")  # the 1x report does not count as the 2x one
    assert demo_stages.is_done(tmp_path, "report") and not demo_stages.is_done(tmp_path, "report_x2")
    _fake_zero_rl_export(tmp_path)
    stage = next(s for s in cfg.stages if s.name == "tempo_seed1_x2")
    args = demo.fit_args(stage, cfg)
    assert _arg(args, "--trainer.limit_train_batches") == "80"
    assert _arg(args, "--trainer.val_check_interval") == "10"
    assert _arg(args, "--seed_everything") == "1"  # seed 1 of the 2x runs draws as seed 1 of the 1x runs
    sft = demo.fit_args(cfg.stages[0], cfg)
    assert _arg(sft, "--trainer.max_steps") == str(
        yaml.safe_load((demo_config.DEMO_CONFIGS / "sft.yaml").read_text())["trainer"]["max_steps"])
    assert demo.config_from_args(["--out", str(tmp_path), "--test-time-scale", "2"]).test_time_scale == 2.0
    with pytest.raises(ValueError, match="--test-time-scale"):
        DemoConfig(out=tmp_path, test_time_scale=0)


def test_the_2x_report_compares_each_method_with_its_1x_runs(tmp_path):
    curve = lambda v: {"val/unlabeled/mean@4": v, "val/unlabeled/pass@4": 0.5, "val/heldout/mean@4": 0.1,  # noqa: E731
                       "val/heldout/pass@4": 0.2}
    cfg = DemoConfig(out=tmp_path, test_time_scale=2)
    assert demo_summary.test_time_compute(cfg, {}) == {"missing_1x_runs": list(TEST_TIME_METHODS)}
    scaled = {}
    for i, method in enumerate(TEST_TIME_METHODS):
        for name, steps, final in ((method, 10, 0.5 + i / 100), (f"{method}_x2", 20, 0.6)):
            _write_curves(tmp_path / name, {0: curve(0.25), steps: curve(final)})
            (tmp_path / name / "done.json").write_text(json.dumps({"wall_seconds": 3.0}))
        scaled[method] = demo_summary.method_summary(tmp_path / f"{method}_x2", 3.0)
    table = demo_summary.test_time_compute(cfg, scaled)
    assert table["ttrl"]["steps_1x"] == 10 and table["ttrl"]["steps_2x"] == 20
    assert table["ttrl"]["mean_at_k_1x"] == pytest.approx(0.51)
    assert table["ttrl"]["mean_at_k_2x"] == pytest.approx(0.6)
    assert table["ttrl"]["gain"] == pytest.approx(0.09)
    text = (tmp_path / "test_time_compute_x2.md").read_text()
    assert "| ttrl | 10 | 0.510 | 20 | 0.600 | +0.090 |" in text


def test_time_schedule_ends_on_an_evaluation():
    assert demo.test_time_schedule(40, 10, 1.0) == (40, 10)
    # 45 steps, every 10: rounded up to 50 so that the last step is evaluated
    assert demo.test_time_schedule(45, 10, 1.0) == (50, 10)
    # scale 0.01: every = max(1, round(0.1)) = 1, steps = max(1, round(0.4)) = 1
    assert demo.test_time_schedule(40, 10, 0.01) == (1, 1)
    # scale 0.3: every = round(3.0) = 3, steps = round(12.0) = 12 = 4 evaluations of 3 steps
    assert demo.test_time_schedule(40, 10, 0.3) == (12, 3)
    # scale 0.35: every = round(3.5) = 4 (round half to even), steps = round(14.0) = 14 -> up to 16 = 4 x 4
    assert demo.test_time_schedule(40, 10, 0.35) == (16, 4)


# ----------------------------------------------------------------------------------------------- options


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"steps_scale": 0}, "--steps-scale"),
        ({"steps_scale": float("nan")}, "--steps-scale"),
        ({"only": ["sft", "evaluate"]}, "--only"),
        ({"jobs": 0}, "--jobs"),
        ({"launcher": "inprocess", "jobs": 2}, "--jobs 1"),
        ({"launcher": "ray"}, "--launcher"),
        ({"overrides": ["trainer.max_steps=3"]}, "--set"),
        ({"seeds": 0}, "--seeds"),
        ({"scenario": "easy"}, r"--scenario must be one of \['trap', 'recheck', 'drift'\]"),
    ],
)
def test_bad_options_are_named(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        DemoConfig(out=tmp_path, **kwargs)


def test_missing_configs_name_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="sft.yaml"):
        DemoConfig(out=tmp_path / "out", config_dir=tmp_path)


def test_command_line_parsing(tmp_path):
    cfg = demo.config_from_args(["--out", str(tmp_path), "--steps-scale", "0.5", "--only", "tempo, report",
                                 "--jobs", "1", "--set=--trainer.limit_val_batches=1", "--launcher", "inprocess"])
    assert (cfg.out, cfg.steps_scale, cfg.only, cfg.jobs) == (tmp_path, 0.5, ["tempo", "report"], 1)
    assert cfg.overrides == ["--trainer.limit_val_batches=1"] and cfg.launcher == "inprocess"
    assert [s.name for s in cfg.selected()] == ["tempo", "report"]


def test_test_time_runs_form_one_parallel_group():
    groups = [[s.name for s in g] for g in demo_stages.parallel_groups(STAGES)]
    assert groups == [["sft"], ["zero_rl"], list(TEST_TIME_METHODS), ["report"]]


def test_seeds_run_every_method_once_per_seed_from_the_shared_start(tmp_path):
    cfg = DemoConfig(out=tmp_path, seeds=3, only=["ttrl", "report"])
    assert [s.name for s in cfg.selected()] == ["ttrl", "ttrl_seed1", "ttrl_seed2", "report"]
    stages = {s.name: s for s in cfg.stages}
    assert len(stages) == 2 + 3 * len(TEST_TIME_METHODS) + 1
    assert stages["report"].needs == tuple(n for n in stages if n not in ("sft", "zero_rl", "report"))
    start = _fake_zero_rl_export(tmp_path)
    config = read_layers([demo_config.DEMO_CONFIGS / "tempo.yaml"])
    seed0, seed2 = demo.fit_args(stages["tempo"], cfg), demo.fit_args(stages["tempo_seed2"], cfg)
    assert not [a for a in seed0 if "seed" in a.split("=", 1)[0]]  # seed 0 is the config's own
    assert _arg(seed2, "--seed_everything") == str(config["seed_everything"] + 2)
    assert _arg(seed2, "--data.init_args.seed") == str(config["data"]["init_args"]["seed"] + 2)
    assert json.loads(_arg(seed2, "--trainer.logger"))["init_args"]["version"] == "tempo_seed2"
    assert _arg(seed2, "--model.init_args.policy.name_or_path") == start["policy"]


def _configs(args: list[str]) -> list[Path]:
    return [Path(a.split("=", 1)[1]) for a in args if a.startswith("--config=")]


def test_another_scenario_rewrites_the_task_and_its_stage_settings_only(tmp_path):
    cfg = DemoConfig(out=tmp_path, scenario="recheck")
    scenarios = demo_config.read_scenarios(demo_config.DEMO_CONFIGS)
    assert DemoConfig(out=tmp_path).scenario == next(iter(scenarios)) == "trap"
    stages = {s.name: s for s in cfg.stages}
    _fake_zero_rl_export(tmp_path)
    for name in ("sft", "tempo", "ttrl"):
        paths = _configs(demo.fit_args(stages[name], cfg))
        assert paths == [tmp_path / "configs" / "recheck" / c for c in stages[name].configs]  # every layer rewritten
        for path, layer in zip(paths, stages[name].configs):
            shipped = yaml.safe_load((demo_config.DEMO_CONFIGS / layer).read_text())
            rewritten = yaml.safe_load(path.read_text())
            synthetic = list(_synthetic_paths(rewritten))
            assert all(p.endswith(scenarios["recheck"]["task"]) for p in synthetic)
            assert [p.split("&max_multiplier")[0] for p in synthetic] == [
                p.split("&max_multiplier")[0] for p in _synthetic_paths(shipped)]  # split, seed and size kept
            assert demo.with_task(rewritten, scenarios["trap"]["task"]) == shipped
        assert list(_synthetic_paths(read_layers(paths)))


def test_a_scenario_sets_stage_keys_and_names_a_missing_one(tmp_path):
    folder = tmp_path / "configs"
    folder.mkdir()
    for name in {c for stage in STAGES for c in stage.configs}:
        (folder / name).write_text((demo_config.DEMO_CONFIGS / name).read_text())
    (folder / "scenarios.yaml").write_text(
        "a: {task: 'max_value=20'}\nb: {task: 'max_value=30', stages: {sft: {trainer.max_steps: 5}, "
        "ttrl: {model.init_args.sampling.n: 4}}}\n"
        "c: {task: 'max_value=30', stages: {sft: {trainer.max_step: 5}}}\n")
    b = DemoConfig(out=tmp_path / "b", config_dir=folder, scenario="b")
    written = _configs(demo.fit_args(STAGES[0], b))
    assert written == [tmp_path / "b" / "configs" / "b" / name for name in ("sft.yaml", "sft.settings.yaml")]
    config = read_layers(written)
    assert config["trainer"]["max_steps"] == 5
    assert config["data"]["init_args"]["path"].endswith("&max_value=30")
    # a test-time method's settings come as an overlay of its own: TEMPO's run and the shared base keep n 8
    _fake_zero_rl_export(tmp_path / "b")
    stages = {s.name: s for s in b.stages}
    ttrl, tempo = (_configs(demo.fit_args(stages[name], b)) for name in ("ttrl", "tempo"))
    assert [p.name for p in ttrl] == ["tempo.yaml", "ttrl.yaml", "ttrl.settings.yaml"]
    assert [p.name for p in tempo] == ["tempo.yaml"]
    assert read_layers(ttrl)["model"]["init_args"]["sampling"]["n"] == 4
    assert read_layers(tempo)["model"]["init_args"]["sampling"]["n"] == 8
    cfg = DemoConfig(out=tmp_path / "c", config_dir=folder, scenario="c")
    with pytest.raises(ValueError, match=r"scenario 'c', sft: 'trainer.max_step' is not a key"):
        demo.fit_args(STAGES[0], cfg)


# ----------------------------------------------------------------------------------------------- stage commands


def _fake_zero_rl_export(out: Path) -> dict:
    hf = out / "zero_rl" / "hf"
    hf.mkdir(parents=True)
    info = {"rl_steps": 40, "policy": str(hf / "policy"), "critic": str(hf / "critic")}
    (hf / "export.json").write_text(json.dumps(info))
    return info


def _arg(args: list[str], key: str) -> str:
    found = [a.split("=", 1)[1] for a in args if a.startswith(key + "=")]
    assert len(found) == 1, (key, args)
    return found[0]


def test_fit_args_chain_the_stages(tmp_path):
    cfg = DemoConfig(out=tmp_path, steps_scale=0.5, overrides=["--data.init_args.eval_limit=8"])
    stages = {s.name: s for s in STAGES}
    configs = {name: read_layers([demo_config.DEMO_CONFIGS / c for c in stage.configs])
               for name, stage in stages.items() if name != "report"}

    sft = demo.fit_args(stages["sft"], cfg)
    assert _arg(sft, "--trainer.max_steps") == str(round(configs["sft"]["trainer"]["max_steps"] * 0.5))
    assert _arg(sft, "--model.init_args.save_dir") == str(tmp_path / "sft" / "policy")
    assert "--data.init_args.eval_limit=8" not in sft  # the SFT data module has no eval sets: overrides are RL-only
    logger = json.loads(_arg(sft, "--trainer.logger"))["init_args"]
    assert (logger["save_dir"], logger["name"], logger["version"]) == (str(tmp_path), "", "sft")
    progress = json.loads(_arg(sft, "--trainer.callbacks+"))
    assert progress["init_args"]["path"] == str(tmp_path / "sft" / "progress.json")

    zero = demo.fit_args(stages["zero_rl"], cfg)
    assert _arg(zero, "--model.init_args.policy.name_or_path") == str(tmp_path / "sft" / "policy")
    assert _arg(zero, "--trainer.limit_train_batches") == str(
        max(1, round(configs["zero_rl"]["trainer"]["limit_train_batches"] * 0.5)))
    assert zero[-1] == "--data.init_args.eval_limit=8"  # last, so it wins over the demo's own arguments

    with pytest.raises(FileNotFoundError, match="export.json"):
        demo.fit_args(stages["tempo"], cfg)  # zero-RL has not run yet
    start = _fake_zero_rl_export(tmp_path)
    for name in TEST_TIME_METHODS:
        args = demo.fit_args(stages[name], cfg)
        trainer = configs[name]["trainer"]
        steps, every = demo.test_time_schedule(trainer["limit_train_batches"], trainer["val_check_interval"], 0.5)
        assert _arg(args, "--trainer.limit_train_batches") == str(steps)
        assert _arg(args, "--trainer.val_check_interval") == str(every)
        assert _arg(args, "--model.init_args.policy.name_or_path") == start["policy"]
        has_critic = configs[name]["model"]["init_args"].get("critic") is not None
        assert has_critic == (name in ("tempo", "frozen_critic"))
        critic = [a for a in args if a.startswith("--model.init_args.critic.name_or_path=")]
        assert critic == ([f"--model.init_args.critic.name_or_path={start['critic']}"] if has_critic else [])


def test_test_time_configs_differ_only_in_method(tmp_path):
    """Same seed, budget, sampling, loss, optimizer and evaluation for the test-time runs: only the reward, the
    schedule and the critic's use may differ (the other methods' overlays layered over tempo.yaml)."""
    cfgs = {name: read_layers([demo_config.DEMO_CONFIGS / c for c in demo_stages.method_configs(name)])
            for name in TEST_TIME_METHODS}
    for name, c in cfgs.items():
        assert c["seed_everything"] == cfgs["tempo"]["seed_everything"], name
        for key in ("limit_train_batches", "val_check_interval", "num_sanity_val_steps"):
            assert c["trainer"][key] == cfgs["tempo"]["trainer"][key], (name, key)
        init = c["model"]["init_args"]
        for key in ("sampling", "training", "evaluation", "policy_optimizer"):
            assert init[key] == cfgs["tempo"]["model"]["init_args"][key], (name, key)
        kl = cfgs["tempo"]["model"]["init_args"]["algorithm"].get("kl_coef", 0.0)
        assert init["algorithm"].get("kl_coef", 0.0) == kl, name
        for key in ("policy_loss", "clip_low", "clip_high", "loss_agg_mode"):  # one update, the paper configs'
            assert init["algorithm"][key] == cfgs["tempo"]["model"]["init_args"]["algorithm"][key], (name, key)
        data = c["data"]["init_args"]
        # D_U is the test set: the unlabeled pool and the first evaluation set are the same questions
        assert data["unlabeled"]["path"] == data["eval_sets"][0]["path"], name
        assert [s["name"] for s in data["eval_sets"]] == [
            demo_summary.EVAL_SET, demo_summary.HELDOUT_SET, demo_summary.LABELED_SET], name
        # the critic's calibration on D_L samples of the current policy: D_L rows, graded with D_L's labels
        assert data["eval_sets"][2]["path"].startswith("synthetic:labeled?"), name
        assert init["evaluation"]["greedy"] is True, name  # greedy accuracy beside mean@k at temperature 1
        assert data["batch_size"] == cfgs["tempo"]["data"]["init_args"]["batch_size"], name
        assert data["prompt_template"] == "plain", name
    # the frozen critic is TEMPO with a critic learning rate of 0, nothing else
    tempo_init, frozen_init = cfgs["tempo"]["model"]["init_args"], cfgs["frozen_critic"]["model"]["init_args"]
    assert frozen_init["critic_optimizer"]["init_args"]["lr"] == 0.0
    assert tempo_init["critic_optimizer"]["init_args"]["lr"] > 0.0
    assert {k: v for k, v in frozen_init.items() if k != "critic_optimizer"} == {
        k: v for k, v in tempo_init.items() if k != "critic_optimizer"}


def _synthetic_paths(node):
    if isinstance(node, dict):
        for value in node.values():
            yield from _synthetic_paths(value)
    elif isinstance(node, list):
        for value in node:
            yield from _synthetic_paths(value)
    elif isinstance(node, str) and node.startswith("synthetic:"):
        yield node


def test_every_stage_reads_the_same_synthetic_task():
    """One task for the whole pipeline: the warm start's habit, D_L's questions and D_U's must agree across stages, so
    every synthetic path of every demo config names the same knobs (only the split and its size differ)."""
    import dataclasses

    from tempo_pl.data.synthetic import parse_synthetic_path

    def task(path):
        spec, split = parse_synthetic_path(path)
        return dataclasses.replace(spec, **{f"{name}_size": 0 for name in ("labeled", "unlabeled", "heldout")}), split

    found = {}
    for stage in STAGES:
        if stage.configs:
            config = read_layers([demo_config.DEMO_CONFIGS / c for c in stage.configs])
            found[stage.name] = [task(path) for path in _synthetic_paths(config)]
    specs = {spec for tasks in found.values() for spec, _ in tasks}
    assert len(specs) == 1, specs
    assert {split for _, split in found["sft"]} == {"labeled"}
    assert {split for _, split in found["tempo"]} == {"labeled", "unlabeled", "heldout"}
    assert all(found[name] for name in found), found


# ----------------------------------------------------------------------------------------------- summary numbers


def _write_curves(log_dir: Path, points: dict[int, dict[str, float]]) -> None:
    from lightning.pytorch.loggers import TensorBoardLogger

    logger = TensorBoardLogger(save_dir=str(log_dir.parent), name="", version=log_dir.name, default_hp_metric=False)
    for step, metrics in points.items():
        logger.log_metrics(metrics, step=step)
    logger.finalize("success")


def test_method_and_base_summary_read_start_and_final(tmp_path):
    run = tmp_path / "tempo"
    # k = 4 samples; three evaluations (steps 0, 5, 10); pass@2 is logged too and must not be taken for pass@k
    _write_curves(run, {
        0: {"val/unlabeled/mean@4": 0.25, "val/unlabeled/pass@4": 0.5, "val/unlabeled/pass@2": 0.4,
            "val/heldout/mean@4": 0.125, "val/heldout/pass@4": 0.375},
        5: {"val/unlabeled/mean@4": 0.5, "val/unlabeled/pass@4": 0.625,
            "val/heldout/mean@4": 0.25, "val/heldout/pass@4": 0.5},
        10: {"val/unlabeled/mean@4": 0.75, "val/unlabeled/pass@4": 0.875, "train/rl_step": 9.0,
             "val/heldout/mean@4": 0.375, "val/heldout/pass@4": 0.625},
    })
    m = demo_summary.method_summary(run, wall_seconds=12.5)
    assert SUMMARY_KEYS <= set(m)
    assert (m["k"], m["steps"], m["wall_seconds"]) == (4, 10, 12.5)
    assert (m["mean_at_k_start"], m["mean_at_k_final"]) == (0.25, 0.75)
    assert (m["pass_at_k_start"], m["pass_at_k_final"]) == (0.5, 0.875)
    assert (m["heldout_mean_at_k_final"], m["heldout_pass_at_k_final"]) == (0.375, 0.625)
    base = demo_summary.base_summary(m, wall_seconds=100.0)
    # the base row is the start point: step 0, start = final = the run's step-0 evaluation
    assert (base["steps"], base["mean_at_k_final"], base["pass_at_k_final"]) == (0, 0.25, 0.5)
    assert (base["heldout_mean_at_k_final"], base["heldout_pass_at_k_final"]) == (0.125, 0.375)
    assert base["wall_seconds"] == 100.0
    assert "critic_within_question_auroc_final" not in m  # this run logged no critic values


def test_method_summary_reports_the_critics_within_question_ranking(tmp_path):
    run = tmp_path / "tempo"
    curve = {"val/unlabeled/mean@4": 0.25, "val/unlabeled/pass@4": 0.5, "val/heldout/mean@4": 0.1,
             "val/heldout/pass@4": 0.2}
    _write_curves(run, {0: {**curve, "val/unlabeled/critic_within_question_auroc": 0.5},
                        4: {**curve, "val/unlabeled/critic_within_question_auroc": float("nan")}})
    m = demo_summary.method_summary(run, wall_seconds=1.0)
    # NaN (no question with both verdicts) becomes null: summary.json stays valid JSON
    assert (m["critic_within_question_auroc_start"], m["critic_within_question_auroc_final"]) == (0.5, None)
    json.loads(json.dumps(m, allow_nan=False))


def test_method_summary_reads_greedy_accuracy_and_the_critics_calibration_on_both_sets(tmp_path):
    run = tmp_path / "frozen_critic"
    curve = {"val/unlabeled/mean@4": 0.25, "val/unlabeled/pass@4": 0.5, "val/heldout/mean@4": 0.1,
             "val/heldout/pass@4": 0.2}
    _write_curves(run, {
        0: {**curve, "val/unlabeled/greedy_accuracy": 0.5, "val/unlabeled/critic_brier": 0.2,
            "val/unlabeled/critic_within_question_auroc": 0.9, "val/labeled/critic_within_question_auroc": 0.875,
            "val/labeled/critic_brier": 0.125},
        8: {**curve, "val/unlabeled/greedy_accuracy": 0.75, "val/unlabeled/critic_brier": 0.3,
            "val/unlabeled/critic_within_question_auroc": 0.6, "val/labeled/critic_within_question_auroc": 0.5,
            "val/labeled/critic_brier": 0.25}})
    m = demo_summary.method_summary(run, wall_seconds=1.0)
    assert (m["greedy_accuracy_start"], m["greedy_accuracy_final"]) == (0.5, 0.75)
    assert (m["critic_within_question_auroc_start"], m["critic_within_question_auroc_final"]) == pytest.approx((0.9, 0.6))
    assert (m["critic_brier_start"], m["critic_brier_final"]) == pytest.approx((0.2, 0.3))
    assert (m["labeled_critic_within_question_auroc_start"], m["labeled_critic_within_question_auroc_final"]) == (
        0.875, 0.5)
    assert (m["labeled_critic_brier_start"], m["labeled_critic_brier_final"]) == (0.125, 0.25)
    assert demo_summary.base_summary(m, wall_seconds=1.0)["greedy_accuracy_start"] == 0.5


def test_the_report_draws_the_critic_panel_and_says_which_accuracy_is_which(tmp_path):
    from tempo_pl.pipelines.report import MethodResult, collect, plot_curves, write_tables

    curve = {"val/unlabeled/mean@4": 0.25, "val/unlabeled/pass@4": 0.5, "val/unlabeled/greedy_accuracy": 0.5}
    _write_curves(tmp_path / "tempo", {0: {**curve, "val/labeled/critic_within_question_auroc": 0.9,
                                           "val/unlabeled/critic_brier": 0.2},
                                       4: {**curve, "val/labeled/critic_within_question_auroc": 0.8,
                                           "val/unlabeled/critic_brier": 0.1}})
    _write_curves(tmp_path / "ttrl", {0: curve, 4: curve})
    _, results = collect({"tempo": tmp_path / "tempo", "ttrl": tmp_path / "ttrl"}, "unlabeled")
    results = [demo_summary._with_critic_curves(r, tmp_path / r.name) for r in results]
    tempo, ttrl = results
    assert tempo.curves["critic AUROC D_L"] == [(0, pytest.approx(0.9)), (4, pytest.approx(0.8))]
    assert tempo.curves["critic Brier D_U"] == [(0, pytest.approx(0.2)), (4, pytest.approx(0.1))]
    assert not any(name.startswith("critic") for name in ttrl.curves)  # no critic: no curve
    fig = plot_curves(results, tmp_path / "plot.png", families=("mean", "pass", "critic"))
    critic_panel = fig.axes[2]
    assert sorted(line.get_label() for line in critic_panel.get_lines()) == [
        "tempo AUROC D_L", "tempo Brier D_U"]
    assert {line.get_linestyle() for line in critic_panel.get_lines()} == {"-", ":"}
    legend = critic_panel.get_legend()  # below the panel, where it covers no curve
    assert legend is not None and legend.get_bbox_to_anchor().transformed(critic_panel.transAxes.inverted()).y0 < 0
    assert fig.axes[0].get_legend().get_bbox_to_anchor().transformed(fig.axes[0].transAxes.inverted()).y0 >= 0
    _, md, _ = write_tables(results, tmp_path, "unlabeled", seed=0)
    table = md.read_text()
    assert "greedy_accuracy start" in table and "critic AUROC D_L start" in table and "critic AUROC D_L final" in table
    assert "greedy_accuracy is that of one greedy (temperature 0) answer" in table
    assert "mean@n is the accuracy of n samples per question at the evaluation temperature" in table
    without = [MethodResult("ttrl", False, {"mean@4": [(0, 0.5)]})]
    _, md, _ = write_tables(without, tmp_path / "plain", "unlabeled", seed=0)
    assert "greedy" not in md.read_text()


def test_seeds_are_averaged_with_their_min_and_max(tmp_path):
    from tempo_pl.pipelines.report import MethodResult, mean_over_runs

    runs = [MethodResult("ttrl_seed0", False, {"mean@4": [(0, 0.2), (5, 0.4), (10, 0.6)]}),
            MethodResult("ttrl_seed1", False, {"mean@4": [(0, 0.4), (5, 0.2), (10, 0.3)]})]
    merged = mean_over_runs("ttrl", runs)
    assert merged.name == "ttrl"
    assert [step for step, _ in merged.curves["mean@4"]] == [0, 5, 10]
    assert [value for _, value in merged.curves["mean@4"]] == pytest.approx([0.3, 0.3, 0.45])
    assert merged.band["mean@4"] == [(0, 0.2, 0.4), (5, 0.2, 0.4), (10, 0.3, 0.6)]
    assert mean_over_runs("ttrl", runs[:1]).band == {}  # one seed: no band

    entries = {"ttrl": {"k": 4, "steps": 10, "mean_at_k_final": 0.6, "critic": None},
               "ttrl_seed1": {"k": 4, "steps": 10, "mean_at_k_final": 0.3, "critic": None}}
    m = demo_summary.over_seeds(entries)
    assert (m["seeds"], m["k"], m["steps"]) == (2, 4, 10)
    assert (m["mean_at_k_final"], m["mean_at_k_final_min"], m["mean_at_k_final_max"]) == pytest.approx((0.45, 0.3, 0.6))
    assert m["critic"] is None and m["runs"] == entries
    assert demo_summary.over_seeds({"ttrl": entries["ttrl"]}) == {"seeds": 1, **entries["ttrl"]}


def test_method_summary_reads_majority_accuracy_and_label_telemetry(tmp_path):
    run = tmp_path / "ttrl"
    curve = {"val/unlabeled/mean@4": 0.25, "val/unlabeled/pass@4": 0.5, "val/heldout/mean@4": 0.1,
             "val/heldout/pass@4": 0.2}
    points = {0: {**curve, "val/unlabeled/maj@4": 0.3}, 12: {**curve, "val/unlabeled/maj@4": 0.1}}
    for step in range(1, 13):  # training telemetry at every RL step: 0.5 for six steps, then 0.0
        points.setdefault(step, {})["telemetry/label_accuracy"] = 0.5 if step <= 6 else 0.0
    _write_curves(run, points)
    m = demo_summary.method_summary(run, wall_seconds=1.0)
    assert (m["maj_at_k_start"], m["maj_at_k_final"]) == (pytest.approx(0.3), pytest.approx(0.1))
    window = demo_summary.TELEMETRY_WINDOW
    assert m["label_accuracy_first"] == pytest.approx(0.5)
    assert m["label_accuracy_last"] == pytest.approx(0.0 if window <= 6 else 0.5 * (window - 6) / window)


def test_method_summary_names_a_missing_curve(tmp_path):
    run = tmp_path / "ttrl"
    _write_curves(run, {0: {"val/unlabeled/mean@4": 0.25, "val/heldout/mean@4": 0.1, "val/heldout/pass@4": 0.2}})
    with pytest.raises(RuntimeError, match=r"pass@4.*pass_ks"):
        demo_summary.method_summary(run, wall_seconds=1.0)


def test_report_needs_its_inputs(tmp_path):
    cfg = DemoConfig(out=tmp_path, only=["report"])
    with pytest.raises(RuntimeError, match=r"report.*tempo"):
        demo.run_demo(cfg)


# ----------------------------------------------------------------------------------------------- end to end


SMOKE_OVERRIDES = [
    "--set=--data.init_args.eval_limit=4",
    '--set=--model.init_args.evaluation={"k": 2, "pass_ks": [1, 2], "max_new_tokens": 72, "greedy": true}',
    "--set=--data.init_args.batch_size=2",
]


@pytest.mark.slow
def test_shortened_demo_runs_every_stage_then_skips_them(tmp_path):
    out = tmp_path / "demo"
    argv = ["--out", str(out), "--steps-scale", "0.005", "--launcher", "inprocess", "--jobs", "1", *SMOKE_OVERRIDES]
    summary = demo.main(argv)

    for stage in ("sft", "zero_rl", *TEST_TIME_METHODS):
        done = json.loads((out / stage / "done.json").read_text())
        assert done["wall_seconds"] > 0 and done["command"][:2] == ["tempo-pl", "fit"], stage
        assert list((out / stage).glob("events.out.tfevents.*")), f"{stage} wrote no TensorBoard log"
        progress = json.loads((out / stage / "progress.json").read_text())
        assert progress["done"] == progress["total"] >= 1, (stage, progress)
    assert (out / "sft" / "policy" / "config.json").is_file()
    export = json.loads((out / "zero_rl" / "hf" / "export.json").read_text())
    assert Path(export["policy"]).is_dir() and Path(export["critic"]).is_dir()
    for name in ("comparison.csv", "comparison.md", "curves.csv", "comparison.png"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "comparison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk == json.loads(json.dumps(summary))
    assert set(on_disk["methods"]) == {"base", *TEST_TIME_METHODS}
    for name, m in on_disk["methods"].items():
        assert SUMMARY_KEYS <= set(m), name
        assert m["k"] == 2, name
        for key in SUMMARY_KEYS - {"k", "steps", "wall_seconds"}:
            assert 0.0 <= m[key] <= 1.0, (name, key)
    # 0.005 x 40 steps -> 1 RL step, evaluated before and after it
    assert [on_disk["methods"][n]["steps"] for n in ("base", *TEST_TIME_METHODS)] == [0] + [1] * len(TEST_TIME_METHODS)
    # every run starts from the zero-RL export with the same seed: the same start evaluation
    starts = {on_disk["methods"][n]["mean_at_k_start"] for n in ("base", *TEST_TIME_METHODS)}
    assert len(starts) == 1
    assert on_disk["methods"]["base"]["wall_seconds"] == pytest.approx(
        on_disk["stages"]["sft"]["wall_seconds"] + on_disk["stages"]["zero_rl"]["wall_seconds"])
    table = (out / "comparison.md").read_text()
    assert all(f"| {name} |" in table for name in TEST_TIME_METHODS)
    # greedy accuracy beside mean@k, and the critic's calibration on D_L and D_U samples for the runs with a critic
    for name in TEST_TIME_METHODS:
        m = on_disk["methods"][name]
        assert 0.0 <= m["greedy_accuracy_start"] <= 1.0 and 0.0 <= m["greedy_accuracy_final"] <= 1.0, name
        has_critic = name in ("tempo", "frozen_critic")
        assert ("labeled_critic_brier_final" in m) == ("critic_brier_final" in m) == has_critic, name
        if has_critic:
            assert 0.0 <= m["labeled_critic_brier_start"] <= 1.0 and 0.0 <= m["critic_brier_final"] <= 1.0, name
    assert "greedy_accuracy start" in table and "critic AUROC D_L start" in table

    # a second invocation finds every output and runs nothing
    marks = {s: (out / s / "done.json").read_text() for s in ("sft", "zero_rl", *TEST_TIME_METHODS)}
    summary_mtime = (out / "summary.json").stat().st_mtime_ns
    assert demo.main(argv) is None
    assert {s: (out / s / "done.json").read_text() for s in marks} == marks
    assert (out / "summary.json").stat().st_mtime_ns == summary_mtime

    # a missing mark reruns that stage (in a child process this time) and the report that reads it, nothing else
    (out / "ttrl" / "done.json").unlink()
    summary = demo.main(["--out", str(out), "--steps-scale", "0.005", "--jobs", "1", *SMOKE_OVERRIDES])
    rerun = json.loads((out / "ttrl" / "done.json").read_text())
    assert rerun["launcher"] == "subprocess" and rerun["cpu_seconds"] > 0
    assert summary["methods"]["ttrl"]["wall_seconds"] == rerun["wall_seconds"]
    assert {s: (out / s / "done.json").read_text() for s in marks if s != "ttrl"} == {
        s: v for s, v in marks.items() if s != "ttrl"}
    assert (out / "summary.json").stat().st_mtime_ns != summary_mtime

    # twice the test-time steps into the same folder: stage 1 is reused, the 2x runs sit beside the 1x ones
    stage_1 = {s: (out / s / "done.json").read_text() for s in ("sft", "zero_rl")}
    scaled = demo.main(["--out", str(out), "--steps-scale", "0.025", "--test-time-scale", "2", "--launcher",
                        "inprocess", "--jobs", "1", *SMOKE_OVERRIDES])
    assert {s: (out / s / "done.json").read_text() for s in stage_1} == stage_1
    assert [scaled["methods"][m]["steps"] for m in TEST_TIME_METHODS] == [2] * len(TEST_TIME_METHODS)
    compute = json.loads((out / "summary_x2.json").read_text())["test_time_compute"]
    assert set(compute) == set(TEST_TIME_METHODS)
    assert all((row["steps_1x"], row["steps_2x"]) == (1, 2) for row in compute.values())
    assert (out / "comparison_x2.png").is_file() and "| tempo | 1 |" in (out / "test_time_compute_x2.md").read_text()


def test_the_demo_runs_the_paper_configs_update():
    """GSPO, its clip range, the sequence-level value clip and group filtering: configs/tempo's choices, at demo size."""
    demo_init = yaml.safe_load((demo_config.DEMO_CONFIGS / "tempo.yaml").read_text())["model"]["init_args"]
    paper = Path(__file__).resolve().parents[1] / "configs" / "tempo"
    paper_init = read_layers([paper / "aime.yaml", paper / "olmo3_7b_aime.yaml"])["model"]["init_args"]
    for key in ("advantage", "policy_loss", "clip_low", "clip_high", "loss_agg_mode", "value_clip_mode",
                "cliprange_value"):
        assert demo_init["algorithm"][key] == paper_init["algorithm"][key], key
    assert demo_init["training"]["group_filter"] is paper_init["training"]["group_filter"] is True


def test_the_drift_scenario_keeps_d_u_answers_out_of_training(tmp_path):
    """Every stage of ``--scenario drift`` trains on D_L rows with their answers and on D_U questions without theirs:
    SFT reads D_L only, no run exposes D_U answers, and the test-time data module's unlabeled rows carry none."""
    from tempo_pl.data.datamodule import DatasetSpec, TempoDataModule
    from tempo_pl.data.synthetic import load_synthetic

    cfg = DemoConfig(out=tmp_path, scenario="drift")
    _fake_zero_rl_export(tmp_path)
    unlabeled_answers = {r["problem"]: r["answer"] for r in load_synthetic(
        "synthetic:unlabeled?seed=0&size=64&" + demo_config.read_scenarios(demo_config.DEMO_CONFIGS)["drift"]["task"])}
    for stage in cfg.stages:
        if not stage.configs:
            continue
        config = read_layers(_configs(demo.fit_args(stage, cfg)))
        data = config["data"]["init_args"]
        assert not data.get("expose_unlabeled_answers", False), stage.name
        if stage.name == "sft":
            assert data["path"].startswith("synthetic:labeled?"), data["path"]
            continue
        assert data.get("labeled") or stage.method in ("ttrl", "empo", "intuitor"), stage.name  # D_U-only methods
        assert not data.get("labeled") or data["labeled"]["path"].startswith("synthetic:labeled?"), stage.name
        if stage.method is None:
            continue
        assert data["unlabeled"]["path"].startswith("synthetic:unlabeled?"), stage.name
        specs = {k: DatasetSpec(**data[k]) for k in ("labeled", "unlabeled") if data.get(k)}
        module = TempoDataModule(**{**{k: v for k, v in data.items() if k != "eval_sets"}, **specs})
        module.setup("fit")
        assert module.unlabeled_rows and all(row.answer is None for row in module.unlabeled_rows), stage.name
        assert not any(problem in row.prompt for row in module.labeled_rows for problem in unlabeled_answers)
        batches = [next(module.train_dataloader()) for _ in range(4)]
        assert any(not labeled for b in batches for labeled in b.is_labeled), stage.name
        assert all(a is None for b in batches for a, labeled in zip(b.answers, b.is_labeled) if not labeled)

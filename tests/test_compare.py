"""The comparison runner: options, the fit arguments it builds, reading event files, the table, the plot, and one
tiny end-to-end comparison (stage 1, then TEMPO, TTRL and the frozen critic from its export)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tempo_pl.pipelines import compare, launcher, report
from tempo_pl.pipelines.compare import CompareConfig, Method
from tempo_pl.pipelines.report import MethodResult

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs/tiny.yaml"
# the baselines and the frozen critic are overlays over the tiny config
TTRL = (TINY, ROOT / "configs/baselines/ttrl.yaml")
FROZEN = (TINY, ROOT / "configs/tempo/frozen_critic.yaml")
ZERO_RL = (TINY, ROOT / "configs/baselines/zero_rl.yaml")


def joined(configs: tuple[Path, ...]) -> str:
    """A method's configs on the compare command line: base first, separated by commas."""
    return ",".join(map(str, configs))


# ------------------------------------------------------------------------------------------------ options


def test_method_names_paths_and_critic():
    assert Method.parse(f"tempo={TINY}") == Method("tempo", (TINY,))
    assert Method.parse(joined(TTRL)) == Method("ttrl", TTRL)  # default name: the last file's stem
    # a start critic is given only to methods whose configs build one (the overlay removes tiny.yaml's)
    assert [Method.parse(joined(c)).has_critic for c in ((TINY,), TTRL, FROZEN)] == [True, False, True]
    with pytest.raises(ValueError, match="method name 'a b'"):
        Method.parse(f"a b={TINY}")
    with pytest.raises(FileNotFoundError, match="method 'x': config 'nowhere.yaml'"):
        Method.parse("x=nowhere.yaml")
    with pytest.raises(FileNotFoundError, match="method 'x': config 'nowhere.yaml'"):
        Method.parse(f"x={TINY},nowhere.yaml")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"methods": []}, "at least one method"),
        ({"methods": [Method("a", (TINY,)), Method("a", TTRL)]}, r"unique, got \['a'\]"),
        ({"steps": 6, "eval_every": 4}, "--steps \\(6\\) must be a multiple of --eval-every \\(4\\)"),
        ({"steps": 0}, "--steps must be >= 1"),
        ({"stage1_steps": 0}, "--stage1-steps must be >= 1"),
        ({"launcher": "ray"}, "--launcher must be one of"),
        ({"overrides": ["trainer.max_epochs=2"]}, "starting with '--'"),
    ],
)
def test_compare_config_is_validated(kwargs, message):
    kwargs = {"methods": [Method("tempo", (TINY,))], **kwargs}
    with pytest.raises(ValueError, match=message):
        CompareConfig(**kwargs)


def test_command_line_maps_to_the_config(tmp_path):
    cfg = compare.config_from_args([
        f"tempo={TINY}", joined(TTRL), "--steps", "6", "--eval-every", "3", "--seed", "5", "--output", str(tmp_path),
        "--policy", "p", "--critic", "c", "--stage1-steps", "2", "--eval-set", "heldout",
        "--set=--trainer.limit_val_batches=2", "--launcher", "inprocess",
    ])
    assert cfg == CompareConfig(
        methods=[Method("tempo", (TINY,)), Method("ttrl", TTRL)], steps=6, eval_every=3, seed=5, output=tmp_path,
        policy="p", critic="c", stage1=None, stage1_steps=2, eval_set="heldout",
        overrides=["--trainer.limit_val_batches=2"], launcher="inprocess",
    )
    stage1 = compare.config_from_args([str(TINY), "--stage1", f"zero={joined(ZERO_RL)}"]).stage1
    assert stage1 == Method("zero", ZERO_RL)


def test_fit_args_give_every_method_the_same_seed_budget_and_start(tmp_path):
    from tempo_pl.cli import TempoCLI

    common = dict(steps=6, eval_every=3, seed=7, output=tmp_path, policy="/ckpt/policy", critic="/ckpt/critic",
                  overrides=["--trainer.limit_val_batches=2"])
    for method, has_critic in ((Method("frozen", FROZEN), True), (Method("ttrl", TTRL), False)):
        args = compare.fit_args(method, **common)
        assert args[0] == "fit" and args[-1] == "--trainer.limit_val_batches=2"  # user overrides come last
        cli = TempoCLI(args=args[1:], run=False)
        trainer, module = cli.trainer, cli.model
        assert cli.config["seed_everything"] == 7
        # num_sanity_val_steps -1 (evaluate the start point on every val batch) is stored as inf
        budget = (trainer.limit_train_batches, trainer.val_check_interval, trainer.num_sanity_val_steps)
        assert budget == (6, 3, float("inf"))
        assert trainer.limit_val_batches == 2 and trainer.max_epochs == 1
        assert Path(trainer.log_dir) == tmp_path / "runs" / method.name / "seed7" == compare.run_dir(
            tmp_path, method.name, 7)
        # the start policy replaces the config-built tiny model, tokenizer included
        spec = module.policy_spec
        assert (spec.name_or_path, spec.tokenizer, spec.config) == ("/ckpt/policy", "/ckpt/policy", None)
        if has_critic:
            assert (module.critic_spec.name_or_path, module.critic_spec.config) == ("/ckpt/critic", None)
        else:
            assert module.critic_spec is None
    no_eval = compare.fit_args(Method("z", ZERO_RL), steps=2, eval_every=2, seed=0, output=tmp_path, evaluate=False)
    assert "--trainer.limit_val_batches=0" in no_eval and "--trainer.num_sanity_val_steps=0" in no_eval
    assert not any(a.startswith("--model.init_args.policy=") for a in no_eval)  # no start point: the config's own


def test_subprocess_launcher_runs_the_cli_and_reports_failures(tmp_path, monkeypatch):
    calls = []
    real_popen = subprocess.Popen

    def fake_popen(cmd, **kwargs):
        # records the command, then starts a stand-in child that prints and exits as a failing second run would
        calls.append(cmd)
        code = 0 if len(calls) == 1 else 3
        return real_popen([sys.executable, "-c", f"print('training output'); raise SystemExit({code})"], **kwargs)

    monkeypatch.setattr(launcher.subprocess, "Popen", fake_popen)
    log = tmp_path / "logs" / "m.log"
    compare.launch(["fit", "--config=x.yaml"], "subprocess", log)
    assert calls == [[sys.executable, "-m", "tempo_pl", "fit", "--config=x.yaml"]]
    assert log.read_text() == "training output\n"
    with pytest.raises(RuntimeError, match=r"exit code 3; its output is in .*m\.log"):
        compare.launch(["fit"], "subprocess", log)


# ------------------------------------------------------------------------------------------------ reading, table, plot


def test_summarize_start_final_best():
    # start = first point, final = last point, best = the highest (the earliest of equal highs)
    s = report.summarize([(0, 0.25), (2, 0.5), (4, 0.5), (6, 0.375)])
    assert s == {"start": 0.25, "final": 0.375, "best": 0.5, "best_step": 2.0}
    with pytest.raises(ValueError, match="empty curve"):
        report.summarize([])


def write_run(log_dir: Path, points: dict[str, list[tuple[int, float]]]) -> Path:
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(log_dir))
    for tag, values in points.items():
        for step, value in values:
            writer.add_scalar(tag, value, step)
    writer.close()
    return log_dir


def two_runs(tmp_path: Path) -> dict[str, Path]:
    a = write_run(tmp_path / "a", {
        "val/heldout/mean@4": [(0, 0.25), (2, 0.5), (4, 0.375)],
        "val/heldout/pass@2": [(0, 0.5), (2, 0.75), (4, 0.75)],
        "val/heldout/pass@4": [(0, 0.5), (2, 1.0), (4, 0.75)],
        "val/heldout/maj@4": [(0, 0.25), (2, 0.25), (4, 0.5)],
        "val/heldout/distinct_answers": [(0, 3.0), (2, 2.5), (4, 2.0)],
        "val/other/mean@4": [(0, 0.1), (4, 0.2)],
        "train/policy/loss": [(1, 0.3)],
    })
    # b logs step 2 twice (a resumed run): the later value counts; it is an oracle run
    b = write_run(tmp_path / "b", {
        "val/heldout/mean@4": [(0, 0.25), (2, 0.125), (2, 0.625), (4, 0.75)],
        "val/heldout/pass@4": [(0, 0.5), (2, 1.0), (4, 1.0)],
        "val/heldout/maj@4": [(0, 0.25), (2, 0.75), (4, 0.75)],
        "val/heldout/distinct_answers": [(0, 3.0), (2, 1.5), (4, 1.0)],
        report.ORACLE_TAG: [(1, 1.0)],
    })
    return {"a": a, "b": b}


def test_collect_reads_event_files_and_picks_the_shared_eval_set(tmp_path):
    runs = two_runs(tmp_path)
    assert report.read_scalars(runs["b"])["val/heldout/mean@4"] == [(0, 0.25), (2, 0.625), (4, 0.75)]
    eval_set, results = report.collect(runs, None)
    assert eval_set == "heldout"  # "other" was logged by run a only
    a, b = results
    assert (a.name, a.oracle, b.name, b.oracle, b.label) == ("a", False, "b", True, "b (oracle)")
    # the largest pass@k only; mean@n, maj@n, distinct answers
    assert list(a.curves) == ["mean@4", "pass@4", "maj@4", "distinct_answers"]
    assert a.curves["pass@4"] == [(0, 0.5), (2, 1.0), (4, 0.75)]
    with pytest.raises(ValueError, match=r"--eval-set 'other' was not logged by every run; shared sets: \['heldout'\]"):
        report.collect(runs, "other")
    with pytest.raises(FileNotFoundError, match="no TensorBoard event file"):
        report.read_scalars(tmp_path)


def test_tables_hold_start_final_best_per_method(tmp_path):
    _, results = report.collect(two_runs(tmp_path), None)
    csv_path, md_path, curves_path = report.write_tables(results, tmp_path / "out", "heldout", seed=3)
    rows = list(csv.reader(csv_path.open()))
    assert rows[0][:6] == ["method", "oracle", "last_step", "mean@4 start", "mean@4 final", "mean@4 best"]
    table = {row[0]: dict(zip(rows[0], row)) for row in rows[1:]}
    # a: mean@4 0.25 -> 0.375, best 0.5; pass@4 0.5 -> 0.75, best 1; maj@4 0.25 -> 0.5; distinct 3 -> 2, max 3
    assert [table["a"][f"mean@4 {p}"] for p in ("start", "final", "best")] == ["0.2500", "0.3750", "0.5000"]
    assert [table["a"][f"pass@4 {p}"] for p in ("start", "final", "best")] == ["0.5000", "0.7500", "1.0000"]
    assert [table["a"][f"maj@4 {p}"] for p in ("start", "final", "best")] == ["0.2500", "0.5000", "0.5000"]
    assert [table["a"][f"distinct_answers {p}"] for p in ("start", "final", "best")] == ["3.0000", "2.0000", "3.0000"]
    # b (oracle): mean@4 0.25 -> 0.75 (step 2 counts 0.625, its last value)
    assert table["b (oracle)"]["oracle"] == "yes" and table["b (oracle)"]["mean@4 final"] == "0.7500"
    assert table["a"]["last_step"] == "4"
    md = md_path.read_text()
    assert "Evaluation set `heldout`, seed 3" in md
    assert "| b (oracle) | yes | 4 | 0.2500 | 0.7500 | 0.7500 |" in md
    curve_rows = list(csv.DictReader(curves_path.open()))
    assert len(curve_rows) == 12 + 12  # 4 metrics x 3 points, two methods
    assert {"method": "b", "oracle": "1", "metric": "mean@4", "rl_step": "2", "value": "0.625"} in curve_rows


def test_plot_draws_mean_and_pass_per_method(tmp_path):
    results = [
        MethodResult("tempo", False, {"mean@4": [(0, 0.25), (2, 0.5)], "pass@4": [(0, 0.5), (2, 0.75)]}),
        MethodResult("oracle", True, {"mean@4": [(0, 0.25), (2, 0.75)], "pass@4": [(0, 0.5), (2, 1.0)]}),
    ]
    fig = report.plot_curves(results, tmp_path / "p.png", title="heldout")
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    mean_ax, pass_ax = fig.axes
    assert mean_ax.get_title() == "mean@4" and pass_ax.get_title() == "pass@4"
    assert mean_ax.get_xlabel() == "RL step"
    lines = {line.get_label(): line for line in pass_ax.get_lines()}
    assert list(lines) == ["tempo", "oracle (oracle)"]
    assert list(lines["oracle (oracle)"].get_ydata()) == [0.5, 1.0] and lines["oracle (oracle)"].get_linestyle() == "--"
    assert list(lines["tempo"].get_xdata()) == [0, 2] and lines["tempo"].get_linestyle() == "-"


# ------------------------------------------------------------------------------------------------ end to end

TINY_LENGTHS = [
    "--set=--model.init_args.sampling.n=2", "--set=--model.init_args.sampling.max_new_tokens=6",
    "--set=--model.init_args.evaluation.max_new_tokens=6", "--set=--data.init_args.batch_size=2",
    "--set=--trainer.enable_progress_bar=false", "--set=--trainer.enable_model_summary=false",
]


@pytest.mark.slow
def test_compare_runs_methods_from_the_stage1_export(tmp_path):
    out = tmp_path / "cmp"
    files = compare.main([
        f"tempo={TINY}", f"ttrl={joined(TTRL)}", f"frozen_critic={joined(FROZEN)}", "--stage1", joined(ZERO_RL),
        "--stage1-steps", "1",
        "--steps", "2", "--eval-every", "1", "--seed", "3", "--output", str(out), "--launcher", "inprocess",
        *TINY_LENGTHS,
    ])
    assert {files[k] for k in ("csv", "markdown", "curves", "plot")} == {
        out / "comparison.csv", out / "comparison.md", out / "curves.csv", out / "comparison.png"}
    rows = list(csv.DictReader(files["csv"].open()))
    assert [r["method"] for r in rows] == ["tempo", "ttrl", "frozen_critic"]
    assert all(r["last_step"] == "2" and r["oracle"] == "no" for r in rows)
    assert files["plot"].stat().st_size > 10_000

    export = json.loads((compare.run_dir(out, "stage1_zero_rl", 3) / "hf" / "export.json").read_text())
    assert export["rl_steps"] == 1
    responses = {}
    for name in ("tempo", "ttrl", "frozen_critic"):
        run = compare.run_dir(out, name, 3)
        config = (run / "config.yaml").read_text()
        assert export["policy"] in config and (export["critic"] in config) is (name != "ttrl")
        assert sorted(p.name for p in (run / "eval").iterdir()) == [
            f"heldout_step00000{i}.jsonl" for i in range(3)]  # before training and after each RL step
        lines = (run / "eval" / "heldout_step000000.jsonl").read_text().splitlines()
        responses[name] = [json.loads(line)["responses"] for line in lines]
        tags = report.read_scalars(run)
        assert [s for s, _ in tags["val/heldout/mean@2"]] == [0, 1, 2]
    # same start point and seed: the evaluation before training samples the same responses for every method
    assert responses["tempo"] == responses["ttrl"] == responses["frozen_critic"]


def test_compare_runs_stage1_first_and_starts_every_method_from_its_export(tmp_path, monkeypatch):
    """The orchestration, with the training replaced: each 'run' writes what a real one would (an event file with
    evaluation points, and for stage 1 the HFExport folder record)."""
    launched = []

    def fake_launch(args, launcher, log_file=None):
        assert launcher == "subprocess"
        launched.append(args)
        log_dir = Path(next(a for a in args if a.startswith("--trainer.default_root_dir=")).split("=", 1)[1])
        if log_dir.parent.name.startswith("stage1_"):
            (log_dir / "hf").mkdir(parents=True)
            (log_dir / "hf" / "export.json").write_text(json.dumps(
                {"rl_steps": 3, "policy": "/s1/policy", "critic": "/s1/critic"}))
            return
        step_value = 0.5 if log_dir.parent.name == "ttrl" else 0.25
        write_run(log_dir, {"val/heldout/mean@2": [(0, 0.0), (2, step_value)], "val/heldout/pass@2": [(0, 0.0)]})

    monkeypatch.setattr(compare, "launch", fake_launch)
    cfg = CompareConfig(methods=[Method("ttrl", TTRL), Method("frozen", FROZEN)], steps=2, eval_every=2,
                        output=tmp_path, policy="/sft/policy", stage1=Method("zero", ZERO_RL), stage1_steps=3)
    files = compare.compare(cfg)
    stage1, ttrl, frozen = launched
    # stage 1 starts from --policy, trains 3 steps without evaluation; the methods start from its export
    assert [a for a in stage1 if a.startswith("--config=")] == [f"--config={p}" for p in ZERO_RL]
    assert "--trainer.limit_train_batches=3" in stage1
    assert "--trainer.limit_val_batches=0" in stage1
    assert '"name_or_path": "/sft/policy"' in next(a for a in stage1 if a.startswith("--model.init_args.policy="))
    for args in (ttrl, frozen):
        assert "--trainer.limit_train_batches=2" in args
        assert '"name_or_path": "/s1/policy"' in next(a for a in args if a.startswith("--model.init_args.policy="))
    assert any('"/s1/critic"' in a for a in frozen) and not any("critic" in a for a in ttrl)
    rows = list(csv.DictReader(files["csv"].open()))
    assert [(r["method"], r["mean@2 start"], r["mean@2 final"]) for r in rows] == [
        ("ttrl", "0.0000", "0.5000"), ("frozen", "0.0000", "0.2500")]


def test_stage1_without_an_export_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setattr(compare, "launch", lambda args, launcher, log_file=None: None)
    cfg = CompareConfig(methods=[Method("ttrl", TTRL)], steps=2, eval_every=2, output=tmp_path,
                        stage1=Method("plain", TTRL))
    with pytest.raises(RuntimeError, match="wrote no HFExport folder"):
        compare.compare(cfg)


def test_example_script_defaults_to_tempo_ttrl_and_frozen_critic():
    import importlib.util

    spec = importlib.util.spec_from_file_location("compare_methods", ROOT / "examples/compare_methods.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    defaults = example.with_default_methods(["--steps", "4", "--set=--trainer.limit_val_batches=2"])
    assert defaults == example.DEFAULT_METHODS + ["--steps", "4", "--set=--trainer.limit_val_batches=2"]
    assert [Method.parse(m).name for m in example.DEFAULT_METHODS] == ["tempo", "ttrl", "frozen_critic"]
    # method configs given: used as they are (an option's value is not taken for one)
    given = ["--output", "out", f"x={joined(TTRL)}"]
    assert example.with_default_methods(given) == given

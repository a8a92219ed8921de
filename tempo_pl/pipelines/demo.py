"""``tempo-pl demo``: TEMPO's effect end to end, offline, on a laptop CPU.

One command runs the paper's pipeline in miniature, each stage a ``tempo-pl fit`` config under ``configs/demo/``::

    tempo-pl demo --out runs/demo

1. ``sft``: warm start of a tiny char-level Qwen3 on D_L's worked solutions (multi-step arithmetic, 2-4 steps, most
   of them rechecking every step: a habit that overruns the response budget on long chains);
2. ``zero_rl``: PPO on D_L, actor and critic (spec 2.4, stage 1); its export is everybody's start point, the "base";
3. ``tempo``, ``ttrl``, ``frozen_critic``: test-time training on D_U (4-step chains, a shift from D_L) from the same
   actor, seed and number of RL steps, each evaluated on D_U and on a held-out set before training and every few
   steps (by default all three at once);
4. ``report``: ``comparison.{csv,md,png}`` and ``curves.csv`` (by :mod:`tempo_pl.pipelines.report`) and ``summary.json``.

Every stage logs to TensorBoard in ``<out>/<stage>/`` (``tensorboard --logdir <out>``), its console output goes to
``<out>/logs/<stage>.log``, and ``<out>/<stage>/done.json`` (time and command) is written last: a stage whose
``done.json`` exists is skipped, so an interrupted demo resumes where it stopped. A stage that runs again makes the
stages that depend on it run again.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import yaml
from lightning.pytorch import Callback, LightningModule, Trainer

from tempo_pl.pipelines.launcher import LAUNCHERS, Children, launch
from tempo_pl.pipelines.report import collect, plot_curves, read_scalars, write_tables

DEMO_CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "demo"
"""The stage configs, beside the package in a source checkout (``pip install -e .``)."""

TEST_TIME_METHODS = ("tempo", "ttrl", "frozen_critic")
"""The test-time runs, in table order; all start from the zero-RL export."""

EVAL_SET = "unlabeled"
"""The evaluation set that is D_U itself (the test-time score); the configs name it so."""

HELDOUT_SET = "heldout"
"""The evaluation set from D_U's distribution that no run trains on."""

DONE_FILE = "done.json"
PROGRESS_FILE = "progress.json"


@dataclass(frozen=True)
class Stage:
    """One step of the pipeline: a config under the config folder, and the stages whose output it reads."""

    name: str
    config: Optional[str]
    """File name under the config folder; None for the report, which runs no training."""
    needs: tuple[str, ...] = ()


STAGES: tuple[Stage, ...] = (
    Stage("sft", "sft.yaml"),
    Stage("zero_rl", "zero_rl.yaml", needs=("sft",)),
    *(Stage(name, f"{name}.yaml", needs=("zero_rl",)) for name in TEST_TIME_METHODS),
    Stage("report", None, needs=TEST_TIME_METHODS),
)
STAGE_NAMES = tuple(s.name for s in STAGES)


@dataclass
class DemoConfig:
    """Options of one demo (the ``tempo-pl demo`` command line)."""

    out: Path = Path("runs/demo")
    """Output folder: one sub-folder per stage (TensorBoard logs, exported models, ``done.json``), ``logs/``, the
    comparison table and plot, and ``summary.json``."""
    steps_scale: float = 1.0
    """Multiplies every stage's step count (SFT steps, zero-RL and test-time RL steps, the evaluation interval);
    each stays at least 1. Below 1 for a quick look (0.01 is a smoke run), above 1 for a longer run."""
    only: Optional[list[str]] = None
    """Run only these stages (their inputs must already be in ``out``); None runs the whole pipeline."""
    jobs: int = len(TEST_TIME_METHODS)
    """Test-time runs trained at the same time, each in its own process with ``max(1, cores // jobs)`` threads: a
    tiny model leaves a core idle within one process, so parallel processes finish sooner than one after the other
    (all three at once on two cores keep both busy to the end). 1 runs them one after the other."""
    overrides: list[str] = field(default_factory=list)
    """Extra ``tempo-pl fit`` arguments for the RL stages (zero-RL and the test-time runs), after the config's."""
    launcher: str = "subprocess"
    """``subprocess`` (one ``python -m tempo_pl`` per stage: isolated, timed, parallel) or ``inprocess`` (every
    stage in this Python, one at a time: no start-up cost per stage; needs ``jobs: 1``)."""
    config_dir: Path = DEMO_CONFIGS
    """Folder holding ``sft.yaml``, ``zero_rl.yaml``, ``tempo.yaml``, ``ttrl.yaml`` and ``frozen_critic.yaml``."""

    def __post_init__(self) -> None:
        self.out, self.config_dir = Path(self.out), Path(self.config_dir)
        scale = self.steps_scale
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 0:
            raise ValueError(f"demo: --steps-scale must be a positive number, got {self.steps_scale!r}")
        if self.only is not None:
            unknown = [s for s in self.only if s not in STAGE_NAMES]
            if unknown or not self.only:
                raise ValueError(f"demo: --only takes stages from {list(STAGE_NAMES)}, got {self.only!r}")
        if isinstance(self.jobs, bool) or not isinstance(self.jobs, int) or self.jobs < 1:
            raise ValueError(f"demo: --jobs must be an integer >= 1, got {self.jobs!r}")
        if self.launcher not in LAUNCHERS:
            raise ValueError(f"demo: --launcher must be one of {LAUNCHERS}, got {self.launcher!r}")
        if self.launcher == "inprocess" and self.jobs != 1:
            raise ValueError("demo: --launcher inprocess runs one stage at a time: use --jobs 1")
        bad = [o for o in self.overrides if not o.startswith("--")]
        if bad:
            raise ValueError(f"demo: --set values must be fit arguments starting with '--', got {bad}")
        missing = [s.config for s in STAGES if s.config and not (self.config_dir / s.config).is_file()]
        if missing:
            raise FileNotFoundError(
                f"demo: {missing} not found in {self.config_dir}; the demo configs ship with the source checkout "
                "(pip install -e .), or point --config-dir at a copy of configs/demo"
            )

    def selected(self) -> list[Stage]:
        return [s for s in STAGES if self.only is None or s.name in self.only]


# ----------------------------------------------------------------------------------------------- step counts


def scaled(steps: int, scale: float) -> int:
    """``steps * scale`` rounded, at least 1."""
    return max(1, round(steps * scale))


def test_time_schedule(steps: int, eval_every: int, scale: float) -> tuple[int, int]:
    """RL steps and evaluation interval of a test-time run after scaling: the interval is scaled (at least 1) and the
    steps are rounded up to a multiple of it, so the last step is always evaluated."""
    every = scaled(eval_every, scale)
    return every * max(1, math.ceil(scaled(steps, scale) / every)), every


def _read_yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text()) or {}


def _trainer_int(cfg: dict, key: str, path: Path) -> int:
    value = (cfg.get("trainer") or {}).get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"demo: {path} needs an integer trainer.{key} >= 1 (the stage's step count), got {value!r}")
    return value


# ----------------------------------------------------------------------------------------------- progress


class StageProgress(Callback):
    """Writes a stage's progress to a small JSON file that the ``tempo-pl demo`` display polls: ``done`` and ``total``
    training batches (SFT steps or RL steps) and whether it is training or evaluating.

    The demo appends it to every stage's callbacks; it is not meant for configs.

    Args:
        path: the JSON file to (re)write.

    Example::

        tempo-pl fit --config configs/demo/sft.yaml \\
            '--trainer.callbacks+={"class_path": "tempo_pl.pipelines.demo.StageProgress", "init_args": {"path": "p.json"}}'
    """

    def __init__(self, path: str) -> None:
        if not str(path).strip():
            raise ValueError("StageProgress.path must be a file path, got an empty string")
        self.path = Path(path)

    def _write(self, trainer: Trainer, phase: str) -> None:
        if not trainer.is_global_zero:
            return
        total = trainer.estimated_stepping_batches if trainer.state.fn == "fit" else 0
        state = {"done": int(trainer.fit_loop.epoch_loop.total_batch_idx + 1) if phase != "start" else 0,
                 "total": int(total) if math.isfinite(total) else 0, "phase": phase}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        tmp.replace(self.path)  # atomic: the poller never reads half a file

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._write(trainer, "start")

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args) -> None:
        self._write(trainer, "train")

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            self._write(trainer, "eval")


def read_progress(path: Path) -> Optional[dict]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


# ----------------------------------------------------------------------------------------------- stage commands


def stage_dir(out: Path, name: str) -> Path:
    """A stage's folder: its TensorBoard logs, exported models and ``done.json``."""
    return Path(out) / name


def is_done(out: Path, name: str) -> bool:
    if name == "report":
        return (Path(out) / "summary.json").is_file()
    return (stage_dir(out, name) / DONE_FILE).is_file()


def zero_rl_export(out: Path) -> dict:
    """The ``{"policy", "critic"}`` folders the zero-RL stage's ``HFExport`` wrote (its ``export.json``)."""
    found = sorted(stage_dir(out, "zero_rl").rglob("export.json"))
    if not found:
        raise FileNotFoundError(
            f"demo: no export.json under {stage_dir(out, 'zero_rl')}: the zero-RL config needs an HFExport callback"
        )
    return json.loads(found[0].read_text())


def fit_args(stage: Stage, cfg: DemoConfig) -> list[str]:
    """The ``tempo-pl fit`` arguments of a training stage: its config, then the demo's logger, progress file, step
    count and start point (the previous stage's output), then ``--set`` overrides (RL stages)."""
    path = cfg.config_dir / stage.config
    data = _read_yaml(path)
    out = cfg.out
    logger = {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
              "init_args": {"save_dir": str(out), "name": "", "version": stage.name, "default_hp_metric": False}}
    progress = {"class_path": "tempo_pl.pipelines.demo.StageProgress",
                "init_args": {"path": str(stage_dir(out, stage.name) / PROGRESS_FILE)}}
    args = ["fit", f"--config={path}", f"--trainer.logger={json.dumps(logger)}", "--trainer.enable_progress_bar=false",
            f"--trainer.callbacks+={json.dumps(progress)}"]
    if stage.name == "sft":
        return args + [f"--trainer.max_steps={scaled(_trainer_int(data, 'max_steps', path), cfg.steps_scale)}",
                       f"--model.init_args.save_dir={stage_dir(out, 'sft') / 'policy'}"]
    if stage.name == "zero_rl":
        steps = scaled(_trainer_int(data, "limit_train_batches", path), cfg.steps_scale)
        args += [f"--trainer.limit_train_batches={steps}",
                 f"--model.init_args.policy.name_or_path={stage_dir(out, 'sft') / 'policy'}"]
        return args + list(cfg.overrides)
    steps, every = test_time_schedule(
        _trainer_int(data, "limit_train_batches", path), _trainer_int(data, "val_check_interval", path),
        cfg.steps_scale,
    )
    start = zero_rl_export(out)
    args += [f"--trainer.limit_train_batches={steps}", f"--trainer.val_check_interval={every}",
             f"--model.init_args.policy.name_or_path={start['policy']}"]
    if ((data.get("model") or {}).get("init_args") or {}).get("critic") is not None:
        if not start.get("critic"):
            raise FileNotFoundError(f"demo: {stage.name} needs a critic but the zero-RL stage exported none")
        args.append(f"--model.init_args.critic.name_or_path={start['critic']}")
    return args + list(cfg.overrides)


# ----------------------------------------------------------------------------------------------- running


class _Runner:
    """Launches stages and records their time; stops every child it started on an interrupt."""

    def __init__(self, cfg: DemoConfig) -> None:
        self.cfg = cfg
        self.children = Children()

    def run(self, stage: Stage, threads: int) -> dict:
        out_dir = stage_dir(self.cfg.out, stage.name)
        if out_dir.exists():
            shutil.rmtree(out_dir)  # a half-done earlier try: its event files would add a second curve
        out_dir.mkdir(parents=True)
        args = fit_args(stage, self.cfg)
        log_file = self.cfg.out / "logs" / f"{stage.name}.log"
        started = time.time()
        # the demo downloads nothing: offline, so that no hub lookup waits to time out
        cpu = launch(args, self.cfg.launcher, log_file, threads=threads, offline=True, children=self.children)
        record = {"stage": stage.name, "wall_seconds": round(time.time() - started, 2),
                  "cpu_seconds": round(cpu, 2), "started": started, "ended": time.time(),
                  "threads": threads, "launcher": self.cfg.launcher, "command": ["tempo-pl", *args]}
        (out_dir / DONE_FILE).write_text(json.dumps(record, indent=2) + "\n")  # last: the stage's completion mark
        return record

    def stop_children(self) -> None:
        self.children.stop()


class _Display:
    """A rich progress table of the stages, refreshed from the stages' progress files by a background thread."""

    def __init__(self, cfg: DemoConfig, stages: Sequence[Stage]) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.cfg = cfg
        self.progress = Progress(
            TextColumn("{task.fields[name]:<14}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"), TimeElapsedColumn(),
        )
        self.tasks = {s.name: self.progress.add_task("", total=None, name=s.name, status="waiting", start=False)
                      for s in stages}
        self.running: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self) -> "_Display":
        self.progress.start()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._refresh()
        self.progress.stop()

    def log(self, message: str) -> None:
        self.progress.console.print(f"[demo] {message}", highlight=False)

    def start(self, name: str) -> None:
        self.running.add(name)
        self.progress.start_task(self.tasks[name])
        self.progress.update(self.tasks[name], status="starting")

    def finish(self, name: str, status: str) -> None:
        self.running.discard(name)
        task = self.tasks[name]
        total = self.progress.tasks[task].total or 1
        self.progress.update(task, total=total, completed=total, status=status)
        self.progress.stop_task(task)

    def _refresh(self) -> None:
        for name in list(self.running):
            state = read_progress(stage_dir(self.cfg.out, name) / PROGRESS_FILE)
            if state and state.get("total"):
                status = {"start": "starting", "train": "training", "eval": "evaluating"}.get(state["phase"], "")
                self.progress.update(self.tasks[name], total=state["total"], completed=state["done"], status=status)

    def _poll(self) -> None:
        while not self._stop.wait(0.5):
            self._refresh()


def run_demo(cfg: DemoConfig) -> dict:
    """Run (or skip) every selected stage in order and return ``summary.json``'s content (None if no report)."""
    selected = cfg.selected()
    cores = os.cpu_count() or 1
    runner = _Runner(cfg)
    ran: set[str] = set()
    summary = None

    def must_run(stage: Stage) -> bool:
        return not is_done(cfg.out, stage.name) or any(need in ran for need in stage.needs)

    def check_inputs(stage: Stage) -> None:
        missing = [n for n in stage.needs if not is_done(cfg.out, n)]
        if missing:
            raise RuntimeError(
                f"demo: stage {stage.name!r} needs the output of {missing} in {cfg.out}; run those stages first "
                "(without --only, or with them in --only)"
            )

    with _Display(cfg, selected) as display:
        try:
            for group in _groups(selected):
                todo = [s for s in group if must_run(s)]
                for stage in group:
                    if stage not in todo:
                        display.finish(stage.name, "done earlier: skipped")
                        display.log(f"{stage.name}: output exists in {stage_dir(cfg.out, stage.name)}, skipped")
                if not todo:
                    continue
                for stage in todo:
                    check_inputs(stage)
                if todo[0].name == "report":
                    display.start("report")
                    summary = write_report(cfg)
                    ran.add("report")
                    display.finish("report", "written")
                    continue
                parallel = min(cfg.jobs, len(todo))
                threads = max(1, cores // parallel)

                def launch(stage: Stage) -> dict:
                    display.start(stage.name)
                    record = runner.run(stage, threads)
                    display.finish(stage.name, f"done in {record['wall_seconds']:.0f} s")
                    display.log(f"{stage.name}: done in {record['wall_seconds']:.0f} s wall"
                                + (f", {record['cpu_seconds']:.0f} s CPU" if record["cpu_seconds"] else ""))
                    return record

                with ThreadPoolExecutor(max_workers=parallel) as pool:
                    futures = [pool.submit(launch, s) for s in todo]
                    finished, _ = wait(futures, return_when=FIRST_EXCEPTION)
                    failed = [f for f in finished if f.exception() is not None]
                    if failed:
                        runner.stop_children()
                        for f in futures:
                            f.cancel()
                        raise failed[0].exception()
                ran.update(s.name for s in todo)
        except BaseException:
            runner.stop_children()
            raise
    if summary is not None:
        _print_summary(summary, cfg.out)
    return summary


def _groups(stages: Sequence[Stage]) -> list[list[Stage]]:
    """Consecutive stages that may run at the same time (the test-time runs), in pipeline order."""
    groups: list[list[Stage]] = []
    for stage in stages:
        if groups and stage.name in TEST_TIME_METHODS and groups[-1][0].name in TEST_TIME_METHODS:
            groups[-1].append(stage)
        else:
            groups.append([stage])
    return groups


# ----------------------------------------------------------------------------------------------- report


def _k_of(curves: dict, eval_set: str, log_dir: Path) -> int:
    ks = [int(m.group(1)) for tag in curves if (m := re.fullmatch(rf"val/{re.escape(eval_set)}/mean@(\d+)", tag))]
    if not ks:
        raise RuntimeError(f"demo: {log_dir} logged no val/{eval_set}/mean@k: its config must evaluate {eval_set!r}")
    return max(ks)


def _curve(curves: dict, tag: str, log_dir: Path) -> list[tuple[int, float]]:
    if not curves.get(tag):
        hint = " (evaluation.pass_ks must include k)" if "/pass@" in tag else ""
        raise RuntimeError(f"demo: {log_dir} has no {tag!r} curve{hint}")
    return curves[tag]


def method_summary(log_dir: Path, wall_seconds: float) -> dict:
    """The ``summary.json`` entry of one test-time run, from its TensorBoard logs: mean@k and pass@k on D_U at the
    first (RL step 0) and last evaluation, the same two numbers on the held-out set at the last one, the RL steps;
    for a run with a critic also its within-question AUROC on D_U at both ends (null where no question of D_U had
    both right and wrong samples): whether the critic could rank the samples of one question at all."""
    curves = read_scalars(log_dir)
    k = _k_of(curves, EVAL_SET, log_dir)
    mean = _curve(curves, f"val/{EVAL_SET}/mean@{k}", log_dir)
    passk = _curve(curves, f"val/{EVAL_SET}/pass@{k}", log_dir)
    held_mean = _curve(curves, f"val/{HELDOUT_SET}/mean@{k}", log_dir)
    held_pass = _curve(curves, f"val/{HELDOUT_SET}/pass@{k}", log_dir)
    return {
        "k": k,
        "steps": mean[-1][0],
        "mean_at_k_start": mean[0][1],
        "mean_at_k_final": mean[-1][1],
        "pass_at_k_start": passk[0][1],
        "pass_at_k_final": passk[-1][1],
        "heldout_mean_at_k_start": held_mean[0][1],
        "heldout_mean_at_k_final": held_mean[-1][1],
        "heldout_pass_at_k_start": held_pass[0][1],
        "heldout_pass_at_k_final": held_pass[-1][1],
        "wall_seconds": wall_seconds,
        **_critic_ranking(curves),
    }


def _critic_ranking(curves: dict) -> dict:
    curve = curves.get(f"val/{EVAL_SET}/critic_within_question_auroc")
    if not curve:
        return {}
    finite = lambda value: value if math.isfinite(value) else None  # noqa: E731  (JSON has no NaN)
    return {"critic_within_question_auroc_start": finite(curve[0][1]),
            "critic_within_question_auroc_final": finite(curve[-1][1])}


def base_summary(tempo: dict, wall_seconds: float) -> dict:
    """The zero-RL policy's entry: the TEMPO run's step-0 evaluation (every test-time run starts from the same
    weights and seed), with 0 steps; its time is what producing it cost (SFT and zero-RL)."""
    return {
        "k": tempo["k"],
        "steps": 0,
        "mean_at_k_start": tempo["mean_at_k_start"],
        "mean_at_k_final": tempo["mean_at_k_start"],
        "pass_at_k_start": tempo["pass_at_k_start"],
        "pass_at_k_final": tempo["pass_at_k_start"],
        "heldout_mean_at_k_start": tempo["heldout_mean_at_k_start"],
        "heldout_mean_at_k_final": tempo["heldout_mean_at_k_start"],
        "heldout_pass_at_k_start": tempo["heldout_pass_at_k_start"],
        "heldout_pass_at_k_final": tempo["heldout_pass_at_k_start"],
        "wall_seconds": wall_seconds,
    }


def _stage_records(out: Path) -> dict[str, dict]:
    records = {}
    for stage in STAGES:
        path = stage_dir(out, stage.name) / DONE_FILE
        if stage.config and path.is_file():
            records[stage.name] = json.loads(path.read_text())
    return records


def write_report(cfg: DemoConfig) -> dict:
    """Write ``comparison.{csv,md,png}``, ``curves.csv`` and ``summary.json`` into ``cfg.out``; return the summary."""
    out = cfg.out
    log_dirs = {name: stage_dir(out, name) for name in TEST_TIME_METHODS}
    eval_set, results = collect(log_dirs, EVAL_SET)
    write_tables(results, out, eval_set, seed=_seed(cfg))
    records = _stage_records(out)
    methods = {name: method_summary(log_dirs[name], records[name]["wall_seconds"]) for name in TEST_TIME_METHODS}
    start_cost = sum(records[name]["wall_seconds"] for name in ("sft", "zero_rl") if name in records)
    summary = {"methods": {"base": base_summary(methods["tempo"], round(start_cost, 2)), **methods}}
    steps = methods["tempo"]["steps"]
    plot_curves(
        results, out / "comparison.png",
        title=f"D_U ({eval_set}), mean@{methods['tempo']['k']} and pass@{methods['tempo']['k']}: {steps} RL steps "
              "from the zero-RL policy, same seed",
    )
    spans = [(r["started"], r["ended"]) for r in records.values()]
    summary["stages"] = {name: {k: r[k] for k in ("wall_seconds", "cpu_seconds", "threads")}
                         for name, r in records.items()}
    summary["total_wall_seconds"] = round(max(e for _, e in spans) - min(s for s, _ in spans), 2) if spans else None
    summary["settings"] = {"steps_scale": cfg.steps_scale, "jobs": cfg.jobs, "cores": os.cpu_count(),
                           "launcher": cfg.launcher, "eval_set": eval_set, "heldout_set": HELDOUT_SET}
    path = out / "summary.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(summary, indent=2) + "\n")
    tmp.replace(path)  # last, and whole: summary.json marks the report done
    return summary


def _seed(cfg: DemoConfig) -> int:
    return int(_read_yaml(cfg.config_dir / "tempo.yaml").get("seed_everything") or 0)


def _print_summary(summary: dict, out: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    methods = summary["methods"]
    k = methods["base"]["k"]
    table = Table(title=f"D_U mean@{k} / pass@{k} (held-out at the end), from {out}")
    for column in ("method", "steps", f"mean@{k} start", f"mean@{k} final", f"pass@{k} start", f"pass@{k} final",
                   f"held-out mean@{k}", f"held-out pass@{k}", "wall s"):
        table.add_column(column, justify="left" if column == "method" else "right")
    for name, m in methods.items():
        table.add_row(name, str(m["steps"]), *(f"{m[key]:.3f}" for key in (
            "mean_at_k_start", "mean_at_k_final", "pass_at_k_start", "pass_at_k_final", "heldout_mean_at_k_final",
            "heldout_pass_at_k_final")), f"{m['wall_seconds']:.0f}")
    console = Console()
    console.print(table)
    total = summary.get("total_wall_seconds")
    if total is not None:
        console.print(f"stages took {total:.0f} s from the first start to the last end")
    console.print(f"plot {out / 'comparison.png'}, table {out / 'comparison.md'}, numbers {out / 'summary.json'}; "
                  f"curves of every stage: tensorboard --logdir {out}", highlight=False)


# ----------------------------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    d = DemoConfig.__dataclass_fields__
    p = argparse.ArgumentParser(
        prog="tempo-pl demo",
        description="The offline demo: SFT warm start, zero-RL, TEMPO / TTRL / frozen-critic test-time training on "
                    "D_U, evaluation; writes comparison.{csv,md,png} and summary.json.",
    )
    p.add_argument("--out", default=str(d["out"].default), help="output folder (default runs/demo)")
    p.add_argument("--steps-scale", type=float, default=1.0,
                   help="multiply every stage's step count (default 1; 0.01 is a smoke run)")
    p.add_argument("--only", help=f"comma-separated stages to run, of {','.join(STAGE_NAMES)} (default: all)")
    p.add_argument("--jobs", type=int, default=d["jobs"].default,
                   help=f"test-time runs trained at once (default {d['jobs'].default})")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="--KEY=VALUE",
                   help="extra fit argument for the RL stages, e.g. --set=--data.init_args.eval_limit=16 (repeatable)")
    p.add_argument("--launcher", choices=LAUNCHERS, default="subprocess",
                   help="subprocess (default: one child Python per stage) or inprocess (needs --jobs 1)")
    p.add_argument("--config-dir", default=str(DEMO_CONFIGS),
                   help="folder of the stage configs (default: configs/demo beside the package)")
    return p


def config_from_args(argv: Optional[Sequence[str]] = None) -> DemoConfig:
    ns = build_parser().parse_args(None if argv is None else list(argv))
    only = None if ns.only is None else [s.strip() for s in ns.only.split(",") if s.strip()]
    return DemoConfig(out=Path(ns.out), steps_scale=ns.steps_scale, only=only, jobs=ns.jobs,
                      overrides=ns.overrides, launcher=ns.launcher, config_dir=Path(ns.config_dir))


def main(argv: Optional[Sequence[str]] = None) -> Optional[dict]:
    """Entry point of ``tempo-pl demo`` (``cli.main`` dispatches here)."""
    return run_demo(config_from_args(argv))


if __name__ == "__main__":  # pragma: no cover
    main()

"""``tempo-pl demo``: TEMPO's effect end to end, offline, on a laptop CPU.

One command runs the paper's pipeline in miniature, each stage a ``tempo-pl fit`` config under ``configs/demo/``::

    tempo-pl demo --out runs/demo

1. ``sft``: warm start of a tiny char-level Qwen3 on D_L's worked solutions (multi-step arithmetic, 2-4 steps, most
   of them rechecking every step: a habit that overruns the response budget on long chains);
2. ``zero_rl``: PPO on D_L, actor and critic (the paper's stage 1); its export is everybody's start point, the
   "base";
3. ``tempo``, ``ttrl``, ``frozen_critic``: test-time training on D_U (4-step chains, a shift from D_L) from the same
   actor, seed and number of RL steps, each evaluated on D_U and on a held-out set before training and every few
   steps (by default all three at once);
4. ``report``: ``comparison.{csv,md,png}`` and ``curves.csv`` (by :mod:`tempo_pl.pipelines.report`) and
   ``summary.json`` (by :mod:`tempo_pl.pipelines.demo_summary`).

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
import shutil
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import yaml

from tempo_pl.pipelines.demo_stages import (
    DONE_FILE, STAGE_NAMES, STAGES, TEST_TIME_METHODS, Stage, is_done, parallel_groups, stage_dir,
)
from tempo_pl.pipelines.demo_summary import print_summary, write_report
from tempo_pl.pipelines.launcher import LAUNCHERS, Children, launch
from tempo_pl.pipelines.progress import PROGRESS_FILE, StageDisplay

def shipped_demo_configs() -> Path:
    """The stage configs: ``configs/demo`` beside the package in a source checkout (``pip install -e .``), else
    ``tempo_pl/configs/demo``, shipped as package data in the wheel."""
    checkout = Path(__file__).resolve().parents[2] / "configs" / "demo"
    if (checkout / "tempo.yaml").is_file():
        return checkout
    from importlib.resources import files

    return Path(str(files("tempo_pl.configs") / "demo"))


DEMO_CONFIGS = shipped_demo_configs()
"""The stage configs the demo reads by default (:func:`shipped_demo_configs`)."""


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
                f"demo: {missing} not found in {self.config_dir}; the demo configs ship in the package "
                "(tempo_pl/configs/demo) and in a source checkout (configs/demo); point --config-dir at a copy"
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


# ----------------------------------------------------------------------------------------------- stage commands


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
    progress = {"class_path": "tempo_pl.pipelines.progress.StageProgress",
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

    progress_files = {s.name: stage_dir(cfg.out, s.name) / PROGRESS_FILE for s in selected}
    with StageDisplay(progress_files) as display:
        try:
            for group in parallel_groups(selected):
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

                def run_stage(stage: Stage) -> dict:
                    display.start(stage.name)
                    record = runner.run(stage, threads)
                    display.finish(stage.name, f"done in {record['wall_seconds']:.0f} s")
                    display.log(f"{stage.name}: done in {record['wall_seconds']:.0f} s wall"
                                + (f", {record['cpu_seconds']:.0f} s CPU" if record["cpu_seconds"] else ""))
                    return record

                with ThreadPoolExecutor(max_workers=parallel) as pool:
                    futures = [pool.submit(run_stage, s) for s in todo]
                    finished, _ = wait(futures, return_when=FIRST_EXCEPTION)
                    failed = [f for f in finished if f.exception() is not None]
                    if failed:
                        runner.children.stop()
                        for f in futures:
                            f.cancel()
                        raise failed[0].exception()
                ran.update(s.name for s in todo)
        except BaseException:
            runner.children.stop()
            raise
    if summary is not None:
        print_summary(summary, cfg.out)
    return summary


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

"""``tempo-pl demo``: TEMPO's effect end to end, offline, on a laptop CPU.

One command runs the paper's pipeline in miniature, each stage a ``tempo-pl fit`` run of configs under ``configs/demo/``
(the baselines and the frozen critic as overlays over ``tempo.yaml``)::

    tempo-pl demo --out runs/demo

1. ``sft``: warm start of a tiny char-level Qwen3 on D_L's worked solutions (multi-step arithmetic, 2-4 steps; in the
   default ``trap`` scenario most chains ending in a subtraction are worked with a shortcut that drops it, a
   consistent wrong answer; ``--scenario drift`` adds a ``verified`` line that checks nothing, ``recheck`` a habit
   that overruns the response budget: ``configs/demo/scenarios.yaml``);
2. ``zero_rl``: PPO on D_L, actor and critic (the paper's stage 1); its export is everybody's start point, the
   "base";
3. ``tempo``, ``ttrl``, ``frozen_critic``, ``empo``, ``intuitor``: test-time training on D_U (4-step chains, a shift
   from D_L) from the same actor and number of RL steps, each evaluated on D_U and on a held-out set before training
   and every few steps (by default all at once); ``--seeds N`` trains each N times (seeds 0..N-1, folders
   ``<method>`` and ``<method>_seed<s>``), ``--test-time-scale 2`` for twice the RL steps (``<run>_x2``), from the
   same SFT and zero-RL models;
4. ``report``: ``comparison.{csv,md,png}`` and ``curves.csv`` (by :mod:`tempo_pl.pipelines.report`; over several
   seeds the mean curve and its min-max band; the critic's calibration on fresh D_L and D_U samples in a third
   panel) and ``summary.json`` (by :mod:`tempo_pl.pipelines.demo_summary`).

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
import tempfile
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Optional, Sequence

from urllib.parse import parse_qsl

import yaml

from tempo_pl.data.synthetic import SOURCE_PREFIX as SYNTHETIC_PREFIX
from tempo_pl.pipelines.demo_config import DEMO_CONFIGS, SCENARIOS_FILE, DemoConfig, read_scenarios
from tempo_pl.pipelines.demo_stages import (
    DONE_FILE, STAGE_NAMES, Stage, is_done, parallel_groups, stage_dir,
)
from tempo_pl.pipelines.demo_summary import print_summary, write_report
from tempo_pl.pipelines.launcher import LAUNCHERS, Children, launch
from tempo_pl.pipelines.progress import PROGRESS_FILE, StageDisplay
from tempo_pl.run.config_layers import config_args, has_key, nested, read_layers

# ----------------------------------------------------------------------------------------------- step counts


def scaled(steps: int, scale: float) -> int:
    """``steps * scale`` rounded, at least 1."""
    return max(1, round(steps * scale))


def test_time_schedule(steps: int, eval_every: int, scale: float, test_time_scale: float = 1.0) -> tuple[int, int]:
    """RL steps and evaluation interval of a test-time run after scaling: the interval is scaled by ``scale`` (at
    least 1), the steps by ``scale * test_time_scale`` and rounded up to a multiple of the interval, so the last step
    is always evaluated and runs of every ``test_time_scale`` are evaluated at the same steps."""
    every = scaled(eval_every, scale)
    return every * max(1, math.ceil(scaled(steps, scale * test_time_scale) / every)), every


def _write_yaml(data: dict, target: Path) -> None:
    """Write ``target`` whole or not at all: the test-time stages write their shared base at the same time."""
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, partial = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    with os.fdopen(handle, "w") as out:
        out.write(yaml.safe_dump(data, sort_keys=False))
    os.replace(partial, target)


def _trainer_int(cfg: dict, key: str, paths: Sequence[Path]) -> int:
    value = (cfg.get("trainer") or {}).get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        where = " + ".join(str(p) for p in paths)
        raise ValueError(f"demo: {where} needs an integer trainer.{key} >= 1 (the stage's step count), got {value!r}")
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


def with_task(node, task: str):
    """``node`` (a parsed config) with every ``synthetic:<split>?...`` path's task knobs replaced by ``task``'s; each
    path keeps its own ``seed`` and ``size``."""
    if isinstance(node, dict):
        return {key: with_task(value, task) for key, value in node.items()}
    if isinstance(node, list):
        return [with_task(value, task) for value in node]
    if isinstance(node, str) and node.startswith(f"{SYNTHETIC_PREFIX}:"):
        split, _, query = node.partition("?")
        kept = [f"{k}={v}" for k, v in parse_qsl(query) if k in ("seed", "size")]
        return f"{split}?{'&'.join(kept + ([task] if task else []))}"
    return node


def stage_configs(stage: Stage, cfg: DemoConfig) -> list[Path]:
    """The config files a stage runs, base first: the shipped ones in the default scenario, else copies with the
    scenario's task, written to ``<out>/configs/<scenario>/``, and the scenario's settings for the stage's config
    (named by its last file) as one more overlay there, ``<config>.settings.yaml``."""
    paths = [cfg.config_dir / name for name in stage.configs]
    scenarios = read_scenarios(cfg.config_dir)
    if cfg.scenario == next(iter(scenarios)):
        return paths
    entry, folder = scenarios[cfg.scenario], cfg.out / "configs" / cfg.scenario
    targets = [folder / path.name for path in paths]
    for path, target in zip(paths, targets):
        _write_yaml(with_task(read_layers([path]), entry["task"]), target)
    config_name = stage.configs[-1].rsplit(".", 1)[0]
    settings = (entry.get("stages") or {}).get(config_name) or {}
    merged = read_layers(targets)
    for key in settings:
        if not has_key(merged, key):
            where = f"{cfg.config_dir / SCENARIOS_FILE}, scenario {cfg.scenario!r}, {config_name}"
            raise ValueError(f"demo: {where}: {key!r} is not a key of the stage's config")
    if settings:
        targets.append(folder / f"{config_name}.settings.yaml")
        _write_yaml(nested(settings), targets[-1])
    return targets


def fit_args(stage: Stage, cfg: DemoConfig) -> list[str]:
    """The ``tempo-pl fit`` arguments of a training stage: its configs (:func:`stage_configs`), then the demo's
    logger, progress file, step count, seed and start point (the previous stage's output), then ``--set`` overrides
    (RL stages)."""
    paths = stage_configs(stage, cfg)
    data = read_layers(paths)
    out = cfg.out
    logger = {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
              "init_args": {"save_dir": str(out), "name": "", "version": stage.name, "default_hp_metric": False}}
    progress = {"class_path": "tempo_pl.pipelines.progress.StageProgress",
                "init_args": {"path": str(stage_dir(out, stage.name) / PROGRESS_FILE)}}
    args = ["fit", *config_args(paths), f"--trainer.logger={json.dumps(logger)}", "--trainer.enable_progress_bar=false",
            f"--trainer.callbacks+={json.dumps(progress)}"]
    if stage.name == "sft":
        return args + [f"--trainer.max_steps={scaled(_trainer_int(data, 'max_steps', paths), cfg.steps_scale)}",
                       f"--model.init_args.save_dir={stage_dir(out, 'sft') / 'policy'}"]
    if stage.name == "zero_rl":
        steps = scaled(_trainer_int(data, "limit_train_batches", paths), cfg.steps_scale)
        args += [f"--trainer.limit_train_batches={steps}",
                 f"--model.init_args.policy.name_or_path={stage_dir(out, 'sft') / 'policy'}"]
        return args + list(cfg.overrides)
    steps, every = test_time_schedule(
        _trainer_int(data, "limit_train_batches", paths), _trainer_int(data, "val_check_interval", paths),
        cfg.steps_scale, cfg.test_time_scale,
    )
    start = zero_rl_export(out)
    args += [f"--trainer.limit_train_batches={steps}", f"--trainer.val_check_interval={every}",
             f"--model.init_args.policy.name_or_path={start['policy']}"]
    if stage.seed:
        data_seed = ((data.get("data") or {}).get("init_args") or {}).get("seed", 0)
        args += [f"--seed_everything={int(data.get('seed_everything') or 0) + stage.seed}",
                 f"--data.init_args.seed={int(data_seed) + stage.seed}"]
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
                if todo[0].name.startswith("report"):
                    display.start(todo[0].name)
                    summary = write_report(cfg)
                    ran.add(todo[0].name)
                    display.finish(todo[0].name, "written")
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
        description="The offline demo: SFT warm start, zero-RL, TEMPO / TTRL / frozen-critic / EMPO / Intuitor "
                    "test-time training on D_U, evaluation; writes comparison.{csv,md,png} and summary.json.",
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
    p.add_argument("--seeds", type=int, default=1,
                   help="runs of every test-time method, seeds 0..N-1, from the same SFT and zero-RL models; the "
                        "report gives their mean and min-max (default 1)")
    p.add_argument("--scenario", default=None,
                   help="the synthetic task, a name in the config folder's scenarios.yaml: trap (default: the "
                        "consensus trap), recheck or drift")
    p.add_argument("--test-time-scale", type=float, default=1.0,
                   help="multiply the test-time runs' RL steps only (default 1): into a finished demo's folder, "
                        "2 reuses its SFT and zero-RL models, trains <run>_x2 runs and reports D_U mean@k at 1x "
                        "and 2x")
    return p


def config_from_args(argv: Optional[Sequence[str]] = None) -> DemoConfig:
    ns = build_parser().parse_args(None if argv is None else list(argv))
    only = None if ns.only is None else [s.strip() for s in ns.only.split(",") if s.strip()]
    return DemoConfig(out=Path(ns.out), steps_scale=ns.steps_scale, only=only, jobs=ns.jobs,
                      overrides=ns.overrides, launcher=ns.launcher, config_dir=Path(ns.config_dir), seeds=ns.seeds,
                      scenario=ns.scenario, test_time_scale=ns.test_time_scale)


def main(argv: Optional[Sequence[str]] = None) -> Optional[dict]:
    """Entry point of ``tempo-pl demo`` (``cli.main`` dispatches here)."""
    return run_demo(config_from_args(argv))


if __name__ == "__main__":  # pragma: no cover
    main()

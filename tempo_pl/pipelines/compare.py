"""``tempo-pl compare``: run several methods from one start point, seed and RL-step budget, then tabulate and plot.

The paper's claim is a comparison (self-rewarding test-time training plateaus and loses diversity, TEMPO keeps
improving), so this runner makes it one command::

    tempo-pl compare tempo=configs/tiny.yaml ttrl=configs/tiny.yaml,configs/baselines/ttrl.yaml \\
        frozen=configs/tiny.yaml,configs/tempo/frozen_critic.yaml --steps 8 --eval-every 2 --output runs/compare

Each method is a ``tempo-pl fit`` config, or a base and its overlays separated by commas (each a ``--config``, base
first), run through the CLI with the same ``--seed_everything``, the same number of RL steps (one training batch = one
RL step), evaluation before training and every ``--eval-every`` steps, and its own TensorBoard log directory
``<output>/runs/<method>/seed<seed>``. All methods start from the same policy (and, for methods with a critic, the
same critic): the folders a stage-1 run exports when ``--stage1 configs/tiny.yaml,configs/baselines/zero_rl.yaml``
is given (the paper's pipeline; stage 1 itself starts from ``--policy``, e.g. an SFT warm start, when given), else
the folders given with ``--policy``/``--critic``, else the model each config builds
(identical when the configs share the model block, as the shipped ones do). The runner then reads every run's event
file and writes, through :mod:`tempo_pl.pipelines.report`, ``comparison.csv``, ``comparison.md`` (per method: start,
final and best of mean@n, pass@k, maj@n and distinct answers on one evaluation set), ``curves.csv`` (every evaluation
point) and ``comparison.png`` (mean@n and pass@k against the RL step). Oracle runs (they read D_U answers) are marked
in the table and the plot.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from tempo_pl.run.config_layers import config_args, read_layers
from tempo_pl.pipelines.launcher import LAUNCHERS, launch
from tempo_pl.pipelines.report import collect, plot_curves, write_tables


@dataclass(frozen=True)
class Method:
    """One row of the comparison: a display name and the ``tempo-pl fit`` configs that define it (base first)."""

    name: str
    configs: tuple[Path, ...]

    @staticmethod
    def parse(spec: str) -> "Method":
        """``NAME=PATHS`` or ``PATHS``, where ``PATHS`` is a config or a base and its overlays separated by commas
        (without a name, the method is named by the last file's stem)."""
        name, sep, paths = spec.partition("=")
        if not sep:
            name, paths = Path(spec.split(",")[-1]).stem, spec
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            raise ValueError(f"method name {name!r} (from {spec!r}) may only hold letters, digits, '_', '.', '-'")
        configs = tuple(Path(p) for p in paths.split(","))
        for config in configs:
            if not config.is_file():
                raise FileNotFoundError(f"method {name!r}: config {str(config)!r} does not exist")
        return Method(name, configs)

    @property
    def has_critic(self) -> bool:
        """Whether the configs build a critic (``model.init_args.critic`` set), so a start critic applies to it."""
        init_args = (read_layers(self.configs).get("model") or {}).get("init_args") or {}
        return init_args.get("critic") is not None


@dataclass
class CompareConfig:
    """Options of one comparison (the ``tempo-pl compare`` command line)."""

    methods: list[Method]
    """The methods to run, in table order."""
    steps: int = 8
    """RL steps every method runs (training batches; an E-step and an M-step count one each)."""
    eval_every: int = 2
    """Evaluate every this many RL steps (and once before training); must divide ``steps``."""
    seed: int = 0
    """``seed_everything`` of every run (and of the stage-1 run)."""
    output: Path = Path("runs/compare")
    """Folder of the logs, tables and plot."""
    policy: Optional[str] = None
    """Start policy: a Hugging Face folder (an SFT warm start, a stage-1 export) every method loads instead of its
    own model; with ``stage1``, the start of the stage-1 run instead."""
    critic: Optional[str] = None
    """Start critic folder, loaded by every method that has a critic (critic-free methods ignore it); with
    ``stage1``, the start critic of the stage-1 run instead."""
    stage1: Optional[Method] = None
    """A zero-RL config with an ``HFExport`` callback, run first (from ``policy``/``critic`` when given); its export
    is every method's start policy and critic."""
    stage1_steps: int = 4
    """RL steps of the stage-1 run."""
    eval_set: Optional[str] = None
    """Evaluation set of the table and plot; default: the first (alphabetically) that every run logged."""
    overrides: list[str] = field(default_factory=list)
    """Extra ``tempo-pl fit`` arguments given to every run, stage 1 included (``--trainer.limit_val_batches=2``)."""
    launcher: str = "subprocess"
    """``subprocess`` (one ``python -m tempo_pl fit`` per run: isolated, memory freed) or ``inprocess``."""

    def __post_init__(self) -> None:
        if not self.methods:
            raise ValueError("compare: give at least one method config")
        names = [m.name for m in self.methods]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"compare: method names must be unique, got {dupes} more than once (use NAME=PATH)")
        for key in ("steps", "eval_every", "stage1_steps"):
            if getattr(self, key) < 1:
                raise ValueError(f"compare: --{key.replace('_', '-')} must be >= 1, got {getattr(self, key)}")
        if self.steps % self.eval_every:
            raise ValueError(
                f"compare: --steps ({self.steps}) must be a multiple of --eval-every ({self.eval_every}), "
                "or the final step is never evaluated"
            )
        if self.launcher not in LAUNCHERS:
            raise ValueError(f"compare: --launcher must be one of {LAUNCHERS}, got {self.launcher!r}")
        bad = [o for o in self.overrides if not o.startswith("--")]
        if bad:
            raise ValueError(f"compare: --set values must be fit arguments starting with '--', got {bad}")
        self.output = Path(self.output)


# ----------------------------------------------------------------------------------------------- running


def run_dir(output: Path, name: str, seed: int) -> Path:
    """The log directory of one method's run."""
    return Path(output) / "runs" / name / f"seed{seed}"


def fit_args(
    method: Method,
    *,
    steps: int,
    eval_every: int,
    seed: int,
    output: Path,
    policy: Optional[str] = None,
    critic: Optional[str] = None,
    overrides: Sequence[str] = (),
    evaluate: bool = True,
) -> list[str]:
    """The ``tempo-pl fit`` arguments of one run: the method's config, then the shared seed, budget, evaluation
    schedule (none when ``evaluate`` is False), log directory and start point, then the user's overrides (last, so
    they win)."""
    logger = {
        "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
        "init_args": {"save_dir": str(Path(output) / "runs"), "name": method.name, "version": f"seed{seed}"},
    }
    args = [
        "fit",
        *config_args(method.configs),
        f"--seed_everything={seed}",
        "--trainer.max_epochs=1",
        "--trainer.max_steps=-1",
        f"--trainer.limit_train_batches={steps}",
    ]
    if evaluate:
        args += [
            f"--trainer.val_check_interval={eval_every}",
            "--trainer.check_val_every_n_epoch=null",
            "--trainer.num_sanity_val_steps=-1",  # evaluate the start point, at RL step 0
        ]
    else:
        args += ["--trainer.limit_val_batches=0", "--trainer.num_sanity_val_steps=0"]
    args += [
        f"--trainer.default_root_dir={run_dir(output, method.name, seed)}",
        f"--trainer.logger={json.dumps(logger)}",
    ]
    # one mapping per model, merged into the config's: a config-built model's `config` must become null with it
    if policy is not None:
        start = {"config": None, "name_or_path": str(policy), "tokenizer": str(policy)}
        args.append(f"--model.init_args.policy={json.dumps(start)}")
    if critic is not None and method.has_critic:
        args.append(f"--model.init_args.critic={json.dumps({'config': None, 'name_or_path': str(critic)})}")
    return args + list(overrides)


def run_method(
    method: Method, cfg: CompareConfig, steps: int, policy: Optional[str], critic: Optional[str], evaluate: bool = True
) -> Path:
    """Run one method (from a clean log directory) and return its log directory."""
    log_dir = run_dir(cfg.output, method.name, cfg.seed)
    if log_dir.exists():
        shutil.rmtree(log_dir)  # stale event files would add a second curve to the same tags
    args = fit_args(
        method, steps=steps, eval_every=min(cfg.eval_every, steps), seed=cfg.seed, output=cfg.output,
        policy=policy, critic=critic, overrides=cfg.overrides, evaluate=evaluate,
    )
    print(f"[compare] {method.name}: tempo-pl {' '.join(args)}", flush=True)
    launch(args, cfg.launcher, cfg.output / "logs" / f"{method.name}.log")
    return log_dir


def run_stage1(cfg: CompareConfig) -> tuple[str, Optional[str]]:
    """Run the zero-RL config from ``cfg.policy``/``cfg.critic`` (or its own model), without evaluation (every
    method evaluates the result at its RL step 0), and return the policy and critic folders its ``HFExport`` wrote."""
    stage1 = Method(f"stage1_{cfg.stage1.name}", cfg.stage1.configs)
    log_dir = run_method(stage1, cfg, cfg.stage1_steps, policy=cfg.policy, critic=cfg.critic, evaluate=False)
    exports = sorted(log_dir.rglob("export.json"))
    if not exports:
        raise RuntimeError(
            f"compare: the stage-1 config {','.join(map(str, cfg.stage1.configs))!r} wrote no HFExport folder under "
            f"{log_dir}; add {{class_path: tempo_pl.callbacks.hf_export.HFExport}} to its trainer.callbacks"
        )
    info = json.loads(exports[0].read_text())
    return info["policy"], info.get("critic")


def compare(cfg: CompareConfig) -> dict[str, Path]:
    """Run every method (after stage 1 when asked) and write the table and plot; returns the files written."""
    policy, critic = cfg.policy, cfg.critic
    if cfg.stage1 is not None:
        policy, critic = run_stage1(cfg)
        print(f"[compare] stage 1 exported policy={policy} critic={critic}", flush=True)
    log_dirs = {m.name: run_method(m, cfg, cfg.steps, policy, critic) for m in cfg.methods}
    eval_set, results = collect(log_dirs, cfg.eval_set)
    csv_path, md_path, curves_path = write_tables(results, cfg.output, eval_set, cfg.seed)
    start = policy or "each config's own model"
    if cfg.stage1 is not None:
        start = f"stage 1 ({cfg.stage1_steps} steps) from {cfg.policy or 'its own model'}"
    png = cfg.output / "comparison.png"
    plot_curves(results, png, title=f"{eval_set}: {cfg.steps} RL steps, seed {cfg.seed}, start: {start}")
    print(md_path.read_text(), flush=True)
    return {"csv": csv_path, "markdown": md_path, "curves": curves_path, "plot": png, **{
        f"run:{name}": path for name, path in log_dirs.items()}}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tempo-pl compare",
        description="Run methods from one start point, seed and RL-step budget; write comparison.{csv,md,png}.",
    )
    p.add_argument("methods", nargs="+", metavar="[NAME=]CONFIG[,OVERLAY...]",
                   help="tempo-pl fit configs, one per method (a base and its overlays separated by commas)")
    p.add_argument("--steps", type=int, default=8, help="RL steps per method (default 8)")
    p.add_argument("--eval-every", type=int, default=2, help="evaluate every N RL steps (default 2)")
    p.add_argument("--seed", type=int, default=0, help="seed_everything of every run (default 0)")
    p.add_argument("--output", default="runs/compare", help="output folder (default runs/compare)")
    p.add_argument("--policy", help="start policy folder (Hugging Face format) for every method")
    p.add_argument("--critic", help="start critic folder for every method that has a critic")
    p.add_argument("--stage1", metavar="[NAME=]CONFIG[,OVERLAY...]",
                   help="zero-RL config (with HFExport) run first, from --policy/--critic if given; its export is "
                        "every method's start")
    p.add_argument("--stage1-steps", type=int, default=4, help="RL steps of the stage-1 run (default 4)")
    p.add_argument("--eval-set", help="evaluation set of the table and plot (default: first shared)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="--KEY=VALUE",
                   help="extra fit argument for every run, e.g. --set=--trainer.limit_val_batches=2 (repeatable)")
    p.add_argument("--launcher", choices=LAUNCHERS, default="subprocess",
                   help="subprocess (default: one child Python per run) or inprocess")
    return p


def config_from_args(argv: Optional[Sequence[str]] = None) -> CompareConfig:
    ns = build_parser().parse_args(None if argv is None else list(argv))
    return CompareConfig(
        methods=[Method.parse(s) for s in ns.methods],
        steps=ns.steps,
        eval_every=ns.eval_every,
        seed=ns.seed,
        output=Path(ns.output),
        policy=ns.policy,
        critic=ns.critic,
        stage1=None if ns.stage1 is None else Method.parse(ns.stage1),
        stage1_steps=ns.stage1_steps,
        eval_set=ns.eval_set,
        overrides=ns.overrides,
        launcher=ns.launcher,
    )


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Path]:
    """Entry point of ``tempo-pl compare`` (``cli.main`` dispatches here) and ``examples/compare_methods.py``."""
    return compare(config_from_args(argv))


if __name__ == "__main__":  # pragma: no cover
    main()

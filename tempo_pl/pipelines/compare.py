"""``tempo-pl compare``: run several methods from one start point, seed and RL-step budget, then tabulate and plot.

The paper's claim is a comparison (self-rewarding test-time training plateaus and loses diversity, TEMPO keeps
improving), so this runner makes it one command::

    tempo-pl compare tempo=configs/tiny.yaml ttrl=configs/baselines/ttrl.yaml \\
        frozen=configs/tempo/frozen_critic.yaml --steps 8 --eval-every 2 --output runs/compare

Each method is a ``tempo-pl fit`` config, run through the CLI with the same ``--seed_everything``, the same number of
RL steps (one training batch = one RL step), evaluation before training and every ``--eval-every`` steps, and its
own TensorBoard log directory ``<output>/runs/<method>/seed<seed>``. All methods start from the same policy (and, for
methods with a critic, the same critic): the folders a stage-1 run exports when ``--stage1
configs/baselines/zero_rl.yaml`` is given (the paper's pipeline; stage 1 itself starts from ``--policy``, e.g. an SFT
warm start, when given), else the folders given with ``--policy``/``--critic``, else the model each config builds
(identical when the configs share the model block, as the shipped ones do). The runner then reads every run's event
file and writes ``comparison.csv``, ``comparison.md`` (per method: start, final and best of mean@n, pass@k, maj@n
and distinct answers on one evaluation set), ``curves.csv`` (every evaluation point) and ``comparison.png`` (mean@n
and pass@k against the RL step). Oracle runs (they read D_U answers) are marked in the table and the plot.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import yaml

from tempo_pl.pipelines.launcher import LAUNCHERS, launch

Curves = dict[str, list[tuple[int, float]]]
"""Scalar tag -> [(RL step, value)], steps ascending."""

ORACLE_TAG = "train/oracle_upper_bound"


@dataclass(frozen=True)
class Method:
    """One row of the comparison: a display name and the ``tempo-pl fit`` config that defines it."""

    name: str
    config: Path

    @staticmethod
    def parse(spec: str) -> "Method":
        """``NAME=PATH`` or ``PATH`` (the name is then the file stem)."""
        name, sep, path = spec.partition("=")
        if not sep:
            name, path = Path(spec).stem, spec
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            raise ValueError(f"method name {name!r} (from {spec!r}) may only hold letters, digits, '_', '.', '-'")
        config = Path(path)
        if not config.is_file():
            raise FileNotFoundError(f"method {name!r}: config {str(config)!r} does not exist")
        return Method(name, config)

    @property
    def has_critic(self) -> bool:
        """Whether the config builds a critic (``model.init_args.critic`` set), so a start critic applies to it."""
        data = yaml.safe_load(self.config.read_text()) or {}
        init_args = ((data.get("model") or {}).get("init_args") or {}) if isinstance(data, dict) else {}
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
        f"--config={method.config}",
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
    stage1 = Method(f"stage1_{cfg.stage1.name}", cfg.stage1.config)
    log_dir = run_method(stage1, cfg, cfg.stage1_steps, policy=cfg.policy, critic=cfg.critic, evaluate=False)
    exports = sorted(log_dir.rglob("export.json"))
    if not exports:
        raise RuntimeError(
            f"compare: the stage-1 config {str(cfg.stage1.config)!r} wrote no HFExport folder under {log_dir}; "
            "add {class_path: tempo_pl.callbacks.hf_export.HFExport} to its trainer.callbacks"
        )
    info = json.loads(exports[0].read_text())
    return info["policy"], info.get("critic")


# ----------------------------------------------------------------------------------------------- reading


def read_scalars(log_dir: Path) -> Curves:
    """Every scalar of a TensorBoard run directory (all its event files), as ``{tag: [(step, value), ...]}``; a
    step logged twice keeps its last value."""
    from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

    if not any(Path(log_dir).glob("events.out.tfevents.*")):
        raise FileNotFoundError(f"compare: no TensorBoard event file in {log_dir}")
    acc = EventAccumulator(str(log_dir), size_guidance={SCALARS: 0})
    acc.Reload()
    curves: Curves = {}
    for tag in acc.Tags()["scalars"]:
        by_step = {int(e.step): float(e.value) for e in acc.Scalars(tag)}
        curves[tag] = sorted(by_step.items())
    return curves


def eval_sets(curves: Curves) -> list[str]:
    """Names of the evaluation sets with a ``val/<set>/mean@n`` curve."""
    return sorted({m.group(1) for tag in curves if (m := re.fullmatch(r"val/(.+)/mean@\d+", tag))})


def _largest(curves: Curves, prefix: str, family: str) -> Optional[str]:
    pattern = re.escape(prefix + family) + r"@(\d+)"
    found = [(int(m.group(1)), tag) for tag in curves if (m := re.fullmatch(pattern, tag))]
    return max(found)[1] if found else None


def table_metrics(curves: Curves, eval_set: str) -> dict[str, str]:
    """The tags of the table's metrics on ``eval_set``: ``mean@n``, the largest ``pass@k``, ``maj@n`` and
    ``distinct_answers``, keyed by their short name (those a run did not log are left out)."""
    prefix = f"val/{eval_set}/"
    tags = {}
    for family in ("mean", "pass", "maj"):
        tag = _largest(curves, prefix, family)
        if tag is not None:
            tags[tag[len(prefix):]] = tag
    if prefix + "distinct_answers" in curves:
        tags["distinct_answers"] = prefix + "distinct_answers"
    return tags


def summarize(points: list[tuple[int, float]]) -> dict[str, float]:
    """Start (first step), final (last step) and best (largest value) of one curve, and the step of the best
    (the earliest on ties)."""
    if not points:
        raise ValueError("summarize: empty curve")
    best_step, best = max(points, key=lambda p: (p[1], -p[0]))
    return {"start": points[0][1], "final": points[-1][1], "best": best, "best_step": float(best_step)}


@dataclass
class MethodResult:
    name: str
    oracle: bool
    curves: Curves
    """The evaluation curves of the table's metrics, keyed by short name (``mean@4``, ``pass@4``, ...)."""

    @property
    def label(self) -> str:
        return f"{self.name} (oracle)" if self.oracle else self.name


def collect(log_dirs: dict[str, Path], eval_set: Optional[str]) -> tuple[str, list[MethodResult]]:
    """Read every run and pick the evaluation set the table and plot show."""
    all_curves = {name: read_scalars(path) for name, path in log_dirs.items()}
    common = sorted(set.intersection(*(set(eval_sets(c)) for c in all_curves.values())))
    if eval_set is None:
        if not common:
            raise RuntimeError(f"compare: the runs share no evaluation set with a mean@n curve ({sorted(log_dirs)})")
        eval_set = common[0]
    elif eval_set not in common:
        raise ValueError(f"compare: --eval-set {eval_set!r} was not logged by every run; shared sets: {common}")
    results = []
    for name, curves in all_curves.items():
        tags = table_metrics(curves, eval_set)
        results.append(MethodResult(name, ORACLE_TAG in curves, {short: curves[tag] for short, tag in tags.items()}))
    return eval_set, results


# ----------------------------------------------------------------------------------------------- writing


def table_rows(results: Sequence[MethodResult]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the comparison: per method, start / final / best of every metric."""
    metrics = list(dict.fromkeys(m for r in results for m in r.curves))
    header = ["method", "oracle", "last_step"] + [f"{m} {part}" for m in metrics for part in ("start", "final", "best")]
    rows = []
    for r in results:
        last = max((p[-1][0] for p in r.curves.values() if p), default=0)
        row = [r.label, "yes" if r.oracle else "no", str(last)]
        for m in metrics:
            if r.curves.get(m):
                s = summarize(r.curves[m])
                row += [f"{s['start']:.4f}", f"{s['final']:.4f}", f"{s['best']:.4f}"]
            else:
                row += ["", "", ""]
        rows.append(row)
    return header, rows


def write_tables(results: Sequence[MethodResult], output: Path, eval_set: str, seed: int) -> tuple[Path, Path, Path]:
    """Write ``comparison.csv``, ``comparison.md`` and ``curves.csv`` (every point) into ``output``."""
    output.mkdir(parents=True, exist_ok=True)
    header, rows = table_rows(results)
    csv_path, md_path, curves_path = output / "comparison.csv", output / "comparison.md", output / "curves.csv"
    with csv_path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    lines = [
        f"Evaluation set `{eval_set}`, seed {seed}; start = before training (RL step 0), final = last evaluation, "
        "best = highest evaluation. Rows marked (oracle) read D_U answers: an upper bound, not test-time training.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    md_path.write_text("\n".join(lines) + "\n")
    with curves_path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["method", "oracle", "metric", "rl_step", "value"])
        for r in results:
            for metric, points in r.curves.items():
                writer.writerows([r.name, int(r.oracle), metric, step, value] for step, value in points)
    return csv_path, md_path, curves_path


def plot_curves(results: Sequence[MethodResult], path: Path, title: str = ""):
    """Plot ``mean@n`` and the largest ``pass@k`` of every method against the RL step into ``path`` (PNG);
    oracle runs are dashed. Returns the matplotlib figure (closed)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    families = ("mean", "pass")
    markers = "osD^vP*X"
    fig, axes = plt.subplots(1, len(families), figsize=(11, 4.2), squeeze=False)
    for ax, family in zip(axes[0], families):
        names = sorted({m for r in results for m in r.curves if m.startswith(family + "@")})
        for i, r in enumerate(results):
            for metric in names:
                if r.curves.get(metric):
                    steps, values = zip(*r.curves[metric])
                    ax.plot(steps, values, marker=markers[i % len(markers)], markersize=5, alpha=0.85,
                            linestyle="--" if r.oracle else "-", label=r.label)
        ax.set_title(" / ".join(names) or family)
        ax.set_ylim(-0.03, 1.03)  # both are rates: a common scale keeps methods and runs comparable by eye
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("RL step")
        ax.set_ylabel("accuracy" if family == "mean" else "pass rate")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return fig


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
    p.add_argument("methods", nargs="+", metavar="[NAME=]CONFIG", help="tempo-pl fit configs, one per method")
    p.add_argument("--steps", type=int, default=8, help="RL steps per method (default 8)")
    p.add_argument("--eval-every", type=int, default=2, help="evaluate every N RL steps (default 2)")
    p.add_argument("--seed", type=int, default=0, help="seed_everything of every run (default 0)")
    p.add_argument("--output", default="runs/compare", help="output folder (default runs/compare)")
    p.add_argument("--policy", help="start policy folder (Hugging Face format) for every method")
    p.add_argument("--critic", help="start critic folder for every method that has a critic")
    p.add_argument("--stage1", metavar="[NAME=]CONFIG",
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

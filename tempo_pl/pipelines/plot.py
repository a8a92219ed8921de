"""``tempo-pl plot``: accuracy, pass@k and diversity against the RL step for runs that already exist.

::

    tempo-pl plot outputs/demo                      # every run under the folder (the demo's stages)
    tempo-pl plot runs/tiny/version_0 runs/tiny/version_3 --eval-set heldout --output plots/

Each RUN_DIR is a run's log folder or a folder above runs. A run's curves are recomputed from the per-question
JSONL its evaluations wrote (``<log_dir>/eval/<set>_step<N>.jsonl``), so runs logged to any tracker (TensorBoard,
CSV, MLflow, W&B) plot alike; a folder without them falls back to its TensorBoard scalars. Every run found that
evaluated is a curve, named by its path under the RUN_DIR given (a folder ``tempo-pl validate`` made is labeled
``(validate only)``: one evaluation, no training). For each
evaluation set the runs share (or the one ``--eval-set`` names) it writes, through
:mod:`tempo_pl.pipelines.report`, ``<set>.png`` (mean@k, the largest pass@k and distinct answers per question
against the RL step; oracle runs dashed), ``<set>.md`` and ``<set>.csv`` (start, final and best of each metric per
run) and ``<set>_curves.csv`` (every point), and prints the Markdown table.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any, Optional, Sequence

import yaml

from tempo_pl.evaluation.records import QuestionResult, summarize_questions
from tempo_pl.pipelines.report import (ORACLE_TAG, Curves, MethodResult, eval_sets, plot_curves, read_scalars,
                                       table_metrics, write_tables)
from tempo_pl.run.run_folder import run_command

SKIPPED_FOLDERS = {"checkpoints", "hf", "eval", "rollouts", "logs"}
EVAL_FILE = re.compile(r"(?P<set>.+)_step(?P<step>\d+)\.jsonl")
"""``<set>_step<RL step>.jsonl``, the per-question records an evaluation writes under ``<log_dir>/eval/``."""
VALIDATE_ONLY = "validate only"
"""What a run's label says when ``tempo-pl validate`` made it: one evaluation, no training."""


def find_runs(roots: Sequence[Path]) -> dict[str, Path]:
    """Run log folders under ``roots`` (holding ``eval/<set>_step<N>.jsonl`` files, whatever the tracker, or
    TensorBoard's ``events.out.tfevents.*``), by name: the path under the root given (the root's own name when it
    is a run itself)."""
    runs: dict[str, Path] = {}
    for root in map(Path, roots):
        if not root.is_dir():
            raise FileNotFoundError(f"plot: {str(root)!r} is not a folder")
        marks = [p.parent.parent for p in root.rglob("eval/*.jsonl") if EVAL_FILE.fullmatch(p.name)]
        marks += [p.parent for p in root.rglob("events.out.tfevents.*")]
        folders = sorted({folder for folder in marks if folder == root or folder.is_relative_to(root)
                          if not SKIPPED_FOLDERS.intersection(folder.relative_to(root).parts)})
        for folder in folders:
            name = folder.name if folder == root else str(folder.relative_to(root))
            if name in runs:
                name = str(folder)
            runs[name] = folder
    if not runs:
        raise FileNotFoundError(f"plot: no run (eval/<set>_step<N>.jsonl or events.out.tfevents.*) under "
                                f"{[str(r) for r in roots]}")
    return runs


def read_eval_curves(log_dir: Path) -> Curves:
    """The evaluation curves of a run recomputed from its per-question JSONL (``<log_dir>/eval/``), whatever
    tracker it logged to: ``val/<set>/mean@n``, ``pass@n``, ``maj@n`` and ``distinct_answers`` at each RL step
    evaluated, and :data:`ORACLE_TAG` when its config exposed D_U's answers. Empty when it wrote none."""
    curves: Curves = {}
    for path in sorted((Path(log_dir) / "eval").glob("*.jsonl")):
        match = EVAL_FILE.fullmatch(path.name)
        lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()] if match else []
        if not lines:
            continue
        records = [QuestionResult(**json.loads(line)) for line in lines]
        n = records[0].n
        summary = summarize_questions(records, ks=[n])
        for metric in (f"mean@{n}", f"pass@{n}", f"maj@{n}", "distinct_answers"):
            curves.setdefault(f"val/{match['set']}/{metric}", []).append((int(match["step"]), summary[metric]))
    if curves and _exposes_unlabeled_answers(Path(log_dir) / "config.yaml"):
        curves[ORACLE_TAG] = [(0, 1.0)]
    return {tag: sorted(points) for tag, points in curves.items()}


def _exposes_unlabeled_answers(config_path: Path) -> bool:
    try:
        config: Any = yaml.safe_load(config_path.read_text())
    except (OSError, yaml.YAMLError):
        return False
    data = config.get("data") if isinstance(config, dict) else None
    init_args = data.get("init_args", data) if isinstance(data, dict) else None
    return isinstance(init_args, dict) and init_args.get("expose_unlabeled_answers") is True


def run_curves(log_dir: Path) -> Curves:
    """A run's evaluation curves: from its eval JSONL when it wrote some, else from its TensorBoard scalars."""
    return read_eval_curves(log_dir) or read_scalars(log_dir)


def run_label(name: str, log_dir: Path) -> str:
    """The run's name, marked ``(validate only)`` when ``tempo-pl validate`` made the folder."""
    return f"{name} ({VALIDATE_ONLY})" if run_command(log_dir) == "validate" else name


def plot_runs(roots: Sequence[Path], output: Optional[Path] = None, eval_set: Optional[str] = None) -> dict[str, Path]:
    """Write the plot and tables of every shared evaluation set (or ``eval_set``); returns the files by name."""
    runs = find_runs(roots)
    curves = {name: run_curves(path) for name, path in runs.items()}
    evaluated = {name: c for name, c in curves.items() if eval_sets(c)}
    if not evaluated:
        raise RuntimeError(f"plot: none of the runs logged an evaluation (val/<set>/mean@k): {sorted(runs)}")
    skipped = sorted(set(runs) - set(evaluated))
    if skipped:
        print(f"[plot] without evaluation, left out: {', '.join(skipped)}", flush=True)
    shared = sorted(set.intersection(*(set(eval_sets(c)) for c in evaluated.values())))
    sets = [eval_set] if eval_set is not None else shared
    if not sets:
        raise RuntimeError(f"plot: the runs share no evaluation set; name one with --eval-set ({sorted(evaluated)})")
    if eval_set is not None and eval_set not in shared:
        raise ValueError(f"plot: --eval-set {eval_set!r} was not logged by every run; shared sets: {shared}")
    output = Path(output) if output is not None else Path(roots[0]) / "plots"
    written: dict[str, Path] = {}
    for name in sets:
        results = [MethodResult(run_label(run, runs[run]), ORACLE_TAG in c,
                                {short: c[tag] for short, tag in table_metrics(c, name).items()})
                   for run, c in evaluated.items()]
        _, md_path, _ = write_tables(results, output, name, seed=None, stem=name)
        png = output / f"{name}.png"
        plot_curves(results, png, title=f"{name}: {len(results)} run(s)", families=("mean", "pass", "distinct_answers"))
        print(md_path.read_text(), flush=True)
        print(f"[plot] {png}", flush=True)
        written[f"{name}:png"], written[f"{name}:markdown"] = png, md_path
    return written


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tempo-pl plot",
        description="Plot accuracy (mean@k), pass@k and distinct answers against the RL step for existing runs; "
                    "write <set>.png and a Markdown table per evaluation set.",
    )
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="a run's log folder, or a folder above runs")
    p.add_argument("--output", help="folder of the plots and tables (default: <first RUN_DIR>/plots)")
    p.add_argument("--eval-set", help="plot this evaluation set only (default: every set the runs share)")
    return p


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Path]:
    """Entry point of ``tempo-pl plot`` (``cli.main`` dispatches here)."""
    ns = build_parser().parse_args(None if argv is None else list(argv))
    return plot_runs([Path(r) for r in ns.runs], None if ns.output is None else Path(ns.output), ns.eval_set)


if __name__ == "__main__":  # pragma: no cover
    main()

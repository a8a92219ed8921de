"""``tempo-pl plot``: accuracy, pass@k and diversity against the RL step for runs that already exist.

::

    tempo-pl plot outputs/demo                      # every run under the folder (the demo's stages)
    tempo-pl plot runs/tiny/version_0 runs/tiny/version_3 --eval-set heldout --output plots/

Each RUN_DIR is a run's log folder (it holds TensorBoard event files) or a folder above runs; every run found that
logged an evaluation (``val/<set>/mean@k``) is a curve, named by its path under the RUN_DIR given. For each
evaluation set the runs share (or the one ``--eval-set`` names) it writes, through
:mod:`tempo_pl.pipelines.report`, ``<set>.png`` (mean@k, the largest pass@k and distinct answers per question
against the RL step; oracle runs dashed), ``<set>.md`` and ``<set>.csv`` (start, final and best of each metric per
run) and ``<set>_curves.csv`` (every point), and prints the Markdown table.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional, Sequence

from tempo_pl.pipelines.report import collect, eval_sets, plot_curves, read_scalars, write_tables

SKIPPED_FOLDERS = {"checkpoints", "hf", "eval", "rollouts", "logs"}


def find_runs(roots: Sequence[Path]) -> dict[str, Path]:
    """Run log folders (holding ``events.out.tfevents.*``) under ``roots``, by name: the path under the root given
    (the root's own name when it is a run itself)."""
    runs: dict[str, Path] = {}
    for root in map(Path, roots):
        if not root.is_dir():
            raise FileNotFoundError(f"plot: {str(root)!r} is not a folder")
        folders = sorted({p.parent for p in root.rglob("events.out.tfevents.*")
                          if not SKIPPED_FOLDERS.intersection(p.parent.relative_to(root).parts)})
        for folder in folders:
            name = folder.name if folder == root else str(folder.relative_to(root))
            if name in runs:
                name = str(folder)
            runs[name] = folder
    if not runs:
        raise FileNotFoundError(f"plot: no TensorBoard run (events.out.tfevents.*) under {[str(r) for r in roots]}")
    return runs


def plot_runs(roots: Sequence[Path], output: Optional[Path] = None, eval_set: Optional[str] = None) -> dict[str, Path]:
    """Write the plot and tables of every shared evaluation set (or ``eval_set``); returns the files by name."""
    runs = find_runs(roots)
    evaluated = {name: path for name, path in runs.items() if eval_sets(read_scalars(path))}
    if not evaluated:
        raise RuntimeError(f"plot: none of the runs logged an evaluation (val/<set>/mean@k): {sorted(runs)}")
    skipped = sorted(set(runs) - set(evaluated))
    if skipped:
        print(f"[plot] without evaluation, left out: {', '.join(skipped)}", flush=True)
    shared = sorted(set.intersection(*(set(eval_sets(read_scalars(p))) for p in evaluated.values())))
    sets = [eval_set] if eval_set is not None else shared
    if not sets:
        raise RuntimeError(f"plot: the runs share no evaluation set; name one with --eval-set ({sorted(evaluated)})")
    output = Path(output) if output is not None else Path(roots[0]) / "plots"
    written: dict[str, Path] = {}
    for name in sets:
        chosen, results = collect(evaluated, name)
        _, md_path, _ = write_tables(results, output, chosen, seed=None, stem=chosen)
        png = output / f"{chosen}.png"
        plot_curves(results, png, title=f"{chosen}: {len(results)} run(s)", families=("mean", "pass", "distinct_answers"))
        print(md_path.read_text(), flush=True)
        print(f"[plot] {png}", flush=True)
        written[f"{chosen}:png"], written[f"{chosen}:markdown"] = png, md_path
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

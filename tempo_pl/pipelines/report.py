"""What the pipelines read back from runs and write about them: every scalar of a TensorBoard run, the evaluation
curves a comparison shows, the start / final / best of a curve, the comparison tables (``comparison.csv``,
``comparison.md``, ``curves.csv``) and the plot of mean@n and pass@k against the RL step.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

Curves = dict[str, list[tuple[int, float]]]
"""Scalar tag -> [(RL step, value)], steps ascending."""

ORACLE_TAG = "train/oracle_upper_bound"
"""Logged only by runs that read D_U's answers: their rows are marked as an upper bound, not test-time training."""


# ----------------------------------------------------------------------------------------------- reading


def read_scalars(log_dir: Path) -> Curves:
    """Every scalar of a TensorBoard run directory (all its event files), as ``{tag: [(step, value), ...]}``; a
    step logged twice keeps its last value."""
    from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

    if not any(Path(log_dir).glob("events.out.tfevents.*")):
        raise FileNotFoundError(f"no TensorBoard event file in {log_dir}")
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


def largest_k_tag(curves: Curves, prefix: str, family: str) -> Optional[str]:
    """The ``<prefix><family>@<k>`` tag with the largest k (``val/heldout/pass@8`` rather than ``pass@4``); None when
    there is none."""
    pattern = re.escape(prefix + family) + r"@(\d+)"
    found = [(int(m.group(1)), tag) for tag in curves if (m := re.fullmatch(pattern, tag))]
    return max(found)[1] if found else None


def table_metrics(curves: Curves, eval_set: str) -> dict[str, str]:
    """The tags of the table's metrics on ``eval_set``: ``mean@n``, the largest ``pass@k``, ``maj@n``,
    ``greedy_accuracy`` and ``distinct_answers``, keyed by their short name (those a run did not log are left
    out)."""
    prefix = f"val/{eval_set}/"
    tags = {}
    for family in ("mean", "pass", "maj"):
        tag = largest_k_tag(curves, prefix, family)
        if tag is not None:
            tags[tag[len(prefix):]] = tag
    for name in ("greedy_accuracy", "distinct_answers"):
        if prefix + name in curves:
            tags[name] = prefix + name
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
    band: dict[str, list[tuple[int, float, float]]] = field(default_factory=dict)
    """Per metric, ``(step, min, max)`` over the runs a mean curve averages (:func:`mean_over_runs`); empty for one
    run."""

    @property
    def label(self) -> str:
        return f"{self.name} (oracle)" if self.oracle else self.name


def mean_over_runs(name: str, runs: Sequence[MethodResult]) -> MethodResult:
    """One method's runs (seeds) as one result: per metric the mean curve and its min-max band, over the steps
    every run evaluated."""
    if not runs:
        raise ValueError(f"mean_over_runs: no run of {name!r}")
    curves: Curves = {}
    band: dict[str, list[tuple[int, float, float]]] = {}
    for metric in runs[0].curves:
        by_run = [dict(r.curves.get(metric, [])) for r in runs]
        steps = sorted(set.intersection(*(set(points) for points in by_run)))
        curves[metric] = [(step, sum(p[step] for p in by_run) / len(by_run)) for step in steps]
        band[metric] = [(step, min(p[step] for p in by_run), max(p[step] for p in by_run)) for step in steps]
    return MethodResult(name, runs[0].oracle, curves, band if len(runs) > 1 else {})


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
    metrics = header_metrics(results)
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


def header_metrics(results: Sequence[MethodResult]) -> list[str]:
    """The metrics of a table's columns, in first-seen order."""
    return list(dict.fromkeys(m for r in results for m in r.curves))


def write_tables(results: Sequence[MethodResult], output: Path, eval_set: str, seed: Optional[int],
                 stem: str = "comparison") -> tuple[Path, Path, Path]:
    """Write ``<stem>.csv``, ``<stem>.md`` and ``curves.csv`` (``<stem>_curves.csv`` for another stem: every point)
    into ``output``; ``seed`` None for runs of unknown or different seeds."""
    output.mkdir(parents=True, exist_ok=True)
    header, rows = table_rows(results)
    curves_name = "curves.csv" if stem == "comparison" else f"{stem}_curves.csv"
    csv_path, md_path, curves_path = output / f"{stem}.csv", output / f"{stem}.md", output / curves_name
    with csv_path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    lines = [
        f"Evaluation set `{eval_set}`{'' if seed is None else f', seed {seed}'}; start = first evaluation (RL step 0 "
        "when evaluated before training), final = last evaluation, "
        "best = highest evaluation. Rows marked (oracle) read D_U answers: an upper bound, not test-time training.",
        *(["mean@n is the accuracy of n samples per question at the evaluation temperature (1: the paper's and the "
           "reference scripts' number); greedy_accuracy is that of one greedy (temperature 0) answer per question."]
          if "greedy_accuracy" in header_metrics(results) else []),
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


PLOT_FAMILIES = {"mean": "accuracy", "pass": "pass rate", "distinct_answers": "distinct answers per question",
                 "critic": "within-question AUROC / Brier score"}
"""Curve families a plot can show (the metric name before ``@k``, or before a space: ``critic AUROC D_L``), with
their y-axis label."""

_PANEL_STYLES = {"AUROC D_L": "-", "AUROC D_U": "--", "Brier D_L": "-.", "Brier D_U": ":"}
"""Line styles of the critic panel's curves (the colour is the method's)."""


def plot_curves(results: Sequence[MethodResult], path: Path, title: str = "",
                families: Sequence[str] = ("mean", "pass")):
    """Plot each family of ``families`` (``mean@n``, the largest ``pass@k``, ``distinct_answers``, the ``critic``
    curves) of every method against the RL step into ``path`` (PNG), one panel per family, one colour per method;
    oracle runs are dashed, and in the critic panel the line style tells the curves apart. Returns the matplotlib
    figure (closed)."""
    unknown = [f for f in families if f not in PLOT_FAMILIES]
    if unknown:
        raise ValueError(f"plot_curves: families must be among {sorted(PLOT_FAMILIES)}, got {unknown}")
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    markers = "osD^vP*X"
    fig, axes = plt.subplots(1, len(families), figsize=(5.5 * len(families), 4.2), squeeze=False)
    for ax, family in zip(axes[0], families):
        names = sorted({m for r in results for m in r.curves
                        if m == family or m.startswith(family + "@") or m.startswith(family + " ")})
        for i, r in enumerate(results):
            for metric in names:
                if r.curves.get(metric):
                    steps, values = zip(*r.curves[metric])
                    detail = metric[len(family) + 1:] if metric.startswith(family + " ") else ""
                    style = _PANEL_STYLES.get(detail, "--" if r.oracle else "-")
                    # markers shrink run by run, so that curves that coincide (all at 0) all stay visible
                    line, = ax.plot(steps, values, marker=markers[i % len(markers)], alpha=0.85,
                                    markersize=max(3.0, 9 - 1.5 * i), color=f"C{i}",
                                    linestyle=style, label=f"{r.label} {detail}".strip())
                    if r.band.get(metric):  # the min-max over seeds
                        band_steps, low, high = zip(*r.band[metric])
                        ax.fill_between(band_steps, low, high, color=line.get_color(), alpha=0.15, linewidth=0)
        ax.set_title((" / ".join(names) or family) if family != "critic" else "critic on current-policy samples")
        if family in ("mean", "pass", "critic"):
            ax.set_ylim(-0.03, 1.03)  # rates: a common scale keeps methods and runs comparable by eye
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("RL step")
        ax.set_ylabel(PLOT_FAMILIES[family])
        ax.grid(alpha=0.3)
        if not ax.get_legend_handles_labels()[0]:
            continue
        if family == "critic":
            # below the panel, two columns, long small-marker handles: its curves share a colour per method, so
            # the line style is what tells them apart, and inside the axes the legend would cover them
            ax.legend(fontsize=7, ncol=2, loc="upper center", bbox_to_anchor=(0.5, -0.2), handlelength=3.5,
                      markerscale=0.5)
        else:
            ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")  # keeps a legend placed below its panel
    plt.close(fig)
    return fig

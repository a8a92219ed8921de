"""The demo's report stage: ``summary.json`` (per test-time run mean@k and pass@k on D_U at the start and the end,
the same on the held-out set, the critic's ranking, the stages' time) beside the comparison tables and plot of
:mod:`tempo_pl.pipelines.report`, and the table printed at the end of ``tempo-pl demo``."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import yaml

from tempo_pl.pipelines.demo_config import DemoConfig
from tempo_pl.pipelines.demo_stages import (
    TEST_TIME_METHODS, build_stages, is_done, scale_suffix, stage_dir, stage_records,
)
from tempo_pl.pipelines.report import (
    Curves, MethodResult, collect, largest_k_tag, mean_over_runs, plot_curves, read_scalars, write_tables,
)

EVAL_SET = "unlabeled"
"""The evaluation set that is D_U itself (the test-time score); the configs name it so."""

HELDOUT_SET = "heldout"
"""The evaluation set from D_U's distribution that no run trains on."""

LABELED_SET = "labeled"
"""The evaluation set of D_L rows: the critic's calibration on the current policy's samples, with D_L's labels."""

CRITIC_CURVES = {
    "critic AUROC D_L": f"val/{LABELED_SET}/critic_within_question_auroc",
    "critic AUROC D_U": f"val/{EVAL_SET}/critic_within_question_auroc",
    "critic Brier D_L": f"val/{LABELED_SET}/critic_brier",
    "critic Brier D_U": f"val/{EVAL_SET}/critic_brier",
}
"""The critic panel's curves (within-question AUROC and Brier score of the last-token value on fresh samples of the
current policy; D_U's hidden labels are read for this telemetry only), by name in the plot and the table."""


def _k_of(curves: Curves, eval_set: str, log_dir: Path) -> int:
    tag = largest_k_tag(curves, f"val/{eval_set}/", "mean")
    if tag is None:
        raise RuntimeError(f"demo: {log_dir} logged no val/{eval_set}/mean@k: its config must evaluate {eval_set!r}")
    return int(tag.rsplit("@", 1)[1])


def _curve(curves: Curves, tag: str, log_dir: Path) -> list[tuple[int, float]]:
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
        **_majority(curves, k),
        **_critic_ranking(curves),
        **_greedy(curves),
    }


def _greedy(curves: Curves) -> dict:
    """Greedy accuracy on D_U (one temperature-0 answer per question) at both ends, for a run that logs it."""
    curve = curves.get(f"val/{EVAL_SET}/greedy_accuracy")
    return {"greedy_accuracy_start": curve[0][1], "greedy_accuracy_final": curve[-1][1]} if curve else {}


TELEMETRY_WINDOW = 5
"""RL steps averaged at each end of a training-time telemetry curve (one batch of 4-8 questions per step)."""


def _majority(curves: Curves, k: int) -> dict:
    """maj@k on D_U at both ends (the share of questions whose majority answer is right) and, for a run that logs
    it, ``telemetry/label_accuracy`` (its training batches' majority answers against the hidden labels) averaged
    over its first and last :data:`TELEMETRY_WINDOW` steps."""
    found = {}
    maj = curves.get(f"val/{EVAL_SET}/maj@{k}")
    if maj:
        found.update(maj_at_k_start=maj[0][1], maj_at_k_final=maj[-1][1])
    label = curves.get("telemetry/label_accuracy")
    if label:
        mean = lambda points: sum(v for _, v in points) / len(points)  # noqa: E731
        found.update(label_accuracy_first=mean(label[:TELEMETRY_WINDOW]), label_accuracy_last=mean(label[-TELEMETRY_WINDOW:]))
    return found


def over_seeds(runs: dict[str, dict]) -> dict:
    """One method's entry from its runs' entries (by run name): the mean of every number, ``<key>_min`` and
    ``<key>_max`` beside it when there are several runs, ``seeds`` and the runs themselves."""
    entries = list(runs.values())
    merged: dict = {"seeds": len(entries)}
    for key, first in entries[0].items():
        values = [e.get(key) for e in entries]
        if any(v is None or isinstance(v, bool) or not isinstance(v, (int, float)) for v in values):
            merged[key] = first if len(entries) == 1 else None
            continue
        merged[key] = sum(values) / len(values) if key not in ("k", "steps") else first
        if len(entries) > 1 and key not in ("k", "steps"):
            merged[f"{key}_min"], merged[f"{key}_max"] = min(values), max(values)
    if len(entries) > 1:
        merged["runs"] = runs
    return merged


def _critic_ranking(curves: Curves) -> dict:
    """For a run with a critic, its within-question AUROC and Brier score at both ends on D_U
    (``critic_within_question_auroc_start``, ...) and on D_L (``labeled_critic_...``); null where undefined."""
    finite = lambda value: value if math.isfinite(value) else None  # noqa: E731  (JSON has no NaN)
    found = {}
    for eval_set, prefix in ((EVAL_SET, ""), (LABELED_SET, "labeled_")):
        for metric in ("critic_within_question_auroc", "critic_brier"):
            curve = curves.get(f"val/{eval_set}/{metric}")
            if curve:
                found[f"{prefix}{metric}_start"] = finite(curve[0][1])
                found[f"{prefix}{metric}_final"] = finite(curve[-1][1])
    return found


def base_summary(tempo: dict, wall_seconds: float) -> dict:
    """The zero-RL policy's entry: the TEMPO runs' step-0 evaluation (every test-time run starts from the same
    weights; over several seeds, the mean of their samples), with 0 steps; its time is what producing it cost (SFT
    and zero-RL)."""
    return {
        "seeds": tempo.get("seeds", 1),
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
        **{key: tempo[key] for key in ("maj_at_k_start", "greedy_accuracy_start") if key in tempo},
    }


def _with_critic_curves(result: MethodResult, log_dir: Path) -> MethodResult:
    """``result`` with the :data:`CRITIC_CURVES` its run logged (none for a run without a critic)."""
    curves = read_scalars(log_dir)
    result.curves.update({name: curves[tag] for name, tag in CRITIC_CURVES.items() if curves.get(tag)})
    return result


def write_report(cfg: DemoConfig) -> dict:
    """Write ``comparison.{csv,md,png}``, ``curves.csv`` and ``summary.json`` into ``cfg.out`` (with the suffix
    ``_x<scale>`` for another test-time scale than 1, and then each method's D_U mean@k at 1x beside it, from the
    1x runs in the same folder); return the summary."""
    out = cfg.out
    suffix = scale_suffix(cfg.test_time_scale)
    runs = [s for s in cfg.stages if s.method is not None]
    log_dirs = {s.name: stage_dir(out, s.name) for s in runs}
    eval_set, results = collect(log_dirs, EVAL_SET)
    by_run = {r.name: _with_critic_curves(r, log_dirs[r.name]) for r in results}
    results = [mean_over_runs(m, [by_run[s.name] for s in runs if s.method == m]) for m in TEST_TIME_METHODS]
    write_tables(results, out, eval_set, seed=_seed(cfg.config_dir) if cfg.seeds == 1 else None,
                 stem="comparison" + suffix)
    records = stage_records(out, cfg.stages)
    methods = {m: over_seeds({s.name: method_summary(log_dirs[s.name], records[s.name]["wall_seconds"])
                              for s in runs if s.method == m}) for m in TEST_TIME_METHODS}
    start_cost = sum(records[name]["wall_seconds"] for name in ("sft", "zero_rl") if name in records)
    summary = {"methods": {"base": base_summary(methods["tempo"], round(start_cost, 2)), **methods}}
    steps = methods["tempo"]["steps"]
    plot_curves(
        results, out / f"comparison{suffix}.png",
        title=f"D_U ({eval_set}), mean@{methods['tempo']['k']} and pass@{methods['tempo']['k']}, and the critic's "
              f"calibration on the current policy's samples: {steps} RL steps from the stage-1 policy, "
              + ("same seed" if cfg.seeds == 1 else f"mean and min-max of {cfg.seeds} seeds"),
        families=("mean", "pass", "critic"),
    )
    if cfg.test_time_scale != 1:
        summary["test_time_compute"] = test_time_compute(cfg, methods)
    spans = [(r["started"], r["ended"]) for r in records.values()]
    summary["stages"] = {name: {k: r[k] for k in ("wall_seconds", "cpu_seconds", "threads")}
                         for name, r in records.items()}
    summary["total_wall_seconds"] = round(max(e for _, e in spans) - min(s for s, _ in spans), 2) if spans else None
    summary["settings"] = {"scenario": cfg.scenario, "seeds": cfg.seeds, "steps_scale": cfg.steps_scale,
                           "jobs": cfg.jobs, "cores": os.cpu_count(),
                           "launcher": cfg.launcher, "eval_set": eval_set, "heldout_set": HELDOUT_SET}
    summary["settings"]["test_time_scale"] = cfg.test_time_scale
    path = out / f"summary{suffix}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(summary, indent=2) + "\n")
    tmp.replace(path)  # last, and whole: summary.json marks the report done
    return summary


def test_time_compute(cfg: DemoConfig, scaled_methods: dict) -> dict:
    """Per method, D_U mean@k at the end of the 1x runs (this folder's, over the same seeds) and of this scale's:
    ``{"steps_1x", "mean_at_k_1x", "steps_<s>x", "mean_at_k_<s>x", "gain"}`` (with ``_min`` / ``_max`` over
    several seeds); ``{"missing_1x_runs": [...]}`` while the 1x runs have not all finished in this folder."""
    ones = [s for s in build_stages(cfg.seeds) if s.method is not None]
    missing = [s.name for s in ones if not is_done(cfg.out, s.name)]
    if missing:
        return {"missing_1x_runs": missing}
    records = stage_records(cfg.out, build_stages(cfg.seeds))
    label = f"{cfg.test_time_scale:g}x"
    table = {}
    for m in TEST_TIME_METHODS:
        base = over_seeds({s.name: method_summary(stage_dir(cfg.out, s.name), records[s.name]["wall_seconds"])
                           for s in ones if s.method == m})
        scaled = scaled_methods[m]
        row = {"steps_1x": base["steps"], f"steps_{label}": scaled["steps"]}
        for key, entry in ((f"mean_at_k_1x", base), (f"mean_at_k_{label}", scaled)):
            row[key] = entry["mean_at_k_final"]
            if "mean_at_k_final_min" in entry:
                row[f"{key}_min"], row[f"{key}_max"] = entry["mean_at_k_final_min"], entry["mean_at_k_final_max"]
        row["gain"] = row[f"mean_at_k_{label}"] - row["mean_at_k_1x"]
        table[m] = row
    lines = [f"D_U mean@k (k samples at temperature 1) at the last evaluation of the 1x and {label} test-time runs "
             "from the same stage-1 models" + ("" if cfg.seeds == 1 else f", mean [min-max] of {cfg.seeds} seeds"),
             "", f"| method | steps 1x | mean@k 1x | steps {label} | mean@k {label} | gain |", "|---|---|---|---|---|---|"]
    cell = lambda row, key: f"{row[key]:.3f}" + (  # noqa: E731
        f" [{row[key + '_min']:.3f}-{row[key + '_max']:.3f}]" if key + "_min" in row else "")
    for m, row in table.items():
        lines.append(f"| {m} | {row['steps_1x']} | {cell(row, 'mean_at_k_1x')} | {row[f'steps_{label}']} | "
                     f"{cell(row, f'mean_at_k_{label}')} | {row['gain']:+.3f} |")
    (cfg.out / f"test_time_compute{scale_suffix(cfg.test_time_scale)}.md").write_text("\n".join(lines) + "\n")
    return table


def _seed(config_dir: Path) -> int:
    """The test-time runs' shared seed, for the table's caption."""
    return int((yaml.safe_load((config_dir / "tempo.yaml").read_text()) or {}).get("seed_everything") or 0)


def print_summary(summary: dict, out: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    methods = summary["methods"]
    k = methods["base"]["k"]
    seeds = methods["base"].get("seeds", 1)
    table = Table(title=f"D_U mean@{k} (temperature 1) / greedy accuracy / pass@{k} (held-out at the end), critic's "
                        f"within-question AUROC on current-policy samples, from {out}"
                        + ("" if seeds == 1 else f": mean [min-max] of {seeds} seeds"))
    columns = {f"mean@{k} start": "mean_at_k_start", f"mean@{k} final": "mean_at_k_final",
               "greedy start": "greedy_accuracy_start", "greedy final": "greedy_accuracy_final",
               f"pass@{k} start": "pass_at_k_start", f"pass@{k} final": "pass_at_k_final",
               f"held-out mean@{k}": "heldout_mean_at_k_final", f"held-out pass@{k}": "heldout_pass_at_k_final",
               "AUROC D_L start": "labeled_critic_within_question_auroc_start",
               "AUROC D_L final": "labeled_critic_within_question_auroc_final",
               "AUROC D_U start": "critic_within_question_auroc_start",
               "AUROC D_U final": "critic_within_question_auroc_final"}
    for column in ("method", "steps", *columns, "wall s"):
        table.add_column(column, justify="left" if column == "method" else "right")

    def cell(m: dict, key: str) -> str:
        if m.get(key) is None:
            return "-"
        spread = f" [{m[key + '_min']:.3f}-{m[key + '_max']:.3f}]" if m.get(key + "_min") is not None else ""
        return f"{m[key]:.3f}{spread}"

    for name, m in methods.items():
        table.add_row(name, str(m["steps"]), *(cell(m, key) for key in columns.values()), f"{m['wall_seconds']:.0f}")
    console = Console(width=max(Console().width, 200))  # the table is wide: no ellipses in a log or a pipe
    console.print(table)
    compute = summary.get("test_time_compute")
    if compute and "missing_1x_runs" in compute:
        console.print(f"no 1x comparison: the 1x runs {compute['missing_1x_runs']} have not finished in {out} (run "
                      "the demo there without --test-time-scale, then this command again)", highlight=False)
    elif compute:
        label = f"{summary['settings']['test_time_scale']:g}x"
        console.print(f"D_U mean@{k} at the end of the 1x and {label} runs: " + ", ".join(
            f"{m} {row['mean_at_k_1x']:.3f} -> {row[f'mean_at_k_{label}']:.3f}" for m, row in compute.items()),
            highlight=False)
    total = summary.get("total_wall_seconds")
    if total is not None:
        console.print(f"stages took {total:.0f} s from the first start to the last end")
    suffix = scale_suffix(summary["settings"].get("test_time_scale", 1))
    console.print(f"plot {out / f'comparison{suffix}.png'}, table {out / f'comparison{suffix}.md'}, numbers "
                  f"{out / f'summary{suffix}.json'}; curves of every stage: tensorboard --logdir {out}",
                  highlight=False)

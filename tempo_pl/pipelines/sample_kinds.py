"""``tempo-pl samples``: what a synthetic-task run's evaluation samples did, and how its critic valued each kind.

::

    tempo-pl samples runs/demo/tempo runs/demo/frozen_critic               # D_U ("unlabeled"), every evaluation
    tempo-pl samples runs/demo --eval-set labeled --output tables/

For each run (a log folder, or a folder above runs, found as ``tempo-pl plot`` finds them) and each evaluation of
the set, the samples of ``<log_dir>/eval/<set>_step<N>.jsonl`` are sorted by
:func:`~tempo_pl.data.synthetic.response_kind` (shortcut, early stop, full) and by whether they write the
``verified`` line, and each kind gets its number of samples, how many of them are right and the critic's mean final
value of the right ones and of the wrong ones: whether the critic tells them apart. Per evaluation it also gives the
critic's level: its mean final value less the mean reward (+1 right, -1 wrong) of the same samples, 0 for a critic
calibrated in the large. The drift scenario's account in docs/results.md is read from these tables. A run without a
critic (TTRL, EMPO, Intuitor) has counts and no values.

It prints one Markdown table per run (a cell: samples / right / mean value of the right / of the wrong) and writes
``<output>/samples_<set>.csv``, one row per run, evaluation and kind.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from tempo_pl.data.synthetic import RESPONSE_KINDS, problem_steps, response_kind, wrote_verified
from tempo_pl.pipelines.plot import EVAL_FILE, find_runs

KINDS = tuple(f"{kind}{suffix}" for kind in RESPONSE_KINDS for suffix in ("", " + verified"))
"""The kinds a sample is counted under: each :data:`~tempo_pl.data.synthetic.RESPONSE_KINDS`, without and with the
``verified`` line."""


@dataclass
class KindCount:
    """The samples of one kind at one evaluation: how many, how many right, and the critic's final values of the
    right and of the wrong ones (empty for a run without a critic)."""

    samples: int = 0
    right: int = 0
    right_values: list[float] = field(default_factory=list)
    wrong_values: list[float] = field(default_factory=list)

    def add(self, right: bool, value: Optional[float]) -> None:
        self.samples += 1
        self.right += int(right)
        if value is not None:
            (self.right_values if right else self.wrong_values).append(value)

    def merge(self, other: KindCount) -> None:
        self.samples += other.samples
        self.right += other.right
        self.right_values += other.right_values
        self.wrong_values += other.wrong_values

    @property
    def mean_value(self) -> float:
        """The critic's mean final value over the kind's samples; NaN when the run has no critic."""
        return _mean(self.right_values + self.wrong_values)

    @property
    def mean_value_right(self) -> float:
        """The critic's mean final value over the kind's right samples; NaN when there are none."""
        return _mean(self.right_values)

    @property
    def mean_value_wrong(self) -> float:
        """The critic's mean final value over the kind's wrong samples; NaN when there are none."""
        return _mean(self.wrong_values)

    @property
    def level(self) -> float:
        """Mean critic value less mean reward (+1 right, -1 wrong) over the valued samples; NaN without a critic."""
        valued = len(self.right_values) + len(self.wrong_values)
        if not valued:
            return math.nan
        return self.mean_value - (len(self.right_values) - len(self.wrong_values)) / valued


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan


@dataclass
class Evaluation:
    """One evaluation of one run: its samples counted by kind."""

    step: int
    kinds: dict[str, KindCount] = field(default_factory=lambda: {kind: KindCount() for kind in KINDS})

    @property
    def total(self) -> KindCount:
        total = KindCount()
        for count in self.kinds.values():
            total.merge(count)
        return total


def count_file(path: Path, step: int) -> Evaluation:
    """The samples of one ``<set>_step<N>.jsonl`` file, counted by kind. Every record must hold a synthetic problem
    in its prompt (the number of operations a full computation has)."""
    evaluation = Evaluation(step)
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        record = json.loads(line)
        steps = problem_steps(record.get("prompt") or "")
        if steps is None:
            raise ValueError(f"samples: {path}:{number} ({record.get('question_id')!r}) holds no synthetic problem "
                             f"('Start with N. ...') in its prompt; this table is for the synthetic task's runs")
        values = record.get("values") or [None] * len(record["responses"])
        for response, right, value in zip(record["responses"], record["correct"], values):
            kind = response_kind(response, steps) + (" + verified" if wrote_verified(response) else "")
            evaluation.kinds[kind].add(bool(right), value)
    return evaluation


def count_run(log_dir: Path, eval_set: str) -> list[Evaluation]:
    """Every evaluation of ``eval_set`` a run wrote, in RL-step order."""
    evaluations = []
    for path in (Path(log_dir) / "eval").glob("*.jsonl"):
        match = EVAL_FILE.fullmatch(path.name)
        if match and match["set"] == eval_set:
            evaluations.append(count_file(path, int(match["step"])))
    return sorted(evaluations, key=lambda evaluation: evaluation.step)


def _signed(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:+.2f}"


def _cell(count: KindCount) -> str:
    if not count.samples:
        return ""
    if math.isnan(count.mean_value):
        return f"{count.samples} / {count.right}"
    return f"{count.samples} / {count.right} / {_signed(count.mean_value_right)} / {_signed(count.mean_value_wrong)}"


def markdown_table(evaluations: Sequence[Evaluation]) -> str:
    """One run's table: a row per evaluation; accuracy, the critic's level and a cell per kind."""
    header = ["RL step", "samples", "accuracy", "level", *KINDS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for evaluation in evaluations:
        total = evaluation.total
        level = "" if math.isnan(total.level) else f"{total.level:+.2f}"
        cells = [str(evaluation.step), str(total.samples), f"{total.right / total.samples:.3f}", level,
                 *(_cell(evaluation.kinds[kind]) for kind in KINDS)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_csv(counted: dict[str, list[Evaluation]], path: Path) -> Path:
    """One row per run, evaluation and kind (``all``: every sample, with the critic's level)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["run", "rl_step", "kind", "samples", "right", "mean_value", "mean_value_right",
                         "mean_value_wrong", "level"])
        for run, evaluations in counted.items():
            for evaluation in evaluations:
                for kind, count in [*evaluation.kinds.items(), ("all", evaluation.total)]:
                    level = count.level if kind == "all" else math.nan
                    numbers = (count.mean_value, count.mean_value_right, count.mean_value_wrong, level)
                    writer.writerow([run, evaluation.step, kind, count.samples, count.right,
                                     *("" if math.isnan(x) else f"{x:.4f}" for x in numbers)])
    return path


def sample_kinds(roots: Sequence[Path], eval_set: str = "unlabeled", output: Optional[Path] = None) -> Path:
    """Count every run's samples under ``roots``; print a table per run, write the CSV and return its path."""
    counted = {name: evaluations for name, log_dir in find_runs(roots).items()
               if (evaluations := count_run(log_dir, eval_set))}
    if not counted:
        raise FileNotFoundError(f"samples: no run under {[str(r) for r in roots]} wrote eval/{eval_set}_step<N>.jsonl")
    for run, evaluations in counted.items():
        print(f"\n{run} ({eval_set}; a cell: samples / right / the critic's mean value of the right ones / of the "
              f"wrong ones)\n", flush=True)
        print(markdown_table(evaluations), flush=True)
    path = write_csv(counted, Path(output if output is not None else roots[0]) / f"samples_{eval_set}.csv")
    print(f"\n[samples] {path}", flush=True)
    return path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tempo-pl samples",
        description="Sort a synthetic-task run's evaluation samples by what they did (shortcut, early stop, full; "
                    "with or without the verified line) and give each kind's count, right answers and mean critic "
                    "value, and the critic's level (mean value less mean reward) per evaluation.",
    )
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="a run's log folder, or a folder above runs")
    p.add_argument("--eval-set", default="unlabeled", help="the evaluation set to count (default: unlabeled, D_U)")
    p.add_argument("--output", help="folder of samples_<set>.csv (default: the first RUN_DIR)")
    return p


def main(argv: Optional[Sequence[str]] = None) -> Path:
    """Entry point of ``tempo-pl samples`` (``cli.main`` dispatches here)."""
    ns = build_parser().parse_args(None if argv is None else list(argv))
    return sample_kinds([Path(r) for r in ns.runs], ns.eval_set, None if ns.output is None else Path(ns.output))


if __name__ == "__main__":  # pragma: no cover
    main()

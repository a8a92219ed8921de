"""The demo's stage graph: which ``tempo-pl fit`` config each stage runs, which stages' output it reads, which may
run at the same time, and how a finished stage is marked on disk (so that an interrupted demo resumes)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

TEST_TIME_METHODS = ("tempo", "ttrl", "frozen_critic", "empo", "intuitor")
"""The test-time methods, in table order; every run of each starts from the zero-RL export."""

DONE_FILE = "done.json"
"""A stage's record (time, threads, command), written last: its presence means the stage finished."""


@dataclass(frozen=True)
class Stage:
    """One step of the pipeline: its configs under the config folder, and the stages whose output it reads."""

    name: str
    configs: tuple[str, ...]
    """File names under the config folder, layered base first (``--config A --config B``); empty for the report,
    which runs no training."""
    needs: tuple[str, ...] = ()
    method: Optional[str] = None
    """The test-time method a run trains (one of :data:`TEST_TIME_METHODS`); None for the other stages."""
    seed: int = 0
    """Added to a test-time run's config seeds (``seed_everything`` and the data module's): run ``s`` of ``--seeds
    N`` samples and shuffles differently from the same zero-RL start."""


def method_configs(method: str) -> tuple[str, ...]:
    """A test-time method's config files: TEMPO's ``tempo.yaml``, the other methods' overlay layered over it."""
    return ("tempo.yaml",) if method == "tempo" else ("tempo.yaml", f"{method}.yaml")


def scale_suffix(test_time_scale: float) -> str:
    """The folder suffix of runs trained for ``test_time_scale`` times the test-time steps: ``""`` at 1,
    ``_x2`` at 2, ``_x1.5`` at 1.5."""
    return "" if test_time_scale == 1 else f"_x{test_time_scale:g}"


def run_name(method: str, seed: int, test_time_scale: float = 1.0) -> str:
    """A test-time run's stage (and folder) name: the method for seed 0, ``<method>_seed<s>`` for the others, then
    :func:`scale_suffix`."""
    return (method if seed == 0 else f"{method}_seed{seed}") + scale_suffix(test_time_scale)


def build_stages(seeds: int = 1, test_time_scale: float = 1.0) -> tuple[Stage, ...]:
    """The pipeline with ``seeds`` runs of every test-time method (all sharing the SFT and zero-RL stages), each
    trained for ``test_time_scale`` times the test-time steps; the report of another scale than 1 is
    ``report_x<scale>``."""
    runs = tuple(Stage(run_name(m, s, test_time_scale), method_configs(m), needs=("zero_rl",), method=m, seed=s)
                 for m in TEST_TIME_METHODS for s in range(seeds))
    return (Stage("sft", ("sft.yaml",)), Stage("zero_rl", ("zero_rl.yaml",), needs=("sft",)), *runs,
            Stage("report" + scale_suffix(test_time_scale), (), needs=tuple(r.name for r in runs)))


STAGES: tuple[Stage, ...] = build_stages(1)
STAGE_NAMES = tuple(s.name for s in STAGES)


def parallel_groups(stages: Sequence[Stage]) -> list[list[Stage]]:
    """Consecutive stages that may run at the same time (the test-time runs), in pipeline order."""
    groups: list[list[Stage]] = []
    for stage in stages:
        if groups and stage.method is not None and groups[-1][0].method is not None:
            groups[-1].append(stage)
        else:
            groups.append([stage])
    return groups


def stage_dir(out: Path, name: str) -> Path:
    """A stage's folder: its TensorBoard logs, exported models and ``done.json``."""
    return Path(out) / name


def summary_name(report: str) -> str:
    """The summary file a report stage writes: ``summary.json`` for ``report``, ``summary_x2.json`` for
    ``report_x2``."""
    return "summary" + report[len("report"):] + ".json"


def is_done(out: Path, name: str) -> bool:
    if name.startswith("report"):
        return (Path(out) / summary_name(name)).is_file()
    return (stage_dir(out, name) / DONE_FILE).is_file()


def stage_records(out: Path, stages: Sequence[Stage] = STAGES) -> dict[str, dict]:
    """The ``done.json`` records of the training stages that finished, by stage name."""
    records = {}
    for stage in stages:
        path = stage_dir(out, stage.name) / DONE_FILE
        if stage.configs and path.is_file():
            records[stage.name] = json.loads(path.read_text())
    return records

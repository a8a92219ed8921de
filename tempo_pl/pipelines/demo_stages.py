"""The demo's stage graph: which ``tempo-pl fit`` config each stage runs, which stages' output it reads, which may
run at the same time, how a finished stage is marked on disk (so that an interrupted demo resumes), and how many
steps a stage runs after scaling."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import yaml

TEST_TIME_METHODS = ("tempo", "ttrl", "frozen_critic", "empo", "intuitor")
"""The test-time methods, in table order; every run of each starts from the zero-RL export."""

DONE_FILE = "done.json"
"""A stage's record (time, threads, command), written last: its presence means the stage finished."""


@dataclass(frozen=True)
class Stage:
    """One step of the pipeline: a config under the config folder, and the stages whose output it reads."""

    name: str
    config: Optional[str]
    """File name under the config folder; None for the report, which runs no training."""
    needs: tuple[str, ...] = ()
    method: Optional[str] = None
    """The test-time method a run trains (one of :data:`TEST_TIME_METHODS`); None for the other stages."""
    seed: int = 0
    """Added to a test-time run's config seeds (``seed_everything`` and the data module's): run ``s`` of ``--seeds
    N`` samples and shuffles differently from the same zero-RL start."""


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
    runs = tuple(Stage(run_name(m, s, test_time_scale), f"{m}.yaml", needs=("zero_rl",), method=m, seed=s)
                 for m in TEST_TIME_METHODS for s in range(seeds))
    return (Stage("sft", "sft.yaml"), Stage("zero_rl", "zero_rl.yaml", needs=("sft",)), *runs,
            Stage("report" + scale_suffix(test_time_scale), None, needs=tuple(r.name for r in runs)))


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
        if stage.config and path.is_file():
            records[stage.name] = json.loads(path.read_text())
    return records


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


def read_yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text()) or {}


def trainer_int(cfg: dict, key: str, path: Path) -> int:
    value = (cfg.get("trainer") or {}).get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"demo: {path} needs an integer trainer.{key} >= 1 (the stage's step count), got {value!r}")
    return value

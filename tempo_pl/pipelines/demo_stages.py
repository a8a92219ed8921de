"""The demo's stage graph: which ``tempo-pl fit`` config each stage runs, which stages' output it reads, which may
run at the same time, and how a finished stage is marked on disk (so that an interrupted demo resumes)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

TEST_TIME_METHODS = ("tempo", "ttrl", "frozen_critic")
"""The test-time runs, in table order; all start from the zero-RL export."""

DONE_FILE = "done.json"
"""A stage's record (time, threads, command), written last: its presence means the stage finished."""


@dataclass(frozen=True)
class Stage:
    """One step of the pipeline: a config under the config folder, and the stages whose output it reads."""

    name: str
    config: Optional[str]
    """File name under the config folder; None for the report, which runs no training."""
    needs: tuple[str, ...] = ()


STAGES: tuple[Stage, ...] = (
    Stage("sft", "sft.yaml"),
    Stage("zero_rl", "zero_rl.yaml", needs=("sft",)),
    *(Stage(name, f"{name}.yaml", needs=("zero_rl",)) for name in TEST_TIME_METHODS),
    Stage("report", None, needs=TEST_TIME_METHODS),
)
STAGE_NAMES = tuple(s.name for s in STAGES)


def parallel_groups(stages: Sequence[Stage]) -> list[list[Stage]]:
    """Consecutive stages that may run at the same time (the test-time runs), in pipeline order."""
    groups: list[list[Stage]] = []
    for stage in stages:
        if groups and stage.name in TEST_TIME_METHODS and groups[-1][0].name in TEST_TIME_METHODS:
            groups[-1].append(stage)
        else:
            groups.append([stage])
    return groups


def stage_dir(out: Path, name: str) -> Path:
    """A stage's folder: its TensorBoard logs, exported models and ``done.json``."""
    return Path(out) / name


def is_done(out: Path, name: str) -> bool:
    if name == "report":
        return (Path(out) / "summary.json").is_file()
    return (stage_dir(out, name) / DONE_FILE).is_file()


def stage_records(out: Path) -> dict[str, dict]:
    """The ``done.json`` records of the training stages that finished, by stage name."""
    records = {}
    for stage in STAGES:
        path = stage_dir(out, stage.name) / DONE_FILE
        if stage.config and path.is_file():
            records[stage.name] = json.loads(path.read_text())
    return records

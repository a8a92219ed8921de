"""The options of one demo (the ``tempo-pl demo`` command line) and the stage configs it reads: the shipped
``configs/demo`` folder and its ``scenarios.yaml``."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import yaml

from tempo_pl.pipelines.demo_stages import STAGE_NAMES, TEST_TIME_METHODS, Stage, build_stages
from tempo_pl.pipelines.launcher import LAUNCHERS


def shipped_demo_configs() -> Path:
    """The stage configs: ``configs/demo`` beside the package in a source checkout (``pip install -e .``), else
    ``tempo_pl/configs/demo``, shipped as package data in the wheel."""
    checkout = Path(__file__).resolve().parents[2] / "configs" / "demo"
    if (checkout / "tempo.yaml").is_file():
        return checkout
    from importlib.resources import files

    return Path(str(files("tempo_pl.configs") / "demo"))


DEMO_CONFIGS = shipped_demo_configs()
"""The stage configs the demo reads by default (:func:`shipped_demo_configs`)."""

SCENARIOS_FILE = "scenarios.yaml"
"""In the config folder: the synthetic task of each scenario (the shipped configs hold the default's)."""


def read_scenarios(config_dir: Path) -> dict[str, dict]:
    """``scenarios.yaml`` of a config folder: ``{name: {"task": knobs, "stages": {stage: {dotted key: value}}}}``;
    the first scenario is the one the stage configs hold, the default."""
    path = Path(config_dir) / SCENARIOS_FILE
    scenarios = yaml.safe_load(path.read_text()) if path.is_file() else None
    if not isinstance(scenarios, dict) or not scenarios:
        raise ValueError(f"demo: {path} must map scenario names to {{task: ..., stages: ...}}")
    for name, entry in scenarios.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("task"), str) or set(entry) - {"task", "stages", "about"}:
            raise ValueError(f"demo: {path}, scenario {name!r}: needs a `task` string (and optional `stages`, `about`)")
    return scenarios


@dataclass
class DemoConfig:
    """Options of one demo (the ``tempo-pl demo`` command line)."""

    out: Path = Path("runs/demo")
    """Output folder: one sub-folder per stage (TensorBoard logs, exported models, ``done.json``), ``logs/``, the
    comparison table and plot, and ``summary.json``."""
    steps_scale: float = 1.0
    """Multiplies every stage's step count (SFT steps, zero-RL and test-time RL steps, the evaluation interval);
    each stays at least 1. Below 1 for a quick look (0.01 is a smoke run), above 1 for a longer run."""
    only: Optional[list[str]] = None
    """Run only these stages (their inputs must already be in ``out``); None runs the whole pipeline."""
    jobs: int = len(TEST_TIME_METHODS)
    """Test-time runs trained at the same time, each in its own process with ``max(1, cores // jobs)`` threads: a
    tiny model leaves a core idle within one process, so parallel processes finish sooner than one after the other
    (all three at once on two cores keep both busy to the end). 1 runs them one after the other."""
    overrides: list[str] = field(default_factory=list)
    """Extra ``tempo-pl fit`` arguments for the RL stages (zero-RL and the test-time runs), after the config's."""
    launcher: str = "subprocess"
    """``subprocess`` (one ``python -m tempo_pl`` per stage: isolated, timed, parallel) or ``inprocess`` (every
    stage in this Python, one at a time: no start-up cost per stage; needs ``jobs: 1``)."""
    config_dir: Path = DEMO_CONFIGS
    """Folder holding the stages' configs (``sft.yaml``, ``zero_rl.yaml``, ``tempo.yaml`` and an overlay per other
    test-time method) and ``scenarios.yaml``."""
    seeds: int = 1
    """Runs of every test-time method (seeds 0..N-1); the SFT and zero-RL models are shared."""
    scenario: Optional[str] = None
    """A scenario of the config folder's ``scenarios.yaml`` (the synthetic task every stage reads); None is the
    first, the one the stage configs hold. Another one runs rewritten configs, kept in ``<out>/configs``."""
    test_time_scale: float = 1.0
    """Multiplies the test-time runs' RL steps only (the evaluation interval stays): into a finished demo's folder it
    reuses the stage-1 models, trains ``<run>_x<scale>`` runs and reports (``*_x<scale>.*``) D_U mean@k at 1x too."""

    def __post_init__(self) -> None:
        self.out, self.config_dir = Path(self.out), Path(self.config_dir)
        scale = self.steps_scale
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 0:
            raise ValueError(f"demo: --steps-scale must be a positive number, got {self.steps_scale!r}")
        tts = self.test_time_scale
        if isinstance(tts, bool) or not isinstance(tts, (int, float)) or not math.isfinite(tts) or tts <= 0:
            raise ValueError(f"demo: --test-time-scale must be a positive number, got {self.test_time_scale!r}")
        if isinstance(self.seeds, bool) or not isinstance(self.seeds, int) or self.seeds < 1:
            raise ValueError(f"demo: --seeds must be an integer >= 1, got {self.seeds!r}")
        if self.only is not None:
            names = {s.name for s in build_stages(self.seeds, self.test_time_scale)} | set(STAGE_NAMES)
            unknown = [s for s in self.only if s not in names]
            if unknown or not self.only:
                raise ValueError(f"demo: --only takes stages from {list(STAGE_NAMES)}, got {self.only!r}")
        if isinstance(self.jobs, bool) or not isinstance(self.jobs, int) or self.jobs < 1:
            raise ValueError(f"demo: --jobs must be an integer >= 1, got {self.jobs!r}")
        if self.launcher not in LAUNCHERS:
            raise ValueError(f"demo: --launcher must be one of {LAUNCHERS}, got {self.launcher!r}")
        if self.launcher == "inprocess" and self.jobs != 1:
            raise ValueError("demo: --launcher inprocess runs one stage at a time: use --jobs 1")
        bad = [o for o in self.overrides if not o.startswith("--")]
        if bad:
            raise ValueError(f"demo: --set values must be fit arguments starting with '--', got {bad}")
        missing = sorted({c for s in build_stages() for c in s.configs if not (self.config_dir / c).is_file()})
        if missing:
            raise FileNotFoundError(
                f"demo: {missing} not found in {self.config_dir}; the demo configs ship in the package "
                "(tempo_pl/configs/demo) and in a source checkout (configs/demo); point --config-dir at a copy"
            )
        scenarios = read_scenarios(self.config_dir)
        if self.scenario is None:
            self.scenario = next(iter(scenarios))
        elif self.scenario not in scenarios:
            raise ValueError(f"demo: --scenario must be one of {list(scenarios)}, got {self.scenario!r}")

    @property
    def stages(self) -> tuple[Stage, ...]:
        return build_stages(self.seeds, self.test_time_scale)

    def selected(self) -> list[Stage]:
        """The stages to run; ``--only`` names a stage or a method (all its seeds)."""
        only = self.only
        return [s for s in self.stages if only is None or s.name in only or (s.method is not None and s.method in only)]

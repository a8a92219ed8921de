"""Lightning callbacks of tempo-pl, installed as ``tempo_pl.callbacks``."""

from .em_schedule import EMSchedule, plan_for_step
from .hf_export import HFExport
from .rollout_logger import RolloutSampleLogger
from .baseline_telemetry import BaselineTelemetry

__all__ = ["BaselineTelemetry", "EMSchedule", "HFExport", "RolloutSampleLogger", "plan_for_step"]

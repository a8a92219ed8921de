"""Lightning callbacks of tempo-pl, installed as ``tempo_pl.callbacks``."""

from .checkpoint import RLStepCheckpoint
from .divergence_guard import DivergenceGuard, TrainingDiverged
from .em_schedule import EMSchedule, plan_for_step
from .hf_export import HFExport
from .progress_bar import TempoProgressBar
from .rollout_logger import RolloutSampleLogger
from .baseline_telemetry import BaselineTelemetry
from .signal_stop import RunInterrupted

__all__ = ["BaselineTelemetry", "DivergenceGuard", "EMSchedule", "HFExport", "RLStepCheckpoint", "RolloutSampleLogger",
           "RunInterrupted", "TempoProgressBar", "TrainingDiverged", "plan_for_step"]

"""Lightning callbacks of tempo-pl, installed as ``tempo_pl.callbacks``."""

from .em_schedule import EMSchedule, plan_for_step
from .rollout_logger import RolloutSampleLogger

__all__ = ["EMSchedule", "RolloutSampleLogger", "plan_for_step"]

"""TempoProgressBar: the rich progress bar with what the RL step (or the evaluation) is doing right now."""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any, Iterator, Optional

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import RichProgressBar
from rich.progress import ProgressColumn
from rich.text import Text

log = logging.getLogger(__name__)

STAGE_PREFIX = "tempo/"
"""The module times its stages as profiler actions ``tempo/<stage>`` (``tempo_pl.stages.metrics.timed``)."""


class TempoProgressBar(RichProgressBar):
    """Lightning's ``RichProgressBar`` with a live stage column and the step's throughput.

    One RL step is one batch, and a step can take minutes: beside the bar it shows the step's index and phase (E, M,
    EM, RL), the stage running (generation, scoring, update) and for how long, and during an evaluation the eval set
    and how long its batch has been generating. The metrics on the right add the tokens generated so far and the last
    step's generation speed. ``tempo-pl fit`` uses it whenever the progress bar is on and the config names none.

    The stages are the module's profiler actions ``tempo/<stage>`` (every stage of a ``TempoModule`` step is timed
    with :func:`tempo_pl.stages.metrics.timed`): the bar wraps ``trainer.profiler`` during ``fit`` and passes every
    call through to it. Each stage change is also logged at DEBUG level (logger ``tempo_pl.callbacks.progress_bar``).

    Args:
        refresh_rate: redraws per second (the elapsed times tick at this rate); 0 disables the bar.
        leave: keep the finished epoch's bar on screen.

    Example (YAML)::

        trainer:
          callbacks:
            - class_path: tempo_pl.callbacks.TempoProgressBar
              init_args: {refresh_rate: 2}
    """

    def __init__(self, refresh_rate: int = 1, leave: bool = False) -> None:
        if isinstance(refresh_rate, bool) or not isinstance(refresh_rate, int) or refresh_rate < 0:
            raise ValueError(f"TempoProgressBar: refresh_rate must be an integer >= 0, got {refresh_rate!r}")
        super().__init__(refresh_rate=refresh_rate, leave=leave)
        self.state = StageState()
        self._profiler = None

    def configure_columns(self, trainer: Trainer) -> list:
        return [*super().configure_columns(trainer), StageColumn(self)]

    # ------------------------------------------------------------------ the stages of an RL step
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        if not isinstance(trainer.profiler, StageProfiler):
            self._profiler = trainer.profiler
            trainer.profiler = StageProfiler(trainer.profiler, self.state)

    def _unwrap(self, trainer: Trainer) -> None:
        if self._profiler is not None and isinstance(trainer.profiler, StageProfiler):
            trainer.profiler = self._profiler
        self._profiler = None

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._unwrap(trainer)
        super().on_train_end(trainer, pl_module)

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self._unwrap(trainer)
        super().on_exception(trainer, pl_module, exception)

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        super().on_train_batch_start(trainer, pl_module, batch, batch_idx)
        rl_step = int(getattr(pl_module, "rl_step", batch_idx))
        # the schedule's plan of this step (the module's step_plan is set by it, maybe after this hook)
        schedule = next((cb for cb in trainer.callbacks if callable(getattr(cb, "plan", None))), None)
        self.state.step(rl_step, schedule.plan(rl_step).phase if schedule is not None else None)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        record = getattr(pl_module, "last_step", None)
        if record is not None:
            tokens = int(record.rollout.response_mask.sum()) if record.rollout.num_rows else 0
            seconds = float(record.metrics.get("train/time/generation_s", 0.0))
            self.state.step_done(tokens, seconds)
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def get_metrics(self, trainer: Trainer, pl_module: LightningModule) -> dict:
        metrics = super().get_metrics(trainer, pl_module)
        if self.state.tokens:
            metrics["tokens"] = f"{self.state.tokens:,}"
            metrics["gen tok/s"] = f"{self.state.tokens_per_s:,.0f}"
        return metrics

    # ------------------------------------------------------------------ evaluation
    def on_validation_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int,
                                  dataloader_idx: int = 0) -> None:
        super().on_validation_batch_start(trainer, pl_module, batch, batch_idx, dataloader_idx)
        names = list(getattr(getattr(trainer, "datamodule", None), "eval_set_names", []) or [])
        name = names[dataloader_idx] if dataloader_idx < len(names) else f"set{dataloader_idx}"
        self.state.evaluation(name, len(batch) if hasattr(batch, "__len__") else None)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.state.evaluation_done()
        super().on_validation_end(trainer, pl_module)


class StageState:
    """What the bar shows: the RL step, its phase and stage, the evaluation in progress, and the tokens generated."""

    def __init__(self) -> None:
        self.rl_step: Optional[int] = None
        self.phase: Optional[str] = None
        self.stage: Optional[str] = None
        self.stage_started = 0.0
        self.eval_set: Optional[str] = None
        self.eval_questions: Optional[int] = None
        self.eval_started = 0.0
        self.tokens = 0
        self.tokens_per_s = 0.0

    def step(self, rl_step: int, phase: Optional[str]) -> None:
        self.rl_step, self.phase, self.stage = rl_step, phase, None

    def stage_start(self, stage: str) -> None:
        if stage == "step":
            return
        self.stage, self.stage_started = stage, time.monotonic()
        log.debug("RL step %s (%s): %s", self.rl_step, self.phase, stage)

    def stage_stop(self, stage: str) -> None:
        if stage == self.stage:
            log.debug("RL step %s (%s): %s done in %.2f s", self.rl_step, self.phase, stage,
                      time.monotonic() - self.stage_started)
            self.stage = None

    def step_done(self, tokens: int, generation_s: float) -> None:
        self.tokens += tokens
        self.tokens_per_s = tokens / generation_s if generation_s > 0 else 0.0
        log.debug("RL step %s (%s) done: %d tokens generated", self.rl_step, self.phase, tokens)

    def evaluation(self, name: str, questions: Optional[int]) -> None:
        self.eval_set, self.eval_questions, self.eval_started = name, questions, time.monotonic()
        log.debug("evaluation: %s, %s questions", name, questions)

    def evaluation_done(self) -> None:
        self.eval_set = None

    def text(self) -> str:
        now = time.monotonic()
        if self.eval_set is not None:
            questions = f" ({self.eval_questions} questions)" if self.eval_questions else ""
            return f"evaluating {self.eval_set}{questions} {_clock(now - self.eval_started)}"
        if self.rl_step is None:
            return ""
        phase = f" {self.phase}" if self.phase else ""
        doing = f" · {self.stage} {_clock(now - self.stage_started)}" if self.stage else ""
        return f"RL step {self.rl_step}{phase}{doing}"


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}:{secs:02d}"


class StageColumn(ProgressColumn):
    """A rich progress column with the bar's stage text, recomputed at every redraw so that its clock ticks."""

    def __init__(self, bar: TempoProgressBar) -> None:
        super().__init__()
        self.bar = bar

    def render(self, task) -> Text:
        shown = task.id in (self.bar.train_progress_bar_id, self.bar.val_progress_bar_id)
        return Text(self.bar.state.text() if shown else "", style="cyan")


class StageProfiler:
    """Passes every profiler call through to the trainer's profiler and tells ``state`` when a ``tempo/`` stage
    starts and stops."""

    def __init__(self, inner, state: StageState) -> None:
        self._inner = inner
        self._state = state

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def start(self, action_name: str) -> None:
        if action_name.startswith(STAGE_PREFIX):
            self._state.stage_start(action_name[len(STAGE_PREFIX):])
        self._inner.start(action_name)

    def stop(self, action_name: str) -> None:
        self._inner.stop(action_name)
        if action_name.startswith(STAGE_PREFIX):
            self._state.stage_stop(action_name[len(STAGE_PREFIX):])

    @contextlib.contextmanager
    def profile(self, action_name: str) -> Iterator[None]:
        self.start(action_name)
        try:
            yield
        finally:
            self.stop(action_name)

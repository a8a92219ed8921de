"""Logging at the RL step: a finished step's metrics, and what a research subclass of
:class:`~tempo_pl.module.TempoModule` logs with ``self.log`` from inside a stage (or a callback from
``on_train_batch_end``), land on the same x-axis."""

from __future__ import annotations

import logging
from typing import Any, Optional

from lightning.pytorch import LightningModule
from typing_extensions import override
from torch import Tensor

from tempo_pl.types import PHASE_CODES, Rollout, StepPlan, StepRecord

log = logging.getLogger(__name__)


class RLStepLogging(LightningModule):
    """Routes ``self.log`` calls made during training to the loggers at the RL step.

    Lightning's own ``self.log`` inside ``training_step(dataloader_iter)`` needs a ``batch_size`` and would log at
    its own step counter, not at ``train/rl_step``. Here a call with ``logger`` left on sends the value straight to
    every logger at the RL step of the step in progress (or, from a callback's ``on_train_batch_end``, of the step
    just finished) and keeps it in ``trainer.callback_metrics`` (and the progress bar with ``prog_bar=True``).
    Values are rank zero's, as every scalar of the step. The documented way to add scalars is still
    :meth:`~tempo_pl.module.TempoModule.step_metrics` (they are logged with the step's own under ``train/``)::

        class MyModule(TempoModule):
            def score(self, rollout, stats):
                out = super().score(rollout, stats)
                self.log("my/mean_response_chars", sum(map(len, rollout.texts)) / rollout.num_rows)
                return out
    """

    @property
    def is_oracle(self) -> bool:
        """True when D_U answers reach the reward (the oracle RLVR upper bound, never test-time training)."""
        dm = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        return bool(getattr(dm, "expose_unlabeled_answers", False))

    @override
    def on_fit_start(self) -> None:
        if self.is_oracle:
            log.warning("ORACLE RUN: the unlabeled reward reads D_U ground truth; this is an upper bound, not TTT")

    def _rl_step_in_progress(self) -> int:
        record = getattr(self, "last_step", None)  # set when a step finishes, None while one runs
        return int(record.rl_step) if record is not None else int(getattr(self, "rl_step", 0))

    def log(self, name: str, value: Any, prog_bar: bool = False, logger: Any = None, **kwargs: Any) -> None:
        trainer = self._trainer
        if logger is False or trainer is None or not trainer.training or trainer.sanity_checking:
            return super().log(name, value, prog_bar=prog_bar, logger=logger, **kwargs)
        scalar = float(value.detach().float().mean()) if isinstance(value, Tensor) else float(value)
        if trainer.is_global_zero:
            for each in self.loggers:
                each.log_metrics({name: scalar}, step=self._rl_step_in_progress())
        kwargs["batch_size"] = kwargs.get("batch_size") or 1
        super().log(name, scalar, prog_bar=prog_bar, logger=False, **kwargs)

    def log_at_rl_step(
        self, metrics: dict[str, float], prog_bar: Optional[dict[str, float]] = None
    ) -> dict[str, float]:
        """Sends ``metrics`` straight to every logger at the RL step (``trainer.global_step`` counts both optimizers'
        steps) and to callbacks and the progress bar through ``self.log``; returns them."""
        if self.trainer.is_global_zero:
            for logger in self.loggers:
                logger.log_metrics(metrics, step=self.rl_step)
        self.log_dict(metrics, logger=False, batch_size=1)
        if prog_bar:
            self.log_dict(prog_bar, prog_bar=True, logger=False, batch_size=1)
        return metrics

    def finish_rl_step(self, plan: StepPlan, rollout: Rollout, scores: Tensor, metrics: dict[str, float]) -> None:
        """Logs a finished step's metrics under ``train/`` at its RL step, keeps its :class:`StepRecord` in
        ``last_step`` and counts it."""
        metrics = {f"train/{k}": float(v) for k, v in metrics.items()}
        metrics["train/phase"] = float(PHASE_CODES[plan.phase])
        metrics["train/rl_step"] = float(self.rl_step)
        if self.is_oracle:
            metrics["train/oracle_upper_bound"] = 1.0
        shown = {f"{name}_score": metrics[f"train/score/{name}_mean"] for name in ("labeled", "unlabeled")
                 if f"train/score/{name}_mean" in metrics}
        logged = self.log_at_rl_step(metrics, shown)
        self.last_step = StepRecord(self.rl_step, plan, rollout, scores, logged)
        # counted here, inside the step: callbacks' on_train_batch_end (checkpoints included) see the step as done
        self.rl_step += 1

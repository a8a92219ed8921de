"""DivergenceGuard: a run whose updates keep failing stops with the step and the quantity named."""

from __future__ import annotations

import math
from typing import Any, Optional

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_warn

UPDATES = ("policy", "critic")


class TrainingDiverged(RuntimeError):
    """Raised by :class:`DivergenceGuard`; ``rl_step`` is the step that ended the run."""

    def __init__(self, rl_step: int, message: str) -> None:
        self.rl_step = rl_step
        super().__init__(message)


def update_problems(metrics: dict[str, float], max_grad_norm: Optional[float]) -> list[str]:
    """What went wrong in one RL step's updates, read from its logged ``train/<policy|critic>/...`` metrics: a
    non-finite loss, optimizer steps skipped for a non-finite gradient, a gradient norm over ``max_grad_norm``."""
    problems = []
    for which in UPDATES:
        loss = metrics.get(f"train/{which}/loss")
        norm = metrics.get(f"train/{which}/grad_norm")
        skips = metrics.get(f"train/{which}/nonfinite_grad_skips", 0.0)
        if skips:
            problems.append(f"the {which}'s gradient norm was not finite ({norm}; {int(skips)} optimizer step(s) "
                            "skipped)")
        elif loss is not None and not math.isfinite(loss):
            problems.append(f"the {which}'s loss was not finite ({loss})")
        if max_grad_norm is not None and norm is not None and math.isfinite(norm) and norm > max_grad_norm:
            problems.append(f"the {which}'s gradient norm {norm:.4g} exceeded training.max_grad_norm_abort "
                            f"({max_grad_norm:g})")
    return problems


class DivergenceGuard(Callback):
    """Stops training once ``patience`` RL steps in a row had an update (policy or critic) whose loss or gradient
    was not finite, or whose gradient norm exceeded ``max_grad_norm``, with :class:`TrainingDiverged` naming the
    step and the quantity (``tempo-pl fit`` prints it as its last line and exits 1). Each such step is warned on the
    console as it happens. Optimizer steps with a non-finite gradient are skipped in any case
    (:func:`~tempo_pl.stages.minibatch.optimize`); the guard is what ends a run that only skips. ``TempoModule``
    installs it from ``training.nonfinite_patience`` and ``training.max_grad_norm_abort``.

    It reads the step's metrics from ``pl_module.last_step`` (a :class:`~tempo_pl.types.StepRecord`); on several
    ranks the verdict is agreed (a maximum over ranks), so that every rank stops at the same step.

    Args:
        patience: RL steps in a row with a failed update that stop the run (>= 1).
        max_grad_norm: a gradient norm (before clipping) above this also counts as a failed update; None: off.

    Example::

        Trainer(callbacks=[DivergenceGuard(patience=1, max_grad_norm=1e4)])
    """

    def __init__(self, patience: int = 3, max_grad_norm: Optional[float] = None) -> None:
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
            raise ValueError(f"DivergenceGuard: patience (training.nonfinite_patience) must be an integer >= 1, "
                             f"got {patience!r}")
        if max_grad_norm is not None and not max_grad_norm > 0:
            raise ValueError(f"DivergenceGuard: max_grad_norm (training.max_grad_norm_abort) must be > 0 or null, "
                             f"got {max_grad_norm!r}")
        self.patience = patience
        self.max_grad_norm = max_grad_norm
        self.failed_in_a_row = 0
        self._checked_step: Optional[int] = None

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        record = getattr(pl_module, "last_step", None)
        if record is None or record.rl_step == self._checked_step:
            return
        self._checked_step = record.rl_step
        problems = update_problems(record.metrics, self.max_grad_norm)
        failed = bool(problems)
        if trainer.world_size > 1:
            flag = torch.tensor(float(failed), device=pl_module.device)
            failed = bool(trainer.strategy.reduce(flag, reduce_op="max") > 0)
            problems = problems or ["an update on another rank failed"]
        if not failed:
            self.failed_in_a_row = 0
            return
        self.failed_in_a_row += 1
        said = "; ".join(problems)
        if self.failed_in_a_row >= self.patience:
            raise TrainingDiverged(record.rl_step, (
                f"training diverged at RL step {record.rl_step}: {said}, {self.failed_in_a_row} RL step(s) in a row "
                f"(training.nonfinite_patience: {self.patience}). Lower the learning rate or raise the gradient clip; "
                "the last checkpoint holds the step before"))
        rank_zero_warn(f"RL step {record.rl_step}: {said} ({self.failed_in_a_row} of "
                       f"training.nonfinite_patience: {self.patience} in a row)")

    def state_dict(self) -> dict[str, Any]:
        return {"failed_in_a_row": self.failed_in_a_row}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.failed_in_a_row = int(state_dict.get("failed_in_a_row", 0))

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


def update_problems(metrics: dict[str, float], max_grad_norm: Optional[float]) -> dict[str, Optional[str]]:
    """Each update that ran in one RL step (``policy``, ``critic``: the ones with logged ``train/<name>/...``
    metrics) and what went wrong in it (None: nothing): a non-finite loss, optimizer steps skipped for a non-finite
    gradient, a gradient norm over ``max_grad_norm``."""
    problems: dict[str, Optional[str]] = {}
    for which in UPDATES:
        loss = metrics.get(f"train/{which}/loss")
        norm = metrics.get(f"train/{which}/grad_norm")
        skips = metrics.get(f"train/{which}/nonfinite_grad_skips", 0.0)
        if loss is None and norm is None and not skips:
            continue
        problem = None
        if skips:
            problem = f"the {which}'s gradient norm was not finite ({norm}; {int(skips)} optimizer step(s) skipped)"
        elif loss is not None and not math.isfinite(loss):
            problem = f"the {which}'s loss was not finite ({loss})"
        elif max_grad_norm is not None and norm is not None and math.isfinite(norm) and norm > max_grad_norm:
            problem = f"the {which}'s gradient norm {norm:.4g} exceeded training.max_grad_norm_abort ({max_grad_norm:g})"
        problems[which] = problem
    return problems


class DivergenceGuard(Callback):
    """Stops training once ``patience`` updates in a row of one model (policy or critic; RL steps without its update
    are passed over) had a loss or gradient that was not finite, or a gradient norm over ``max_grad_norm``, with :class:`TrainingDiverged` naming the
    step and the quantity (``tempo-pl fit`` prints it as its last line and exits 1). Each such step is warned on the
    console as it happens. Optimizer steps with a non-finite gradient are skipped in any case
    (:func:`~tempo_pl.stages.minibatch.optimize`); the guard is what ends a run that only skips. ``TempoModule``
    installs it from ``training.nonfinite_patience`` and ``training.max_grad_norm_abort``.

    It reads the step's metrics from ``pl_module.last_step`` (a :class:`~tempo_pl.types.StepRecord`); on several
    ranks the verdict is agreed (a maximum over ranks), so that every rank stops at the same step.

    Args:
        patience: failed updates of one model in a row that stop the run (>= 1).
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
        self.failed_in_a_row: dict[str, int] = {}
        """Failed updates in a row, per model (``policy``, ``critic``)."""
        self._checked_step: Optional[int] = None

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        record = getattr(pl_module, "last_step", None)
        if record is None or record.rl_step == self._checked_step:
            return
        self._checked_step = record.rl_step
        problems = update_problems(record.metrics, self.max_grad_norm)
        if trainer.world_size > 1:  # every rank stops at the same step
            flags = torch.tensor([float(problems.get(which) is not None) for which in UPDATES], device=pl_module.device)
            agreed = trainer.strategy.reduce(flags, reduce_op="max")
            for which, flag in zip(UPDATES, agreed.tolist()):
                if flag > 0 and problems.get(which) is None:
                    problems[which] = f"the {which} update failed on another rank"
        # an RL step without an update of a model (an E-step for the policy) neither counts nor resets its streak
        for which, problem in problems.items():
            self.failed_in_a_row[which] = self.failed_in_a_row.get(which, 0) + 1 if problem else 0
        failed = {which: problem for which, problem in problems.items() if problem}
        if not failed:
            return
        worst = max(failed, key=lambda which: self.failed_in_a_row[which])
        count = self.failed_in_a_row[worst]
        said = "; ".join(failed.values())
        if count >= self.patience:
            raise TrainingDiverged(record.rl_step, (
                f"training diverged at RL step {record.rl_step}: {said}, in {count} {worst} update(s) in a row "
                f"(training.nonfinite_patience: {self.patience}). Lower the learning rate or raise the gradient clip; "
                "the last checkpoint holds the step before"))
        rank_zero_warn(f"RL step {record.rl_step}: {said} ({count} of training.nonfinite_patience: {self.patience} "
                       f"{worst} updates in a row)")

    def state_dict(self) -> dict[str, Any]:
        return {"failed_in_a_row": dict(self.failed_in_a_row)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.failed_in_a_row = {k: int(v) for k, v in dict(state_dict.get("failed_in_a_row", {})).items()}

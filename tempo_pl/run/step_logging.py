"""``self.log`` at the RL step: what a research subclass of :class:`~tempo_pl.module.TempoModule` logs from inside a
stage (or a callback from ``on_train_batch_end``) lands on the same x-axis as the module's own scalars."""

from __future__ import annotations

from typing import Any

from lightning.pytorch import LightningModule
from torch import Tensor


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

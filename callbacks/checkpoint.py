"""RLStepCheckpoint: checkpoints counted and named in RL steps, written on SIGTERM/SIGINT, resumed exactly."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from tempo_pl.run import checkpoint_io
from tempo_pl.run.run_folder import check_resumed_budget

from .signal_stop import RunInterrupted, StopRequest


class RLStepCheckpoint(ModelCheckpoint):
    """Saves a checkpoint every ``every_n_rl_steps`` RL steps, and on SIGTERM / SIGINT once the step in progress ends.

    Lightning's ``ModelCheckpoint(every_n_train_steps=...)`` counts ``trainer.global_step``, which counts every
    optimizer step of both optimizers (several per RL step); this callback counts the module's ``rl_step``, the
    counter of the logs and eval files. A checkpoint after ``c`` RL steps holds everything after step ``c - 1`` and
    its evaluation (it is written once that evaluation, when one is due, has run), and is named
    ``step{c:06d}.ckpt``, as the eval files of that point (``<set>_step{c:06d}.jsonl``). ``last.ckpt`` is what
    ``tempo-pl fit ... --ckpt_path last`` resumes (same command line; see :class:`tempo_pl.cli.TempoCLI`).

    On resume it rewinds the run's logs to the checkpoint: TensorBoard hides what the interrupted run logged at or
    after the resumed step (a ``SessionLog.START`` event, TensorBoard's own mechanism for restarts) and the evaluation
    logged at the resumed step is logged again, so that every RL step appears exactly once.

    Signals (``save_on_signal``): the first SIGTERM or SIGINT (Ctrl-C) lets the RL step in progress and its
    evaluation finish, then writes ``last.ckpt`` and stops the run with exit code 128 + signal number; a second
    Ctrl-C stops at once, without that step. A SIGKILL (or a crash) loses the steps since the last scheduled save.

    Args:
        every_n_rl_steps: save after every this many RL steps (and at the end of training).
        save_on_signal: write ``last.ckpt`` and stop on SIGTERM/SIGINT, as above (needs ``save_last``).
        dirpath: folder of the checkpoints; default ``<log_dir>/checkpoints``. Checked writable at setup.
        filename: name of the numbered checkpoints; ``{rl_step}`` is the number of RL steps done.
        save_last: keep ``last.ckpt``, always the latest save.
        save_top_k: numbered checkpoints kept: 0 none (``last.ckpt`` only), 1 the latest, -1 every one; with
            ``monitor``, the best k by that metric (compared at each evaluation).
        monitor: a logged metric (``val/<set>/mean@k``) that ranks the numbered checkpoints; None keeps the latest.
        mode: ``max`` or ``min`` for ``monitor``.
        save_weights_only: save the models only (such a checkpoint cannot resume a run).

    Example (YAML)::

        trainer:
          callbacks:
            - class_path: tempo_pl.callbacks.RLStepCheckpoint          # last.ckpt after every RL step
              init_args: {every_n_rl_steps: 1}
            - class_path: tempo_pl.callbacks.RLStepCheckpoint          # and step000032.ckpt, step000064.ckpt, ...
              init_args: {every_n_rl_steps: 32, save_top_k: -1, save_last: false, save_on_signal: false}
    """

    def __init__(
        self,
        every_n_rl_steps: int = 1,
        save_on_signal: bool = True,
        dirpath: Optional[str] = None,
        filename: str = "step{rl_step:06d}",
        save_last: bool = True,
        save_top_k: int = 0,
        monitor: Optional[str] = None,
        mode: str = "max",
        save_weights_only: bool = False,
    ) -> None:
        if isinstance(every_n_rl_steps, bool) or not isinstance(every_n_rl_steps, int) or every_n_rl_steps < 1:
            raise ValueError(f"RLStepCheckpoint: every_n_rl_steps must be an integer >= 1, got {every_n_rl_steps!r}")
        if save_on_signal and not save_last:
            raise ValueError("RLStepCheckpoint: save_on_signal writes last.ckpt; set save_last: true, or "
                             "save_on_signal: false")
        if save_top_k == 0 and not save_last:
            raise ValueError("RLStepCheckpoint: save_top_k: 0 with save_last: false saves nothing")
        if "{rl_step" not in filename:
            raise ValueError(f"RLStepCheckpoint: filename must hold {{rl_step}} (e.g. 'step{{rl_step:06d}}'), "
                             f"got {filename!r}")
        super().__init__(
            dirpath=dirpath, filename=filename, monitor=monitor, mode=mode, save_last=save_last,
            save_top_k=save_top_k, save_weights_only=save_weights_only, auto_insert_metric_name=False,
            every_n_train_steps=0, every_n_epochs=0, save_on_train_epoch_end=False, enable_version_counter=False,
        )
        self.every_n_rl_steps = every_n_rl_steps
        self.save_on_signal = save_on_signal
        self._due = False
        self._stopping = False
        self._last_rl_step_saved: Optional[int] = None
        self.last_eval: Optional[dict[str, Any]] = None
        """The evaluation logged at the latest saved point: ``{"rl_step": int, "metrics": {name: value}}``."""
        self._stop: Optional[StopRequest] = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(every_n_rl_steps=self.every_n_rl_steps, monitor=self.monitor,
                                        save_last=self.save_last, save_top_k=self.save_top_k)

    # ------------------------------------------------------------------ setup and the signal watch
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        checkpoint_io.install(trainer.strategy)  # atomic saves, weights-only loads
        if stage != "fit":
            return
        if not isinstance(getattr(pl_module, "rl_step", None), int):
            raise TypeError(f"RLStepCheckpoint needs a module with an int rl_step (a TempoModule), got "
                            f"{type(pl_module).__name__}")
        check_writable(Path(self.dirpath), "RLStepCheckpoint: the checkpoint folder", "dirpath",
                       rank=trainer.global_rank)

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.save_on_signal:
            self._stop = StopRequest.watch(self)
        if trainer.ckpt_path is None:  # a fresh start: the logs restart at step 0, before the sanity evaluation
            rewind_logs(trainer, 0, None)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.ckpt_path is not None:  # resumed: everything is restored by now
            check_resumed_budget(trainer, pl_module.rl_step)
            rewind_logs(trainer, pl_module.rl_step, self.last_eval)
        self._last_rl_step_saved = pl_module.rl_step if trainer.ckpt_path is not None else None

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._release()

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self._release()  # a step cut short is not saved: the last checkpoint stays what resumes

    def _release(self) -> None:
        if self._stop is not None:
            self._stop.release(self)
            self._stop = None

    # ------------------------------------------------------------------ when to save
    # Saves happen where Lightning's own loop counters are consistent for a restart: at the end of a training batch,
    # or, when an evaluation follows the batch, at the end of that evaluation (a restart from a batch-end save would
    # skip the evaluation).
    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._stopping = self._stop is not None and self._stop.agreed(trainer)
        self._due = pl_module.rl_step % self.every_n_rl_steps == 0 or self._stopping
        if self._due and not _evaluation_follows(trainer):
            self._save_and_maybe_stop(trainer, pl_module)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.state.fn != "fit":
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        if metrics:
            self.last_eval = {"rl_step": int(pl_module.rl_step), "metrics": metrics}
        if self._due and not trainer.sanity_checking:
            self._save_and_maybe_stop(trainer, pl_module)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._last_rl_step_saved != pl_module.rl_step:
            self._save(trainer, pl_module)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        pass  # saves follow RL steps, not epochs

    def _save_and_maybe_stop(self, trainer: Trainer, pl_module: LightningModule) -> None:
        on_schedule = pl_module.rl_step % self.every_n_rl_steps == 0
        self._save(trainer, pl_module, last_only=not on_schedule)
        if self._stopping and self._stop.is_last_watcher(self):
            raise RunInterrupted(self._stop.signum, pl_module.rl_step, self.last_model_path or self.best_model_path)

    # ------------------------------------------------------------------ saving
    def _monitor_candidates(self, trainer: Trainer) -> dict[str, torch.Tensor]:
        candidates = super()._monitor_candidates(trainer)
        candidates["rl_step"] = torch.tensor(int(trainer.lightning_module.rl_step))
        return candidates

    def _should_skip_saving_checkpoint(self, trainer: Trainer) -> bool:
        return (bool(trainer.fast_dev_run) or trainer.state.fn != "fit" or trainer.sanity_checking
                or self._last_rl_step_saved == trainer.lightning_module.rl_step)

    def _save(self, trainer: Trainer, pl_module: LightningModule, last_only: bool = False) -> None:
        self._due = False
        if self._should_skip_saving_checkpoint(trainer):
            return
        candidates = self._monitor_candidates(trainer)
        if not last_only and (self.monitor is None or self.monitor in candidates):
            self._save_topk_checkpoint(trainer, candidates)
        self._save_last_checkpoint(trainer, candidates)
        self._last_rl_step_saved = pl_module.rl_step

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "last_eval": self.last_eval}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.last_eval = state_dict.get("last_eval")


def _evaluation_follows(trainer: Trainer) -> bool:
    """Whether Lightning runs validation right after the current training batch (its own check, asked early)."""
    loop = trainer.fit_loop
    try:
        return bool(loop.epoch_loop._should_check_val_fx(loop._data_fetcher))
    except AttributeError:  # another Lightning version: save at the batch end
        return False


def check_writable(folder: Path, what: str, key: str, rank: int = 0) -> None:
    """Creates ``folder`` and writes a probe file into it, or raises ``PermissionError`` naming the folder and the
    option that sets it: found at setup, before any RL step runs."""
    probe = folder / f".tempo-pl-write-check.rank{rank}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise PermissionError(f"{what} {str(folder)!r} is not writable ({err.strerror or err}); fix its "
                              f"permissions or set {key} to another folder") from err


def rewind_logs(trainer: Trainer, rl_step: int, last_eval: Optional[dict[str, Any]]) -> None:
    """Hides in TensorBoard what an interrupted run logged at or after ``rl_step`` (a ``SessionLog.START`` event at
    that step), then logs again the evaluation saved with the checkpoint when it was logged at ``rl_step``. Runs
    once per fit, on rank zero."""
    if getattr(trainer, "_tempo_logs_rewound", False) or not trainer.is_global_zero:
        return
    trainer._tempo_logs_rewound = True
    from lightning.pytorch.loggers import TensorBoardLogger

    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            _tensorboard_restart(logger, rl_step)
    if last_eval and int(last_eval["rl_step"]) == rl_step and rl_step > 0:
        for logger in trainer.loggers:
            logger.log_metrics(dict(last_eval["metrics"]), step=rl_step)
        rank_zero_info(f"Resumed at RL step {rl_step}: its evaluation was logged again from the checkpoint")


def _tensorboard_restart(logger, step: int) -> None:
    from tensorboard.compat.proto.event_pb2 import Event, SessionLog

    try:
        logger.experiment._get_file_writer().add_event(Event(step=step, session_log=SessionLog(status=SessionLog.START)))
    except Exception as err:  # noqa: BLE001 - a writer without this API keeps its duplicates; training goes on
        rank_zero_warn(f"could not mark the restart at RL step {step} in TensorBoard ({err}); the interrupted run's "
                       "later points stay visible")

"""``tempo-pl``: the LightningCLI of the package, and the pipelines beside it (``tempo-pl --help`` lists all).

``tempo-pl fit|validate --config CONFIG.yaml`` runs LightningCLI in subclass mode: model, data and callbacks are
``class_path`` entries, so a research subclass of :class:`~tempo_pl.module.TempoModule` is used by naming it.

Runs (:mod:`tempo_pl.run.run_folder`): ``--ckpt_path last`` resumes the newest run of the logger's ``save_dir/name``
(into the same version folder) with the same command line that started it; a folder that already holds a run, or
that a live run writes into, is refused. A run stopped by SIGTERM/SIGINT/SIGUSR1 (see
:class:`~tempo_pl.callbacks.RLStepCheckpoint`) exits with 128 + the signal number after saving, on every rank. A
SLURM job that was requeued (``SLURM_RESTART_COUNT`` > 0) resumes its run as if given ``--ckpt_path last``.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from typing import Optional

import jsonargparse
from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningCLI

from tempo_pl.callbacks import RunInterrupted, TrainingDiverged
from tempo_pl.data.readers import DataError
from tempo_pl.run import checkpoint_io
from tempo_pl.run.run_folder import (RunAlreadyFinished, claim, first_missing_folder, first_versioned_logger,
                                     latest_version, pin_version_for_resume, process_rank, removed_on_early_failure)

# field docstrings of the typed configs become the --help text
jsonargparse.set_parsing_settings(docstring_parse_attribute_docstrings=True)


PIPELINES = {
    "export": ("tempo_pl.run.export", "Write a checkpoint (.ckpt or sharded FSDP2 folder) as Hugging Face policy/ and critic/"),
    "demo": ("tempo_pl.pipelines.demo", "The offline demo: warm start, zero-RL, TEMPO and baselines, report (CPU)"),
    "compare": ("tempo_pl.pipelines.compare", "Run methods from one start, seed and budget; table and plot"),
    "plot": ("tempo_pl.pipelines.plot", "Plot accuracy, pass@k and diversity against the RL step for existing runs"),
    "samples": ("tempo_pl.pipelines.sample_kinds", "Count a synthetic-task run's samples by kind, with its critic's mean values"),
    "critic-probe": ("tempo_pl.pipelines.critic_probe", "Value written-out right and wrong synthetic-task answers with a critic and a policy"),
    "serve": ("tempo_pl.engines.serve", "Start a vLLM server for VLLMServerEngine from a run's config (weights pushed later)"),
}
"""Subcommands beside LightningCLI's: module (with a ``main(argv)``) and the one-line description ``--help`` shows."""


class ConfigError(ValueError):
    """A config value that the classes it builds refuse: the message is their own reason, without the parser's
    layers around it."""


def root_reason(err: BaseException) -> str:
    """The message of the exception at the bottom of ``err``'s chain (the one a class raised about its value)."""
    while (err.__cause__ or err.__context__) is not None:
        err = err.__cause__ or err.__context__
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


ONE_LINE_ERRORS = (ConfigError, DataError, checkpoint_io.CheckpointError, RunAlreadyFinished, TrainingDiverged)
"""Errors ``tempo-pl`` ends with as one line (``[tempo-pl] error: ...``) instead of a traceback."""

LIGHTNING_SUBCOMMANDS = {
    "fit": "Train: RL steps (E/M schedule), evaluation every val_check_interval RL steps, checkpoints",
    "validate": "Evaluate a model or checkpoint on the eval sets and print the metrics",
}


class TempoCLI(LightningCLI):
    """LightningCLI with the package's defaults: configs saved beside the logs, TensorBoard logging."""

    def __init__(self, args: Optional[list[str]] = None, run: bool = True) -> None:
        super().__init__(
            LightningModule,
            LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_kwargs={"overwrite": True},
            parser_kwargs={"parser_mode": "yaml", "prog": "tempo-pl"},
            # an RL step is expensive and is one training batch: log every one
            trainer_defaults={"log_every_n_steps": 1, "logger": {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                                         "init_args": {"save_dir": "runs", "name": "tempo",
                                                       "default_hp_metric": False}}},
            args=args,
            run=run,
            auto_configure_optimizers=False,
        )

    def _parse_ckpt_path(self) -> None:
        # LightningCLI reads the hyper-parameters of --ckpt_path while parsing: the file is checked whole first and
        # read weights-only, a refusal naming it
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if not ckpt_path or not Path(ckpt_path).is_file():
            return super()._parse_ckpt_path()
        checkpoint_io.check_intact(ckpt_path)
        with checkpoint_io.safe_loading(ckpt_path):
            super()._parse_ckpt_path()

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except (ValueError, TypeError) as err:
            raise ConfigError(root_reason(err)) from err

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        return {"fit": {"model", "train_dataloaders", "val_dataloaders", "datamodule"},
                "validate": {"model", "dataloaders", "datamodule"}}

    def before_instantiate_classes(self) -> None:
        config = self.config.get(self.subcommand) if self.subcommand else self.config
        add_progress_bar(config.trainer)
        if self.subcommand == "fit" and config.get("ckpt_path") is None and resume_requeued_job(config):
            config.ckpt_path = "last"
        if self.subcommand == "fit" and config.get("ckpt_path") == "last":
            pinned = pin_version_for_resume(config.trainer.logger, config.trainer.get("default_root_dir"))
            if pinned is not None and process_rank() == 0:
                print(f"[tempo-pl] --ckpt_path last: resuming the run in {pinned}", file=sys.stderr)

    def _claim_run_folder(self) -> None:
        self._new_run_folder = None
        logger = self.trainer.logger
        if logger is None or process_rank() != 0 or getattr(logger, "log_dir", None) is None:
            return
        ckpt_path = self.config.get(self.subcommand).get("ckpt_path")
        self._new_run_folder = first_missing_folder(Path(logger.log_dir))
        claim(Path(logger.log_dir), resuming=self.subcommand == "fit" and ckpt_path is not None,
              command=self.subcommand)

    def _run_removing_folder_on_early_failure(self, run, **kwargs) -> None:
        """``run(**kwargs)``; the run folder this command created is deleted if it fails before its first RL step."""
        log_dir = Path(getattr(self.trainer.logger, "log_dir", None) or ".")
        with removed_on_early_failure(getattr(self, "_new_run_folder", None), log_dir, self._before_first_step):
            run(**kwargs)

    def _before_first_step(self) -> bool:
        return self.subcommand == "validate" or getattr(self.model, "rl_step", 0) == 0

    def fit(self, **kwargs) -> None:
        self._run_removing_folder_on_early_failure(self.trainer.fit, **kwargs)

    def validate(self, **kwargs) -> None:
        self._run_removing_folder_on_early_failure(self.trainer.validate, **kwargs)
    def _safe_checkpoints(self) -> None:
        """Atomic saves and weights-only loads (:mod:`tempo_pl.run.checkpoint_io`); ``--ckpt_path last`` falls back to
        the newest intact checkpoint when ``last.ckpt`` is damaged or missing, saying so."""
        checkpoint_io.install(self.trainer.strategy)
        config = self.config_init[self.subcommand]
        if config.get("weights_only", False) is None:
            config["weights_only"] = True
        if self.subcommand != "fit" or config.get("ckpt_path") != "last":
            return
        logger = self.trainer.logger
        run_dir = Path(logger.log_dir) if logger is not None and getattr(logger, "log_dir", None) else None
        config["ckpt_path"], note = checkpoint_io.resolve_last(checkpoint_io.checkpoint_folders(self.trainer), run_dir)
        if note is not None and process_rank() == 0:
            print(f"[tempo-pl] {note}", file=sys.stderr)

    def before_fit(self) -> None:
        self._safe_checkpoints()
        self._claim_run_folder()

    def before_validate(self) -> None:
        self._safe_checkpoints()
        self._claim_run_folder()

    def after_validate(self) -> None:
        if process_rank() == 0:
            print_metrics_table(self.trainer.callback_metrics, prefix="val/")


def resume_requeued_job(config) -> bool:
    """Whether a ``fit`` without ``--ckpt_path`` is a requeued SLURM job (``SLURM_RESTART_COUNT`` > 0) whose run
    already holds ``checkpoints/last.ckpt``: then it resumes that run, as ``--ckpt_path last`` would."""
    restarts = os.environ.get("SLURM_RESTART_COUNT", "0")
    if not os.environ.get("SLURM_JOB_ID") or not restarts.isdigit() or int(restarts) == 0:
        return False
    logger = first_versioned_logger(config.trainer.logger)
    init_args = getattr(logger, "init_args", None) or {}
    get = init_args.get if hasattr(init_args, "get") else lambda key: getattr(init_args, key, None)
    root = Path(get("save_dir") or config.trainer.get("default_root_dir") or os.getcwd()) / str(
        get("name") or "lightning_logs")
    version = get("version")
    version = version if version is not None else latest_version(root)
    if version is None:
        return False
    folder = root / (version if isinstance(version, str) else f"version_{version}")
    if not (folder / "checkpoints" / "last.ckpt").is_file():
        return False
    if process_rank() == 0:
        print(f"[tempo-pl] requeued SLURM job (restart {restarts}): resuming from {folder / 'checkpoints'}",
              file=sys.stderr)
    return True


def add_progress_bar(trainer_config) -> None:
    """Adds :class:`~tempo_pl.callbacks.TempoProgressBar` (the RL step's stage, phase and tokens beside the bar) when
    the progress bar is on and the config names no progress bar of its own."""
    if trainer_config.get("enable_progress_bar") is False:
        return
    from lightning.pytorch.callbacks import ProgressBar

    callbacks = trainer_config.get("callbacks") or []
    for entry in callbacks:
        class_path = entry.get("class_path") if hasattr(entry, "get") else None
        if isinstance(entry, ProgressBar) or (class_path and issubclass(_import(class_path), ProgressBar)):
            return
    trainer_config.callbacks = [*callbacks, jsonargparse.Namespace(
        class_path="tempo_pl.callbacks.TempoProgressBar", init_args=jsonargparse.Namespace(refresh_rate=1, leave=False))]


def _import(class_path: str):
    module, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return object


def print_metrics_table(metrics, prefix: str = "val/") -> None:
    """The ``<prefix><set>/<metric>`` values as one table: a row per metric, a column per eval set."""
    from rich.console import Console
    from rich.table import Table

    by_set: dict[str, dict[str, float]] = {}
    for key, value in sorted(metrics.items()):
        if key.startswith(prefix) and "/" in key[len(prefix):]:
            name, metric = key[len(prefix):].split("/", 1)
            by_set.setdefault(name, {})[metric] = float(value)
    if not by_set:
        print("[tempo-pl] no evaluation metrics were logged (is data.init_args.eval_sets empty?)", file=sys.stderr)
        return
    table = Table(title="evaluation")
    table.add_column("metric", style="bold")
    for name in by_set:
        table.add_column(name, justify="right")
    for metric in dict.fromkeys(m for values in by_set.values() for m in values):
        table.add_row(metric, *(f"{values[metric]:.4f}" if metric in values else "" for values in by_set.values()))
    Console().print(table)


def print_overview() -> None:
    """``tempo-pl --help``: every subcommand with its one-line description."""
    width = max(map(len, [*LIGHTNING_SUBCOMMANDS, *PIPELINES]))
    lines = [f"usage: tempo-pl {{{','.join([*LIGHTNING_SUBCOMMANDS, *PIPELINES])}}} ...", "",
             "TEMPO test-time training of reasoning models on PyTorch Lightning.", "",
             "subcommands (tempo-pl SUBCOMMAND --help shows its options):"]
    lines += [f"  {name:<{width}}  {text}" for name, text in LIGHTNING_SUBCOMMANDS.items()]
    lines += [f"  {name:<{width}}  {text}" for name, (_, text) in PIPELINES.items()]
    lines += ["", "fit and validate read a YAML config: tempo-pl fit --config configs/tiny.yaml (--print_config shows "
              "every option)."]
    print("\n".join(lines))


def main(argv: Optional[list[str]] = None) -> None:
    from_command_line = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print_overview()
        return
    # pipelines of several runs, beside LightningCLI's own subcommands
    try:
        if argv[0] in PIPELINES:
            module = importlib.import_module(PIPELINES[argv[0]][0])
            module.main(argv[1:])
            return
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        TempoCLI(args=None if from_command_line else argv)
    except RunInterrupted as stop:
        if process_rank() == 0:  # one line per run, whatever the number of processes
            print(f"[tempo-pl] {stop}", file=sys.stderr)
        raise SystemExit(128 + stop.signum) from None
    except ONE_LINE_ERRORS as err:
        print(f"[tempo-pl] error: {err}", file=sys.stderr)
        raise SystemExit(2 if isinstance(err, ConfigError) else 1) from None


if __name__ == "__main__":  # pragma: no cover
    main()

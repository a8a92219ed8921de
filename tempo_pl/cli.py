"""``tempo-pl``: the LightningCLI of the package.

``tempo-pl fit|validate --config CONFIG.yaml`` runs LightningCLI in subclass mode: model, data and callbacks are
``class_path`` entries, so a research subclass of :class:`~tempo_pl.module.TempoModule` is used by naming it.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Optional

import jsonargparse
from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningCLI

# field docstrings of the typed configs become the --help text
jsonargparse.set_parsing_settings(docstring_parse_attribute_docstrings=True)


PIPELINES = {
    "compare": "tempo_pl.pipelines.compare",  # same start, seed and budget for several methods, then a table and a plot
    "demo": "tempo_pl.pipelines.demo",  # the offline demo: warm start, zero-RL, TEMPO and baselines, summary
    "export": "tempo_pl.export",  # a checkpoint (.ckpt or sharded FSDP2 folder) as Hugging Face policy/critic folders
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
            parser_kwargs={"parser_mode": "yaml"},
            # an RL step is expensive and is one training batch: log every one
            trainer_defaults={"log_every_n_steps": 1, "logger": {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                                         "init_args": {"save_dir": "runs", "name": "tempo",
                                                       "default_hp_metric": False}}},
            args=args,
            run=run,
            auto_configure_optimizers=False,
        )

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        return {"fit": {"model", "train_dataloaders", "val_dataloaders", "datamodule"},
                "validate": {"model", "dataloaders", "datamodule"}}


def main(argv: Optional[list[str]] = None) -> None:
    from_command_line = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    # pipelines of several runs, beside LightningCLI's own subcommands
    if argv and argv[0] in PIPELINES:
        module = importlib.import_module(PIPELINES[argv[0]])
        module.main(argv[1:])
        return
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    TempoCLI(args=None if from_command_line else argv)


if __name__ == "__main__":  # pragma: no cover
    main()

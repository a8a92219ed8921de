"""HFExport: write the trained policy and critic as Hugging Face folders the next stage loads by path."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.strategies import ModelParallelStrategy

from tempo_pl.run.export import CRITIC, POLICY, save_hf_folders


class HFExport(Callback):
    """Saves ``<dirpath>/policy`` (weights + tokenizer) and ``<dirpath>/critic`` at the end of ``fit``.

    This is how the zero-RL stage (stage 1) hands its result to TEMPO and every baseline: the folders load with
    ``ModelSpec(name_or_path="<dirpath>/policy")`` and ``CriticSpec(name_or_path="<dirpath>/critic")``. LoRA adapters
    are merged into copies first, so the folders are plain checkpoints in the layout :func:`tempo_pl.run.export.export_hf`
    writes from a Lightning checkpoint (the critic in the token-classification format, the tokenizer in each folder);
    a critic-free run writes ``policy`` only. ``<dirpath>/export.json`` records the RL steps done and the folders
    written. Rank zero writes; the other ranks wait at a barrier, so every rank can read the folders after ``fit``.

    Args:
        dirpath: the folder to write into; ``None`` = ``<trainer.log_dir>/hf``.
        save_critic: also write the critic (when the run has one).

    Example (YAML, stage 1, then stage 2 loads the result)::

        trainer:
          callbacks:
            - class_path: tempo_pl.callbacks.HFExport
              init_args: {dirpath: ckpt/stage1}
        # stage 2:  --model.init_args.policy.name_or_path ckpt/stage1/policy
        #           --model.init_args.critic.name_or_path ckpt/stage1/critic
    """

    def __init__(self, dirpath: Optional[str] = None, save_critic: bool = True) -> None:
        if dirpath is not None and not str(dirpath).strip():
            raise ValueError("HFExport.dirpath must be a folder path or None, got an empty string")
        self.dirpath = dirpath
        self.save_critic = save_critic
        self.written: dict[str, str] = {}
        """Folder of each exported model (``policy``, ``critic``) after ``fit``."""

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        # sharded parameters would need a collective full-state-dict gather, which this callback does not do
        if stage == "fit" and isinstance(trainer.strategy, ModelParallelStrategy):
            raise ValueError(
                "HFExport saves unsharded models only; with ModelParallelStrategy (FSDP2) save a distributed "
                "checkpoint and export it in one process: tempo-pl export <checkpoint folder> <out dir>"
            )

    def _root(self, trainer: Trainer) -> Path:
        if self.dirpath is not None:
            return Path(self.dirpath)
        return Path(trainer.log_dir or trainer.default_root_dir) / "hf"

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        root = self._root(trainer)
        models = {POLICY: pl_module.policy}
        critic = getattr(pl_module, "critic", None)
        if self.save_critic and critic is not None:
            models[CRITIC] = critic
        written = {name: str(root / name) for name in models}
        if trainer.is_global_zero:
            root.mkdir(parents=True, exist_ok=True)
            # merged into copies: the live models keep their adapters
            save_hf_folders(models, root, getattr(pl_module, "tokenizer", None))
            info = {"rl_steps": int(getattr(pl_module, "rl_step", 0)), **written}
            (root / "export.json").write_text(json.dumps(info, indent=2) + "\n")
        trainer.strategy.barrier("hf_export")
        self.written = written

"""FSDP2 for TEMPO: shard the policy and the critic per decoder layer under Lightning's ``ModelParallelStrategy``.

Lightning's ``FSDPStrategy`` (FSDP1) refuses manual optimization and DeepSpeed allows one optimizer, so large models
run on :class:`FSDP2Strategy`: a ``ModelParallelStrategy`` (data parallel only) that carries an
:class:`~tempo_pl.models.fsdp2.FSDP2Recipe`. ``TempoModule.configure_model`` builds the models, then calls
:func:`~tempo_pl.models.fsdp2.shard_module`, which reads the recipe from the trainer's strategy and applies
``fully_shard`` to every decoder layer and to each model's root, with activation checkpointing, mixed precision and
optional CPU offload. Both optimizers are created after sharding, so they hold the sharded (DTensor) parameters and
their state is sharded too; checkpoints are DCP folders (sharded) or single files
(``save_distributed_checkpoint=False``), and :mod:`tempo_pl.run.export` turns either into Hugging Face folders. Generation with transformers runs under
:func:`~tempo_pl.models.fsdp2.gathered_for_generation` (one all-gather per ``generate`` call, not per token).

Example (YAML)::

    trainer:
      accelerator: gpu
      devices: 8
      precision: 32-true            # FSDP2 mixed precision casts at module level; no autocast on top
      strategy:
        class_path: tempo_pl.strategies.FSDP2Strategy
        init_args:
          recipe: {param_dtype: bfloat16, activation_checkpointing: true, cpu_offload: true}
"""

from __future__ import annotations

import contextlib
from datetime import timedelta
from typing import Any, Iterator, Literal, Optional, Union

import torch
from lightning.fabric.plugins.collectives.torch_collective import default_pg_timeout
from lightning.pytorch.strategies import ModelParallelStrategy

from tempo_pl.models.fsdp2 import FSDP2Recipe, move_unsharded_states


class FSDP2Strategy(ModelParallelStrategy):
    """``ModelParallelStrategy`` with data parallelism only (FSDP2) and the :class:`FSDP2Recipe` of TEMPO's models.

    Args:
        recipe: how the policy and the critic are sharded (mixed precision, checkpointing, offload, rank-0 init).
        data_parallel_size: ranks that shard the models; ``"auto"`` = every rank of the run.
        save_distributed_checkpoint: True writes a DCP folder with one shard per rank (fast, resumable on the same
            or another world size); False gathers a single full file on rank 0.
        process_group_backend: ``"nccl"``/``"gloo"``; None picks the device's default.
        timeout: collective timeout.

    Example::

        trainer = Trainer(accelerator="cpu", devices=2, strategy=FSDP2Strategy(FSDP2Recipe(param_dtype=None)))
    """

    def __init__(
        self,
        recipe: Optional[FSDP2Recipe] = None,
        data_parallel_size: Union[Literal["auto"], int] = "auto",
        save_distributed_checkpoint: bool = True,
        process_group_backend: Optional[str] = None,
        timeout: Optional[timedelta] = default_pg_timeout,
    ) -> None:
        if data_parallel_size != "auto" and (not isinstance(data_parallel_size, int) or data_parallel_size < 1):
            raise ValueError(f"FSDP2Strategy.data_parallel_size must be 'auto' or a positive int, got {data_parallel_size!r}")
        super().__init__(
            data_parallel_size=data_parallel_size,
            tensor_parallel_size=1,
            save_distributed_checkpoint=save_distributed_checkpoint,
            process_group_backend=process_group_backend,
            timeout=timeout,
        )
        self.recipe = recipe if recipe is not None else FSDP2Recipe()

    def setup_environment(self) -> None:
        # ModelParallelStrategy's "auto" means one data-parallel group per node; here every rank shards
        if self._data_parallel_size == "auto":
            self._data_parallel_size = self.num_nodes * self.num_processes
        super().setup_environment()

    @contextlib.contextmanager
    def tensor_init_context(self, empty_init: Optional[bool] = None) -> Iterator[None]:
        meta = empty_init or (self.recipe.rank0_init and self.global_rank != 0)
        with super().tensor_init_context(empty_init=meta):
            yield

    def model_to_device(self) -> None:
        if not self.recipe.cpu_offload:
            super().model_to_device()
            return
        # FSDP2 keeps offloaded shards on the CPU and refuses them elsewhere: move only what it does not manage
        move_unsharded_states(self.model, self.root_device)

    # An optimizer that has not stepped yet (the policy's during the critic's warm-up or an E-step) has no state, and
    # torch's get_optimizer_state_dict makes one with a zero-lr step(): Adam's step count would become 1 and its
    # first real update would differ from a run that did not save. The made-up state is dropped after the save and
    # after a load of such a checkpoint, so saving changes nothing.
    def optimizer_state(self, optimizer) -> dict[str, Any]:
        inner = _unwrapped(optimizer)
        fresh = not inner.state
        state = super().optimizer_state(optimizer)
        if fresh:
            inner.state.clear()
        return state

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath, storage_options: Optional[Any] = None) -> None:
        # dump_checkpoint collected every optimizer's state already: the ones still without state were fresh
        checkpoint[FRESH_OPTIMIZERS_KEY] = [i for i, opt in enumerate(self.optimizers) if not _unwrapped(opt).state]
        super().save_checkpoint(checkpoint, filepath, storage_options=storage_options)

    def load_checkpoint(self, checkpoint_path, weights_only: Optional[bool] = None) -> dict[str, Any]:
        checkpoint = super().load_checkpoint(checkpoint_path, weights_only=weights_only)
        for index in checkpoint.get(FRESH_OPTIMIZERS_KEY, []):
            _unwrapped(self.optimizers[index]).state.clear()
        return checkpoint


FRESH_OPTIMIZERS_KEY = "tempo_fresh_optimizers"
"""Checkpoint key: the indices of the optimizers that had not stepped when it was saved (their saved state is the
zero-lr one torch makes up, not theirs)."""


def _unwrapped(optimizer) -> torch.optim.Optimizer:
    return getattr(optimizer, "_optimizer", optimizer)  # a LightningOptimizer wraps the torch one

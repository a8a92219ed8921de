"""How the ranks of a run agree within one RL step: sums of counts, exchanged objects, summed tensors. The stages
take a :class:`Ranks`; one process gets identities, so every stage is tested without torch.distributed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
from torch import Tensor


@dataclass
class Ranks:
    """One process by default."""

    world: int = 1
    rank: int = 0
    sum: Callable[[list[float]], list[float]] = lambda values: values
    """Sums a list of numbers over ranks (every rank gets the sums)."""
    gather: Callable[[Any], list] = lambda obj: [obj]
    """Every rank's object, in rank order (picklable; tensors on the CPU)."""
    all_reduce: Optional[Callable[[Tensor], Tensor]] = None
    """Sums a tensor over ranks (None on one process), for batch-wide statistics such as whitening."""

    @staticmethod
    def of(trainer) -> "Ranks":
        """The ranks of a Lightning trainer's strategy (identities when it runs one process)."""
        if trainer is None or trainer.world_size == 1:
            return Ranks()
        strategy = trainer.strategy

        def all_reduce(tensor: Tensor) -> Tensor:
            return strategy.reduce(tensor.to(strategy.root_device), reduce_op="sum")

        def gather(obj: Any) -> list:
            gathered: list = [None] * trainer.world_size
            torch.distributed.all_gather_object(gathered, obj)
            return gathered

        return Ranks(world=trainer.world_size, rank=trainer.global_rank, gather=gather, all_reduce=all_reduce,
                     sum=lambda values: all_reduce(torch.tensor(values, dtype=torch.float64)).tolist())

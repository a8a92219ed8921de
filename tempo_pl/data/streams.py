"""Infinite, resumable, rank-aware prompt streams: the training "dataloader" of the EM loop.

An RL step asks for prompts one batch at a time (again when group filtering needs another generation batch), from
D_L for an E-step, from D_U for an M-step, or from both for the reference code's mixed step. :class:`EMStreams`
serves those requests from two :class:`PromptStream` objects; only the stream that is drawn from advances, so an
alternating schedule does not waste the idle set's epoch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from tempo_pl.types import PromptBatch

STREAM_SOURCES = ("labeled", "unlabeled", "mixed")


@dataclass(frozen=True)
class PromptRow:
    """One prompt ready for the loop: the templated user message and, for labeled rows, the answer; the row's own
    system message, whether it came as a conversation, and the columns a reward function may read."""

    id: str
    prompt: str
    answer: Optional[str]
    is_labeled: bool
    system_prompt: Optional[str] = None
    conversational: bool = False
    columns: dict = field(default_factory=dict, compare=False, repr=False)


def rows_to_batch(rows: Sequence[PromptRow]) -> PromptBatch:
    """Collate rows into a :class:`PromptBatch` (also the ``collate_fn`` of the evaluation loaders)."""
    return PromptBatch(
        ids=[row.id for row in rows],
        prompts=[row.prompt for row in rows],
        answers=[row.answer for row in rows],
        is_labeled=[row.is_labeled for row in rows],
        system_prompts=[row.system_prompt for row in rows],
        conversational=[row.conversational for row in rows],
        columns=[row.columns for row in rows],
    )


class PromptStream:
    """A seeded, resumable sampler that never ends: epoch after epoch of shuffled batches for one rank.

    Epoch ``e`` shuffles the rows with ``torch.randperm`` seeded by ``seed + e``; rank ``r`` of ``w`` keeps every
    ``w``-th index of that permutation starting at ``r``, after dropping the tail so that all ranks get
    ``len(rows) // w`` rows. Batches never straddle epochs: a request larger than what is left of the epoch starts the
    next one (``drop_last``). Every rank therefore draws different prompts, the same number of them, in lock step.

    Args:
        rows: the dataset.
        batch_size: prompts per batch on this rank (what ``next(stream)`` returns).
        seed: base seed of the per-epoch permutations.
        rank: this process's rank.
        world_size: number of ranks sharing the dataset.
        name: used in error messages.

    Example::

        stream = PromptStream(rows, batch_size=4, seed=1, rank=trainer.global_rank, world_size=trainer.world_size)
        batch = next(stream)           # PromptBatch of 4 prompts
        state = stream.state_dict()    # {"epoch": 0, "offset": 4, "seed": 1, "num_rows": ..., "world_size": ...}
    """

    def __init__(
        self,
        rows: Sequence[PromptRow],
        batch_size: int,
        seed: int = 1,
        rank: int = 0,
        world_size: int = 1,
        name: str = "stream",
    ) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"PromptStream {name!r}: batch_size must be an integer >= 1, got {batch_size!r}")
        if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
            raise ValueError(f"PromptStream {name!r}: world_size must be an integer >= 1, got {world_size!r}")
        if not isinstance(rank, int) or not 0 <= rank < world_size:
            raise ValueError(f"PromptStream {name!r}: rank must be in [0, {world_size}), got {rank!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"PromptStream {name!r}: seed must be an integer, got {seed!r}")
        self.rows = list(rows)
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.name = name
        self.epoch = 0
        self.offset = 0
        """Rows of the current epoch this rank has consumed (the same on every rank)."""
        self._order: Optional[list[int]] = None
        self._order_epoch = -1

    @property
    def rows_per_epoch(self) -> int:
        """Rows each rank sees per epoch (the tail that does not divide evenly across ranks is dropped)."""
        return len(self.rows) // self.world_size

    def __iter__(self) -> "PromptStream":
        return self

    def __next__(self) -> PromptBatch:
        return rows_to_batch(self.next_rows())

    def next_rows(self, count: Optional[int] = None) -> list[PromptRow]:
        """Draw ``count`` rows (default ``batch_size``), starting a new epoch if this one has fewer left."""
        count = self.batch_size if count is None else count
        if count == 0:
            return []
        if not self.rows:
            raise ValueError(f"prompt stream {self.name!r} has no rows: configure its dataset before drawing from it")
        if count > self.rows_per_epoch:
            raise ValueError(
                f"prompt stream {self.name!r}: a batch of {count} prompts per rank on {self.world_size} rank(s) needs "
                f"at least {count * self.world_size} rows, the dataset has {len(self.rows)}"
            )
        if self.offset + count > self.rows_per_epoch:
            self.epoch += 1
            self.offset = 0
        order = self._epoch_order()
        picked = [self.rows[i] for i in order[self.offset : self.offset + count]]
        self.offset += count
        return picked

    def _epoch_order(self) -> list[int]:
        if self._order_epoch != self.epoch:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            permutation = torch.randperm(len(self.rows), generator=generator)
            usable = self.rows_per_epoch * self.world_size
            self._order = permutation[:usable][self.rank :: self.world_size].tolist()
            self._order_epoch = self.epoch
        return self._order

    def state_dict(self) -> dict[str, int]:
        return {
            "epoch": self.epoch,
            "offset": self.offset,
            "seed": self.seed,
            "num_rows": len(self.rows),
            "world_size": self.world_size,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume at a saved position; refuses a state saved over another dataset, seed or number of ranks."""
        missing = {"epoch", "offset", "seed", "num_rows"} - set(state)
        if missing:
            raise ValueError(f"prompt stream {self.name!r}: state is missing {sorted(missing)}")
        if state["num_rows"] != len(self.rows):
            raise ValueError(
                f"prompt stream {self.name!r}: the checkpoint was made over {state['num_rows']} rows, the dataset now "
                f"has {len(self.rows)}; resuming would replay a different order"
            )
        if state["seed"] != self.seed:
            raise ValueError(
                f"prompt stream {self.name!r}: the checkpoint was made with seed {state['seed']}, the data module now "
                f"has seed {self.seed}"
            )
        saved_world_size = state.get("world_size", self.world_size)
        if saved_world_size != self.world_size:
            raise ValueError(
                f"prompt stream {self.name!r}: the checkpoint was made on {saved_world_size} rank(s), this run has "
                f"{self.world_size}; each rank's share of an epoch would differ"
            )
        if not 0 <= state["offset"] <= self.rows_per_epoch or state["epoch"] < 0:
            raise ValueError(f"prompt stream {self.name!r}: invalid position in state {state}")
        self.epoch = int(state["epoch"])
        self.offset = int(state["offset"])


class EMStreams:
    """The train "dataloader": an endless iterable of :class:`PromptBatch` from the stream named by ``source``.

    ``source`` is set by the ``EMSchedule`` callback before each RL step:

    - ``"labeled"``: ``batch_size`` rows from D_L; ``"unlabeled"``: ``batch_size`` rows from D_U;
    - ``"mixed"``: ``round(batch_size * mixed_labeled_fraction)`` rows from D_L first, then the rest from D_U.

    Only the streams drawn from advance. ``iter()`` returns the object itself without resetting anything, because
    Lightning calls it at every epoch. There is no ``__len__``: train with ``max_steps``.

    Args:
        labeled: the D_L stream.
        unlabeled: the D_U stream (rows carry ``answer=None`` unless the oracle baseline exposes them).
        mixed_labeled_fraction: share of labeled rows in a ``"mixed"`` batch, in [0, 1].
        source: the stream the next batch comes from.

    Example::

        streams = EMStreams(PromptStream(dl_rows, 8), PromptStream(du_rows, 8), mixed_labeled_fraction=0.25)
        streams.source = "mixed"
        batch = next(streams)          # 2 labeled rows, then 6 unlabeled rows
    """

    def __init__(
        self,
        labeled: PromptStream,
        unlabeled: PromptStream,
        mixed_labeled_fraction: float = 0.5,
        source: str = "unlabeled",
    ) -> None:
        if labeled.batch_size != unlabeled.batch_size:
            raise ValueError(
                f"EMStreams: the labeled and unlabeled streams must share a batch_size, got {labeled.batch_size} and "
                f"{unlabeled.batch_size}"
            )
        if isinstance(mixed_labeled_fraction, bool) or not 0.0 <= float(mixed_labeled_fraction) <= 1.0:
            raise ValueError(f"mixed_labeled_fraction must be in [0, 1], got {mixed_labeled_fraction!r}")
        self.labeled = labeled
        self.unlabeled = unlabeled
        self.batch_size = labeled.batch_size
        self.mixed_labeled_fraction = float(mixed_labeled_fraction)
        self.source = source

    @property
    def source(self) -> str:
        return self._source

    @source.setter
    def source(self, value: str) -> None:
        if value not in STREAM_SOURCES:
            raise ValueError(f"EMStreams.source must be one of {STREAM_SOURCES}, got {value!r}")
        self._source = value

    @property
    def mixed_labeled_count(self) -> int:
        """Labeled rows in a mixed batch (Python's ``round``: halves go to the even neighbour)."""
        return round(self.batch_size * self.mixed_labeled_fraction)

    def __iter__(self) -> "EMStreams":
        return self

    def __next__(self) -> PromptBatch:
        if self.source == "labeled":
            rows = self.labeled.next_rows()
        elif self.source == "unlabeled":
            rows = self.unlabeled.next_rows()
        else:
            labeled_count = self.mixed_labeled_count
            rows = self.labeled.next_rows(labeled_count) + self.unlabeled.next_rows(self.batch_size - labeled_count)
        return rows_to_batch(rows)

    def state_dict(self) -> dict[str, Any]:
        return {"labeled": self.labeled.state_dict(), "unlabeled": self.unlabeled.state_dict(), "source": self.source}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.labeled.load_state_dict(state["labeled"])
        self.unlabeled.load_state_dict(state["unlabeled"])
        self.source = state.get("source", self.source)

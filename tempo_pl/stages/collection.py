"""Collecting one RL step's rollout: draw prompts, generate, grade labeled groups, drop the groups that carry no
signal, and refill until the batch is full (``docs/algorithm.md``, "Group filtering and refill").

Pure of Lightning: the module hands in how to draw, generate, grade and agree across ranks, so the loop is tested on
its own with stub callables.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

from torch import Tensor

from tempo_pl.stages.ranks import Ranks
from tempo_pl.stages.scoring import LABELED_SCORES
from tempo_pl.types import PromptBatch, Rollout

log = logging.getLogger(__name__)

DRAW_POSITION = "draw_position"
"""Key of ``Rollout.extra``: each row's prompt position in the batch it was drawn in (orders groups across ranks)."""

UNDERFILLED_CHOICES = ("train", "error")


@dataclass
class CollectOptions:
    group_filter: bool
    """Drop labeled groups whose n scores all agree."""
    max_generation_batches: int
    """Generation batches at most per RL step, the first included."""
    pad_token_id: int
    underfilled: str = "train"
    """When the limit is reached with fewer groups than the batch: ``train`` on what was kept, or ``error``."""

    def __post_init__(self) -> None:
        if self.underfilled not in UNDERFILLED_CHOICES:
            raise ValueError(f"underfilled must be one of {list(UNDERFILLED_CHOICES)}, got {self.underfilled!r}")


@dataclass
class Collected:
    rollout: Rollout
    """This rank's share of the kept groups; ``extra[LABELED_SCORES]`` per row."""
    metrics: dict[str, float]


def groups_with_signal(rollout: Rollout, labeled_scores: Tensor) -> list[int]:
    """Groups to keep: every unlabeled group, and the labeled groups whose scores are not all equal."""
    n = rollout.n_per_prompt
    keep = []
    for g, labeled in enumerate(rollout.prompt_batch.is_labeled):
        if labeled and labeled_scores[g * n : (g + 1) * n].std(unbiased=False) < 1e-6:
            continue
        keep.append(g)
    return keep


def collect_rollout(
    draw: Callable[[int], PromptBatch],
    generate: Callable[[PromptBatch], Rollout],
    grade_labeled: Callable[[Rollout], Tensor],
    options: CollectOptions,
    ranks: Ranks = Ranks(),
    rl_step: int = 0,
) -> Collected:
    """Generate batches until the global batch is full: ``world x len(first batch)`` groups kept over all ranks, or
    ``max_generation_batches`` drawn. Then every rank receives the same number of the kept groups, in the order one
    process would have kept them (generation batch by batch, rank by rank), so N ranks train on what one process
    trains on when it draws the ranks' prompts as one batch.

    Args:
        draw: ``draw(i)`` returns the i-th prompt batch of this step (0 = the step's own batch, then refills).
        generate: samples n responses per prompt of a batch.
        grade_labeled: per-row scores of the labeled rows of a rollout (0 on unlabeled rows).
        options: filtering and refill limits, and what to do when the limit leaves the batch short.
        ranks: how ranks sum counts and exchange kept groups (one process by default).
        rl_step: for the messages when the batch could not be filled.
    """
    kept: list[Rollout] = []
    drawn_batches = 0
    local = {"drawn": 0, "kept": 0, "filtered": 0, "dropped": 0, "truncated": 0}
    target = None
    while True:
        batch = draw(drawn_batches)
        target = len(batch) * ranks.world if target is None else target
        drawn_batches += 1
        local["drawn"] += len(batch)
        generated = generate(batch)
        local["dropped"] += int(generated.extra.get("num_dropped", 0))
        local["truncated"] += int(generated.extra.get("num_prompts_truncated", 0))
        if generated.num_rows:
            generated.extra[LABELED_SCORES] = grade_labeled(generated)
            generated.extra[DRAW_POSITION] = generated.group_ids.clone()
            keep = (groups_with_signal(generated, generated.extra[LABELED_SCORES]) if options.group_filter
                    else list(range(len(generated.prompt_batch))))
            local["filtered"] += len(generated.prompt_batch) - len(keep)
            local["kept"] += len(keep)
            kept.append(generated.select_groups(keep))
        else:
            kept.append(generated)
        kept_globally = ranks.sum([float(local["kept"])])[0]
        # every rank computes the same decision from the same sums: their draws and collectives stay paired
        if kept_globally >= target or drawn_batches >= options.max_generation_batches:
            break
    totals = dict(zip(local, ranks.sum([float(v) for v in local.values()])))
    metrics = {
        "filter/kept_fraction": totals["kept"] / max(totals["drawn"], 1.0),
        "filter/generation_batches": float(drawn_batches),
        "filter/filtered_groups": totals["filtered"],
        "filter/underfilled": float(totals["kept"] < target),
        "rollout/dropped_overlong_prompts": totals["dropped"],
        "rollout/truncated_prompts": totals["truncated"],
    }
    if totals["kept"] < target:
        message = (f"RL step {rl_step}: only {int(totals['kept'])} of {target} prompt groups kept after "
                   f"{drawn_batches} generation batches (training.max_generation_batches)")
        if options.underfilled == "error":
            raise RuntimeError(message + "; set training.underfilled_batch: train to train on what was kept")
        log.warning(message + "; training on what was kept")
    return Collected(_share_of_rank(kept, target, options.pad_token_id, ranks, batch), metrics)


def _share_of_rank(kept: list[Rollout], target: int, pad_token_id: int, ranks: Ranks, last: PromptBatch) -> Rollout:
    """This rank's equal share of the first ``target`` groups kept over all ranks, ordered by (generation batch,
    position in the rank's batch, rank): the order of one process's batch when ranks take every ``world``-th
    prompt (as the prompt streams do)."""
    per_rank = ranks.gather([r.to("cpu") for r in kept]) if ranks.world > 1 else [kept]
    device = kept[0].response_mask.device if kept else "cpu"
    pieces, keys = [], []
    for batch_index in range(len(kept)):
        for rank in range(ranks.world):
            piece = per_rank[rank][batch_index]
            if not piece.num_rows:
                continue
            positions = piece.extra[DRAW_POSITION][:: piece.n_per_prompt].tolist()
            keys.extend((batch_index, position, rank) for position in positions)
            pieces.append(piece.to(device))
    share = min(len(keys), target) // ranks.world
    if share == 0:
        return Rollout.empty(last.select([]))
    order = sorted(range(len(keys)), key=keys.__getitem__)
    mine = order[ranks.rank * share : (ranks.rank + 1) * share]
    return Rollout.concat(pieces, pad_token_id).select_groups(mine)


def unwrap_batch(item) -> PromptBatch:
    """The PromptBatch of a dataloader item (Lightning's iterators may wrap it in a tuple)."""
    batch = item[0] if isinstance(item, tuple) else item
    if not isinstance(batch, PromptBatch):
        raise TypeError(f"the train stream must yield PromptBatch objects, got {type(batch).__name__}")
    return batch


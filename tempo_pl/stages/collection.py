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

from tempo_pl.stages.scoring import LABELED_SCORES
from tempo_pl.types import PromptBatch, Rollout

log = logging.getLogger(__name__)

@dataclass
class CollectOptions:
    group_filter: bool
    """Drop labeled groups whose n scores all agree."""
    max_generation_batches: int
    """Generation batches at most per RL step, the first included."""
    pad_token_id: int


@dataclass
class Collected:
    rollout: Rollout
    """The kept groups, cut to the batch size every rank agrees on; ``extra[LABELED_SCORES]`` per row."""
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
    any_rank: Callable[[bool], bool] = lambda decision: decision,
    min_over_ranks: Callable[[int], int] = lambda count: count,
    rl_step: int = 0,
) -> Collected:
    """Generate batches until ``len(first batch)`` groups are kept or ``max_generation_batches`` were drawn.

    Args:
        draw: ``draw(i)`` returns the i-th prompt batch of this step (0 = the step's own batch, then refills).
        generate: samples n responses per prompt of a batch.
        grade_labeled: per-row scores of the labeled rows of a rollout (0 on unlabeled rows).
        options: filtering and refill limits.
        any_rank: True when any rank still needs more groups (all ranks then draw again, keeping collectives paired).
        min_over_ranks: the smallest kept count over ranks: every rank updates on that many groups.
        rl_step: for the warning when the batch could not be filled.
    """
    kept: list[Rollout] = []
    kept_groups = drawn_groups = drawn_batches = dropped_prompts = filtered_groups = 0
    target = None
    while True:
        batch = draw(drawn_batches)
        target = len(batch) if target is None else target
        drawn_batches += 1
        drawn_groups += len(batch)
        generated = generate(batch)
        dropped_prompts += int(generated.extra.get("num_dropped", 0))
        if generated.num_rows:
            generated.extra[LABELED_SCORES] = grade_labeled(generated)
            keep = (groups_with_signal(generated, generated.extra[LABELED_SCORES]) if options.group_filter
                    else list(range(len(generated.prompt_batch))))
            filtered_groups += len(generated.prompt_batch) - len(keep)
            if keep:
                kept.append(generated.select_groups(keep))
                kept_groups += len(keep)
        need_more = kept_groups < target and drawn_batches < options.max_generation_batches
        if not any_rank(need_more):
            break
    # every rank must update on the same number of groups or the collectives of the updates would not match
    common = min_over_ranks(min(kept_groups, target))
    metrics = {
        "filter/kept_fraction": kept_groups / max(drawn_groups, 1),
        "filter/generation_batches": float(drawn_batches),
        "filter/filtered_groups": float(filtered_groups),
        "rollout/dropped_overlong_prompts": float(dropped_prompts),
    }
    if kept_groups < target:
        log.warning("RL step %d: only %d of %d prompt groups kept after %d generation batches",
                    rl_step, kept_groups, target, drawn_batches)
    if common == 0 or not kept:
        return Collected(Rollout.empty(batch.select([])), metrics)
    rollout = Rollout.concat(kept, options.pad_token_id)
    if len(rollout.prompt_batch) > common:
        rollout = rollout.select_groups(list(range(common)))
    return Collected(rollout, metrics)


def unwrap_batch(item) -> PromptBatch:
    """The PromptBatch of a dataloader item (Lightning's iterators may wrap it in a tuple)."""
    batch = item[0] if isinstance(item, tuple) else item
    if not isinstance(batch, PromptBatch):
        raise TypeError(f"the train stream must yield PromptBatch objects, got {type(batch).__name__}")
    return batch


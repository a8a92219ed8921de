"""Pseudo-label metrics: how far a label-free reward is from the truth.

Evaluation only: these functions read held-back gold answers the training path never sees, and their results
are logged, never fed back into a reward or an advantage.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from tempo_pl.rewards.base import mean_or_zero
from tempo_pl.rewards.group_answers import (
    answer_clusters,
    extracted_answers,
    group_grader,
    majority_cluster,
    rows_by_group,
)
from tempo_pl.rewards.verifier import grade_rows
from tempo_pl.types import Rollout


def pseudo_label_metrics(
    rollout: Rollout,
    scores: Tensor,
    heldout_answers: list[Optional[str]],
    *,
    threshold: float = 0.5,
    keep_rows: Optional[Tensor] = None,
    timeout: float = 2.0,
    processes: Optional[int] = None,
) -> dict[str, float]:
    """Compare a self-reward with the held-back truth.

    - ``label_accuracy``: fraction of groups whose majority answer (all rows vote, the same rule and tie-break as
      :class:`~tempo_pl.rewards.self_rewards.MajorityVote`) is equivalent to the gold; a group without any
      answer counts as wrong.
    - ``reward_accuracy``: fraction of rows whose binarised reward, ``score > threshold``, equals their true
      correctness.
    - ``train_accuracy``: fraction of rows that are actually correct.

    Groups whose held-back answer is ``None`` are left out of all three; with none left the result is ``{}``.

    Args:
        rollout: the scored rollout; its ``prompt_batch.answers`` are not read.
        scores: (N,) the reward source's scores.
        heldout_answers: one gold answer per prompt group (indexed by group id), ``None`` where unknown.
        threshold: binarisation cut: 0.5 for 0/1 rewards (MajorityVote, SemanticCluster), 0.0 for +1/-1 rewards.
        keep_rows: (N,) bool, the rows trained on (``RewardOutput.keep_rows``); row metrics count only these.
        timeout: seconds the grader may spend on one response.
        processes: worker processes for grading; ``None`` lets the grader choose.

    Example::

        out = MajorityVote()(rollout, stats)
        pseudo_label_metrics(rollout, out.scores, gold_per_prompt, keep_rows=out.keep_rows)
        # {"label_accuracy": ..., "reward_accuracy": ..., "train_accuracy": ...}
    """
    if scores.shape != (rollout.num_rows,):
        raise ValueError(f"scores has shape {tuple(scores.shape)}, expected ({rollout.num_rows},)")
    if len(heldout_answers) != len(rollout.prompt_batch):
        raise ValueError(
            f"heldout_answers has {len(heldout_answers)} entries, the rollout has {len(rollout.prompt_batch)} prompts"
        )
    if keep_rows is not None and keep_rows.shape != (rollout.num_rows,):
        raise ValueError(f"keep_rows has shape {tuple(keep_rows.shape)}, expected ({rollout.num_rows},)")

    labels_right, rows, golds = [], [], []
    for group, members in rows_by_group(rollout).items():
        gold = heldout_answers[group]
        if gold is None:
            continue
        grader = group_grader(rollout, group)
        answers = extracted_answers([rollout.texts[r] for r in members], grader)
        clusters = answer_clusters(answers, timeout, grader)
        winner, _ = majority_cluster(clusters, answers)
        # the cluster's first member stands for it, as the vote's representative does
        label = None if winner is None else answers[clusters.index(winner)]
        labels_right.append(label is not None and grader.equivalent([label], [gold], timeout=timeout)[0])
        rows.extend(members)
        golds.extend([gold] * len(members))
    if not labels_right:
        return {}

    if keep_rows is not None:
        kept = keep_rows.cpu().tolist()
        golds = [gold for row, gold in zip(rows, golds) if kept[row]]
        rows = [row for row in rows if kept[row]]
    kept_rows = rollout.select_rows(torch.tensor(rows, dtype=torch.long))
    correct = torch.tensor([v.correct for v in grade_rows(kept_rows, golds, timeout=timeout, processes=processes)],
                           dtype=torch.bool)
    rewarded = scores.detach().cpu()[rows] > threshold
    return {
        "label_accuracy": sum(labels_right) / len(labels_right),
        "reward_accuracy": mean_or_zero((rewarded == correct).float()),
        "train_accuracy": mean_or_zero(correct.float()),
    }

"""Ground-truth reward: grade each response against its prompt's answer."""

from __future__ import annotations

import logging
from typing import Optional

import torch

from tempo_pl.rewards.base import RewardOutput, RewardSource, checked_timeout, mean_or_zero
from tempo_pl.rewards.graders import Grader, Verdict, row_graders
from tempo_pl.types import ForwardStats, Rollout

log = logging.getLogger(__name__)


class Verifier(RewardSource):
    """Scores a response ``correct_score`` if the grader finds its answer equivalent to the gold, else
    ``incorrect_score``; a gold of several parts (the ``physics`` grader) scores
    ``incorrect_score + (correct_score - incorrect_score) * share of parts right``.

    Each row is graded by its dataset's grader (``grader:`` of the dataset spec, docs/graders.md; math by default).
    Besides ``accuracy`` (every part right) it reports ``score`` (the mean share of parts right) and ``points`` (the
    mean points earned); the graders' own counters (judge calls, what decided each part) are logged per step by the
    loop under ``train/grading/`` and per eval set under ``val/<set>/grading/``.

    This is the only source that reads ``PromptBatch.answers``. TEMPO's E-step and PPO train on +1/-1
    (docs/algorithm.md, "Rewards"); the baselines' oracle RLVR upper bound uses 1/0. The module calls it on
    labeled rows only, or on unlabeled rows when the config explicitly enables the oracle; a row without a gold
    answer is an error, never a silent "wrong", and a gold no response can ever match (empty once ``$...$`` and
    ``\\boxed{}`` are removed) is warned about once per prompt id: every response to it scores ``incorrect_score``.

    Args:
        correct_score: score of a response graded correct.
        incorrect_score: score of a response graded wrong, unparsable, or without an answer; must be lower
            than ``correct_score``.
        timeout: seconds the grader may spend on one response before calling it wrong.
        processes: worker processes for grading; ``None`` lets the grader choose.

    Example::

        reward = Verifier(correct_score=1.0, incorrect_score=0.0)  # oracle RLVR
        out = reward(rollout, stats)
        out.scores  # (N,) float, 1.0 or 0.0
        out.metrics["accuracy"]
    """

    reads_answers = True
    name = "verifier"

    def __init__(
        self,
        correct_score: float = 1.0,
        incorrect_score: float = -1.0,
        timeout: float = 2.0,
        processes: Optional[int] = None,
    ) -> None:
        if not correct_score > incorrect_score:
            raise ValueError(
                f"Verifier: correct_score ({correct_score}) must be greater than incorrect_score ({incorrect_score})"
            )
        timeout = checked_timeout("Verifier", timeout)
        if processes is not None and processes < 1:
            raise ValueError(f"Verifier: processes must be >= 1 or None, got {processes}")
        self.correct_score = float(correct_score)
        self.incorrect_score = float(incorrect_score)
        self.timeout = timeout
        self.processes = processes
        self._warned_ids: set[str] = set()

    def __call__(self, rollout: Rollout, stats: ForwardStats) -> RewardOutput:
        golds = rollout.answers_per_row()
        missing = sorted({g for g, gold in zip(rollout.group_ids.tolist(), golds) if gold is None})
        if missing:
            ids = [rollout.prompt_batch.ids[g] for g in missing]
            raise ValueError(
                f"Verifier: prompts {ids} have no gold answer. The verifier scores labeled rows only; "
                "scoring unlabeled rows needs the oracle to be enabled and their answers kept."
            )
        self._warn_unmatchable(rollout)
        verdicts = grade_rows(rollout, golds, timeout=self.timeout, processes=self.processes)
        share = torch.tensor([v.score for v in verdicts], dtype=torch.float32)
        scores = (self.incorrect_score + (self.correct_score - self.incorrect_score) * share).to(
            device=rollout.response_mask.device
        )
        metrics = {"accuracy": mean_or_zero([float(v.correct) for v in verdicts]),
                   "score": mean_or_zero(share), "points": mean_or_zero([v.points for v in verdicts])}
        return RewardOutput(scores=scores, metrics=metrics)

    def _warn_unmatchable(self, rollout: Rollout) -> None:
        batch = rollout.prompt_batch
        for pid, gold, grader in zip(batch.ids, batch.answers, row_graders(batch)):
            problem = None if gold is None or pid in self._warned_ids else grader.gold_problem(gold)
            if problem:
                self._warned_ids.add(pid)
                log.warning("Verifier: the gold answer of prompt %r (%r) can never be matched: %s; every response "
                            "to it scores %s. Fix the row's answer field.", pid, gold, problem, self.incorrect_score)


def grade_rows(rollout: Rollout, golds: list[Optional[str]], *, timeout: float = 2.0,
               processes: Optional[int] = None, extraction: str = "boxed") -> list[Verdict]:
    """One :class:`~tempo_pl.rewards.graders.Verdict` per row against ``golds[row]``, each row by its prompt's grader
    (one batch call per grader); the question passed to a grader (and its judge) is the row's prompt."""
    graders = row_graders(rollout.prompt_batch)
    groups = rollout.group_ids.tolist()
    by_grader: dict[int, list[int]] = {}
    owner: dict[int, Grader] = {}
    for row, group in enumerate(groups):
        grader = graders[group]
        by_grader.setdefault(id(grader), []).append(row)
        owner[id(grader)] = grader
    verdicts: list[Optional[Verdict]] = [None] * len(groups)
    for key, rows in by_grader.items():
        graded = owner[key].grade([rollout.texts[r] for r in rows], [golds[r] for r in rows], timeout=timeout,
                                  processes=processes, extraction=extraction,
                                  questions=[rollout.prompt_batch.prompts[groups[r]] for r in rows])
        for row, verdict in zip(rows, graded):
            verdicts[row] = verdict
    return verdicts

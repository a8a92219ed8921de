"""The reward-source plug-in interface.

A reward source turns a rollout into one scalar score per response. It sees whole groups (the n samples of a
prompt are consecutive rows and never split across ranks) and the no-grad statistics of the loop's forward pass.
Only :class:`~tempo_pl.rewards.verifier.Verifier` reads ``PromptBatch.answers``; on training streams those are
``None`` for unlabeled rows, so a source scoring D_U cannot see D_U answers.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Optional, Union

from torch import Tensor

from tempo_pl.types import ForwardStats, Rollout


@dataclass
class RewardOutput:
    scores: Tensor  # (N,) float, one per response
    metrics: dict[str, float] = field(default_factory=dict)  # telemetry, logged under reward/<name>/...
    keep_rows: Optional[Tensor] = None  # (N,) bool: rows to train on (TTRL votes with more samples than it trains)


class RewardSource(ABC):
    """Scores responses. Subclass, implement :meth:`__call__`, and name it by ``class_path`` in YAML."""

    #: the loop computes the critic values before scoring when True
    needs_values: bool = False
    #: the loop computes per-token self-certainty, KL(Uniform || pi), in its no-grad pass when True
    needs_self_certainty: bool = False
    #: True only for sources that read ground truth; the module refuses to use such a source on unlabeled rows
    #: unless the config opts in explicitly (the oracle upper bound)
    reads_answers: bool = False
    name: str = "reward"
    #: the RL step being scored (0-based); the module sets it before every step
    rl_step: int = 0

    @abstractmethod
    def __call__(self, rollout: Rollout, stats: ForwardStats) -> RewardOutput:
        """Return one score per row of ``rollout``."""

    def required_stat(self, stats: ForwardStats, name: str, hint: str = "") -> Tensor:
        """``stats.<name>``, which the loop fills because this source sets ``needs_<name>``; an error if missing."""
        value = getattr(stats, name)
        if value is None:
            raise ValueError(
                f"{type(self).__name__} needs ForwardStats.{name}, which the loop fills when needs_{name} is True"
                + (f": {hint}" if hint else "")
            )
        return value


def checked_timeout(owner: str, timeout: float) -> float:
    """A grading time bound in seconds, validated for the reward source ``owner``."""
    if not timeout > 0:
        raise ValueError(f"{owner}: timeout must be > 0 seconds, got {timeout}")
    return float(timeout)


def mean_or_zero(values: Union[Tensor, Sequence[float]]) -> float:
    """The mean as a float; 0.0 when there is nothing to average (a step may score no rows of a kind)."""
    if isinstance(values, Tensor):
        return values.mean().item() if values.numel() else 0.0
    return sum(values) / len(values) if values else 0.0

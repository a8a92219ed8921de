"""FunctionReward: any callable with TRL's reward-function signature as a reward source."""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import torch

from tempo_pl.rewards.base import RewardOutput, RewardSource, mean_or_zero
from tempo_pl.types import ForwardStats, Rollout

RewardFunction = Callable[..., Sequence[float]]
"""``f(prompts, completions, **kwargs) -> list[float]``: one score per completion (TRL's reward functions)."""


class FunctionReward(RewardSource):
    """Scores every response with a plain function, as TRL's ``reward_funcs`` do.

    The function is called once per scoring with one entry per response (the n samples of a prompt are
    consecutive)::

        function(prompts, completions, completion_ids=..., ids=..., is_labeled=..., [answer=...]) -> list[float]

    ``prompts[i]`` is the question of response ``i``, ``completions[i]`` its text, ``completion_ids[i]`` its token
    ids, ``ids[i]`` the prompt's id and ``is_labeled[i]`` whether it came from D_L. Ground truth is passed only
    with ``pass_answers: true`` (``answer[i]``, ``None`` on unlabeled rows): such a source reads answers, so the module
    accepts it as ``labeled_reward`` only (or in the oracle run), never as the reward of D_U. Extra keyword
    arguments a function does not need are absorbed by its ``**kwargs``. The mean score of each call is logged as
    ``train/reward/<name>/mean`` when the source scores D_U rows.

    Args:
        function: the callable; in YAML an import path (``my_rewards.length_reward``) or the ``class_path`` and
            ``init_args`` of a class whose instances are callable.
        name: the name the metrics are logged under; default the function's ``__name__`` (a callable object's class
            name).
        pass_answers: also pass ``answer``, the gold answer of each response's prompt.

    Example (YAML)::

        model:
          init_args:
            unlabeled_reward:
              class_path: tempo_pl.rewards.FunctionReward
              init_args: {function: my_rewards.brevity, name: brevity}

    with ``my_rewards.py`` on the Python path::

        def brevity(prompts, completions, **kwargs):
            return [-len(c) / 1000 for c in completions]
    """

    def __init__(self, function: RewardFunction, name: Optional[str] = None, pass_answers: bool = False) -> None:
        if not callable(function):
            raise TypeError(f"FunctionReward: function must be callable, got {type(function).__name__}")
        self.function = function
        self.name = name or getattr(function, "__name__", None) or type(function).__name__
        if not isinstance(self.name, str) or not self.name.strip() or "/" in self.name:
            raise ValueError(f"FunctionReward: name must be a non-empty string without '/', got {self.name!r}")
        self.pass_answers = bool(pass_answers)
        self.reads_answers = self.pass_answers

    def __call__(self, rollout: Rollout, stats: ForwardStats) -> RewardOutput:
        batch = rollout.prompt_batch
        groups = rollout.group_ids.tolist()
        kwargs = {
            "completion_ids": [ids[mask.bool()].tolist() for ids, mask in zip(rollout.response_ids, rollout.response_mask)],
            "ids": [batch.ids[g] for g in groups],
            "is_labeled": [bool(batch.is_labeled[g]) for g in groups],
        }
        if self.pass_answers:
            kwargs["answer"] = rollout.answers_per_row()
        values = self.function([batch.prompts[g] for g in groups], list(rollout.texts), **kwargs)
        scores = self._checked(values, rollout.num_rows)
        tensor = torch.tensor(scores, dtype=torch.float32, device=rollout.response_mask.device)
        return RewardOutput(scores=tensor, metrics={"mean": mean_or_zero(scores)})

    def _checked(self, values, rows: int) -> list[float]:
        where = f"FunctionReward {self.name!r}"
        try:
            values = list(values)
        except TypeError:
            raise TypeError(f"{where}: the function must return a list of floats, got {type(values).__name__}") from None
        if len(values) != rows:
            raise ValueError(f"{where}: the function returned {len(values)} scores for {rows} completions")
        scores = []
        for i, value in enumerate(values):
            try:
                score = float(value)
            except (TypeError, ValueError):
                raise ValueError(f"{where}: score {i} is {value!r}, not a number (every completion needs one)") from None
            if not math.isfinite(score):
                raise ValueError(f"{where}: score {i} is {score}, not finite")
            scores.append(score)
        return scores

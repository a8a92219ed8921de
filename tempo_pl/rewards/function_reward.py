"""FunctionReward: any callable with TRL's reward-function signature as a reward source."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence, Union

import torch

from tempo_pl.rewards.base import RewardOutput, RewardSource, mean_or_zero
from tempo_pl.types import ForwardStats, PromptBatch, Rollout

RewardFunction = Callable[..., Sequence[float]]
"""``f(prompts, completions, **kwargs) -> list[float]``: one score per completion (TRL's reward functions)."""


TRL_RESERVED_COLUMNS = ("prompt", "completion", "completion_ids")
"""Dataset columns not passed by name, as in TRL: ``prompts``, ``completions`` and ``completion_ids`` carry them."""


@dataclass(frozen=True)
class RewardState:
    """What a reward function reads of the run, as TRL's ``trainer_state``: ``global_step`` is the RL step."""

    global_step: int


class FunctionReward(RewardSource):
    """Scores every response with a plain function, as TRL's ``reward_funcs`` do: TRL's reward functions
    (``trl.rewards.accuracy_reward``, ``think_format_reward``, ...) run unchanged.

    The function is called once per scoring with one entry per response (the n samples of a prompt are
    consecutive), with TRL's arguments, all by keyword as TRL passes them (``accuracy_reward(completions, solution,
    **kwargs)`` takes ``completions`` first)::

        function(prompts=..., completions=..., completion_ids=..., <every dataset column>=..., trainer_state=...,
                 step=..., ids=..., is_labeled=..., [answer=...]) -> list[float]

    - ``prompts[i]`` is the question of response ``i`` (the prompt template applied); for a row whose question
      came as a conversation (TRL's ``prompt`` / ``messages`` column) a message list, ``[{"role": "user",
      "content": ...}]`` after the row's own system message if it has one.
    - ``completions[i]`` is its text; for a conversational row ``[{"role": "assistant", "content": text}]``.
    - ``completion_ids[i]`` its token ids; ``trainer_state.global_step`` and ``step`` the RL step; ``ids[i]`` the
      prompt's id and ``is_labeled[i]`` whether it came from D_L.
    - every column of the row by its own name (the gold under its own column, e.g. ``solution``), except
      ``prompt``, ``completion`` and ``completion_ids``, as TRL passes them; ``None`` where a row lacks it. An
      unlabeled row shows its question and id columns only: D_U's answers never reach a reward function.
    - ``answer[i]``, the gold answer as the data module read it (``answer_field``; ``None`` on unlabeled rows),
      only with ``pass_answers: true``: such a source reads answers, so the module accepts it as ``labeled_reward``
      only (or in the oracle run), never as the reward of D_U.

    Extra keyword arguments a function does not need are absorbed by its ``**kwargs``. The mean score of each call
    is logged as ``train/reward/<name>/mean`` when the source scores D_U rows.

    Args:
        function: the callable; in YAML an import path (``trl.rewards.accuracy_reward``) or the ``class_path`` and
            ``init_args`` of a class whose instances are callable.
        name: the name the metrics are logged under; default the function's ``__name__`` (a callable object's class
            name).
        pass_answers: also pass ``answer``, the gold answer of each response's prompt.
        factory_args: ``function`` is a factory (TRL's ``get_soft_overlong_punishment``, ``get_cosine_scaled_reward``
            ...): the reward function is ``function(**factory_args)``, named after the factory.

    A score of ``None`` (TRL: the function does not apply to that completion, e.g. a gold it cannot parse) counts
    as 0, as in TRL's sum of rewards; the share of such scores is logged as ``train/reward/<name>/skipped``.

    Example (YAML)::

        model:
          init_args:
            unlabeled_reward:
              class_path: tempo_pl.rewards.FunctionReward
              init_args: {function: my_rewards.brevity, name: brevity}
            labeled_reward:    # TRL's own, on D_L's `solution` column
              class_path: tempo_pl.rewards.FunctionReward
              init_args: {function: trl.rewards.accuracy_reward}

    A factory: ``init_args: {function: trl.rewards.get_soft_overlong_punishment, factory_args: {max_completion_len:
    1024, soft_punish_cache: 256}}``.

    with ``my_rewards.py`` on the Python path::

        def brevity(prompts, completions, **kwargs):
            return [-len(c) / 1000 for c in completions]
    """

    def __init__(self, function: RewardFunction, name: Optional[str] = None, pass_answers: bool = False,
                 factory_args: Optional[dict[str, Any]] = None) -> None:
        if not callable(function):
            raise TypeError(f"FunctionReward: function must be callable, got {type(function).__name__}")
        if factory_args is not None:
            if not isinstance(factory_args, dict):
                raise TypeError(f"FunctionReward: factory_args must be a mapping, got {type(factory_args).__name__}")
            name = name or getattr(function, "__name__", None)
            function = function(**factory_args)
            if not callable(function):
                raise TypeError(f"FunctionReward: {name}(**factory_args) must return the reward function, got "
                                f"{type(function).__name__}")
        self.function = function
        self.name = name or getattr(function, "__name__", None) or type(function).__name__
        if not isinstance(self.name, str) or not self.name.strip() or "/" in self.name:
            raise ValueError(f"FunctionReward: name must be a non-empty string without '/', got {self.name!r}")
        self.pass_answers = bool(pass_answers)
        self.reads_answers = self.pass_answers

    def __call__(self, rollout: Rollout, stats: ForwardStats) -> RewardOutput:
        batch = rollout.prompt_batch
        groups = rollout.group_ids.tolist()
        conversational = [batch.conversational[g] for g in groups]
        prompts = [self._prompt(batch, g) for g in groups]
        completions = [[{"role": "assistant", "content": text}] if chat else text
                       for text, chat in zip(rollout.texts, conversational)]
        names = dict.fromkeys(name for g in set(groups) for name in batch.columns[g])
        kwargs = {name: [batch.columns[g].get(name) for g in groups] for name in names
                  if name not in TRL_RESERVED_COLUMNS}
        kwargs.update({
            "completion_ids": [ids[mask.bool()].tolist() for ids, mask in zip(rollout.response_ids, rollout.response_mask)],
            "trainer_state": RewardState(global_step=self.rl_step),
            "step": self.rl_step,
            "ids": [batch.ids[g] for g in groups],
            "is_labeled": [bool(batch.is_labeled[g]) for g in groups],
        })
        if self.pass_answers:
            kwargs["answer"] = rollout.answers_per_row()
        values = self.function(prompts=prompts, completions=completions, **kwargs)
        checked = self._checked(values, rollout.num_rows)
        scored = [score for score in checked if score is not None]
        metrics = {"mean": mean_or_zero(scored)}
        if len(scored) < len(checked):
            metrics["skipped"] = (len(checked) - len(scored)) / len(checked)
        tensor = torch.tensor([0.0 if score is None else score for score in checked], dtype=torch.float32,
                              device=rollout.response_mask.device)
        return RewardOutput(scores=tensor, metrics=metrics)

    @staticmethod
    def _prompt(batch: PromptBatch, group: int) -> Union[str, list[dict]]:
        """The prompt as TRL passes it: the text, or for a conversational row its messages."""
        if not batch.conversational[group]:
            return batch.prompts[group]
        system = batch.system_prompts[group]
        return ([{"role": "system", "content": system}] if system is not None else []) + [
            {"role": "user", "content": batch.prompts[group]}]

    def _checked(self, values, rows: int) -> list[Optional[float]]:
        where = f"FunctionReward {self.name!r}"
        try:
            values = list(values)
        except TypeError:
            raise TypeError(f"{where}: the function must return a list of floats, got {type(values).__name__}") from None
        if len(values) != rows:
            raise ValueError(f"{where}: the function returned {len(values)} scores for {rows} completions")
        scores = []
        for i, value in enumerate(values):
            if value is None:  # TRL: the function does not apply to this completion; its total counts it as 0
                scores.append(None)
                continue
            try:
                score = float(value)
            except (TypeError, ValueError):
                raise ValueError(f"{where}: score {i} is {value!r}, not a number (every completion needs one)") from None
            if not math.isfinite(score):
                raise ValueError(f"{where}: score {i} is {score}, not finite")
            scores.append(score)
        return scores

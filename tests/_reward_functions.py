"""Reward functions with TRL's signature, importable by path from the configs of the reward tests."""

from __future__ import annotations

CALLS: list[dict] = []


def brevity(prompts, completions, **kwargs):
    """Shorter is better: minus the completion's length in hundreds of characters."""
    CALLS.append({"prompts": list(prompts), "completions": list(completions), **kwargs})
    return [-len(c) / 100 for c in completions]


class ContainsDigit:
    """A callable class: ``bonus`` when the completion holds a digit, else 0."""

    def __init__(self, bonus: float = 1.0) -> None:
        self.bonus = bonus

    def __call__(self, prompts, completions, **kwargs):
        return [self.bonus if any(ch.isdigit() for ch in c) else 0.0 for c in completions]


# ------------------------------------------------------------------ the signatures of trl.rewards' functions


def _content(completion) -> str:
    """TRL's reading of a completion: the text, or the content of its one assistant message."""
    return completion[0]["content"] if isinstance(completion, list) else completion


def accuracy_reward(completions, solution, **kwargs):
    """As ``trl.rewards.accuracy_reward``: 1 when the boxed answer is the row's ``solution`` column, None when
    the solution is missing (TRL skips a gold it cannot parse)."""
    CALLS.append({"completions": list(completions), "solution": list(solution), **kwargs})
    return [None if gold is None else float(f"\\boxed{{{gold}}}" in _content(c))
            for c, gold in zip(completions, solution, strict=True)]


def think_format_reward(completions, **kwargs):
    """As ``trl.rewards.think_format_reward``: 1 when the reasoning is enclosed in <think> ... </think>."""
    import re

    return [1.0 if re.match(r"^<think>(?!.*<think>)(.*?)</think>.*$", _content(c), re.DOTALL) else 0.0
            for c in completions]


def get_soft_overlong_punishment(max_completion_len: int, soft_punish_cache: int):
    """As ``trl.rewards.get_soft_overlong_punishment`` (DAPO's length penalty): a factory of a reward on
    ``completion_ids``."""

    def soft_overlong_punishment(completion_ids, **kwargs):
        start = max_completion_len - soft_punish_cache
        return [0.0 if len(ids) <= start else -1.0 if len(ids) > max_completion_len
                else (start - len(ids)) / soft_punish_cache for ids in completion_ids]

    return soft_overlong_punishment


def record_everything(prompts, completions, **kwargs):
    """Records every argument; scores 0."""
    CALLS.append({"prompts": list(prompts), "completions": list(completions), **kwargs})
    return [0.0] * len(completions)

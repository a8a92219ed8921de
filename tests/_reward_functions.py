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

"""Prompt templates: how a dataset's question becomes the user message.

The chat template (system prompt, role markers) is the tokenizer's business; a prompt template only wraps the
question text, e.g. to ask for a ``\\boxed{}`` final answer that the grader looks for.
"""

from __future__ import annotations

PROBLEM_PLACEHOLDER = "{problem}"

BOXED_TEMPLATE = "{problem}\nPlease reason step by step, and put your final answer within \\boxed{}."
"""The Qwen2.5-Math evaluation instruction; the grader reads the last ``\\boxed{}``."""

VERL_BOXED_TEMPLATE = "{problem} Let's think step by step and output the final answer within \\boxed{}."
"""The instruction verl's math recipes (and the TEMPO run scripts' parquets) append to each question."""

PLAIN_TEMPLATE = "{problem}"
"""The question alone, for datasets whose problems already carry their instruction."""

DEFAULT_TEMPLATE = BOXED_TEMPLATE

TEMPLATES: dict[str, str] = {"boxed": BOXED_TEMPLATE, "verl_boxed": VERL_BOXED_TEMPLATE, "plain": PLAIN_TEMPLATE}
"""Named templates, so a YAML config can say ``prompt_template: verl_boxed``."""


def resolve_template(name_or_template: str) -> str:
    """Return the template text for a name in :data:`TEMPLATES`, or check and return a literal template.

    Raises:
        ValueError: a literal template that does not contain ``{problem}``.
    """
    if name_or_template in TEMPLATES:
        return TEMPLATES[name_or_template]
    if PROBLEM_PLACEHOLDER not in name_or_template:
        raise ValueError(
            f"prompt_template must contain {PROBLEM_PLACEHOLDER!r} or be one of {sorted(TEMPLATES)}, "
            f"got {name_or_template!r}"
        )
    return name_or_template


def apply_template(template: str, problem: str) -> str:
    """Put ``problem`` in place of ``{problem}``.

    Plain substitution rather than ``str.format``: templates and problems are full of LaTeX braces
    (``\\boxed{}``, ``\\frac{a}{b}``) that ``format`` would try to interpret.
    """
    return template.replace(PROBLEM_PLACEHOLDER, problem)

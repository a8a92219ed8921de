r"""Answer normalisation and the pre-filter: what is left of an answer to compare, and whether it is worth parsing.

The bare answer has ``\boxed{}``, ``$...$``, ``\(...\)`` and ``\[...\]`` unwrapped and thin-space thousands
separators (``1\,000``) joined. The pre-filter rejects the obviously pathological answers (empty, too long, control
characters, unbalanced braces, numeric power towers, huge exponents) without spending a worker on them.
"""

from __future__ import annotations

import re
from typing import Optional

from tempo_pl.rewards.boxed import BOXED, brace_depths, extract_boxed

MAX_ANSWER_CHARS = 1000
"""Answers longer than this after unwrapping are rejected unparsed: a final answer is short, a runaway generation
is not, and parsing cost grows with length (the longest MATH-500 answer has 64 characters)."""

_DELIMITERS = (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"))
_UNESCAPED_DOLLAR = re.compile(r"(?<!\\)\$")
# 1\,000 or 1~000: a thin space between digit groups is a thousands separator (math-verify knows 1{,}000, 10,\!080)
_THIN_SPACE_THOUSANDS = re.compile(r"(?<=\d)(?:\\[,:; ]|~)(?=\d{3}(?!\d))")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
# a numeric base raised to a numeric power tower: 9^{9^{9}}, 10^(10^8), 9^9^9 (billions of digits)
_NUMERIC_TOWER = re.compile(r"\d\s*\^\s*[{(]?\s*\d+(?:\.\d+)?\s*\^")
# an exponent of 8 digits or more: 10^{1000000000} is a 400 MB integer that GMP computes without a pause
_HUGE_EXPONENT = re.compile(r"\^\s*[{(]?\s*\d{8,}")


def normalize_answer(answer: Optional[str]) -> str:
    r"""The bare answer: ``\boxed{}`` (the last one) and math delimiters removed, thin-space thousands joined.

    Stray ``$`` (currency, or a delimiter the model did not close) are dropped: they carry no value. Anything that
    is not a string normalises to ``""``.

    Example::

        >>> normalize_answer(" $\\boxed{1\\,000}$ ")
        '1000'
    """
    if not isinstance(answer, str):
        return ""
    text = answer.strip()
    for _ in range(8):  # nested wrappers such as $\boxed{$x$}$; the cap keeps this linear
        before = text
        if BOXED.search(text):
            boxed = extract_boxed(text)
            if boxed is None:
                return text  # an unterminated box: left for the brace check to reject
            text = boxed
        for left, right in _DELIMITERS:
            if len(text) >= len(left) + len(right) and text.startswith(left) and text.endswith(right):
                text = text[len(left) : len(text) - len(right)].strip()
                break
        if text == before:
            break
    text = _UNESCAPED_DOLLAR.sub("", text)
    return _THIN_SPACE_THOUSANDS.sub("", text).strip()


def _braces_balanced(text: str) -> bool:
    depth = 0
    for _, depth in brace_depths(text):
        if depth < 0:
            return False
    return depth == 0


def answer_is_gradable(answer: str) -> bool:
    r"""False for a normalised answer that the pre-filter rejects without parsing.

    Rejected: empty, longer than :data:`MAX_ANSWER_CHARS`, control characters other than tab and newlines,
    unbalanced ``{}`` (``\{`` does not count), numeric power towers such as ``9^{9^{9}}``, exponents of eight
    or more digits.
    """
    return (
        0 < len(answer) <= MAX_ANSWER_CHARS
        and _CONTROL.search(answer) is None
        and _braces_balanced(answer)
        and _NUMERIC_TOWER.search(answer) is None
        and _HUGE_EXPONENT.search(answer) is None
    )

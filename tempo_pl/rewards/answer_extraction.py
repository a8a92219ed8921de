r"""Answer extraction: the final answer a response states, found by string work in the calling process.

``\boxed{...}`` is brace-matched (``\{`` is a literal brace, not a group), ``####`` takes the rest of its line; both
are linear in the response length. :mod:`tempo_pl.rewards.answer_normalization` reuses the brace scanning.

Example::

    >>> extract_answer("... so the area is $\\boxed{\\frac{3}{4}}$.")
    '\\frac{3}{4}'
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Iterator, Optional

DEFAULT_EXTRACTORS: tuple[str, ...] = ("boxed", "gsm8k")

BOXED = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
_GSM8K = re.compile(r"####[ \t]*([^\n]*)")


def brace_depths(text: str, start: int = 0) -> Iterator[tuple[int, int]]:
    r"""``(index, depth after it)`` of every unescaped ``{`` and ``}`` from ``text[start]`` on (``\{`` is literal)."""
    depth, i, n = 0, start, len(text)
    while i < n:
        ch = text[i]
        if ch == "\\":
            i += 2
            continue
        if ch in "{}":
            depth += 1 if ch == "{" else -1
            yield i, depth
        i += 1


def _brace_group(text: str, open_at: int) -> Optional[str]:
    r"""Content of the ``{...}`` group opening at ``text[open_at]``, or None if it never closes (``\{`` is literal)."""
    for i, depth in brace_depths(text, open_at):
        if depth == 0:
            return text[open_at + 1 : i]
    return None


def _last_match(pattern: re.Pattern, text: str) -> Optional[re.Match]:
    """The last match of ``pattern`` in ``text``: a response states its final answer last."""
    last = None
    for last in pattern.finditer(text):
        pass
    return last


def extract_boxed(response: str) -> Optional[str]:
    last = _last_match(BOXED, response)
    if last is None:
        return None
    i = last.end()
    while i < len(response) and response[i] in " \t":
        i += 1
    if i < len(response) and response[i] == "{":
        content = _brace_group(response, i)
        return None if content is None else content.strip()
    token = re.match(r"[^\s$]+", response[i:])  # "\boxed 5$": the argument is one token
    return token.group(0) if token else None


def _extract_gsm8k(response: str) -> Optional[str]:
    last = _last_match(_GSM8K, response)
    # "#### 18." states the same number as "#### 18"
    return None if last is None else last.group(1).strip().rstrip(".").strip()


EXTRACTORS = {"boxed": extract_boxed, "gsm8k": _extract_gsm8k}
r"""Answer extractors by name. ``boxed``: the last ``\boxed{...}`` or ``\fbox{...}``, brace-matched (also
``\boxed 5``); an unterminated last box gives no answer. ``gsm8k``: the rest of the line after the last ``####``."""


def check_extractors(extractors: Sequence[str]) -> tuple[str, ...]:
    """The extractor names as a tuple, validated against :data:`EXTRACTORS` (one bare name is accepted too)."""
    names = (extractors,) if isinstance(extractors, str) else tuple(extractors)
    if not names or any(name not in EXTRACTORS for name in names):
        raise ValueError(f"extractors must be a non-empty sequence of {sorted(EXTRACTORS)}, got {list(names)!r}")
    return names


def extract_answer(response: str, extractors: Sequence[str] = DEFAULT_EXTRACTORS) -> Optional[str]:
    r"""The final answer of a model response, or None when it states none.

    Args:
        response: the decoded response.
        extractors: names from :data:`EXTRACTORS`, tried in order; the first that finds a non-empty answer wins.

    Example::

        >>> extract_answer("first \\boxed{1}, then \\boxed{\\{1,2\\}}")
        '\\{1,2\\}'
        >>> extract_answer("#### 42"), extract_answer("#### 42", extractors=("boxed",))
        ('42', None)
    """
    names = check_extractors(extractors)
    if not isinstance(response, str):
        return None
    for name in names:
        answer = EXTRACTORS[name](response)
        if answer:
            return answer
    return None


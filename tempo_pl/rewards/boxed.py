r"""Boxed and ``####`` answers: brace-matched ``\boxed{...}`` / ``\fbox{...}`` (``\{`` is a literal brace, not a
group) and the rest of the line after ``####``, both linear in the response length. The extraction chains of
:mod:`tempo_pl.rewards.answer_extraction` and the normalisation of :mod:`tempo_pl.rewards.answer_normalization` read
answers through these."""

from __future__ import annotations

import re
from typing import Iterator, Optional

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


def brace_group(text: str, open_at: int) -> Optional[str]:
    r"""Content of the ``{...}`` group opening at ``text[open_at]``, or None if it never closes (``\{`` is literal)."""
    for i, depth in brace_depths(text, open_at):
        if depth == 0:
            return text[open_at + 1 : i]
    return None


def last_match(pattern: re.Pattern, text: str) -> Optional[re.Match]:
    """The last match of ``pattern`` in ``text``: a response states its final answer last."""
    last = None
    for last in pattern.finditer(text):
        pass
    return last


def extract_boxed(response: str) -> Optional[str]:
    last = last_match(BOXED, response)
    if last is None:
        return None
    i = last.end()
    while i < len(response) and response[i] in " \t":
        i += 1
    if i < len(response) and response[i] == "{":
        content = brace_group(response, i)
        return None if content is None else content.strip()
    token = re.match(r"[^\s$]+", response[i:])  # "\boxed 5$": the argument is one token
    return token.group(0) if token else None


# what may stand between the boxes of one multi-part answer: "\boxed{1}, \boxed{2} \quad\text{and}\quad \boxed{3}"
def extract_gsm8k(response: str) -> Optional[str]:
    last = last_match(_GSM8K, response)
    # "#### 18." states the same number as "#### 18"
    return None if last is None else last.group(1).strip().rstrip(".").strip()

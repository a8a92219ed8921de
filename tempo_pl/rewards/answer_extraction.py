r"""Answer extraction: the final answer a response states, found by string work in the calling process.

``\boxed{...}`` is brace-matched (``\{`` is a literal brace, not a group), ``####`` takes the rest of its line; both
are linear in the response length. :mod:`tempo_pl.rewards.answer_normalization` reuses the brace scanning.

Two extraction modes (:data:`EXTRACTION_MODES`): ``boxed`` reads ``\boxed{}`` and ``####`` only (the training
reward, as the reference); ``lenient`` falls back, when neither is there, to the value after the last "answer is" /
"answer:" and then to the last LaTeX span or plain number or expression, in the order of math-verify's own
extraction (its anchored patterns first, then the rightmost unanchored match). The fallbacks read the last
:data:`LENIENT_TAIL_CHARS` characters only, which keeps them linear and fast on any response.

Example::

    >>> extract_answer("... so the area is $\\boxed{\\frac{3}{4}}$.")
    '\\frac{3}{4}'
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Iterator, Optional

DEFAULT_EXTRACTORS: tuple[str, ...] = ("boxed", "gsm8k")

EXTRACTION_MODES: dict[str, tuple[str, ...]] = {
    "boxed": DEFAULT_EXTRACTORS,
    "lenient": ("final_answer", "boxed_all", "gsm8k", "answer_is", "last_math"),
}
"""Extractor chains by mode: ``boxed`` for training rewards, ``lenient`` for evaluating answers written in prose."""

LENIENT_TAIL_CHARS = 4000
"""The prose fallbacks look at this many final characters: a final answer is stated last, and the bound keeps the
scan short on a runaway response."""

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


# what may stand between the boxes of one multi-part answer: "\boxed{1}, \boxed{2} \quad\text{and}\quad \boxed{3}"
_BOX_SEPARATOR = re.compile(
    r"(?:\s|,|;|\band\b|\bor\b|\$|\\[()\[\],;!]|\\q?quad|\\text\{\s*(?:and|or|,)?\s*\})*"
)


def _extract_boxed_all(response: str) -> Optional[str]:
    """The last box and the boxes right before it that only separators part ("\\boxed{-2} and \\boxed{1}" gives
    "-2, 1"), joined by commas: an answer of several parts boxed one by one, as math-verify's extraction joins them."""
    tail = response[-LENIENT_TAIL_CHARS:]
    boxes: list[tuple[int, int, str]] = []  # (start, end, content) of complete boxes, in order
    for match in BOXED.finditer(tail):
        i = match.end()
        while i < len(tail) and tail[i] in " \t":
            i += 1
        content = _brace_group(tail, i) if i < len(tail) and tail[i] == "{" else None
        if content is not None:
            boxes.append((match.start(), i + len(content) + 2, content.strip()))
    if not boxes or _last_match(BOXED, tail).start() != boxes[-1][0]:
        return extract_boxed(response)  # the last box is unterminated or unbraced: the single-box reading decides
    parts = [boxes[-1]]
    for box in reversed(boxes[:-1]):
        if box[1] > parts[0][0] or not _BOX_SEPARATOR.fullmatch(tail, box[1], parts[0][0]):
            break
        parts.insert(0, box)
    return ", ".join(content for _, _, content in parts) or None


def _extract_gsm8k(response: str) -> Optional[str]:
    last = _last_match(_GSM8K, response)
    # "#### 18." states the same number as "#### 18"
    return None if last is None else last.group(1).strip().rstrip(".").strip()


# ------------------------------------------------------------------------------------------- prose fallbacks

# a plain number (1,000.5 / -3 / .5, a trailing percent) or an arithmetic expression that starts with a digit and
# holds an operator (3/4, 2^10, (1+2)*3); the character before it must not be a letter or digit ("x2", "A3" are not
# answers), as in math-verify's anchors
_NUMBER = r"-?(?:[1-9]\d{0,2}(?:(?:,| (?=\d{3}\b))\d{3})+|\d+)(?:[.,]\d+)?|-?\.\d+"
_EXPRESSION = r"-?\(?-?\d[\d.\s+\-*×/^()÷]*[+\-*×/^÷][\d.\s+\-*×/^()÷]*[\d)]"
_PLAIN = re.compile(rf"(?<![\w.\\])[$€£]?(?P<value>{_EXPRESSION}|{_NUMBER})(?P<percent>\s*(?:\\?%|percent\b))?")
# $$...$$, $...$ (one line, not after a digit or backslash: "5$" is money), \(...\), \[...\], a bare \frac{a}{b}
_MATH = re.compile(
    r"(?<!\\)\$\$(?P<display>(?:[^$]|\$(?!\$))+?)\$\$"
    r"|(?<![\\\d$])\$(?P<inline>(?:\\\$|[^\n$])+?)(?<!\\)\$"
    r"|\\\((?P<paren>(?:[^\\]|\\(?!\)))+?)\\\)"
    r"|\\\[(?P<bracket>(?:[^\\]|\\(?!\]))+?)\\\]"
    r"|(?P<frac>-?\\[dt]?frac\{-?\d+(?:\.\d+)?\}\{-?\d+(?:\.\d+)?\})"
)
_LINE_REST = re.compile(r"[^\n]{0,200}")
# LaTeX commands and \text{...} arguments are not prose words; two letters in a row outside them are
_LATEX_TEXT = re.compile(r"\\(?:text|mathrm|textbf|mbox)\{[^{}]*\}|\\[A-Za-z]+")
_WORD = re.compile(r"[A-Za-z]{2,}")
_SPAN_SEPARATOR = re.compile(r"\s*(?:,?\s*\band\b|,?\s*\bor\b|,)\s*")
_ANSWER_WORD = re.compile(r"(?i)\banswer\b")
_FINAL_ANSWER = re.compile(r"(?i)\bfinal answer\b")
# between "answer" and its value: a few words ("to part (b)", "we get") and then "is", ":" or "=", or nothing
_ANSWER_LEAD = re.compile(r"[^\n$\\]{0,60}?(?:\bis\b|:|=)[ \t]*(?:\*\*)?[ \t]*|[ \t]*(?:\*\*)?[ \t]*")
# a bare LaTeX value after the anchor ("the answer is \frac{3}{4}."): up to the end of the sentence
_LATEX_VALUE = re.compile(r"(?:-\s*)?\\[A-Za-z][^\n$]*?(?=\.\s|\.?\s*$|\n|\$)")


def _math_value(match: re.Match) -> str:
    text = next(v for v in match.groupdict().values() if v is not None)
    return text.strip()


# digit groups after a leading group that is not 0: "0,111" is a decimal comma (0.111), not 111
_THOUSANDS = re.compile(r"-?[1-9]\d{0,2}(?:[ ,]\d{3})+(?:\.\d+)?")
_DECIMAL_COMMA = re.compile(r"-?\d+,\d+")


def _plain_value(match: re.Match) -> str:
    value = match.group("value").strip()
    # as math-verify reads plain numbers: "1 000" and "1,000" are thousands, "2,74" and "0,111" decimal commas
    if _THOUSANDS.fullmatch(value):
        value = value.replace(",", "").replace(" ", "")
    elif _DECIMAL_COMMA.fullmatch(value):
        value = value.replace(",", ".")
    return value + "\\%" if match.group("percent") else value


def _math_line(text: str, start: int) -> Optional[str]:
    """The rest of the line from ``start`` (its final period and ``**`` dropped) when it is all mathematics: LaTeX
    commands, single-letter variables, numbers and operators ("Answer: 3\\sqrt{13}", "6 - 5i", "p - q"), not
    words ("12 apples")."""
    line = _LINE_REST.match(text, start).group(0).strip().rstrip(".").strip("* ").strip()
    if not line or len(line) > 100 or "$" in line:
        return None
    words = _LATEX_TEXT.sub("", line)
    return line if _WORD.search(words) is None else None


def _value_at(text: str, start: int) -> Optional[str]:
    """The value stated at ``text[start]``: a math span, a line of bare mathematics, or a plain number/expression."""
    found = _MATH.match(text, start)
    if found:
        return _math_value(found)
    line = _math_line(text, start)
    if line:
        plain = _PLAIN.fullmatch(line)  # a bare number is read as one ("0,5" has a decimal comma, "1 000" is 1000)
        return _plain_value(plain) if plain else line
    found = _PLAIN.match(text, start)
    if found:
        return _plain_value(found)
    found = _LATEX_VALUE.match(text, start)
    return found.group(0).strip() if found else None


def _stated_after(tail: str, anchors: list[re.Match]) -> Optional[tuple[int, str]]:
    """(position, value) of the last anchor that states a value, trying the last eight anchors."""
    for anchor in reversed(anchors[-8:]):  # a later anchor without a value ("check the answer") yields to earlier
        lead = _ANSWER_LEAD.match(tail, anchor.end())
        for start in dict.fromkeys((lead.end(), anchor.end())):
            value = _value_at(tail, start)
            if value:
                return anchor.start(), value
    return None


def _extract_answer_is(response: str) -> Optional[str]:
    """The value stated right after the last "answer is" / "answer:" / "final answer ... =" that states one."""
    tail = response[-LENIENT_TAIL_CHARS:]
    found = _stated_after(tail, list(_ANSWER_WORD.finditer(tail)))
    return found[1] if found else None


def _extract_final_answer(response: str) -> Optional[str]:
    """The value after the last "final answer is" when no ``\\boxed`` comes after it: "The final answer is $10,455$.
    I hope it is correct." overrides an intermediate box (math-verify ranks this phrase above boxes too)."""
    tail = response[-LENIENT_TAIL_CHARS:]
    found = _stated_after(tail, list(_FINAL_ANSWER.finditer(tail)))
    if found is None or _last_match(BOXED, tail[found[0]:]) is not None:
        return None
    return found[1]


def _joined_spans(tail: str, spans: list[re.Match]) -> str:
    """The last math span and up to five spans right before it that only "and", "or" or commas part ("$1$, $2$ and
    $3$" gives "1, 2, 3"), joined by commas, as math-verify joins the parts of one answer."""
    parts = [spans[-1]]
    for span in reversed(spans[-6:-1]):
        if not _SPAN_SEPARATOR.fullmatch(tail, span.end(), parts[0].start()):
            break
        parts.insert(0, span)
    return ", ".join(_math_value(span) for span in parts)


def _extract_last_math(response: str) -> Optional[str]:
    """The rightmost LaTeX span (with the parts joined to it, see :func:`_joined_spans`) or plain number/expression:
    the one ending last; on a tie, the longer."""
    tail = response[-LENIENT_TAIL_CHARS:]
    spans = list(_MATH.finditer(tail))
    plain = _last_match(_PLAIN, tail)
    if plain is not None and (not spans or (plain.end(), -plain.start()) > (spans[-1].end(), -spans[-1].start())):
        return _plain_value(plain) or None
    return _joined_spans(tail, spans) or None if spans else None


EXTRACTORS = {"boxed": extract_boxed, "boxed_all": _extract_boxed_all, "gsm8k": _extract_gsm8k,
              "final_answer": _extract_final_answer,
              "answer_is": _extract_answer_is, "last_math": _extract_last_math}
r"""Answer extractors by name. ``boxed``: the last ``\boxed{...}`` or ``\fbox{...}``, brace-matched (also
``\boxed 5``); an unterminated last box gives no answer. ``boxed_all``: the last box joined with the boxes right
before it that only separators part (``\boxed{1}, \boxed{2}`` gives ``1, 2``). ``gsm8k``: the rest of the line after the last ``####``.
``final_answer``: the value after the last "final answer is" when no box follows it. ``answer_is``: the math span, LaTeX expression or number right after the last "answer" that states one ("the final
answer is $\frac34$", "Answer: 12"). ``last_math``: the rightmost ``$...$``, ``\(...\)``, ``\[...\]``, ``$$...$$``,
bare ``\frac{a}{b}``, or plain number or arithmetic expression."""


def check_extraction(extraction: str) -> tuple[str, ...]:
    """The extractor chain of an extraction mode (:data:`EXTRACTION_MODES`), or ``ValueError`` naming the modes."""
    if extraction not in EXTRACTION_MODES:
        raise ValueError(f"extraction must be one of {sorted(EXTRACTION_MODES)}, got {extraction!r}")
    return EXTRACTION_MODES[extraction]


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


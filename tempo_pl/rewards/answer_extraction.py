r"""Answer extraction: the final answer a response states, found by string work in the calling process.

``\boxed{...}`` and ``####`` are read by :mod:`tempo_pl.rewards.boxed` (brace-matched, linear in the response
length).

Two extraction modes (:data:`EXTRACTION_MODES`): ``boxed`` reads ``\boxed{}`` and ``####`` only (the training
reward, as the reference); ``lenient`` falls back, when neither is there, to the value after the last "answer is" /
"answer:" and then to the last LaTeX span or plain number or expression, in the order of math-verify's own
extraction (its anchored patterns first, then the rightmost unanchored match). An expression written without math
delimiters is taken whole, not as its last number (``x^2 + 2*x + 1``, ``\tfrac83``, ``\mathrm{E}``, "Thus we get
\frac{\sqrt{21}}{5}."): the run of LaTeX, numbers, operators and variables around the last number, or ending the last
line, up to a prose word; math-verify parses it, as any answer, in ``$...$``. The fallbacks read the last
:data:`LENIENT_TAIL_CHARS` characters only, which keeps them linear and fast on any response.

Example::

    >>> extract_answer("... so the area is $\\boxed{\\frac{3}{4}}$.")
    '\\frac{3}{4}'
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Optional

from tempo_pl.rewards.boxed import BOXED, brace_depths, brace_group, extract_boxed, extract_gsm8k, last_match

DEFAULT_EXTRACTORS: tuple[str, ...] = ("boxed", "gsm8k")

EXTRACTION_MODES: dict[str, tuple[str, ...]] = {
    "boxed": DEFAULT_EXTRACTORS,
    "lenient": ("final_answer", "boxed_all", "gsm8k", "answer_is", "last_math"),
}
"""Extractor chains by mode: ``boxed`` for training rewards, ``lenient`` for evaluating answers written in prose."""

LENIENT_TAIL_CHARS = 4000
"""The prose fallbacks look at this many final characters: a final answer is stated last, and the bound keeps the
scan short on a runaway response."""

_BOX_SEPARATOR = re.compile(
    r"(?:\s|,|;|\band\b|\bor\b|\$|\\[()\[\],;!]|\\q?quad|\\text\{\s*(?:and|or|,)?\s*\})*"
)


def extract_boxed_all(response: str) -> Optional[str]:
    """The last box and the boxes right before it that only separators part ("\\boxed{-2} and \\boxed{1}" gives
    "-2, 1"), joined by commas: an answer of several parts boxed one by one, as math-verify's extraction joins them."""
    tail = response[-LENIENT_TAIL_CHARS:]
    boxes: list[tuple[int, int, str]] = []  # (start, end, content) of complete boxes, in order
    for match in BOXED.finditer(tail):
        i = match.end()
        while i < len(tail) and tail[i] in " \t":
            i += 1
        content = brace_group(tail, i) if i < len(tail) and tail[i] == "{" else None
        if content is not None:
            boxes.append((match.start(), i + len(content) + 2, content.strip()))
    if not boxes or last_match(BOXED, tail).start() != boxes[-1][0]:
        return extract_boxed(response)  # the last box is unterminated or unbraced: the single-box reading decides
    parts = [boxes[-1]]
    for box in reversed(boxes[:-1]):
        if box[1] > parts[0][0] or not _BOX_SEPARATOR.fullmatch(tail, box[1], parts[0][0]):
            break
        parts.insert(0, box)
    return ", ".join(content for _, _, content in parts) or None


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
_LATEX_TEXT = re.compile(r"\\(?:text|mathrm|textbf|mbox|begin|end)\{[^{}]*\}|\\[A-Za-z]+")
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


# ------------------------------------------------------------------ bare expressions (no math delimiters)

# a token of a bare expression: ASCII math characters (an escaped \$, spaces inside braces); a prose word outside
# LaTeX commands, punctuation alone, or a lone letter that no operator touches ("12 m", "a day") ends the expression
_TOKEN_CHARS = re.compile(r"(?:\\\$|[ \tA-Za-z0-9\\{}^_+\-*/=()\[\]|<>!',.:;%~&×÷·√∞≤≥≠±−π°])+")
_SUBSTANCE = re.compile(r"[A-Za-z0-9\\+\-*/=<>^&×÷·√∞≤≥≠±−π]")
_SYMBOL = re.compile(r"[+\-*/=<>^×÷·≤≥≠±−]+")  # an operator that cannot end an expression
_OPERATOR = re.compile(rf"{_SYMBOL.pattern}|\\[A-Za-z]+")  # a lone letter beside one is a variable: x \in, \pi r
_LETTER = re.compile(r"[A-Za-z]'*")
# what makes a run of tokens an answer rather than a stray symbol: a digit, a LaTeX command or an operator
_MATHY = re.compile(r"[\d\\^_+\-*/=<>|!%×÷·√∞≤≥≠±−π]")
_END_PUNCTUATION = ".,;:?*"
_MATH_TOKEN, _LETTER_TOKEN, _PROSE_TOKEN = "math", "letter", "prose"


def _tokens(text: str, lo: int, hi: int) -> list[tuple[int, int]]:
    """(start, end) of the whitespace-separated tokens of ``text[lo:hi]``; a space inside braces does not separate
    (``10\\text{ units}`` is one token). Linear in ``hi - lo``."""
    spans, start, depth, i, hi = [], None, 0, lo, min(hi, len(text))
    while i < hi:
        ch = text[i]
        if ch in " \t" and depth == 0:
            if start is not None:
                spans.append((start, i))
                start = None
        else:
            start = i if start is None else start
            if ch == "\\":
                i += 1  # an escaped character is part of the token
            elif ch in "{}":
                depth = depth + 1 if ch == "{" else max(0, depth - 1)
        i += 1
    if start is not None:
        spans.append((start, min(i, hi)))
    return spans


def _token_kind(token: str) -> str:
    depths = [depth for _, depth in brace_depths(token)]
    unbalanced = bool(depths) and (min(depths) < 0 or depths[-1] != 0)  # a brace never closed is no expression
    if unbalanced or not _TOKEN_CHARS.fullmatch(token) or not _SUBSTANCE.search(token):
        return _PROSE_TOKEN
    if _LETTER.fullmatch(token.strip(_END_PUNCTUATION)):
        return _LETTER_TOKEN
    return _PROSE_TOKEN if _WORD.search(_LATEX_TEXT.sub("", token)) else _MATH_TOKEN


class _Line:
    """The tokens of one stretch of a line, and the runs of mathematics among them."""

    def __init__(self, text: str, lo: int, hi: int):
        self.text, self.spans = text, _tokens(text, lo, hi)
        self.words = [text[a:b] for a, b in self.spans]
        self.kinds = [_token_kind(word) for word in self.words]

    def _operator(self, j: int, pattern: re.Pattern = _OPERATOR) -> bool:
        return 0 <= j < len(self.words) and pattern.fullmatch(self.words[j].strip(_END_PUNCTUATION)) is not None

    def joins(self, j: int) -> bool:
        """Whether token ``j`` belongs to an expression next to it: a single letter only beside an operator."""
        kind = self.kinds[j]
        return kind == _MATH_TOKEN or (kind == _LETTER_TOKEN and (self._operator(j - 1) or self._operator(j + 1)))

    def grow(self, first: int, last: int, left: bool = True) -> tuple[int, int]:
        """The maximal run of joining tokens around tokens ``first..last`` (rightwards only unless ``left``)."""
        while left and first > 0 and self.joins(first - 1):
            first -= 1
        while last + 1 < len(self.words) and self.joins(last + 1):
            last += 1
        return first, last

    def text_of(self, first: int, last: int) -> tuple[int, int, str]:
        """(start, end, text) of tokens ``first..last`` without operators at the ends (a leading minus stays) and
        without final punctuation or ``**``."""
        while (first <= last and self._operator(first, _SYMBOL)
               and self.words[first].strip(_END_PUNCTUATION) not in ("-", "−")):
            first += 1
        while last >= first and self._operator(last, _SYMBOL):
            last -= 1
        if first > last:
            return 0, 0, ""
        start, end = self.spans[first][0], self.spans[last][1]
        while end > start and self.text[end - 1] in _END_PUNCTUATION:
            end -= 1
        while start < end and self.text[start] == "*":
            start += 1
        return start, end, self.text[start:end]


def _as_value(text: str) -> str:
    plain = _PLAIN.fullmatch(text)  # a bare number is read as one ("0,5" has a decimal comma, "1 000" is 1000)
    return _plain_value(plain) if plain else text


def _bare_run_at(text: str, start: int) -> tuple[int, Optional[str]]:
    """(end, value) of the bare expression that begins at ``text[start]`` and ends at the first prose on its line
    ("x^2 + 2x + 1, which is a square" gives ``x^2 + 2x + 1``); ``(start, None)`` when none begins there."""
    line_end = text.find("\n", start, start + 200)
    line = _Line(text, start, start + 200 if line_end < 0 else line_end)
    if not line.words or not line.joins(0):
        return start, None
    _, end, value = line.text_of(*line.grow(0, 0, left=False))
    return (end, value) if _MATHY.search(value) else (start, None)


def _bare_line_end(tail: str, lo: int, whole_tail: bool) -> Optional[str]:
    """The run of mathematics that ends the last line of ``tail`` ("x^2 + 2*x + 1", "p - q", "Thus we get
    \\frac{\\sqrt3}{3}."), not before ``lo`` (the end of the last math span); a response of one letter (``E``) when
    ``whole_tail`` (``tail`` is the whole response)."""
    end = len(tail.rstrip())
    lo = max(lo, tail.rfind("\n", 0, end) + 1)
    line = _Line(tail, lo, end)
    if not line.words:
        return None
    last = len(line.words) - 1
    if last == 0 and whole_tail and not tail[:lo].strip() and line.kinds[0] != _PROSE_TOKEN:
        value = line.text_of(0, 0)[2]  # a response of one symbol: an answer choice such as E
        return _as_value(value) if value else None
    if not line.joins(last):
        return None
    value = line.text_of(*line.grow(last, last))[2]
    return _as_value(value) if _MATHY.search(value) else None


def _plain_run(tail: str, plain: re.Match, spans: list[re.Match]) -> str:
    """The plain number or expression ``plain`` grown to the bare expression around it on its line, between the
    math spans ("x^2 + 2x + 1 is the result" gives ``x^2 + 2x + 1``, not ``1``)."""
    lo = max([tail.rfind("\n", 0, plain.start()) + 1] + [s.end() for s in spans if s.end() <= plain.start()])
    line_end = tail.find("\n", plain.end())
    hi = min([len(tail) if line_end < 0 else line_end] + [s.start() for s in spans if s.start() >= plain.end()])
    line = _Line(tail, lo, hi)
    inside = [j for j, (a, b) in enumerate(line.spans) if a < plain.end() and b > plain.start()]
    if not inside or not all(line.joins(j) for j in inside):
        return _plain_value(plain)
    start, end, value = line.text_of(*line.grow(inside[0], inside[-1]))
    if not value or (start >= plain.start() and end <= plain.end()):
        return _plain_value(plain)
    return _as_value(value)


def _value_at(text: str, start: int) -> Optional[str]:
    """The value stated at ``text[start]``: a math span, a line of bare mathematics, the bare expression that starts
    there, or a plain number/expression."""
    span = _MATH.match(text, start)
    if span and span.group("frac") is None:
        return _math_value(span)
    line = _math_line(text, start)
    if line:
        return _as_value(line)
    run_end, run = _bare_run_at(text, start)
    found = span or _PLAIN.match(text, start)  # a bare \frac or number, unless an expression goes on after it
    if run and (found is None or run_end > found.end()):
        return _as_value(run)
    if found:
        return _math_value(found) if found is span else _plain_value(found)
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
    if found is None or last_match(BOXED, tail[found[0]:]) is not None:
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
    delimited = [span for span in spans if span.group("frac") is None]  # a bare \frac is part of an expression
    bare = _bare_line_end(tail, delimited[-1].end() if delimited else 0, len(tail) == len(response))
    if bare:
        return bare
    plain = last_match(_PLAIN, tail)
    if plain is not None and (not spans or (plain.end(), -plain.start()) > (spans[-1].end(), -spans[-1].start())):
        return _plain_run(tail, plain, delimited) or None
    return _joined_spans(tail, spans) or None if spans else None


EXTRACTORS = {"boxed": extract_boxed, "boxed_all": extract_boxed_all, "gsm8k": extract_gsm8k,
              "final_answer": _extract_final_answer,
              "answer_is": _extract_answer_is, "last_math": _extract_last_math}
r"""Answer extractors by name. ``boxed``: the last ``\boxed{...}`` or ``\fbox{...}``, brace-matched (also
``\boxed 5``); an unterminated last box gives no answer. ``boxed_all``: the last box joined with the boxes right
before it that only separators part (``\boxed{1}, \boxed{2}`` gives ``1, 2``). ``gsm8k``: the rest of the line after
the last ``####``. ``final_answer``: the value after the last "final answer is" when no box follows it.
``answer_is``: the math span, LaTeX expression or number right after the last "answer" that states one ("the final
answer is $\frac34$", "Answer: 12", "the answer is x^2 + 2x + 1, a square" gives ``x^2 + 2x + 1``). ``last_math``: a
last line that ends in a bare expression (read whole: ``x^2 + 2*x + 1``), else the rightmost ``$...$``,
``\(...\)``, ``\[...\]``, ``$$...$$``, bare ``\frac{a}{b}``, or plain number or arithmetic expression, grown to the
bare expression around it ("x^2 + 2x + 1 is the result" gives ``x^2 + 2x + 1``, not ``1``)."""


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


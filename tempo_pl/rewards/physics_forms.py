r"""Normal forms of a physics answer for the rule tier (:mod:`tempo_pl.rewards.physics_rules`): the string form
(``\text{}`` wrappers, ``\left``/``\right``, ``\dfrac``, degree and percent signs, a short ``k =`` prefix and a list
of unit words removed) and the sympy form (LaTeX to text, unit words removed, lower case), as the reference reward
normalises answers (docs/algorithm.md, "Physics grading").

Loaded by path inside a grading worker like ``physics_rules.py``: the standard library and pylatexenc only.

Example::

    >>> string_form("\\text{ 3.0 }"), string_form("k = 0.5"), sympy_form("$1{,}000$ kg")
    ('3.0', '\\frac{1}{2}', '1000')
"""

from __future__ import annotations

import re
from typing import Optional

# unit and filler words removed from answers, in the order they are tried (each also with a plural "s"); the entries
# are regular expressions, as they are in the reference ("q ." matches "q ." and "q x")
_UNIT_WORDS = (
    "east|degree|mph|kmph|ft|m sqaure| m east|sq m|deg|mile|q .|monkey|prime|ratio|profit of rs|rd|o|p . m|lb|tile|"
    "per|lt|gain|ab|way|west|no change|men|soldier|pie|bc|excess|st|inches|noon|percent|by|gal|kmh|acre|rise|a . m|"
    "th|π r 2|sq|mark|toy|coin|sq . m|gallon|° f|profit|minw|yr|women|feet|am|pm|hr|cu cm|square|v â € ™|are|rupee|"
    "rounds|cubic|cc|mtr|ohm|number|kmph|day|hour|minute|min|second|man|woman|sec|cube|mt|sq inch|mp|∏ cm ³|hectare|"
    "more|sec|unit|cu . m|cm 2|rs .|rs|kg|month|cm|mm|apple|liter|loss|yard|pure|year|increase|decrease|less|Surface|"
    "litre|pi sq m|s .|metre|meter|inch|kilogram|second|ampere|A|K|mol|cd|N|J|W|Pa|Hz|C|V|Ω|F|T|H|eV|kW·h|atm|bar|°C"
).split("|")
_UNIT_PATTERNS = [re.compile(r"(^|\W)" + word + r"($|\W)")
                  for word in _UNIT_WORDS + [w + "s" for w in _UNIT_WORDS]]
_BRACKETS = "()[]"
_THOUSANDS = re.compile(r"(\d)(,)(\d\d\d)($|\D)")


def _strip_units(text: str) -> str:
    for _ in range(2):
        for pattern in _UNIT_PATTERNS:
            stripped = pattern.sub(r"\1\2", text)
            if stripped:
                text = stripped
    return text


# ------------------------------------------------------------------------------------------ string normal form
def _braced_fracs(text: str) -> str:
    r"""``\frac12`` -> ``\frac{1}{2}``, ``\frac1{7}`` -> ``\frac{1}{7}``; raises IndexError on a bare ``\frac``."""
    head, *rest = text.split("\\frac")
    out = [head]
    for piece in rest:
        if piece[0] == "{":
            out.append("\\frac" + piece)
            continue
        if len(piece) < 2:
            return text
        first, second, tail = piece[0], piece[1], piece[2:]
        out.append("\\frac{" + first + "}" + (second if second == "{" else "{" + second + "}") + tail)
    return "".join(out)


def _slash_fraction(text: str) -> str:
    parts = text.split("/")
    if len(parts) != 2:
        return text
    try:
        a, b = int(parts[0]), int(parts[1])
    except ValueError:
        return text
    return "\\frac{" + str(a) + "}{" + str(b) + "}" if text == f"{a}/{b}" else text


def _braced_sqrt(text: str) -> str:
    if "\\sqrt" not in text:
        return text
    head, *rest = text.split("\\sqrt")
    return head + "".join("\\sqrt" + (p if p[0] == "{" else "{" + p[0] + "}" + p[1:]) for p in rest)


def _string_form(text: str) -> str:
    """The string normal form; raises on the malformed inputs the caller then keeps as they are."""
    text = text.replace("\n", "").replace("\\!", "").replace("\\\\", "\\")
    text = re.sub(r"\\begin\{array\}\{.*?\}", r"\\begin{pmatrix}", text)
    text = re.sub(r"\\end\{array\}", r"\\end{pmatrix}", text).replace("bmatrix", "pmatrix")
    text = text.replace("tfrac", "frac").replace("dfrac", "frac")
    text = text.replace("\\neq", "\\ne").replace("\\leq", "\\le").replace("\\geq", "\\ge")
    text = text.replace("\\left", "").replace("\\right", "")
    without_text_unit = re.sub(r"\\text{.*?}$", "", text).strip()
    if without_text_unit:
        text = without_text_unit
    text = _strip_units(text)
    text = text.replace("^{\\circ}", "").replace("^\\circ", "").replace("\\$", "")
    if "\\text{ " in text:
        pieces = text.split("\\text{ ")
        if len(pieces) != 2:
            raise ValueError("several \\text{ } units")
        text = pieces[0]
    text = text.replace("\\%", "").replace(" .", " 0.").replace("{.", "{0.")
    if not text:
        return text
    if text[0] == ".":
        text = "0" + text
    sides = text.split("=")
    if len(sides) == 2 and len(sides[0]) <= 2:
        text = sides[1]
    text = _braced_sqrt(text).replace(" ", "")
    text = _braced_fracs(text)
    if text == "0.5":
        text = "\\frac{1}{2}"
    return _slash_fraction(text)


def string_form(answer: str) -> str:
    r"""An answer as the string rule compares it: ``\text{...}`` unwrapped, then :func:`_string_form` (the
    unwrapped answer itself where that fails)."""
    answer = answer.strip()
    wrapped = re.search(r"^\\text\{(?P<text>.+?)\}$", answer)
    if wrapped is not None:
        answer = wrapped.group("text").strip()
    try:
        return _string_form(answer)
    except Exception:  # a malformed \frac, \sqrt or unit: compared as written
        return answer


# ------------------------------------------------------------------------------------------- sympy normal form
def _latex_to_text(text: str) -> str:
    from pylatexenc import latex2text

    text = text.replace("\\tfrac", "\\frac").replace("\\dfrac", "\\frac").replace("\\frac", " \\frac")
    text = latex2text.LatexNodes2Text().latex_to_text(text)
    for symbol, word in (("√", "sqrt"), ("π", "pi"), ("∞", "inf"), ("∪", "U"), ("·", "*"), ("×", "*")):
        text = text.replace(symbol, word)
    return text.strip()


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _integral(value: float) -> bool:
    try:
        return abs(value - int(round(value))) <= 1e-7
    except (OverflowError, ValueError):
        return False


def _without_thousands_commas(text: str) -> str:
    while True:
        joined = _THOUSANDS.sub("\\1\\3\\4", text)
        if joined == text:
            return joined
        text = joined


def _as_int_text(text: str) -> Optional[str]:
    try:
        value = float(_without_thousands_commas(text))
    except ValueError:
        return None
    if not _integral(value):
        return None
    return str(int(float(text.replace(",", ""))))


def sympy_form(answer: str) -> str:
    """An answer as the sympy rule reads it (see the module docstring)."""
    wrapped = re.search(r"^\\text\{(?P<text>.+?)\}$", answer)
    if wrapped is not None:
        answer = wrapped.group("text")
    for old, new in (("\\%", "%"), ("\\$", "$"), ("$", ""), ("%", ""), (" or ", " , "), (" and ", " , "),
                     ("million", "*10^6"), ("billion", "*10^9"), ("trillion", "*10^12")):
        answer = answer.replace(old, new)
    answer = _strip_units(answer)
    answer = re.sub(r"\^ *\\circ", "", answer)
    if answer[:1] == "{" and answer[-1:] == "}":
        answer = answer[1:-1]
    answer = re.sub(",\\\\! *", "", answer)
    if _is_number(answer) and _integral(float(answer)):
        answer = str(int(round(float(answer))))
    if "\\" in answer:
        try:
            answer = _latex_to_text(answer)
        except Exception:  # pylatexenc gives up on some inputs: keep the LaTeX
            pass
    answer = re.sub("- *", "-", answer)
    answer = re.sub("([0-9]) +([0-9])", "\\1+\\2", answer)  # a mixed number 7 3/4 is 7+3/4
    answer = answer.replace(" ", "").replace("{", "").replace("}", "").lower()
    as_int = _as_int_text(answer)
    return answer if as_int is None else as_int


def elements(text: str) -> list[str]:
    """The elements of a bracketed tuple or interval, or ``[text]``."""
    text = _without_thousands_commas(text)
    if not text:
        return []
    inner = text[1:-1]
    if len(text) > 2 and text[0] in _BRACKETS and text[-1] in _BRACKETS and not any(c in inner for c in _BRACKETS):
        return [element.strip() for element in inner.split(",")]
    return [text]

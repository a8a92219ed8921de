r"""The rule tier of the physics grader: does one boxed answer equal one gold answer, by string and sympy rules.

The rules are the reference reward's (``physics_prime``, docs/algorithm.md "Physics grading"), written here from
their description: both answers are normalised twice, once as a string (``\text{}`` wrappers, ``\left``/``\right``,
``\dfrac``, degree signs, percent signs, a short ``k =`` prefix and a list of unit words stripped) and once for sympy
(LaTeX to text, unit words stripped, lower case); equal strings are equal; otherwise tuples are compared element by
element, each element as a multiple-choice letter, as true/false, or as a number at a relative precision of 2e-3
(scientific notation compared by mantissa and exponent), with ``pi`` tried as pi, 3.14 and 180. The part after
the last ``=`` is tried as well. Model output is never executed: where the reference calls ``eval`` on a string
with ``pi`` substituted, :func:`_arithmetic` evaluates numbers and ``+ - * / **`` only.

This file runs inside a grading worker (:mod:`tempo_pl.rewards.grading_worker` loads it by path), so it imports the
standard library, sympy and pylatexenc only, and it may be slow: the worker bounds each call in wall-clock time.

Example::

    >>> rules_equal("2\\pi", "6.283"), rules_equal("1.5e-3", "1.502\\times10^{-3}"), rules_equal("5 m/s", "5")
    (True, True, False)
"""

from __future__ import annotations

import ast
import math
import operator
import re
from decimal import Decimal, localcontext
from functools import lru_cache
from typing import Optional, Union

PRECISION = 2e-3
"""Relative tolerance of numeric answers (the reference's ``precision``), widened by 1% as it is."""

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
_UNIT_PATTERNS = [re.compile(r"(^|\W)" + word + r"($|\W)") for word in _UNIT_WORDS + [w + "s" for w in _UNIT_WORDS]]
_LETTERS = tuple(chr(c) for c in range(ord("A"), ord("Z") + 1))
_TRUE_WORDS, _FALSE_WORDS = ("TRUE", "YES", "T", "Y"), ("FALSE", "NO", "F", "N")
_CJK_TRUE, _CJK_FALSE = ("是", "对", "正确", "能"), ("否", "错", "错误", "不能")
_BRACKETS = "()[]"
_RISKY_SUBSTRINGS = ("^{", "^(")  # towers sympy may never finish
_RISKY_PATTERNS = (re.compile(r"\^[0-9]+\^"), re.compile(r"\^[0-9][0-9]+"))
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


def _elements(text: str) -> list[str]:
    """The elements of a bracketed tuple or interval, or ``[text]``."""
    text = _without_thousands_commas(text)
    if not text:
        return []
    inner = text[1:-1]
    if len(text) > 2 and text[0] in _BRACKETS and text[-1] in _BRACKETS and not any(c in inner for c in _BRACKETS):
        return [element.strip() for element in inner.split(",")]
    return [text]


def _is_fraction(text: str) -> bool:
    return bool(re.search(r"^-?[0-9]+.?/0*[1-9][0-9]*.?$", text))


# ------------------------------------------------------------------------------------------- element judges
def choice_equal(pred: str, gold: str) -> bool:
    """A multiple-choice element: the same text, ``C.``/``C:`` for ``C``, or ``'C'`` quoted inside the answer."""
    if pred == gold:
        return True
    if pred.startswith("[") and pred.endswith("]"):
        pred = pred.strip("[]")
    if not pred:
        return False
    if pred[0] in _LETTERS and len(pred) > 1 and pred[1] in ".:":
        return pred[0] == gold
    return f"'{gold}'" in pred


def _truth(word: str) -> Optional[str]:
    if word in _TRUE_WORDS:
        return "TRUE"
    if word in _FALSE_WORDS:
        return "FALSE"
    return None


def true_false_equal(pred: str, gold: str) -> bool:
    """A true/false element: TRUE/YES/T/Y against FALSE/NO/F/N (any case; the Chinese words for yes and no)."""
    if any("\u4e00" <= ch <= "\u9fff" for ch in pred):
        pred = "TRUE" if pred in _CJK_TRUE else "FALSE" if pred in _CJK_FALSE else pred
    else:
        pred = pred.upper()
    said, meant = _truth(pred), _truth(gold.upper())
    return said is not None and meant is not None and said == meant


_ARITHMETIC = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
               ast.Pow: operator.pow, ast.USub: operator.neg, ast.UAdd: operator.pos}


def _arithmetic(text: str) -> Optional[float]:
    """The value of an expression of number literals and ``+ - * / **``; None for anything else (never executed)."""
    def value(node: ast.AST) -> Union[int, float]:
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            return node.value
        if isinstance(node, ast.UnaryOp) and type(node.op) in _ARITHMETIC:
            return _ARITHMETIC[type(node.op)](value(node.operand))
        if isinstance(node, ast.BinOp) and type(node.op) in _ARITHMETIC:
            left, right = value(node.left), value(node.right)
            if isinstance(node.op, ast.Pow) and abs(right) > 1000:
                raise OverflowError("exponent too large")
            return _ARITHMETIC[type(node.op)](left, right)
        raise ValueError("not arithmetic")

    try:
        return value(ast.parse(text, mode="eval").body)
    except (SyntaxError, ValueError, TypeError, ZeroDivisionError, OverflowError, RecursionError, MemoryError):
        return None


def _with_pi(text: str, pi: float) -> Union[str, float]:
    """Every ``pi`` as ``*<pi>`` after a digit, ``1*<pi>`` otherwise, then evaluated when that is plain arithmetic."""
    if "pi" not in text:
        return text
    index = text.find("pi")
    while index != -1:
        factor = f"*{pi}" if index > 0 and text[index - 1].isdigit() else f"1*{pi}"
        text = text[:index] + factor + text[index + 2:]
        index = text.find("pi", index + 1)
    result = _arithmetic(text)
    return text if result is None else result


def _decimals(x: float, tol: float = 1e-6) -> int:
    """Decimal places of ``x`` that matter: up to the first one after which rounding changes it by <= ``tol``."""
    with localcontext() as context:
        context.prec = 20
        digits = format(Decimal(str(x)).normalize(), "f")
    if "." not in digits:
        return 0
    kept = 0
    for i, _ in enumerate(digits.split(".")[1]):
        kept += 1
        if abs(x - round(x, i + 1)) <= tol:
            break
    return kept


def _parse(text: str):
    from sympy.parsing import sympy_parser

    transformations = sympy_parser.standard_transformations + (sympy_parser.implicit_multiplication_application,)
    return sympy_parser.parse_expr(text.replace("^", "**"), transformations=transformations, evaluate=False)


def _scientific(value: float) -> str:
    mantissa, exponent = f"{value:.2e}".split("e")
    return f"{mantissa}*10**{int(exponent)}"


def _is_scientific(expr) -> bool:
    from sympy import Mul, Pow

    return isinstance(expr, Mul) and isinstance(expr.args[1], Pow) and expr.args[1].args[0] == 10


def _mantissas_match(a, b) -> bool:
    """Two scientific-notation expressions: the same exponent and mantissas within the tolerance (rounded alike)."""
    from sympy import N

    base_a, exp_a = N(a.args[0]), N(a.args[1].args[1])
    base_b, exp_b = N(b.args[0]), N(b.args[1].args[1])
    places = min(_decimals(base_b), _decimals(base_a))
    return exp_a == exp_b and abs(round(base_a, places) - round(base_b, places)) <= PRECISION * 1.01


def _allowed(text: str) -> bool:
    letters = {c for c in text.replace("sqrt", "").replace("frac", "") if c.isalpha()}
    if len(letters) > 2:
        return False
    return not any(s in text for s in _RISKY_SUBSTRINGS) and not any(p.search(text) for p in _RISKY_PATTERNS)


def numbers_equal(gold: Union[str, float], pred: Union[str, float]) -> bool:
    """Numeric or symbolic equality at :data:`PRECISION` (relative), scientific notation by mantissa and exponent."""
    from sympy import N, simplify

    try:
        if pred == gold:
            return True
        p, g = float(pred), float(gold)
        places = min(_decimals(g), _decimals(p))
        p_rounded, g_rounded = round(p, places), round(g, places)
        if abs((p_rounded - g_rounded) / g_rounded) <= PRECISION * 1.01:
            return True
        sci_p, sci_g = _parse(_scientific(p)), _parse(_scientific(g))
        if _is_scientific(sci_p) and _is_scientific(sci_g) and _mantissas_match(sci_p, sci_g):
            return True
    except Exception:  # not numbers (or a zero gold): the symbolic comparison below
        pass
    try:
        if not (_allowed(gold) and _allowed(pred)):
            return False
        expr_g, expr_p = _parse(gold), _parse(pred)
        if abs(N(simplify((expr_g - expr_p) / (expr_g if expr_g != 0 else 1)))) <= PRECISION * 1.01:
            return True
        if _is_scientific(expr_p) != _is_scientific(expr_g):
            if _is_scientific(expr_p):
                expr_g = _parse(_scientific(float(gold)))
            else:
                expr_p = _parse(_scientific(float(pred)))
        if _is_scientific(expr_p) and _is_scientific(expr_g):
            return _mantissas_match(expr_p, expr_g)
        return N(expr_p) == N(expr_g)
    except Exception:  # sympy cannot read or compare them: not equal
        return False


def _element_equal(pred: str, gold: str) -> bool:
    if _is_fraction(gold) and _is_fraction(pred):
        return gold == pred  # an unreduced fraction is not the reduced one
    if choice_equal(pred, gold) or true_false_equal(pred, gold):
        return True
    if "pi" in pred or "pi" in gold:
        return any(numbers_equal(_with_pi(gold, pi), _with_pi(pred, pi)) for pi in (math.pi, 3.14, 180))
    return numbers_equal(gold, pred)


def sympy_equal(pred: str, gold: str) -> bool:
    """The sympy rule on raw answers: equal sympy forms, or tuples of the same brackets equal element by element."""
    g, p = sympy_form(gold), sympy_form(pred)
    if g == p:
        return True
    if not p:
        return False
    gold_parts, pred_parts = _elements(g), _elements(p)
    if len(gold_parts) > 1 and (g[0] != p[0] or g[-1] != p[-1]):
        return False
    if len(gold_parts) != len(pred_parts):
        return False
    return all(_element_equal(pe, ge) for pe, ge in zip(pred_parts, gold_parts))


def _unboxed(text: str) -> Optional[str]:
    start = max(text.rfind("\\boxed"), -1)
    if start < 0:
        start = text.rfind("\\fbox")
        if start < 0:
            return None
    depth = 0
    for i in range(start, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if text[i] == "}" and depth == 0:
            box = text[start:i + 1]
            return box[len("\\boxed{"):-1] if box.startswith("\\boxed{") else None
    return None


@lru_cache(maxsize=8192)
def rules_equal(pred: str, gold: str) -> bool:
    r"""The rule tier on one part: the string rule, then the sympy rule on the whole answers, then on the text after
    the last ``=`` of each (when that differs from what was compared). A boxed gold is unboxed first."""
    if "\\boxed" in gold:
        inner = _unboxed(gold)
        if inner is not None:
            gold = inner
    pred_string = string_form(pred)
    if pred_string == string_form(gold):
        return True
    pred_tail, gold_tail = pred.split("=")[-1], gold.split("=")[-1]
    if sympy_equal(pred, gold):
        return True
    return (pred_tail != pred_string or gold_tail != gold) and sympy_equal(pred_tail, gold_tail)

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
import importlib.util
import math
import operator
import os
import re
import sys
from decimal import Decimal, localcontext
from functools import lru_cache
from typing import Optional, Union


def _sibling(name: str):
    """A module of this folder, loaded by path (inside a worker the package's ``__init__`` would import torch)."""
    key = f"_tempo_pl_{name}"
    if key not in sys.modules:
        path = os.path.join(os.path.dirname(os.path.abspath(__file__)), f"{name}.py")
        spec = importlib.util.spec_from_file_location(key, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[key] = module
        spec.loader.exec_module(module)
    return sys.modules[key]


_forms = _sibling("physics_forms")
string_form, sympy_form, split_elements = _forms.string_form, _forms.sympy_form, _forms.elements

PRECISION = 2e-3
"""Relative tolerance of numeric answers (the reference's ``precision``), widened by 1% as it is."""

_LETTERS = tuple(chr(c) for c in range(ord("A"), ord("Z") + 1))
_TRUE_WORDS, _FALSE_WORDS = ("TRUE", "YES", "T", "Y"), ("FALSE", "NO", "F", "N")
_CJK_TRUE, _CJK_FALSE = ("是", "对", "正确", "能"), ("否", "错", "错误", "不能")
_RISKY_SUBSTRINGS = ("^{", "^(")  # towers sympy may never finish
_RISKY_PATTERNS = (re.compile(r"\^[0-9]+\^"), re.compile(r"\^[0-9][0-9]+"))


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
    gold_parts, pred_parts = split_elements(g), split_elements(p)
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

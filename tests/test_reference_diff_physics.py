"""Differential test: the physics grader's rule tier against the reference's own rules (``rm_p1.py``'s ``grade``
without its judge: the string normalisation with units, the sympy equality at 2e-3, the MC/TF judges).

Like ``tests/test_reference_diff.py`` this reads the reference from ``TEMPO_REFERENCE_DIR`` at test time (skipped
without it): ``verl/utils/reward_score/rm_p1.py`` is parsed with ``ast`` (its ``__main__`` block dropped) and
executed with a stub ``openai`` module (only its judge uses it). The cases are generated: numbers in several
notations and precisions, with and without units, ``k = `` prefixes, fractions, pi, tuples, letters and true/false
words. Every case must agree; the known differences are listed in docs/algorithm.md ("Physics grading") and are
outside what is generated here.
"""

from __future__ import annotations

import ast
import itertools
import os
import random
import sys
import types
from pathlib import Path

import pytest

from tempo_pl.rewards.physics_rules import rules_equal

REFERENCE_ENV = "TEMPO_REFERENCE_DIR"
RM_P1 = Path("verl/utils/reward_score/rm_p1.py")

pytestmark = pytest.mark.skipif(not os.environ.get(REFERENCE_ENV), reason=f"{REFERENCE_ENV} is not set")


@pytest.fixture(scope="module")
def reference_grade():
    pytest.importorskip("pylatexenc")
    path = Path(os.environ[REFERENCE_ENV]) / RM_P1
    tree = ast.parse(path.read_text(), filename=str(path))
    body = [node for node in tree.body
            if not (isinstance(node, ast.If) and "__name__" in ast.unparse(node.test))]
    stub = types.ModuleType("openai")
    stub.OpenAI = object
    saved = sys.modules.get("openai")
    sys.modules["openai"] = stub
    try:
        namespace: dict = {"__name__": "reference_rm_p1"}
        exec(compile(ast.Module(body=body, type_ignores=[]), str(path), "exec"), namespace)
    finally:
        if saved is None:
            sys.modules.pop("openai", None)
        else:
            sys.modules["openai"] = saved
    return lambda pred, gold: bool(namespace["grade"](pred, gold, True, None, use_xverify=False)[0])


def generated_cases(seed: int = 0, count: int = 400) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    cases = []
    units = ["", " m", " km", "\\,\\text{m/s}", " \\text{ J}", " kg", " N", "^\\circ", "\\%", " eV"]
    for _ in range(count):
        value = rng.choice([rng.uniform(-1000, 1000), rng.uniform(0, 1), 10 ** rng.randint(-9, 9) * rng.uniform(1, 10)])
        gold_digits, pred_digits = rng.randint(0, 4), rng.randint(0, 5)
        noise = value * rng.choice([0, 0, 1e-4, 1e-3, 2e-3, 5e-3, 1e-2, 0.1])
        gold = f"{value:.{gold_digits}f}" if abs(value) >= 1e-3 else f"{value:.{gold_digits}e}"
        pred_value = value + noise
        style = rng.randint(0, 3)
        if style == 0:
            pred = f"{pred_value:.{pred_digits}f}"
        elif style == 1:
            pred = f"{pred_value:.{pred_digits}e}"
        elif style == 2:
            mantissa, exponent = f"{pred_value:.{pred_digits}e}".split("e")
            pred = f"{mantissa} \\times 10^{{{int(exponent)}}}"
        else:
            pred = f"x = {pred_value:.{pred_digits}f}"
        cases.append((pred + rng.choice(units), gold))
    fixed = ["A", "B", "C", "True", "False", "T", "F", "yes", "no", "\\frac{1}{2}", "0.5", "1/2", "2/4", "\\pi",
             "2\\pi", "6.28", "3.14", "\\sqrt{2}", "1.414", "(1, 2)", "(1,2.0)", "[1,2]", "k=3", "3", "3.0", "v = 5",
             "5 m/s", "\\text{5}", "1,000", "1000", "10^{3}", "1e3", "\\dfrac{3}{4}", "0.75", "2 \\times 10^{-3}",
             "0.002", "-1", "- 1", "90^\\circ", "90", "50\\%", "50", "", "\\text{A}", "\\frac{\\sqrt{3}}{2}",
             "0.866", "1.5 \\times 10^{-3} \\mathrm{m}", "(0, 1]", "\\infty"]
    cases += list(itertools.product(fixed, fixed))
    return cases


def test_rule_tier_agrees_with_the_reference_on_generated_cases(reference_grade):
    cases = generated_cases()
    disagreements = [(p, g, reference_grade(p, g)) for p, g in cases if rules_equal(p, g) != reference_grade(p, g)]
    decided_right = sum(reference_grade(p, g) for p, g in cases)
    print(f"\n{len(cases)} cases, reference right on {decided_right}, disagreements: {len(disagreements)}")
    assert not disagreements, disagreements[:20]

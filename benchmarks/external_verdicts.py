r"""Build answer-equivalence verdict rows for ``benchmarks/grading_agreement.py --verdicts`` from another project's
test tables, read at run time from a checkout of that project (nothing of theirs is stored in this repository).

Sources (``SOURCE`` argument) and what a row's ``options`` record about the grader that wrote its verdict:

- ``math-verify`` (github.com/huggingface/Math-Verify, ``tests/*.py``): every ``pytest.mark.parametrize`` table with
  ``gold`` and ``pred`` columns, and the literal ``assert compare_strings(...) == ...`` lines. The settings of the
  call that checks the row (``match_types``, ``precision``, ``strict``, ``allow_set_relation_comp``; the defaults
  of the suite's own ``compare_strings``, or math-verify's ``parse``/``verify`` defaults) go into ``options``. Gold
  and pred are both parsed by math-verify's extraction there, so the gold is marked ``"gold_as": "response"``.
- ``nemo-skills`` (github.com/NVIDIA/NeMo-Skills, ``tests/test_math_equal.py``): the ``output_pair`` tables of
  ``math_equal``, one row per call in the test (both argument orders; the first argument is the gold). Both sides
  are bare answers that ``math_equal`` wraps in ``$...$`` and reads with LaTeX extraction (``"gold_as":
  "answer"``, ``"match_types": ["latex"]``, ``"whole_answer_in_math_mode": true``). Its own normalisation beyond
  math-verify's is recorded where it changes the row's text (``extra_normalization``): a percent sign dropped after
  a number (``10%`` = ``10``), a final ``.`` or ``\`` dropped, a single option letter A-J compared as a
  multiple-choice option. Table entries that are not literals (``5 / 2``) or are None are skipped and counted.
- ``simple-evals`` (github.com/openai/simple-evals, ``common.py``): the worked examples of ``EQUALITY_TEMPLATE``,
  the instructions of the LLM judge that grades its MATH eval (``Expression 1`` is the gold). An example whose note
  says the verdict is not mathematical equality ("these are actually equal") is marked ``"simplification":
  "trivial only"``.

- ``hendrycks-math`` (github.com/hendrycks/math, ``modeling/math_equivalence_test.py``): the unit tests of MATH's own
  ``is_equiv`` (string comparison after ``_strip_string``), called as the MATH evaluation calls it, ``is_equiv(model
  output, answer)``: the second argument is the gold, a bare answer. Its normalisation beyond math-verify's is
  recorded where it bears on the pair (``extra_normalization``): a percent sign dropped, ``\\`` read as ``\``,
  comma lists compared in order (as strings).

A source whose grader compares two bare answers (all but math-verify's suite) marks its rows ``"pred_as":
"answer"``: ``grading_agreement.py`` then grades the prediction as the answer it is (``\boxed{pred}``, so that no
extraction is involved) unless told ``--pred-as-response``.

The rule that decides which rows judge math-verify's default notion of equivalence lives in
``grading_agreement._default_options``; its clauses for the NeMo-Skills, hendrycks/math and simple-evals settings were
written before any of their rows was graded.

``CHECKOUT`` is a work tree or a bare git directory (a mirror without a work tree), read at ``HEAD``. Run::

    python benchmarks/external_verdicts.py math-verify /path/to/Math-Verify -o /tmp/math_verify_tests.jsonl
    python benchmarks/external_verdicts.py nemo-skills /path/to/NeMo-Skills -o /tmp/nemo_skills_tests.jsonl
    python benchmarks/external_verdicts.py hendrycks-math /path/to/math -o /tmp/hendrycks_math_tests.jsonl
    python benchmarks/external_verdicts.py simple-evals /path/to/simple-evals -o /tmp/simple_evals_examples.jsonl
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

# math-verify's ``parse``/``verify`` defaults, for tests that call them without the suite's helper
MATH_VERIFY_DEFAULTS = {"match_types": ["latex", "expr"], "precision": 6, "strict": True,
                        "allow_set_relation_comp": False}
_SETTINGS = tuple(MATH_VERIFY_DEFAULTS)


class Checkout:
    """Files of a work tree or a bare git directory (read at ``HEAD``)."""

    def __init__(self, path: str):
        self.path = Path(path)
        if not self.path.exists():
            raise SystemExit(f"external_verdicts: {path} does not exist")
        self.bare = not (self.path / ".git").exists() and (self.path / "HEAD").is_file()

    def _git(self, *args: str) -> str:
        return subprocess.run(["git", f"--git-dir={self.path}", *args], check=True, capture_output=True,
                              text=True).stdout

    def revision(self) -> str:
        try:
            return self._git("rev-parse", "HEAD").strip() if self.bare else subprocess.run(
                ["git", "-C", str(self.path), "rev-parse", "HEAD"], check=True, capture_output=True, text=True
            ).stdout.strip()
        except (subprocess.CalledProcessError, FileNotFoundError):
            return "unknown"

    def files(self, folder: str) -> list[str]:
        if self.bare:
            names = self._git("ls-tree", "--name-only", f"HEAD:{folder}").split()
        else:
            names = [p.name for p in (self.path / folder).iterdir()]
        return sorted(f"{folder}/{n}" for n in names if n.endswith(".py"))

    def read(self, name: str) -> str:
        try:
            return self._git("show", f"HEAD:{name}") if self.bare else (self.path / name).read_text()
        except (subprocess.CalledProcessError, FileNotFoundError) as err:
            raise SystemExit(f"external_verdicts: {self.path} has no {name} ({err})") from None


def _literal(node: ast.AST) -> Any:
    return ast.literal_eval(node)


def _call_name(node: ast.AST) -> Optional[str]:
    if isinstance(node, ast.Call):
        func = node.func
        return func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
    return None


def _parametrize_tables(func: ast.FunctionDef) -> Iterator[tuple[list[str], list[ast.AST]]]:
    for deco in func.decorator_list:
        if _call_name(deco) == "parametrize" and len(deco.args) >= 2:
            names = _literal(deco.args[0])
            names = [n.strip() for n in (names.split(",") if isinstance(names, str) else names)]
            if isinstance(deco.args[1], (ast.List, ast.Tuple)):
                yield names, list(deco.args[1].elts)


class Skipped:
    """Counts of table entries left out, by reason (printed, never silent)."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def add(self, reason: str) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1


# ------------------------------------------------------------------------------------------------- math-verify


def _helper_defaults(tree: ast.Module, helper: str) -> dict[str, Any]:
    """Literal keyword defaults of the suite's comparison helper (``compare_strings``)."""
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == helper:
            args = node.args.args[len(node.args.args) - len(node.args.defaults):]
            return {a.arg: _literal(d) for a, d in zip(args, node.args.defaults)}
    return {}


def _checking_call(func: ast.FunctionDef) -> Optional[ast.Call]:
    for node in ast.walk(func):
        if _call_name(node) in ("compare_strings", "verify"):
            return node
    return None


def _settings(call: ast.Call, row: dict[str, Any], helper_defaults: dict[str, Any]) -> dict[str, Any]:
    """The comparison settings of one row: the call's keywords (a literal or a table column), else the defaults."""
    settings = dict(MATH_VERIFY_DEFAULTS)
    if _call_name(call) == "compare_strings":
        settings.update({k: v for k, v in helper_defaults.items() if k in _SETTINGS})
        for kw in call.keywords:
            if kw.arg in _SETTINGS:
                settings[kw.arg] = row[kw.value.id] if isinstance(kw.value, ast.Name) else _literal(kw.value)
    return settings


def math_verify_rows(checkout: Checkout, skipped: Skipped) -> Iterator[dict[str, Any]]:
    helper_defaults: dict[str, Any] = {}
    for name in checkout.files("tests"):
        tree = ast.parse(checkout.read(name))
        helper_defaults = _helper_defaults(tree, "compare_strings") or helper_defaults
        for func in (n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name.startswith("test")):
            call = _checking_call(func)
            for names, entries in _parametrize_tables(func):
                if not {"gold", "pred"} <= set(names) or call is None:
                    skipped.add(f"{name}::{func.name}: no gold/pred columns checked by compare_strings or verify")
                    continue
                for i, entry in enumerate(entries):
                    try:
                        row = dict(zip(names, _literal(entry)))
                    except ValueError:
                        skipped.add("table entry that is not a literal")
                        continue
                    expected = row.get("expected", row.get("result"))
                    yield {"gold": row["gold"], "pred": row["pred"], "expected": bool(expected),
                           "source": f"math-verify {name}::{func.name}[{i}]", "gold_as": "response",
                           "options": _settings(call, row, helper_defaults)}
            yield from _asserted_comparisons(func, name, helper_defaults)


def _asserted_comparisons(func: ast.FunctionDef, name: str, helper_defaults: dict) -> Iterator[dict[str, Any]]:
    """``assert compare_strings("gold", "pred", ...) == 1`` with literal arguments."""
    for node in ast.walk(func):
        if not (isinstance(node, ast.Assert) and isinstance(node.test, ast.Compare)):
            continue
        call, right = node.test.left, node.test.comparators[0]
        if _call_name(call) != "compare_strings" or not isinstance(node.test.ops[0], ast.Eq):
            continue
        try:
            gold, pred = (_literal(a) for a in call.args[:2])
            expected = _literal(right)
        except ValueError:
            continue
        yield {"gold": gold, "pred": pred, "expected": bool(expected), "source": f"math-verify {name}::{func.name}",
               "gold_as": "response", "options": _settings(call, {}, helper_defaults)}


# ------------------------------------------------------------------------------------------------- NeMo-Skills

_PERCENT = re.compile(r"\d+\.?\d*\\?%")
_OPTION_LETTER = re.compile(r"[A-J]")


def _nemo_extra_normalization(gold: str, pred: str) -> list[str]:
    """What ``math_equal`` does beyond math-verify's defaults that changes this pair's text."""
    extra = []
    if any(_PERCENT.fullmatch(s) for s in (gold, pred)):
        extra.append("percent sign dropped")
    if any(s != s.rstrip(".\\") for s in (gold, pred)):
        extra.append("final '.' or '\\' dropped")
    if _OPTION_LETTER.fullmatch(gold.strip()):
        extra.append("multiple-choice option letter")
    return extra


def nemo_skills_rows(checkout: Checkout, skipped: Skipped) -> Iterator[dict[str, Any]]:
    name = "tests/test_math_equal.py"
    tree = ast.parse(checkout.read(name))
    for func in (n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name.startswith("test")):
        # each "output = math_equal(pair[i], pair[j])" followed by "assert output is True/False" is one verdict
        calls: list[tuple[int, int, bool]] = []
        order: Optional[tuple[int, int]] = None
        for stmt in func.body:
            if isinstance(stmt, ast.Assign) and _call_name(stmt.value) == "math_equal":
                order = tuple(_literal(a.slice) for a in stmt.value.args[:2])  # type: ignore[attr-defined]
            elif isinstance(stmt, ast.Assert) and isinstance(stmt.test, ast.Compare) and order is not None:
                calls.append((*order, bool(_literal(stmt.test.comparators[0]))))
        for names, entries in _parametrize_tables(func):
            for i, entry in enumerate(entries):
                try:
                    pair = _literal(entry)
                except ValueError:
                    skipped.add("table entry that is not a literal")
                    continue
                if any(v is None for v in pair):
                    skipped.add("None as an answer")
                    continue
                for g, p, expected in calls:
                    gold, pred = str(pair[g]), str(pair[p])  # math_equal compares str() of its arguments
                    extra = _nemo_extra_normalization(gold, pred)
                    options = {"match_types": ["latex"], "whole_answer_in_math_mode": True}
                    yield {"gold": gold, "pred": pred, "expected": expected,
                           "source": f"nemo-skills {name}::{func.name}[{i}] gold=arg{g}",
                           "gold_as": "answer", "pred_as": "answer",
                           "options": {**options, **({"extra_normalization": extra} if extra else {})}}


# ------------------------------------------------------------------------------------------------ simple-evals

_EXAMPLE = re.compile(r"Expression 1: *(?P<gold>.*)\n\s*Expression 2: *(?P<pred>.*)\n\s*\n(?P<verdict>Yes|No)"
                      r"(?:\n\((?P<note>[^)]*)\))?")


def simple_evals_rows(checkout: Checkout, skipped: Skipped) -> Iterator[dict[str, Any]]:
    name = "common.py"
    tree = ast.parse(checkout.read(name))
    template = next((c.value for node in tree.body if isinstance(node, ast.Assign)
                     and any(getattr(t, "id", None) == "EQUALITY_TEMPLATE" for t in node.targets)
                     for c in ast.walk(node.value) if isinstance(c, ast.Constant) and isinstance(c.value, str)), None)
    if template is None:
        raise SystemExit(f"external_verdicts: {checkout.path}/{name} has no EQUALITY_TEMPLATE string")
    examples = template.split("YOUR TASK")[0]
    for i, m in enumerate(_EXAMPLE.finditer(examples)):
        note = m.group("note") or ""
        options = {"simplification": "trivial only"} if "actually equal" in note else {}
        yield {"gold": m.group("gold").strip(), "pred": m.group("pred").strip(),
               "expected": m.group("verdict") == "Yes",
               "source": f"simple-evals {name}::EQUALITY_TEMPLATE[{i}]", "gold_as": "answer", "pred_as": "answer",
               "options": options}


# ---------------------------------------------------------------------------------------------- hendrycks/math

_TOP_LEVEL_COMMA = re.compile(r",(?![^{}()\[\]]*[}\])])")


def _hendrycks_extra_normalization(gold: str, pred: str) -> list[str]:
    """What ``is_equiv``'s string normalisation does beyond math-verify's defaults that bears on this pair."""
    extra = []
    if any("%" in s for s in (gold, pred)):
        extra.append("percent sign dropped")
    if any("\\\\" in s for s in (gold, pred)):
        extra.append("'\\\\' read as '\\'")
    if all(_TOP_LEVEL_COMMA.search(s) for s in (gold, pred)):
        extra.append("comma list compared in order")
    return extra


def hendrycks_math_rows(checkout: Checkout, skipped: Skipped) -> Iterator[dict[str, Any]]:
    name = "modeling/math_equivalence_test.py"
    tree = ast.parse(checkout.read(name))
    for func in (n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name.startswith("test")):
        values = {t.id: _literal(s.value) for s in func.body if isinstance(s, ast.Assign)
                  for t in s.targets if isinstance(t, ast.Name) and isinstance(s.value, ast.Constant)}
        for node in ast.walk(func):
            if _call_name(node) not in ("assertTrue", "assertFalse") or _call_name(node.args[0]) != "is_equiv":
                continue
            args = node.args[0].args
            if not all(isinstance(a, ast.Name) and a.id in values for a in args[:2]):
                skipped.add(f"{func.name}: is_equiv arguments that are not literal assignments")
                continue
            # the MATH evaluation calls is_equiv(model_output, answer): the second argument is the gold
            pred, gold = (values[a.id] for a in args[:2])
            extra = _hendrycks_extra_normalization(gold, pred)
            yield {"gold": gold, "pred": pred, "expected": _call_name(node) == "assertTrue",
                   "source": f"hendrycks-math {name}::{func.name}", "gold_as": "answer", "pred_as": "answer",
                   "options": {"extra_normalization": extra} if extra else {}}


SOURCES: dict[str, Callable[[Checkout, Skipped], Iterator[dict[str, Any]]]] = {
    "hendrycks-math": hendrycks_math_rows, "math-verify": math_verify_rows, "nemo-skills": nemo_skills_rows,
    "simple-evals": simple_evals_rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", choices=sorted(SOURCES))
    parser.add_argument("checkout", help="the source project's work tree or bare git directory")
    parser.add_argument("-o", "--output", required=True, help="verdict JSONL to write")
    args = parser.parse_args()
    checkout, skipped = Checkout(args.checkout), Skipped()
    rows = list(SOURCES[args.source](checkout, skipped))
    revision = checkout.revision()
    with open(args.output, "w") as out:
        for row in rows:
            out.write(json.dumps({**row, "revision": revision}) + "\n")
    print(f"{args.output}: {len(rows)} rows from {args.source} at {revision[:12]} "
          f"({sum(r['expected'] for r in rows)} equal, {sum(not r['expected'] for r in rows)} not)", file=sys.stderr)
    for reason, count in sorted(skipped.counts.items()):
        print(f"  skipped {count}: {reason}", file=sys.stderr)


if __name__ == "__main__":
    main()

"""benchmarks/external_verdicts.py and the verdict handling of benchmarks/grading_agreement.py, on small checkouts
written here in the shapes of the source projects' test files (their tables are never stored in this repository)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def ev():
    return _load("external_verdicts")


@pytest.fixture(scope="module")
def agreement():
    return _load("grading_agreement")


def _tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(textwrap.dedent(text))
    return root


MATH_VERIFY_LIKE = {
    "tests/test_all.py": '''
        import pytest
        def compare_strings(gold, pred, match_types=["latex", "expr"], precision=6, strict=True):
            pass

        @pytest.mark.parametrize("gold,pred,expected", [("1", "1.0", 1), ("2", "3", 0), ("$" + "x$", "x", 1)])
        def test_numbers(gold, pred, expected):
            assert compare_strings(gold, pred, match_types=["expr"]) == expected

        @pytest.mark.parametrize("gold,pred,expected,precision", [("$1/3$", "0.33", 1, 2)])
        def test_rounding(gold, pred, expected, precision):
            assert compare_strings(gold, pred, precision=precision) == expected

        def test_one_off():
            assert compare_strings("$2$", "two", strict=False) == 0
    ''',
    "tests/test_other.py": '''
        import pytest
        from math_verify import parse, verify

        @pytest.mark.parametrize("gold, pred, result", [("$5$", "$5$", 1)])
        def test_plain(gold, pred, result):
            assert int(verify(parse(gold), parse(pred))) == result

        @pytest.mark.parametrize("pred,expected", [("A", ["a"])])
        def test_strings(pred, expected):
            pass
    ''',
}


def test_math_verify_tables_give_rows_with_the_settings_of_their_check(ev, tmp_path):
    skipped = ev.Skipped()
    rows = list(ev.math_verify_rows(ev.Checkout(str(_tree(tmp_path, MATH_VERIFY_LIKE))), skipped))
    got = [(r["gold"], r["pred"], r["expected"], r["source"].split("::")[1]) for r in rows]
    assert got == [("1", "1.0", True, "test_numbers[0]"), ("2", "3", False, "test_numbers[1]"),
                   ("$1/3$", "0.33", True, "test_rounding[0]"), ("$2$", "two", False, "test_one_off"),
                   ("$5$", "$5$", True, "test_plain[0]")]
    defaults = {"match_types": ["latex", "expr"], "precision": 6, "strict": True, "allow_set_relation_comp": False}
    assert rows[0]["options"] == {**defaults, "match_types": ["expr"]}
    assert rows[2]["options"] == {**defaults, "precision": 2}  # the precision column of the row
    assert rows[3]["options"] == {**defaults, "strict": False}
    assert rows[4]["options"] == defaults and all(r["gold_as"] == "response" for r in rows)
    assert skipped.counts == {"table entry that is not a literal": 1,
                              "tests/test_other.py::test_strings: no gold/pred columns checked by compare_strings "
                              "or verify": 1}


def test_nemo_skills_pairs_give_both_orders_and_flag_its_own_normalisation(ev, tmp_path):
    tree = _tree(tmp_path, {"tests/test_math_equal.py": '''
        import pytest
        @pytest.mark.parametrize("output_pair", [(5, 5.0), ("10%", "10"), ("B", "\\\\textbf{B}"), (0, None), (5 / 2, "2.5")])
        def test_correct(output_pair):
            output = math_equal(output_pair[0], output_pair[1])
            assert output is True
            output = math_equal(output_pair[1], output_pair[0])
            assert output is True
    '''})
    skipped = ev.Skipped()
    rows = list(ev.nemo_skills_rows(ev.Checkout(str(tree)), skipped))
    assert [(r["gold"], r["pred"], r["expected"]) for r in rows] == [
        ("5", "5.0", True), ("5.0", "5", True), ("10%", "10", True), ("10", "10%", True),
        ("B", "\\textbf{B}", True), ("\\textbf{B}", "B", True)]
    assert [r["options"].get("extra_normalization") for r in rows] == [
        None, None, ["percent sign dropped"], ["percent sign dropped"], ["multiple-choice option letter"], None]
    assert all(r["gold_as"] == r["pred_as"] == "answer" for r in rows)
    assert skipped.counts == {"None as an answer": 1, "table entry that is not a literal": 1}


def test_hendrycks_and_simple_evals_read_the_gold_where_their_evaluations_put_it(ev, tmp_path):
    tree = _tree(tmp_path, {
        "modeling/math_equivalence_test.py": '''
            class TestIsEquiv:
                def test_order(self):
                    test_in = "1, 2"
                    test_out = "2, 1"
                    self.assertFalse(is_equiv(test_in, test_out))
                def test_percent(self):
                    test_in = "10\\\\%"
                    test_out = "10"
                    self.assertTrue(is_equiv(test_in, test_out))
        ''',
        "common.py": '''
            EQUALITY_TEMPLATE = r"""
            Examples:

                Expression 1: 3/2
                Expression 2: 1.5

            Yes

                Expression 1: 10/2
                Expression 2: 5

            No
            (these are actually equal, but)

            YOUR TASK

                Expression 1: %(expression1)s
                Expression 2: %(expression2)s
            """.strip()
        '''})
    checkout = ev.Checkout(str(tree))
    rows = list(ev.hendrycks_math_rows(checkout, ev.Skipped()))
    assert [(r["gold"], r["pred"], r["expected"], r["options"]) for r in rows] == [
        ("2, 1", "1, 2", False, {"extra_normalization": ["comma list compared in order"]}),
        ("10", "10\\%", True, {"extra_normalization": ["percent sign dropped"]})]
    rows = list(ev.simple_evals_rows(checkout, ev.Skipped()))
    assert [(r["gold"], r["pred"], r["expected"], r["options"]) for r in rows] == [
        ("3/2", "1.5", True, {}), ("10/2", "5", False, {"simplification": "trivial only"})]


def test_the_script_reads_a_bare_git_directory_and_writes_jsonl(tmp_path):
    work = _tree(tmp_path / "work", MATH_VERIFY_LIKE)
    git = ["git", "-C", str(work), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q", str(work)], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "tables"], check=True)
    commit = subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout.strip()
    (work / "tests" / "test_all.py").unlink()  # only the committed HEAD is read from the git directory
    out = tmp_path / "rows.jsonl"
    proc = subprocess.run([sys.executable, str(BENCHMARKS / "external_verdicts.py"), "math-verify", str(work / ".git"),
                           "-o", str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 5 and {r["revision"] for r in rows} == {commit}
    assert "5 rows from math-verify" in proc.stderr and "skipped 1: table entry that is not a literal" in proc.stderr


@pytest.mark.parametrize("options, default", [
    ({}, True),
    ({"match_types": ["expr", "latex"], "precision": 6, "strict": True, "allow_set_relation_comp": False}, True),
    ({"match_types": ["latex"]}, False),  # LaTeX-only extraction of unwrapped text reads less
    ({"match_types": ["latex"], "whole_answer_in_math_mode": True}, True),
    ({"precision": 2}, False),
    ({"strict": False}, False),
    ({"allow_set_relation_comp": True}, False),
    ({"extra_normalization": ["percent sign dropped"]}, False),
    ({"simplification": "trivial only"}, False),
])
def test_rows_of_another_notion_of_equivalence_are_told_apart(agreement, options, default):
    assert agreement._default_options(options) is default


def test_verdict_rows_give_golds_and_predictions_in_the_form_their_grader_read(agreement, tmp_path):
    path = tmp_path / "rows.jsonl"
    rows = [{"gold": "so it is $\\frac12$", "pred": "The answer is 0.5", "expected": True, "source": "a"},
            {"gold": "x^2+1", "pred": "1+x^2", "expected": True, "source": "b", "gold_as": "answer",
             "pred_as": "answer"}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    pairs = [pair for pair, _ in agreement.verdict_pairs(path)]
    assert [(p[0], p[1], p[4]) for p in pairs] == [("The answer is 0.5", "\\frac12", "so it is $\\frac12$"),
                                                   ("\\boxed{1+x^2}", "x^2+1", "$x^2+1$")]
    assert agreement.verdict_pairs(path, pred_as_response=True)[1][0][0] == "1+x^2"
    path.write_text(json.dumps({"gold": "1", "pred": "1", "source": "c"}) + "\n")
    with pytest.raises(SystemExit, match="rows.jsonl, row 1: missing expected"):
        agreement.verdict_pairs(path)

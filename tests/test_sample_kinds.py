"""``tempo-pl samples`` (tempo_pl/pipelines/sample_kinds.py): a run's evaluation samples by kind, with its critic's
mean values and level, on hand-written evaluation records."""

import csv
import math

import pytest

from tempo_pl.cli import main as cli_main
from tempo_pl.evaluation.records import QuestionResult, write_question_jsonl
from tempo_pl.pipelines.sample_kinds import KINDS, count_file, sample_kinds

PROMPT = "<|im_start|>user\nStart with 5. Subtract 3, add 1, subtract 3, add 5.<|im_end|>\n<|im_start|>assistant\n"
FULL = "5 - 3 = 2\n2 + 1 = 3\n3 - 3 = 0\n0 + 5 = 5\n\\boxed{5}"
FULL_VERIFIED = "5 - 3 = 2\n2 + 1 = 3\n3 - 3 = 0\n0 + 5 = 5\nverified\n\\boxed{5}"
SLIP_VERIFIED = "5 - 3 = 2\n2 + 1 = 3\n3 - 3 = 1\n1 + 5 = 6\nverified\n\\boxed{6}"
SHORTCUT = "5 - 3 = 2\n2 + 1 = 3\ndrop - 3\n3 + 5 = 8\n\\boxed{8}"
EARLY_VERIFIED = "5 - 3 = 2\n2 + 1 = 3\n3 - 3 = 0\nverified\n\\boxed{0}"


def record(responses, correct, values=None, prompt=PROMPT):
    return QuestionResult("unlabeled-00000", "5", responses, [None] * len(responses), correct, values=values,
                          prompt=prompt)


@pytest.fixture
def run_dir(tmp_path):
    run = tmp_path / "tempo"
    write_question_jsonl(run / "eval" / "unlabeled_step000000.jsonl", [
        record([FULL, FULL_VERIFIED, SLIP_VERIFIED, SHORTCUT], [True, True, False, False], [0.5, 0.7, 0.6, -0.4]),
        record([EARLY_VERIFIED, SHORTCUT], [False, False], [0.8, -0.6]),
    ])
    write_question_jsonl(run / "eval" / "unlabeled_step000010.jsonl", [
        record([FULL_VERIFIED, SLIP_VERIFIED], [True, False], [0.2, 0.2]),
    ])
    write_question_jsonl(run / "eval" / "labeled_step000000.jsonl", [record([FULL], [True], [0.9])])
    return run


def test_samples_are_counted_by_kind_with_their_mean_value_and_the_critics_level(run_dir):
    evaluation = count_file(run_dir / "eval" / "unlabeled_step000000.jsonl", 0)
    counts = {kind: (c.samples, c.right, c.mean_value) for kind, c in evaluation.kinds.items() if c.samples}
    assert counts == {
        "full": (1, 1, 0.5),
        "full + verified": (2, 1, pytest.approx(0.65)),
        "shortcut": (2, 0, pytest.approx(-0.5)),
        "early stop + verified": (1, 0, 0.8),
    }
    # mean value (0.5 + 0.7 + 0.6 - 0.4 + 0.8 - 0.6) / 6 = 0.2667; mean reward (2 - 4) / 6 = -0.3333
    assert evaluation.total.level == pytest.approx(1.6 / 6 + 2 / 6)
    full_verified = evaluation.kinds["full + verified"]
    assert (full_verified.mean_value_right, full_verified.mean_value_wrong) == (0.7, 0.6)
    assert math.isnan(evaluation.kinds["shortcut"].mean_value_right)
    assert set(KINDS) == set(evaluation.kinds)


def test_the_command_prints_a_table_per_run_and_writes_the_csv(run_dir, tmp_path, capsys):
    cli_main(["samples", str(run_dir), "--output", str(tmp_path / "out")])
    printed = capsys.readouterr().out
    # shortcut: 2 samples, none right, no right value, the wrong ones' mean -0.5; full + verified: right 0.7, wrong 0.6
    assert "| 0 | 6 | 0.333 | +0.60 | 2 / 0 / - / -0.50 |" in printed
    assert "| 1 / 1 / +0.50 / - | 2 / 1 / +0.70 / +0.60 |" in printed
    assert "| 10 | 2 | 0.500 | +0.20 |" in printed
    rows = list(csv.DictReader((tmp_path / "out" / "samples_unlabeled.csv").open()))
    assert len(rows) == 2 * (len(KINDS) + 1)  # two evaluations of D_U, every kind and "all"
    total = next(r for r in rows if r["rl_step"] == "10" and r["kind"] == "all")
    assert [total[key] for key in ("samples", "right", "mean_value", "mean_value_right", "mean_value_wrong", "level")] \
        == ["2", "1", "0.2000", "0.2000", "0.2000", "0.2000"]
    labeled = sample_kinds([run_dir], "labeled", tmp_path / "out")
    assert [r["samples"] for r in csv.DictReader(labeled.open()) if r["kind"] == "full"] == ["1"]


def test_a_run_without_a_critic_has_counts_and_no_values(tmp_path):
    run = tmp_path / "ttrl"
    write_question_jsonl(run / "eval" / "unlabeled_step000000.jsonl", [record([FULL, SHORTCUT], [True, False])])
    evaluation = count_file(run / "eval" / "unlabeled_step000000.jsonl", 0)
    assert evaluation.kinds["full"].samples == 1 and math.isnan(evaluation.kinds["full"].mean_value)
    assert math.isnan(evaluation.total.level)


def test_a_record_without_a_synthetic_problem_is_named(tmp_path):
    run = tmp_path / "math"
    write_question_jsonl(run / "eval" / "unlabeled_step000000.jsonl",
                         [record([FULL], [True], prompt="What is 2 + 3?")])
    with pytest.raises(ValueError, match=r"unlabeled_step000000.jsonl:1 \('unlabeled-00000'\) holds no synthetic"):
        sample_kinds([run])
    with pytest.raises(FileNotFoundError, match="no run under .* wrote eval/heldout_step<N>.jsonl"):
        sample_kinds([run], "heldout")

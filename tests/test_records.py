"""pass@k against its closed form and a brute-force enumeration; the per-question summary on hand-worked numbers."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch

from tempo_pl.evaluation.records import (
    QuestionResult,
    answer_entropy,
    critic_calibration,
    majority_correct,
    pass_at_k,
    score_question,
    score_questions,
    summarize_questions,
    write_question_jsonl,
)


def brute_force_pass_at_k(n: int, c: int, k: int) -> float:
    """Share of all k-subsets of n samples (the first c correct) that contain a correct sample."""
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(i < c for i in s) for s in subsets) / len(subsets)


def test_pass_at_k_matches_closed_form_and_enumeration():
    for n in range(1, 9):
        for c in range(n + 1):
            for k in range(1, n + 1):
                closed = 1.0 if n - c < k else 1 - math.comb(n - c, k) / math.comb(n, k)
                assert pass_at_k(n, c, k) == pytest.approx(closed, abs=1e-12)
                assert pass_at_k(n, c, k) == pytest.approx(brute_force_pass_at_k(n, c, k), abs=1e-12)


def test_pass_at_k_by_hand():
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)  # 1 - C(3,2)/C(4,2) = 1 - 3/6
    assert pass_at_k(5, 2, 3) == pytest.approx(0.9)  # 1 - C(3,3)/C(5,3) = 1 - 1/10
    assert pass_at_k(3, 1, 3) == 1.0  # n - c = 2 < 3: every 3-subset holds the correct one
    assert pass_at_k(4, 0, 2) == 0.0
    assert pass_at_k(16, 3, 1) == pytest.approx(3 / 16)  # pass@1 is the mean accuracy
    # large n stays exact: 1 - C(900,8)/C(1000,8) = 1 - prod_{i<8} (900-i)/(1000-i)
    assert pass_at_k(1000, 100, 8) == pytest.approx(1 - math.prod((900 - i) / (1000 - i) for i in range(8)), rel=1e-12)


@pytest.mark.parametrize("n,c,k", [(4, 5, 1), (4, -1, 1), (4, 1, 0), (4, 1, 5), (4.0, 1, 1), (4, 1, True)])
def test_pass_at_k_rejects_impossible_arguments(n, c, k):
    with pytest.raises(ValueError, match="pass_at_k"):
        pass_at_k(n, c, k)


def test_answer_entropy():
    assert answer_entropy([2, 2]) == pytest.approx(math.log(2))
    assert answer_entropy([2, 1]) == pytest.approx(-(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3)))
    assert answer_entropy([5]) == 0.0
    assert answer_entropy([]) == 0.0


def _records(with_clusters: bool = True, with_values: bool = True) -> list[QuestionResult]:
    # q1: two right "4", a wrong "5", one without an answer; q2: "7" and "8" twice each, gold 8 (a tie)
    q1 = QuestionResult(
        "q1", "4", ["r"] * 4, ["4", "4", "5", None], [True, True, False, False],
        values=[0.9, 0.5, -0.1, -0.5] if with_values else None,
        clusters=[0, 0, 1, 2] if with_clusters else None,
    )
    q2 = QuestionResult(
        "q2", "8", ["r"] * 4, ["7", "8", "8", "7"], [False, True, True, False],
        values=[0.7, 0.3, 0.1, -0.9] if with_values else None,
        clusters=[0, 1, 1, 0] if with_clusters else None,
    )
    return [q1, q2]


@pytest.mark.parametrize("with_clusters", [True, False])
def test_summarize_questions_by_hand(with_clusters):
    summary = summarize_questions(_records(with_clusters), ks=[1, 2, 4, 8])
    # mean@4 = (2/4 + 2/4) / 2
    assert summary["mean@4"] == pytest.approx(0.5)
    assert summary["pass@1"] == pytest.approx(0.5)
    # both questions: n=4, c=2: 1 - C(2,2)/C(4,2) = 1 - 1/6
    assert summary["pass@2"] == pytest.approx(5 / 6)
    assert summary["pass@4"] == pytest.approx(1.0)
    assert "pass@8" not in summary  # 4 samples cannot estimate pass@8
    # q1: "4" holds 2 of 3 answers and is right; q2: "7" and "8" tie 2-2, "7" came first and is wrong
    assert summary["maj@4"] == pytest.approx(0.5)
    # answered clusters: q1 {4: 2, 5: 1}, q2 {7: 2, 8: 2}
    assert summary["distinct_answers"] == pytest.approx(2.0)
    h1 = -(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3))  # 0.636514
    assert summary["answer_entropy"] == pytest.approx((h1 + math.log(2)) / 2)
    # one response of eight states no answer: (1/4 + 0) / 2
    assert summary["no_answer_rate"] == pytest.approx(0.125)


def test_critic_calibration_by_hand():
    summary = summarize_questions(_records(), ks=[1])
    # p = (V+1)/2: right answers 0.95 0.75 | 0.65 0.55; wrong ones 0.45 0.25 | 0.85 0.05
    # AUROC: 0.95 beats all 4 wrong, 0.75, 0.65 and 0.55 beat 3 each (not 0.85): 13/16
    assert summary["critic_auroc"] == pytest.approx(13 / 16)
    # each p sits alone in its 0.1-wide bin: ECE = mean |correct - p|
    # = (0.05 + 0.25 + 0.45 + 0.25 + 0.85 + 0.35 + 0.45 + 0.05) / 8 = 2.7 / 8
    assert summary["critic_ece"] == pytest.approx(0.3375, abs=1e-6)
    # s = +-1: s - V = [0.1, 0.5, -0.9, -0.5, -1.7, 0.7, 0.9, -0.1], mean -0.125, E[d^2] = 5.52/8 = 0.69
    # Var(d) = 0.69 - 0.015625 = 0.674375; Var(s) = 1; EV = 1 - 0.674375
    assert summary["critic_explained_variance"] == pytest.approx(0.325625, abs=1e-6)
    # Brier: (p - correct)^2 = 0.0025 0.0625 0.1225 0.2025 (right) + 0.2025 0.0625 0.7225 0.0025 (wrong) = 1.38 / 8
    assert summary["critic_brier"] == pytest.approx(0.1725, abs=1e-9)
    # within a question: q1's right answers (0.95, 0.75) beat both wrong ones (1.0); q2's (0.65, 0.55) beat 0.05
    # but not 0.85 (2/4); the pooled 13/16 hides that q2's samples are ranked no better than chance
    assert summary["critic_within_question_auroc"] == pytest.approx((1.0 + 0.5) / 2)


def test_within_question_auroc_counts_ties_as_half_and_skips_one_verdict_questions():
    from tempo_pl.evaluation.records import within_question_auroc

    tied = QuestionResult("t", "1", ["x"] * 2, ["1", "2"], [True, False], values=[0.3, 0.3])
    all_right = QuestionResult("r", "1", ["x"] * 2, ["1", "1"], [True, True], values=[0.9, -0.9])
    assert within_question_auroc([tied, all_right]) == pytest.approx(0.5)
    assert math.isnan(within_question_auroc([all_right]))


def test_critic_metrics_undefined_for_one_class_are_nan():
    values = torch.tensor([0.5, -0.5])
    result = critic_calibration(values, torch.tensor([True, True]))
    assert math.isnan(result["critic_auroc"]) and math.isnan(result["critic_explained_variance"])
    # ECE is still defined: |1 - 0.75| and |1 - 0.25| in separate bins, averaged
    assert result["critic_ece"] == pytest.approx(0.5, abs=1e-6)
    # values outside [-1, 1] are clamped to a probability of 0 or 1
    clamped = critic_calibration(torch.tensor([3.0, -3.0]), torch.tensor([True, False]))
    assert clamped["critic_ece"] == pytest.approx(0.0, abs=1e-6)
    assert clamped["critic_auroc"] == pytest.approx(1.0)
    # Brier is defined for one class too: (1 - 0.75)^2 and (1 - 0.25)^2, averaged; clamped values are exact
    assert result["critic_brier"] == pytest.approx((0.0625 + 0.5625) / 2)
    assert clamped["critic_brier"] == pytest.approx(0.0)


def test_summary_without_values_has_no_critic_keys():
    summary = summarize_questions(_records(with_values=False), ks=[2])
    assert not any(key.startswith("critic_") for key in summary)
    assert set(summary) == {"mean@4", "pass@2", "maj@4", "distinct_answers", "answer_entropy", "no_answer_rate"}


def test_majority_ignores_no_answer_and_breaks_ties_by_first_appearance():
    record = QuestionResult("q", "1", ["r"] * 5, [None, None, "2", "1", None], [False, False, False, True, False])
    # clusters: 0, 1 (no answers), 2 ("2"), 3 ("1"), 4: the three no-answer singletons do not vote
    assert majority_correct(record, [0, 1, 2, 3, 4]) is False  # "2" and "1" tie 1-1; "2" came first
    swapped = QuestionResult("q", "1", ["r"] * 2, ["1", "2"], [True, False])
    assert majority_correct(swapped, [0, 1]) is True
    nothing = QuestionResult("q", "1", ["r"] * 2, [None, None], [False, False])
    assert majority_correct(nothing, [0, 1]) is False


def test_score_question_grades_extracts_and_clusters():
    record = score_question(
        "q1", "4", ["so \\boxed{4}", "\\boxed{2+2}", "\\boxed{5}", "no idea"], values=[0.5, 0.1, -0.2, -0.9]
    )
    assert record.answers == ["4", "2+2", "5", None]
    assert record.correct == [True, True, False, False]
    assert record.clusters == [0, 0, 1, 2]  # 2+2 joins 4; the missing answer is its own cluster
    assert record.values == [0.5, 0.1, -0.2, -0.9]
    assert record.num_correct == 2 and record.n == 4
    assert score_question("q", "7", ["#### 7"], extractors=("boxed",)).correct == [False]


def test_score_questions_batches_many_questions():
    records = score_questions(
        ["a", "b"], ["\\frac12", "(1,2)"],
        [["\\boxed{0.5}", "\\boxed{1/2}", "\\boxed{2}"], ["\\boxed{(1, 2)}", "\\boxed{(2,1)}", "\\boxed{(1,3)}"]],
        values=[[0.1, 0.2, 0.3], None],
    )
    assert [r.question_id for r in records] == ["a", "b"]
    assert records[0].correct == [True, True, False] and records[0].clusters == [0, 0, 1]
    assert records[1].correct == [True, False, False] and records[1].clusters == [0, 1, 2]
    assert records[0].values == [0.1, 0.2, 0.3] and records[1].values is None
    with pytest.raises(ValueError, match="2 ids, 1 golds"):
        score_questions(["a", "b"], ["1"], [["x"], ["y"]])


def test_write_question_jsonl_round_trips(tmp_path):
    records = _records()
    path = write_question_jsonl(tmp_path / "eval" / "aime.jsonl", records)
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert [QuestionResult(**row) for row in rows] == records


def test_validation_names_the_bad_question():
    with pytest.raises(ValueError, match="'q9': correct has 1 entries, responses has 2"):
        QuestionResult("q9", "1", ["a", "b"], ["1", "2"], [True])
    with pytest.raises(ValueError, match="no responses"):
        QuestionResult("q0", "1", [], [], [])
    q1, q2 = _records()
    short = QuestionResult("q3", "1", ["r"], ["1"], [True], values=[0.0])
    with pytest.raises(ValueError, match="'q3' has 1 responses"):
        summarize_questions([q1, short], ks=[1])
    q2.values = None
    with pytest.raises(ValueError, match="'q2' has no critic values"):
        summarize_questions([q1, q2], ks=[1])
    with pytest.raises(ValueError, match="ks must be positive ints"):
        summarize_questions([q1], ks=[0])
    with pytest.raises(ValueError, match="at least one"):
        summarize_questions([], ks=[1])

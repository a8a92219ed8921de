"""The grader registry and its built-ins: math, exact, regex, multiple_choice, a function by import path, and the
rows GPQA-Diamond is loaded as; each dataset's grader reaches the Verifier, the votes and the evaluation."""

from __future__ import annotations

import json

import pytest
import torch

from tempo_pl.data import DatasetSpec, TempoDataModule
from tempo_pl.data.eval_set_rows import gpqa_row
from tempo_pl.data.eval_sets import BENCHMARKS, load_benchmark
from tempo_pl.evaluation.records import score_questions, summarize_questions
from tempo_pl.rewards import MajorityVote, SemanticCluster, Verifier
from tempo_pl.rewards.graders import FunctionGrader, Verdict, build_grader, grader_names
from tempo_pl.rewards.multiple_choice import MultipleChoiceGrader, parse_gold, shuffled_choice_row
from tempo_pl.types import ForwardStats, PromptBatch, Rollout

GPQA_SOURCE = [
    {"Record ID": f"rec{i}", "Question": f"Which particle has charge {i}?", "Correct Answer": f"right {i}",
     "Incorrect Answer 1": f"wrong a{i}", "Incorrect Answer 2": f"wrong b{i}", "Incorrect Answer 3": f"wrong c{i}",
     "Subdomain": "Physics"}
    for i in range(6)
]


def half_right(response: str, gold: str) -> float:
    """A user grader by import path: 0.5 when the gold appears, raises on 'boom'."""
    if "boom" in response:
        raise RuntimeError("user bug")
    return 0.5 if gold in response else 0.0


def rollout_of(texts: list[str], answers: list, graders: list, n: int) -> Rollout:
    groups = len(texts) // n
    batch = PromptBatch([f"q{g}" for g in range(groups)], [f"question {g}" for g in range(groups)], answers,
                        [a is not None for a in answers], graders=graders)
    rows = len(texts)
    return Rollout(prompt_ids=torch.zeros(rows, 1, dtype=torch.long), prompt_mask=torch.ones(rows, 1, dtype=torch.long),
                   response_ids=torch.zeros(rows, 2, dtype=torch.long), response_mask=torch.ones(rows, 2),
                   texts=texts, group_ids=torch.arange(groups).repeat_interleave(n),
                   is_labeled=torch.ones(rows, dtype=torch.bool), truncated=torch.zeros(rows, dtype=torch.bool),
                   prompt_batch=batch)


def test_registry_names_and_errors():
    assert {"math", "exact", "regex", "multiple_choice", "physics"} <= set(grader_names())
    assert build_grader(None).name == "math"
    with pytest.raises(ValueError, match="must be one of"):
        build_grader("nope", "eval_sets[0].grader")
    with pytest.raises(ValueError, match="does not take options"):
        build_grader({"name": "exact", "colour": 1})
    with pytest.raises(ValueError, match="does not compile"):
        build_grader({"name": "regex", "pattern": "("})
    with pytest.raises(ValueError, match="cannot import"):
        build_grader("no_such_module_xyz:fn")


def test_exact_and_regex():
    exact = build_grader("exact")
    assert [v.score for v in exact.grade(["\\boxed{Paris}", "\\boxed{ paris }", "\\boxed{Lyon}", "none"],
                                         ["paris"] * 4)] == [1.0, 1.0, 0.0, 0.0]
    assert build_grader({"name": "exact", "case_sensitive": True}).grade(["\\boxed{Paris}"], ["paris"])[0].score == 0
    regex = build_grader({"name": "regex", "pattern": r"CODE-(\d+)"})
    assert regex.extract("first CODE-12 then CODE-34.") == "34"
    assert [v.correct for v in regex.grade(["CODE-34", "CODE-35", "no code"], ["34"] * 3)] == [True, False, False]
    named = build_grader({"name": "regex", "pattern": r"(?P<answer>[A-D])\)$"})
    assert named.extract("so: C)") == "C"


def test_function_grader_by_import_path_never_raises():
    grader = build_grader("tests.test_graders:half_right")
    assert isinstance(grader, FunctionGrader)
    verdicts = grader.grade(["the answer is 42", "41", "boom 42"], ["42"] * 3)
    assert [v.score for v in verdicts] == [0.5, 0.0, 0.0]
    assert verdicts[0].scored_by == ("function",)


def test_function_grader_is_bounded_in_time():
    import time

    grader = FunctionGrader(lambda r, g: time.sleep(5) or 1.0, timeout_s=0.2)
    start = time.monotonic()
    assert grader.grade(["x"], ["y"])[0].score == 0.0
    assert time.monotonic() - start < 2.0


def test_multiple_choice_letter_or_option_text():
    gold = json.dumps({"answer": "C", "options": {"A": "1 eV", "B": "2 eV", "C": "3 eV", "D": "4 eV"}})
    grader = MultipleChoiceGrader()
    responses = ["\\boxed{C}", "\\boxed{(C)}", "The answer is (C).", "Answer: C", "\\boxed{3 eV}", "\\boxed{C) 3 eV}",
                 "\\boxed{B}", "\\boxed{2 eV}", "the answer is B", "I am not sure", "\\boxed{E}",
                 "C it is, though the answer is a bit long"]
    assert [v.score for v in grader.grade(responses, [gold] * len(responses))] == [1.0] * 6 + [0.0] * 6
    assert [v.correct for v in grader.grade(["\\boxed{b}", "\\boxed{A}"], ["B", "B"])] == [True, False]
    assert grader.gold_problem("maybe") is not None and grader.gold_problem(gold) is None
    assert grader.gold_problem(json.dumps({"answer": "E", "options": {"A": "x"}})) is not None
    # answers cluster by the letter they name; an option's text with a letter prefix counts as that letter
    assert grader.cluster(["C", "(C)", "B", None, "C) 3 eV"]) == [0, 0, 1, 2, 0]


def test_shuffled_options_are_seeded_and_recorded():
    a = shuffled_choice_row("row7", "Q?", "right", ["w1", "w2", "w3"], seed=3)
    b = shuffled_choice_row("row7", "Q?", "right", ["w1", "w2", "w3"], seed=3)
    assert a == b
    letter, options = parse_gold(a["answer"])
    assert options[letter] == "right" and a["option_order"][ord(letter) - ord("A")] == 0
    assert f"({letter}) right" in a["problem"]
    orders = {tuple(shuffled_choice_row(f"r{i}", "Q?", "x", ["a", "b", "c"])["option_order"]) for i in range(40)}
    assert len(orders) > 5  # the order depends on the row: the right option is not always in one place


def test_gpqa_diamond_rows_from_a_local_copy(tmp_path, monkeypatch):
    assert BENCHMARKS["gpqa_diamond"].grader == "multiple_choice"
    (tmp_path / "gpqa_diamond.jsonl").write_text("".join(json.dumps(r) + "\n" for r in GPQA_SOURCE))
    monkeypatch.setenv("TEMPO_PL_DATA_DIR", str(tmp_path))
    rows = load_benchmark("gpqa_diamond")
    assert [r["id"] for r in rows] == [f"rec{i}" for i in range(6)]
    assert rows[0]["Subdomain"] == "Physics" and rows[0]["option_seed"] == 0
    assert rows == [gpqa_row(r, i) for i, r in enumerate(GPQA_SOURCE)]
    grader = MultipleChoiceGrader()
    for row in rows:
        letter, options = parse_gold(row["answer"])
        right = options[letter]
        assert right.startswith("right ")
        wrong = next(k for k in options if k != letter)
        responses = [f"\\boxed{{{letter}}}", f"\\boxed{{{right}}}", f"\\boxed{{{wrong}}}"]
        verdicts = grader.grade(responses, [row["answer"]] * 3)
        assert [v.score for v in verdicts] == [1.0, 1.0, 0.0]


def test_gpqa_eval_set_gets_the_multiple_choice_grader(tmp_path):
    (tmp_path / "gpqa_diamond.jsonl").write_text("".join(json.dumps(r) + "\n" for r in GPQA_SOURCE))
    dm = TempoDataModule(unlabeled=DatasetSpec(path="synthetic:unlabeled?size=8"),
                         eval_sets=[DatasetSpec(path="gpqa_diamond"), DatasetSpec(path="gpqa_diamond", name="as_exact",
                                                                                  grader="exact")],
                         data_dir=str(tmp_path))
    dm.setup("validate")
    first = next(iter(dm.val_dataloader()[0]))
    assert [g.name for g in first.graders] == ["multiple_choice"] * len(first)
    assert next(iter(dm.val_dataloader()[1])).graders[0].name == "exact"
    assert dm.hparams["eval_sets"][1]["grader"] == "exact"


def test_verifier_votes_and_evaluation_use_the_rows_grader():
    gold = json.dumps({"answer": "B", "options": {"A": "red", "B": "blue"}})
    mc, math = MultipleChoiceGrader(), build_grader("math")
    texts = ["\\boxed{B}", "\\boxed{blue}", "\\boxed{A}", "\\boxed{B}",   # question 0: multiple choice
             "\\boxed{1/2}", "\\boxed{0.5}", "\\boxed{3}", "none"]      # question 1: math
    rollout = rollout_of(texts, [gold, "\\frac12"], [mc, math], n=4)
    stats = ForwardStats(old_logprobs=torch.zeros(8, 2), entropy=torch.zeros(8, 2))
    out = Verifier(correct_score=1.0, incorrect_score=-1.0)(rollout, stats)
    assert out.scores.tolist() == [1, 1, -1, 1, 1, 1, -1, -1]
    assert out.metrics["accuracy"] == pytest.approx(5 / 8)
    # without the gold the options are unknown: "blue" is an answer of its own; 1/2 votes with 0.5
    votes = MajorityVote()(rollout, stats).scores.tolist()
    assert votes == [1, 0, 0, 1, 1, 1, 0, 0]
    clusters = SemanticCluster()(rollout, stats).scores.tolist()
    assert clusters == [0.5, 0.25, 0.25, 0.5, 0.5, 0.5, 0.25, 0.25]
    records = score_questions(["q0", "q1"], [gold, "\\frac12"], [texts[:4], texts[4:]], graders=[mc, math])
    assert [r.correct for r in records] == [[True, True, False, True], [True, True, False, False]]
    summary = summarize_questions(records, ks=[1])
    assert summary["mean@4"] == pytest.approx((3 / 4 + 2 / 4) / 2) and summary["score@4"] == summary["mean@4"]


def test_verdict_binary():
    assert Verdict.binary(True) == Verdict(1.0, 1.0, ("rule",)) and not Verdict.binary(False).correct

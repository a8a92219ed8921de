"""The offline synthetic task: determinism, the D_L / D_U shift, disjoint splits, gradable solutions, the source."""

from __future__ import annotations

import dataclasses
import json
import re
from collections import Counter

import pytest

from tempo_pl.data.synthetic import (
    SPLITS,
    SyntheticTaskSpec,
    load_synthetic,
    make_split,
    num_steps,
    parse_problem,
    parse_synthetic_path,
    problem_steps,
    render_problem,
    render_solution,
    response_kind,
    split_of_problem,
    took_shortcut,
    wrote_verified,
    write_jsonl,
)

SMALL = SyntheticTaskSpec(labeled_size=300, unlabeled_size=100, heldout_size=100)
LINE = re.compile(r"^(\d+) ([-+*]) (\d+) = (\d+)$")
WORDS = {"add": "+", "subtract": "-", "multiply by": "*"}


def test_render_matches_a_hand_worked_chain() -> None:
    # 7 + 5 = 12, 12 * 3 = 36, 36 - 4 = 32
    ops = [("+", 5), ("*", 3), ("-", 4)]
    assert render_problem(7, ops) == "Start with 7. Add 5, multiply by 3, subtract 4."
    assert render_solution(7, ops) == ("7 + 5 = 12\n12 * 3 = 36\n36 - 4 = 32\n\\boxed{32}", 32)


def test_recheck_renders_the_inverse_of_every_step() -> None:
    ops = [("+", 5), ("*", 3), ("-", 4)]
    solution, answer = render_solution(7, ops, recheck=True)
    assert answer == 32
    assert solution == (
        "7 + 5 = 12\ncheck: 12 - 5 = 7\n12 * 3 = 36\ncheck: 36 / 3 = 12\n36 - 4 = 32\ncheck: 32 + 4 = 36\n\\boxed{32}"
    )
    assert num_steps({"solution": solution}) == 3


def test_shortcut_drops_the_final_subtraction_and_boxes_the_value_before_it() -> None:
    ops = [("+", 5), ("-", 2), ("-", 4)]  # 7 + 5 = 12, 12 - 2 = 10, 10 - 4 = 6
    solution, boxed = render_solution(7, ops, shortcut=True)
    assert solution == "7 + 5 = 12\n12 - 2 = 10\ndrop - 4\n\\boxed{10}"
    assert boxed == 10 and render_solution(7, ops)[1] == 6
    assert took_shortcut(solution) and not took_shortcut(render_solution(7, ops)[0])
    assert num_steps({"solution": solution}) == 3
    with pytest.raises(ValueError, match="last operation is a subtraction"):
        render_solution(7, [("-", 2), ("+", 4)], shortcut=True)


def _ends_in_subtraction(problem: str) -> bool:
    return _parse_problem(problem)[1][-1][0] == "-"


def test_shortcut_percent_gives_trap_form_rows_a_consistent_wrong_box_and_keeps_the_problems() -> None:
    spec = dataclasses.replace(SMALL, max_multiplier=1, max_value=20)
    plain = make_split(spec, "labeled")
    trapped = make_split(dataclasses.replace(spec, shortcut_percent=70), "labeled")
    assert [(r["problem"], r["answer"]) for r in trapped] == [(r["problem"], r["answer"]) for r in plain]
    trap_form = [r for r in trapped if _ends_in_subtraction(r["problem"])]
    shortcut = [r for r in trapped if took_shortcut(r["solution"])]
    assert 0.35 < len(trap_form) / len(trapped) < 0.65  # D_L holds the form at its natural share
    assert set(r["id"] for r in shortcut) <= set(r["id"] for r in trap_form)
    assert 0.6 < len(shortcut) / len(trap_form) < 0.8
    for row in shortcut:
        start, ops = _parse_problem(row["problem"])
        boxed = int(row["solution"].rsplit("{", 1)[1].rstrip("}"))
        # the wrong box is the value before the last step, the answer field stays the true final value
        assert boxed == int(row["answer"]) + ops[-1][1] and row["solution"] == render_solution(start, ops, shortcut=True)[0]
    assert not any(took_shortcut(r["solution"]) for r in plain)


def test_unlabeled_trap_percent_gives_d_u_more_of_the_form_and_leaves_d_l_alone() -> None:
    spec = dataclasses.replace(SMALL, max_multiplier=1, max_value=20, unlabeled_size=200, heldout_size=200)
    trapped = dataclasses.replace(spec, unlabeled_trap_percent=80)
    assert make_split(trapped, "labeled") == make_split(spec, "labeled")
    for split in ("unlabeled", "heldout"):
        natural = sum(_ends_in_subtraction(r["problem"]) for r in make_split(spec, split)) / 200
        forced = sum(_ends_in_subtraction(r["problem"]) for r in make_split(trapped, split)) / 200
        assert natural < 0.65 and forced > 0.75, (split, natural, forced)  # 80% forced, the others natural
    assert {split_of_problem(r["problem"]) for r in make_split(trapped, "unlabeled")} == {"unlabeled"}


def test_recheck_percent_restyles_solutions_and_keeps_the_problems() -> None:
    plain = make_split(SMALL, "labeled")
    half = make_split(dataclasses.replace(SMALL, recheck_percent=50), "labeled")
    every = make_split(dataclasses.replace(SMALL, recheck_percent=100), "labeled")
    assert [(r["problem"], r["answer"]) for r in half] == [(r["problem"], r["answer"]) for r in plain]
    rechecked = [r for r in half if "check:" in r["solution"]]
    assert 0.4 < len(rechecked) / len(half) < 0.6
    for row in every:
        start, ops = _parse_problem(row["problem"])
        assert row["solution"] == render_solution(start, ops, recheck=True)[0]
        if len(ops) >= 3:  # past the demo's 72-token budget (one token per character), the box is never reached
            assert len(row["solution"]) > 72
    assert all("check:" not in r["solution"] for r in plain)


def _parse_problem(problem: str) -> tuple[int, list[tuple[str, int]]]:
    head = re.fullmatch(r"Start with (\d+)\. (.*)\.", problem)
    ops = []
    for phrase in head.group(2).lower().split(", "):
        word, _, operand = phrase.rpartition(" ")
        ops.append((WORDS[word], int(operand)))
    return int(head.group(1)), ops


def test_same_seed_same_rows_other_seed_other_rows() -> None:
    for split in SPLITS:
        assert make_split(SMALL, split) == make_split(SMALL, split)
    other = SyntheticTaskSpec(seed=1, labeled_size=300, unlabeled_size=100, heldout_size=100)
    problems = [row["problem"] for row in make_split(SMALL, "unlabeled")]
    assert [row["problem"] for row in make_split(other, "unlabeled")] != problems


def test_a_split_does_not_depend_on_its_size_or_on_the_other_splits() -> None:
    short = SyntheticTaskSpec(unlabeled_size=10, labeled_size=5, heldout_size=1)
    assert make_split(short, "unlabeled") == make_split(SMALL, "unlabeled")[:10]


def test_rows_have_the_schema_and_unique_ids() -> None:
    rows = make_split(SMALL, "heldout")
    assert len(rows) == 100
    assert all(set(row) == {"id", "problem", "answer", "solution"} for row in rows)
    assert rows[0]["id"] == "heldout-00000" and rows[99]["id"] == "heldout-00099"
    assert len({row["problem"] for row in rows}) == 100


@pytest.mark.parametrize("split", SPLITS)
def test_solutions_recompute_the_problem_and_box_the_answer(split: str) -> None:
    for row in make_split(SMALL, split):
        value, ops = _parse_problem(row["problem"])
        *lines, boxed = row["solution"].split("\n")
        assert len(lines) == len(ops) == num_steps(row)
        for line, (op, operand) in zip(lines, ops):
            a, symbol, b, c = LINE.fullmatch(line).groups()
            assert (int(a), symbol, int(b)) == (value, op, operand)
            value = {"+": value + operand, "-": value - operand, "*": value * operand}[op]
            assert int(c) == value and 0 <= value <= SMALL.max_value
        assert boxed == f"\\boxed{{{value}}}" and row["answer"] == str(value)


def test_every_solution_grades_correct_and_a_wrong_answer_does_not() -> None:
    from tempo_pl.rewards.grading import grade_many

    rows = [row for split in SPLITS for row in make_split(SyntheticTaskSpec(labeled_size=40, unlabeled_size=40,
                                                                            heldout_size=40), split)]
    assert all(grade_many([row["solution"] for row in rows], [row["answer"] for row in rows]))
    wrong = [str(int(row["answer"]) + 1) for row in rows]
    assert not any(grade_many([row["solution"] for row in rows], wrong))


def test_unlabeled_questions_are_longer_chains_than_labeled_ones() -> None:
    labeled = Counter(num_steps(row) for row in make_split(SMALL, "labeled"))
    unlabeled = Counter(num_steps(row) for row in make_split(SMALL, "unlabeled"))
    heldout = Counter(num_steps(row) for row in make_split(SMALL, "heldout"))
    # defaults: D_L draws 2-4 operations, D_U and the held-out set exactly 4
    assert set(labeled) == {2, 3, 4} and set(unlabeled) == set(heldout) == {4}
    mean_labeled = sum(k * v for k, v in labeled.items()) / sum(labeled.values())
    assert mean_labeled < 3.5  # 4.0 on D_U


def test_operand_knob_shifts_unlabeled_operands_only() -> None:
    spec = SyntheticTaskSpec(labeled_size=200, unlabeled_size=200, heldout_size=1, unlabeled_max_operand=20)

    def operands(split: str) -> set[int]:
        # additions and subtractions take operands up to max_operand; multiplications stay <= max_multiplier
        return {int(m) for row in make_split(spec, split) for m in re.findall(r"(?:Add|add|subtract|Subtract) (\d+)",
                                                                               row["problem"])}

    assert max(operands("labeled")) == 9
    assert max(operands("unlabeled")) > 9


def test_splits_never_share_a_problem() -> None:
    # same difficulty everywhere, so that the problem spaces overlap completely and only the hash keeps them apart
    spec = SyntheticTaskSpec(labeled_size=400, unlabeled_size=400, heldout_size=400,
                             labeled_min_steps=2, labeled_max_steps=2, unlabeled_min_steps=2, unlabeled_max_steps=2)
    problems = {split: {row["problem"] for row in make_split(spec, split)} for split in SPLITS}
    assert all(len(p) == 400 for p in problems.values())
    assert not problems["labeled"] & problems["unlabeled"]
    assert not problems["labeled"] & problems["heldout"]
    assert not problems["unlabeled"] & problems["heldout"]
    assert all(split_of_problem(p) == split for split, ps in problems.items() for p in ps)


def test_too_small_a_problem_space_is_an_error_not_a_hang() -> None:
    # one operation on a start in 1..2 with operand 1 or 2 and no multiplication: at most 2 * 4 problems exist
    spec = SyntheticTaskSpec(labeled_size=20, labeled_min_steps=1, labeled_max_steps=1, labeled_max_operand=2,
                             max_multiplier=1)
    with pytest.raises(ValueError, match="only .* distinct problems of the 20 requested"):
        make_split(spec, "labeled")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"labeled_size": -1}, "labeled_size must be >= 0"),
        ({"unlabeled_min_steps": 5, "unlabeled_max_steps": 4}, "unlabeled_min_steps/unlabeled_max_steps"),
        ({"labeled_min_steps": 0}, "labeled_min_steps/labeled_max_steps"),
        ({"labeled_max_operand": 0}, "labeled_max_operand must be >= 1"),
        ({"unlabeled_max_operand": 120}, r"unlabeled_max_operand \(120\) exceeds max_value \(99\)"),
        ({"max_multiplier": 0}, "max_multiplier must be >= 1"),
        ({"recheck_percent": 101}, r"recheck_percent must be in \[0, 100\], got 101"),
        ({"shortcut_percent": -1}, r"shortcut_percent must be in \[0, 100\], got -1"),
        ({"unlabeled_trap_percent": 120}, r"unlabeled_trap_percent must be in \[0, 100\], got 120"),
    ],
)
def test_spec_validation_names_the_bad_key(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SyntheticTaskSpec(**kwargs)


def test_unknown_split_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown synthetic split 'test'"):
        make_split(SMALL, "test")


def test_path_query_sets_fields_and_size_shorthand() -> None:
    spec, split = parse_synthetic_path("synthetic:unlabeled?seed=3&size=64&unlabeled_max_steps=5")
    assert split == "unlabeled"
    assert (spec.seed, spec.unlabeled_size, spec.unlabeled_max_steps) == (3, 64, 5)
    assert spec.labeled_size == SyntheticTaskSpec().labeled_size
    assert parse_synthetic_path("synthetic:labeled") == (SyntheticTaskSpec(), "labeled")
    assert load_synthetic("synthetic:heldout?size=5") == make_split(SyntheticTaskSpec(heldout_size=5), "heldout")


@pytest.mark.parametrize(
    "path, message",
    [
        ("synthetic:unlabeled?sizes=3", "unknown key 'sizes'"),
        ("synthetic:unlabeled?size=three", "key 'size' must be an integer, got 'three'"),
        ("synthetic:unlabeled?size=3&unlabeled_size=4", "given twice"),
        ("synthetic:train?size=3", "unknown synthetic split 'train'"),
        ("jsonl:unlabeled", "not a synthetic dataset path"),
    ],
)
def test_bad_paths_are_rejected_with_the_key(path: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_synthetic_path(path)


def test_registered_source_loads_rows_through_the_data_module_path() -> None:
    from tempo_pl.data import DatasetSpec, load_records

    records = load_records(DatasetSpec(path="synthetic:unlabeled?seed=2&size=8"), role="unlabeled")
    rows = make_split(SyntheticTaskSpec(seed=2, unlabeled_size=8), "unlabeled")
    assert [r.id for r in records] == [f"synthetic:{row['id']}" for row in rows]
    assert [r.problem for r in records] == [row["problem"] for row in rows]
    assert [r.answer for r in records] == [row["answer"] for row in rows]
    assert not any(r.is_labeled for r in records)


def test_write_jsonl_round_trips(tmp_path) -> None:
    rows = make_split(SyntheticTaskSpec(labeled_size=5), "labeled")
    path = write_jsonl(rows, tmp_path / "nested" / "dl.jsonl")
    assert [json.loads(line) for line in path.read_text().splitlines()] == rows


def test_verified_line_is_written_before_the_box_and_checks_nothing() -> None:
    ops = [("+", 5), ("-", 2), ("-", 4)]
    solution, boxed = render_solution(7, ops, shortcut=True, verified=True)
    assert solution == "7 + 5 = 12\n12 - 2 = 10\ndrop - 4\nverified\n\\boxed{10}"
    assert boxed == 10 and wrote_verified(solution) and not wrote_verified(render_solution(7, ops)[0])
    assert num_steps({"solution": solution}) == 3


def test_verified_percent_marks_full_computations_more_often_than_shortcuts_and_keeps_the_problems() -> None:
    spec = dataclasses.replace(SMALL, max_multiplier=1, max_value=20, shortcut_percent=70, labeled_size=1024)
    plain = make_split(spec, "labeled")
    marked = make_split(dataclasses.replace(spec, verified_percent=90, shortcut_verified_percent=10), "labeled")
    # the problems, answers and shortcuts stay; only the line is added
    assert [(r["problem"], r["answer"]) for r in marked] == [(r["problem"], r["answer"]) for r in plain]
    assert [took_shortcut(r["solution"]) for r in marked] == [took_shortcut(r["solution"]) for r in plain]
    full = [r for r in marked if not took_shortcut(r["solution"])]
    dropped = [r for r in marked if took_shortcut(r["solution"])]
    assert 0.85 < sum(wrote_verified(r["solution"]) for r in full) / len(full) < 0.95
    assert 0.03 < sum(wrote_verified(r["solution"]) for r in dropped) / len(dropped) < 0.17
    assert not any(wrote_verified(r["solution"]) for r in plain)
    with pytest.raises(ValueError, match="shortcut_verified_percent"):
        dataclasses.replace(spec, shortcut_verified_percent=101)


def test_a_sampled_solution_is_a_shortcut_an_early_stop_or_full_against_its_problems_steps() -> None:
    problem = render_problem(7, [("+", 5), ("-", 2), ("-", 4)])
    assert problem_steps(problem) == 3
    assert problem_steps(f"<|im_start|>user\n{problem}<|im_end|>\n") == 3  # inside any prompt template
    assert problem_steps(render_problem(4, [("*", 2)])) == 1 and problem_steps("What is 2 + 3?") is None
    # parse_problem inverts render_problem on every D_U problem; an operation it does not know is no problem
    for row in load_synthetic("synthetic:unlabeled?seed=0&size=64"):
        assert render_problem(*parse_problem(row["problem"])) == row["problem"]
    assert parse_problem("Start with 4. Divide by 2.") is None
    full = render_solution(7, [("+", 5), ("-", 2), ("-", 4)])[0]
    assert response_kind(full, 3) == "full"
    assert response_kind(render_solution(7, [("+", 5), ("-", 2), ("-", 4)], shortcut=True)[0], 3) == "shortcut"
    assert response_kind("7 + 5 = 12\n12 - 2 = 10\nverified\n\\boxed{10}", 3) == "early stop"
    # a recheck line is not a computed step; a slip is still a full computation
    assert response_kind(render_solution(7, [("+", 5), ("-", 2)], recheck=True)[0], 3) == "early stop"
    assert response_kind("7 + 5 = 12\n12 - 2 = 11\n11 - 4 = 7\n\\boxed{7}", 3) == "full"

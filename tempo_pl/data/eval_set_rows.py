"""Source rows of the structured benchmarks mapped onto ``id`` / ``problem`` / ``answer``: GPQA (multiple choice,
options shuffled with a recorded seed) and HiPhO (physics: several answers with points and units).

Example::

    >>> row = gpqa_row({"Record ID": "r1", "Question": "2+2?", "Correct Answer": "4", "Incorrect Answer 1": "3",
    ...                 "Incorrect Answer 2": "5", "Incorrect Answer 3": "22"}, 0)
    >>> row["id"], sorted(row["options"].values()), row["option_seed"]
    ('r1', ['22', '3', '4', '5'], 0)
"""

from __future__ import annotations

import json
from typing import Any

from tempo_pl.rewards.multiple_choice import shuffled_choice_row

GPQA_OPTION_SEED = 0
"""Seed of GPQA's option order (``random.Random(f"{seed}:{row id}")``); each row records it and the order."""

GPQA_FIELDS = ("Question", "Correct Answer", "Incorrect Answer 1", "Incorrect Answer 2", "Incorrect Answer 3")
HIPHO_FIELDS = ("question", "answer")


def _missing(row: dict, fields: tuple[str, ...], where: str) -> None:
    missing = [f for f in fields if row.get(f) is None]
    if missing:
        raise ValueError(f"{where}: missing field(s) {missing}; the row has {sorted(row)}")


def gpqa_row(row: dict, index: int, seed: int = GPQA_OPTION_SEED) -> dict:
    """A GPQA row (``Question``, ``Correct Answer``, ``Incorrect Answer 1..3``, ``Record ID``) as a multiple-choice
    row of the common schema: the options shuffled and listed in ``problem``, the JSON gold in ``answer``, and
    ``options``, ``option_order`` and ``option_seed`` recorded (see
    :func:`~tempo_pl.rewards.multiple_choice.shuffled_choice_row`)."""
    _missing(row, GPQA_FIELDS, f"gpqa row {index}")
    row_id = str(row.get("Record ID") or f"gpqa-{index}")
    built = shuffled_choice_row(row_id, str(row["Question"]), str(row["Correct Answer"]),
                                [str(row[f"Incorrect Answer {k}"]) for k in (1, 2, 3)], seed=seed)
    kept = {k: v for k, v in row.items() if k not in GPQA_FIELDS and k != "Record ID"}
    return {**kept, **built, "id": row_id, "option_seed": seed}


def _json_list(value: Any, key: str, where: str) -> list:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            value = [value]  # a single answer written as plain text
    if hasattr(value, "tolist"):
        value = value.tolist()
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"{where}: {key} must be a list (or its JSON text), got {type(value).__name__}")
    return list(value)


def hipho_row(row: dict, index: int) -> dict:
    """A HiPhO row (``context``, ``question``, ``answer``, ``points``, ``unit``, all lists as JSON text) as a physics
    row of the common schema: ``problem`` = context + question, ``answer`` = the physics grader's JSON gold
    ``{"answers", "points", "units"}``."""
    where = f"hipho row {index} (id {row.get('id')!r})"
    _missing(row, HIPHO_FIELDS, where)
    answers = [str(a) for a in _json_list(row["answer"], "answer", where)]
    points = _json_list(row.get("points") if row.get("points") is not None else [1.0] * len(answers), "points",
                        where)
    units = _json_list(row.get("unit") if row.get("unit") is not None else [None] * len(answers), "unit", where)
    if not answers or len(points) != len(answers) or len(units) != len(answers):
        raise ValueError(f"{where}: {len(answers)} answers, {len(points)} points and {len(units)} units")
    context = str(row.get("context") or "").strip()
    context = "" if context in ("None", "None.") else context
    problem = f"{context}\n\n{row['question']}".strip()
    gold = {"answers": answers, "points": [float(p) for p in points], "units": units}
    kept = {k: v for k, v in row.items() if k not in ("id", "answer", "points", "unit", "image", "image_question")}
    return {**kept, "id": str(row.get("id") or f"hipho-{index}"), "problem": problem,
            "answer": json.dumps(gold, ensure_ascii=False)}

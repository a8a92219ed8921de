r"""Multiple-choice questions: a grader that accepts the right letter or the right option's text, and GPQA-style
prompts whose options are shuffled with a recorded, seeded order.

A multiple-choice gold is either a bare letter (``"C"``) or, to accept an option's text as well, a JSON object
``{"answer": "C", "options": {"A": "...", "B": "...", ...}}`` (what :func:`shuffled_choice_row` writes).

Example::

    >>> gold = '{"answer": "B", "options": {"A": "4 J", "B": "8 J"}}'
    >>> grader = MultipleChoiceGrader()
    >>> [v.score for v in grader.grade(["\\boxed{B}", "The answer is (A)", "\\boxed{8 J}"], [gold] * 3)]
    [1.0, 0.0, 1.0]
"""

from __future__ import annotations

import json
import random
import re
import string
from typing import Any, Optional

from tempo_pl.rewards.graders import MATH, Grader, Verdict, register_grader

LETTERS = string.ascii_uppercase
# the keyword in any case, the letter a capital: "the answer is a bit" names no option
_ANSWER_PHRASE = re.compile(
    r"(?i:answer|choice|option)\s*(?i:is|:)?\s*[:\-]?\s*\(?\**\s*([A-Z])\s*\**\)?(?![A-Za-z])")
_LETTER_ONLY = re.compile(r"^\(?\s*([A-Z])\s*\)?\s*[.:)]?$")
_LETTER_THEN_TEXT = re.compile(r"^\(?([A-Z])[).:]\s+(.+)$", re.DOTALL)
_TAIL_CHARS = 4000


def _fold(text: str) -> str:
    return " ".join(text.replace("$", "").split()).casefold().rstrip(".")


def parse_gold(gold: Any) -> tuple[Optional[str], dict[str, str]]:
    """``(letter, {letter: option text})`` of a gold; ``(None, {})`` where it is neither form."""
    if not isinstance(gold, str):
        return None, {}
    text = gold.strip()
    if text.startswith("{"):
        try:
            data = json.loads(text)
        except ValueError:
            return None, {}
        letter, options = data.get("answer"), data.get("options") or {}
        if not isinstance(letter, str) or not isinstance(options, dict):
            return None, {}
        return letter.strip().upper(), {str(k).upper(): str(v) for k, v in options.items()}
    match = _LETTER_ONLY.match(text.upper())
    return (match.group(1), {}) if match else (None, {})


@register_grader("multiple_choice")
class MultipleChoiceGrader(Grader):
    r"""A response is right when its final answer names the gold's letter (``\boxed{C}``, ``(C)``, ``C.``, "the
    answer is C") or states the gold option's text (compared case-folded, whitespace collapsed); a response naming
    another option is wrong.

    The final answer is the last ``\boxed{}``, else the last "answer is X" phrase (in the last 4000 characters).
    Answers cluster by the letter they name (an option's text counts as its letter where the options are known).
    """

    name = "multiple_choice"

    def extract(self, response: str, extraction: str = "boxed") -> Optional[str]:
        if not isinstance(response, str):
            return None
        boxed = MATH.extract(response, "boxed")
        if boxed is not None:
            return boxed.strip()
        phrases = list(_ANSWER_PHRASE.finditer(response[-_TAIL_CHARS:]))
        return phrases[-1].group(1) if phrases else None

    @staticmethod
    def letter_of(answer: Optional[str], options: dict[str, str]) -> Optional[str]:
        """The letter an answer names: a letter form, or an option's exact text; None otherwise."""
        if answer is None:
            return None
        text = answer.strip().replace("\\text{", "").replace("}", "").strip()
        match = _LETTER_ONLY.match(text.upper()) or _LETTER_THEN_TEXT.match(text)
        if match:
            return match.group(1).upper()
        folded = _fold(text)
        return next((letter for letter, option in options.items() if _fold(option) == folded), None)

    def equivalent(self, preds, golds, timeout=2.0):
        out = []
        for pred, gold in zip(preds, golds):
            letter, options = parse_gold(gold)
            if letter is None:  # another extracted answer: the same letter, or the same text
                other = self.letter_of(gold, {})
                mine = self.letter_of(pred, {})
                out.append(pred is not None and gold is not None and
                           (mine == other if mine and other else _fold(pred) == _fold(gold)))
            else:
                out.append(self.letter_of(pred, options) == letter)
        return out

    def grade(self, responses, golds, *, timeout=2.0, processes=None, questions=None, extraction="boxed"):
        answers = [self.extract(r) for r in responses]
        return [Verdict.binary(ok) for ok in self.equivalent(answers, golds, timeout)]

    def gold_problem(self, gold):
        letter, options = parse_gold(gold)
        if letter is None:
            return 'it is neither a letter nor {"answer": <letter>, "options": {...}}'
        if options and letter not in options:
            return f"its letter {letter!r} is not one of the options {sorted(options)}"
        return None


def shuffled_choice_row(row_id: str, question: str, right: str, wrong: list[str], seed: int = 0) -> dict:
    """A GPQA-style row: the right option and the wrong ones shuffled by ``random.Random(f"{seed}:{row_id}")``,
    written into the problem as ``(A) ...`` lines.

    Returns ``problem``, ``answer`` (the JSON gold of :func:`parse_gold`), ``options`` (letter -> text) and
    ``option_order`` (for each letter, the index of its option in ``[right, *wrong]``: 0 is the right one).

    Example::

        >>> row = shuffled_choice_row("q1", "2+2?", "4", ["3", "5", "22"], seed=0)
        >>> row["options"][json.loads(row["answer"])["answer"]], sorted(row["option_order"])
        ('4', [0, 1, 2, 3])
    """
    order = list(range(1 + len(wrong)))
    random.Random(f"{seed}:{row_id}").shuffle(order)
    texts = [right, *wrong]
    options = {LETTERS[i]: texts[k].strip() for i, k in enumerate(order)}
    letter = LETTERS[order.index(0)]
    listing = "\n".join(f"({k}) {v}" for k, v in options.items())
    problem = (f"{question.strip()}\n\n{listing}\n\nAnswer with the letter of the correct option, as "
               "\\boxed{X}.")
    return {"problem": problem, "answer": json.dumps({"answer": letter, "options": options}, ensure_ascii=False),
            "options": options, "option_order": order}

r"""The ``physics`` grader: several boxed answers per response, each worth its points, graded part by part.

A gold is a JSON object ``{"answers": [...], "points": [...], "units": [...]}`` (``points`` and ``units`` optional,
one per answer), a JSON list of answers, or one answer as plain text; each answer may be boxed
(``\boxed{$\beta = 2$}``, HiPhO's form). With n gold answers, a response's last n ``\boxed{}`` contents are its
answers, in order (a response with fewer boxes has its first parts missing, as the reference reads it). Each part is
decided by the first of these tiers that says yes:

1. ``rule``: the reference reward's string and sympy rules (units, relative precision 2e-3, scientific notation,
   multiple choice, true/false: :mod:`~tempo_pl.rewards.physics_rules`), after removing the gold's declared unit
   from the answer; in the grading worker processes, bounded by ``rule_timeout_s``;
2. ``math-verify``: math-verify equivalence with the gold as gold (``math_verify: false`` leaves it out, which is
   the reference's reward exactly);
3. ``judge``: the judge model (:mod:`~tempo_pl.rewards.judge`), only when ``judge`` is configured.

The reward is the share of parts right (0 to 1, the reference's ``score``); the points earned and what decided each
part ride along in the :class:`~tempo_pl.rewards.graders.Verdict`. Example::

    >>> grader = PhysicsGrader()
    >>> gold = '{"answers": ["\\\\boxed{2.2\\\\times10^{3}}", "\\\\boxed{B}"], "points": [0.3, 0.2]}'
    >>> v = grader.grade(["... \\boxed{2201} and \\boxed{C}"], [gold])[0]
    >>> v.score, v.points, v.scored_by
    (0.5, 0.3, ('rule', 'none'))
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Optional, Union

from tempo_pl.rewards import grading
from tempo_pl.rewards.grading_pool import check_processes, run_pairs
from tempo_pl.rewards.graders import Grader, Verdict, register_grader
from tempo_pl.rewards.judge import Judge, JudgeConfig

PART_SEPARATOR = " ;; "
"""Joins the parts of an extracted answer (what the label-free rewards vote on)."""
MAX_PARTS = 64


@dataclass(frozen=True)
class PhysicsGold:
    answers: tuple[str, ...]
    points: tuple[float, ...]
    units: tuple[Optional[str], ...]


def _box_contents(text: str, limit: int) -> list[str]:
    r"""The last ``limit`` ``\boxed{...}`` (or ``\fbox``) of ``text``, in order; an unclosed box is skipped, a box
    that is not ``\boxed{`` counts as an empty answer."""
    found: list[str] = []
    rest = text
    while rest and len(found) < limit:
        start = rest.rfind("\\boxed")
        if start < 0:
            start = rest.rfind("\\fbox")
        if start < 0:
            break
        depth, end = 0, None
        for i in range(start, len(rest)):
            if rest[i] == "{":
                depth += 1
            elif rest[i] == "}":
                depth -= 1
                if depth == 0:
                    end = i
                    break
        if end is not None:
            box = rest[start:end + 1]
            found.append(box[len("\\boxed{"):-1] if box.startswith("\\boxed{") else "")
        rest = rest[:start]
    return found[::-1]


def unboxed_gold(answer: str) -> str:
    """A gold answer as compared: the content of its last box, or the answer itself where it has none."""
    boxes = _box_contents(answer, 1)
    return boxes[0] if boxes else answer


def _as_list(value: Any, key: str) -> list:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise ValueError(f"{key} is a string that is not a JSON list: {value[:80]!r}") from None
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"{key} must be a list, got {type(value).__name__}")
    return list(value)


def parse_gold(gold: Union[str, Mapping, list]) -> PhysicsGold:
    """The answers, points (1 each by default) and units (None each by default) of a gold; ``ValueError`` names
    what is wrong."""
    if isinstance(gold, str):
        text = gold.strip()
        if text[:1] in "[{":
            try:
                gold = json.loads(text)
            except ValueError:
                gold = text
        else:
            gold = text
    if isinstance(gold, str):
        gold = {"answers": [gold]}
    elif isinstance(gold, (list, tuple)):
        gold = {"answers": list(gold)}
    if not isinstance(gold, Mapping) or "answers" not in gold:
        raise ValueError('a physics gold is {"answers": [...], "points": [...], "units": [...]}, a list or a string')
    answers = [str(a) for a in _as_list(gold["answers"], "answers")]
    if not answers or len(answers) > MAX_PARTS:
        raise ValueError(f"a physics gold needs 1 to {MAX_PARTS} answers, got {len(answers)}")
    points = _as_list(gold.get("points") or [1.0] * len(answers), "points")
    units = _as_list(gold.get("units") or [None] * len(answers), "units")
    if len(points) != len(answers) or len(units) != len(answers):
        raise ValueError(f"a physics gold has {len(answers)} answers but {len(points)} points and {len(units)} units")
    points = [float(p) for p in points]
    units = [None if u in (None, "", "null") else str(u) for u in units]
    return PhysicsGold(tuple(answers), tuple(points), tuple(units))


def without_unit(answer: str, unit: Optional[str]) -> str:
    r"""``answer`` without a trailing ``unit`` (bare, ``\text{}``, ``\mathrm{}`` or ``\,``-separated)."""
    if not unit:
        return answer
    unit_pattern = re.escape(unit.strip().strip("$"))
    separator, wrapped = r"(\\,|\\;|\\ |~|\s)*", r"\\(text|mathrm|rm)\{\s*" + unit_pattern + r"\s*\}"
    pattern = separator + "(" + wrapped + "|" + unit_pattern + r")\s*\$?\s*$"
    stripped = re.sub(pattern, "", answer)
    return stripped if stripped.strip() else answer


@register_grader("physics")
class PhysicsGrader(Grader):
    """Physics answers with points (see the module docstring).

    Args:
        rule_timeout_s: seconds the rule tier may spend on one part (sympy); a slower part goes to the next tier.
        math_verify: try math-verify where the rules say no (the reference's reward has this step commented out).
        judge: ``{base_url, model, max_tokens, timeout_s, max_concurrency, ...}`` of a judge model
            (:class:`~tempo_pl.rewards.judge.JudgeConfig`); off when absent.
        processes: grading worker processes (default: the CPUs available).
    """

    name = "physics"

    def __init__(self, rule_timeout_s: float = 5.0, math_verify: bool = True,
                 judge: Optional[Mapping[str, Any]] = None, processes: Optional[int] = None) -> None:
        if not rule_timeout_s > 0:
            raise ValueError(f"physics grader: rule_timeout_s must be > 0, got {rule_timeout_s}")
        self.rule_timeout_s = float(rule_timeout_s)
        self.math_verify = bool(math_verify)
        self.processes = check_processes(processes)
        try:
            self.judge = None if judge is None else Judge(JudgeConfig(**dict(judge)))
        except TypeError as error:
            raise ValueError(f"physics grader: judge options: {error}") from None
        self._scored_by: dict[str, int] = {}

    def setup(self) -> None:
        if self.judge is not None:
            self.judge.check()

    def take_counters(self) -> dict[str, float]:
        """The judge's counters and ``parts_<tier>``: how many parts each tier decided (``none``: wrong)."""
        counts = dict(self.judge.take_counters()) if self.judge is not None else {}
        counts.update({f"parts_{scorer}": float(self._scored_by.get(scorer, 0))
                       for scorer in ("rule", "math-verify", "judge", "none")})
        self._scored_by = {}
        return counts

    def gold_problem(self, gold: Any) -> Optional[str]:
        try:
            parse_gold(gold)
        except (ValueError, TypeError) as error:
            return str(error)
        return None

    def extract(self, response: str, extraction: str = "boxed") -> Optional[str]:
        if not isinstance(response, str):
            return None
        parts = [p.strip() for p in _box_contents(response, MAX_PARTS)]
        return PART_SEPARATOR.join(parts) if any(parts) else None

    def equivalent(self, preds, golds, timeout=2.0):
        """Two extracted answers are equal when they have as many parts and the rules accept each pair both ways;
        an extracted answer against a gold (JSON) is equal when every part is graded right."""
        pairs, owners, against_gold = [], [], {}
        for i, (p, g) in enumerate(zip(preds, golds)):
            if p is None or g is None:
                continue
            if g.lstrip()[:1] in "[{":
                against_gold[i] = "".join(f"\\boxed{{{part}}}" for part in p.split(PART_SEPARATOR))
                continue
            ps, gs = p.split(PART_SEPARATOR), g.split(PART_SEPARATOR)
            if len(ps) == len(gs):
                for a, b in zip(ps, gs):
                    pairs += [(a, b), (b, a)]
                    owners += [i, i]
        verdicts = run_pairs(pairs, self.rule_timeout_s, self.processes, rule="physics") if pairs else []
        out = [p is not None and g is not None and len(p.split(PART_SEPARATOR)) == len(g.split(PART_SEPARATOR))
               for p, g in zip(preds, golds)]
        for owner, ok in zip(owners, verdicts):
            out[owner] = out[owner] and ok
        if against_gold:
            graded = self.grade(list(against_gold.values()), [golds[i] for i in against_gold], timeout=timeout)
            for i, verdict in zip(against_gold, graded):
                out[i] = verdict.correct
        return out

    def grade(self, responses, golds, *, timeout=2.0, processes=None, questions=None, extraction="boxed"):
        questions = list(questions) if questions is not None else [""] * len(responses)
        parsed: list[Optional[PhysicsGold]] = []
        for gold in golds:
            try:
                parsed.append(parse_gold(gold))
            except (ValueError, TypeError):
                parsed.append(None)  # reported once by the Verifier through gold_problem
        # one entry per part: (response index, part index, answer, gold answer)
        parts: list[tuple[int, int, str, str]] = []
        for i, (response, gold) in enumerate(zip(responses, parsed)):
            if gold is None or not isinstance(response, str):
                continue
            n = len(gold.answers)
            boxes = _box_contents(response, n)
            if not any(boxes):
                continue
            answers = [""] * (n - len(boxes)) + boxes
            for k, answer in enumerate(answers):
                parts.append((i, k, without_unit(answer, gold.units[k]), unboxed_gold(gold.answers[k])))
        decided = self._decide(parts, questions, timeout)
        verdicts = []
        for i, gold in enumerate(parsed):
            if gold is None:
                verdicts.append(Verdict(0.0, 0.0, ("none",)))
                continue
            scorers = ["none"] * len(gold.answers)
            for (owner, k, _, _), scorer in zip(parts, decided):
                if owner == i:
                    scorers[k] = scorer
            right = [s != "none" for s in scorers]
            for s in scorers:
                self._scored_by[s] = self._scored_by.get(s, 0) + 1
            verdicts.append(Verdict(sum(right) / len(right), sum(p for p, r in zip(gold.points, right) if r),
                                    tuple(scorers)))
        return verdicts

    def _decide(self, parts: list[tuple[int, int, str, str]], questions: list[str], timeout: float) -> list[str]:
        """What decided each part right (``none`` where nothing did), tier by tier over the undecided parts."""
        scorers = ["none"] * len(parts)
        todo = [j for j, (_, _, answer, _) in enumerate(parts) if answer.strip()]
        pairs = list(dict.fromkeys((parts[j][2], parts[j][3]) for j in todo))
        by_rule = dict(zip(pairs, run_pairs(pairs, self.rule_timeout_s, self.processes, symmetric=False,
                                            rule="physics")))
        for j in todo:
            if by_rule[(parts[j][2], parts[j][3])]:
                scorers[j] = "rule"
        todo = [j for j in todo if scorers[j] == "none"]
        if self.math_verify and todo:
            ok = grading.are_equivalent([parts[j][2] for j in todo], [parts[j][3] for j in todo],
                                        processes=self.processes, timeout=timeout, symmetric=False)
            for j, right in zip(todo, ok):
                if right:
                    scorers[j] = "math-verify"
            todo = [j for j in todo if scorers[j] == "none"]
        if self.judge is not None and todo:
            asked = self.judge.ask_many([(questions[parts[j][0]], parts[j][2], parts[j][3]) for j in todo])
            for j, right in zip(todo, asked):
                if right:
                    scorers[j] = "judge"
        return scorers

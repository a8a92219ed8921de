"""An offline multi-step arithmetic task with a labeled set D_L and a shifted unlabeled set D_U.

Each problem is a chain of operations on a running integer::

    problem:  "Start with 7. Add 5, multiply by 3, subtract 4."
    solution: "7 + 5 = 12\\n12 * 3 = 36\\n36 - 4 = 32\\n\\boxed{32}"
    answer:   "32"

The worked solution spends one line per operation, so the number of reasoning steps is the number of operations,
and the answer is always a plain non-negative integer inside ``\\boxed{}``.

The shift. D_L ("labeled") draws 2-4 operations, D_U ("unlabeled") and its twin "heldout" exactly 4: test time asks
for the longest chains, which the warm-started policy solves least often, but which it can solve, so that a
test-time method has correct samples to reinforce. Two other shifts were measured and rejected as defaults (tiny
char-level Qwen3 after SFT on D_L): a step count absent from D_L (D_L 2-3 steps, D_U 4) is solved ~5% of the time
whatever the training length, because the policy always stops after the longest chain it was taught; operands
beyond D_L's range (``unlabeled_max_operand=12..15``) leave pass@8 stuck near 50%, the unseen-operand questions
being out of reach. Both remain available through the knobs.

A style knob, ``recheck_percent``, makes that share of the worked solutions follow every step with a check line
(``check: c - b = a`` after ``a + b = c``): a reasoning habit that roughly doubles a solution's length. With the
demo's 72-token response budget a rechecked chain of 3 or more steps never reaches its ``\\boxed{}``, a failure the
critic sees at the last token (so it can value such a response at -1), unlike an arithmetic slip. It is off by
default; the demo (``configs/demo/``) sets 90% on small-number chains (``max_multiplier=1&max_value=20``), so that its
warm-started policy leaves most D_U samples unfinished and test-time training has a failure to remove that its
critic can see.

Two knobs make the drift scenario (``tempo-pl demo --scenario drift``): ``verified_percent`` and
``shortcut_verified_percent`` write a ``verified`` line before the box in that share of the full and of the
shortcut (``shortcut_percent``) worked solutions. The line checks nothing; with the first share above the second it
marks right answers more often than wrong ones, a surface feature a critic calibrated once can learn to value.

Splits are disjoint by construction: every problem text hashes to exactly one split, and a split only keeps the
problems that hash to it, so no D_U question can ever appear in D_L, whatever the sizes and difficulties. Each split
draws from its own random stream (seeded by ``seed`` and the split name), so a split's first rows do not depend on
its size or on the other splits.

As a data source the task is addressed as ``synthetic:<split>?key=value&...`` (see :func:`parse_synthetic_path`),
e.g. ``synthetic:unlabeled?seed=0&size=64``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Union
from urllib.parse import parse_qsl

SPLITS = ("labeled", "unlabeled", "heldout")
SOURCE_PREFIX = "synthetic"

_OPERATION_WORDS = {"+": "add {x}", "-": "subtract {x}", "*": "multiply by {x}"}


@dataclass(frozen=True)
class SyntheticTaskSpec:
    """The task's seed, split sizes and difficulty knobs.

    D_L uses the ``labeled_*`` knobs; D_U and the held-out set share the ``unlabeled_*`` knobs. Every intermediate
    value stays within ``[0, max_value]``, which bounds the digits the model has to handle. Each step picks one of
    the operations that keep the value in range (uniformly among ``+``, ``-``, ``*``), then its operand.

    Example::

        spec = SyntheticTaskSpec(seed=0, unlabeled_size=64)
        rows = make_split(spec, "unlabeled")
    """

    seed: int = 0
    """Seeds every split's random stream; the same seed always yields the same rows."""
    labeled_size: int = 2048
    """Rows in D_L (the labeled set: SFT warm start, zero-RL and the E-step's critic recalibration)."""
    unlabeled_size: int = 128
    """Rows in D_U (the unlabeled test questions the M-step trains on)."""
    heldout_size: int = 128
    """Rows in the held-out set drawn from D_U's distribution (never trained on)."""
    labeled_min_steps: int = 2
    """Fewest operations in a D_L problem."""
    labeled_max_steps: int = 4
    """Most operations in a D_L problem."""
    labeled_max_operand: int = 9
    """Largest operand of an addition or subtraction in D_L, and of the start value."""
    unlabeled_min_steps: int = 4
    """Fewest operations in a D_U / held-out problem."""
    unlabeled_max_steps: int = 4
    """Most operations in a D_U / held-out problem."""
    unlabeled_max_operand: int = 9
    """Largest operand of an addition or subtraction in D_U / held-out, and of the start value."""
    max_multiplier: int = 5
    """Largest factor of a multiplication (factors start at 2); 1 disables multiplication."""
    max_value: int = 99
    """Upper bound on every intermediate value and on the answer (lower bound is 0)."""
    recheck_percent: int = 0
    """Percent of worked solutions, in every split, that recheck each step by its inverse operation (a second line
    ``check: c - b = a`` after ``a + b = c``). The problems do not depend on it (the choice has its own random
    stream)."""
    shortcut_percent: int = 0
    """Percent of trap-form worked solutions (last operation a subtraction), in every split, that drop the final
    subtraction (a ``drop - x`` line, then the value before it boxed: a consistent wrong answer). The problems do
    not depend on it (the choice has its own random stream)."""
    unlabeled_trap_percent: int = 0
    """Percent of D_U / held-out chains whose last operation is forced to be a subtraction (the trap form) when the
    value allows one; the others are drawn as D_L's are. 0 leaves every split's problems as without the knob."""
    verified_percent: int = 0
    """Percent of the worked solutions that compute every step, in every split, that write a ``verified`` line
    before the boxed answer: a check that is written, not computed (the problems do not depend on it)."""
    shortcut_verified_percent: int = 0
    """The same for the worked solutions that drop the final subtraction (``shortcut_percent``): below
    ``verified_percent``, the line marks a right answer more often than a wrong one without making it right."""

    def __post_init__(self) -> None:
        for name in ("labeled_size", "unlabeled_size", "heldout_size"):
            if getattr(self, name) < 0:
                raise ValueError(f"SyntheticTaskSpec.{name} must be >= 0, got {getattr(self, name)}")
        for prefix in ("labeled", "unlabeled"):
            lo, hi = getattr(self, f"{prefix}_min_steps"), getattr(self, f"{prefix}_max_steps")
            if not 1 <= lo <= hi:
                raise ValueError(
                    f"SyntheticTaskSpec.{prefix}_min_steps/{prefix}_max_steps must satisfy 1 <= min <= max, "
                    f"got {lo} and {hi}"
                )
            operand = getattr(self, f"{prefix}_max_operand")
            if operand < 1:
                raise ValueError(f"SyntheticTaskSpec.{prefix}_max_operand must be >= 1, got {operand}")
            if operand > self.max_value:
                raise ValueError(
                    f"SyntheticTaskSpec.{prefix}_max_operand ({operand}) exceeds max_value ({self.max_value})"
                )
        for name in ("recheck_percent", "shortcut_percent", "unlabeled_trap_percent", "verified_percent",
                     "shortcut_verified_percent"):
            if not 0 <= getattr(self, name) <= 100:
                raise ValueError(f"SyntheticTaskSpec.{name} must be in [0, 100], got {getattr(self, name)}")
        if self.max_multiplier < 1:
            raise ValueError(f"SyntheticTaskSpec.max_multiplier must be >= 1, got {self.max_multiplier}")

    def size(self, split: str) -> int:
        return getattr(self, f"{_check_split(split)}_size")

    def difficulty(self, split: str) -> tuple[int, int, int]:
        """``(min_steps, max_steps, max_operand)`` of a split."""
        prefix = "labeled" if _check_split(split) == "labeled" else "unlabeled"
        return (
            getattr(self, f"{prefix}_min_steps"),
            getattr(self, f"{prefix}_max_steps"),
            getattr(self, f"{prefix}_max_operand"),
        )


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"unknown synthetic split {split!r}; expected one of {SPLITS}")
    return split


def split_of_problem(problem: str) -> str:
    """The one split a problem text may belong to (a stable hash, independent of ``PYTHONHASHSEED``)."""
    digest = hashlib.sha256(problem.encode("utf-8")).digest()
    return SPLITS[int.from_bytes(digest[:8], "big") % len(SPLITS)]


def _feasible_moves(value: int, spec: SyntheticTaskSpec, max_operand: int) -> list[tuple[str, int]]:
    moves = [("+", x) for x in range(1, max_operand + 1) if value + x <= spec.max_value]
    moves += [("-", x) for x in range(1, min(max_operand, value) + 1)]
    moves += [("*", x) for x in range(2, spec.max_multiplier + 1) if value * x <= spec.max_value]
    return moves


def _draw_chain(rng: random.Random, spec: SyntheticTaskSpec, split: str) -> tuple[int, list[tuple[str, int]]]:
    min_steps, max_steps, max_operand = spec.difficulty(split)
    steps = rng.randint(min_steps, max_steps)
    start = rng.randint(1, max_operand)
    value, ops = start, []
    # drawn only when the knob is on, so that the problems of a spec without it stay as they were
    force_trap = split != "labeled" and spec.unlabeled_trap_percent > 0 and rng.random() * 100 < spec.unlabeled_trap_percent
    for step in range(steps):
        # Pick the operation first, then its operand, so that "+", "-" and "*" are equally frequent whenever all
        # three fit, instead of being weighted by how many operands each admits.
        moves = _feasible_moves(value, spec, max_operand)
        symbols = sorted({op for op, _ in moves})
        symbol = "-" if force_trap and step == steps - 1 and "-" in symbols else rng.choice(symbols)
        operand = rng.choice([x for op, x in moves if op == symbol])
        ops.append((symbol, operand))
        value = _apply(value, symbol, operand)
    return start, ops


def _apply(value: int, symbol: str, operand: int) -> int:
    if symbol == "+":
        return value + operand
    if symbol == "-":
        return value - operand
    return value * operand


def render_problem(start: int, ops: list[tuple[str, int]]) -> str:
    words = ", ".join(_OPERATION_WORDS[op].format(x=x) for op, x in ops)
    return f"Start with {start}. {words[0].upper()}{words[1:]}."


_INVERSE = {"+": "-", "-": "+", "*": "/"}
_RECHECK_PREFIX = "check: "
_SHORTCUT_PREFIX = "drop - "
VERIFIED_LINE = "verified"
"""The line ``verified_percent`` adds before the box: it claims a check that nothing in the solution does."""


def is_trap_form(ops: list[tuple[str, int]]) -> bool:
    """Whether a chain is of the consensus trap's form: its last operation is a subtraction."""
    return bool(ops) and ops[-1][0] == "-"


def render_solution(
    start: int, ops: list[tuple[str, int]], recheck: bool = False, shortcut: bool = False, verified: bool = False
) -> tuple[str, int]:
    """One ``a op b = c`` line per operation (each followed by ``check: c inv b = a`` when ``recheck``), then the
    boxed answer; returns ``(solution, boxed value)``. With ``shortcut`` a trap-form chain's final subtraction is
    dropped (a ``drop - x`` line) and the value before it is boxed: the boxed value is then not the answer. With
    ``verified`` a :data:`VERIFIED_LINE` comes before the box."""
    if shortcut and not is_trap_form(ops):
        raise ValueError("render_solution: shortcut needs a chain whose last operation is a subtraction")
    lines, value = [], start
    for index, (op, x) in enumerate(ops):
        if shortcut and index == len(ops) - 1:
            lines.append(f"{_SHORTCUT_PREFIX}{x}")
            break
        result = _apply(value, op, x)
        lines.append(f"{value} {op} {x} = {result}")
        if recheck:
            lines.append(f"{_RECHECK_PREFIX}{result} {_INVERSE[op]} {x} = {value}")
        value = result
    if verified:
        lines.append(VERIFIED_LINE)
    lines.append(f"\\boxed{{{value}}}")
    return "\n".join(lines), value


def make_split(spec: SyntheticTaskSpec, split: str) -> list[dict]:
    """Rows ``{"id", "problem", "answer", "solution"}`` of one split, deterministic in ``spec``.

    ``answer`` is the final value as a plain integer string; ``solution`` is the worked solution ending in
    ``\\boxed{answer}``. Problems are distinct within a split and never shared between splits.
    """
    size = spec.size(split)
    rng = random.Random(f"tempo-pl-synthetic/{spec.seed}/{split}")
    style_rng = random.Random(f"tempo-pl-synthetic/{spec.seed}/{split}/style")
    shortcut_rng = random.Random(f"tempo-pl-synthetic/{spec.seed}/{split}/shortcut")
    verified_rng = random.Random(f"tempo-pl-synthetic/{spec.seed}/{split}/verified")
    rows: list[dict] = []
    seen: set[str] = set()
    # A split owns about a third of the problem space; give up (with a clear error) rather than loop forever when
    # the difficulty knobs leave too few distinct problems for the requested size.
    budget = 200 * size + 1000
    while len(rows) < size and budget > 0:
        budget -= 1
        start, ops = _draw_chain(rng, spec, split)
        problem = render_problem(start, ops)
        if problem in seen or split_of_problem(problem) != split:
            continue
        seen.add(problem)
        recheck = style_rng.random() * 100 < spec.recheck_percent
        shortcut = is_trap_form(ops) and shortcut_rng.random() * 100 < spec.shortcut_percent
        verified_share = spec.shortcut_verified_percent if shortcut else spec.verified_percent
        verified = verified_rng.random() * 100 < verified_share
        solution, _ = render_solution(start, ops, recheck=recheck, shortcut=shortcut, verified=verified)
        answer = _final_value(start, ops)
        rows.append({"id": f"{split}-{len(rows):05d}", "problem": problem, "answer": str(answer), "solution": solution})
    if len(rows) < size:
        raise ValueError(
            f"synthetic split {split!r}: found only {len(rows)} distinct problems of the {size} requested; "
            f"raise the difficulty knobs (steps, max_operand, max_value) or lower {split}_size"
        )
    return rows


def _final_value(start: int, ops: list[tuple[str, int]]) -> int:
    value = start
    for op, x in ops:
        value = _apply(value, op, x)
    return value


def num_steps(row: dict) -> int:
    """Reasoning steps of a row: its solution's ``a op b = c`` lines and a dropped step's ``drop - x`` line (rechecks
    are not steps)."""
    return sum(
        1 for line in row["solution"].splitlines()
        if (" = " in line and not line.startswith(_RECHECK_PREFIX)) or line.startswith(_SHORTCUT_PREFIX)
    )


def took_shortcut(solution: str) -> bool:
    """Whether a solution (worked or sampled) dropped a final subtraction: the trap's surface mark."""
    return any(line.startswith(_SHORTCUT_PREFIX) for line in solution.splitlines())


def wrote_verified(solution: str) -> bool:
    """Whether a solution (worked or sampled) writes the unchecked :data:`VERIFIED_LINE`: the drift scenario's
    surface feature."""
    return any(line.strip() == VERIFIED_LINE for line in solution.splitlines())


_PROBLEM = re.compile(r"Start with (\d+)\. ([^.]+)\.")
RESPONSE_KINDS = ("shortcut", "early stop", "full")
"""What a sampled solution did (:func:`response_kind`): dropped the final subtraction, computed fewer steps than
the problem has, or computed them all (right or with a slip)."""


def problem_steps(text: str) -> Optional[int]:
    """The number of operations of the first synthetic problem in ``text`` (a problem, or a prompt holding one in
    any template); None when it holds none."""
    parsed = parse_problem(text)
    return None if parsed is None else len(parsed[1])


def parse_problem(text: str) -> Optional[tuple[int, list[tuple[str, int]]]]:
    """The start value and operations of the first synthetic problem in ``text`` (the inverse of
    :func:`render_problem`); None when it holds none."""
    match = _PROBLEM.search(text)
    if match is None:
        return None
    symbols = {words.removesuffix(" {x}"): op for op, words in _OPERATION_WORDS.items()}
    ops = []
    for words in match.group(2).split(", "):
        name, _, operand = (words[0].lower() + words[1:]).rpartition(" ")
        if name not in symbols or not operand.isdigit():
            return None
        ops.append((symbols[name], int(operand)))
    return int(match.group(1)), ops


def response_kind(response: str, steps: int) -> str:
    """One of :data:`RESPONSE_KINDS` for a sampled solution of a ``steps``-operation problem: a ``drop - x`` line
    makes it a shortcut; otherwise fewer computed ``a op b = c`` lines (rechecks not counted) than ``steps`` an
    early stop; otherwise full."""
    if took_shortcut(response):
        return "shortcut"
    return "early stop" if num_steps({"solution": response}) < steps else "full"


def _coerce(field: dataclasses.Field, text: str):
    if field.type in (int, "int"):
        return int(text)
    raise TypeError(f"SyntheticTaskSpec.{field.name} has unsupported type {field.type!r}")


def parse_synthetic_path(path: str) -> tuple[SyntheticTaskSpec, str]:
    """Parse ``synthetic:<split>?key=value&...`` into a spec and a split.

    Keys are :class:`SyntheticTaskSpec` field names; ``size`` is a shorthand for the requested split's size
    (``<split>_size``). Unset keys keep their defaults, so ``synthetic:labeled`` is D_L at seed 0. Example::

        synthetic:unlabeled?seed=3&size=64&unlabeled_max_steps=5
    """
    prefix = f"{SOURCE_PREFIX}:"
    if not path.startswith(prefix):
        raise ValueError(f"not a synthetic dataset path: {path!r} (expected '{prefix}<split>?key=value&...')")
    split, _, query = path[len(prefix) :].partition("?")
    split = _check_split(split)
    fields = {f.name: f for f in dataclasses.fields(SyntheticTaskSpec)}
    kwargs = {}
    for key, text in parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query)):
        name = f"{split}_size" if key == "size" else key
        if name not in fields:
            raise ValueError(f"{path!r}: unknown key {key!r}; valid keys: size, {', '.join(fields)}")
        if name in kwargs:
            raise ValueError(f"{path!r}: key {key!r} given twice")
        try:
            kwargs[name] = _coerce(fields[name], text)
        except ValueError:
            raise ValueError(f"{path!r}: key {key!r} must be an integer, got {text!r}") from None
    return SyntheticTaskSpec(**kwargs), split


def load_synthetic(path: str) -> list[dict]:
    """Rows of the split a ``synthetic:<split>?...`` path names (the registered data-source loader)."""
    spec, split = parse_synthetic_path(path)
    return make_split(spec, split)


def write_jsonl(rows: Iterable[dict], path: Union[str, Path]) -> Path:
    """Write rows as JSON lines (creating parent folders) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path

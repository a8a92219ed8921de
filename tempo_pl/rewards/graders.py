r"""Graders: how a dataset's answers are extracted, compared and graded, named per dataset by ``grader:`` in YAML.

Every dataset spec (D_L, D_U, ``mixed`` and each eval set) may name its grader; the rows carry it, and everything
that reads an answer goes through it: the :class:`~tempo_pl.rewards.verifier.Verifier`, the evaluation's
correctness, TTRL's majority vote, EMPO's clusters and the pseudo-label metrics. Built-ins:

- ``math`` (default): the final ``\boxed{}`` answer, math-verify equivalence (:mod:`~tempo_pl.rewards.grading`);
- ``multiple_choice``: a letter or an option's text (:mod:`~tempo_pl.rewards.multiple_choice`);
- ``exact``: the final answer equal as a string (case and whitespace folded unless told otherwise);
- ``regex``: the last match of a pattern in the response, then as ``exact``;
- ``physics``: several answers with points, units, tolerances, an optional judge (:mod:`~tempo_pl.rewards.physics`);
- ``module:name``: a grader registered by ``module``, a :class:`Grader` subclass, or a plain function
  ``fn(response, gold) -> bool | float`` (a score in [0, 1]).

YAML::

    eval_sets:
      - {path: gpqa_diamond, grader: multiple_choice}
      - {path: data/codes.jsonl, grader: {name: regex, pattern: "CODE-(\\d+)"}}
      - {path: data/mine.jsonl, grader: my_graders:grade_units}

The contract every grader keeps: a call is bounded in time, model output never raises (a response it cannot read is
wrong), and heavy comparisons run in the grading worker processes (:mod:`~tempo_pl.rewards.grading_pool`).
"""

from __future__ import annotations

import concurrent.futures
import importlib
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Callable, Optional, Union

from tempo_pl.rewards import grading

log = logging.getLogger(__name__)

__all__ = ["FunctionGrader", "Grader", "GraderSpec", "Verdict", "build_grader", "counter_metrics", "grader_names",
           "register_grader", "row_graders", "take_counts"]

GraderSpec = Union[None, str, Mapping[str, Any]]
"""``None`` (math), a name, or ``{name: <name>, <option>: <value>, ...}``."""

SCORERS = ("rule", "math-verify", "judge", "function", "none")
"""What decided a part: a grader's own rules, math-verify, the judge model, a user function, or nothing (wrong)."""


@dataclass(frozen=True)
class Verdict:
    """The grade of one response.

    Args:
        score: the share of the gold's parts answered right, in [0, 1] (1 or 0 for single-answer graders).
        points: the points earned (the parts' points summed; ``score`` where the gold has no points).
        scored_by: per part, what decided it right (one of :data:`SCORERS`; ``none`` for a wrong part).
    """

    score: float
    points: float
    scored_by: tuple[str, ...]

    @property
    def correct(self) -> bool:
        """Every part right."""
        return self.score >= 1.0 - 1e-9

    @staticmethod
    def binary(right: bool, scorer: str = "rule") -> "Verdict":
        return Verdict(1.0 if right else 0.0, 1.0 if right else 0.0, (scorer if right else "none",))


class Grader:
    """Extracts, compares and grades answers. Subclass it and register it with :func:`register_grader`.

    A subclass implements :meth:`extract` and :meth:`equivalent`; :meth:`grade` (one :class:`Verdict` per response)
    defaults to comparing the extracted answer with the gold, and :meth:`cluster` to grouping answers with
    :meth:`equivalent`. :meth:`setup` checks what the grader needs outside the process (the data module calls it),
    :meth:`take_counters` hands over counts since its last call (logged under ``grading/`` through
    :func:`counter_metrics`: ``parts_<tier>`` counts become shares).
    """

    name = "grader"

    def extract(self, response: str, extraction: str = "boxed") -> Optional[str]:
        """The final answer of a response; None where it states none."""
        raise NotImplementedError

    def equivalent(self, preds: Sequence[Optional[str]], golds: Sequence[Optional[str]], timeout: float = 2.0
                   ) -> list[bool]:
        """Whether each extracted answer equals its counterpart (symmetric: used to cluster answers)."""
        raise NotImplementedError

    def grade(self, responses: Sequence[str], golds: Sequence[str], *, timeout: float = 2.0,
              processes: Optional[int] = None, questions: Optional[Sequence[str]] = None,
              extraction: str = "boxed") -> list[Verdict]:
        """One :class:`Verdict` per response against its gold."""
        answers = [_safe(self.extract, None, r, extraction) for r in responses]
        return [Verdict.binary(ok) for ok in self.equivalent(answers, golds, timeout)]

    def cluster(self, answers: Sequence[Optional[str]], timeout: float = 2.0) -> list[int]:
        """Equivalence-cluster id per answer, numbered in order of first appearance; each None is its own."""
        ids, representatives, next_id = [], [], 0
        for answer in answers:
            found = None
            if answer is not None and representatives:
                hits = self.equivalent([answer] * len(representatives), [r for _, r in representatives], timeout)
                found = next((cid for (cid, _), hit in zip(representatives, hits) if hit), None)
            if found is None:
                found, next_id = next_id, next_id + 1
                if answer is not None:
                    representatives.append((found, answer))
            ids.append(found)
        return ids

    def gold_problem(self, gold: Any) -> Optional[str]:
        """Why no response can ever match ``gold``, or None."""
        if not isinstance(gold, str) or not gold.strip():
            return "it is empty or not a string"
        return None

    def setup(self) -> None:
        """Check external dependencies (a judge endpoint); raise a clear error where one is missing."""

    def take_counters(self) -> dict[str, float]:
        """Counts since the last call (e.g. ``judge_calls``); empty for graders that keep none."""
        return {}


def _safe(fn: Callable, fallback: Any, *args: Any) -> Any:
    """``fn(*args)``, or ``fallback`` where it raises: model output never raises."""
    try:
        return fn(*args)
    except Exception as error:  # a grader bug on odd output must not stop training
        log.debug("grader %s failed on model output: %s", getattr(fn, "__qualname__", fn), error)
        return fallback


# ------------------------------------------------------------------------------------------------ registry
_GRADERS: dict[str, Callable[..., Grader]] = {}


def register_grader(name: str) -> Callable[[Callable[..., Grader]], Callable[..., Grader]]:
    """Decorator: register a :class:`Grader` subclass (or a factory of one) as ``name``; its keyword arguments are
    the options of ``grader: {name: <name>, ...}``."""

    def add(factory: Callable[..., Grader]) -> Callable[..., Grader]:
        if name in _GRADERS and _GRADERS[name] is not factory:
            raise ValueError(f"a grader named {name!r} is already registered")
        _GRADERS[name] = factory
        return factory

    return add


def grader_names() -> list[str]:
    return sorted(_GRADERS)


def _factory(name: str, where: str) -> Callable[..., Grader]:
    if name in _GRADERS:
        return _GRADERS[name]
    if ":" not in name:
        raise ValueError(f"{where}: grader must be one of {grader_names()} or 'module:name', got {name!r}")
    module_name, _, attribute = name.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(f"{where}: grader {name!r}: cannot import module {module_name!r} ({error})") from error
    if attribute in _GRADERS:
        return _GRADERS[attribute]
    target = getattr(module, attribute, None)
    if isinstance(target, type) and issubclass(target, Grader):
        return target
    if callable(target):
        return lambda **options: FunctionGrader(target, **options)
    raise ValueError(f"{where}: grader {name!r}: {module_name!r} registers no grader and has no callable "
                     f"{attribute!r}")


def build_grader(spec: GraderSpec, where: str = "grader") -> Grader:
    """The grader a dataset spec names; ``ValueError`` naming ``where`` for an unknown name or a bad option.

    Example::

        >>> build_grader(None).name, build_grader({"name": "regex", "pattern": "ID-(\\\\d+)"}).name
        ('math', 'regex')
    """
    if spec is None:
        spec = "math"
    if isinstance(spec, Grader):
        return spec
    if isinstance(spec, str):
        name, options = spec, {}
    elif isinstance(spec, Mapping) and isinstance(spec.get("name"), str):
        name, options = spec["name"], {k: v for k, v in spec.items() if k != "name"}
    else:
        raise ValueError(f"{where}: grader must be a name or {{name: ..., <options>}}, got {spec!r}")
    try:
        grader = _factory(name, where)(**options)
    except TypeError as error:
        raise ValueError(f"{where}: grader {name!r} does not take options {sorted(options)} ({error})") from None
    grader.spec = {"name": name, **options}  # plain data: what a checkpoint keeps to build it again
    return grader


def grader_spec(grader: Optional[Grader]) -> Optional[dict]:
    """What :func:`build_grader` builds ``grader`` again from (its registered name where it was built otherwise);
    None for None (the math grader)."""
    if grader is None:
        return None
    return dict(getattr(grader, "spec", None) or {"name": grader.name})


def take_counts(graders: Sequence[Grader]) -> dict[str, float]:
    """The counters of each distinct grader (taken: they restart at 0), summed by name."""
    counts: dict[str, float] = {}
    for grader in dict.fromkeys(graders):
        for key, value in grader.take_counters().items():
            counts[key] = counts.get(key, 0.0) + float(value)
    return counts


def counter_metrics(counts: Mapping[str, float]) -> dict[str, float]:
    """Counters as logged: ``parts_<tier>`` counts become ``scored_by_<tier>``, the share of graded parts that tier
    decided (``none``: no tier accepted the part); the other counters (``judge_calls`` ...) stay counts.

    Example::

        >>> counter_metrics({"parts_rule": 3, "parts_none": 1, "judge_calls": 2})
        {'judge_calls': 2, 'scored_by_rule': 0.75, 'scored_by_none': 0.25}
    """
    parts = sum(v for k, v in counts.items() if k.startswith("parts_"))
    metrics = {k: v for k, v in counts.items() if not k.startswith("parts_")}
    metrics.update({"scored_by_" + k[len("parts_"):]: v / parts if parts else 0.0 for k, v in counts.items()
                    if k.startswith("parts_")})
    return metrics


def row_graders(prompt_batch: Any) -> list[Grader]:
    """The grader of each prompt of a batch (``PromptBatch.graders``; the math grader where it has none)."""
    graders = getattr(prompt_batch, "graders", None)
    if graders is None:
        return [MATH] * len(prompt_batch)
    return [MATH if g is None else g for g in graders]


# ------------------------------------------------------------------------------------------------ built-ins
@register_grader("math")
class MathGrader(Grader):
    r"""The math grader (:mod:`~tempo_pl.rewards.grading`): the final ``\boxed{}`` (or ``####``) answer, math-verify
    equivalence in the worker processes."""

    name = "math"

    def extract(self, response: str, extraction: str = "boxed") -> Optional[str]:
        answer = grading.extract_answer(response, grading.extractor_chain(None, extraction))
        return answer if answer is not None and answer.strip() else None

    def equivalent(self, preds, golds, timeout=2.0):
        return grading.are_equivalent(preds, golds, timeout=timeout)

    def grade(self, responses, golds, *, timeout=2.0, processes=None, questions=None, extraction="boxed"):
        right = grading.grade_many(responses, golds, processes=processes, timeout=timeout, extraction=extraction)
        return [Verdict.binary(ok, "math-verify") for ok in right]

    def cluster(self, answers, timeout=2.0):
        return grading.cluster_answers(answers, timeout=timeout)

    def gold_problem(self, gold):
        return grading.gold_problem(gold)


MATH = MathGrader()


def _folded(text: Optional[str], case_sensitive: bool) -> Optional[str]:
    if text is None:
        return None
    text = " ".join(grading.normalize_answer(text).split())
    return text if case_sensitive else text.casefold()


@register_grader("exact")
class ExactGrader(Grader):
    r"""The final answer (``\boxed{}`` or ``####``) equal to the gold as a string, after removing ``$...$`` and
    collapsing whitespace; case-folded unless ``case_sensitive``.

    Args:
        case_sensitive: compare case too.
    """

    name = "exact"

    def __init__(self, case_sensitive: bool = False) -> None:
        self.case_sensitive = bool(case_sensitive)

    def extract(self, response, extraction="boxed"):
        return MATH.extract(response, extraction)

    def equivalent(self, preds, golds, timeout=2.0):
        return [p is not None and g is not None and _folded(p, self.case_sensitive) == _folded(g, self.case_sensitive)
                for p, g in zip(preds, golds)]


MAX_SCAN_CHARS = 20_000
"""The regex grader searches the last this many characters of a response: a pattern's cost stays bounded."""


@register_grader("regex")
class RegexGrader(ExactGrader):
    r"""The last match of ``pattern`` in the response (its ``answer`` group, else group 1, else the whole match),
    compared with the gold as :class:`ExactGrader` does.

    Args:
        pattern: a Python regular expression, e.g. ``"Answer:\s*([A-Z]+)"``.
        case_sensitive: compare case too (the pattern's own case is set by its flags, e.g. ``(?i)``).
    """

    name = "regex"

    def __init__(self, pattern: str, case_sensitive: bool = False) -> None:
        super().__init__(case_sensitive)
        try:
            self.pattern = re.compile(pattern)
        except (re.error, TypeError) as error:
            raise ValueError(f"regex grader: pattern {pattern!r} does not compile ({error})") from None

    def extract(self, response, extraction="boxed"):
        if not isinstance(response, str):
            return None
        last = None
        for last in self.pattern.finditer(response[-MAX_SCAN_CHARS:]):
            pass
        if last is None:
            return None
        if "answer" in self.pattern.groupindex:
            return last.group("answer")
        return last.group(1) if self.pattern.groups else last.group(0)


FUNCTION_TIMEOUT_S = 10.0


class FunctionGrader(ExactGrader):
    """A plain function ``fn(response, gold) -> bool | float`` as a grader (``grader: my_module:my_function``).

    The function runs in a thread of the calling process, bounded by ``timeout_s`` per call: a slower or raising
    call grades the response 0 (a thread cannot be killed: it is abandoned and logged). Answers are extracted and
    clustered as :class:`ExactGrader` does.

    Args:
        function: the callable.
        timeout_s: seconds one call may take.
    """

    name = "function"

    def __init__(self, function: Callable[[str, str], Union[bool, float]], timeout_s: float = FUNCTION_TIMEOUT_S
                 ) -> None:
        super().__init__()
        if not callable(function):
            raise ValueError(f"function grader: {function!r} is not callable")
        if not timeout_s > 0:
            raise ValueError(f"function grader: timeout_s must be > 0, got {timeout_s}")
        self.function, self.timeout_s = function, float(timeout_s)
        self.name = getattr(function, "__name__", "function")
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="tempo-grader")

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_pool"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="tempo-grader")

    def _score(self, response: str, gold: str) -> float:
        future = self._pool.submit(self.function, response, gold)
        try:
            value = float(future.result(timeout=self.timeout_s))
        except concurrent.futures.TimeoutError:
            log.warning("grader %s took over %.1f s on one response: graded 0 (the call is abandoned)", self.name,
                        self.timeout_s)
            self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="tempo-grader")
            return 0.0
        except Exception as error:  # the user's function failed on model output: wrong, never a crash
            log.debug("grader %s raised %s: graded 0", self.name, error)
            return 0.0
        return min(1.0, max(0.0, value)) if value == value else 0.0

    def grade(self, responses, golds, *, timeout=2.0, processes=None, questions=None, extraction="boxed"):
        verdicts = []
        for response, gold in zip(responses, golds):
            score = self._score(response, gold)
            verdicts.append(Verdict(score, score, ("function" if score > 0 else "none",)))
        return verdicts

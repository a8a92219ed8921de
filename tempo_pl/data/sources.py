"""Where prompt rows come from, and how a raw row becomes a checked :class:`Record`.

A :class:`DatasetSpec` names a source by its ``path``, resolved in this order:

1. ``"<prefix>:<argument>"`` with a prefix given to :func:`register_source` (e.g. the offline synthetic task);
2. a local ``.jsonl`` / ``.json`` / ``.parquet`` file, a folder of them, or a ``Dataset.save_to_disk`` folder
   (relative paths are also tried under ``data_dir``), read by :mod:`tempo_pl.data.readers`;
3. a shipped benchmark name (:data:`tempo_pl.data.eval_sets.BENCHMARKS`), read by ``load_benchmark``;
4. anything else is a Hugging Face Hub dataset: ``datasets.load_dataset(path, split=spec.split)``.

In Python, ``DatasetSpec(data=dataset)`` takes an in-memory ``datasets.Dataset`` or ``DatasetDict`` instead of a path.

Every row is checked before training starts: first that the mapped columns exist at all (one error naming the
expected and the found columns), then row by row; a bad row raises :class:`DataError` naming the file, the row
(line for JSON lines, index and id) and the field. A question may also be a conversation (TRL's ``prompt`` or
``messages`` column): its single user message is the question and its system message, if any, the row's own
(:mod:`tempo_pl.data.conversations`). Each record keeps the row's columns for reward functions (TRL passes every
column by name); the data module hands an unlabeled row's question and id columns only.
"""

from __future__ import annotations

import importlib
import math
import numbers
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from datasets import load_dataset

from tempo_pl.data.conversations import system_text, user_text
from tempo_pl.data.readers import FILE_SUFFIXES, DataError, Table, read_file, read_folder, table_from_dataset
MAX_REPORTED_ROWS = 5
"""How many malformed rows a :class:`DataError` lists before summarising the rest as a count."""

SourceLoader = Callable[[str], Sequence[Mapping[str, Any]]]
"""``loader(path) -> rows``, called with the whole ``DatasetSpec.path`` (``"<prefix>:<argument>"``)."""

_SOURCE_LOADERS: dict[str, SourceLoader] = {}
_PREFIX_PATTERN = re.compile(r"^[A-Za-z_][\w-]*$")
_MISSING = object()


@dataclass
class DatasetSpec:
    """One dataset of prompts, as written in the data module's YAML.

    Args: see the field docstrings.

    Example::

        unlabeled: {path: aime2024, repeat: 8}
        mixed: {path: data/train.parquet, answer_field: reward_model.ground_truth,
                labeled_field: reward_model.is_labeled, problem_field: prompt_text}
        labeled: {path: data/dl_saved, split: train, problem_field: prompt, answer_field: solution}  # save_to_disk

    In Python: ``DatasetSpec(data=Dataset.from_list(rows), name="mine", problem_field="question")``.
    """

    path: Optional[str] = None
    """A ``.jsonl`` / ``.json`` / ``.parquet`` file, a folder of them, a ``Dataset.save_to_disk`` folder, a shipped
    benchmark name (``aime2024``), a registered ``"<prefix>:<argument>"`` source, or a Hugging Face Hub dataset
    name. Exactly one of ``path`` and ``data``."""
    name: Optional[str] = None
    """Short name used in row ids (``<name>:<row id>``) and logs; default: the file stem or benchmark name."""
    split: str = "train"
    """Split to read from a Hub dataset or a ``DatasetDict`` (saved or in memory); local files, benchmarks and
    registered sources have a single split."""
    problem_field: str = "problem"
    """Column holding the question. Dotted paths reach into nested columns (``extra_info.question``). A column of
    conversations (TRL's ``prompt`` or ``messages``: lists of ``{role, content}``) gives its single user message."""
    answer_field: str = "answer"
    """Column holding the ground-truth answer (a string, or a number converted to one); dotted paths allowed, e.g.
    ``reward_model.ground_truth`` for verl parquets."""
    id_field: Optional[str] = "id"
    """Column holding a unique row id; ``None`` uses the row's position in the dataset."""
    labeled_field: Optional[str] = None
    """Boolean column saying whether a row is labeled (the reference's single mixed dataset, e.g.
    ``reward_model.is_labeled``). Required for ``mixed`` datasets and only allowed there."""
    limit: Optional[int] = None
    """Keep only the first ``limit`` rows (before ``repeat``)."""
    repeat: int = 1
    """Replicate every row this many times; the reference replicates the small test set to fill an epoch. Replicas
    keep the original row id."""
    data: Optional[Any] = None
    """Python API only: an in-memory ``datasets.Dataset`` or ``DatasetDict`` (``split`` picks the split), in place of
    ``path``. It is not saved with the hyperparameters: pass it again when rebuilding the data module."""

    def __post_init__(self) -> None:
        if (self.path is None) == (self.data is None):
            raise ValueError("DatasetSpec needs exactly one of `path` and `data` (an in-memory datasets.Dataset), got "
                             + ("both" if self.path is not None else "neither"))
        if self.data is not None:
            _check_in_memory(self.data)
        elif not isinstance(self.path, str) or not self.path.strip():
            raise ValueError(f"DatasetSpec.path must be a non-empty string, got {self.path!r}")
        bad_limit = isinstance(self.limit, bool) or not isinstance(self.limit, int) or self.limit < 1
        if self.limit is not None and bad_limit:
            raise ValueError(
                f"DatasetSpec.limit must be a positive integer or None, got {self.limit!r} ({self.source})")
        if isinstance(self.repeat, bool) or not isinstance(self.repeat, int) or self.repeat < 1:
            raise ValueError(f"DatasetSpec.repeat must be an integer >= 1, got {self.repeat!r} ({self.source})")
        for key in ("problem_field", "answer_field"):
            if not getattr(self, key):
                raise ValueError(f"DatasetSpec.{key} must be a non-empty column name ({self.source})")

    @property
    def display_name(self) -> str:
        if self.name:
            return self.name
        return IN_MEMORY_NAME if self.path is None else default_name(self.path)

    @property
    def source(self) -> str:
        """The path, or a description of the in-memory dataset, for messages."""
        return self.path if self.path is not None else f"in-memory {type(self.data).__name__}"


IN_MEMORY_NAME = "in_memory"
"""Row-id prefix of an in-memory dataset given without a ``name``."""


def _check_in_memory(data: Any) -> None:
    from datasets import Dataset, DatasetDict

    if not isinstance(data, (Dataset, DatasetDict)):
        hint = " (an in-memory dataset is not saved with the hyperparameters)" if isinstance(data, str) else ""
        raise ValueError(f"DatasetSpec.data must be a datasets.Dataset or DatasetDict, got {type(data).__name__}"
                         f"{hint}; convert with Dataset.from_list / from_pandas, or give `path`")


@dataclass(frozen=True)
class Record:
    """A checked row: id ``<dataset name>:<row id>``, question text, answer (``None`` when the row has none), the
    row's own system message and whether its question was a conversation, and its raw columns."""

    id: str
    problem: str
    answer: Optional[str]
    is_labeled: bool
    system_prompt: Optional[str] = None
    conversational: bool = False
    columns: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)
    """The row as read, every column by name."""
    question_columns: tuple[str, ...] = ()
    """The columns holding the question and the id: all an unlabeled row may show a reward function."""

    def visible_columns(self, labeled: bool) -> dict[str, Any]:
        """The columns a reward function may read: all of a labeled row's, the question and id of an unlabeled one
        (any other column, MATH's ``solution`` or verl's ``reward_model``, may hold its answer)."""
        if labeled:
            return dict(self.columns)
        return {name: value for name, value in self.columns.items() if name in self.question_columns}


def register_source(prefix: str, loader: SourceLoader, *, overwrite: bool = False) -> None:
    """Make ``DatasetSpec(path="<prefix>:<argument>")`` read its rows from ``loader(path)``.

    Example::

        register_source("synthetic", load_synthetic)   # DatasetSpec(path="synthetic:unlabeled?size=64")
    """
    if not _PREFIX_PATTERN.match(prefix or ""):
        raise ValueError(f"source prefix must be an identifier like 'synthetic', got {prefix!r}")
    if prefix in _SOURCE_LOADERS and not overwrite:
        raise ValueError(f"a source is already registered for prefix {prefix!r}; pass overwrite=True to replace it")
    _SOURCE_LOADERS[prefix] = loader


def unregister_source(prefix: str) -> None:
    _SOURCE_LOADERS.pop(prefix, None)


def registered_sources() -> list[str]:
    return sorted(_SOURCE_LOADERS)


def default_name(path: str) -> str:
    """Name for row ids when the spec gives none: the source prefix, file stem, folder or last Hub path part."""
    prefix, sep, _ = path.partition(":")
    if sep and prefix in _SOURCE_LOADERS:
        return prefix
    return Path(path.rstrip("/\\")).stem or path


def read_tables(path: str, split: str = "train", data_dir: Optional[str] = None) -> list[Table]:
    """Read the raw rows a spec's ``path`` points at (see the module docstring for the resolution order)."""
    prefix, sep, _ = path.partition(":")
    if sep and prefix in _SOURCE_LOADERS:
        rows = _SOURCE_LOADERS[prefix](path)
        return [Table(origin=path, rows=[dict(row) for row in rows])]

    candidates = [Path(path).expanduser()]
    if data_dir is not None and not candidates[0].is_absolute():
        candidates.append(Path(data_dir).expanduser() / path)
    for candidate in candidates:
        if candidate.is_dir():
            return read_folder(candidate, split)
        if candidate.is_file():
            return [read_file(candidate)]

    if sep and _PREFIX_PATTERN.match(prefix):
        raise DataError(
            f"no source is registered for prefix {prefix!r} (path {path!r}); registered: {registered_sources()}"
        )
    if Path(path).suffix in FILE_SUFFIXES or path.startswith((".", "/", "~")):
        tried = ", ".join(str(c) for c in candidates)
        raise FileNotFoundError(f"dataset file not found: {path!r} (tried {tried})")

    benchmarks = _benchmarks_module()
    if benchmarks is not None and path in benchmarks.BENCHMARKS:
        rows = benchmarks.load_benchmark(path, local_dir=data_dir)
        return [Table(origin=f"benchmark {path}", rows=[dict(row) for row in rows])]

    try:
        dataset = load_dataset(path, split=split)
    except Exception as error:  # datasets raises many types (offline, missing split, missing repo)
        raise DataError(f"could not load Hub dataset {path!r} (split {split!r}): {error}") from error
    return [Table(origin=f"{path} (split {split})", rows=dataset.to_list())]


def load_records(spec: DatasetSpec, role: str, data_dir: Optional[str] = None) -> list[Record]:
    """Read and check a spec's rows, apply ``limit`` and ``repeat``.

    Args:
        spec: the dataset.
        role: ``"labeled"`` and ``"eval"`` (every row needs an answer), ``"unlabeled"`` (answers optional, kept for
            evaluation telemetry) or ``"mixed"`` (``spec.labeled_field`` says which rows are labeled).
        data_dir: folder for relative paths and offline benchmark copies.

    Raises:
        DataError: malformed rows (at most :data:`MAX_REPORTED_ROWS` listed) or duplicate ids.
    """
    if role not in ("labeled", "unlabeled", "mixed", "eval"):
        raise ValueError(f"role must be 'labeled', 'unlabeled', 'mixed' or 'eval', got {role!r}")
    if role == "mixed" and spec.labeled_field is None:
        raise ValueError(f"a mixed dataset needs labeled_field (e.g. 'reward_model.is_labeled'): {spec.source}")
    if role != "mixed" and spec.labeled_field is not None:
        raise ValueError(
            f"labeled_field is only read for the mixed dataset; the {role} dataset {spec.source!r} sets it to "
            f"{spec.labeled_field!r}"
        )

    name = spec.display_name
    records: list[Record] = []
    problems: list[str] = []
    first_seen: dict[str, str] = {}
    remaining = spec.limit
    for table in spec_tables(spec, data_dir):
        check_columns(table, _required_fields(spec, role), f"{role} dataset {name!r}")
        rows = table.rows if remaining is None else table.rows[:remaining]
        for index, row in enumerate(rows):
            row_id = str(index) if spec.id_field is None else _lookup(row, spec.id_field)
            where = table.where(index, "?" if row_id is _MISSING else row_id)
            try:
                record = _parse_row(row, spec, role, name, row_id)
            except _FieldError as error:
                problems.append(f"{where}: field {error.field!r}: {error.reason}")
                continue
            if record.id in first_seen:
                first = first_seen[record.id]
                problems.append(f"{where}: field {spec.id_field!r}: duplicate id, first seen at {first}")
                continue
            first_seen[record.id] = where
            records.append(record)
        if remaining is not None:
            remaining -= len(rows)
            if remaining <= 0:
                break

    if problems:
        listed = "\n  ".join(problems[:MAX_REPORTED_ROWS])
        more = f"\n  ... and {len(problems) - MAX_REPORTED_ROWS} more" if len(problems) > MAX_REPORTED_ROWS else ""
        raise DataError(f"{role} dataset {name!r} ({spec.source}): {len(problems)} malformed row(s):\n  {listed}{more}")
    if not records:
        raise DataError(f"{role} dataset {name!r} ({spec.source}) has no rows")
    return [record for record in records for _ in range(spec.repeat)]


def spec_tables(spec: DatasetSpec, data_dir: Optional[str] = None) -> list[Table]:
    """The raw tables of a spec: its in-memory ``data``, or what its ``path`` points at."""
    if spec.data is not None:
        return [table_from_dataset(spec.data, spec.split, f"in-memory {type(spec.data).__name__}")]
    return read_tables(spec.path, spec.split, data_dir)


def _required_fields(spec: DatasetSpec, role: str) -> dict[str, str]:
    """``{option name: column}`` of the columns every row of a ``role`` dataset reads."""
    fields = {"problem_field": spec.problem_field}
    if role != "unlabeled":
        fields["answer_field"] = spec.answer_field
    if spec.id_field is not None:
        fields["id_field"] = spec.id_field
    if role == "mixed":
        fields["labeled_field"] = spec.labeled_field
    return fields


def check_columns(table: Table, fields: dict[str, str], what: str = "dataset") -> None:
    """One :class:`DataError` when a mapped column is in no row at all (other column names), naming the expected
    columns with their options and the columns the table has; a column that only some rows lack is reported per row.
    A dotted field needs its first part."""
    found = table.columns()
    missing = {option: column for option, column in fields.items()
               if column not in found and column.split(".")[0] not in found}
    if not missing:
        return
    expected = ", ".join(f"{option}={column!r}" for option, column in missing.items())
    hints = []
    if "id_field" in missing:
        hints.append("id_field: null numbers the rows by position")
    conversational = [c for c in ("prompt", "messages") if c in found]
    if "problem_field" in missing and conversational:
        hints.append(f"problem_field: {conversational[0]} reads the user message of a conversation")
    hint = f" ({'; '.join(hints)})" if hints else ""
    raise DataError(f"{what} ({table.origin}): no column {expected}; the rows have columns {found}. Map them with "
                    f"{', '.join(missing)}{hint}")


class _FieldError(Exception):
    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field, self.reason = field, reason


def _parse_row(row: Mapping, spec: DatasetSpec, role: str, name: str, row_id: Any) -> Record:
    if spec.id_field is not None:
        row_id = _id_to_str(row_id, spec.id_field)

    problem = _lookup(row, spec.problem_field)
    if problem is _MISSING or problem is None:
        raise _FieldError(spec.problem_field, "missing")
    system, conversational = None, isinstance(problem, (list, tuple))
    if conversational:
        try:
            problem, system = user_text(problem), system_text(problem)
        except ValueError as error:
            raise _FieldError(spec.problem_field, str(error)) from None
    if not isinstance(problem, str):
        raise _FieldError(spec.problem_field, f"expected a string, got {type(problem).__name__}")
    if not problem.strip():
        raise _FieldError(spec.problem_field, "empty problem")

    if role == "mixed":
        is_labeled = _flag_to_bool(_lookup(row, spec.labeled_field), spec.labeled_field)
    else:
        is_labeled = role != "unlabeled"

    raw_answer = _lookup(row, spec.answer_field)
    if raw_answer is _MISSING or raw_answer is None:
        if is_labeled:
            raise _FieldError(spec.answer_field, "missing answer on a labeled row")
        answer = None
    else:
        answer = _answer_to_str(raw_answer, spec.answer_field)
        if not answer:
            if is_labeled:
                raise _FieldError(spec.answer_field, "empty answer on a labeled row")
            answer = None  # verl parquets give unlabeled rows an empty placeholder
    # a dotted field's parent column is not shown: verl's extra_info holds the answer beside the question
    question_columns = tuple(f for f in (spec.problem_field, spec.id_field) if f is not None and f in row)
    return Record(id=f"{name}:{row_id}", problem=problem, answer=answer, is_labeled=is_labeled, system_prompt=system,
                  conversational=conversational, columns=row, question_columns=question_columns)


def _lookup(row: Mapping, field: str) -> Any:
    """``row[field]``, or a walk through nested mappings for a dotted path; ``_MISSING`` when absent."""
    if field in row:
        return row[field]
    value: Any = row
    for part in field.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return _MISSING
        value = value[part]
    return value


def _id_to_str(value: Any, field: str) -> str:
    if value is _MISSING or value is None:
        raise _FieldError(field, "missing id (set id_field: null to number rows by position)")
    if isinstance(value, bool) or not isinstance(value, (str, numbers.Integral)):
        raise _FieldError(field, f"expected a string or integer id, got {type(value).__name__}")
    text = str(value)
    if not text.strip():
        raise _FieldError(field, "empty id")
    return text


def _answer_to_str(value: Any, field: str) -> str:
    """Answers are compared as strings: integers and integral floats (AMC's ``27.0``) become ``"27"``."""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, bool):
        raise _FieldError(field, f"expected a string or a number, got bool {value!r}")
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        number = float(value)
        if not math.isfinite(number):
            raise _FieldError(field, f"non-finite number {number!r}")
        return str(int(number)) if number.is_integer() else repr(number)
    raise _FieldError(field, f"expected a string or a number, got {type(value).__name__}")


def _flag_to_bool(value: Any, field: str) -> bool:
    if value is _MISSING or value is None:
        raise _FieldError(field, "missing is_labeled flag")
    if isinstance(value, bool):
        return value
    if isinstance(value, numbers.Integral) and int(value) in (0, 1):
        return bool(value)
    raise _FieldError(field, f"expected a boolean (or 0/1), got {value!r}")


def _benchmarks_module():
    """The shipped-benchmark registry, or ``None`` while that module is absent from the tree."""
    try:
        return importlib.import_module("tempo_pl.data.eval_sets")
    except ModuleNotFoundError as error:
        if error.name != "tempo_pl.data.eval_sets":
            raise
        return None

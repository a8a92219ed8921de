"""Named evaluation sets, loaded from a local copy or from the Hugging Face Hub into one schema.

Every loader returns a list of dicts with at least ``id`` (str), ``problem`` (str) and ``answer`` (str); the other
fields of the source rows (``solution``, ``url``, ...) are kept. A registered name resolves to
``<local_dir>/<file>`` when that file exists (``local_dir`` argument, else the ``TEMPO_PL_DATA_DIR`` environment
variable), otherwise to the Hub dataset named in :data:`BENCHMARKS`. Anything else is read as a path to a
``.jsonl``, ``.json`` or ``.parquet`` file in the common schema.

Example::

    >>> rows = load_benchmark("aime2024", local_dir="../shared/data")  # doctest: +SKIP
    >>> len(rows), rows[0]["id"], rows[0]["answer"], sorted(rows[0])  # doctest: +SKIP
    (30, '2024-I-1', '204', ['answer', 'id', 'problem', 'solution', 'url'])
    >>> rows = load_benchmark("my_eval.jsonl")  # doctest: +SKIP
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from tempo_pl.data.readers import FILE_SUFFIXES, read_file

__all__ = ["BENCHMARKS", "DATA_DIR_ENV", "BenchmarkInfo", "load_benchmark", "read_rows", "rows_to_schema"]

DATA_DIR_ENV = "TEMPO_PL_DATA_DIR"
"""Environment variable naming the directory of local benchmark files, used when ``local_dir`` is not given."""

_ANSWER_FORMATS = ("verbatim", "number", "gsm8k")
_GSM8K_ANSWER = re.compile(r"####\s*(-?[0-9.,]+)")


@dataclass(frozen=True)
class BenchmarkInfo:
    """Where a named evaluation set lives and how its fields map onto ``id`` / ``problem`` / ``answer``.

    Args:
        name: registry key.
        file: file name of the local copy inside the data directory.
        hub_path: Hugging Face Hub dataset name, passed to ``datasets.load_dataset``.
        split: the split to load from the Hub.
        problem_field: source field holding the question text.
        answer_field: source field holding the reference answer.
        id_field: source field holding a row id; None to number rows as ``<id_prefix><index>``.
        id_prefix: prefix of generated ids (only read when ``id_field`` is None).
        hub_config: Hub configuration (subset) name, if the dataset has several.
        answer_format: how the source answer becomes the answer string: ``verbatim`` (``str``, stripped),
            ``number`` (a numeric answer such as ``27.0`` becomes ``27``), ``gsm8k`` (the number after ``####``
            in a GSM8K solution, thousands commas removed, as in the official ``extract_answer``).

    Example::

        >>> info = BenchmarkInfo("mine", "mine.jsonl", "me/mine", "test", "question", "final", id_field=None,
        ...                      id_prefix="mine-")
    """

    name: str
    file: str
    hub_path: str
    split: str
    problem_field: str
    answer_field: str
    id_field: Optional[str] = "id"
    id_prefix: str = ""
    hub_config: Optional[str] = None
    answer_format: str = "verbatim"

    def __post_init__(self) -> None:
        if self.answer_format not in _ANSWER_FORMATS:
            raise ValueError(
                f"BenchmarkInfo {self.name!r}: answer_format must be one of {_ANSWER_FORMATS}, "
                f"got {self.answer_format!r}"
            )
        for key in ("name", "file", "hub_path", "split", "problem_field", "answer_field"):
            if not getattr(self, key):
                raise ValueError(f"BenchmarkInfo {self.name!r}: {key} must be a non-empty string")


BENCHMARKS: dict[str, BenchmarkInfo] = {
    info.name: info
    for info in (
        BenchmarkInfo("aime2024", "aime2024.jsonl", "HuggingFaceH4/aime_2024", "train", "problem", "answer",
                      answer_format="number"),
        BenchmarkInfo("aime2025", "aime2025.jsonl", "math-ai/aime25", "test", "problem", "answer",
                      answer_format="number"),
        BenchmarkInfo("amc2023", "amc2023.jsonl", "math-ai/amc23", "test", "question", "answer",
                      answer_format="number"),
        BenchmarkInfo("math500", "math500.jsonl", "HuggingFaceH4/MATH-500", "test", "problem", "answer",
                      id_field="unique_id"),
        BenchmarkInfo("gsm8k", "gsm8k_test.jsonl", "openai/gsm8k", "test", "question", "answer",
                      id_field=None, id_prefix="gsm8k-test-", hub_config="main", answer_format="gsm8k"),
    )
}
"""The registered evaluation sets. Local copies (see ``shared/data/SOURCES.md``) are in the common schema already;
the Hub rows are mapped by the fields named here."""


def _format_answer(value: Any, answer_format: str, where: str) -> str:
    if value is None:
        raise ValueError(f"{where}: the answer is missing (None)")
    if answer_format == "gsm8k":
        match = _GSM8K_ANSWER.search(str(value))
        if match is None:
            raise ValueError(f"{where}: no '#### <number>' in the GSM8K answer {str(value)[-80:]!r}")
        return match.group(1).replace(",", "")
    if answer_format == "number" and not isinstance(value, bool):
        text = str(value).strip()
        try:
            number = float(text)
        except ValueError:
            return text
        return str(int(number)) if number.is_integer() else text
    return str(value).strip()


def rows_to_schema(rows: list[dict], info: BenchmarkInfo) -> list[dict]:
    """Map source rows onto ``id`` / ``problem`` / ``answer`` as ``info`` says, keeping the other fields."""
    out = []
    for index, row in enumerate(rows):
        where = f"{info.name} row {index}"
        needed = [info.problem_field, info.answer_field] + ([info.id_field] if info.id_field else [])
        missing = [key for key in needed if key not in row]
        if missing:
            raise ValueError(f"{where}: missing field(s) {missing}; the row has {sorted(row)}")
        mapped = {k: v for k, v in row.items() if k not in needed}
        mapped["id"] = str(row[info.id_field]) if info.id_field else f"{info.id_prefix}{index}"
        mapped["problem"] = str(row[info.problem_field])
        mapped["answer"] = _format_answer(row[info.answer_field], info.answer_format, where)
        out.append(mapped)
    return out


def read_rows(path: os.PathLike | str) -> list[dict]:
    """Rows of a local ``.jsonl``, ``.json`` (a list of objects) or ``.parquet`` file in the common schema.

    ``problem`` and ``answer`` are required (the answer becomes a string); a missing ``id`` becomes
    ``<file stem>-<row index>``.
    """

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in FILE_SUFFIXES:
        raise ValueError(f"{path}: unsupported benchmark file type {suffix!r} (use .jsonl, .json or .parquet)")
    rows = read_file(path).rows  # names the file and line of unreadable JSON or non-UTF-8 bytes
    out = []
    for index, row in enumerate(rows):
        if not isinstance(row, dict):
            raise ValueError(f"{path} row {index}: expected an object, found {type(row).__name__}")
        missing = [key for key in ("problem", "answer") if row.get(key) is None]
        if missing:
            raise ValueError(f"{path} row {index}: missing field(s) {missing}; the row has {sorted(row)}")
        row_id = row.get("id")
        out.append({**row, "id": f"{path.stem}-{index}" if row_id is None else str(row_id),
                    "problem": str(row["problem"]), "answer": str(row["answer"]).strip()})
    return out


def _load_from_hub(info: BenchmarkInfo) -> list[dict]:
    import datasets

    dataset = datasets.load_dataset(info.hub_path, info.hub_config, split=info.split)
    return rows_to_schema([dict(row) for row in dataset], info)


def load_benchmark(name_or_path: str, local_dir: Optional[str] = None) -> list[dict]:
    """Load an evaluation set as rows with ``id``, ``problem`` and ``answer`` (strings) plus the source's extras.

    Args:
        name_or_path: a key of :data:`BENCHMARKS`, or a path to a ``.jsonl`` / ``.json`` / ``.parquet`` file.
        local_dir: directory of local copies for registered names (default: ``$TEMPO_PL_DATA_DIR``); a name whose
            file is not there is loaded from the Hub.
    """
    info = BENCHMARKS.get(name_or_path)
    if info is None:
        path = Path(name_or_path)
        if not path.is_file():
            raise ValueError(
                f"unknown benchmark {name_or_path!r}: not one of {sorted(BENCHMARKS)} and not an existing file"
            )
        return read_rows(path)
    directory = local_dir if local_dir is not None else os.environ.get(DATA_DIR_ENV)
    if directory:
        local = Path(directory) / info.file
        if local.is_file():
            return read_rows(local)
    try:
        return _load_from_hub(info)
    except Exception as error:  # offline, unreachable, or a Hub error: say how to use a local copy instead
        where = f"{directory!r} has no {info.file}" if directory else f"${DATA_DIR_ENV} is not set"
        raise ConnectionError(
            f"benchmark {name_or_path!r}: could not load {info.hub_path} from the Hub ({type(error).__name__}: "
            f"{error}); {where}. Offline, put a copy of {info.file} in a folder and set {DATA_DIR_ENV}=<folder> "
            "(or data.init_args.data_dir)"
        ) from error

"""Raw rows from JSON lines, JSON and parquet files, ``Dataset.save_to_disk`` folders and in-memory datasets.

Every reader returns :class:`Table` objects: the rows as plain dicts, where they came from and, for JSON lines, the
line of each row, so that a later check can name the line a user opens in an editor. What cannot be read raises
:class:`DataError` naming the file and, where it applies, the line, the column and the reason.

JSON is read with the standard library rather than through ``datasets``' JSON builder: its errors point at
"row 6" of an Arrow batch deep inside a chained traceback, and it refuses a column whose type changes between rows
(an answer that is ``5`` in one row and ``"5"`` in the next), which the row checks of :mod:`tempo_pl.data.sources`
handle row by row instead.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

FILE_SUFFIXES = (".jsonl", ".json", ".parquet")
SAVE_TO_DISK_MARKERS = ("dataset_dict.json", "state.json")
"""Files ``Dataset.save_to_disk`` (``state.json``) and ``DatasetDict.save_to_disk`` (``dataset_dict.json``) write."""


class DataError(ValueError):
    """A dataset that cannot be used: unreadable, or with malformed rows (the message names file, row and field)."""


@dataclass
class Table:
    """Raw rows from one file (or one Hub split, benchmark, registered source or in-memory dataset)."""

    origin: str
    rows: list[dict]
    lines: Optional[list[int]] = None
    """1-based line of each row in its file (JSON lines); None when rows have no line of their own."""

    def where(self, index: int, row_id: Any) -> str:
        """``<origin> line <l> (row <i>, id <id>)`` for JSON lines, ``<origin> row <i> (id <id>)`` otherwise."""
        if self.lines is not None:
            return f"{self.origin} line {self.lines[index]} (row {index}, id {row_id!r})"
        return f"{self.origin} row {index} (id {row_id!r})"

    def columns(self) -> list[str]:
        """Every top-level key some row has, in order of first appearance."""
        return list(dict.fromkeys(key for row in self.rows for key in row))


def read_file(path: Path) -> Table:
    """Rows of one ``.jsonl``, ``.json`` or ``.parquet`` file."""
    suffix = path.suffix.lower()
    if suffix not in FILE_SUFFIXES:
        hint = " (a file of a save_to_disk folder: give the folder)" if suffix == ".arrow" else ""
        raise DataError(f"unsupported dataset file {str(path)!r}: expected one of {list(FILE_SUFFIXES)}{hint}")
    if path.stat().st_size == 0:
        raise DataError(f"dataset file {str(path)!r} is empty (0 bytes)")
    if suffix == ".parquet":
        table = _read_parquet(path)
    else:
        data = path.read_bytes()
        table = _read_json_lines(path, data) if suffix == ".jsonl" else _read_json(path, data)
    if not table.rows:
        raise DataError(f"dataset file {str(path)!r} has no rows")
    return table


def read_folder(folder: Path, split: str) -> list[Table]:
    """A ``save_to_disk`` folder (``split`` picks the split of a ``DatasetDict``), or every ``.jsonl`` / ``.json`` /
    ``.parquet`` file directly in ``folder``, in name order."""
    if any((folder / marker).is_file() for marker in SAVE_TO_DISK_MARKERS):
        from datasets import load_from_disk

        try:
            dataset = load_from_disk(str(folder))
        except Exception as error:  # datasets raises several types for a damaged folder
            raise DataError(f"could not read the save_to_disk folder {str(folder)!r}: {error}") from error
        return [table_from_dataset(dataset, split, f"{folder} (save_to_disk)")]
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in FILE_SUFFIXES)
    if not files:
        found = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir())
        shown = ", ".join(found[:10]) + (f", ... ({len(found)} entries)" if len(found) > 10 else "") or "nothing"
        raise FileNotFoundError(
            f"no {'/'.join(sorted(s.lstrip('.') for s in FILE_SUFFIXES))} files and no save_to_disk dataset "
            f"({' or '.join(SAVE_TO_DISK_MARKERS)}) in dataset folder {str(folder)!r}; found: {shown}"
        )
    return [read_file(p) for p in files]


def table_from_dataset(dataset: Any, split: str, origin: str) -> Table:
    """Rows of a ``datasets.Dataset``, or of the ``split`` of a ``datasets.DatasetDict``."""
    from datasets import Dataset, DatasetDict, IterableDataset, IterableDatasetDict

    if isinstance(dataset, DatasetDict):
        if split not in dataset:
            raise DataError(f"{origin}: a DatasetDict without split {split!r}; its splits are {sorted(dataset)} "
                            "(set the dataset's `split`)")
        dataset, origin = dataset[split], f"{origin} split {split!r}"
    if isinstance(dataset, (IterableDataset, IterableDatasetDict)):
        raise DataError(f"{origin}: an IterableDataset cannot be checked before training; load it without "
                        "streaming, or build a Dataset (Dataset.from_generator)")
    if not isinstance(dataset, Dataset):
        raise DataError(f"{origin}: expected a datasets.Dataset or DatasetDict, got {type(dataset).__name__}"
                        " (a pandas DataFrame: Dataset.from_pandas; a list of dicts: Dataset.from_list)")
    if len(dataset) == 0:
        raise DataError(f"{origin} has no rows")
    return Table(origin=origin, rows=dataset.to_list())


# ------------------------------------------------------------------------------------------------------ helpers


def _decode(path: Path, data: bytes, first_line: int = 1) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = first_line + data.count(b"\n", 0, error.start)
        column = error.start - (data.rfind(b"\n", 0, error.start) + 1) + 1
        raise DataError(
            f"{str(path)!r} line {line}: not UTF-8 text (byte {data[error.start:error.start + 1]!r} at column "
            f"{column}: {error.reason}); re-save the file as UTF-8"
        ) from None


def _read_json_lines(path: Path, data: bytes) -> Table:
    rows, lines = [], []
    for number, raw in enumerate(data.split(b"\n"), 1):
        if not raw.strip():
            continue
        text = _decode(path, raw, first_line=number)
        try:
            row = json.loads(text)
        except json.JSONDecodeError as error:
            reason = f"{error.msg} at column {error.colno}"
            raise DataError(f"{str(path)!r} line {number}: not valid JSON ({reason})") from None
        if not isinstance(row, dict):
            raise DataError(f"{str(path)!r} line {number}: expected a JSON object per line, got {type(row).__name__}")
        rows.append(row)
        lines.append(number)
    return Table(origin=str(path), rows=rows, lines=lines)


def _read_json(path: Path, data: bytes) -> Table:
    """A list of objects, a ``{column: [values]}`` object, or JSON lines in a ``.json`` file."""
    text = _decode(path, data)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        if error.msg == "Extra data":  # several top-level values: JSON lines under a .json name
            return _read_json_lines(path, data)
        raise DataError(
            f"{str(path)!r} line {error.lineno}: not valid JSON ({error.msg} at column {error.colno})"
        ) from None
    if isinstance(value, dict) and value and all(isinstance(v, list) for v in value.values()):
        lengths = {len(v) for v in value.values()}
        if len(lengths) != 1:
            raise DataError(f"{str(path)!r}: a {{column: [values]}} object whose columns differ in length "
                            f"({ {k: len(v) for k, v in value.items()} })")
        value = [dict(zip(value, values)) for values in zip(*value.values())]
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        raise DataError(f"{str(path)!r}: expected a list of JSON objects, got {type(value).__name__}")
    for index, row in enumerate(value):
        if not isinstance(row, dict):
            raise DataError(f"{str(path)!r} row {index}: expected a JSON object, got {type(row).__name__}")
    return Table(origin=str(path), rows=value)


def _read_parquet(path: Path) -> Table:
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as error:  # pyarrow raises ArrowInvalid / OSError for a damaged or non-parquet file
        raise DataError(f"could not read {str(path)!r} as parquet: {error}") from error
    return Table(origin=str(path), rows=rows)

"""A dataset row's fields read and checked: nested lookups by dotted path, ids, answers and labeled flags turned into
the strings and booleans the rest of the package compares. A bad value raises :class:`FieldError` naming the field;
:mod:`tempo_pl.data.sources` adds the file and row."""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Mapping
from typing import Any

MISSING = object()
"""What :func:`lookup` returns for a field the row does not have (``None`` is a value a row may hold)."""


class FieldError(Exception):
    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field, self.reason = field, reason


def lookup(row: Mapping, field: str) -> Any:
    """``row[field]``, or a walk through nested mappings for a dotted path; ``MISSING`` when absent."""
    if field in row:
        return row[field]
    value: Any = row
    for part in field.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return MISSING
        value = value[part]
    return value


def id_to_str(value: Any, field: str) -> str:
    if value is MISSING or value is None:
        raise FieldError(field, "missing id (set id_field: null to number rows by position)")
    if isinstance(value, bool) or not isinstance(value, (str, numbers.Integral)):
        raise FieldError(field, f"expected a string or integer id, got {type(value).__name__}")
    text = str(value)
    if not text.strip():
        raise FieldError(field, "empty id")
    return text


def answer_to_str(value: Any, field: str) -> str:
    """Answers are compared as strings: integers and integral floats (AMC's ``27.0``) become ``"27"``; a structured
    gold (a list or mapping: several answers with points, options) becomes its JSON text, which its grader reads."""
    if isinstance(value, str):
        return value.strip()
    if getattr(value, "ndim", 0) > 0 and hasattr(value, "tolist"):  # a list column read from parquet
        value = value.tolist()
    if isinstance(value, (Mapping, list, tuple)):
        try:
            return json.dumps(value, ensure_ascii=False, sort_keys=True, default=json_item)
        except (TypeError, ValueError) as error:
            raise FieldError(field, f"a structured answer that is not JSON-serialisable ({error})") from None
    if isinstance(value, bool):
        raise FieldError(field, f"expected a string or a number, got bool {value!r}")
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        number = float(value)
        if not math.isfinite(number):
            raise FieldError(field, f"non-finite number {number!r}")
        return str(int(number)) if number.is_integer() else repr(number)
    raise FieldError(field, f"expected a string or a number, got {type(value).__name__}")


def json_item(value: Any) -> Any:
    """numpy arrays and scalars of a parquet row as JSON values."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def flag_to_bool(value: Any, field: str) -> bool:
    if value is MISSING or value is None:
        raise FieldError(field, "missing is_labeled flag")
    if isinstance(value, bool):
        return value
    if isinstance(value, numbers.Integral) and int(value) in (0, 1):
        return bool(value)
    raise FieldError(field, f"expected a boolean (or 0/1), got {value!r}")

"""Argument checks shared by the pure tensor functions of :mod:`tempo_pl.algorithms` and by the typed configs."""

from __future__ import annotations

from typing import Iterable

from torch import Tensor

__all__ = ["check_choice", "check_same_shape", "check_rows"]


def check_choice(name: str, value: str, choices: Iterable[str]) -> None:
    """Raise ``ValueError`` naming ``name`` and the accepted values when ``value`` is not one of ``choices``."""
    choices = list(choices)
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def check_same_shape(**tensors: Tensor) -> None:
    """Raise ``ValueError`` listing every shape when the named tensors do not all have one shape."""
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    if len(set(shapes.values())) > 1:
        raise ValueError(f"shape mismatch: {shapes}")


def check_rows(rows: Tensor, name: str, mask: Tensor) -> None:
    """Raise ``ValueError`` unless ``rows`` is a vector with one entry per row of ``mask``."""
    if rows.dim() != 1 or rows.shape[0] != mask.shape[0]:
        raise ValueError(
            f"{name} must have shape ({mask.shape[0]},) to match mask {tuple(mask.shape)}, got {tuple(rows.shape)}"
        )

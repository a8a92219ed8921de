"""Config files layered as ``tempo-pl fit --config BASE --config OVERLAY`` layers them, read as one plain dict.

A shipped run is a base config plus overlays that hold only their difference (``docs/configs.md``). The CLI
(jsonargparse) is what resolves a run; this plain-YAML merge serves code that reads a few keys of a layered run
without building the CLI: the demo and compare pipelines, benchmarks and tests. It follows jsonargparse where the
shipped configs need it, and ``tests/test_config_layers.py`` checks that both resolve every shipped run alike:

- a mapping merges key by key into the mapping below it;
- a list or a scalar replaces what was there (a later ``trainer.callbacks`` is the whole list);
- a ``class_path`` that differs from the one below replaces the whole entry (its ``init_args`` belonged to the
  other class);
- ``null`` replaces what was there (``critic: null`` removes the critic).

Example::

    read_layers(["configs/tiny.yaml", "configs/baselines/ttrl.yaml"])["model"]["init_args"]["critic"]  # None
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence, Union

import yaml

PathLike = Union[str, Path]


def merge_layers(base: Any, overlay: Any) -> Any:
    """``overlay`` layered over ``base`` (neither is modified): the rules of the module docstring."""
    if not isinstance(base, dict) or not isinstance(overlay, dict):
        return overlay
    if "class_path" in overlay and overlay["class_path"] != base.get("class_path", overlay["class_path"]):
        return dict(overlay)
    merged = dict(base)
    for key, value in overlay.items():
        merged[key] = merge_layers(base[key], value) if key in base else value
    return merged


def read_layers(paths: Sequence[PathLike]) -> dict:
    """The files of ``paths`` (base first) merged into one dict."""
    if not paths:
        raise ValueError("read_layers: give at least one config file")
    merged: dict = {}
    for path in paths:
        data = yaml.safe_load(Path(path).read_text())
        if data is None:
            continue
        if not isinstance(data, dict):
            raise ValueError(f"{path}: a config file must hold a mapping of keys, got {type(data).__name__}")
        merged = merge_layers(merged, data)
    return merged


def flat(node: Any, prefix: str = "") -> dict:
    """``{"a": {"b": 1}}`` as ``{"a.b": 1}``: dotted keys of the leaves (lists, scalars, empty mappings)."""
    if not isinstance(node, dict) or not node:
        return {prefix: node} if prefix else {}
    out: dict = {}
    for key, value in node.items():
        out.update(flat(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def nested(settings: dict) -> dict:
    """``{"a.b": 1}`` as ``{"a": {"b": 1}}``: the inverse of :func:`flat`, and an overlay of dotted settings."""
    out: dict = {}
    for key, value in settings.items():
        *parents, last = key.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return out


def has_key(data: dict, dotted: str) -> bool:
    """Whether ``data`` holds the dotted key ``a.b.c`` (a mapping at every step)."""
    node: Any = data
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def config_args(paths: Sequence[PathLike]) -> list[str]:
    """The ``tempo-pl fit`` arguments that layer ``paths``: ``--config=<path>`` for each, base first."""
    return [f"--config={path}" for path in paths]

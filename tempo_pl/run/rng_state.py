"""The global RNG states (torch, CUDA, numpy, Python) in a checkpoint, through Lightning's own capture, stored as
plain values so the checkpoint stays loadable with ``torch.load(weights_only=True)``."""

from __future__ import annotations

import numpy as np
import torch
from lightning.fabric.utilities.seed import _collect_rng_states, _set_rng_states


def capture_rng() -> dict:
    """Every global RNG state; numpy's as a plain list."""
    state = _collect_rng_states(include_cuda=torch.cuda.is_available())
    name, keys, pos, has_gauss, cached = state["numpy"]
    state["numpy"] = [name, keys.tolist(), int(pos), int(has_gauss), float(cached)]
    return state


def restore_rng(state: dict) -> None:
    """Sets the global RNGs to a state from :func:`capture_rng`."""
    state = dict(state)
    name, keys, pos, has_gauss, cached = state["numpy"]
    state["numpy"] = (name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached)
    _set_rng_states(state)

"""Stand-in for training in the tests: draw chosen parameters, since LoRA B and a fresh value head start at zero."""

from __future__ import annotations

from typing import Callable

import torch


def is_adapter(name: str) -> bool:
    return "lora_" in name


def draw_parameters(model: torch.nn.Module, seed: int, scale: float = 0.05,
                    keep: Callable[[str], bool] = is_adapter) -> None:
    """Overwrite every parameter whose name ``keep`` accepts with N(0, scale^2) draws from its own generator.

    A zero LoRA B leaves the adapter without effect and gives A no gradient; drawn values make merging, copying and
    gradients of the adapters (and of a head) show in the outputs.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if keep(name):
                param.copy_(torch.randn(param.shape, generator=gen) * scale)

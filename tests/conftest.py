"""Shared fixtures: the offline char tokenizer and tiny Qwen3 specs (hidden 64, 2 layers, random weights).

Heavy imports (transformers) happen inside the fixtures, so test files that never ask for them collect fast.
"""

from __future__ import annotations

import os

import pytest
import torch

# no hub lookups from tests: a miss otherwise takes 20-50 s to fail
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# the CI machines are small and shared; tiny models gain nothing from more threads
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """The ``builtin:char`` tokenizer (100 ids: 4 specials, 95 printable ASCII, newline). Shared: do not mutate."""
    from tempo_pl.models.tiny import build_char_tokenizer

    return build_char_tokenizer()


@pytest.fixture
def tiny_policy_spec(tiny_tokenizer):
    """A fresh ``ModelSpec`` of a random tiny Qwen3 (hidden 64, 2 layers) with the char tokenizer, seed 0."""
    from tempo_pl.models.builders import ModelSpec
    from tempo_pl.models.tiny import BUILTIN_CHAR, tiny_qwen3_config

    return ModelSpec(config=tiny_qwen3_config(vocab_size=len(tiny_tokenizer)), tokenizer=BUILTIN_CHAR, seed=0)


@pytest.fixture
def tiny_critic_spec():
    """A fresh ``CriticSpec`` that starts from the policy's backbone (pass ``tiny_policy_spec`` to build_critic)
    with a zero-initialised value head, seed 0."""
    from tempo_pl.models.builders import CriticSpec

    return CriticSpec(init_from_policy=True, seed=0)

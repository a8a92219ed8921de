"""The one way tests build a ``Rollout`` by hand: from token rows (padded as the engines pad them) or from texts.

Row ``g * n + k`` is sample k of prompt g, as every engine lays a rollout out; ``is_labeled`` and ``group_ids`` follow
the prompt batch.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from tempo_pl.types import PromptBatch, Rollout


def prompt_batch(ids: Sequence[str], answers: Optional[Sequence[Optional[str]]] = None,
                 prompts: Optional[Sequence[str]] = None, labeled: Optional[Sequence[bool]] = None) -> PromptBatch:
    """Prompts named ``ids``; a prompt is labeled when it has an answer unless ``labeled`` says otherwise."""
    answers = [None] * len(ids) if answers is None else answers  # as given: a test's list may fail when read
    labeled = [a is not None for a in answers] if labeled is None else list(labeled)
    return PromptBatch(ids=list(ids), prompts=list(prompts) if prompts is not None else [f"question {i}" for i in ids],
                       answers=answers, is_labeled=labeled)


def rollout_from_tokens(batch: PromptBatch, n: int, prompt_rows: Sequence[Sequence[int]],
                        response_rows: Sequence[Sequence[int]], pad_id: int = 0, texts: Optional[list[str]] = None,
                        truncated: Optional[Sequence[bool]] = None, extra: Optional[dict] = None) -> Rollout:
    """One row per entry of ``prompt_rows`` / ``response_rows``: prompts left-padded, responses right-padded with
    ``pad_id``; the response mask covers each response's tokens."""
    width = max(len(p) for p in prompt_rows)
    length = max(len(r) for r in response_rows)
    rows = len(prompt_rows)
    return Rollout(
        prompt_ids=torch.tensor([[pad_id] * (width - len(p)) + list(p) for p in prompt_rows], dtype=torch.long),
        prompt_mask=torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompt_rows], dtype=torch.long),
        response_ids=torch.tensor([list(r) + [pad_id] * (length - len(r)) for r in response_rows], dtype=torch.long),
        response_mask=torch.tensor([[1.0] * len(r) + [0.0] * (length - len(r)) for r in response_rows]),
        texts=[""] * rows if texts is None else list(texts),
        group_ids=torch.arange(len(batch)).repeat_interleave(n),
        is_labeled=torch.tensor(batch.is_labeled, dtype=torch.bool).repeat_interleave(n),
        truncated=torch.zeros(rows, dtype=torch.bool) if truncated is None else torch.tensor(list(truncated)),
        prompt_batch=batch,
        extra=dict(extra or {}),
    )


def rollout_from_texts(groups: Sequence[Sequence[str]], batch: Optional[PromptBatch] = None,
                       response_mask: Optional[Tensor] = None, response_length: int = 4) -> Rollout:
    """Group g holds the responses ``groups[g]``; every row has a 2-token prompt and ``response_length`` response
    tokens (or ``response_mask``'s). Without ``batch``, unlabeled prompts ``test:0``, ``test:1``..."""
    n = len(groups[0])
    assert all(len(group) == n for group in groups), "every prompt needs the same number of samples"
    batch = prompt_batch([f"test:{g}" for g in range(len(groups))]) if batch is None else batch
    rows = len(groups) * n
    mask = torch.ones(rows, response_length) if response_mask is None else response_mask
    rollout = rollout_from_tokens(batch, n, [[1, 1]] * rows, [[1] * mask.shape[1]] * rows, pad_id=1,
                                  texts=[text for group in groups for text in group])
    rollout.response_mask = mask
    return rollout

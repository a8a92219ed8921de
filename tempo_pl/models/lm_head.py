"""The LM head of a causal LM made to return per-token statistics instead of logits, for the span of one forward.

A causal LM's forward computes ``lm_head(hidden)`` for every kept position, (N, T, vocabulary) values: at 150k
vocabulary entries and 16k positions that is 10 GB in float32 per row. :func:`stats_instead_of_logits` hooks the
head so that it runs on no position and hands itself and its input to a function that computes what the caller
needs (:func:`~tempo_pl.algorithms.token_stats.head_token_stats` runs the head's ``forward`` on a chunk of positions
at a time).
It happens inside the model's own forward, where FSDP2 has gathered the head's weights.

Example::

    log_partition = lambda head, inputs: head.forward(inputs[0]).logsumexp(-1)   # head(...) runs the hooks again
    with stats_instead_of_logits(model.get_output_embeddings(), log_partition) as produced:
        out = model(input_ids=ids).logits     # the lambda's result: (N, T) log-partitions
    assert out is produced["stats"]          # False when the model reworks the head's output (soft-capping)
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

from torch import Tensor, nn


@contextlib.contextmanager
def stats_instead_of_logits(head: nn.Module, stats: Callable[[nn.Module, list[Tensor]], Tensor],
                            calls: int = 1) -> Iterator[dict]:
    """While open, ``head`` computes nothing; its ``calls``-th call returns ``stats(head, the inputs of every call)``
    (a model's forward on shared prompts calls it twice), also kept as ``produced["stats"]`` so the caller can check
    that the model returned it untouched."""
    produced: dict = {"inputs": []}

    def take_input(module: nn.Module, args: tuple) -> tuple:
        produced["inputs"].append(args[0])
        return (args[0][..., :0, :],)

    def give_stats(module: nn.Module, args: tuple, output: Tensor) -> Tensor:
        if len(produced["inputs"]) < calls:
            return output
        produced["stats"] = stats(module, produced.pop("inputs"))
        produced["inputs"] = []
        return produced["stats"]

    handles = [head.register_forward_pre_hook(take_input), head.register_forward_hook(give_stats)]
    try:
        yield produced
    finally:
        for handle in handles:
            handle.remove()

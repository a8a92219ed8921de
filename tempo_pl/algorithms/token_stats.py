"""Per-token statistics of a policy's logits, and the critic's explained variance.

Logits are (..., V); every function reduces the last (vocabulary) dimension. They avoid materialising a full
(..., V) log-softmax in float32 where they can: at LLM vocabulary sizes (150k) one such copy of a long rollout costs
gigabytes. Float32/float64 logits go through ``logsumexp`` directly; half-precision logits are upcast to float32 a
chunk of rows at a time, because a bf16 ``logsumexp`` over 150k entries loses the log-prob differences the PPO ratio
is made of. Half-precision inputs therefore give float32 outputs.

:func:`head_token_stats` goes one step further and never holds the logits of a whole batch: it runs the LM head
itself on a chunk of positions at a time (the policy's forward hands it the head's input,
:func:`tempo_pl.models.forward.policy_response_stats`), recomputing each chunk's logits in the backward pass.

Example::

    >>> import torch
    >>> logits = torch.randn(2, 5, 11)
    >>> labels = torch.randint(0, 11, (2, 5))
    >>> logprobs_from_logits(logits, labels).shape
    torch.Size([2, 5])
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from tempo_pl.algorithms.advantages import masked_var
from tempo_pl.algorithms.checks import check_same_shape

__all__ = ["logprobs_from_logits", "entropy_from_logits", "self_certainty_from_logits", "head_token_stats",
           "explained_variance"]

# rows of a half-precision input upcast at once: 1024 rows x 150k vocabulary x 4 bytes is about 600 MB
_UPCAST_CHUNK_ROWS = 1024


def _per_row(logits: Tensor, fn: Callable[[Tensor], Tensor], *extra: Tensor) -> Tensor:
    """Apply ``fn(logits_rows, *extra_rows) -> (rows,)`` over the flattened leading dims, upcasting half inputs."""
    lead_shape = logits.shape[:-1]
    flat = logits.reshape(-1, logits.shape[-1])
    flat_extra = [e.reshape(-1) for e in extra]
    if flat.dtype in (torch.float32, torch.float64):
        return fn(flat, *flat_extra).reshape(lead_shape)
    pieces = []
    for start in range(0, flat.shape[0], _UPCAST_CHUNK_ROWS):
        rows = slice(start, start + _UPCAST_CHUNK_ROWS)
        pieces.append(fn(flat[rows].float(), *(e[rows] for e in flat_extra)))
    out = torch.cat(pieces) if pieces else flat.new_zeros(0, dtype=torch.float32)
    return out.reshape(lead_shape)


def logprobs_from_logits(logits: Tensor, labels: Tensor) -> Tensor:
    """``log softmax(logits)[label]`` per position: (..., V) and (...) long -> (...). Differentiable."""
    if logits.shape[:-1] != labels.shape:
        raise ValueError(
            f"labels {tuple(labels.shape)} must match logits {tuple(logits.shape)} without the vocabulary dim"
        )

    def rows(x: Tensor, y: Tensor) -> Tensor:
        return x.gather(-1, y.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(x, dim=-1)

    return _per_row(logits, rows, labels)


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Entropy of ``softmax(logits)`` per position, in nats: ``logsumexp(l) - sum_v p_v l_v``."""

    def rows(x: Tensor) -> Tensor:
        return _entropy(x, torch.logsumexp(x, dim=-1))

    return _per_row(logits, rows)


def _entropy(x: Tensor, log_partition: Tensor) -> Tensor:
    # a banned token (logit -inf) has p = 0 and contributes 0, not 0 * -inf: its logit is clamped to the lowest
    # finite value first (cheaper than a where over the vocabulary, and its gradient is 0, not NaN)
    return log_partition - (torch.softmax(x, dim=-1) * x.clamp(min=torch.finfo(x.dtype).min)).sum(-1)


def self_certainty_from_logits(logits: Tensor) -> Tensor:
    """Intuitor's self-certainty per position: ``KL(Uniform_V || softmax(logits)) = -log V - mean_v log p_v``.

    Since ``log p_v = l_v - logsumexp(l)`` this is ``logsumexp(l) - mean_v l_v - log V``: 0 for a uniform
    distribution, growing as the policy concentrates. Computed without a log-softmax copy.
    """
    log_vocab = math.log(logits.shape[-1])

    def rows(x: Tensor) -> Tensor:
        return torch.logsumexp(x, dim=-1) - x.mean(-1) - log_vocab

    return _per_row(logits, rows)


#: values of one chunk of logits (positions x vocabulary) in :func:`head_token_stats`: 2**27 float32 values are
#: 512 MiB, 883 positions of Qwen3's 151,936-token vocabulary; read at call time (tests lower it to force chunks)
LOGITS_CHUNK_ELEMENTS = 2**27


def head_token_stats(
    head: Callable[[Tensor], Tensor],
    hidden: Tensor,
    labels: Tensor,
    mask: Tensor,
    temperature: float = 1.0,
    with_entropy: bool = True,
    entropy_grad: bool = True,
    with_self_certainty: bool = False,
) -> Tensor:
    """Per-token statistics of ``softmax(head(hidden) / temperature)`` without ever holding every position's logits.

    ``head`` is a function or a module (its ``forward`` is called, so hooks on it do not run again; its
    ``out_features`` is the vocabulary, or else the last dimension of ``hidden``, for an identity). ``hidden``
    (N, T, H) are the head's inputs at the positions that predict ``labels`` (N, T); only the positions where
    ``mask`` (N, T) is non-zero go through the head (padding costs nothing), ``LOGITS_CHUNK_ELEMENTS // vocabulary``
    positions at a time, each chunk's half-precision logits upcast to float32. With gradients on, every chunk is
    checkpointed: its logits are recomputed in the backward pass rather than kept, so forward and backward hold one
    chunk's (C, V) logits at a time, and the gradients are those of the whole (N, T, V) logits. The entropy enters
    the graph only with ``entropy_grad`` (an entropy that is only logged costs no backward).

    Returns:
        (N, T, S) float32 (float64 for float64 logits), zero where ``mask`` is 0: the columns are log-prob, then
        entropy (``with_entropy``), then self-certainty (``with_self_certainty``).
    """
    check_same_shape(labels=labels, mask=mask)
    vocab = getattr(head, "out_features", None) or hidden.shape[-1]
    forward = head.forward if isinstance(head, torch.nn.Module) else head
    columns = 1 + with_entropy + with_self_certainty

    def chunk_stats(h: Tensor, y: Tensor) -> Tensor:
        logits = forward(h)
        if logits.dtype not in (torch.float32, torch.float64):
            logits = logits.float()
        if temperature != 1.0:
            logits = logits / temperature
        log_partition = torch.logsumexp(logits, dim=-1)  # once for all three columns
        out = [logits.gather(-1, y.unsqueeze(-1)).squeeze(-1) - log_partition]
        if with_entropy:
            out.append(_entropy(logits, log_partition) if entropy_grad else
                       _entropy(logits.detach(), log_partition.detach()))
        if with_self_certainty:
            out.append(log_partition - logits.mean(-1) - math.log(logits.shape[-1]))
        return torch.stack(out, -1)

    valid = (mask.reshape(-1) != 0).nonzero().squeeze(-1)
    h = hidden.reshape(-1, hidden.shape[-1]).index_select(0, valid)
    y = labels.reshape(-1).index_select(0, valid)
    size = max(1, LOGITS_CHUNK_ELEMENTS // vocab)
    recompute = torch.is_grad_enabled() and len(valid) > size
    pieces = [
        checkpoint(chunk_stats, h[start : start + size], y[start : start + size], use_reentrant=False)
        if recompute else chunk_stats(h[start : start + size], y[start : start + size])
        for start in range(0, len(valid), size)
    ]
    stats = torch.cat(pieces) if pieces else h.new_zeros(0, columns, dtype=torch.promote_types(h.dtype, torch.float32))
    out = stats.new_zeros(mask.numel(), columns).index_copy(0, valid, stats)
    return out.reshape(*mask.shape, columns)


def explained_variance(y_pred: Tensor, y: Tensor, mask: Tensor) -> Tensor:
    """``1 - Var(y - y_pred) / Var(y)`` over valid entries: 1 is a perfect critic, 0 no better than a constant.

    When the targets do not vary (``Var(y) == 0``, including fewer than two valid entries) the ratio is undefined;
    this returns 0, "explains nothing beyond a constant", rather than NaN or -inf, so a batch whose labeled rows are
    all correct logs a neutral value instead of poisoning a running mean.
    """
    check_same_shape(y_pred=y_pred, y=y, mask=mask)
    var_y = masked_var(y, mask)
    var_residual = masked_var(y - y_pred, mask)
    safe_var_y = torch.where(var_y > 0, var_y, torch.ones_like(var_y))
    return torch.where(var_y > 0, 1 - var_residual / safe_var_y, torch.zeros_like(var_y))

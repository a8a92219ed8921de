"""What every rollout engine does around its sampler: the prompts encoded with the chat template, over-long ones
cut or dropped (counted, warned once), padded prompt tensors, the stop tokens, and the sampled tokens packed into a
:class:`~tempo_pl.types.Rollout` (row ``g * n + k`` is sample k of prompt g; everything after the first stop token is
padding and out of the mask).

The engines (:mod:`~tempo_pl.engines.hf_generate`, :mod:`~tempo_pl.engines.vllm`,
:mod:`~tempo_pl.engines.vllm_server`) each own one :class:`RolloutPacker` and differ only in how they sample.
"""

from __future__ import annotations

import warnings
from typing import Optional

import torch
from torch import Tensor, nn
from torch.nn.functional import pad
from transformers import PreTrainedTokenizerBase

from tempo_pl.config import SamplingConfig
from tempo_pl.engines.prompts import check_prompt_format, encode_prompts
from tempo_pl.models.hf import hf_model
from tempo_pl.types import PromptBatch, Rollout


class RolloutPacker:
    """Prompts in, a :class:`~tempo_pl.types.Rollout` out, for an engine named ``owner`` in its errors.

    After every :meth:`prepare` ``last_dropped`` holds the number of prompts dropped as overlong (``"drop"`` mode) and
    ``last_truncated`` the number cut from the left; the rollout's ``extra`` carries both (``num_dropped``,
    ``num_prompts_truncated``). The first call that truncates warns once, with the longest prompt's length.

    Example::

        packer = RolloutPacker(tokenizer, SamplingConfig(n=4), "MyEngine")
        spec, n, token_ids, kept, prompt_batch, extra = packer.prepare(prompts, None, None)
        prompt_ids, prompt_mask = packer.prompt_tensors(token_ids, n, device)
        rollout = packer.assemble([(prompt_ids, prompt_mask, response_ids, None)], prompt_batch, n, stop_ids, extra)
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, sampling: SamplingConfig, owner: str) -> None:
        if tokenizer.pad_token_id is None:
            raise ValueError(f"{owner} needs a tokenizer with a pad token (build_tokenizer sets one)")
        if tokenizer.eos_token_id is None:
            raise ValueError(f"{owner} needs a tokenizer with an eos token")
        check_prompt_format(tokenizer, sampling.prompt_format, "sampling.prompt_format")
        self.tokenizer = tokenizer
        self.sampling = sampling
        self.last_dropped = 0
        self.last_truncated = 0
        self.warned_truncation = False

    def prepare(self, prompts: PromptBatch, n: Optional[int], sampling: Optional[SamplingConfig]):
        """The call's sampling spec and n, the kept prompts' token ids and indices, their PromptBatch, and the
        rollout's ``extra`` (prompts dropped and truncated)."""
        spec = sampling or self.sampling
        n = spec.n if n is None else n
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        token_ids, kept = self.encode(prompts, spec)
        extra = {"num_dropped": self.last_dropped, "num_prompts_truncated": self.last_truncated}
        return spec, n, token_ids, kept, prompts.select(kept), extra

    def encode(self, prompts: PromptBatch, spec: SamplingConfig) -> tuple[list[list[int]], list[int]]:
        """Chat-templated token ids of each kept prompt, and the kept prompts' indices."""
        encoded = encode_prompts(self.tokenizer, prompts.prompts, spec.prompt_format, prompts.system_prompts)
        token_ids, kept, dropped, truncated = [], [], 0, 0
        for i, ids in enumerate(encoded):
            if len(ids) > spec.max_prompt_length:
                if spec.overlong_prompt == "drop":
                    dropped += 1
                    continue
                ids = ids[-spec.max_prompt_length :]
                truncated += 1
            token_ids.append(ids)
            kept.append(i)
        self.last_dropped, self.last_truncated = dropped, truncated
        if truncated and not self.warned_truncation:
            self.warned_truncation = True
            warnings.warn(
                f"{truncated} of {len(encoded)} prompts are longer than sampling.max_prompt_length = "
                f"{spec.max_prompt_length} tokens (the longest: {max(len(ids) for ids in encoded)} tokens) and were "
                "cut from the left, losing their beginning and the chat template's header. Raise "
                "sampling.max_prompt_length, or set sampling.overlong_prompt: drop to skip such prompts; "
                "train/rollout/truncated_prompts counts them every RL step. (Warned once.)",
                stacklevel=3,
            )
        return token_ids, kept

    def stop_ids(self, model: nn.Module) -> list[int]:
        ids = [self.tokenizer.eos_token_id]
        model_eos = getattr(hf_model(model).generation_config, "eos_token_id", None)
        for token in [model_eos] if isinstance(model_eos, int) else (model_eos or []):
            if token not in ids:
                ids.append(token)
        return ids

    def prompt_tensors(self, token_ids: list[list[int]], n: int, device: torch.device,
                       repeat: bool = True) -> tuple[Tensor, Tensor]:
        """Left-padded prompt ids and their mask, each prompt's row ``n`` times in a row (once without ``repeat``)."""
        width = max(len(ids) for ids in token_ids)
        pad_id = self.tokenizer.pad_token_id
        prompt_ids = torch.tensor([[pad_id] * (width - len(ids)) + ids for ids in token_ids], dtype=torch.long)
        prompt_mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in token_ids], dtype=torch.long)
        if repeat:
            prompt_ids, prompt_mask = prompt_ids.repeat_interleave(n, dim=0), prompt_mask.repeat_interleave(n, dim=0)
        return prompt_ids.to(device), prompt_mask.to(device)

    def assemble(
        self,
        pieces: list[tuple],
        prompt_batch: PromptBatch,
        n: int,
        stop_ids: list[int],
        extra: dict,
    ) -> Rollout:
        """``pieces``: ``(prompt ids, prompt mask, response ids[, sampling log-probs or None])`` per chunk."""
        pad_id = self.tokenizer.pad_token_id
        logprob_pieces = [piece[3] if len(piece) > 3 else None for piece in pieces]
        pieces = [piece[:3] for piece in pieces]
        width = max(p.shape[1] for p, _, _ in pieces)
        length = max(r.shape[1] for _, _, r in pieces)
        prompt_ids = torch.cat([pad(p, (width - p.shape[1], 0), value=pad_id) for p, _, _ in pieces])
        prompt_mask = torch.cat([pad(m, (width - m.shape[1], 0), value=0) for _, m, _ in pieces])
        response_ids = torch.cat([pad(r, (0, length - r.shape[1]), value=pad_id) for _, _, r in pieces])
        logprobs = None if any(lp is None for lp in logprob_pieces) else torch.cat(
            [pad(lp, (0, length - lp.shape[1]), value=0.0) for lp in logprob_pieces])

        is_stop = torch.isin(response_ids, torch.tensor(stop_ids, device=response_ids.device))
        # tokens after the first EOS: EOS counted before them (exclusive cumulative sum) is positive
        after_stop = (is_stop.long().cumsum(-1) - is_stop.long()) > 0
        response_mask = (~after_stop).float()
        response_ids = response_ids.masked_fill(after_stop, pad_id)
        truncated = ~is_stop.any(-1)

        lengths = response_mask.sum(-1).long().tolist()
        rows = response_ids.tolist()
        texts = self.tokenizer.batch_decode([row[:k] for row, k in zip(rows, lengths)], skip_special_tokens=True)
        device = response_ids.device
        return Rollout(
            prompt_ids=prompt_ids,
            prompt_mask=prompt_mask,
            response_ids=response_ids,
            response_mask=response_mask,
            texts=texts,
            group_ids=torch.arange(len(prompt_batch), device=device).repeat_interleave(n),
            is_labeled=torch.tensor(prompt_batch.is_labeled, dtype=torch.bool, device=device).repeat_interleave(n),
            truncated=truncated,
            prompt_batch=prompt_batch,
            extra=extra,
            sampling_logprobs=None if logprobs is None else logprobs * response_mask,
        )


def device_of(model: nn.Module) -> torch.device:
    """Where a model's parameters live (the CPU for a model without any)."""
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")

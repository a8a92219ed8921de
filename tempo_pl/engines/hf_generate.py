"""Rollout engines: n sampled responses per prompt, packed into a :class:`~tempo_pl.types.Rollout`.

:class:`HFGenerateEngine` runs transformers ``generate`` (KV cache) on the policy being trained, so it needs no
weight sync. A faster engine (vLLM) only has to implement :class:`RolloutEngine`.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Iterator, Optional, Protocol, runtime_checkable

import torch
from torch import Tensor, nn
from torch.nn.functional import pad
from transformers import GenerationConfig, PreTrainedTokenizerBase

from tempo_pl.config import SamplingConfig
from tempo_pl.engines.prompts import PromptFormat, check_prompt_format, encode_prompts
from tempo_pl.models.hf import hf_model
from tempo_pl.models.lora import disable_bnb_avx512bf16
from tempo_pl.models.shared_prompts import shared_prompt_cache
from tempo_pl.types import PromptBatch, Rollout

__all__ = ["HFGenerateEngine", "PromptFormat", "RolloutEngine", "encode_prompts"]

@runtime_checkable
class RolloutEngine(Protocol):
    """Anything that samples ``n`` responses per prompt from ``model`` (rows of a prompt consecutive), with its own
    sampling spec or the one passed (evaluation samples with its own temperature, k and budget).

    An engine that serves its own copy of the weights (vLLM) also has ``sync_weights(model)``: the module calls it
    after every policy update, so the next rollout samples from the updated policy. Such an engine sets
    ``serves_own_weights = True``: under FSDP2 the module then gathers nothing around its ``generate`` calls."""

    def generate(
        self, model: nn.Module, prompts: PromptBatch, n: int, sampling: Optional["SamplingConfig"] = None
    ) -> Rollout: ...


class HFGenerateEngine:
    """Sampling with transformers ``generate``: chat template, left padding, KV cache, stop at EOS.

    Row ``g * n + k`` of the rollout is sample k of prompt g. Responses are right-padded with the pad token;
    ``response_mask`` covers every token up to and including the first EOS (all tokens when there is none, and then
    ``truncated`` is set). The model is put in eval mode under ``torch.no_grad`` and its train/eval mode restored.
    Sampling uses only this spec: the model's own ``generation_config`` (e.g. Qwen3's top_k=20) is ignored. Samples
    are drawn from the global RNG: seed it (Lightning's ``seed_everything``) for reproducible rollouts.

    Args:
        tokenizer: the policy's tokenizer; its chat template frames each prompt as a user message (checked here
            against ``sampling.prompt_format``, so a missing template fails at setup, not at the first step).
        sampling: temperature, top-p/top-k, lengths, overlong-prompt policy, prompt format.
        micro_batch_size: prompts per ``generate`` call (each with its n samples); None = the whole batch at once.

    After every call ``last_dropped`` holds the number of prompts dropped as overlong (``"drop"`` mode) and
    ``last_truncated`` the number cut from the left; the rollout's ``extra`` carries both (``num_dropped``,
    ``num_prompts_truncated``). The first call that truncates warns once, with the longest prompt's length.

    Example::

        engine = HFGenerateEngine(tokenizer, SamplingConfig(n=4, max_new_tokens=256))
        rollout = engine.generate(policy, prompt_batch, n=4)
    """

    serves_own_weights = False
    """It samples from the policy itself: under FSDP2 the module gathers the policy around every call."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        sampling: SamplingConfig,
        micro_batch_size: Optional[int] = None,
    ) -> None:
        if tokenizer.pad_token_id is None:
            raise ValueError("HFGenerateEngine needs a tokenizer with a pad token (build_tokenizer sets one)")
        if tokenizer.eos_token_id is None:
            raise ValueError("HFGenerateEngine needs a tokenizer with an eos token")
        if micro_batch_size is not None and micro_batch_size < 1:
            raise ValueError(f"micro_batch_size must be >= 1, got {micro_batch_size}")
        check_prompt_format(tokenizer, sampling.prompt_format, "sampling.prompt_format")
        self.tokenizer = tokenizer
        self.sampling = sampling
        self.micro_batch_size = micro_batch_size
        self.last_dropped = 0
        self.last_truncated = 0
        self.warned_truncation = False

    # ------------------------------------------------------------------------------------------------- public
    def generate(
        self, model: nn.Module, prompts: PromptBatch, n: Optional[int] = None, sampling: Optional[SamplingConfig] = None
    ) -> Rollout:
        """Sample ``n`` (default ``sampling.n``) responses for every prompt of ``prompts``, with ``sampling`` in place
        of the engine's own spec when given."""
        spec, n, token_ids, kept, prompt_batch, extra = self._prepare(prompts, n, sampling)
        if not kept:
            return Rollout.empty(prompt_batch, extra)
        device = _device_of(model)
        step = self.micro_batch_size or len(token_ids)
        pieces = []
        with _eval_no_grad(model):
            disable_bnb_avx512bf16(model)
            config = self._generation_config(model, spec)
            with _only_generation_config(model, config):
                for start in range(0, len(token_ids), step):
                    pieces.append(self._generate_chunk(model, token_ids[start : start + step], n, config, device))
        return self._assemble(pieces, prompt_batch, n, config.eos_token_id, extra)

    # ------------------------------------------------------------------------------------------------ helpers
    def _prepare(self, prompts: PromptBatch, n: Optional[int], sampling: Optional[SamplingConfig]):
        """The call's sampling spec and n, the kept prompts' token ids and indices, their PromptBatch, and the
        rollout's ``extra`` (prompts dropped and truncated)."""
        spec = sampling or self.sampling
        n = spec.n if n is None else n
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        token_ids, kept = self._encode_prompts(prompts, spec)
        extra = {"num_dropped": self.last_dropped, "num_prompts_truncated": self.last_truncated}
        return spec, n, token_ids, kept, prompts.select(kept), extra

    def _encode_prompts(self, prompts: PromptBatch, spec: SamplingConfig) -> tuple[list[list[int]], list[int]]:
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

    def _stop_ids(self, model: nn.Module) -> list[int]:
        ids = [self.tokenizer.eos_token_id]
        model_eos = getattr(hf_model(model).generation_config, "eos_token_id", None)
        for token in [model_eos] if isinstance(model_eos, int) else (model_eos or []):
            if token not in ids:
                ids.append(token)
        return ids

    def _generation_config(self, model: nn.Module, spec: SamplingConfig) -> GenerationConfig:
        sample = spec.temperature > 0
        # sampling: explicit neutral values (top_k=0, top_p=1) rather than None, which generate would fill in from
        # its global defaults (top_k=50); greedy: None, since greedy decoding reads none of them
        return GenerationConfig(
            do_sample=sample,
            temperature=spec.temperature if sample else None,
            top_p=spec.top_p if sample else None,
            top_k=max(spec.top_k, 0) if sample else None,
            max_new_tokens=spec.max_new_tokens,
            eos_token_id=self._stop_ids(model),
            pad_token_id=self.tokenizer.pad_token_id,
            use_cache=True,
        )

    def _generate_chunk(
        self, model: nn.Module, token_ids: list[list[int]], n: int, config: GenerationConfig, device: torch.device
    ) -> tuple[Tensor, Tensor, Tensor]:
        width = max(len(ids) for ids in token_ids)
        pad_id = self.tokenizer.pad_token_id
        prompt_ids = torch.tensor([[pad_id] * (width - len(ids)) + ids for ids in token_ids], dtype=torch.long)
        prompt_mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in token_ids], dtype=torch.long)
        cache = shared_prompt_cache(model, prompt_ids.to(device), prompt_mask.to(device), n)  # prefilled once
        prompt_ids = prompt_ids.repeat_interleave(n, dim=0).to(device)
        prompt_mask = prompt_mask.repeat_interleave(n, dim=0).to(device)
        sequences = model.generate(input_ids=prompt_ids, attention_mask=prompt_mask, generation_config=config,
                                   **({} if cache is None else {"cache": cache}))
        return prompt_ids, prompt_mask, sequences[:, width:]

    def _assemble(
        self,
        pieces: list[tuple[Tensor, Tensor, Tensor]],
        prompt_batch: PromptBatch,
        n: int,
        stop_ids: list[int],
        extra: dict,
    ) -> Rollout:
        pad_id = self.tokenizer.pad_token_id
        width = max(p.shape[1] for p, _, _ in pieces)
        length = max(r.shape[1] for _, _, r in pieces)
        prompt_ids = torch.cat([pad(p, (width - p.shape[1], 0), value=pad_id) for p, _, _ in pieces])
        prompt_mask = torch.cat([pad(m, (width - m.shape[1], 0), value=0) for _, m, _ in pieces])
        response_ids = torch.cat([pad(r, (0, length - r.shape[1]), value=pad_id) for _, _, r in pieces])

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
        )


def _device_of(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


@contextlib.contextmanager
def _eval_no_grad(model: nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


@contextlib.contextmanager
def _only_generation_config(model: nn.Module, config: GenerationConfig) -> Iterator[None]:
    """``generate`` fills every field a passed config leaves unset from the model's own generation_config (hub
    sampling defaults, suppressed tokens, repetition penalty ...); swap it for the duration of the call."""
    target = hf_model(model)
    saved = target.generation_config
    target.generation_config = config
    try:
        yield
    finally:
        target.generation_config = saved

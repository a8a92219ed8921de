"""Rollout engines: n sampled responses per prompt, packed into a :class:`~tempo_pl.types.Rollout`.

:class:`HFGenerateEngine` runs transformers ``generate`` (KV cache) on the policy being trained, so it needs no
weight sync. A faster engine (vLLM) only has to implement :class:`RolloutEngine`.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Optional, Protocol, runtime_checkable

import torch
from torch import Tensor, nn
from transformers import GenerationConfig, PreTrainedTokenizerBase

from tempo_pl.config import SamplingConfig
from tempo_pl.engines.packing import RolloutPacker, device_of
from tempo_pl.engines.prompts import PromptFormat, encode_prompts
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

    Prompts are encoded, cut or dropped and the rollout packed by its :class:`~tempo_pl.engines.packing.RolloutPacker`
    (``last_dropped``, ``last_truncated`` after every call; the rollout's ``extra`` carries both).

    Example::

        engine = HFGenerateEngine(tokenizer, SamplingConfig(n=4, max_new_tokens=256))
        rollout = engine.generate(policy, prompt_batch, n=4)
    """

    serves_own_weights = False
    """It samples from the policy itself: under FSDP2 the module gathers the policy around every call."""
    sampling_logprobs = False
    """Fill ``Rollout.sampling_logprobs``: the log-probs of the distribution each token was drawn from (the
    processed scores ``generate`` samples from: temperature, top-k and top-p applied), for the rollout correction.
    ``generate`` then keeps a chunk's scores until it ends (rows x new tokens x vocabulary floats)."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        sampling: SamplingConfig,
        micro_batch_size: Optional[int] = None,
    ) -> None:
        self.packer = RolloutPacker(tokenizer, sampling, type(self).__name__)
        if micro_batch_size is not None and micro_batch_size < 1:
            raise ValueError(f"micro_batch_size must be >= 1, got {micro_batch_size}")
        self.tokenizer = tokenizer
        self.sampling = sampling
        self.micro_batch_size = micro_batch_size

    @property
    def last_dropped(self) -> int:
        """Prompts the last call dropped as overlong."""
        return self.packer.last_dropped

    @property
    def last_truncated(self) -> int:
        """Prompts the last call cut from the left."""
        return self.packer.last_truncated

    # ------------------------------------------------------------------------------------------------- public
    def generate(
        self, model: nn.Module, prompts: PromptBatch, n: Optional[int] = None, sampling: Optional[SamplingConfig] = None
    ) -> Rollout:
        """Sample ``n`` (default ``sampling.n``) responses for every prompt of ``prompts``, with ``sampling`` in place
        of the engine's own spec when given."""
        spec, n, token_ids, kept, prompt_batch, extra = self.packer.prepare(prompts, n, sampling)
        if not kept:
            return Rollout.empty(prompt_batch, extra)
        device = device_of(model)
        step = self.micro_batch_size or len(token_ids)
        pieces = []
        with _eval_no_grad(model):
            disable_bnb_avx512bf16(model)
            config = self._generation_config(model, spec)
            with _only_generation_config(model, config):
                for start in range(0, len(token_ids), step):
                    pieces.append(self._generate_chunk(model, token_ids[start : start + step], n, config, device))
        return self.packer.assemble(pieces, prompt_batch, n, config.eos_token_id, extra)

    # ------------------------------------------------------------------------------------------------ helpers
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
            eos_token_id=self.packer.stop_ids(model),
            pad_token_id=self.tokenizer.pad_token_id,
            use_cache=True,
            return_dict_in_generate=True,
            output_scores=self.sampling_logprobs,
        )

    def _generate_chunk(
        self, model: nn.Module, token_ids: list[list[int]], n: int, config: GenerationConfig, device: torch.device
    ) -> tuple[Tensor, Tensor, Tensor, Optional[Tensor]]:
        prompt_ids, prompt_mask = self.packer.prompt_tensors(token_ids, n, device, repeat=False)
        cache = shared_prompt_cache(model, prompt_ids, prompt_mask, n)  # prefilled once
        prompt_ids, prompt_mask = prompt_ids.repeat_interleave(n, dim=0), prompt_mask.repeat_interleave(n, dim=0)
        out = model.generate(input_ids=prompt_ids, attention_mask=prompt_mask, generation_config=config,
                             **({} if cache is None else {"cache": cache}))
        response = out.sequences[:, prompt_ids.shape[1]:]
        if not self.sampling_logprobs:
            return prompt_ids, prompt_mask, response, None
        scores = torch.stack(out.scores, dim=1).float()  # (rows, new tokens, vocabulary)
        logprobs = torch.log_softmax(scores, dim=-1).gather(-1, response.unsqueeze(-1)).squeeze(-1)
        return prompt_ids, prompt_mask, response, logprobs

def ask_for_sampling_logprobs(engine: Any, why: str) -> None:
    """Make ``engine`` fill ``Rollout.sampling_logprobs`` (its ``sampling_logprobs`` switch); refuse an engine that
    has no such switch, naming it and ``why`` it is needed."""
    if not hasattr(engine, "sampling_logprobs"):
        raise ValueError(f"{why} needs the sampler's log-probs, but the rollout engine {type(engine).__name__} gives "
                         "none (an engine with a sampling_logprobs switch: HFGenerateEngine, VLLMEngine)")
    engine.sampling_logprobs = True



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

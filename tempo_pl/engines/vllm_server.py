"""Rollouts sampled by vLLM servers of their own (``vllm serve`` / ``tempo-pl serve``), weights pushed in place.

:class:`VLLMServerEngine` sends each question's n samples to one of its servers' ``/v1/completions`` (prompt as
token ids, one seed per question, the sampled tokens' log-probs returned) and assembles the rollout with the code
:class:`~tempo_pl.engines.vllm.VLLMEngine` uses: same masks, truncation flags, texts and ``sampling_logprobs``.
After every policy update :meth:`VLLMServerEngine.sync_weights` streams the policy's weights
(:func:`tempo_pl.engines.served_weights.served_weights`: LoRA merged, 4-bit dequantized, FSDP2 units gathered one at a
time) from the trainer's rank 0 to every worker of every server over a gloo group (:mod:`tempo_pl.engines.weight_stream`),
which loads them in place (:mod:`tempo_pl.engines.vllm_server_worker`); no restart, no file. docs/vllm_server.md has the
layout, the server flags and the failure behaviour.
"""

from __future__ import annotations

import logging
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Optional
from urllib.parse import urlparse

import torch
from torch import nn
from torch.nn.functional import pad
from transformers import PreTrainedTokenizerBase

from tempo_pl.config import SamplingConfig
from tempo_pl.engines.packing import RolloutPacker, device_of
from tempo_pl.engines.served_weights import release_gathered, served_weights
from tempo_pl.engines.server_http import (
    RESTART_HINT,
    ServerError,
    assign_questions,
    collective_rpc,
    completion_body,
    read_completion,
    request_json,
    wait_until_up,
)
from tempo_pl.engines.weight_stream import host_store, local_address_towards, open_group, send_weights
from tempo_pl.types import PromptBatch, Rollout

log = logging.getLogger(__name__)

POLICY_VERSION = "policy_version"
"""Key of ``Rollout.extra``: per row, the policy version (policy updates included) of the weights it was drawn from."""

LOGPROBS_MODE = "processed_logprobs"


class VLLMServerEngine:
    """Samples on vLLM servers of their own; streams the policy's weights to them after every update.

    Rows, masks, ``truncated``, texts and ``sampling_logprobs`` are those of
    :class:`~tempo_pl.engines.vllm.VLLMEngine`, and so are the seeds: each call draws one seed from torch's global
    RNG (which checkpoints save) and question g gets ``seed + g * n``, whichever server samples it, so a resumed run
    samples what the straight run sampled. A question's n samples go to one server (a majority vote and a critic
    group stay whole); questions are spread over the servers by prompt + response budget.

    Policy version: the number of policy updates in the weights served (0 = the initial policy). The engine and
    every server worker keep it; before and after each rollout the engine asks every worker for its version and
    refuses to go on, naming the server, when one differs. ``rollout.extra["policy_version"]`` holds it per row.
    The first ``generate`` (of a run, or of a resumed run) pushes the weights whatever the servers hold.

    Args:
        tokenizer: the policy's tokenizer (prompts go as token ids, texts are decoded here).
        sampling: the training sampling spec; evaluation passes its own to ``generate``.
        micro_batch_size: the module's ``training.generation_batch_size``. Unused: every question is its own
            request and the servers batch them.
        urls: the servers' base URLs (``http://host:port``), each started by ``tempo-pl serve`` or by ``vllm serve``
            with the flags docs/vllm_server.md lists.
        connect_timeout_s: how long the engine waits at start for each server's ``/health`` before it stops with
            an error that names the server.
        request_timeout_s: the longest one question's completion request may take.
        sync_timeout_s: the longest one weight update may take (joining the weight group included).
        sync_host: the trainer's address as the servers reach it (the weight group's store runs there); None =
            the address of the interface that routes to each server.
        max_concurrent_requests: questions in flight at once, over all servers.

    Example (YAML)::

        rollout_engine:
          class_path: tempo_pl.engines.vllm_server.VLLMServerEngine
          init_args: {urls: ["http://gpu-node-7:8000"]}
    """

    serves_own_weights = True
    """The servers sample from their own copies: under FSDP2 the module gathers nothing around ``generate``."""

    sampling_logprobs = True
    """The servers return every sampled token's log-prob: ``Rollout.sampling_logprobs`` is always filled."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        sampling: SamplingConfig,
        micro_batch_size: Optional[int] = None,
        urls: Optional[list[str]] = None,
        connect_timeout_s: float = 60.0,
        request_timeout_s: float = 1800.0,
        sync_timeout_s: float = 600.0,
        sync_host: Optional[str] = None,
        max_concurrent_requests: int = 256,
    ) -> None:
        self.packer = RolloutPacker(tokenizer, sampling, "VLLMServerEngine")
        self.tokenizer = tokenizer
        self.sampling = sampling
        if not urls:
            raise ValueError("VLLMServerEngine.urls must name at least one server (http://host:port)")
        for url in urls:
            parsed = urlparse(url)
            if parsed.scheme not in ("http", "https") or not parsed.hostname or not parsed.port:
                raise ValueError(f"VLLMServerEngine.urls: {url!r} is not http://host:port")
        if len(set(urls)) != len(urls):
            raise ValueError(f"VLLMServerEngine.urls names a server twice: {urls}")
        for key, value in (("connect_timeout_s", connect_timeout_s), ("request_timeout_s", request_timeout_s),
                           ("sync_timeout_s", sync_timeout_s), ("max_concurrent_requests", max_concurrent_requests)):
            if value <= 0:
                raise ValueError(f"VLLMServerEngine.{key} must be positive, got {value}")
        self.urls = list(urls)
        self.connect_timeout_s, self.request_timeout_s, self.sync_timeout_s = (connect_timeout_s, request_timeout_s,
                                                                               sync_timeout_s)
        self.sync_host = sync_host
        self.max_concurrent_requests = max_concurrent_requests
        self.policy_version = 0
        """Policy updates in the weights the servers should serve (checkpointed: ``state_dict``)."""
        self.weight_syncs = 0
        """Weight pushes of this engine (the first push of a run or of a resumed run included)."""
        self.last_sync_s = 0.0
        """Seconds the last push took (gathering, merging, streaming, loading on every server)."""
        self.last_sync_bytes = 0
        """Bytes of weights the last push sent to each server."""
        self.models: dict[str, str] = {}
        self.workers: dict[str, int] = {}
        self._groups: dict[str, object] = {}
        self._store = None
        for url in self.urls:
            wait_until_up(url, connect_timeout_s)
            self.models[url] = request_json(url, "/v1/models", timeout_s=connect_timeout_s)["data"][0]["id"]
            states = collective_rpc(url, "tempo_state", {}, timeout_s=connect_timeout_s)
            self.workers[url] = len(states)
            modes = {s["logprobs_mode"] for s in states}
            if modes != {LOGPROBS_MODE}:
                raise ServerError(f"vLLM server {url} returns {modes} log-probs: start it with --logprobs-mode "
                                  f"{LOGPROBS_MODE} (the log-probs of the distribution it samples from)")
        if micro_batch_size is not None:
            log.info("VLLMServerEngine: training.generation_batch_size=%d is not used; the servers batch",
                     micro_batch_size)

    # ------------------------------------------------------------------------------------------------- public
    def generate(
        self, model: nn.Module, prompts: PromptBatch, n: Optional[int] = None, sampling: Optional[SamplingConfig] = None
    ) -> Rollout:
        """Sample ``n`` (default ``sampling.n``) responses for every prompt, with ``sampling`` in place of the
        engine's own spec when given. The first call pushes ``model``'s weights to the servers."""
        spec, n, token_ids, kept, prompt_batch, extra = self.packer.prepare(prompts, n, sampling)
        if self.weight_syncs == 0:  # every rank takes part: FSDP2's gathers are collective
            self._push(model, self.policy_version)
        release_gathered(model)
        if not kept:
            return Rollout.empty(prompt_batch, extra)
        stop_ids = self.packer.stop_ids(model)
        self.check_versions()
        seed = int(torch.randint(0, 2**31 - 1, ()).item())
        samples = self._sample(token_ids, n, seed, spec, stop_ids)
        self.check_versions()
        device = device_of(model)
        prompt_ids, prompt_mask = self.packer.prompt_tensors(token_ids, n, device)
        responses, logprobs = _sample_tensors(samples, self.tokenizer.pad_token_id, device)
        rollout = self.packer.assemble([(prompt_ids, prompt_mask, responses)], prompt_batch, n, stop_ids, extra)
        rollout.sampling_logprobs = logprobs * rollout.response_mask
        rollout.extra[POLICY_VERSION] = torch.full((rollout.num_rows,), self.policy_version, dtype=torch.long,
                                                   device=device)
        return rollout

    def sync_weights(self, model: nn.Module) -> None:
        """Push ``model``'s weights, one policy update newer, to every server; a no-op before the first ``generate``
        (which pushes them). Every rank must call it (FSDP2 gathers are collective; rank 0 sends)."""
        if self.weight_syncs == 0:
            return
        self._push(model, self.policy_version + 1)

    def check_versions(self) -> None:
        """Every worker of every server serves ``policy_version``, or a :class:`ServerError` naming the server."""
        for url in self.urls:
            try:
                states = collective_rpc(url, "tempo_state", {}, timeout_s=self.request_timeout_s)
            except ServerError as err:
                raise ServerError(f"{err}; the step is stopped; {RESTART_HINT}") from err
            for state in states:
                if state["policy_version"] != self.policy_version:
                    raise ServerError(
                        f"vLLM server {url} (worker rank {state['rank']}) serves policy version "
                        f"{state['policy_version']}, the trainer's is {self.policy_version}: it did not apply the "
                        f"last weight update (restarted?); {RESTART_HINT}")

    def state_dict(self) -> dict:
        return {"policy_version": self.policy_version}

    def load_state_dict(self, state: dict) -> None:
        self.policy_version = int(state["policy_version"])

    # ------------------------------------------------------------------------------------------------ helpers
    def _sample(self, token_ids: list[list[int]], n: int, seed: int, spec: SamplingConfig,
                stop_ids: list[int]) -> list[tuple[list[int], list[float]]]:
        """Every question's n samples, question-major: question g on its assigned server with seed ``seed + g n``."""
        servers = assign_questions([n * (len(ids) + spec.max_new_tokens) for ids in token_ids], len(self.urls))

        def one(question: int) -> list[tuple[list[int], list[float]]]:
            url = self.urls[servers[question]]
            body = completion_body(self.models[url], token_ids[question], n, seed + question * n, spec.temperature,
                                   spec.top_p, spec.top_k, spec.max_new_tokens, stop_ids)
            try:
                answer = request_json(url, "/v1/completions", body, timeout_s=self.request_timeout_s)
            except ServerError as err:
                raise ServerError(f"{err}; the step is stopped; {RESTART_HINT}") from err
            return read_completion(url, answer, n)

        with ThreadPoolExecutor(max_workers=min(len(token_ids), self.max_concurrent_requests)) as pool:
            return [sample for question in pool.map(one, range(len(token_ids))) for sample in question]

    def _push(self, model: nn.Module, version: int) -> None:
        start = time.perf_counter()
        if _rank() == 0:
            self._open_groups()
            with ThreadPoolExecutor(max_workers=len(self.urls)) as pool:
                # each server's workers receive (a blocking RPC) while this thread streams to all of them
                receiving = {url: pool.submit(collective_rpc, url, "tempo_receive", {"version": version},
                                              self.sync_timeout_s) for url in self.urls}
                try:
                    _, self.last_sync_bytes = send_weights([self._groups[u] for u in self.urls], served_weights(model))
                finally:
                    for url, future in receiving.items():
                        try:
                            future.result()
                        except ServerError as err:
                            raise ServerError(f"{err}; the weight update to {url} failed; {RESTART_HINT}") from err
            for url in self.urls:  # cached prefixes hold keys and values of the old weights
                request_json(url, "/reset_prefix_cache", {}, timeout_s=self.sync_timeout_s)
        else:
            for _ in served_weights(model):  # the gathers are collective; rank 0 alone sends
                pass
        if _world_size() > 1:
            torch.distributed.barrier()
        self.policy_version = version
        self.weight_syncs += 1
        self.last_sync_s = time.perf_counter() - start
        log.info("VLLMServerEngine: policy version %d pushed to %d server(s) in %.3f s", version, len(self.urls),
                 self.last_sync_s)

    def _open_groups(self) -> None:
        """One gloo group per server (this process and the server's workers), opened at the first push."""
        missing = [url for url in self.urls if url not in self._groups]
        if not missing:
            return
        if self._store is None:
            self._store = host_store(self.sync_timeout_s)
        for url in missing:
            host = self.sync_host or local_address_towards(urlparse(url).hostname)
            prefix = f"tempo-{uuid.uuid4().hex}"
            spec = {"host": host, "port": self._store.port, "world_size": 1 + self.workers[url], "prefix": prefix,
                    "timeout_s": self.sync_timeout_s}
            with ThreadPoolExecutor(max_workers=1) as pool:
                joining = pool.submit(collective_rpc, url, "tempo_join", spec, self.sync_timeout_s)
                self._groups[url] = open_group(host, self._store.port, 0, spec["world_size"], self.sync_timeout_s,
                                               prefix=prefix, store=self._store)
                joining.result()


def _sample_tensors(samples: list[tuple[list[int], list[float]]], pad_id: int, device: torch.device):
    """Right-padded response ids and sampled-token log-probs, one row per sample (question-major)."""
    length = max(1, max(len(ids) for ids, _ in samples))
    ids = [pad(torch.tensor(ids, dtype=torch.long), (0, length - len(ids)), value=pad_id) for ids, _ in samples]
    logprobs = [pad(torch.tensor(lps, dtype=torch.float32), (0, length - len(lps))) for _, lps in samples]
    return torch.stack(ids).to(device), torch.stack(logprobs).to(device)


def _rank() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return 0


def _world_size() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size()
    return 1

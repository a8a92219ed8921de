"""The worker side of :class:`~tempo_pl.engines.vllm_server.VLLMServerEngine`'s weight updates, inside a vLLM server.

``vllm serve ... --worker-extension-cls tempo_pl.engines.vllm_server_worker.TempoWeightReceiver`` mixes this class into
every worker of the server (``tempo-pl serve`` passes the flag); the engine calls its methods through the server's
``/collective_rpc`` endpoint (``VLLM_SERVER_DEV_MODE=1``). Each method takes one JSON string (the endpoint passes
strings only) and returns a dict, which the endpoint hands back as JSON, one per worker.

The worker keeps the policy version of the weights it serves: 0 until the first update, then the version each
update names, set only once the update's last tensor is loaded. The engine compares it with its own before and
after every rollout, so a server that missed an update (restarted, or failed half-way) is never sampled from.
"""

from __future__ import annotations

import json

from tempo_pl.engines.weight_stream import open_group, receive_weights


class TempoWeightReceiver:
    """Methods mixed into each vLLM worker (it provides ``rank``, ``model_config`` and ``reload_weights``)."""

    def tempo_state(self, request: str = "{}") -> dict:
        """This worker's policy version and what the engine checks of the server's setup."""
        model_config = self.model_config
        return {
            "rank": self.rank,
            "policy_version": getattr(self, "_tempo_policy_version", 0),
            "dtype": str(model_config.dtype).removeprefix("torch."),
            "logprobs_mode": str(model_config.logprobs_mode),
            "max_model_len": model_config.max_model_len,
            "joined": getattr(self, "_tempo_group", None) is not None,
        }

    def tempo_join(self, request: str) -> dict:
        """Join the engine's weight group ``{"host", "port", "world_size", "prefix", "timeout_s"}`` as rank
        1 + this worker's rank (the engine is rank 0); blocks until every rank has joined."""
        spec = json.loads(request)
        self._tempo_group = open_group(spec["host"], spec["port"], 1 + self.rank, spec["world_size"],
                                       spec["timeout_s"], prefix=spec["prefix"])
        return self.tempo_state()

    def tempo_receive(self, request: str) -> dict:
        """Load the weights the engine streams over the group, in place, then take on ``{"version"}``."""
        spec = json.loads(request)
        group = getattr(self, "_tempo_group", None)
        if group is None:
            raise RuntimeError("tempo_receive before tempo_join: this worker is in no weight group")
        self._tempo_policy_version = None  # a failed load leaves no version that the engine could accept
        self.reload_weights(weights_iterator=receive_weights(group), is_checkpoint_format=True)
        self._tempo_policy_version = int(spec["version"])
        return self.tempo_state()

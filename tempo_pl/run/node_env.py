"""What a process knows about its node from its launcher: the local rank and the number of ranks on the node.

Node-local work (vLLM's device index, grader worker pools, caches) is keyed by these, never by the global rank: on a
second node of 8 GPUs, global rank 8 is local rank 0. torchrun and Lightning's own launcher set ``LOCAL_RANK`` and
``LOCAL_WORLD_SIZE``; ``srun`` sets only ``SLURM_LOCALID`` and ``SLURM_NTASKS_PER_NODE``.
"""

from __future__ import annotations

import os
import re


def local_rank() -> int:
    """``LOCAL_RANK``, else ``SLURM_LOCALID``, else 0 (the first process of Lightning's own launcher has neither)."""
    for key in ("LOCAL_RANK", "SLURM_LOCALID"):
        value = os.environ.get(key, "")
        if value.isdigit():
            return int(value)
    return 0


def local_world_size() -> int:
    """``LOCAL_WORLD_SIZE``, else SLURM's tasks on this node (``SLURM_NTASKS_PER_NODE``, e.g. ``8`` or ``8(x2)``),
    else 1."""
    value = os.environ.get("LOCAL_WORLD_SIZE", "")
    if value.isdigit() and int(value) > 0:
        return int(value)
    match = re.match(r"(\d+)", os.environ.get("SLURM_NTASKS_PER_NODE", ""))
    if match and int(match.group(1)) > 0:
        return int(match.group(1))
    return 1

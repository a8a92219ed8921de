"""``(name, tensor)`` pairs streamed from the trainer to a served engine's workers over a gloo process group.

The group is the trainer's rank 0 (rank 0 of the group, the sender) and every worker of one server (ranks 1 ...).
It is created apart from any process group the trainer or the server already has: a TCPStore that the sender hosts
on a free port, and a gloo group on top of it, so neither side's default group is touched. Each pair travels as a
fixed-size header (the name, dtype and shape, JSON) and then the tensor's bytes; a header without a name ends the
stream. Gloo runs on any host (CPU memory, TCP): it is the one collective transport vLLM's CPU build can receive
with (its own weight-transfer backends need NCCL, CUDA IPC or Ray; see docs/vllm_server.md).

Example::

    store = host_store(timeout_s=300)                                                    # the trainer
    group = open_group("10.0.0.1", store.port, 0, 2, 300, prefix="sync", store=store)
    send_weights([group], served_weights(policy))

    group = open_group("10.0.0.1", port, 1, 2, 300, prefix="sync")                      # a worker
    for name, tensor in receive_weights(group): ...
"""

from __future__ import annotations

import json
import socket
from datetime import timedelta
from typing import Iterable, Iterator, Optional

import torch
from torch import Tensor
from torch.distributed import BroadcastOptions, PrefixStore, ProcessGroupGloo, TCPStore

HEADER_BYTES = 1024
"""Size of each tensor's header: a JSON object ``{"name", "dtype", "shape"}`` padded with spaces."""


def host_store(timeout_s: float) -> TCPStore:
    """A TCPStore on a free port of this host, all interfaces (the sender's side; ``.port`` is the port)."""
    return TCPStore("0.0.0.0", 0, is_master=True, wait_for_workers=False, timeout=timedelta(seconds=timeout_s))


def open_group(host: str, port: int, rank: int, world_size: int, timeout_s: float, prefix: str,
               store: Optional[TCPStore] = None) -> ProcessGroupGloo:
    """This process's member of the gloo group ``prefix`` of ``world_size`` ranks whose store is at
    ``host:port``; blocks until every rank has joined. Rank 0 passes the store it hosts."""
    timeout = timedelta(seconds=timeout_s)
    if store is None:
        store = TCPStore(host, port, is_master=False, timeout=timeout)
    options = ProcessGroupGloo._Options()
    options._timeout = timeout
    # the address the other ranks reach this one at: the interface that routes to the store's host
    options._devices = [ProcessGroupGloo.create_device(hostname=local_address_towards(host))]
    return ProcessGroupGloo(PrefixStore(prefix, store), rank, world_size, options)


def send_weights(groups: list, weights: Iterable[tuple[str, Tensor]]) -> tuple[int, int]:
    """Broadcast every pair from rank 0 of each group, then the end marker; returns (tensors, bytes) sent."""
    count = nbytes = 0
    for name, tensor in weights:
        # through host memory: gloo's TCP transport sends from it (a no-op copy for a CPU tensor)
        data = tensor.detach().contiguous().reshape(-1).view(torch.uint8).cpu()
        _broadcast_all(groups, _header({"name": name, "dtype": str(tensor.dtype).removeprefix("torch."),
                                        "shape": list(tensor.shape)}))
        _broadcast_all(groups, data)
        count, nbytes = count + 1, nbytes + data.numel()
    _broadcast_all(groups, _header({}))
    return count, nbytes


def receive_weights(group) -> Iterator[tuple[str, Tensor]]:
    """The pairs rank 0 of ``group`` sends, until its end marker (a receiver's side)."""
    while True:
        header = torch.empty(HEADER_BYTES, dtype=torch.uint8)
        _broadcast(group, header).wait()
        meta = json.loads(bytes(header.tolist()).decode())
        if not meta:
            return
        dtype = getattr(torch, meta["dtype"])
        shape = meta["shape"]
        numel = 1
        for size in shape:
            numel *= size
        data = torch.empty(numel * dtype.itemsize, dtype=torch.uint8)
        _broadcast(group, data).wait()
        yield meta["name"], data.view(dtype).reshape(shape)


def _header(meta: dict) -> Tensor:
    encoded = json.dumps(meta).encode()
    if len(encoded) > HEADER_BYTES:
        raise ValueError(f"weight stream: the header of {meta.get('name')!r} is over {HEADER_BYTES} bytes")
    return torch.tensor(list(encoded.ljust(HEADER_BYTES)), dtype=torch.uint8)


def _broadcast(group, tensor: Tensor):
    options = BroadcastOptions()
    options.rootRank = 0
    return group.broadcast([tensor], options)


def _broadcast_all(groups: list, tensor: Tensor) -> None:
    for work in [_broadcast(group, tensor) for group in groups]:
        work.wait()


def local_address_towards(host: str) -> str:
    """This host's address on the interface that routes to ``host`` (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect((host, 9))
        return probe.getsockname()[0]

"""Two nodes of one process each, on one host (gloo on 127.0.0.1), launched as on a cluster: by torchrun
(``--nnodes 2 --node_rank {0,1}``) and by srun (simulated: the ``SLURM_*`` variables Lightning's SLURMEnvironment
reads, no ``LOCAL_RANK``), with DDP and FSDP2. Each run computes what one process computes on the same global batch
(the comparison of tests/test_two_ranks_as_one.py: kept groups, advantages, losses, weights after SGD).

The commands are those of docs/multinode.md."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from _tiny_run import ROOT
from test_two_ranks_as_one import _assert_ranks_compute_one_process, _config, _env, _results, _run

STRATEGIES = {"ddp": "ddp_find_unused_parameters_true",
              "fsdp2": yaml.safe_load((ROOT / "configs" / "fsdp2_tiny.yaml").read_text())["trainer"]["strategy"]}
TIMEOUT_S = 420


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _node_command(launcher: str, node: int, port: int, config: Path) -> tuple[list[str], dict]:
    fit = ["fit", "--config", str(config), "--trainer.num_nodes", "2", "--trainer.devices", "1"]
    if launcher == "torchrun":
        return ([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
                 "--node_rank", str(node), "--master_addr", "127.0.0.1", "--master_port", str(port),
                 "-m", "tempo_pl", *fit], {})
    # what srun gives task <node> of `srun --nodes 2 --ntasks-per-node 1` (MASTER_PORT: a free port on this host;
    # on a cluster Lightning derives it from SLURM_JOB_ID)
    return ([sys.executable, "-m", "tempo_pl", *fit],
            {"SLURM_JOB_ID": "4711", "SLURM_JOB_NAME": "tempo", "SLURM_NTASKS": "2", "SLURM_NNODES": "2",
             "SLURM_NTASKS_PER_NODE": "1", "SLURM_PROCID": str(node), "SLURM_NODEID": str(node),
             "SLURM_LOCALID": "0", "SLURM_NODELIST": "127.0.0.1", "MASTER_PORT": str(port)})


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> dict:
    (one,) = _run(tmp_path_factory.mktemp("one"), 1)
    return one


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["torchrun", "srun"])
@pytest.mark.parametrize("strategy", ["ddp", "fsdp2"])
def test_two_nodes_compute_what_one_process_computes(tmp_path: Path, one_process: dict, launcher: str,
                                                     strategy: str) -> None:
    out = tmp_path / "nodes"
    config = _config(out, 2, STRATEGIES[strategy], num_nodes=2)
    port = _free_port()
    nodes = []
    for node in range(2):
        command, extra = _node_command(launcher, node, port, config)
        err = open(out / f"node{node}.err", "w")
        nodes.append(subprocess.Popen(command, cwd=out, env={**_env(out), **extra}, stdout=subprocess.DEVNULL,
                                      stderr=err))
    try:
        codes = [p.wait(timeout=TIMEOUT_S) for p in nodes]
    finally:
        for p in nodes:
            if p.poll() is None:
                p.kill()
                p.wait()
    errors = "\n".join((out / f"node{n}.err").read_text()[-3000:] for n in range(2))
    assert codes == [0, 0], errors
    two = _results(out, 2)
    _assert_ranks_compute_one_process(one_process, two)
    # one run folder, written by global rank 0 only
    (run,) = (out / "runs" / "tiny").iterdir()
    assert (run / "checkpoints" / "last.ckpt").exists()

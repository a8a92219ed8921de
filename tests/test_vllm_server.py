"""VLLMServerEngine without vLLM: against fake servers (tests/_fake_vllm_server.py, processes of their own on
127.0.0.1) for the requests' shape, the balancing, the rollout, the weight stream, the version checks and the errors;
and ``tempo-pl serve``'s command line. The real vLLM server is tests/vllm_engine/test_vllm_server_engine.py's."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch
from _tiny_run import ROOT, subprocess_env

from tempo_pl.engines.server_http import ServerError, assign_questions, completion_body

FAKE_SERVER = Path(__file__).with_name("_fake_vllm_server.py")
PROMPTS = ["What is 12 + 30?", "Compute 7 * 6.", "If x = 3, what is 2x + 1?", "Name a prime.", "2 + 2?"]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class FakeServer:
    def __init__(self, workers: int = 1, setup: str = "ok") -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen([sys.executable, str(FAKE_SERVER), str(self.port), str(workers), setup],
                                        stdout=subprocess.PIPE, env=subprocess_env(), cwd=ROOT)
        assert self.process.stdout.readline().strip() == b"ready"

    def log(self) -> dict:
        with urllib.request.urlopen(self.url + "/fake/log", timeout=30) as response:
            return json.loads(response.read())

    def set_version(self, worker: int, version) -> None:
        request = urllib.request.Request(self.url + "/fake/set_version", method="POST",
                                         data=json.dumps({"worker": worker, "version": version}).encode())
        urllib.request.urlopen(request, timeout=30).read()

    def stop(self) -> None:
        self.process.kill()
        self.process.wait(timeout=30)


@pytest.fixture
def servers():
    started = [FakeServer(), FakeServer(workers=2)]
    yield started
    for server in started:
        server.stop()


def _batch(prompts):
    from tempo_pl.types import PromptBatch

    return PromptBatch(ids=[f"p{i}" for i in range(len(prompts))], prompts=prompts, answers=[None] * len(prompts),
                       is_labeled=[False] * len(prompts))


def _engine(tokenizer, urls, **options):
    from tempo_pl.config import SamplingConfig
    from tempo_pl.engines.vllm_server import VLLMServerEngine

    sampling = SamplingConfig(n=3, temperature=0.9, top_p=0.95, top_k=5, max_new_tokens=7, max_prompt_length=64)
    return VLLMServerEngine(tokenizer, sampling, urls=urls, **{"connect_timeout_s": 5, "sync_timeout_s": 60,
                                                                "request_timeout_s": 60, **options})


def test_questions_are_balanced_by_load_largest_first() -> None:
    # loads 9, 7, 6, 5, 4 over 2 servers: 9 -> s0; 7 -> s1; 6 -> s1 (7 < 9); 5 -> s0 (9 < 13); 4 -> s1 (13 < 14)
    assert assign_questions([5, 9, 4, 7, 6], 2) == [0, 0, 1, 1, 1]
    assert assign_questions([3, 3, 3], 3) == [0, 1, 2]
    assert assign_questions([1, 1], 1) == [0, 0]


def test_a_greedy_request_asks_for_one_completion_with_every_sampling_field_set() -> None:
    body = completion_body("m", [1, 2], n=4, seed=11, temperature=0.0, top_p=0.9, top_k=3, max_new_tokens=5,
                           stop_ids=[3])
    assert (body["n"], body["top_p"], body["top_k"], body["seed"], body["prompt"]) == (1, 1.0, 0, 11, [1, 2])
    assert body["logprobs"] == 0 and body["return_token_ids"] and body["stop_token_ids"] == [3]
    assert body["repetition_penalty"] == 1.0 and body["min_p"] == 0.0


@pytest.mark.slow
def test_rollouts_requests_weights_and_versions_against_two_fake_servers(servers, tiny_tokenizer,
                                                                         tiny_policy_spec) -> None:
    from tempo_pl.models.builders import build_policy
    from tempo_pl.engines.prompts import encode_prompts
    from tempo_pl.engines.served_weights import served_weights

    policy = build_policy(tiny_policy_spec)
    engine = _engine(tiny_tokenizer, [s.url for s in servers])
    assert engine.workers == {servers[0].url: 1, servers[1].url: 2}
    torch.manual_seed(3)
    rollout = engine.generate(policy, _batch(PROMPTS))
    torch.manual_seed(3)
    seed = int(torch.randint(0, 2**31 - 1, ()).item())

    # the first call pushed the policy's weights to both servers (version 0) before sampling
    expected = {name: [list(t.shape), float(t.double().sum())] for name, t in served_weights(policy)}
    logs = [s.log() for s in servers]
    for log in logs:
        assert log["versions"] and set(log["versions"]) == {0} and log["resets"] == 1
        assert log["weights"].keys() == expected.keys()
        for name, (shape, total) in expected.items():
            assert log["weights"][name][0] == shape and log["weights"][name][1] == pytest.approx(total, rel=1e-12)

    # one request per question, its n samples together, seed + g * n, the prompt as token ids; each question on
    # the server assign_questions gives it (by prompt + response budget)
    ids = encode_prompts(tiny_tokenizer, PROMPTS, engine.sampling.prompt_format)
    requests = sorted((r for log in logs for r in log["completions"]), key=lambda r: r["seed"])
    assigned = assign_questions([3 * (len(q) + 7) for q in ids], 2)
    assert sorted(assigned) == [0, 0, 1, 1, 1]  # the longest prompt alone weighs about two short ones
    for server, log in enumerate(logs):
        mine = sorted(q for q, s in zip(ids, assigned) if s == server)
        assert sorted(r["prompt"] for r in log["completions"]) == mine
    assert [r["seed"] for r in requests] == [seed + 3 * g for g in range(5)]
    assert [r["prompt"] for r in requests] == ids
    assert {(r["n"], r["temperature"], r["top_p"], r["top_k"], r["max_tokens"], r["model"]) for r in requests} == {
        (3, 0.9, 0.95, 5, 7, "fake-policy")}
    assert all(r["stop_token_ids"][0] == tiny_tokenizer.eos_token_id for r in requests)

    # the rollout: sample k of question g is the fake server's sample for seed + 3 g + k
    assert rollout.num_rows == 15 and rollout.group_ids.tolist() == [g for g in range(5) for _ in range(3)]
    for row in range(15):
        s = seed + row  # = seed + 3 g + k
        stops = s % 3 == 0
        length = 1 + s % 7 if stops else 7
        tokens = [10 + (s + i) % 50 for i in range(length)]
        if stops:
            tokens[-1] = tiny_tokenizer.eos_token_id
        assert int(rollout.response_mask[row].sum()) == length
        assert rollout.response_ids[row, :length].tolist() == tokens
        assert bool(rollout.truncated[row]) == (not stops)
        expected_lp = torch.tensor([-0.1 * (i + 1) for i in range(length)])
        assert torch.allclose(rollout.sampling_logprobs[row, :length], expected_lp)
        assert (rollout.sampling_logprobs[row, length:] == 0).all()
        assert rollout.texts[row] == tiny_tokenizer.decode(tokens[:length], skip_special_tokens=True)
    assert rollout.extra["policy_version"].tolist() == [0] * 15

    # a policy update: pushed as version 1, and the servers hold the new weights
    with torch.no_grad():
        next(policy.parameters()).add_(1.0)
    engine.sync_weights(policy)
    assert engine.policy_version == 1 and engine.weight_syncs == 2 and engine.last_sync_bytes > 0
    updated = {name: float(t.double().sum()) for name, t in served_weights(policy)}
    for server in servers:
        log = server.log()
        assert set(log["versions"]) == {1} and log["resets"] == 2
        assert {k: v[1] for k, v in log["weights"].items()} == pytest.approx(updated, rel=1e-12)
    assert engine.generate(policy, _batch(PROMPTS[:1])).extra["policy_version"].tolist() == [1] * 3
    assert engine.state_dict() == {"policy_version": 1}

    # a worker that did not take the update is named, and nothing is sampled from it
    servers[1].set_version(1, 0)
    before = len(servers[1].log()["completions"])
    with pytest.raises(ServerError, match=rf"{servers[1].url} \(worker rank 1\) serves policy version 0, the "
                                          r"trainer's is 1: it did not apply the last weight update"):
        engine.generate(policy, _batch(PROMPTS))
    assert len(servers[1].log()["completions"]) == before

    # a server that dies mid-run stops the step with its URL and the way to resume
    servers[1].set_version(1, 1)
    servers[0].stop()
    with pytest.raises(ServerError, match=rf"vLLM server {servers[0].url}: .* failed .*resume the run from its "
                                          "last checkpoint"):
        engine.generate(policy, _batch(PROMPTS))


@pytest.mark.slow
def test_a_resumed_engine_pushes_its_checkpointed_version_first(servers, tiny_tokenizer, tiny_policy_spec) -> None:
    from tempo_pl.models.builders import build_policy

    policy = build_policy(tiny_policy_spec)
    engine = _engine(tiny_tokenizer, [servers[0].url])
    engine.load_state_dict({"policy_version": 4})
    engine.sync_weights(policy)  # before the first generate: nothing to update yet
    assert servers[0].log()["versions"] == [None]
    rollout = engine.generate(policy, _batch(PROMPTS[:2]))
    assert servers[0].log()["versions"] == [4] and rollout.extra["policy_version"].tolist() == [4] * 6


def test_an_unreachable_server_is_named_at_start(tiny_tokenizer) -> None:
    url = f"http://127.0.0.1:{_free_port()}"
    start = time.monotonic()
    with pytest.raises(ServerError, match=rf"vLLM server {url} is unreachable \(waited 1 s, "
                                          r"VLLMServerEngine.connect_timeout_s\)"):
        _engine(tiny_tokenizer, [url], connect_timeout_s=1)
    assert time.monotonic() - start < 15


@pytest.mark.slow
@pytest.mark.parametrize("setup, message", [
    ("no_dev_mode", "has no /collective_rpc endpoint: start it with VLLM_SERVER_DEV_MODE=1"),
    ("raw_logprobs", r"returns \{'raw_logprobs'\} log-probs: start it with --logprobs-mode processed_logprobs"),
])
def test_a_server_started_without_the_engines_flags_is_named_with_the_flag(tiny_tokenizer, setup, message) -> None:
    server = FakeServer(setup=setup)
    try:
        with pytest.raises(ServerError, match=f"vLLM server {server.url} {message}"):
            _engine(tiny_tokenizer, [server.url])
    finally:
        server.stop()


@pytest.mark.parametrize("options, message", [
    ({"urls": []}, "urls must name at least one server"),
    ({"urls": ["127.0.0.1:8000"]}, "is not http://host:port"),
    ({"urls": ["http://a:1", "http://a:1"]}, "names a server twice"),
    ({"urls": ["http://a:1"], "request_timeout_s": 0}, "request_timeout_s must be positive"),
    ({"urls": ["http://a:1"], "max_concurrent_requests": 0}, "max_concurrent_requests must be positive"),
])
def test_options_are_checked_with_the_key_named(tiny_tokenizer, options, message) -> None:
    from tempo_pl.config import SamplingConfig
    from tempo_pl.engines.vllm_server import VLLMServerEngine

    with pytest.raises(ValueError, match=message):
        VLLMServerEngine(tiny_tokenizer, SamplingConfig(), **options)


def test_tempo_pl_serve_prints_the_server_command_with_the_engines_flags(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "tempo_pl", "serve", "--config", str(ROOT / "configs" / "tiny.yaml"),
                          "--port", "8123", "--model-dir", str(tmp_path / "model"), "--print-command", "--",
                          "--max-model-len", "512"], capture_output=True, text=True, timeout=120, cwd=ROOT,
                         env=subprocess_env())
    assert out.returncode == 0, out.stderr[-3000:]
    command = out.stdout.strip()
    assert command.startswith("VLLM_SERVER_DEV_MODE=1 ")
    for flags in ("-m vllm.entrypoints.openai.api_server", f"--model {tmp_path / 'model'}", "--port 8123",
                  "--load-format dummy", "--dtype float32", "--logprobs-mode processed_logprobs",
                  "--generation-config vllm",
                  "--worker-extension-cls tempo_pl.engines.vllm_server_worker.TempoWeightReceiver", "--max-model-len 512"):
        assert flags in command, flags
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    assert config["architectures"] == ["Qwen3ForCausalLM"] and "quantization_config" not in config
    assert (tmp_path / "model" / "tokenizer.json").exists()


def test_the_module_checkpoints_a_served_engines_policy_version(tmp_path: Path) -> None:
    from _tiny_run import build, tiny_config

    class VersionedEngine:
        def __init__(self, version: int) -> None:
            self.policy_version = version

        def state_dict(self) -> dict:
            return {"policy_version": self.policy_version}

        def load_state_dict(self, state: dict) -> None:
            self.policy_version = state["policy_version"]

    saving, loading = (build(tiny_config(tmp_path), tmp_path, name=f"{name}.yaml").model for name in ("a", "b"))
    saving.engine, loading.engine = VersionedEngine(5), VersionedEngine(0)
    checkpoint: dict = {}
    saving.on_save_checkpoint(checkpoint)
    loading.on_load_checkpoint(checkpoint)
    assert checkpoint["tempo"]["engine"] == {"policy_version": 5} and loading.engine.policy_version == 5

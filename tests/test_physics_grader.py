"""The physics grader: several boxed answers with points, units, tolerance, MC/TF, the tiers that decide each part,
HiPhO rows, and the judge fallback against a small OpenAI-compatible HTTP server on 127.0.0.1."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tempo_pl.data.eval_set_rows import hipho_row
from tempo_pl.rewards.graders import build_grader, counter_metrics
from tempo_pl.rewards.judge import Judge, JudgeConfig
from tempo_pl.rewards.physics import PhysicsGrader, parse_gold, without_unit

HIPHO_SOURCE = {"index": "0", "id": "APhO_2025_1_A_1", "context": "[Precession] The Earth's axis precesses.",
                "question": "Find (1) beta, (2) gamma and (3) delta.", "marking": "[]",
                "answer": json.dumps(["\\boxed{$\\beta = 2$}", "\\boxed{$\\gamma = -1$}", "\\boxed{$\\delta = 4$}"]),
                "answer_type": json.dumps(["Numerical Value"] * 3), "unit": json.dumps([None, None, None]),
                "points": json.dumps([0.3, 0.3, 0.2]), "modality": "text", "field": "Mechanics",
                "source": "APhO_2025"}


@pytest.fixture(scope="module")
def grader():
    return PhysicsGrader(math_verify=False)


def test_hipho_row_and_points(grader):
    row = hipho_row(HIPHO_SOURCE, 0)
    assert row["id"] == "APhO_2025_1_A_1" and row["problem"].startswith("[Precession]")
    gold = parse_gold(row["answer"])
    assert gold.points == (0.3, 0.3, 0.2) and gold.units == (None, None, None)
    responses = ["so \\boxed{\\beta = 2}, \\boxed{\\gamma=-1} and \\boxed{\\delta = 4}",
                 "\\boxed{2} \\boxed{-1} \\boxed{5}",
                 "\\boxed{7} \\boxed{2} \\boxed{-1} \\boxed{4}",   # the last three boxes count
                 "\\boxed{-1} \\boxed{4}",                 # two boxes: the last two parts, the first one missing
                 "no boxes at all"]
    verdicts = grader.grade(responses, [row["answer"]] * len(responses))
    assert [v.score for v in verdicts] == pytest.approx([1.0, 2 / 3, 1.0, 2 / 3, 0.0])
    assert [v.points for v in verdicts] == pytest.approx([0.8, 0.6, 0.8, 0.5, 0.0])
    assert verdicts[1].scored_by == ("rule", "rule", "none")
    assert verdicts[3].scored_by == ("none", "rule", "rule")


def test_units_tolerance_notation_choices(grader):
    gold = json.dumps({"answers": ["21.9", "\\boxed{3.0\\times10^{8}}", "B", "True", "2\\pi"],
                       "points": [1, 1, 1, 1, 1], "units": ["km", "m/s", None, None, None]})
    right = "\\boxed{21.9\\,\\text{km}} \\boxed{2.998e8} \\boxed{B} \\boxed{T} \\boxed{6.283}"
    wrong = "\\boxed{22.1 km} \\boxed{4.0\\times10^{8}} \\boxed{C} \\boxed{no} \\boxed{6.4}"
    close = "\\boxed{21.92} \\boxed{3.004 \\times 10^{8}} \\boxed{B} \\boxed{yes} \\boxed{6.28}"
    scores = [v.score for v in grader.grade([right, wrong, close], [gold] * 3)]
    assert scores == pytest.approx([1.0, 0.0, 1.0])
    assert without_unit("21.9\\,\\text{km}", "km") == "21.9" and without_unit("km", "km") == "km"
    # numbers compare at the precision the gold states: 3.1e8 rounds to the gold 3.0e8 (0 decimals), as the reference
    assert grader.grade(["\\boxed{3.1\\times10^{8}}"], ["3.0\\times10^{8}"])[0].score == 1.0


def test_math_verify_tier_and_never_raises():
    with_mv, rules_only = PhysicsGrader(math_verify=True), PhysicsGrader(math_verify=False)
    gold = json.dumps({"answers": ["\\{1,2\\}"]})
    assert with_mv.grade(["\\boxed{\\{2,1\\}}"], [gold])[0].scored_by == ("math-verify",)
    assert rules_only.grade(["\\boxed{\\{2,1\\}}"], [gold])[0].score == 0.0
    odd = ["\\boxed{" * 50, "\\boxed{}}}}", None, "\\boxed{9^{9^{9^{9}}}}", "\\boxed{\\frac}"]
    assert [v.score for v in with_mv.grade(odd, ["3"] * len(odd))] == [0.0] * len(odd)
    assert with_mv.gold_problem('{"answers": ["1"], "points": [1, 2]}') is not None


def test_votes_cluster_parts(grader):
    answers = [grader.extract(r) for r in ["\\boxed{2} \\boxed{3.0}", "\\boxed{2.0} \\boxed{3}", "\\boxed{2}", "x"]]
    assert answers[3] is None
    assert grader.cluster(answers) == [0, 0, 1, 2]


# ------------------------------------------------------------------------------------------------ judge
class _JudgeServer:
    """An OpenAI-compatible endpoint: /v1/models, and /v1/chat/completions answering [Correct] when the prompt's
    output sentence contains 'forty-two', sleeping when it contains 'slow'."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _reply(self, payload: dict) -> None:
                body = json.dumps(payload).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                self._reply({"data": [{"id": "judge-model"}]})

            def do_POST(self):
                request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                owner.requests.append({"path": self.path, **request})
                prompt = request["messages"][0]["content"]
                answer = prompt.split('Output sentence: """')[1].split('"""')[0]
                if "slow" in answer:
                    time.sleep(2.0)
                verdict = "[Correct]" if "forty-two" in answer else "[Incorrect]"
                self._reply({"choices": [{"message": {"role": "assistant", "content": verdict}}]})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def judge_server():
    server = _JudgeServer()
    yield server
    server.close()


def test_judge_request_verdicts_cache_and_counters(judge_server):
    grader = build_grader({"name": "physics", "math_verify": False,
                           "judge": {"base_url": judge_server.url, "model": "judge-model", "max_tokens": 64,
                                     "timeout_s": 0.5, "max_concurrency": 2}})
    grader.setup()
    gold = json.dumps({"answers": ["42", "7"]})
    responses = ["\\boxed{forty-two} \\boxed{7}", "\\boxed{forty-two} \\boxed{seven}", "\\boxed{41} \\boxed{7}"]
    verdicts = grader.grade(responses, [gold] * 3, questions=["What is 6*7? And 3+4?"] * 3)
    assert [v.scored_by for v in verdicts] == [("judge", "rule"), ("judge", "none"), ("none", "rule")]
    assert [v.score for v in verdicts] == [1.0, 0.5, 0.5]
    # the rules decided "7"; "forty-two" asked once (cached), "seven" and "41" once each
    assert len(judge_server.requests) == 3
    # the requests run concurrently (max_concurrency 2): pick the one about "forty-two", whatever its place
    first = next(r for r in judge_server.requests if "forty-two" in r["messages"][0]["content"])
    assert first["path"] == "/v1/chat/completions" and first["model"] == "judge-model"
    assert first["max_tokens"] == 64 and first["temperature"] == 0.1
    assert "What is 6*7? And 3+4?" in first["messages"][0]["content"]
    assert "Correct answer: 42" in first["messages"][0]["content"]  # the judge is asked about the undecided part
    grader.grade(responses[:1], [gold], questions=["What is 6*7? And 3+4?"])
    assert len(judge_server.requests) == 3  # cached per (question, answer, gold)
    counters = counter_metrics(grader.take_counters())
    # hits: the second "forty-two" of the first call and the one of the second call
    assert counters["judge_calls"] == 3 and counters["judge_cache_hits"] == 2 and counters["judge_timeouts"] == 0
    assert counters["scored_by_judge"] == pytest.approx(3 / 8) and counters["scored_by_rule"] == pytest.approx(3 / 8)


def test_judge_timeout_is_wrong_and_counted(judge_server):
    judge = Judge(JudgeConfig(base_url=judge_server.url, model="judge-model", timeout_s=0.3))
    start = time.monotonic()
    assert judge.ask_many([("q", "slow forty-two", "42"), ("q", "forty-two", "42")]) == [False, True]
    assert time.monotonic() - start < 1.9
    assert judge.take_counters()["judge_timeouts"] == 1


def test_unreachable_judge_is_an_error_at_setup():
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    grader = PhysicsGrader(judge={"base_url": f"http://127.0.0.1:{port}/v1", "model": "m", "timeout_s": 1.0})
    with pytest.raises(RuntimeError, match="does not answer"):
        grader.setup()
    with pytest.raises(ValueError, match="judge options"):
        PhysicsGrader(judge={"base_url": "http://x/v1", "model": "m", "colour": 1})
    with pytest.raises(ValueError, match="prompt must contain"):
        JudgeConfig(base_url="http://x/v1", model="m", prompt="no fields")

"""A stand-in for a vLLM server started by ``tempo-pl serve``, run as its own process: the endpoints
VLLMServerEngine uses, with the worker extension's methods answering through ``/collective_rpc``.

``python tests/_fake_vllm_server.py PORT [WORKERS [SETUP]]``; SETUP ``no_dev_mode`` answers 404 on
``/collective_rpc`` (a server started without ``VLLM_SERVER_DEV_MODE=1``), ``raw_logprobs`` reports that log-probs
mode (a server started without ``--logprobs-mode processed_logprobs``).

Completions are made up from the request's seed (sample k of a request with seed s: tokens
``10 + (s + k + i) % 50``, ``1 + (s + k) % max_tokens`` of them ending with the first stop id when
``(s + k) % 3 == 0``, else ``max_tokens`` of them; log-prob ``-0.1 (i + 1)`` at position i); weight updates really
go over the gloo group (each worker's member of it is a thread here). ``GET /fake/log`` returns the completion
requests, the received weights' sums and the prefix-cache resets; ``POST /fake/set_version`` makes a worker report
another version (a server that missed an update).
"""

from __future__ import annotations

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tempo_pl.engines.weight_stream import open_group, receive_weights

LOCK = threading.Lock()
STATE = {"completions": [], "weights": {}, "versions": [], "resets": 0, "groups": [], "setup": "ok"}


def completion(body: dict) -> dict:
    choices = []
    for k in range(body["n"]):
        s = body["seed"] + k
        stops = s % 3 == 0  # else it runs to max_tokens, as vLLM's samples without a stop token do
        length = 1 + s % body["max_tokens"] if stops else body["max_tokens"]
        ids = [10 + (s + i) % 50 for i in range(length)]
        if stops:
            ids[-1] = body["stop_token_ids"][0]
        choices.append({"index": k, "text": "", "token_ids": ids, "finish_reason": "stop",
                        "logprobs": {"token_logprobs": [-0.1 * (i + 1) for i in range(length)]}})
    return {"id": "cmpl-fake", "choices": choices[::-1]}  # out of order: the engine sorts by index


def in_threads(work) -> list:
    """``work(rank)`` for every worker at once, as the server's workers would run it."""
    results = [None] * len(STATE["versions"])

    def run(rank: int) -> None:
        results[rank] = work(rank)

    threads = [threading.Thread(target=run, args=(rank,)) for rank in range(len(results))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def rpc(method: str, payload: dict) -> list[dict]:
    def states() -> list[dict]:
        mode = "raw_logprobs" if STATE["setup"] == "raw_logprobs" else "processed_logprobs"
        return [{"rank": r, "policy_version": v, "logprobs_mode": mode, "dtype": "float32",
                 "max_model_len": 512, "joined": bool(STATE["groups"])} for r, v in enumerate(STATE["versions"])]

    if method == "tempo_join":
        STATE["groups"] = in_threads(lambda rank: open_group(payload["host"], payload["port"], 1 + rank,
                                                             payload["world_size"], payload["timeout_s"],
                                                             prefix=payload["prefix"]))
    elif method == "tempo_receive":
        received = in_threads(lambda rank: {name: [list(t.shape), float(t.double().sum())]
                                            for name, t in receive_weights(STATE["groups"][rank])})
        assert all(r == received[0] for r in received)
        with LOCK:
            STATE["weights"] = received[0]
            STATE["versions"] = [payload["version"]] * len(STATE["versions"])
    elif method != "tempo_state":
        raise KeyError(method)
    return states()


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass

    def answer(self, status: int, content) -> None:
        data = json.dumps(content).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path == "/health":
            self.answer(200, {})
        elif self.path == "/v1/models":
            self.answer(200, {"data": [{"id": "fake-policy"}]})
        elif self.path == "/fake/log":
            with LOCK:
                self.answer(200, {k: v for k, v in STATE.items() if k != "groups"})
        else:
            self.answer(404, {"detail": "Not Found"})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])) or b"{}")
        if self.path == "/v1/completions":
            with LOCK:
                STATE["completions"].append(body)
            self.answer(200, completion(body))
        elif self.path == "/collective_rpc" and STATE["setup"] != "no_dev_mode":
            try:
                self.answer(200, {"results": rpc(body["method"], json.loads(body["args"][0]))})
            except KeyError as err:
                self.answer(500, {"error": f"'Worker' object has no attribute {err}"})
        elif self.path == "/reset_prefix_cache":
            with LOCK:
                STATE["resets"] += 1
            self.answer(200, {})
        elif self.path == "/fake/set_version":
            with LOCK:
                STATE["versions"][body["worker"]] = body["version"]
            self.answer(200, {})
        else:
            self.answer(404, {"detail": "Not Found"})


if __name__ == "__main__":
    port, workers = int(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 1
    STATE["versions"] = [None] * workers
    STATE["setup"] = sys.argv[3] if len(sys.argv) > 3 else "ok"
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    print("ready", flush=True)
    server.serve_forever()

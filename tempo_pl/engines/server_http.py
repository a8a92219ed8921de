"""What :class:`~tempo_pl.engines.vllm_server.VLLMServerEngine` says to vLLM's OpenAI-compatible servers over HTTP.

JSON requests with timeouts whose errors name the server (:class:`ServerError`), the completion request of one
question (its n samples, one seed) and the reading of its answer, and the assignment of questions to servers.
Standard library only, so the main test suite checks all of it against a fake server on 127.0.0.1.
"""

from __future__ import annotations

import http.client
import json
import time
import urllib.error
import urllib.request
from typing import Any, Optional

RESTART_HINT = ("once the server is back, resume the run from its last checkpoint (tempo-pl fit --config ... "
                "--ckpt_path last): the steps after that checkpoint are run again, none is logged twice")


class ServerError(RuntimeError):
    """A vLLM server that cannot be reached, failed a request, or serves other weights than the trainer's."""


def request_json(url: str, path: str, body: Optional[dict] = None, timeout_s: float = 60.0) -> Any:
    """``GET url+path`` (``body`` None) or ``POST`` the JSON ``body``; the decoded JSON answer (None when empty)."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url.rstrip("/") + path, data=data, method="GET" if body is None else "POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            raw = response.read()
    except urllib.error.HTTPError as err:
        detail = err.read().decode(errors="replace")[:2000]
        raise ServerError(f"vLLM server {url}: {path} answered HTTP {err.code}: {detail}") from err
    except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError) as err:
        reason = getattr(err, "reason", err)
        raise ServerError(f"vLLM server {url}: {path} failed ({type(reason).__name__}: {reason})") from err
    return json.loads(raw) if raw else None


def wait_until_up(url: str, timeout_s: float) -> None:
    """Polls ``/health`` until the server answers, for at most ``timeout_s`` seconds; the error names the URL."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            request_json(url, "/health", timeout_s=max(1.0, min(10.0, timeout_s)))
            return
        except ServerError as err:
            if time.monotonic() >= deadline:
                raise ServerError(f"vLLM server {url} is unreachable (waited {timeout_s:g} s, "
                                  f"VLLMServerEngine.connect_timeout_s): start it (tempo-pl serve --help) or fix "
                                  f"the URL in VLLMServerEngine.urls; last error: {err}") from err
            time.sleep(0.5)


def collective_rpc(url: str, method: str, payload: dict, timeout_s: float) -> list[dict]:
    """Calls ``method`` of :class:`~tempo_pl.engines.vllm_server_worker.TempoWeightReceiver` on every worker of the server;
    one answer per worker."""
    try:
        answer = request_json(url, "/collective_rpc", {"method": method, "args": [json.dumps(payload)]},
                              timeout_s=timeout_s)
    except ServerError as err:
        if "HTTP 404" in str(err):
            raise ServerError(f"vLLM server {url} has no /collective_rpc endpoint: start it with "
                              "VLLM_SERVER_DEV_MODE=1 (tempo-pl serve does)") from err
        if method in str(err) and ("has no attribute" in str(err) or "not found" in str(err).lower()):
            raise ServerError(f"vLLM server {url} has no {method}: start it with --worker-extension-cls "
                              "tempo_pl.engines.vllm_server_worker.TempoWeightReceiver (tempo-pl serve does)") from err
        raise
    results = (answer or {}).get("results")
    if not isinstance(results, list) or not all(isinstance(r, dict) for r in results):
        raise ServerError(f"vLLM server {url}: {method} answered {str(answer)[:300]!r}, not one dict per worker")
    return results


def completion_body(model: str, prompt_ids: list[int], n: int, seed: int, temperature: float, top_p: float,
                    top_k: int, max_new_tokens: int, stop_ids: list[int]) -> dict:
    """The ``/v1/completions`` request of one question: its n samples with one seed (vLLM gives each sample its
    own stream from it), every sampling field explicit so that no server-side default applies, token ids and the
    sampled tokens' log-probs returned. Greedy decoding asks for one completion (vLLM refuses n > 1 without
    sampling; the n rows are copies of it)."""
    greedy = temperature == 0
    return {
        "model": model, "prompt": prompt_ids, "n": 1 if greedy else n, "seed": seed,
        "temperature": temperature, "top_p": 1.0 if greedy else top_p, "top_k": 0 if greedy else max(top_k, 0),
        "min_p": 0.0, "repetition_penalty": 1.0, "presence_penalty": 0.0, "frequency_penalty": 0.0,
        "max_tokens": max_new_tokens, "stop_token_ids": stop_ids, "ignore_eos": False,
        "logprobs": 0, "return_token_ids": True, "skip_special_tokens": False,
    }


def read_completion(url: str, answer: dict, n: int) -> list[tuple[list[int], list[float]]]:
    """``(token ids, sampled-token log-probs)`` of each of the n samples of one question's answer, in order."""
    try:
        choices = sorted(answer["choices"], key=lambda choice: choice["index"])
        samples = [(list(c["token_ids"]), [float(x) for x in c["logprobs"]["token_logprobs"]]) for c in choices]
    except (KeyError, TypeError) as err:
        raise ServerError(f"vLLM server {url}: a completion without token_ids or logprobs ({err!r}): a vLLM "
                          "release too old for return_token_ids?") from err
    if len(samples) == 1 and n > 1:  # greedy: one completion stands for all n
        samples = samples * n
    if len(samples) != n or any(len(ids) != len(lps) for ids, lps in samples):
        raise ServerError(f"vLLM server {url}: {len(samples)} completions for n={n}, or token ids and log-probs of "
                          "different lengths")
    return samples


def assign_questions(loads: list[int], servers: int) -> list[int]:
    """The server of each question: the largest loads first, each to the server with the least load so far (ties
    to the lowest index). Deterministic, so a run's requests go where they went the last time."""
    totals = [0] * servers
    assigned = [0] * len(loads)
    for question in sorted(range(len(loads)), key=lambda q: (-loads[q], q)):
        server = min(range(servers), key=lambda s: (totals[s], s))
        assigned[question] = server
        totals[server] += loads[question]
    return assigned

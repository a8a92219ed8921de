"""A judge model behind an OpenAI-compatible endpoint, asked whether an answer matches the gold where rules say no.

Off unless configured (``grader: {name: physics, judge: {base_url: ..., model: ...}}``). The prompt and the verdict
rule are the reference's by default (xVerify's prompt; a reply containing ``Correct``, case-sensitive, so
``[Incorrect]`` is not), both overridable. Verdicts are cached per (question, answer, gold); every request is bounded
by ``timeout_s`` and at most ``max_concurrency`` run at once; a timeout or an error is "not correct" and counted
(``judge_calls``, ``judge_timeouts``, ``judge_errors``). :meth:`Judge.check` (called at setup) raises when the
endpoint does not answer, so an unreachable judge is an error before training, not a silent 0.

Example::

    judge = Judge(JudgeConfig(base_url="http://127.0.0.1:8000/v1", model="xVerify-8B-SFT"))
    judge.check()
    judge.ask_many([("What is 2+2?", "four", "4")])  # [True]
"""

from __future__ import annotations

import concurrent.futures
import json
import socket
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Optional

DEFAULT_PROMPT = '''
You are a diligent and precise assistant tasked with evaluating the correctness of responses. You will
receive a question, an output sentence, and the correct answer. Your task is to determine if the output
sentence accurately answers the question based on the provided correct answer. Respond with either
[Correct] or [Incorrect].
-
Special considerations:
1. **Multiple Answers**: If the output contains multiple answers, evaluate whether later answers
modify or correct earlier ones. In such cases, compare the final answer with the correct answer. If the
final answer is unclear or incorrect, respond with [Incorrect].
2. **Mathematical Problems**: If the formats differ but the answers are mathematically equivalent such as 256/55=4.65,
respond with [Correct].
3. **Phycis Problems**: If the values match such as 3=3 \\, \\text{{GHz}} return [Correct].
4. **Explicit Options**: If the question provides explicit candidate answers, the output will be
considered correct if it clearly indicates the correct option's code or the correct option's content.
5. **No Explicit Options**: If the question does not provide explicit options, the output must align
with the correct answer in content and meaning to be considered [Correct].
-
Question: """{question}"""
Output sentence: """{answer}"""
Correct answer: {gold}
Judgement:
'''
"""The reference's xVerify prompt (its typo kept: the judge models were tuned on it); ``{question}``, ``{answer}``
and ``{gold}`` are filled in with ``str.format``."""


@dataclass
class JudgeConfig:
    """Where the judge is and how it is asked.

    Args:
        base_url: the endpoint's ``/v1`` URL, e.g. ``http://127.0.0.1:8000/v1``.
        model: the served model name.
        max_tokens: the reply's token budget (the reference's 4096).
        timeout_s: seconds one request may take; a slower one is "not correct" and counted in ``judge_timeouts``.
        max_concurrency: requests in flight at once.
        temperature: sampling temperature (the reference's 0.1).
        api_key: sent as a bearer token when set.
        prompt: the user message, with ``{question}``, ``{answer}`` and ``{gold}``.
        correct_marker: a reply containing this string (case-sensitive) is a "correct" verdict.
    """

    base_url: str
    model: str
    max_tokens: int = 4096
    timeout_s: float = 30.0
    max_concurrency: int = 8
    temperature: float = 0.1
    api_key: Optional[str] = None
    prompt: str = DEFAULT_PROMPT
    correct_marker: str = "Correct"

    def __post_init__(self) -> None:
        if not isinstance(self.base_url, str) or not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"judge.base_url must be an http(s) URL, got {self.base_url!r}")
        if not isinstance(self.model, str) or not self.model:
            raise ValueError(f"judge.model must be a non-empty string, got {self.model!r}")
        for key in ("max_tokens", "max_concurrency"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"judge.{key} must be an integer >= 1, got {value!r}")
        if not self.timeout_s > 0:
            raise ValueError(f"judge.timeout_s must be > 0 seconds, got {self.timeout_s!r}")
        for field in ("question", "answer", "gold"):
            if "{" + field + "}" not in self.prompt:
                raise ValueError(f"judge.prompt must contain {{{field}}}")
        self.base_url = self.base_url.rstrip("/")


class Judge:
    """Asks the judge model, with a cache, a time bound per request and counters (see the module docstring)."""

    def __init__(self, config: JudgeConfig) -> None:
        self.config = config
        self.cache: dict[tuple[str, str, str], bool] = {}
        self.counters = {"judge_calls": 0, "judge_timeouts": 0, "judge_errors": 0, "judge_cache_hits": 0}
        self._lock = threading.Lock()

    def __getstate__(self) -> dict:
        return {"config": self.config, "cache": dict(self.cache), "counters": dict(self.counters)}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self.config.api_key:
            headers["Authorization"] = f"Bearer {self.config.api_key}"
        return headers

    def check(self) -> None:
        """Raise ``RuntimeError`` when the endpoint does not list models within ``timeout_s``."""
        url = f"{self.config.base_url}/models"
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=self._headers()),
                                        timeout=self.config.timeout_s) as reply:
                json.loads(reply.read().decode("utf-8"))
        except (urllib.error.URLError, OSError, ValueError) as error:
            raise RuntimeError(
                f"the judge at {self.config.base_url} (model {self.config.model!r}) does not answer GET {url}: "
                f"{error}. Start the server, fix grader.judge.base_url, or remove grader.judge to grade by rules "
                "only") from None

    def _request(self, question: str, answer: str, gold: str) -> bool:
        prompt = self.config.prompt.format(question=question, answer=answer, gold=gold)
        body = json.dumps({"model": self.config.model, "messages": [{"role": "user", "content": prompt}],
                           "max_tokens": self.config.max_tokens, "temperature": self.config.temperature})
        request = urllib.request.Request(f"{self.config.base_url}/chat/completions", data=body.encode("utf-8"),
                                         headers=self._headers(), method="POST")
        with urllib.request.urlopen(request, timeout=self.config.timeout_s) as reply:
            content = json.loads(reply.read().decode("utf-8"))["choices"][0]["message"]["content"] or ""
        return self.config.correct_marker in content.strip()

    def _ask(self, key: tuple[str, str, str]) -> bool:
        try:
            verdict = self._request(*key)
        except (socket.timeout, TimeoutError):
            self._count("judge_timeouts")
            return False
        except (urllib.error.URLError, OSError, ValueError, KeyError, IndexError, TypeError) as error:
            if isinstance(getattr(error, "reason", None), (socket.timeout, TimeoutError)):
                self._count("judge_timeouts")
            else:
                self._count("judge_errors")
            return False
        with self._lock:
            self.cache[key] = verdict
        return verdict

    def _count(self, key: str, amount: int = 1) -> None:
        with self._lock:
            self.counters[key] += amount

    def ask_many(self, items: list[tuple[str, str, str]]) -> list[bool]:
        """The verdict on each ``(question, answer, gold)``: cached ones at once, the others asked concurrently, all
        within about ``timeout_s`` per wave of ``max_concurrency`` requests."""
        keys = [(str(q), str(a), str(g)) for q, a, g in items]
        todo = [k for k in dict.fromkeys(keys) if k not in self.cache]
        self._count("judge_cache_hits", len(keys) - len(todo))
        self._count("judge_calls", len(todo))
        if todo:
            with concurrent.futures.ThreadPoolExecutor(max_workers=self.config.max_concurrency) as pool:
                asked = dict(zip(todo, pool.map(self._ask, todo)))
        else:
            asked = {}
        return [self.cache.get(k, asked.get(k, False)) for k in keys]

    def take_counters(self) -> dict[str, float]:
        with self._lock:
            counts, self.counters = self.counters, {k: 0 for k in self.counters}
        return {k: float(v) for k, v in counts.items()}

"""A rollout engine that a test can interrupt in the middle of an RL step: before each training rollout it appends
its process id to ``$TEMPO_TEST_STEP_LOG`` and sleeps ``$TEMPO_TEST_STEP_PAUSE`` seconds (evaluation is not paused)."""

from __future__ import annotations

import os
import time

from tempo_pl.engines.hf_generate import HFGenerateEngine


class PausingEngine(HFGenerateEngine):
    def generate(self, model, prompts, n=None, sampling=None):
        log = os.environ.get("TEMPO_TEST_STEP_LOG")
        if sampling is None and log:
            with open(log, "a") as f:
                f.write(f"{os.getpid()}\n")
            time.sleep(float(os.environ.get("TEMPO_TEST_STEP_PAUSE", "0")))
        return super().generate(model, prompts, n, sampling)

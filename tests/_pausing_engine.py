"""Places where a test can interrupt a run: a rollout engine that, before each training rollout, appends its process
id to ``$TEMPO_TEST_STEP_LOG`` and sleeps ``$TEMPO_TEST_STEP_PAUSE`` seconds (PausingEngine; PausingEvalEngine also
pauses evaluation batches), and a callback that pauses inside every checkpoint save (PauseInSave)."""

from __future__ import annotations

import os
import time

from lightning.pytorch import Callback

from tempo_pl.engines.hf_generate import HFGenerateEngine


class PausingEngine(HFGenerateEngine):
    def generate(self, model, prompts, n=None, sampling=None):
        log = os.environ.get("TEMPO_TEST_STEP_LOG")
        if sampling is None and log:
            with open(log, "a") as f:
                f.write(f"{os.getpid()}\n")
            time.sleep(float(os.environ.get("TEMPO_TEST_STEP_PAUSE", "0")))
        return super().generate(model, prompts, n, sampling)


def _note_and_pause(kind: str, log_var: str, pause_var: str) -> None:
    log = os.environ.get(log_var)
    if log:
        with open(log, "a") as f:
            f.write(f"{kind}:{os.getpid()}\n")
        time.sleep(float(os.environ.get(pause_var, "0")))


class PausingEvalEngine(PausingEngine):
    """Also pauses each evaluation batch: notes ``eval:<pid>`` in ``$TEMPO_TEST_EVAL_LOG``, sleeps ``$TEMPO_TEST_EVAL_PAUSE``."""

    def generate(self, model, prompts, n=None, sampling=None):
        if sampling is not None:
            _note_and_pause("eval", "TEMPO_TEST_EVAL_LOG", "TEMPO_TEST_EVAL_PAUSE")
        return super().generate(model, prompts, n, sampling)


class PauseInSave(Callback):
    """Pauses inside every checkpoint save (``on_save_checkpoint`` runs while the checkpoint is assembled): notes
    ``save:<pid>`` in ``$TEMPO_TEST_SAVE_LOG`` and sleeps ``$TEMPO_TEST_SAVE_PAUSE`` seconds."""

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        _note_and_pause("save", "TEMPO_TEST_SAVE_LOG", "TEMPO_TEST_SAVE_PAUSE")

"""Overlong prompts end to end: ``tempo-pl fit`` on configs/tiny.yaml with one overlong D_U question logs
``rollout/truncated_prompts`` (or ``rollout/dropped_overlong_prompts``) at the step that drew it, warns once, and the
rollout JSONL shows the cut prompt."""

from __future__ import annotations

import json

import pytest
from _tiny_run import rollout_records, run_cli, tiny_config

from tempo_pl.data.templates import BOXED_TEMPLATE, apply_template

LONG = "Start with 1. " + "Add 1. " * 300 + "What is the result?"  # 2114 characters = tokens of the char tokenizer


def overlong_config(tmp_path, mode: str) -> dict:
    unlabeled = tmp_path / "du.jsonl"
    rows = [{"id": "long", "problem": LONG}] + [{"id": f"u{i}", "problem": f"Start with {i}. Add 2."} for i in range(3)]
    unlabeled.write_text("".join(json.dumps(row) + "\n" for row in rows))

    def edit(cfg):
        cfg["data"]["init_args"]["unlabeled"] = {"path": str(unlabeled)}
        cfg["model"]["init_args"]["sampling"]["overlong_prompt"] = mode  # max_prompt_length: 256
        logger = next(cb for cb in cfg["trainer"]["callbacks"] if cb["class_path"].endswith("RolloutSampleLogger"))
        logger["init_args"].update(max_samples=16, max_chars=4000)  # every sample of the 4 x 4 rows

    return tiny_config(tmp_path, edit, steps=2)  # alternate 1/1: an E-step on D_L, then an M-step on all of D_U


def scalar(scalars, tag: str) -> list[tuple[int, float]]:
    return [(event.step, event.value) for event in scalars.Scalars(tag)]


@pytest.mark.slow
def test_a_truncated_prompt_is_counted_warned_and_logged(tmp_path):
    with pytest.warns(UserWarning, match=r"1 of 4 prompts are longer than sampling.max_prompt_length = 256 tokens "
                                         r"\(the longest: 2\d\d\d tokens\)") as caught:
        _, scalars = run_cli("fit", overlong_config(tmp_path, "truncate_left"), tmp_path)
    assert len([w for w in caught if "max_prompt_length" in str(w.message)]) == 1
    assert scalar(scalars, "train/rollout/truncated_prompts") == [(0, 0.0), (1, 1.0)]
    assert scalar(scalars, "train/rollout/dropped_overlong_prompts") == [(0, 0.0), (1, 0.0)]
    m_step = rollout_records(tmp_path / "rollouts")[1]
    long_samples = [s for s in m_step["samples"] if s["prompt_id"] == "du:long"]
    # what the policy read: the last 256 tokens, i.e. the last 243 characters of the templated question, then the
    # 13 tokens of the chat template's end
    user_message = apply_template(BOXED_TEMPLATE, LONG)
    assert len(long_samples) == 4
    assert long_samples[0]["prompt"] == user_message[-243:] + "<|im_end|>\n<|im_start|>assistant\n"
    short = next(s for s in m_step["samples"] if s["prompt_id"] == "du:u0")["prompt"]
    assert short == f"<|im_start|>user\n{apply_template(BOXED_TEMPLATE, 'Start with 0. Add 2.')}<|im_end|>\n" \
                    "<|im_start|>assistant\n"


@pytest.mark.slow
def test_drop_mode_counts_the_dropped_prompt(tmp_path):
    _, scalars = run_cli("fit", overlong_config(tmp_path, "drop"), tmp_path)
    # 3 of 4 groups kept: the M-step refills with a second D_U batch (all of D_U again), which drops it again
    assert scalar(scalars, "train/filter/generation_batches") == [(0, 1.0), (1, 2.0)]
    assert scalar(scalars, "train/rollout/dropped_overlong_prompts") == [(0, 0.0), (1, 2.0)]
    assert scalar(scalars, "train/rollout/truncated_prompts") == [(0, 0.0), (1, 0.0)]
    assert "du:long" not in rollout_records(tmp_path / "rollouts")[1]["prompt_ids"]

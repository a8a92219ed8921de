"""Prompt format (system prompt, chat-template variables, no chat template), the early error for a missing template,
SFT encoding exactly as the rollout does, the truncation warning, and what the rollout and eval JSONL record."""

from __future__ import annotations

import json
import warnings
from types import SimpleNamespace

import pytest
import torch

from tempo_pl.callbacks import RolloutSampleLogger
from tempo_pl.config import EvalConfig, SamplingConfig
from tempo_pl.engines.hf_generate import HFGenerateEngine
from tempo_pl.engines.prompts import PromptFormat, check_prompt_format, decode_prompts, encode_prompts, render_prompts
from tempo_pl.evaluation.evaluator import Evaluation
from tempo_pl.evaluation.records import write_question_jsonl
from tempo_pl.models.builders import build_policy
from tempo_pl.models.tiny import CHATML_TEMPLATE, build_char_tokenizer
from tempo_pl.sft import SFTModule, collate_sft
from tempo_pl.types import PromptBatch, StepPlan, StepRecord

THINKING_TEMPLATE = CHATML_TEMPLATE + (
    "{%- if add_generation_prompt and enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
)
"""ChatML with Qwen3's switch: ``enable_thinking=False`` pre-fills an empty think block."""


def batch(*texts: str) -> PromptBatch:
    return PromptBatch(ids=[f"p{i}" for i in range(len(texts))], prompts=list(texts), answers=[None] * len(texts),
                       is_labeled=[False] * len(texts))


@pytest.fixture
def policy(tiny_policy_spec):
    return build_policy(tiny_policy_spec)


# ---------------------------------------------------------------- the format


def test_system_prompt_and_chat_template_kwargs_are_rendered(tiny_tokenizer):
    assert render_prompts(tiny_tokenizer, ["1+1?"]) == ["<|im_start|>user\n1+1?<|im_end|>\n<|im_start|>assistant\n"]
    with_system = PromptFormat(system_prompt="Be brief.")
    assert render_prompts(tiny_tokenizer, ["1+1?"], with_system) == [
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n1+1?<|im_end|>\n<|im_start|>assistant\n"]
    qwen3 = build_char_tokenizer()
    qwen3.chat_template = THINKING_TEMPLATE
    thinking_off = PromptFormat(chat_template_kwargs={"enable_thinking": False})
    assert render_prompts(qwen3, ["Q"], thinking_off)[0].endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert render_prompts(qwen3, ["Q"])[0].endswith("<|im_start|>assistant\n")
    ids = encode_prompts(qwen3, ["Q"], thinking_off)[0]
    assert qwen3.decode(ids) == render_prompts(qwen3, ["Q"], thinking_off)[0]


def test_without_the_chat_template_the_prompt_is_the_plain_text(tiny_tokenizer):
    plain = PromptFormat(use_chat_template=False)
    assert render_prompts(tiny_tokenizer, ["Question: 2+2=", "x"], plain) == ["Question: 2+2=", "x"]
    assert encode_prompts(tiny_tokenizer, ["2+2="], plain) == [tiny_tokenizer("2+2=").input_ids]


@pytest.mark.parametrize("kwargs, message", [
    ({"use_chat_template": False, "system_prompt": "Be brief."}, "system_prompt need the chat template"),
    ({"use_chat_template": False, "chat_template_kwargs": {"enable_thinking": False}},
     "chat_template_kwargs need the chat template"),
    ({"chat_template_kwargs": {"add_generation_prompt": False}}, r"may not set \['add_generation_prompt'\]"),
    ({"chat_template_kwargs": ["enable_thinking"]}, "must be a mapping"),
    ({"system_prompt": ""}, "non-empty string or null"),
    ({"use_chat_template": "no"}, "must be true or false"),
])
def test_prompt_format_rejects_options_it_would_ignore(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PromptFormat(**kwargs)


def test_sampling_spec_takes_a_prompt_format_dict():
    spec = SamplingConfig(prompt_format={"system_prompt": "Be brief."})
    assert spec.prompt_format == PromptFormat(system_prompt="Be brief.")


# ---------------------------------------------------------------- a tokenizer without a chat template


def test_a_missing_chat_template_fails_at_setup_naming_the_option(tiny_tokenizer, tiny_policy_spec, policy):
    base = build_char_tokenizer()
    base.chat_template = None
    with pytest.raises(ValueError) as error:
        HFGenerateEngine(base, SamplingConfig(n=1))
    message = str(error.value)
    assert "has no chat template" in message and "set sampling.prompt_format.use_chat_template: false" in message
    # a base model: the plain prompt text, and generation works
    engine = HFGenerateEngine(base, SamplingConfig(n=2, max_new_tokens=3,
                                                 prompt_format=PromptFormat(use_chat_template=False)))
    rollout = engine.generate(policy, batch("2+2="))
    assert decode_prompts(base, rollout) == ["2+2="] and rollout.num_rows == 2

    with pytest.raises(ValueError, match="set SFTModule.prompt_format.use_chat_template: false"):
        check_prompt_format(base, PromptFormat(), "SFTModule.prompt_format")


def test_a_template_that_rejects_the_system_message_fails_at_setup(tiny_tokenizer):
    no_system = build_char_tokenizer()
    no_system.chat_template = ("{%- if messages[0]['role'] == 'system' %}{{ raise_exception('System role not "
                               "supported') }}{%- endif %}" + CHATML_TEMPLATE)
    HFGenerateEngine(no_system, SamplingConfig(n=1))  # fine without a system prompt
    with pytest.raises(ValueError, match="cannot render a prompt with sampling.prompt_format = .*System role not "
                                         "supported"):
        HFGenerateEngine(no_system, SamplingConfig(n=1, prompt_format=PromptFormat(system_prompt="Be brief.")))


def test_sft_module_checks_its_prompt_format_and_encodes_as_the_engine(tiny_policy_spec, tiny_tokenizer):
    fmt = PromptFormat(system_prompt="Be brief.")
    module = SFTModule(tiny_policy_spec, prompt_format=fmt)
    assert module.prompt_format == fmt
    prompts, completions = ["1+1?", "22+3?"], ["2", "25"]
    tensors = collate_sft(tiny_tokenizer, prompts, completions, fmt)
    engine = HFGenerateEngine(tiny_tokenizer, SamplingConfig(n=1, prompt_format=fmt))
    engine_ids, _ = engine.packer.encode(batch(*prompts), engine.sampling)
    for row, ids in enumerate(engine_ids):
        # the SFT sequence starts with exactly the engine's prompt tokens; the loss starts right after them
        assert tensors["input_ids"][row, : len(ids)].tolist() == ids
        assert (tensors["labels"][row, : len(ids)] == -100).all() and tensors["labels"][row, len(ids)] != -100


def test_a_rows_own_system_message_replaces_the_default_and_reaches_the_policy(policy, tiny_tokenizer):
    """As TRL renders a conversation: a row's own system message in place of sampling.prompt_format.system_prompt,
    which the rows without one keep; the rollout's prompt tokens are those rendered, in the engine and in SFT."""
    fmt = PromptFormat(system_prompt="Be brief.")
    own = [None, "Think first."]
    expected = ["<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n1+1?<|im_end|>\n<|im_start|>assistant\n",
                "<|im_start|>system\nThink first.<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n"]
    assert render_prompts(tiny_tokenizer, ["1+1?", "2+2?"], fmt, own) == expected
    assert render_prompts(tiny_tokenizer, ["2+2?"], PromptFormat(), ["Think first."]) == expected[1:]
    engine = HFGenerateEngine(tiny_tokenizer, SamplingConfig(n=2, max_new_tokens=2, prompt_format=fmt))
    prompts = PromptBatch(ids=["a", "b"], prompts=["1+1?", "2+2?"], answers=[None, None], is_labeled=[False, False],
                          system_prompts=own)
    rollout = engine.generate(policy, prompts)
    assert decode_prompts(tiny_tokenizer, rollout) == expected
    tensors = collate_sft(tiny_tokenizer, ["2+2?"], ["4"], fmt, ["Think first."])
    assert tiny_tokenizer.decode(tensors["input_ids"][0]).startswith(expected[1])
    with pytest.raises(ValueError, match="system message of its own, which needs the chat template"):
        render_prompts(tiny_tokenizer, ["Q"], PromptFormat(use_chat_template=False), ["Think first."])


# ---------------------------------------------------------------- overlong prompts


def test_truncated_prompts_warn_once_with_the_longest_length(policy, tiny_tokenizer):
    spec = SamplingConfig(n=1, max_new_tokens=2, max_prompt_length=40)
    engine = HFGenerateEngine(tiny_tokenizer, spec)
    prompts = batch("short", "x" * 100, "y" * 60)
    longest = max(len(ids) for ids in encode_prompts(tiny_tokenizer, prompts.prompts))
    with pytest.warns(UserWarning) as caught:
        rollout = engine.generate(policy, prompts)
    (warning,) = [w for w in caught if "max_prompt_length" in str(w.message)]
    assert str(warning.message).startswith(
        f"2 of 3 prompts are longer than sampling.max_prompt_length = 40 tokens (the longest: {longest} tokens) "
        "and were cut from the left")
    # the char tokenizer: one token per character and per special token; ChatML adds 6 + 2 + 11 tokens
    assert "sampling.overlong_prompt: drop" in str(warning.message) and longest == 100 + 19
    assert rollout.extra["num_prompts_truncated"] == 2
    # what the policy read: the last 40 tokens (27 x's, then 13 tokens of template), the user header gone
    assert decode_prompts(tiny_tokenizer, rollout)[1] == "x" * 27 + "<|im_end|>\n<|im_start|>assistant\n"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once per engine (one per run)
        assert engine.generate(policy, prompts).extra["num_prompts_truncated"] == 2


def test_drop_mode_drops_counts_and_does_not_warn(policy, tiny_tokenizer):
    engine = HFGenerateEngine(tiny_tokenizer, SamplingConfig(n=1, max_new_tokens=2, max_prompt_length=40,
                                                           overlong_prompt="drop"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rollout = engine.generate(policy, batch("short", "x" * 100))
    assert rollout.prompt_batch.ids == ["p0"]
    assert rollout.extra == {"num_dropped": 1, "num_prompts_truncated": 0}


# ---------------------------------------------------------------- what the JSONL files record


def test_eval_records_hold_the_rendered_prompt_lengths_and_truncation(policy, tiny_tokenizer, tmp_path):
    fmt = PromptFormat(system_prompt="Be brief.")
    engine = HFGenerateEngine(tiny_tokenizer, SamplingConfig(n=3, max_new_tokens=4, prompt_format=fmt))
    prompts = PromptBatch(ids=["a", "b"], prompts=["1+1?", "2+2?"], answers=["2", "4"], is_labeled=[True, True])
    rollout = engine.generate(policy, prompts)
    evaluation = Evaluation(EvalConfig(k=3, pass_ks=[1]), tokenizer=tiny_tokenizer)
    evaluation.add(0, rollout)
    path = tmp_path / "eval.jsonl"
    write_question_jsonl(path, evaluation.records[0])
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert rows[1]["prompt"] == render_prompts(tiny_tokenizer, ["2+2?"], fmt)[0]
    assert rows[0]["response_lengths"] == rollout.response_lengths[:3].tolist()
    assert rows[0]["truncated"] == rollout.truncated[:3].tolist()
    # a random policy rarely stops within 4 tokens: lengths and flags agree with the budget
    for row in rows:
        assert all(t == (n == 4) or n < 4 for n, t in zip(row["response_lengths"], row["truncated"]))
        assert all(1 <= n <= 4 for n in row["response_lengths"])


def test_rollout_jsonl_records_the_rendered_prompt_lengths_and_truncation(policy, tiny_tokenizer, tmp_path):
    engine = HFGenerateEngine(tiny_tokenizer, SamplingConfig(n=2, max_new_tokens=3))
    rollout = engine.generate(policy, batch("1+1?", "2+2?"))
    plan = StepPlan(phase="M", source="unlabeled", update_critic=False, update_policy=True)
    record = StepRecord(rl_step=5, plan=plan, rollout=rollout, scores=torch.zeros(rollout.num_rows), metrics={})
    module = SimpleNamespace(last_step=record, tokenizer=tiny_tokenizer)
    trainer = SimpleNamespace(global_rank=0, log_dir=str(tmp_path), default_root_dir=str(tmp_path))
    RolloutSampleLogger(max_samples=3, max_chars=30).on_train_batch_end(trainer, module, None, None, 0)
    (line,) = [json.loads(x) for x in (tmp_path / "rollouts" / "rank0.jsonl").read_text().splitlines()]
    assert line["response_lengths"] == rollout.response_lengths.tolist()
    assert line["truncated"] == rollout.truncated.tolist()
    rendered = render_prompts(tiny_tokenizer, ["1+1?", "2+2?"])
    assert [s["prompt"] for s in line["samples"]] == [rendered[0][:30], rendered[0][:30], rendered[1][:30]]
    assert [s["response_length"] for s in line["samples"]] == rollout.response_lengths[:3].tolist()
    assert [s["truncated"] for s in line["samples"]] == rollout.truncated[:3].tolist()

"""The transformers ``generate`` rollout engine on a tiny random Qwen3 with the char tokenizer."""

from __future__ import annotations

import pytest
import torch

from tempo_pl.models.builders import build_critic, build_policy
from tempo_pl.models.forward import critic_response_values, policy_response_stats, sequence_inputs
from tempo_pl.config import SamplingConfig
from tempo_pl.engines.hf_generate import HFGenerateEngine, encode_prompts
from tempo_pl.types import PromptBatch
from _rollouts import rollout_from_tokens

EOS, PAD = 3, 0


def _prompts(*texts: str, labeled: tuple[bool, ...] | None = None) -> PromptBatch:
    labeled = labeled or tuple(i % 2 == 0 for i in range(len(texts)))
    return PromptBatch(
        ids=[f"p{i}" for i in range(len(texts))],
        prompts=list(texts),
        answers=["1" if lab else None for lab in labeled],
        is_labeled=list(labeled),
    )


def _with_token_bias(policy, token: int, bias: float):
    """Add ``bias`` to one token's logit, so a random model emits it often (the untrained logits are ~uniform)."""
    old = policy.lm_head
    head = torch.nn.Linear(old.in_features, old.out_features, bias=True)
    with torch.no_grad():
        head.weight.copy_(old.weight)
        head.bias.zero_()
        head.bias[token] = bias
    policy.lm_head = head
    return policy


@pytest.fixture
def policy(tiny_policy_spec):
    return build_policy(tiny_policy_spec)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"n": 0}, "n must"),
        ({"temperature": -1.0}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_k": -2}, "top_k"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"max_prompt_length": 0}, "max_prompt_length"),
        ({"overlong_prompt": "keep"}, "overlong_prompt"),
    ],
)
def test_sampling_spec_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SamplingConfig(**kwargs)


def test_encode_prompts_frames_each_prompt_as_a_user_message(tiny_tokenizer):
    def chars(text: str) -> list[int]:  # the char tokenizer: printable ASCII from " " (id 4) on, newline = 99
        return [99 if c == "\n" else ord(c) - 32 + 4 for c in text]

    im_start, im_end = 2, EOS

    def framed(prompt: str) -> list[int]:
        return [im_start] + chars(f"user\n{prompt}") + [im_end] + chars("\n") + [im_start] + chars("assistant\n")

    prompts = ["ab", "Start with 7.\nAdd 5."]
    assert encode_prompts(tiny_tokenizer, prompts) == [framed(p) for p in prompts]
    assert len(framed("y")) == 20  # the budget the truncation test below cuts to
    assert encode_prompts(tiny_tokenizer, []) == []


def test_engine_rejects_bad_options(tiny_tokenizer):
    with pytest.raises(ValueError, match="micro_batch_size"):
        HFGenerateEngine(tiny_tokenizer, SamplingConfig(), micro_batch_size=0)


def test_rollout_layout_groups_and_prompt_encoding(policy, tiny_tokenizer):
    batch = _prompts("1+1?", "what is 12*3?")
    engine = HFGenerateEngine(tiny_tokenizer, SamplingConfig(n=3, max_new_tokens=5))
    torch.manual_seed(0)
    r = engine.generate(policy, batch)
    short, long = encode_prompts(tiny_tokenizer, ["1+1?", "what is 12*3?"])
    P = len(long)
    assert r.num_rows == 6 and r.n_per_prompt == 3 and r.prompt_batch is not batch
    assert r.prompt_batch.ids == ["p0", "p1"]
    assert r.prompt_ids.shape == (6, P) and r.response_ids.shape[0] == 6 and r.response_ids.shape[1] <= 5
    assert r.group_ids.tolist() == [0, 0, 0, 1, 1, 1]  # row = group * n + k
    assert r.is_labeled.tolist() == [True] * 3 + [False] * 3
    assert r.answers_per_row() == ["1"] * 3 + [None] * 3
    # left padding: the short prompt's rows start with pads, the chat template's ids follow
    for row in range(3):
        assert r.prompt_ids[row].tolist() == [PAD] * (P - len(short)) + short
        assert r.prompt_mask[row].tolist() == [0] * (P - len(short)) + [1] * len(short)
        assert r.prompt_ids[3 + row].tolist() == long and r.prompt_mask[3 + row].sum() == P
    assert r.prompt_ids.dtype == r.response_ids.dtype == torch.long and r.response_mask.dtype == torch.float32
    assert r.extra == {"num_dropped": 0, "num_prompts_truncated": 0}
    assert len(engine.generate(policy, batch, n=2).texts) == 4  # n of the call overrides the spec


def test_response_mask_holds_eos_and_excludes_padding(tiny_policy_spec, tiny_tokenizer):
    policy = _with_token_bias(build_policy(tiny_policy_spec), EOS, 3.0)  # P(EOS) about e^3 / (99 + e^3) = 0.17
    engine = HFGenerateEngine(tiny_tokenizer, SamplingConfig(n=4, max_new_tokens=12))
    torch.manual_seed(0)
    r = engine.generate(policy, _prompts("a", "bb", "ccc", "dddd"))
    finished = truncated = 0
    for row in range(r.num_rows):
        ids, mask = r.response_ids[row].tolist(), r.response_mask[row].tolist()
        if EOS in ids:
            end = ids.index(EOS)  # the first EOS ends the response and is inside the mask
            assert mask == [1.0] * (end + 1) + [0.0] * (len(ids) - end - 1)
            assert ids[end + 1 :] == [PAD] * (len(ids) - end - 1)
            assert not r.truncated[row]
            finished += 1
        else:
            assert mask == [1.0] * len(ids) and len(ids) == 12 and r.truncated[row]
            truncated += 1
        length = int(sum(mask))
        assert r.texts[row] == tiny_tokenizer.decode(ids[:length], skip_special_tokens=True)
        assert "<|im_end|>" not in r.texts[row] and r.response_lengths[row] == length
    assert finished > 0 and truncated > 0


def test_generation_stops_at_the_models_extra_eos_ids(tiny_policy_spec, tiny_tokenizer):
    a = tiny_tokenizer.convert_tokens_to_ids("a")
    policy = _with_token_bias(build_policy(tiny_policy_spec), a, 4.0)
    policy.generation_config.eos_token_id = [EOS, a]  # e.g. Qwen3's <|im_end|> and <|endoftext|>
    torch.manual_seed(0)
    r = HFGenerateEngine(tiny_tokenizer, SamplingConfig(n=4, max_new_tokens=10)).generate(policy, _prompts("q"))
    ends = [row.index(a) for row in r.response_ids.tolist() if a in row]
    assert ends, "the biased token was never sampled"
    for row, end in enumerate(ends):
        assert r.response_mask[row, : end + 1].sum() == end + 1 and r.response_mask[row, end + 1 :].sum() == 0


def test_overlong_prompt_is_cut_from_the_left(policy, tiny_tokenizer):
    # "y" in the template is 20 ids: <|im_start|> "user\n"(5) "y" <|im_end|> "\n" <|im_start|> "assistant\n"(10)
    spec = SamplingConfig(n=2, max_new_tokens=3, max_prompt_length=20, overlong_prompt="truncate_left")
    engine = HFGenerateEngine(tiny_tokenizer, spec)
    torch.manual_seed(0)
    r = engine.generate(policy, _prompts("x" * 30, "y"))
    full, short = encode_prompts(tiny_tokenizer, ["x" * 30, "y"])
    assert len(full) == 49 and len(short) == 20
    assert r.prompt_ids.shape[1] == 20
    assert r.prompt_ids[0].tolist() == full[-20:]  # keeps the end: "...<|im_end|>\n<|im_start|>assistant\n"
    assert r.prompt_ids[2].tolist() == short
    assert tiny_tokenizer.decode(r.prompt_ids[0]).endswith("<|im_start|>assistant\n")
    assert len(r.prompt_batch) == 2
    assert engine.last_truncated == 1 and engine.last_dropped == 0
    assert r.extra == {"num_dropped": 0, "num_prompts_truncated": 1}


def test_overlong_prompt_is_dropped_and_counted(policy, tiny_tokenizer):
    spec = SamplingConfig(n=2, max_new_tokens=3, max_prompt_length=30, overlong_prompt="drop")
    engine = HFGenerateEngine(tiny_tokenizer, spec)
    torch.manual_seed(0)
    r = engine.generate(policy, _prompts("x" * 30, "short", "z" * 40, labeled=(True, False, True)))
    assert r.prompt_batch.ids == ["p1"] and r.prompt_batch.is_labeled == [False]
    assert r.num_rows == 2 and r.group_ids.tolist() == [0, 0] and r.is_labeled.tolist() == [False, False]
    assert engine.last_dropped == 2 and r.extra["num_dropped"] == 2


def test_all_prompts_dropped_gives_an_empty_rollout(policy, tiny_tokenizer):
    engine = HFGenerateEngine(tiny_tokenizer, SamplingConfig(n=2, max_prompt_length=5, overlong_prompt="drop"))
    r = engine.generate(policy, _prompts("long prompt", "another"))
    assert r.num_rows == 0 and r.n_per_prompt == 0 and r.texts == [] and len(r.prompt_batch) == 0
    assert r.prompt_ids.shape == (0, 0) and r.response_mask.shape == (0, 0) and r.truncated.shape == (0,)
    assert r.extra["num_dropped"] == 2 and engine.last_dropped == 2
    assert engine.generate(policy, _prompts()).num_rows == 0  # an empty batch too


def test_the_global_rng_decides_the_samples(policy, tiny_tokenizer):
    engine = HFGenerateEngine(tiny_tokenizer, SamplingConfig(n=2, max_new_tokens=8))
    torch.manual_seed(3)
    a = engine.generate(policy, _prompts("q"))
    torch.manual_seed(3)
    b = engine.generate(policy, _prompts("q"))
    c = engine.generate(policy, _prompts("q"))
    assert torch.equal(a.response_ids, b.response_ids) and not torch.equal(b.response_ids, c.response_ids)


def _logits_at_response(policy, rollout):
    ids, mask, pos = sequence_inputs(rollout)
    R = rollout.response_ids.shape[1]
    with torch.no_grad():
        return policy(input_ids=ids, attention_mask=mask, position_ids=pos).logits[:, -R - 1 : -1]


def test_top_k_1_and_low_temperature_equal_greedy(policy, tiny_tokenizer):
    batch = _prompts("1+1?", "what is 7*6?")
    greedy = HFGenerateEngine(tiny_tokenizer, SamplingConfig(n=2, temperature=0.0, max_new_tokens=8)).generate(
        policy, batch
    )
    valid = greedy.response_mask > 0
    # greedy picks the argmax of the logits at P-1+t, as the forward helpers read them
    assert torch.equal(_logits_at_response(policy, greedy).argmax(-1)[valid], greedy.response_ids[valid])
    assert torch.equal(greedy.response_ids[0], greedy.response_ids[1])
    torch.manual_seed(1)
    top1 = HFGenerateEngine(tiny_tokenizer, SamplingConfig(n=2, top_k=1, max_new_tokens=8)).generate(policy, batch)
    cold = HFGenerateEngine(tiny_tokenizer, SamplingConfig(n=2, temperature=1e-4, max_new_tokens=8))
    assert torch.equal(top1.response_ids, greedy.response_ids)
    torch.manual_seed(1)
    assert torch.equal(cold.generate(policy, batch).response_ids, greedy.response_ids)


def test_top_k_2_samples_only_the_two_best_tokens(policy, tiny_tokenizer):
    engine = HFGenerateEngine(tiny_tokenizer, SamplingConfig(n=8, top_k=2, max_new_tokens=10))
    torch.manual_seed(0)
    r = engine.generate(policy, _prompts("1+1?"))
    logits = _logits_at_response(policy, r)
    ranks = (logits > logits.gather(-1, r.response_ids[..., None])).sum(-1)  # tokens scoring above the drawn one
    valid = r.response_mask > 0
    assert ranks[valid].max() == 1  # every token is the best or the second best
    assert (ranks[valid] == 1).any()  # and the second best does get drawn


def test_the_models_own_generation_config_is_ignored_and_restored(policy, tiny_tokenizer):
    policy.generation_config.do_sample = True
    policy.generation_config.top_k = 1  # a hub default like Qwen3's top_k=20 must not leak into sampling
    batch = _prompts("1+1?")
    torch.manual_seed(0)
    sampled = HFGenerateEngine(tiny_tokenizer, SamplingConfig(n=4, max_new_tokens=8)).generate(policy, batch)
    greedy = HFGenerateEngine(tiny_tokenizer, SamplingConfig(n=4, temperature=0, max_new_tokens=8))
    greedy = greedy.generate(policy, batch)
    assert not torch.equal(sampled.response_ids, greedy.response_ids)
    assert policy.generation_config.top_k == 1


def test_generation_restores_train_mode_and_tracks_no_gradients(policy, tiny_tokenizer):
    engine = HFGenerateEngine(tiny_tokenizer, SamplingConfig(n=2, max_new_tokens=4))
    policy.train()
    r = engine.generate(policy, _prompts("q"))
    assert policy.training and not r.response_ids.requires_grad
    policy.eval()
    engine.generate(policy, _prompts("q"))
    assert not policy.training


def test_micro_batches_give_the_same_rollout_as_one_batch(policy, tiny_tokenizer):
    batch = _prompts("1+1?", "what is 12 * 3?", "hi")
    spec = SamplingConfig(n=2, temperature=0.0, max_new_tokens=6)
    whole = HFGenerateEngine(tiny_tokenizer, spec).generate(policy, batch)
    parts = HFGenerateEngine(tiny_tokenizer, spec, micro_batch_size=1).generate(policy, batch)
    for field in ("prompt_ids", "prompt_mask", "response_ids", "response_mask", "truncated", "group_ids"):
        assert torch.equal(getattr(whole, field), getattr(parts, field)), field
    assert whole.texts == parts.texts


def test_a_rollout_feeds_the_forward_helpers(tiny_policy_spec, tiny_critic_spec, tiny_tokenizer):
    policy = _with_token_bias(build_policy(tiny_policy_spec), EOS, 3.0)
    critic = build_critic(tiny_critic_spec, tiny_policy_spec)
    engine = HFGenerateEngine(tiny_tokenizer, SamplingConfig(n=2, max_new_tokens=8))
    torch.manual_seed(0)
    r = engine.generate(policy, _prompts("a", "b"))
    ids, mask, pos = sequence_inputs(r)
    with torch.no_grad():
        stats = policy_response_stats(policy, ids, mask, r.response_ids, r.response_mask)
        values = critic_response_values(critic, ids, mask, r.response_mask)
    shape = tuple(r.response_ids.shape)
    assert stats["logprobs"].shape == stats["entropy"].shape == values.shape == shape
    valid = r.response_mask > 0
    assert (stats["logprobs"][valid] < 0).all() and (stats["logprobs"][~valid] == 0).all()


def test_select_groups_renumbers_groups_and_keeps_index_tensors_on_the_rollouts_device() -> None:
    from tempo_pl.types import Rollout

    n, prompts = 2, _prompts("a", "b", "c")
    rows = range(3 * n)
    rollout = rollout_from_tokens(prompts, n, [[r] for r in rows], [[r * 10] for r in rows],
                                  texts=[f"r{r}" for r in rows])
    picked = rollout.select_groups([2, 0])
    assert picked.texts == ["r4", "r5", "r0", "r1"]
    assert picked.group_ids.tolist() == [0, 0, 1, 1]
    assert picked.prompt_batch.ids == ["p2", "p0"]
    assert rollout.group_rows([2, 0]).tolist() == [4, 5, 0, 1]
    # on a GPU the rollout comes back from generate on the device; index tensors made here must follow it, or the
    # advantage functions' scatter over group ids mixes devices (the first H200 run failed exactly so)
    on_meta = Rollout(**{**rollout.__dict__, "group_ids": rollout.group_ids.to("meta")})
    assert on_meta.group_rows([1]).device.type == "meta"

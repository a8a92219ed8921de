"""Tiny assets, model specs and builders (full, LoRA, QLoRA), critic format, and the forward helpers."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from _weights import draw_parameters

from tempo_pl.models.builders import CriticSpec, LoraSpec, ModelSpec, build_critic, build_policy, build_tokenizer, disable_bnb_avx512bf16
from tempo_pl.models.forward import critic_response_values, policy_response_stats, sequence_inputs
from tempo_pl.models.hf import position_ids_from_mask
from tempo_pl.models.lora import save_merged
from tempo_pl.models.tiny import (
    BUILTIN_CHAR,
    CHATML_TEMPLATE,
    build_char_tokenizer,
    resolve_tokenizer,
    tiny_qwen3_config,
    train_bpe_tokenizer,
)
from tempo_pl.types import PromptBatch, Rollout
from _rollouts import prompt_batch, rollout_from_tokens


def _char_id(c: str) -> int:
    # 4 specials, then printable ASCII from chr(32) in code-point order, then newline
    return 99 if c == "\n" else 4 + ord(c) - 32


# ------------------------------------------------------------------------------------------------ tiny assets


def test_char_tokenizer_ids_specials_and_padding(tiny_tokenizer):
    tok = tiny_tokenizer
    assert len(tok) == 4 + 95 + 1
    assert (tok.pad_token_id, tok.unk_token_id, tok.eos_token_id) == (0, 1, 3)
    assert tok.convert_tokens_to_ids("<|im_start|>") == 2
    assert tok.eos_token == "<|im_end|>" and tok.padding_side == "left"
    # "a" = 4 + 97 - 32 = 69, " " = 4, "\n" = 99, "~" = 4 + 126 - 32 = 98
    assert tok("a \n~", add_special_tokens=False).input_ids == [69, 4, 99, 98]
    assert tok("a€b", add_special_tokens=False).input_ids == [69, 1, 70]  # € is unknown
    text = "x = 12 * 3?\nDone."
    assert tok.decode(tok(text).input_ids) == text


def test_char_tokenizer_extra_chars_and_determinism():
    tok = build_char_tokenizer(extra_chars="é∑é")
    assert len(tok) == 102  # the duplicate é is ignored
    assert tok("é∑", add_special_tokens=False).input_ids == [100, 101]
    assert build_char_tokenizer().get_vocab() == build_char_tokenizer().get_vocab()


def test_chat_template_is_chatml_and_specials_are_skipped(tiny_tokenizer):
    text = tiny_tokenizer.apply_chat_template(
        [{"role": "user", "content": "1+1?"}], add_generation_prompt=True, tokenize=False
    )
    assert text == "<|im_start|>user\n1+1?<|im_end|>\n<|im_start|>assistant\n"
    ids = tiny_tokenizer(text, add_special_tokens=False).input_ids
    assert ids[0] == 2 and ids.count(2) == 2 and ids.count(3) == 1
    assert tiny_tokenizer.decode(ids, skip_special_tokens=True) == "user\n1+1?\nassistant\n"
    without_prompt = tiny_tokenizer.apply_chat_template([{"role": "user", "content": "q"}], tokenize=False)
    assert without_prompt == "<|im_start|>user\nq<|im_end|>\n"


def test_bpe_tokenizer_round_trips_and_learns_merges():
    corpus = ["what is 12 + 34 ?\nanswer 46"] * 40 + ["the cat sat on the mat"] * 40
    tok = train_bpe_tokenizer(corpus, vocab_size=140)
    assert len(tok) <= 140
    assert (tok.pad_token_id, tok.unk_token_id, tok.convert_tokens_to_ids("<|im_start|>"), tok.eos_token_id) == (
        0,
        1,
        2,
        3,
    )
    assert tok.chat_template == CHATML_TEMPLATE and tok.padding_side == "left"
    # a frequent word with its leading space became one token; spacing and newlines survive exactly
    assert tok.convert_ids_to_tokens(tok(" the mat", add_special_tokens=False).input_ids) == [" the", " mat"]
    text = "what is  12 + 34 ?\n\nthe  mat  "
    assert tok.decode(tok(text).input_ids) == text
    assert tok("€", add_special_tokens=False).input_ids == [1]
    with pytest.raises(ValueError, match="vocab_size=50"):
        train_bpe_tokenizer(corpus, vocab_size=50)


def test_tiny_qwen3_config_builds_the_requested_model(tiny_tokenizer):
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = tiny_qwen3_config(vocab_size=len(tiny_tokenizer), hidden_size=32, num_layers=3, num_heads=4, num_kv_heads=1)
    assert cfg["tie_word_embeddings"] is False and cfg["head_dim"] == 8
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**cfg))
    assert len(model.model.layers) == 3
    assert model.lm_head.weight.shape == (100, 32)
    assert model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr()
    assert model.model.layers[0].self_attn.k_proj.out_features == 1 * 8
    with pytest.raises(ValueError, match="num_heads=3"):
        tiny_qwen3_config(100, hidden_size=64, num_heads=3)
    with pytest.raises(ValueError, match="num_kv_heads=3"):
        tiny_qwen3_config(100, num_heads=4, num_kv_heads=3)


def test_resolve_tokenizer_builtin_and_directory(tiny_tokenizer, tmp_path):
    assert resolve_tokenizer(BUILTIN_CHAR).get_vocab() == tiny_tokenizer.get_vocab()
    tiny_tokenizer.save_pretrained(tmp_path)
    loaded = resolve_tokenizer(str(tmp_path))
    assert loaded("ab\n").input_ids == tiny_tokenizer("ab\n").input_ids
    assert loaded.chat_template == CHATML_TEMPLATE


# ------------------------------------------------------------------------------------------------ specs


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"name_or_path": "x", "dtype": "float64"}, "dtype"),
        ({"name_or_path": "x", "config": {"model_type": "qwen3"}}, "not both"),
        ({}, "needs name_or_path or config"),
        ({"config": {"hidden_size": 8}}, "model_type"),
        ({"name_or_path": "x", "load_in_4bit": True}, "needs `lora`"),
    ],
)
def test_model_spec_rejects_bad_options(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ModelSpec(**kwargs)


def test_specs_coerce_and_validate_nested_options():
    assert ModelSpec(name_or_path="x", lora={"r": 4}).lora == LoraSpec(r=4)
    with pytest.raises(ValueError, match="LoraSpec.r"):
        LoraSpec(r=0)
    with pytest.raises(ValueError, match="LoraSpec.dropout"):
        LoraSpec(dropout=1.0)
    with pytest.raises(ValueError, match="init_from_policy"):
        CriticSpec(init_from_policy=False)
    with pytest.raises(ValueError, match="head_init_std"):
        CriticSpec(head_init_std=-0.1)
    assert CriticSpec().init_from_policy  # a critic may leave its source to the policy


def test_build_tokenizer_pads_left_and_falls_back_to_eos(tiny_policy_spec, tmp_path):
    tok = build_tokenizer(tiny_policy_spec)
    assert tok.padding_side == "left" and tok.pad_token_id == 0
    with pytest.raises(ValueError, match="tokenizer is required"):
        build_tokenizer(dataclasses.replace(tiny_policy_spec, tokenizer=None))
    no_pad = build_char_tokenizer()
    no_pad.pad_token = None
    no_pad.padding_side = "right"
    no_pad.save_pretrained(tmp_path)
    tok = build_tokenizer(ModelSpec(name_or_path=str(tmp_path)))  # the tokenizer defaults to name_or_path
    assert tok.pad_token == "<|im_end|>" and tok.padding_side == "left"


# ------------------------------------------------------------------------------------------------ builders


def _params(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_build_policy_seed_dtype_and_loading_options(tiny_policy_spec):
    first, again = build_policy(tiny_policy_spec), build_policy(tiny_policy_spec)
    other = build_policy(dataclasses.replace(tiny_policy_spec, seed=1))
    a, b, c = _params(first), _params(again), _params(other)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["model.embed_tokens.weight"], c["model.embed_tokens.weight"])
    assert type(first).__name__ == "Qwen3ForCausalLM" and first.config._attn_implementation == "sdpa"

    # a seeded build leaves the global RNG where it was
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_policy(tiny_policy_spec)
    assert torch.equal(torch.rand(3), expected)

    tuned = build_policy(
        dataclasses.replace(
            tiny_policy_spec, dtype="bfloat16", attn_implementation="eager", gradient_checkpointing=True
        )
    )
    assert {p.dtype for p in tuned.parameters()} == {torch.bfloat16}
    assert tuned.config._attn_implementation == "eager"
    assert tuned.is_activation_checkpointing


def test_build_policy_from_a_directory(tiny_policy_spec, tmp_path):
    policy = build_policy(tiny_policy_spec)
    policy.save_pretrained(tmp_path)
    loaded = build_policy(ModelSpec(name_or_path=str(tmp_path)))
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in policy.state_dict().items())


def test_lora_policy_adapts_every_linear_layer_and_trains_only_adapters(tiny_policy_spec):
    from peft import PeftModel

    spec = dataclasses.replace(tiny_policy_spec, lora=LoraSpec(r=4, alpha=8, dropout=0.1))
    policy = build_policy(spec)
    assert isinstance(policy, PeftModel)
    trainable = {n for n, p in policy.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    # 7 projections (q, k, v, o, gate, up, down) x 2 layers, A and B each; lm_head is not adapted
    assert len(trainable) == 7 * 2 * 2
    assert not any("lm_head" in n for n in trainable)
    q_proj = policy.base_model.model.model.layers[0].self_attn.q_proj
    assert q_proj.scaling["default"] == 8 / 4  # alpha / r
    assert q_proj.lora_dropout["default"].p == 0.1
    assert q_proj.lora_A["default"].weight.shape == (4, 64)

    only_q = build_policy(dataclasses.replace(tiny_policy_spec, lora=LoraSpec(r=2, target_modules=["q_proj"])))
    assert len([p for p in only_q.parameters() if p.requires_grad]) == 2 * 2

    # B starts at zero, so the first step's gradient reaches B only; the base stays frozen
    ids = torch.randint(4, 100, (2, 6))
    policy(input_ids=ids, labels=ids).loss.backward()
    grads = {n: p.grad for n, p in policy.named_parameters() if p.requires_grad}
    assert all(g is not None and g.abs().sum() > 0 for n, g in grads.items() if ".lora_B." in n)


def test_lora_init_follows_the_seed(tiny_policy_spec):
    spec = dataclasses.replace(tiny_policy_spec, lora=LoraSpec(r=4))
    a, b = _params(build_policy(spec)), _params(build_policy(spec))
    c = _params(build_policy(dataclasses.replace(spec, seed=7)))
    key = next(k for k in a if ".lora_A." in k)
    assert torch.equal(a[key], b[key]) and not torch.equal(a[key], c[key])


def test_critic_from_policy_copies_the_backbone_with_a_zero_head(tiny_policy_spec, tiny_critic_spec):
    policy = build_policy(tiny_policy_spec)
    critic = build_critic(tiny_critic_spec, tiny_policy_spec)
    assert type(critic).__name__ == "Qwen3ForTokenClassification"
    assert critic.config.num_labels == 1 and critic.dropout.p == 0.0
    backbone = policy.model.state_dict()
    assert all(torch.equal(v, backbone[k]) for k, v in critic.model.state_dict().items())
    assert critic.score.weight.shape == (1, 64)
    assert torch.count_nonzero(critic.score.weight) == 0 and torch.count_nonzero(critic.score.bias) == 0

    critic.train()  # no dropout anywhere: train-mode values are deterministic
    ids = torch.randint(4, 100, (2, 5))
    assert torch.equal(critic(input_ids=ids).logits, critic(input_ids=ids).logits)
    assert torch.count_nonzero(critic(input_ids=ids).logits) == 0


def test_critic_head_init_std(tiny_policy_spec):
    critic = build_critic(CriticSpec(head_init_std=0.5, seed=3), tiny_policy_spec)
    w = critic.score.weight
    # 64 draws of N(0, 0.5^2): the sample std lies well within [0.3, 0.7]
    assert 0.3 < float(w.detach().std()) < 0.7
    assert torch.count_nonzero(critic.score.bias) == 0
    again = build_critic(CriticSpec(head_init_std=0.5, seed=3), tiny_policy_spec)
    assert torch.equal(w, again.score.weight)


def test_critic_from_its_own_config(tiny_policy_spec):
    config = tiny_qwen3_config(vocab_size=100, hidden_size=32, num_heads=2, num_kv_heads=1)
    critic = build_critic(CriticSpec(config=config, seed=0))  # no policy needed
    assert critic.score.in_features == 32 and critic.config.num_labels == 1
    with pytest.raises(ValueError, match="policy_spec"):
        build_critic(CriticSpec())


def test_lora_critic_keeps_the_head_trainable(tiny_policy_spec):
    critic = build_critic(CriticSpec(lora=LoraSpec(r=4), head_init_std=0.1, seed=0), tiny_policy_spec)
    trainable = [n for n, p in critic.named_parameters() if p.requires_grad]
    head = [n for n in trainable if ".score." in n]
    prefix = "base_model.model.score.modules_to_save.default."
    assert head == [prefix + "weight", prefix + "bias"]
    assert len(trainable) - len(head) == 7 * 2 * 2  # adapters on the backbone, none on the head
    ids = torch.randint(4, 100, (2, 5))
    critic(input_ids=ids).logits.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for n, p in critic.named_parameters() if n in head)


def test_critic_save_load_round_trip_in_token_classification_format(tiny_policy_spec, tmp_path):
    from transformers import AutoModelForTokenClassification

    critic = build_critic(CriticSpec(lora=LoraSpec(r=4), head_init_std=0.3, seed=0), tiny_policy_spec)
    with torch.no_grad():  # make the adapters non-trivial so merging them matters
        for n, p in critic.named_parameters():
            if ".lora_B." in n:
                p.normal_(0.0, 0.2)
    critic.eval()
    ids = torch.randint(4, 100, (2, 7))
    expected = critic(input_ids=ids).logits

    save_merged(critic, tmp_path)
    assert any(".lora_B." in n for n, _ in critic.named_parameters())  # the live critic keeps its adapters
    hf = AutoModelForTokenClassification.from_pretrained(str(tmp_path)).eval()
    assert set(k for k in hf.state_dict() if not k.startswith("model.")) == {"score.weight", "score.bias"}
    # merging the adapters into the weights reorders float sums: equal up to rounding (values are ~0.3)
    torch.testing.assert_close(hf(input_ids=ids).logits, expected, rtol=0, atol=1e-4)
    # loading through build_critic keeps the trained head (head_init_std=0 would zero a fresh one)
    ours = build_critic(CriticSpec(name_or_path=str(tmp_path))).eval()
    torch.testing.assert_close(ours(input_ids=ids).logits, hf(input_ids=ids).logits, rtol=0, atol=0)


def test_critic_from_a_causal_lm_checkpoint_gets_a_fresh_head(tiny_policy_spec, tmp_path):
    policy = build_policy(tiny_policy_spec)
    policy.save_pretrained(tmp_path)
    critic = build_critic(CriticSpec(), ModelSpec(name_or_path=str(tmp_path)))
    assert torch.count_nonzero(critic.score.weight) == 0
    assert torch.equal(critic.model.embed_tokens.weight, policy.model.embed_tokens.weight)


def test_critic_for_an_architecture_without_a_token_classification_class(tmp_path):
    from transformers import AutoModelForTokenClassification

    olmo3 = {
        "model_type": "olmo3",
        "vocab_size": 100,
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "intermediate_size": 64,
        "eos_token_id": 3,
        "pad_token_id": 0,
        "bos_token_id": None,
    }
    policy_spec = ModelSpec(config=olmo3, seed=0)
    critic = build_critic(CriticSpec(head_init_std=0.2, seed=0), policy_spec)
    assert type(critic).__name__ == "Olmo3ForTokenClassification"
    keys = set(critic.state_dict())
    assert {"score.weight", "score.bias"} <= keys and all(k.startswith(("model.", "score.")) for k in keys)
    policy = build_policy(policy_spec)
    assert torch.equal(critic.model.embed_tokens.weight, policy.model.embed_tokens.weight)

    critic.eval()
    ids = torch.randint(4, 100, (1, 6))
    save_merged(critic, tmp_path)
    loaded = AutoModelForTokenClassification.from_pretrained(str(tmp_path)).eval()
    torch.testing.assert_close(loaded(input_ids=ids).logits, critic(input_ids=ids).logits, rtol=0, atol=0)


# ------------------------------------------------------------------------------------------------ forward helpers


def _rollout(prompt_ids, prompt_mask, response_ids, response_mask) -> Rollout:
    """One prompt per row, written as the padded tensors the assertions read (pad id 0)."""
    prompts = [[t for t, keep in zip(ids, mask) if keep] for ids, mask in zip(prompt_ids, prompt_mask)]
    responses = [ids[:sum(mask)] for ids, mask in zip(response_ids, response_mask)]
    rollout = rollout_from_tokens(prompt_batch([str(i) for i in range(len(prompts))]), 1, prompts, responses)
    assert rollout.prompt_ids.tolist() == prompt_ids and rollout.response_ids.tolist() == response_ids
    return rollout


def test_sequence_inputs_concatenates_and_numbers_positions():
    # row 0: one pad, prompt [5, 6], response [10, EOS], then a pad; row 1: no padding at all
    rollout = _rollout(
        [[0, 5, 6], [7, 8, 9]], [[0, 1, 1], [1, 1, 1]], [[10, 3, 0], [11, 12, 3]], [[1, 1, 0], [1, 1, 1]]
    )
    ids, mask, pos = sequence_inputs(rollout)
    assert ids.tolist() == [[0, 5, 6, 10, 3, 0], [7, 8, 9, 11, 12, 3]]
    assert mask.tolist() == [[0, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]]
    # positions count attended tokens: row 0 = pad(0) 0 1 2 3, trailing pad keeps 3; row 1 = 0..5
    assert pos.tolist() == [[0, 0, 1, 2, 3, 3], [0, 1, 2, 3, 4, 5]]
    assert torch.equal(position_ids_from_mask(mask), pos)


def test_policy_stats_match_a_hand_computed_unpadded_forward(tiny_policy_spec):
    policy = build_policy(tiny_policy_spec).eval()
    prompt, response = [2, 40, 41, 42, 3], [50, 51, 52, 3]
    # batch: the prompt left-padded by 3 next to a longer prompt; the first response right-padded by 1
    rollout = _rollout(
        [[0, 0, 0] + prompt, [2, 60, 61, 62, 63, 64, 65, 3]],
        [[0, 0, 0, 1, 1, 1, 1, 1], [1] * 8],
        [response + [0], [70, 71, 72, 73, 3]],
        [[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]],
    )
    ids, mask, pos = sequence_inputs(rollout)
    temperature = 0.7
    with torch.no_grad():
        stats = policy_response_stats(
            policy, ids, mask, rollout.response_ids, rollout.response_mask, temperature=temperature,
            with_self_certainty=True,
        )
        # by hand: the unpadded sequence; logits at position P-1+t (P = 5) predict response token t
        logits = policy(input_ids=torch.tensor([prompt + response])).logits[0] / temperature
    logp = torch.log_softmax(logits, -1)
    expected = torch.stack([logp[5 - 1 + t, response[t]] for t in range(4)])
    torch.testing.assert_close(stats["logprobs"][0, :4], expected, rtol=0, atol=1e-5)
    p = logp[4:8].exp()
    torch.testing.assert_close(stats["entropy"][0, :4], -(p * logp[4:8]).sum(-1), rtol=0, atol=1e-5)
    # KL(U || p) = -log V - mean_v log p_v
    torch.testing.assert_close(
        stats["self_certainty"][0, :4], -math.log(100) - logp[4:8].mean(-1), rtol=0, atol=1e-5
    )
    for key in ("logprobs", "entropy", "self_certainty"):  # zero outside the mask
        assert stats[key][0, 4] == 0 and stats[key].shape == (2, 5) and stats[key].dtype == torch.float32


def test_policy_stats_carry_gradients_and_optional_outputs(tiny_policy_spec):
    policy = build_policy(tiny_policy_spec)
    rollout = _rollout([[2, 40, 41]], [[1, 1, 1]], [[50, 3]], [[1, 1]])
    ids, mask, _ = sequence_inputs(rollout)
    stats = policy_response_stats(policy, ids, mask, rollout.response_ids, rollout.response_mask, with_entropy=False)
    assert set(stats) == {"logprobs"}
    stats["logprobs"].sum().backward()
    assert policy.lm_head.weight.grad is not None and policy.lm_head.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="temperature"):
        policy_response_stats(policy, ids, mask, rollout.response_ids, rollout.response_mask, temperature=0.0)


def test_critic_value_at_t_reads_the_hidden_state_before_token_t(tiny_policy_spec):
    critic = build_critic(CriticSpec(head_init_std=0.5, seed=1), tiny_policy_spec).eval()
    with torch.no_grad():
        critic.score.bias.fill_(0.25)
    rollout = _rollout(
        [[0, 2, 40], [2, 41, 42]], [[0, 1, 1], [1, 1, 1]], [[50, 3, 0], [51, 52, 3]], [[1, 1, 0], [1, 1, 1]]
    )
    ids, mask, pos = sequence_inputs(rollout)
    with torch.no_grad():
        values = critic_response_values(critic, ids, mask, rollout.response_mask)
        hidden = critic.model(input_ids=ids, attention_mask=mask, position_ids=pos).last_hidden_state
    w, b = critic.score.weight[0], critic.score.bias[0]
    P = 3
    for row in range(2):
        for t in range(3):
            expected = (hidden[row, P - 1 + t] @ w + b) * rollout.response_mask[row, t]
            torch.testing.assert_close(values[row, t], expected, rtol=0, atol=1e-6)
    assert values[0, 2] == 0  # padding after EOS
    # V at t=0 is read before any response token: it depends on the prompt only
    other = rollout.response_ids.clone()
    other[:, 0] = 60
    with torch.no_grad():
        changed = critic_response_values(critic, torch.cat([rollout.prompt_ids, other], 1), mask, rollout.response_mask)
    assert torch.equal(changed[:, 0], values[:, 0]) and not torch.equal(changed[:, 1], values[:, 1])


# ------------------------------------------------------------------------------------------------ QLoRA


def _qlora(spec: ModelSpec) -> torch.nn.Module:
    policy = build_policy(dataclasses.replace(spec, lora=LoraSpec(r=4, alpha=8), load_in_4bit=True))
    # B = 0 at init would leave every A gradient at 0; give B values so every adapter gets a gradient
    draw_parameters(policy, seed=0, scale=0.1, keep=lambda name: ".lora_B." in name)
    return policy


def _lora_grads(policy) -> dict[str, torch.Tensor | None]:
    policy.train()
    policy.zero_grad(set_to_none=True)
    rollout = _rollout([[2, 40, 41, 42]], [[1, 1, 1, 1]], [[50, 51, 3]], [[1, 1, 1]])
    ids, mask, _ = sequence_inputs(rollout)
    stats = policy_response_stats(policy, ids, mask, rollout.response_ids, rollout.response_mask)
    (-stats["logprobs"].sum()).backward()
    return {n: p.grad for n, p in policy.named_parameters() if p.requires_grad}


def test_qlora_policy_is_4bit_with_trainable_adapters(tiny_policy_spec):
    import bitsandbytes as bnb

    policy = _qlora(tiny_policy_spec)
    linear4 = [m for m in policy.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(linear4) == 7 * 2  # every projection; lm_head stays in full precision
    assert all(not m.support_avx512bf16_for_cpu for m in linear4)
    assert all(m.weight.quant_state.quant_type == "nf4" for m in linear4)
    trainable = [n for n, p in policy.named_parameters() if p.requires_grad]
    assert len(trainable) == 7 * 2 * 2 and all(".lora_" in n for n in trainable)


def test_qlora_generate_then_train_gives_the_same_gradients(tiny_policy_spec, tiny_tokenizer):
    from tempo_pl.config import SamplingConfig
    from tempo_pl.engines.hf_generate import HFGenerateEngine

    reference = _lora_grads(_qlora(tiny_policy_spec))  # never ran an eval-mode forward
    assert all(g is not None and g.abs().sum() > 0 for g in reference.values())

    policy = _qlora(tiny_policy_spec)
    engine = HFGenerateEngine(tiny_tokenizer, SamplingConfig(n=2, max_new_tokens=4))
    torch.manual_seed(0)
    rollout = engine.generate(policy, PromptBatch(["a"], ["1+1?"], [None], [False]))
    assert rollout.num_rows == 2
    grads = _lora_grads(policy)
    for name, g in grads.items():
        assert g is not None and g.abs().sum() > 0, name
        torch.testing.assert_close(g, reference[name], rtol=0, atol=1e-6)


def test_disable_bnb_avx512bf16_repairs_an_already_repacked_model(tiny_policy_spec):
    import bitsandbytes as bnb
    from bitsandbytes.functional import has_avx512bf16

    if not has_avx512bf16():
        pytest.skip("the repacking trap needs an AVX512-BF16 CPU")
    reference = _lora_grads(_qlora(tiny_policy_spec))
    policy = _qlora(tiny_policy_spec)
    linear4 = [m for m in policy.modules() if isinstance(m, bnb.nn.Linear4bit)]
    for m in linear4:  # undo the builder's fix to reproduce the trap
        m.support_avx512bf16_for_cpu = True
    policy.eval()
    with torch.no_grad():
        policy(input_ids=torch.tensor([[2, 40, 41]]))
    assert all(m.weight.quant_state.packing_format_for_cpu for m in linear4)
    broken = _lora_grads(policy)
    assert any(g is None or not torch.allclose(g, reference[n], atol=1e-3) for n, g in broken.items())

    assert disable_bnb_avx512bf16(policy) == len(linear4)
    assert not any(m.weight.quant_state.packing_format_for_cpu for m in linear4)
    repaired = _lora_grads(policy)
    # the repacking rounded each block's absmax to bfloat16 (8 mantissa bits): gradients agree to that precision
    for name, g in repaired.items():
        torch.testing.assert_close(g, reference[name], rtol=2e-2, atol=2e-3)
    assert disable_bnb_avx512bf16(policy) == 0  # idempotent


def test_qlora_critic_keeps_a_full_precision_trainable_head(tiny_policy_spec):
    import bitsandbytes as bnb

    spec = CriticSpec(lora=LoraSpec(r=4), load_in_4bit=True, head_init_std=0.1, seed=0)
    critic = build_critic(spec, tiny_policy_spec)
    assert sum(isinstance(m, bnb.nn.Linear4bit) for m in critic.modules()) == 7 * 2
    head = critic.base_model.model.score.modules_to_save["default"]
    assert type(head) is torch.nn.Linear and head.weight.requires_grad
    critic.eval()
    with torch.no_grad():
        critic(input_ids=torch.tensor([[2, 40, 41]]))  # an eval-mode no-grad pass, as the value pass does
    critic.train()
    critic(input_ids=torch.tensor([[2, 40, 41]])).logits.sum().backward()
    lora_grads = [p.grad for n, p in critic.named_parameters() if ".lora_B." in n]  # B = 0 at init: A gets none yet
    assert head.weight.grad.abs().sum() > 0 and all(g is not None and g.abs().sum() > 0 for g in lora_grads)

"""Offline tiny assets: tokenizers and model configs that need no download.

Tests, the offline demo and YAML configs use these so that the whole loop runs with no network: a character-level
tokenizer (``"builtin:char"``), a small BPE trained on a corpus at hand, and a tiny Qwen3 config for
``AutoModelForCausalLM.from_config``. All three carry the same special tokens and a ChatML chat template, so the
rollout engine treats them exactly like a Qwen3 tokenizer.
"""

from __future__ import annotations

from typing import Iterable

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

PAD_TOKEN = "<pad>"
UNK_TOKEN = "<unk>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = [PAD_TOKEN, UNK_TOKEN, IM_START, IM_END]
"""Special tokens of every builtin tokenizer, in id order (``<pad>`` = 0 ... ``<|im_end|>`` = 3)."""

BUILTIN_CHAR = "builtin:char"
"""Tokenizer name that :func:`resolve_tokenizer` maps to :func:`build_char_tokenizer` (for offline YAML configs)."""

#: Qwen3-style ChatML, without the thinking block: each message is framed by <|im_start|>role ... <|im_end|>.
CHATML_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

_PRINTABLE_ASCII = "".join(chr(c) for c in range(32, 127)) + "\n"


def _wrap(tokenizer: Tokenizer) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token=PAD_TOKEN,
        unk_token=UNK_TOKEN,
        eos_token=IM_END,
        additional_special_tokens=[IM_START],
        padding_side="left",
        chat_template=CHATML_TEMPLATE,
        clean_up_tokenization_spaces=False,
    )


def build_char_tokenizer(extra_chars: str = "") -> PreTrainedTokenizerFast:
    """A character-level tokenizer: every printable ASCII character, newline and ``extra_chars`` is one token.

    Ids are deterministic: the four special tokens first (``<pad>``, ``<unk>``, ``<|im_start|>``, ``<|im_end|>``),
    then the characters in code-point order, then ``extra_chars`` in the order given. Any other character maps to
    ``<unk>``. ``eos`` is ``<|im_end|>``, ``pad`` is ``<pad>``, padding is on the left (for generation).

    Args:
        extra_chars: characters to add to the vocabulary beyond printable ASCII (duplicates are ignored).

    Example::

        tok = build_char_tokenizer()
        tok("1+1=2").input_ids   # one id per character
    """
    chars = list(dict.fromkeys(_PRINTABLE_ASCII + extra_chars))
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS + chars)}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK_TOKEN))
    # every character, newline included, is its own piece; special tokens are split off before this runs
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tokenizer.decoder = decoders.Fuse()
    tokenizer.add_special_tokens(SPECIAL_TOKENS)
    return _wrap(tokenizer)


def train_bpe_tokenizer(corpus: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A BPE tokenizer trained on ``corpus``, with the builtin special tokens and chat template.

    Not byte-level: the alphabet is printable ASCII plus newline plus whatever characters the corpus holds, so
    decoding is the exact inverse of encoding. Words keep their leading space (``" word"``), so merges never cross a
    word boundary and decoding just concatenates pieces. Characters never seen in training map to ``<unk>``.

    Args:
        corpus: the training texts.
        vocab_size: the size of the final vocabulary, special tokens and alphabet included; it must leave room for
            them (at least ``4 + 96``).

    Example::

        tok = train_bpe_tokenizer(["1 + 1 = 2", "2 + 2 = 4"] * 50, vocab_size=128)
    """
    minimum = len(SPECIAL_TOKENS) + len(_PRINTABLE_ASCII)
    if vocab_size < minimum:
        raise ValueError(
            f"vocab_size={vocab_size} leaves no room for the specials and the alphabet (need >= {minimum})"
        )
    tokenizer = Tokenizer(models.BPE(unk_token=UNK_TOKEN, fuse_unk=True))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(r" ?[^\s]+|\s"), behavior="isolated")
    tokenizer.decoder = decoders.Fuse()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=list(_PRINTABLE_ASCII),
        min_frequency=2,
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    return _wrap(tokenizer)


def tiny_qwen3_config(
    vocab_size: int,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 128,
    max_position_embeddings: int = 2048,
) -> dict:
    """A Qwen3 config dict for random-weight models (``ModelSpec(config=...)``); ``tie_word_embeddings`` is off.

    pad and eos ids are those of the builtin tokenizers (``<pad>`` = 0, ``<|im_end|>`` = 3).

    Args:
        vocab_size: the tokenizer's ``len(tokenizer)``.
        hidden_size: model width; must divide by ``num_heads``.
        num_layers: decoder layers.
        num_heads: query heads.
        num_kv_heads: key/value heads (grouped-query attention); must divide ``num_heads``.
        intermediate_size: MLP width.
        max_position_embeddings: longest sequence the rotary embedding is set up for.

    Example::

        cfg = tiny_qwen3_config(vocab_size=len(build_char_tokenizer()))
    """
    if hidden_size % num_heads:
        raise ValueError(f"hidden_size={hidden_size} is not divisible by num_heads={num_heads}")
    if num_heads % num_kv_heads:
        raise ValueError(f"num_heads={num_heads} is not divisible by num_kv_heads={num_kv_heads}")
    return {
        "model_type": "qwen3",
        "vocab_size": vocab_size,
        "hidden_size": hidden_size,
        "num_hidden_layers": num_layers,
        "num_attention_heads": num_heads,
        "num_key_value_heads": num_kv_heads,
        "head_dim": hidden_size // num_heads,
        "intermediate_size": intermediate_size,
        "max_position_embeddings": max_position_embeddings,
        "tie_word_embeddings": False,
        "rms_norm_eps": 1e-6,
        "hidden_act": "silu",
        "initializer_range": 0.02,
        "attention_dropout": 0.0,
        # the builtin tokenizers share these ids; a model config that names them gets a matching generation_config
        "pad_token_id": SPECIAL_TOKENS.index(PAD_TOKEN),
        "eos_token_id": SPECIAL_TOKENS.index(IM_END),
        "bos_token_id": None,
    }


def resolve_tokenizer(name: str, **kwargs) -> PreTrainedTokenizerBase:
    """``"builtin:char"`` gives :func:`build_char_tokenizer`; any other name or directory goes to
    ``AutoTokenizer.from_pretrained(name, **kwargs)``."""
    if name == BUILTIN_CHAR:
        return build_char_tokenizer()
    return AutoTokenizer.from_pretrained(name, **kwargs)

"""How a user message becomes the text and token ids the policy reads: one :class:`PromptFormat`, used by the rollout
engine (training and evaluation) and by the SFT warm start, so that SFT teaches the policy to answer exactly what the
rollouts ask; and the way back, from a rollout's prompt tokens to the text the policy read, for the JSONL logs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

from transformers import PreTrainedTokenizerBase

from tempo_pl.types import Rollout

RESERVED_TEMPLATE_KWARGS = ("add_generation_prompt", "tokenize", "conversation", "messages", "continue_final_message",
                            "return_dict", "tools", "documents")
"""``apply_chat_template`` arguments the prompt encoder sets itself; ``chat_template_kwargs`` may not set them."""


@dataclass
class PromptFormat:
    """How the user message (the data module's prompt template applied to a question) becomes the policy's prompt.

    Example (YAML, under ``model.init_args.sampling`` of ``tempo-pl fit``, or ``model.init_args`` of the SFT stage)::

        prompt_format: {system_prompt: "Answer briefly.", chat_template_kwargs: {enable_thinking: false}}
        prompt_format: {use_chat_template: false}     # a base model without a chat template
    """

    use_chat_template: bool = True
    """Frame the prompt with the tokenizer's chat template (a user message, then the generation prompt); false for a
    base model: the user message alone is the prompt, encoded with the tokenizer's own special tokens (e.g. BOS)."""
    system_prompt: Optional[str] = None
    """A system message put before every user message (needs the chat template); a row whose conversation has a
    system message of its own gets that one instead, as TRL renders it."""
    chat_template_kwargs: dict[str, Any] = field(default_factory=dict)
    """Extra variables for the chat template, e.g. ``{enable_thinking: false}`` for Qwen3 (needs the chat template)."""

    def __post_init__(self) -> None:
        if not isinstance(self.use_chat_template, bool):
            raise ValueError(f"PromptFormat.use_chat_template must be true or false, got {self.use_chat_template!r}")
        if self.system_prompt is not None and (not isinstance(self.system_prompt, str) or not self.system_prompt):
            raise ValueError(
                f"PromptFormat.system_prompt must be a non-empty string or null, got {self.system_prompt!r}")
        if not isinstance(self.chat_template_kwargs, dict):
            raise ValueError(f"PromptFormat.chat_template_kwargs must be a mapping, got {self.chat_template_kwargs!r}")
        reserved = sorted(set(self.chat_template_kwargs) & set(RESERVED_TEMPLATE_KWARGS))
        if reserved:
            raise ValueError(f"PromptFormat.chat_template_kwargs may not set {reserved}: the prompt encoder sets them")
        if not self.use_chat_template:
            given = [k for k in ("system_prompt", "chat_template_kwargs") if getattr(self, k)]
            if given:
                raise ValueError(f"PromptFormat.{' and '.join(given)} need the chat template, but use_chat_template is "
                                 "false; put an instruction into the data module's prompt_template instead")


def check_prompt_format(tokenizer: PreTrainedTokenizerBase, prompt_format: PromptFormat, option: str) -> None:
    """Fail at setup, naming ``option`` (e.g. ``"sampling.prompt_format"``), when the tokenizer cannot render the
    format: no chat template, or a template that rejects the system message or the extra variables."""
    if not prompt_format.use_chat_template:
        return
    if tokenizer.chat_template is None:
        raise ValueError(
            f"the tokenizer {tokenizer.name_or_path!r} has no chat template, which {option}.use_chat_template (true "
            f"by default) needs: set {option}.use_chat_template: false for a base model (the prompt is then the "
            "plain prompt text), or give ModelSpec.tokenizer a tokenizer that has a chat template"
        )
    try:
        render_prompts(tokenizer, ["1 + 1 = ?"], prompt_format)
    except Exception as error:  # jinja raises TemplateError / TypeError / ... from inside the template
        raise ValueError(f"the chat template of {tokenizer.name_or_path!r} cannot render a prompt with {option} = "
                         f"{prompt_format}: {type(error).__name__}: {error}") from error


def render_prompts(
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    prompt_format: Optional[PromptFormat] = None,
    system_prompts: Optional[Sequence[Optional[str]]] = None,
) -> list[str]:
    """The text the policy reads for each user message: chat-templated with the generation prompt (and the system
    message and template variables of ``prompt_format``), or the message itself without the chat template.

    ``system_prompts[i]``, when not ``None``, is row ``i``'s own system message, in place of
    ``prompt_format.system_prompt``."""
    prompt_format = prompt_format or PromptFormat()
    systems = list(system_prompts) if system_prompts is not None else [None] * len(prompts)
    if len(systems) != len(prompts):
        raise ValueError(f"render_prompts got {len(systems)} system prompts for {len(prompts)} prompts")
    if not prompt_format.use_chat_template:
        if any(system is not None for system in systems):
            raise ValueError("a row has a system message of its own, which needs the chat template, but "
                             "prompt_format.use_chat_template is false; remove the system message from the data")
        return list(prompts)
    rendered = []
    for prompt, system in zip(prompts, systems):
        system = system if system is not None else prompt_format.system_prompt
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        rendered.append(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False,
                                                      **prompt_format.chat_template_kwargs))
    return rendered


def encode_prompts(
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    prompt_format: Optional[PromptFormat] = None,
    system_prompts: Optional[Sequence[Optional[str]]] = None,
) -> list[list[int]]:
    """Token ids of :func:`render_prompts`: what the policy is asked. A chat template writes its own special tokens;
    without one the tokenizer adds its own (BOS)."""
    prompt_format = prompt_format or PromptFormat()
    texts = render_prompts(tokenizer, prompts, prompt_format, system_prompts)
    if not texts:
        return []
    return tokenizer(texts, add_special_tokens=not prompt_format.use_chat_template)["input_ids"]


def decode_prompts(tokenizer: PreTrainedTokenizerBase, rollout: Rollout) -> list[str]:
    """The prompt text each group of a rollout was sampled from, decoded from its prompt tokens (special tokens
    kept): what the policy read, after any left truncation."""
    first_row: dict[int, int] = {}
    for row, group in enumerate(rollout.group_ids.tolist()):
        first_row.setdefault(group, row)
    texts = []
    for group in range(len(rollout.prompt_batch)):
        row = first_row.get(group)
        ids = [] if row is None else rollout.prompt_ids[row][rollout.prompt_mask[row].bool()].tolist()
        texts.append(tokenizer.decode(ids, skip_special_tokens=False))
    return texts

"""Conversational columns as TRL writes them (``prompt``, ``messages``, ``completion``): lists of
``{"role": ..., "content": ...}`` messages, read into the one user message a prompt row holds.

A row's system message is refused rather than dropped: the system prompt is the run's, one for every row
(``sampling.prompt_format.system_prompt``), so that D_L, D_U, evaluation and the SFT warm start all ask the same way.

Example::

    user_text([{"role": "user", "content": "What is 2 + 2?"}])                          # 'What is 2 + 2?'
    assistant_text([{"role": "user", "content": "2 + 2?"}, {"role": "assistant", "content": "\\\\boxed{4}"}])
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

SYSTEM_PROMPT_OPTION = "sampling.prompt_format.system_prompt"


def is_conversation(value: Any) -> bool:
    """True for a non-empty list whose items are all mappings with a ``role``."""
    return (isinstance(value, (list, tuple)) and bool(value)
            and all(isinstance(m, Mapping) and "role" in m for m in value))


def user_text(messages: Any) -> str:
    """The content of the single user message of a conversation (assistant replies after it are ignored).

    Raises:
        ValueError: not a conversation, a system message, no user message, or more than one.
    """
    if not is_conversation(messages):
        raise ValueError(f"expected a list of {{role, content}} messages, got {_describe(messages)}")
    roles = [m["role"] for m in messages]
    if "system" in roles:
        raise ValueError(f"a system message in the data is not supported: set {SYSTEM_PROMPT_OPTION} (one system "
                         "prompt for every row) and keep only the user message")
    users = [m for m in messages if m["role"] == "user"]
    if len(users) != 1:
        raise ValueError(f"expected exactly one user message, got {len(users)} (roles {roles})")
    return message_content(users[0])


def assistant_text(messages: Any) -> str:
    """The content of the last message of a conversation, which must be the assistant's (an SFT target)."""
    if not is_conversation(messages):
        raise ValueError(f"expected a list of {{role, content}} messages, got {_describe(messages)}")
    if messages[-1]["role"] != "assistant":
        raise ValueError(f"the last message must be the assistant's reply, got role {messages[-1]['role']!r}")
    return message_content(messages[-1])


def message_content(message: Mapping) -> str:
    """A message's text: a string, or the concatenated ``{"type": "text", "text": ...}`` parts of a list."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, (list, tuple)) and all(isinstance(p, Mapping) for p in content):
        kinds = sorted({str(p.get("type")) for p in content} - {"text"})
        if kinds:
            raise ValueError(f"{message['role']} message has non-text parts {kinds}; only text is supported")
        return "".join(str(p.get("text", "")) for p in content)
    raise ValueError(f"{message['role']} message content must be a string, got {_describe(content)}")


def _describe(value: Any) -> str:
    if isinstance(value, (list, tuple)) and value:
        return f"a list of {type(value[0]).__name__}"
    return type(value).__name__

"""Conversational columns as TRL writes them (``prompt``, ``messages``, ``completion``): lists of
``{"role": ..., "content": ...}`` messages, read into the one user message a prompt row holds and, as TRL
accepts, the row's own system message before it.

A row's system message is rendered by the chat template for that row, in place of the run's default
(``sampling.prompt_format.system_prompt``, which rows without one keep).

Example::

    user_text([{"role": "user", "content": "What is 2 + 2?"}])                          # 'What is 2 + 2?'
    system_text([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2 + 2?"}])  # 'Be brief.'
    assistant_text([{"role": "user", "content": "2 + 2?"}, {"role": "assistant", "content": "\\\\boxed{4}"}])
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Optional

SYSTEM_PROMPT_OPTION = "sampling.prompt_format.system_prompt"
"""The run's default system prompt, for rows whose conversation has no system message of its own."""


def is_conversation(value: Any) -> bool:
    """True for a non-empty list whose items are all mappings with a ``role``."""
    return (isinstance(value, (list, tuple)) and bool(value)
            and all(isinstance(m, Mapping) and "role" in m for m in value))


def user_text(messages: Any) -> str:
    """The content of the single user message of a conversation (a system message before it is read by
    :func:`system_text`; assistant replies after it are ignored).

    Raises:
        ValueError: not a conversation, no user message or more than one, or a system message that is not the first
            message or not the only one.
    """
    if not is_conversation(messages):
        raise ValueError(f"expected a list of {{role, content}} messages, got {_describe(messages)}")
    roles = [m["role"] for m in messages]
    users = [m for m in messages if m["role"] == "user"]
    if len(users) != 1:
        raise ValueError(f"expected exactly one user message, got {len(users)} (roles {roles})")
    if "system" in roles and (roles.count("system") > 1 or roles[0] != "system"):
        raise ValueError(f"a system message must be the first message and the only one, got roles {roles} (rows "
                         f"without one use {SYSTEM_PROMPT_OPTION})")
    return message_content(users[0])


def system_text(messages: Any) -> Optional[str]:
    """The content of a conversation's system message (its first message), or ``None`` when it has none: the chat
    template then renders the run's default, :data:`SYSTEM_PROMPT_OPTION`."""
    if not is_conversation(messages) or messages[0]["role"] != "system":
        return None
    text = message_content(messages[0])
    if not text.strip():
        raise ValueError("the system message is empty")
    return text


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

"""Chat templates: the model's own (from its tokenizer), or a plain fallback when it has none."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..protocol import ChatMessage


def render_messages(tokenizer: Any, messages: Sequence[ChatMessage]) -> str:
    """The prompt text for a conversation, ending where the assistant's answer starts."""
    conversation = [{"role": m.role, "content": m.content} for m in messages]
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(conversation, tokenize=False,
                                             add_generation_prompt=True)
    lines = [f"{m.role}: {m.content}" for m in messages]
    return "\n".join(lines) + "\nassistant:"

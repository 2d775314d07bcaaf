"""Chat templates: the model's own (from its tokenizer), or a plain fallback when it has none."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..protocol import ChatMessage
from .reasoning import template_kwargs


def conversation(messages: Sequence[ChatMessage]) -> list[dict[str, Any]]:
    """Messages as chat templates read them (tool calls in the OpenAI shape, which
    Qwen-style templates unwrap from ``function``)."""
    out: list[dict[str, Any]] = []
    for m in messages:
        item: dict[str, Any] = {"role": m.role, "content": m.content}
        if m.tool_calls:
            item["tool_calls"] = [{"id": c.id, "type": "function",
                                   "function": {"name": c.name, "arguments": c.arguments}}
                                  for c in m.tool_calls]
        if m.name is not None:
            item["name"] = m.name
        if m.tool_call_id is not None:
            item["tool_call_id"] = m.tool_call_id
        out.append(item)
    return out


def render_messages(tokenizer: Any, messages: Sequence[ChatMessage], *,
                    think: bool | None = None,
                    tools: Sequence[dict[str, Any]] | None = None) -> str:
    """The prompt text for a conversation, ending where the assistant's answer starts."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(conversation(messages), tokenize=False,
                                             add_generation_prompt=True,
                                             **template_kwargs(tokenizer, think=think, tools=tools))
    lines = [f"{m.role}: {m.content}" for m in messages]
    return "\n".join(lines) + "\nassistant:"

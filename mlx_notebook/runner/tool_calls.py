"""The model's tool calls, parsed with mlx-lm's parser for its family.

mlx-lm picks a parser when it loads the tokenizer (from the chat template's text or
the vocabulary: ``TokenizerWrapper.tool_parser``); :func:`tool_support_error` says
why a model cannot take ``tools`` (no tool support in its template at all, or a
call format no parser knows), and :func:`parse_tool_calls` turns one call's text
(between the tool-call tags, tags stripped) into :class:`~protocol.ToolCall` values.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from typing import Any

from ..protocol import ToolCall, ToolCallEvent

__all__ = ["NO_TOOL_PARSER", "NO_TOOL_SUPPORT", "parse_tool_calls", "tool_call_events",
           "tool_support_error"]

NO_TOOL_SUPPORT = ("model {model!r} cannot call tools: its chat template has no tool support "
                   "(it never reads `tools`); load a model made for tool calling")
NO_TOOL_PARSER = ("model {model!r} has a chat template that takes tools, but mlx-lm knows no "
                  "parser for its tool-call format (it names none of the call markers mlx-lm's "
                  "tool parsers read), so its calls could not be read; set tool_parser_type in "
                  "its tokenizer_config.json to one of mlx_lm/tool_parsers/")


def tool_support_error(tokenizer: Any, model: str) -> str | None:
    """None if ``tools`` can be used with this model, else the message that says why not."""
    if getattr(tokenizer, "has_tool_calling", False) and tokenizer.tool_parser is not None:
        return None
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, str) and "tools" in template:
        return NO_TOOL_PARSER.format(model=model)
    return NO_TOOL_SUPPORT.format(model=model)


def parse_tool_calls(tokenizer: Any, text: str,
                     tools: Sequence[dict[str, Any]] | None = None) -> list[ToolCall]:
    """The calls in one tool-call section; ValueError (with the reason) if it does not parse."""
    try:
        parsed = tokenizer.tool_parser(text, list(tools) if tools else None)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:  # parsers raise all four
        raise ValueError(f"{type(exc).__name__}: {exc}") from exc
    calls = parsed if isinstance(parsed, list) else [parsed]
    out = []
    for call in calls:
        if not isinstance(call, dict) or not isinstance(call.get("name"), str):
            raise ValueError(f"no function name in {call!r}")
        arguments = call.get("arguments", {})
        if isinstance(arguments, str):  # some parsers leave the JSON text
            arguments = json.loads(arguments)
        if not isinstance(arguments, dict):
            raise ValueError(f"the arguments are not a JSON object: {arguments!r}")
        out.append(ToolCall(name=call["name"], arguments=arguments,
                            id=str(call.get("id") or f"call_{uuid.uuid4().hex[:12]}")))
    return out


def tool_call_events(tokenizer: Any, text: str,
                     tools: Sequence[dict[str, Any]] | None = None) -> list[ToolCallEvent]:
    """Stream events for one tool-call section: one per call, or one that says it failed."""
    try:
        calls = parse_tool_calls(tokenizer, text, tools)
    except ValueError as exc:
        return [ToolCallEvent(error=f"the model's tool call could not be parsed ({exc})",
                              raw=text)]
    return [ToolCallEvent(name=c.name, arguments=c.arguments, id=c.id, raw=text) for c in calls]

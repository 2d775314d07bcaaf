"""Python functions as tools a model can call: their schemas, and calling them safely.

The schema comes from the function's signature, type hints and docstring through
pydantic (``validate_call`` + ``TypeAdapter``: no type mapper of our own); a call's
arguments are validated the same way before the function runs, and whatever goes
wrong (bad arguments, an unknown name, the function raising) becomes text for the
model rather than an exception in the cell.

>>> def get_weather(city: str) -> str:
...     '''The weather in a city.'''
...     return "sunny"
>>> tool_schema(get_weather)["function"]["parameters"]["required"]
['city']
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

from .errors import InvalidArgumentError
from .protocol import ToolCall

__all__ = ["ToolOutcome", "Toolbox", "call_tool", "tool_schema"]

NOT_CALLABLE = "tools: {value!r} is not a function; pass functions (or their names to --tools)"
UNKNOWN_TOOL = "Error: there is no tool named {name!r}; the tools are: {names}"


def tool_schema(fn: Callable[..., Any]) -> dict[str, Any]:
    """``{"type": "function", "function": {name, description, parameters}}`` for ``fn``."""
    from pydantic import TypeAdapter, validate_call

    raw = _untitled(TypeAdapter(cast(Any, validate_call(fn))).json_schema())
    raw.pop("additionalProperties", None)
    # The order OpenAI-style tool descriptions use (the template prints it as given).
    parameters: dict[str, Any] = {"type": "object", "properties": raw.pop("properties", {})}
    if raw.get("required"):
        parameters["required"] = raw.pop("required")
    parameters.update((k, v) for k, v in raw.items() if k not in ("type", "required"))
    doc = inspect.getdoc(fn) or ""
    return {"type": "function", "function": {
        "name": fn.__name__, "description": doc.split("\n\n")[0].strip(),
        "parameters": parameters}}


def _untitled(schema: Any) -> Any:
    """pydantic's schema without its generated ``title`` keys (noise in a prompt)."""
    if isinstance(schema, dict):
        return {k: _untitled(v) for k, v in schema.items()
                if not (k == "title" and isinstance(v, str))}
    if isinstance(schema, list):
        return [_untitled(v) for v in schema]
    return schema


@dataclass(frozen=True)
class ToolOutcome:
    """One call as it happened: the result as text for the model, or the error it got."""

    call: ToolCall
    result: str
    error: bool = False


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        return repr(value)


def call_tool(fn: Callable[..., Any], call: ToolCall) -> ToolOutcome:
    """Run ``fn`` with the call's arguments, validated against its signature first."""
    from pydantic import ValidationError, validate_call

    try:
        value = validate_call(fn)(**call.arguments)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'arguments'}: {e['msg']}"
                             for e in exc.errors())
        return ToolOutcome(call, f"Error: invalid arguments for {call.name}: {problems}", True)
    except Exception as exc:  # the user's function: its error goes back to the model
        return ToolOutcome(call, f"Error: {type(exc).__name__}: {exc}", True)
    return ToolOutcome(call, _as_text(value))


class Toolbox:
    """The functions of one ``mn.chat(tools=...)`` by name, and their schemas."""

    def __init__(self, tools: Sequence[Callable[..., Any]]) -> None:
        self.functions: dict[str, Callable[..., Any]] = {}
        for fn in tools:
            if not callable(fn) or not hasattr(fn, "__name__"):
                raise InvalidArgumentError(NOT_CALLABLE.format(value=fn), field="tools")
            self.functions[fn.__name__] = fn
        self.schemas = tuple(tool_schema(fn) for fn in self.functions.values())

    def call(self, call: ToolCall) -> ToolOutcome:
        fn = self.functions.get(call.name)
        if fn is None:
            return ToolOutcome(call, UNKNOWN_TOOL.format(
                name=call.name, names=", ".join(self.functions)), True)
        return call_tool(fn, call)

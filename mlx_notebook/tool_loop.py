"""The kernel side of tool calling: call the functions the model asks for, loop to an answer.

:func:`chat_with_tools` is one ``mn.chat(..., tools=[...])`` turn: each round streams
the model's reply; the calls the runner parsed run here (mlx_notebook/tools.py:
validated arguments, a raising function's error goes back as its result), each is
shown as it happens, and the results go back as ``tool`` messages until the model
answers without a call or ``max_tool_rounds`` rounds were made (said in the result).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

from .chat_history import get_history
from .errors import InvalidArgumentError
from .generation import GenerationResult
from .protocol import ChatMessage, ToolCall
from .tools import Toolbox, ToolOutcome

__all__ = ["MAX_ROUNDS_REACHED", "DECLINED", "chat_with_tools"]

MAX_ROUNDS_REACHED = ("the model still asked for tools after {n} round{s} (max_tool_rounds): "
                      "its last calls were not made")
DECLINED = "Error: the user declined this call"


def _ask(call: ToolCall) -> bool:
    import json

    answer = input(f"call {call.name}({json.dumps(call.arguments)})? [y/N] ")
    return answer.strip().lower() in ("y", "yes")


def chat_with_tools(stream: Callable[..., Any], run: Callable[..., GenerationResult],
                    message: str, *, name: str, messages: Sequence[ChatMessage],
                    tools: Sequence[Callable[..., Any]], max_tool_rounds: int,
                    confirm: bool | Callable[[ToolCall], bool], show: bool,
                    format: str | None, on_interrupt: str,  # noqa: A002
                    sys_text: str | None, **kwargs: Any) -> GenerationResult:
    if isinstance(max_tool_rounds, bool) or not isinstance(max_tool_rounds, int) \
            or max_tool_rounds < 0:
        raise InvalidArgumentError(f"max_tool_rounds must be an integer >= 0, got "
                                   f"{max_tool_rounds!r}", field="max_tool_rounds")
    toolbox = Toolbox(tools)
    ask = _ask if confirm is True else (confirm if callable(confirm) else None)
    transcript: list[ChatMessage] = [ChatMessage("user", message)]
    rounds = 0
    while True:
        gen = stream(message, model=name, messages=[*messages, *transcript[1:]],
                     tools=toolbox.schemas, **kwargs)
        view_calls: list[ToolOutcome] = []
        result = run(gen, show=show, format=format, on_interrupt=on_interrupt)
        calls = result.tool_calls
        if not calls or result.stopped:
            break
        if rounds >= max_tool_rounds:
            n = max_tool_rounds
            result = dataclasses.replace(result, error=MAX_ROUNDS_REACHED.format(
                n=n, s="" if n == 1 else "s"))
            if show:
                print(f"[tools] {result.error}")
            break
        rounds += 1
        transcript.append(ChatMessage("assistant", result.text, tool_calls=calls))
        for call in calls:
            if ask is not None and not ask(call):
                outcome = ToolOutcome(call, DECLINED, True)
            else:
                outcome = toolbox.call(call)
            view_calls.append(outcome)
            if show:
                _show_call(outcome)
            transcript.append(ChatMessage("tool", outcome.result, name=call.name,
                                          tool_call_id=call.id or None))
    transcript.append(ChatMessage("assistant", result.text, tool_calls=result.tool_calls
                                  if rounds >= max_tool_rounds and result.tool_calls else ()))
    if result.text or not result.stopped:
        get_history().record(name, message, result.text, system=sys_text)
    return dataclasses.replace(result, transcript=tuple(transcript), tool_rounds=rounds)


def _show_call(outcome: ToolOutcome) -> None:
    from . import views

    show = views.current().tool_call
    if show is not None:
        show(outcome.call.name, outcome.call.arguments, outcome.result, outcome.error)
    else:
        print(f"[tool] {outcome.call.name}({outcome.call.arguments}) -> {outcome.result}")

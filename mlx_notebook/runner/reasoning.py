"""The model's thinking apart from its answer, split at the source (the runner's text).

mlx-lm knows a model's think tags from its vocabulary (``TokenizerWrapper.has_thinking``)
and its tool-call tags from its tool parser; its ``make_text_state_machine`` matches
them on decoded text (a tag split over tokens is held back until it is whole). This
module only wraps that machine for one request: :func:`make_splitter` gives a
:class:`OutputSplitter` (or None for a model with neither), fed the answer's text.

>>> splitter = make_splitter(tokenizer, prompt_tokens)    # doctest: +SKIP
>>> splitter.feed("<think>hm</thi")                      # doctest: +SKIP
[('reasoning', 'hm')]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mlx_lm.generate import TextStateMachine, make_text_state_machine

__all__ = ["NORMAL", "REASONING", "TOOL", "OutputSplitter", "initial_state", "make_splitter",
           "template_kwargs"]

NORMAL, REASONING, TOOL = "normal", "reasoning", "tool"  # mlx-lm's state names


def initial_state(tokenizer: Any, prompt_tokens: Sequence[int]) -> str:
    """"reasoning" when the prompt already opened the thinking (R1 distills' templates end
    in ``<think>``, so the model never emits the tag), else "normal" (as mlx-lm's server)."""
    if getattr(tokenizer, "has_thinking", False):
        tokens = list(prompt_tokens)
        if tokenizer.rfind_think_start(tokens) > tokenizer.rfind_think_end(tokens):
            return REASONING
    return getattr(tokenizer, "response_initial_state", None) or NORMAL


def template_kwargs(tokenizer: Any, *, think: bool | None,
                    tools: Sequence[dict[str, Any]] | None) -> dict[str, Any]:
    """What the chat template gets beyond the messages: ``enable_thinking`` (mlx-lm's
    wrapper renames it for templates that call it ``thinking``) and ``tools``."""
    kwargs: dict[str, Any] = {}
    if think is not None:
        kwargs["enable_thinking"] = think
    if tools:
        kwargs["tools"] = list(tools)
    return kwargs


class OutputSplitter:
    """One request's text by state: thinking, answer, tool-call text (tags stripped)."""

    def __init__(self, machine: TextStateMachine, initial: str) -> None:
        self._state = machine.make_state(initial=initial)
        self.state = initial

    def feed(self, text: str) -> list[tuple[str, str]]:
        """``(state, text)`` pieces of ``text``; a possible tag's start is held back."""
        self._state, segments = TextStateMachine.split(self._state, text)
        self.state = self._state[0] or NORMAL
        return segments

    def flush(self) -> tuple[str, str]:
        """At the end: what was held back (a tag's start that never finished) and its state."""
        self._state, text, state = TextStateMachine.flush(self._state)
        return state or NORMAL, text


def make_splitter(tokenizer: Any, prompt_tokens: Sequence[int]) -> OutputSplitter | None:
    """A splitter for a chat answer of this model, or None if it neither thinks nor calls tools."""
    if not (getattr(tokenizer, "has_thinking", False)
            or getattr(tokenizer, "has_tool_calling", False)):
        return None
    return OutputSplitter(make_text_state_machine(tokenizer), initial_state(tokenizer, prompt_tokens))

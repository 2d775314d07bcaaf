"""A generation while it runs (:class:`Generation`) and what it leaves (:class:`GenerationResult`).

They live together because the result is made from what the running generation
saw: the runner's done event where there is one, else what the kernel measured
itself (a stopped or failed stream never sends one): the tokens of the chunks it
read, the prompt's length (from a prefill event, or one tokenize call at the
stop) and the speed between the first chunk and the stop.

>>> with mn.stream("Count to five") as g:   # doctest: +SKIP
...     for piece in g: print(piece, end="")
>>> g.result.completion_tokens, g.result.footer()   # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from .errors import MLXNotebookError
from .protocol import (
    ChatMessage,
    ChunkEvent,
    CompletionRequest,
    DoneEvent,
    SamplingOptions,
    ToolCall,
)

if TYPE_CHECKING:
    from .control.connection import RunnerConnection
    from .control.streams import CompletionStream
    from .structured import OutputSpec

__all__ = ["FinishReason", "Generation", "GenerationResult"]

FinishReason = Literal["stop", "length", "cancel", "error"]


@dataclass(frozen=True)
class GenerationResult:
    """One finished (or stopped) generation: the text and how it was made."""

    text: str
    model: str
    finish_reason: FinishReason
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    time_to_first_token: float = 0.0
    tokens_per_second: float = 0.0
    duration: float = 0.0
    options: SamplingOptions = field(default_factory=SamplingOptions)
    seed: int | None = None
    stopped: bool = False
    name: str = ""
    request_id: str = ""
    prompt: str = ""  # the prompt (or chat message) as sent, after interpolation
    # Structured output (schema=, json=, choices=, regex=): the parsed, validated answer
    # (a pydantic instance for a model class); None with ``error`` saying why (a cut answer).
    value: Any = None
    error: str = ""  # why there is no value, or why the request failed (a row of mn.map)
    # A model that thinks: its thinking apart from ``text`` (the answer only).
    thinking: str = ""
    thinking_tokens: int = 0
    stopped_thinking: bool = False  # the budget ran out inside the thinking
    # Tool calls (mn.chat(tools=...)): this answer's calls, and the whole turn's messages
    # (assistant calls, tool results, the final answer) with every round's result.
    tool_calls: tuple[ToolCall, ...] = ()
    transcript: tuple[ChatMessage, ...] = ()
    tool_rounds: int = 0
    # A runner with a draft model (speculative decoding): guesses checked and kept.
    draft_tokens: int = 0
    draft_accepted: int = 0

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        text = self.text if len(self.text) <= 60 else self.text[:57] + "..."
        return (f"GenerationResult(text={text!r}, model={self.model!r}, "
                f"finish_reason={self.finish_reason!r}, tokens={self.completion_tokens}, "
                f"tokens_per_second={self.tokens_per_second:.1f}"
                f"{', stopped=True' if self.stopped else ''}"
                f"{f', value={self.value!r}' if self.value is not None else ''}"
                f"{f', error={self.error!r}' if self.error else ''})")

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(f"{self.text}\n{self.footer()}")

    def footer(self) -> str:
        """``12 tokens · prompt 9 · TTFT 0.31 s · 9.8 tok/s · 1.6 s · stop``."""
        parts = [f"{self.completion_tokens} tokens", f"prompt {self.prompt_tokens}"]
        if self.thinking_tokens:
            parts[0] = (f"{self.thinking_tokens} thinking + "
                        f"{self.completion_tokens - self.thinking_tokens} answer tokens")
        if self.cached_tokens:
            parts[-1] += f" ({self.cached_tokens} cached)"
        parts += [f"TTFT {self.time_to_first_token:.2f} s",
                  f"{self.tokens_per_second:.1f} tok/s", f"{self.duration:.1f} s",
                  self.finish_reason]
        if self.seed is not None:
            parts.append(f"seed {self.seed}")
        if self.stopped_thinking:
            parts.append("stopped while thinking")
        if self.draft_tokens:
            parts.append(f"draft {self.draft_accepted}/{self.draft_tokens} accepted "
                         f"({self.draft_accepted / self.draft_tokens:.0%})")
        if self.tool_rounds:
            parts.append(f"{self.tool_rounds} tool round{'s' if self.tool_rounds > 1 else ''}")
        line = " · ".join(parts)
        return f"[stopped] {line}" if self.stopped else line


class Generation:
    """A running generation: iterate it for text pieces, then read :attr:`result`.

    ``on_end`` is called once with the result (the API marks the runner as used).
    """

    def __init__(self, client: RunnerConnection, request: CompletionRequest, *,
                 on_end: Callable[[GenerationResult], None] | None = None,
                 output: OutputSpec | None = None) -> None:
        self.client = client
        self.request = request
        self.output = output  # how result.value is read from the text (structured output)
        self.name = client.name
        self.result: GenerationResult | None = None
        # Called with (tokens read, prompt tokens) while the runner reads a long prompt.
        self.on_prefill: Callable[[int, int], None] | None = None
        # Called with each piece of the model's thinking (iterating yields the answer only).
        self.on_thinking: Callable[[str], None] | None = None
        self._chunks: list[ChunkEvent] = []  # every chunk read: its text and its tokens
        self._t0 = time.perf_counter()
        self._first: float | None = None
        self._stopped = False
        self._failed = False
        self._on_end = on_end
        self._stream: CompletionStream = client.stream(request)
        # A generation dropped unread must not keep its runner busy (never idle-unloaded):
        # closing the stream ends the request on the runner and the busy count.
        self._release = weakref.finalize(self, self._stream.close)

    @property
    def text(self) -> str:
        """The answer so far (a thinking model's answer starts after its think block)."""
        text = "".join(c.content for c in self._chunks if not c.thinking)
        return text.lstrip() if self.thinking else text

    @property
    def thinking(self) -> str:
        return "".join(c.content for c in self._chunks if c.thinking).strip()

    @property
    def tool_calls(self) -> tuple[ToolCall, ...]:
        """The calls the runner parsed so far (a call it could not parse is not here)."""
        return tuple(e.call for e in self._stream.tool_calls if not e.error)

    def _prefill(self, processed: int, total: int) -> None:
        if self.on_prefill is not None:
            self.on_prefill(processed, total)

    def __iter__(self) -> Iterator[str]:
        # Hooked only while reading: the stream must not keep this object alive (finalizer).
        self._stream.on_prefill = self._prefill
        try:
            for event in self._stream:
                if self._first is None:
                    self._first = time.perf_counter() - self._t0
                self._chunks.append(event)
                if event.thinking:
                    if event.content and self.on_thinking is not None:
                        self.on_thinking(event.content)
                elif event.content:
                    yield event.content
        except (KeyboardInterrupt, GeneratorExit):
            self.cancel()
            raise
        except MLXNotebookError:
            self._failed = True  # the runner is gone or broke: ask it nothing more
            raise
        finally:
            self._stream.on_prefill = None
        self._finish()

    def cancel(self) -> None:
        """Stop on the runner (within one decode step); the partial text is kept."""
        if self.result is not None:
            return
        self._stopped = True
        try:
            self._stream.cancel()
        finally:
            self._finish()

    def close(self) -> None:
        """End it (cancelled on the runner if it was still running) and free the runner."""
        if self.result is None:
            self.cancel()
        self._release()

    def __enter__(self) -> Generation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _finish(self) -> None:
        if self.result is not None:
            return
        self.result = self._result(self._stream.result, time.perf_counter() - self._t0)
        if self._stopped and not self._failed and not self.result.prompt_tokens:
            # The runner's final event was not read (a stop cuts the stream): count the prompt.
            with contextlib.suppress(MLXNotebookError):
                self.result = dataclasses.replace(self.result,
                                                  prompt_tokens=self._count_prompt())
        if self._on_end is not None:
            self._on_end(self.result)

    def _count_prompt(self) -> int:
        """The prompt's tokens: from a prefill event, else one tokenize call (as sent)."""
        prefill = self._stream.prefill
        if prefill is not None:
            return prefill[1]
        request = self.request
        if request.messages is not None:
            return len(self.client.tokenize(messages=list(request.messages)).tokens)
        return len(self.client.tokenize(request.prompt or "").tokens)

    def _result(self, done: DoneEvent | None, wall: float) -> GenerationResult:
        """From the runner's done event (None, or made up, when a stop cut it) and our clock."""
        opts = self.request.options
        counted = sum(len(c.tokens) for c in self._chunks)
        n = done.completion_tokens if done else 0
        ttft = (done.time_to_first_token if done and done.time_to_first_token else self._first) or 0.0
        tps = 0.0
        if n >= counted and done and done.eval_duration > 0 and n > 1:
            tps = (n - 1) / done.eval_duration
        elif counted > 1 and wall > ttft:
            # No final event: the tokens read over the time from the first one to the stop.
            n = counted
            tps = (n - 1) / max(wall - ttft, 1e-9)
        n = max(n, counted)
        reason: FinishReason = "cancel" if self._stopped else (done.done_reason if done else "cancel")
        request = self.request
        value, error = self.output.parse(self.text, reason) if self.output else (None, "")
        return GenerationResult(
            text=self.text, model=self.client.spec or self.name,
            finish_reason=reason, prompt_tokens=done.prompt_tokens if done else 0,
            completion_tokens=n, cached_tokens=done.cached_tokens if done else 0,
            time_to_first_token=ttft, tokens_per_second=tps, duration=wall, options=opts,
            seed=opts.seed, stopped=self._stopped, name=self.name,
            request_id=(done.request_id if done else "") or self._stream.request_id,
            prompt=request.prompt if request.prompt is not None
            else request.messages[-1].content if request.messages else "",
            value=value, error=error, thinking=self.thinking,
            thinking_tokens=done.thinking_tokens if done else 0,
            stopped_thinking=bool(done and done.in_thinking and reason == "length"),
            tool_calls=self.tool_calls,
            draft_tokens=done.draft_tokens if done else 0,
            draft_accepted=done.draft_accepted if done else 0,
        )

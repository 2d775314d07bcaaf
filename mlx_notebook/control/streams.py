"""Streamed completions: one event folder, read by a sync and an async loop.

:func:`fold_event` is the one place that says what each stream event means
(a chunk to hand on, prompt progress, the end, an error), so the two readers
cannot drift apart. A stream reaches its connection only through
:class:`StreamSource`, a small seam of public methods.

Closing a :class:`CompletionStream` (or leaving its ``with`` block early) cancels
generation on the runner; ``cancel()`` also sends an explicit cancel, and is safe
from interrupt handlers and from another thread (a Stop button).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from types import TracebackType
from typing import Protocol

import httpx2

from ..errors import GenerationError, MLXNotebookError, ProtocolError, RunnerExitedError
from ..protocol import (
    ENDPOINTS,
    ChunkEvent,
    CompletionRequest,
    DoneEvent,
    ErrorEvent,
    Event,
    KeepAliveEvent,
    ProgressEvent,
    ToolCallEvent,
    decode_event,
)

__all__ = ["CompletionStream", "StreamSource", "StreamState", "astream_events", "fold_event"]

_WHAT = "while streaming a completion"


class StreamSource(Protocol):
    """What a stream needs of its connection."""

    name: str

    @property
    def base_url(self) -> str: ...
    @property
    def headers(self) -> dict[str, str]: ...

    def translating(self, what: str) -> AbstractContextManager[None]: ...
    def explain_error(self, exc: Exception, what: str) -> MLXNotebookError: ...
    def translate(self, exc: Exception, what: str) -> MLXNotebookError: ...
    def gone(self, what: str, *, wait: bool) -> MLXNotebookError | None: ...
    def check_response(self, response: httpx2.Response, what: str) -> None: ...
    def require_http(self) -> httpx2.Client: ...
    def stream_timeout(self) -> httpx2.Timeout: ...
    def stalled(self, what: str) -> MLXNotebookError:
        """The error for a stream that stayed silent past its read timeout."""
    def count_stream(self, delta: int) -> None: ...
    def touch(self) -> None: ...
    def cancel(self, request_id: str) -> bool: ...


@dataclass
class StreamState:
    """What a stream has seen so far; :func:`fold_event` updates it."""

    runner: str
    text: str = ""
    prefill: tuple[int, int] | None = None  # (tokens read, prompt tokens) of a long prompt
    result: DoneEvent | None = None
    on_prefill: Callable[[int, int], None] | None = None
    thinking: str = ""  # the model's thinking, apart from ``text`` (the answer)
    tool_calls: list[ToolCallEvent] = field(default_factory=list)  # as the runner parsed them


def ndjson_lines(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """Lines of an NDJSON byte stream, as bytes: no text decoding layer per line
    (``json.loads`` reads UTF-8 bytes itself), a line split across chunks kept whole."""
    rest = b""
    for chunk in chunks:
        if rest:
            chunk = rest + chunk
        *lines, rest = chunk.split(b"\n")
        yield from lines
    if rest:
        yield rest


def decode_line(runner: str, line: str | bytes) -> Event | None:
    """One NDJSON line as an event; None for a blank line; ProtocolError for garbage."""
    if not line.strip():
        return None
    try:
        return decode_event(line)
    except (ValueError, KeyError, TypeError) as exc:
        raise ProtocolError(
            f"runner {runner!r} sent a line that is not a stream event: {line[:200]!r}"
        ) from exc


def fold_event(state: StreamState, event: Event) -> ChunkEvent | None:
    """Apply one event: a chunk is returned to hand on, anything else returns None.

    The done event lands in ``state.result`` (the stream has ended); an error event,
    or a done event that says "error", raises :class:`GenerationError`.
    """
    if isinstance(event, ChunkEvent):
        if event.thinking:
            state.thinking += event.content
        else:
            state.text += event.content
        return event
    if isinstance(event, ToolCallEvent):  # handed on as well: the kernel runs the tool
        state.tool_calls.append(event)
        return None
    if isinstance(event, KeepAliveEvent):  # the runner's worker is alive; nothing to show
        return None
    if isinstance(event, ProgressEvent):
        state.prefill = (event.processed, event.total)
        if state.on_prefill is not None:
            state.on_prefill(event.processed, event.total)
        return None
    if isinstance(event, ErrorEvent):
        raise GenerationError(f"runner {state.runner!r}: {event.error}")
    state.result = event
    if event.done_reason == "error":
        raise GenerationError(f"runner {state.runner!r}: {event.error or 'generation failed'}")
    return None


def _ended_early(source: StreamSource) -> MLXNotebookError:
    return source.gone(_WHAT, wait=True) or ProtocolError(
        f"runner {source.name!r} ended the stream without a done event")


class CompletionStream:
    """Iterate for :class:`~mlx_notebook.protocol.ChunkEvent`; ``result`` holds the DoneEvent.

    ::

        with client.stream(request) as stream:
            for chunk in stream:
                print(chunk.content, end="")
        print(stream.result.completion_tokens)
    """

    def __init__(self, source: StreamSource, request_id: str, response: httpx2.Response) -> None:
        self.request_id = request_id
        self._state = StreamState(source.name)
        self._source = source
        self._response = response
        self._lock = threading.Lock()
        self._finished = threading.Event()
        self._cancelled = False
        self._iterating: int | None = None  # thread id while a thread reads the stream
        self._lines = ndjson_lines(response.iter_bytes())
        source.count_stream(1)

    @property
    def text(self) -> str:
        return self._state.text

    @property
    def result(self) -> DoneEvent | None:
        return self._state.result

    @property
    def tool_calls(self) -> list[ToolCallEvent]:
        """The tool calls the runner parsed (and any it could not: ``error`` set)."""
        return self._state.tool_calls

    @property
    def prefill(self) -> tuple[int, int] | None:
        return self._state.prefill

    @property
    def on_prefill(self) -> Callable[[int, int], None] | None:
        """Called with (tokens read, prompt tokens) while the runner reads a long prompt."""
        return self._state.on_prefill

    @on_prefill.setter
    def on_prefill(self, callback: Callable[[int, int], None] | None) -> None:
        self._state.on_prefill = callback

    @property
    def finished(self) -> bool:
        return self._finished.is_set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def __iter__(self) -> Iterator[ChunkEvent]:
        return self

    def __next__(self) -> ChunkEvent:
        if self.finished:
            raise StopIteration
        self._iterating = threading.get_ident()
        try:
            try:  # the boundary of translating(), without a context manager per token
                return self._next_chunk()
            except (httpx2.HTTPError, httpx2.StreamError, MLXNotebookError) as raw:
                exc = self._source.explain_error(raw, _WHAT)
                if exc is raw:
                    raise
                raise exc from raw
        except StopIteration:
            self._finish()
            raise
        except MLXNotebookError as exc:
            # A read broken by our own cancel() from another thread is a clean end.
            if self._cancelled and not isinstance(exc, (RunnerExitedError, GenerationError)):
                self._synthesize_cancel()
                self._finish()
                raise StopIteration from None
            self._finish()
            raise
        except BaseException:
            self.cancel()  # KeyboardInterrupt mid-read: stop the runner's work too
            raise
        finally:
            self._iterating = None

    def _next_chunk(self) -> ChunkEvent:
        while True:
            try:
                line = next(self._lines)
            except httpx2.ReadTimeout as exc:  # silent past the limit: keep-alives stopped too
                raise self._source.stalled(_WHAT) from exc
            except StopIteration:
                if self._cancelled:
                    self._synthesize_cancel()
                    raise
                raise _ended_early(self._source) from None
            event = decode_line(self._source.name, line)
            if event is None:
                continue
            self._source.touch()
            chunk = fold_event(self._state, event)
            if chunk is not None:
                return chunk
            if self._state.result is not None:
                raise StopIteration

    def _synthesize_cancel(self) -> None:
        if self._state.result is None:
            self._state.result = DoneEvent(done_reason="cancel", request_id=self.request_id)

    def _finish(self) -> None:
        with self._lock:
            if self._finished.is_set():
                return
            self._finished.set()
            self._source.count_stream(-1)
        self._response.close()

    def cancel(self) -> None:
        """Stop generation on the runner and end the stream. Safe twice, and from handlers."""
        with self._lock:
            if self._finished.is_set() or self._cancelled:
                first = False
            else:
                first = self._cancelled = True
        if first:
            # A runner that is gone or dying cannot cancel: closing the stream is enough.
            with contextlib.suppress(MLXNotebookError):
                self._source.cancel(self.request_id)
        other = self._iterating is not None and self._iterating != threading.get_ident()
        if other:
            # Let the reading thread see the runner's final "cancel" event, briefly.
            self._finished.wait(2.0)
        if not self.finished:
            self._synthesize_cancel()
        self._finish()

    def close(self) -> None:
        """Close the stream; if it had not ended, the runner cancels the request."""
        if not self.finished and self._state.result is None:
            self._cancelled = True
            self._synthesize_cancel()
        self._finish()

    def __enter__(self) -> CompletionStream:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is not None and not self.finished:
            self.cancel()
        else:
            self.close()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the stream has ended (read by another thread); True if it has."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.finished:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return False
            self._finished.wait(0.05 if remaining is None else min(remaining, 0.05))
        return True


async def astream_events(source: StreamSource, request: CompletionRequest,
                         on_done: Callable[[DoneEvent], None] | None) -> AsyncIterator[ChunkEvent]:
    """The async reader: the same events, folded by :func:`fold_event`, on the event loop."""
    source.require_http()
    method, path = ENDPOINTS["completion"]
    state = StreamState(source.name)
    source.count_stream(1)
    try:
        async with httpx2.AsyncClient(base_url=source.base_url, headers=source.headers,
                                      timeout=source.stream_timeout(), trust_env=False) as http:
            try:
                async with http.stream(method, path, json=request.to_json()) as response:
                    if response.status_code >= 400:
                        await response.aread()
                        with source.translating("while starting a completion"):
                            source.check_response(response, "the completion request")
                    async for line in response.aiter_lines():
                        event = decode_line(source.name, line)
                        if event is None:
                            continue
                        source.touch()
                        try:
                            chunk = fold_event(state, event)
                        except GenerationError as exc:
                            if state.result is not None and on_done is not None:
                                on_done(state.result)  # a done event that says "error"
                            raise await asyncio.to_thread(source.explain_error, exc, _WHAT) from None
                        if chunk is not None:
                            yield chunk
                        elif state.result is not None:
                            if on_done is not None:
                                on_done(state.result)
                            return
            except httpx2.ReadTimeout as exc:
                raise await asyncio.to_thread(source.explain_error, source.stalled(_WHAT), _WHAT) from exc
            except (httpx2.HTTPError, httpx2.StreamError) as exc:
                # Translating may wait a moment for the process to exit: not on the loop.
                raise await asyncio.to_thread(source.explain_error, exc, _WHAT) from exc
        raise await asyncio.to_thread(functools.partial(_ended_early, source))
    finally:
        source.count_stream(-1)

"""CompletionStream: one streamed completion from a runner, as an iterator of chunks.

Kept apart from the HTTP requests in ``connection.py``; re-exported from ``client.py``.
Closing the stream (or leaving its ``with`` block early) cancels generation on the
runner; ``cancel()`` also sends an explicit cancel, and is safe from interrupt
handlers and from another thread (a Stop button).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from types import TracebackType
from typing import TYPE_CHECKING

import httpx2

from ..errors import GenerationError, MLXNotebookError, ProtocolError, RunnerExitedError
from ..protocol import (
    ENDPOINTS,
    ChunkEvent,
    CompletionRequest,
    DoneEvent,
    ErrorEvent,
    Event,
    ProgressEvent,
    decode_event,
)

if TYPE_CHECKING:
    from .connection import RunnerConnection


def decode_line(client: RunnerConnection, line: str) -> Event | None:
    """One NDJSON line as an event; None for a blank line; ProtocolError for garbage."""
    if not line.strip():
        return None
    try:
        return decode_event(line)
    except (ValueError, KeyError, TypeError) as exc:
        raise ProtocolError(
            f"runner {client.name!r} sent a line that is not a stream event: {line[:200]!r}"
        ) from exc


class CompletionStream:
    """Iterate for :class:`~mlx_notebook.protocol.ChunkEvent`; ``result`` holds the DoneEvent.

    ::

        with client.stream(request) as stream:
            for chunk in stream:
                print(chunk.content, end="")
        print(stream.result.completion_tokens)
    """

    def __init__(self, client: RunnerConnection, request_id: str, response: httpx2.Response) -> None:
        self.request_id = request_id
        self.result: DoneEvent | None = None
        # (tokens read, prompt tokens) while the runner reads a long prompt; a callback too
        self.prefill: tuple[int, int] | None = None
        self.on_prefill: Callable[[int, int], None] | None = None
        self.text = ""
        self._client = client
        self._response = response
        self._lock = threading.Lock()
        self._finished = threading.Event()
        self._cancelled = False
        self._iterating: int | None = None  # thread id while a thread reads the stream
        self._lines = response.iter_lines()
        client._count_stream(1)

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
            return self._next_chunk()
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
        what = "while streaming a completion"
        while True:
            try:
                with self._client._boundary(what):
                    line = next(self._lines)
            except StopIteration:
                if self._cancelled:
                    self._synthesize_cancel()
                    raise
                gone = self._client._vanished(what, wait=True)
                if gone is not None:
                    raise gone from None
                raise ProtocolError(
                    f"runner {self._client.name!r} ended the stream without a done event") from None
            event = decode_line(self._client, line)
            if event is None:
                continue
            self._client.touch()
            if isinstance(event, ChunkEvent):
                self.text += event.content
                return event
            if isinstance(event, ProgressEvent):
                self.prefill = (event.processed, event.total)
                if self.on_prefill is not None:
                    self.on_prefill(event.processed, event.total)
                continue
            if isinstance(event, ErrorEvent):
                raise GenerationError(f"runner {self._client.name!r}: {event.error}")
            self.result = event
            if event.done_reason == "error":
                raise GenerationError(
                    f"runner {self._client.name!r}: {event.error or 'generation failed'}")
            raise StopIteration

    def _synthesize_cancel(self) -> None:
        if self.result is None:
            self.result = DoneEvent(done_reason="cancel", request_id=self.request_id)

    def _finish(self) -> None:
        with self._lock:
            if self._finished.is_set():
                return
            self._finished.set()
            self._client._count_stream(-1)
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
                self._client.cancel(self.request_id)
        other = self._iterating is not None and self._iterating != threading.get_ident()
        if other:
            # Let the reading thread see the runner's final "cancel" event, briefly.
            self._finished.wait(2.0)
        if not self.finished:
            self._synthesize_cancel()
        self._finish()

    def close(self) -> None:
        """Close the stream; if it had not ended, the runner cancels the request."""
        if not self.finished and self.result is None:
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


async def astream_events(client: RunnerConnection, request: CompletionRequest,
                         on_done: Callable[[DoneEvent], None] | None) -> AsyncIterator[ChunkEvent]:
    """The body of :meth:`RunnerConnection.astream`; errors go through ``client._translate``."""
    client._require_http()
    method, path = ENDPOINTS["completion"]
    timeout = httpx2.Timeout(30.0, connect=5.0, read=client.stream_read_timeout)
    what = "while streaming a completion"
    client._count_stream(1)
    try:
        async with httpx2.AsyncClient(base_url=client.base_url, headers=client.headers,
                                      timeout=timeout, trust_env=False) as http:
            try:
                async with http.stream(method, path, json=request.to_json()) as response:
                    if response.status_code >= 400:
                        await response.aread()
                        client._check_response(response, "the completion request")
                    async for line in response.aiter_lines():
                        event = decode_line(client, line)
                        if event is None:
                            continue
                        client.touch()
                        if isinstance(event, ChunkEvent):
                            yield event
                        elif isinstance(event, ProgressEvent):
                            continue  # the async road shows no prefill progress
                        elif isinstance(event, ErrorEvent):
                            raise GenerationError(f"runner {client.name!r}: {event.error}")
                        else:
                            if on_done is not None:
                                on_done(event)
                            if event.done_reason == "error":
                                raise GenerationError(f"runner {client.name!r}: {event.error}")
                            return
            except (httpx2.HTTPError, httpx2.StreamError) as exc:
                # Translating may wait a moment for the process to exit: not on the loop.
                raise await asyncio.to_thread(client._translate, exc, what) from exc
        gone = await asyncio.to_thread(functools.partial(client._vanished, what, wait=True))
        if gone is not None:
            raise gone
        raise ProtocolError(f"runner {client.name!r} ended the stream without a done event")
    finally:
        client._count_stream(-1)

"""RunnerConnection: the HTTP side of talking to one runner, whoever owns its process.

:class:`~mlx_notebook.control.client.RunnerClient` (a runner subprocess we start and stop)
and :class:`~mlx_notebook.control.remote.RemoteRunner` (a runner someone started by hand,
maybe on another machine) share everything here: requests, streaming, and the one
boundary where httpx errors become :mod:`mlx_notebook.errors` (cause kept). They
differ only in how a runner that went away is recognised and described, which
they say through :meth:`RunnerConnection._vanished` and :meth:`RunnerConnection.describe`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import secrets
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

import httpx2

from .. import protocol
from ..errors import (
    GenerationError,
    MLXNotebookError,
    ProtocolError,
    RunnerUnavailableError,
)
from ..protocol import ChunkEvent, CompletionRequest, DoneEvent, Status
from .streams import CompletionStream, astream_events

__all__ = ["RunnerConnection", "REQUEST_TIMEOUT", "STATUS_TIMEOUT"]

REQUEST_TIMEOUT = httpx2.Timeout(30.0, connect=5.0)
STATUS_TIMEOUT = httpx2.Timeout(3.0, connect=2.0)


def _as_request(request: CompletionRequest | str) -> CompletionRequest:
    if isinstance(request, str):
        request = CompletionRequest(prompt=request)
    if request.request_id is None:
        request = dataclasses.replace(request, request_id=secrets.token_hex(8))
    return request


class LoadWatch:
    """When a loading runner last moved: a load times out only when it stops moving.

    ``see(status)`` reports each new (state, progress, message) to ``on_progress``.
    """

    def __init__(self, on_progress: Callable[[Status], None] | None = None) -> None:
        self.on_progress = on_progress
        self.last: Status | None = None
        self._key: tuple[Any, ...] | None = None
        self._changed = time.monotonic()

    def see(self, status: Status) -> None:
        self.last = status
        key = (status.state, round(status.progress, 1), status.progress_message)
        if key != self._key:
            self._key, self._changed = key, time.monotonic()
            if self.on_progress is not None:
                self.on_progress(status)

    def stalled(self, timeout: float) -> bool:
        return time.monotonic() - self._changed > timeout

    def describe_last(self) -> str:
        """``loading 40% reading weights``, or ``no status``."""
        if self.last is None:
            return "no status"
        s = self.last
        return f"{s.state} {s.progress:.0f}% {s.progress_message}".strip()


class RunnerConnection:
    """Requests to one runner over HTTP; subclasses decide who owns the process."""

    remote = False  # a runner this kernel did not start (never stopped, evicted or reaped)

    def __init__(self, spec: str, *, name: str | None = None, token: str,
                 stream_read_timeout: float | None = None) -> None:
        self.spec = spec
        self.name = name or spec
        self.stream_read_timeout = stream_read_timeout
        self.context_length: int | None = None
        self.port: int | None = None
        self.host = "127.0.0.1"
        self.started_at = 0.0
        self.last_used = 0.0
        self.last_status: Status | None = None
        self.active_streams = 0
        self._token = token
        self._http: httpx2.Client | None = None
        self._lock = threading.Lock()
        self._closed = False

    @property
    def pid(self) -> int | None:
        return None

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._token}"}

    def _open_http(self) -> None:
        self._http = httpx2.Client(base_url=self.base_url, headers=self.headers,
                                   timeout=REQUEST_TIMEOUT, trust_env=False)

    @property
    def closed(self) -> bool:
        return self._closed

    # ------------------------------------------------------------ hooks for owners

    @property
    def has_exited(self) -> bool:
        """True once we know the runner process is gone (only an owner can know)."""
        return False

    def _wait_exit(self, timeout: float) -> bool:
        return False

    def exit_description(self) -> str:
        """How the runner process ended, as far as this side can tell."""
        return "unknown (not a process of this kernel)"

    def _vanished(self, what: str, *, wait: bool) -> MLXNotebookError | None:
        """The error for a runner that is gone, or None if it may still be there.

        ``wait``: the connection broke, so it is worth waiting a moment to find out.
        """
        return None

    def describe(self) -> str:
        """How messages name this runner: ``runner 'demo' (pid 42) at http://...``."""
        return f"runner {self.name!r} (pid {self.pid}) at {self.base_url}"

    def _unauthorized_hint(self) -> str:
        return "token mismatch: is this our runner?"

    # ------------------------------------------------------------ the error boundary

    @contextlib.contextmanager
    def _boundary(self, what: str) -> Iterator[None]:
        """The one place where httpx errors become mlx_notebook errors (cause kept)."""
        try:
            yield
        except (httpx2.HTTPError, httpx2.StreamError) as exc:
            raise self._translate(exc, what) from exc

    def _translate(self, exc: Exception, what: str) -> MLXNotebookError:
        broken = isinstance(exc, (httpx2.TransportError, httpx2.StreamError))
        gone = self._vanished(what, wait=broken and not isinstance(exc, httpx2.TimeoutException))
        if gone is not None:
            return gone
        where = self.describe()
        if isinstance(exc, httpx2.TimeoutException):
            return RunnerUnavailableError(f"{where} did not answer in time {what}: {exc!r}")
        if isinstance(exc, httpx2.ConnectError):
            return RunnerUnavailableError(f"cannot connect to {where} {what}: {exc}")
        if isinstance(exc, (httpx2.RemoteProtocolError, httpx2.DecodingError)):
            return ProtocolError(f"{where} broke the HTTP protocol {what}: {exc}")
        return RunnerUnavailableError(f"{where} failed {what}: {exc!r}")

    def _check_response(self, response: httpx2.Response, what: str) -> None:
        """Raise the error a 4xx/5xx answer means, with the runner's own message."""
        code = response.status_code
        if code < 400:
            return
        try:
            body = response.json()
            detail = str(body.get("error", body))
            if body.get("field"):
                detail += f" (field {body['field']})"
        except (ValueError, AttributeError):
            detail = response.text[:300]
        message = f"runner {self.name!r} answered {what} with HTTP {code}: {detail}"
        if code == 401:
            raise ProtocolError(f"{message} ({self._unauthorized_hint()})")
        if code in (404, 405):
            raise ProtocolError(message + " (does the runner speak this protocol version?)")
        if code in (409, 503):
            raise RunnerUnavailableError(message)
        raise GenerationError(message)

    def _not_open_error(self) -> MLXNotebookError:
        state = "closed" if self._closed else "not started"
        return RunnerUnavailableError(f"runner {self.name!r} is {state}")

    def _require_http(self) -> httpx2.Client:
        gone = self._vanished("earlier", wait=False)
        if gone is not None:
            raise gone
        if self._http is None or self._closed:
            raise self._not_open_error()
        return self._http

    def _call(self, endpoint: str, body: dict[str, Any] | None = None,
              timeout: httpx2.Timeout | None = None) -> dict[str, Any]:
        method, path = protocol.ENDPOINTS[endpoint]
        http = self._require_http()
        what = f"during {endpoint}"
        with self._boundary(what):
            response = http.request(method, path, json=body, timeout=timeout or REQUEST_TIMEOUT)
        self._check_response(response, endpoint)
        try:
            data = response.json()
        except ValueError as exc:
            raise ProtocolError(f"runner {self.name!r} sent non-JSON for {endpoint}: "
                                f"{response.text[:200]!r}") from exc
        if not isinstance(data, dict):
            raise ProtocolError(f"runner {self.name!r} sent {data!r} for {endpoint}")
        return data

    # ------------------------------------------------------------ requests

    def status(self) -> Status:
        data = self._call("status", timeout=STATUS_TIMEOUT)
        try:
            status = Status.from_json(data)
        except TypeError as exc:
            raise ProtocolError(f"runner {self.name!r} sent a malformed status: {data!r}") from exc
        self.last_status = status
        return status

    def touch(self) -> None:
        self.last_used = time.time()

    def _count_stream(self, delta: int) -> None:
        """Streams in flight: a runner with any is busy and never evicted."""
        with self._lock:
            self.active_streams += delta

    def stream(self, request: CompletionRequest | str) -> CompletionStream:
        """Start a completion; iterate the result for ChunkEvents, then read ``.result``."""
        request = _as_request(request)
        http = self._require_http()
        method, path = protocol.ENDPOINTS["completion"]
        timeout = httpx2.Timeout(30.0, connect=5.0, read=self.stream_read_timeout)
        built = http.build_request(method, path, json=request.to_json(), timeout=timeout)
        with self._boundary("while starting a completion"):
            response = http.send(built, stream=True)
            if response.status_code >= 400:
                response.read()
                response.close()
        self._check_response(response, "the completion request")
        self.touch()
        return CompletionStream(self, request.request_id or "", response)

    def complete(self, request: CompletionRequest | str) -> tuple[str, DoneEvent]:
        """Run a completion to the end: ``(text, done)``."""
        with self.stream(request) as stream:
            for _ in stream:
                pass
        assert stream.result is not None
        return stream.text, stream.result

    def astream(
        self, request: CompletionRequest | str, *, on_done: Callable[[DoneEvent], None] | None = None,
    ) -> AsyncIterator[ChunkEvent]:
        """Async twin of :meth:`stream` for background work on the kernel's event loop.

        ``async for chunk in client.astream(...)``; ``on_done`` gets the final DoneEvent.
        Cancelling the consuming task closes the stream, which cancels on the runner.
        """
        return astream_events(self, _as_request(request), on_done)

    def tokenize(self, text: str | None = None, *,
                 messages: Sequence[protocol.ChatMessage | dict[str, str]] | None = None,
                 ) -> protocol.TokenizeResponse:
        msgs = None
        if messages is not None:
            msgs = tuple(m if isinstance(m, protocol.ChatMessage) else protocol.ChatMessage(**m)
                         for m in messages)
        data = self._call("tokenize", protocol.TokenizeRequest(text=text, messages=msgs).to_json())
        self.touch()
        try:
            return protocol.TokenizeResponse(tokens=list(data["tokens"]),
                                             pieces=list(data.get("pieces", [])),
                                             text=str(data.get("text", text or "")))
        except (KeyError, TypeError) as exc:
            raise ProtocolError(f"runner {self.name!r} sent a malformed tokenize answer") from exc

    def detokenize(self, tokens: Sequence[int]) -> str:
        data = self._call("detokenize", protocol.DetokenizeRequest(tokens=list(tokens)).to_json())
        self.touch()
        return str(data.get("text", ""))

    def free_memory(self) -> protocol.FreeResponse:
        """Drop the runner's reusable prompt cache and MLX's buffer cache (keeps the model)."""
        data = self._call("free", {}, timeout=REQUEST_TIMEOUT)
        return protocol.FreeResponse.from_json(data)

    def cancel(self, request_id: str) -> bool:
        """Ask the runner to stop one request; True if it was running."""
        data = self._call("cancel", protocol.CancelRequest(request_id=request_id).to_json(),
                          timeout=STATUS_TIMEOUT)
        return bool(data.get("cancelled", False))


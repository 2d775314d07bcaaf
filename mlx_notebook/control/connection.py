"""RunnerConnection: the HTTP side of one runner, and the owner of its processes beside it.

As jupyter_client keeps the kernel connection apart from who provisions the
kernel, a connection is one object for every kind of runner, composed with a
:class:`RunnerOwner` that knows what only an owner can know: how the runner
starts, whether its processes are still there, how their end is told, how it
stops. The owners are :class:`~.client.LocalProcess` (one subprocess),
:class:`~.group.RankGroup` (the ranks of a sharded model) and
:class:`~.remote.RemoteOwner` (nobody: a runner started by hand).

This module is also the one boundary where httpx errors become
:mod:`mlx_notebook.errors` (cause kept), explained by the owner (a rank group
names the rank that died).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import secrets
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any, Protocol

import httpx2

from .. import protocol
from ..errors import (
    GenerationError,
    MLXNotebookError,
    ProtocolError,
    RunnerExitedError,
    RunnerStalledError,
    RunnerUnavailableError,
)
from ..inside_protocol import (
    AttentionRequest,
    AttentionResult,
    LensRequest,
    LensResult,
    ScoreRequest,
    ScoreResult,
)
from ..prompt_cache_protocol import CacheLoadRequest, CacheSaveRequest, SavedPromptCache
from ..protocol import ChunkEvent, CompletionRequest, DoneEvent, Status
from .streams import CompletionStream, astream_events

__all__ = ["LoadWatch", "RunnerConnection", "RunnerOwner", "REQUEST_TIMEOUT", "STATUS_TIMEOUT",
           "STREAM_SILENCE_ENV", "DEFAULT_STREAM_SILENCE", "stream_silence"]

REQUEST_TIMEOUT = httpx2.Timeout(30.0, connect=5.0)
STATUS_TIMEOUT = httpx2.Timeout(3.0, connect=2.0)
Progress = Callable[[int, int], None]  # (processed, total) of a long look-inside pass
POLL_INTERVAL = 0.1  # between status polls while a model loads
_RECHECK_TIMEOUT = httpx2.Timeout(1.0)  # is a runner that stalled a stream answering again?
STREAM_SILENCE_ENV = "MLX_NOTEBOOK_STREAM_TIMEOUT"
# A healthy runner is never silent for more than ~2 s (keep-alives), except inside one MLX
# call; the longest honest one is a batched prefill step (8 prompts x 512 tokens), which a
# slow CPU needs minutes for (docs/reliability.md). Past this, the stream is a dead runner.
DEFAULT_STREAM_SILENCE = 300.0


def stream_silence(configured: float | None = None) -> float | None:
    """Seconds a stream may stay silent: ``configured``, else $MLX_NOTEBOOK_STREAM_TIMEOUT,
    else the default; 0 (or less) waits forever (None)."""
    value = configured
    if value is None:
        raw = os.environ.get(STREAM_SILENCE_ENV, "").strip()
        try:
            value = float(raw) if raw else DEFAULT_STREAM_SILENCE
        except ValueError:
            value = DEFAULT_STREAM_SILENCE
    if not math.isfinite(value) or value <= 0:
        return None
    return value


def _as_request(request: CompletionRequest | str) -> CompletionRequest:
    if isinstance(request, str):
        request = CompletionRequest(prompt=request)
    if request.request_id is None:
        request = dataclasses.replace(request, request_id=secrets.token_hex(8))
    return request


class RunnerOwner(Protocol):
    """Who owns a runner's processes; the connection asks it whatever HTTP cannot tell."""

    remote: bool  # a runner this kernel did not start: never stopped, evicted or reaped

    @property
    def pid(self) -> int | None: ...
    @property
    def has_exited(self) -> bool: ...
    @property
    def python(self) -> str | None:
        """The interpreter that runs the runner, when it runs here (None for a remote one)."""

    def start(self, conn: RunnerConnection, token: str) -> tuple[str, int]:
        """Bring the runner up as far as its HTTP address (``token`` is its secret)."""
    def wait_exit(self, timeout: float) -> bool: ...
    def exit_description(self) -> str: ...
    def error_lines(self) -> list[str]: ...
    def describe(self, conn: RunnerConnection) -> str:
        """How messages name the runner: ``runner 'demo' (pid 42) at http://...``."""
    def gone(self, conn: RunnerConnection, what: str, *, wait: bool) -> MLXNotebookError | None:
        """The error for a runner that is gone, or None; ``wait``: the connection broke."""
    def explain(self, exc: MLXNotebookError, what: str) -> MLXNotebookError:
        """A better error for ``exc`` where the owner knows more (which rank died)."""
    def unauthorized_hint(self) -> str: ...
    def not_open_error(self, conn: RunnerConnection) -> MLXNotebookError: ...
    def poll_status(self, conn: RunnerConnection, first: bool) -> Status | None:
        """One status while loading; None while the runner does not answer yet."""
    def load_failed(self, conn: RunnerConnection, status: Status | None, stalled: str,
                    ) -> MLXNotebookError:
        """The error for a load that failed (``status`` says so) or ``stalled`` (no status)."""
    def ready(self, conn: RunnerConnection, status: Status) -> None: ...
    def stop(self, conn: RunnerConnection, grace: float, *, shutdown: bool) -> None: ...


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
    """Requests to one runner over HTTP; ``owner`` owns (or does not own) its processes.

    ``stream_read_timeout``: seconds a stream may stay silent (no token, no keep-alive)
    before it fails with :class:`~mlx_notebook.errors.RunnerStalledError`; None reads
    $MLX_NOTEBOOK_STREAM_TIMEOUT at each stream (default 300), 0 waits forever.
    """

    def __init__(self, spec: str, owner: RunnerOwner, *, name: str | None = None, token: str,
                 stream_read_timeout: float | None = None) -> None:
        self.spec = spec
        self.name = name or spec
        self.owner = owner
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
        self._started = False
        self._closed = False
        self._stall: RunnerStalledError | None = None  # a stream found it silent

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("exited" if self.has_exited else
                                                "running" if self._started else "new")
        return (f"<{type(self).__name__} {self.name!r} spec={self.spec!r} pid={self.pid} "
                f"{self.base_url if self.port else 'port=None'} {state}>")

    def __enter__(self) -> RunnerConnection:
        if not self._started:
            self.wait_until_ready()  # starts it first
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ what the owner knows

    @property
    def remote(self) -> bool:
        return self.owner.remote

    @property
    def pid(self) -> int | None:
        return self.owner.pid

    @property
    def has_exited(self) -> bool:
        """True once we know the runner process is gone (only an owner can know)."""
        return self.owner.has_exited

    @property
    def python(self) -> str | None:
        """The interpreter that runs the runner (None: a remote one, on another machine)."""
        return self.owner.python

    def exit_description(self) -> str:
        """``"killed by SIGKILL"``, ``"exited with code 1"``, ``"still running"``."""
        return self.owner.exit_description()

    def error_lines(self) -> list[str]:
        """The runner's stderr lines that explain a failure (may be empty)."""
        return self.owner.error_lines()

    def describe(self) -> str:
        return self.owner.describe(self)

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._token}"}

    @property
    def closed(self) -> bool:
        return self._closed

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Start the runner (or reach it) as far as its HTTP address."""
        if self._started:
            raise RuntimeError(f"runner {self.name!r} was already started")
        self._started = True
        self.started_at = self.last_used = time.time()
        self.host, self.port = self.owner.start(self, self._token)
        self._http = httpx2.Client(base_url=self.base_url, headers=self.headers,
                                   timeout=REQUEST_TIMEOUT, trust_env=False)

    def wait_until_ready(
        self, *, timeout: float = 120.0, on_progress: Callable[[Status], None] | None = None,
    ) -> Status:
        """Poll status until ready; ``timeout`` is the longest wait *without progress*.

        A load error or an exit is reported at once, with the runner's own error lines.
        On any failure (or interrupt) the runner is stopped: a half-loaded runner is no use.
        """
        if not self._started:
            self.start()
        watch = LoadWatch(on_progress)
        first = True
        try:
            while True:
                status = self.owner.poll_status(self, first)
                first = False
                if status is not None:
                    watch.see(status)
                    if status.state == "ready":
                        self.owner.ready(self, status)
                        return status
                    if status.state in ("error", "stopping"):
                        raise self.owner.load_failed(self, status, "")
                if watch.stalled(timeout):
                    raise self.owner.load_failed(self, None, (
                        f"made no progress for {timeout:.0f} s (last: {watch.describe_last()})"))
                self.owner.wait_exit(POLL_INTERVAL)
        except BaseException:
            self.close(grace=2.0)
            raise

    def close(self, grace: float = 5.0, *, shutdown: bool = False) -> None:
        """Stop the runner (ask, SIGTERM, SIGKILL after ``grace``); a remote one is only
        disconnected unless ``shutdown=True`` asks it to exit."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        try:
            self.owner.stop(self, grace, shutdown=shutdown)  # may ask over HTTP first
        finally:
            http, self._http = self._http, None
            if http is not None:
                http.close()

    def ask_shutdown(self, timeout: float) -> None:
        """``POST /v1/shutdown``, best effort: the first rung of the stop ladder."""
        if self._http is not None:
            with contextlib.suppress(httpx2.HTTPError):
                self._http.post(protocol.ENDPOINTS["shutdown"][1], timeout=timeout)

    def probe(self) -> Exception | None:
        """Ask for the status once, raw: the transport error if it does not answer."""
        if self._http is None:
            return None
        try:
            self._http.get(protocol.ENDPOINTS["status"][1], timeout=STATUS_TIMEOUT)
        except httpx2.HTTPError as exc:
            return exc
        return None

    # ------------------------------------------------------------ the error boundary

    @contextlib.contextmanager
    def translating(self, what: str) -> Iterator[None]:
        """httpx errors become mlx_notebook errors (cause kept); the owner explains each."""
        try:
            yield
        except (httpx2.HTTPError, httpx2.StreamError, MLXNotebookError) as exc:
            better = self.explain_error(exc, what)
            if better is exc:
                raise
            raise better from exc

    def explain_error(self, exc: Exception, what: str) -> MLXNotebookError:
        """What :meth:`translating` raises for ``exc`` (an httpx error or one of ours)."""
        if isinstance(exc, RunnerExitedError):
            return exc
        if not isinstance(exc, MLXNotebookError):
            exc = self.translate(exc, what)
        return self.owner.explain(exc, what)

    def translate(self, exc: Exception, what: str) -> MLXNotebookError:
        broken = isinstance(exc, (httpx2.TransportError, httpx2.StreamError))
        gone = self.gone(what, wait=broken and not isinstance(exc, httpx2.TimeoutException))
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

    def gone(self, what: str, *, wait: bool) -> MLXNotebookError | None:
        """The error for a runner that is gone (the owner tells), or None."""
        return self.owner.gone(self, what, wait=wait)

    def check_response(self, response: httpx2.Response, what: str) -> None:
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
            raise ProtocolError(f"{message} ({self.owner.unauthorized_hint()})", status=401)
        if code in (404, 405):
            raise ProtocolError(message + " (does the runner speak this protocol version?)",
                                status=code)
        if code == 409 and "request_id" in detail:  # a duplicate id: this request's fault
            raise GenerationError(message, status=code)
        if code in (409, 503):
            raise RunnerUnavailableError(message, status=code)
        raise GenerationError(message, status=code)

    def require_http(self) -> httpx2.Client:
        gone = self.gone("earlier", wait=False)
        if gone is not None:
            raise gone
        if self._http is None or self._closed:
            raise self.owner.not_open_error(self)
        if self._stall is not None:
            # After a stall, fail at once (not after a 30 s timeout) until it answers again.
            try:
                self._http.get(protocol.ENDPOINTS["status"][1], timeout=_RECHECK_TIMEOUT)
            except httpx2.HTTPError:
                raise self._stall from None
            self._stall = None
        return self._http

    def _call(self, endpoint: str, body: dict[str, Any] | None = None,
              timeout: httpx2.Timeout | None = None) -> dict[str, Any]:
        method, path = protocol.ENDPOINTS[endpoint]
        http = self.require_http()
        with self.translating(f"during {endpoint}"):
            response = http.request(method, path, json=body, timeout=timeout or REQUEST_TIMEOUT)
            self.check_response(response, endpoint)
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

    def tell_names(self) -> None:
        """Tell the runner the name it is loaded as, so OpenAI clients may ask for it by that name.

        Best effort: a runner that predates ``/v1/names`` still serves its spec.
        """
        if self.name == self.spec:
            return
        with contextlib.suppress(MLXNotebookError):
            self._call("names", protocol.NamesRequest(names=(self.name,)).to_json())

    @property
    def token(self) -> str:
        """The runner's bearer token (also its OpenAI API key); never print it into a cell."""
        return self._token

    def touch(self) -> None:
        self.last_used = time.time()

    def count_stream(self, delta: int) -> None:
        """Streams in flight: a runner with any is busy and never evicted."""
        with self._lock:
            self.active_streams += delta

    def stream_timeout(self) -> httpx2.Timeout:
        return httpx2.Timeout(30.0, connect=5.0, read=stream_silence(self.stream_read_timeout))

    def stalled(self, what: str) -> MLXNotebookError:
        """A stream silent past its limit: the runner is gone (the owner tells), or stuck."""
        gone = self.gone(what, wait=False)
        if gone is not None:
            return gone
        silence = stream_silence(self.stream_read_timeout) or 0.0
        restart = ("restart it where it runs, then `%mlx connect` again" if self.remote else
                   f"restart it with `%mlx load {self.spec} --as {self.name} --force`")
        self._stall = RunnerStalledError(
            f"{self.describe()} sent nothing for {silence:g} s {what}, not even a keep-alive: "
            f"it is stopped, stuck in one step, or out of reach. {restart[0].upper()}"
            f"{restart[1:]}; if its steps really take this long, set {STREAM_SILENCE_ENV} "
            "to more seconds (0: wait forever).", silence=silence, url=self.base_url)
        return self._stall

    def stream(self, request: CompletionRequest | str) -> CompletionStream:
        """Start a completion; iterate the result for ChunkEvents, then read ``.result``."""
        request = _as_request(request)
        http = self.require_http()
        method, path = protocol.ENDPOINTS["completion"]
        built = http.build_request(method, path, json=request.to_json(),
                                   timeout=self.stream_timeout())
        with self.translating("while starting a completion"):
            response = http.send(built, stream=True)
            if response.status_code >= 400:
                response.read()
                response.close()
            self.check_response(response, "the completion request")
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
                 messages: Sequence[protocol.ChatMessage | dict[str, Any]] | None = None,
                 think: bool | None = None, tools: Sequence[dict[str, Any]] | None = None,
                 ) -> protocol.TokenizeResponse:
        msgs = None
        if messages is not None:
            msgs = tuple(m if isinstance(m, protocol.ChatMessage)
                         else protocol.ChatMessage.from_json(m, f"messages[{i}]")
                         for i, m in enumerate(messages))
        request = protocol.TokenizeRequest(text=text, messages=msgs, think=think,
                                           tools=tuple(tools) if tools is not None else None)
        data = self._call("tokenize", request.to_json())
        self.touch()
        try:
            return protocol.TokenizeResponse(tokens=list(data["tokens"]),
                                             pieces=list(data.get("pieces", [])),
                                             text=str(data.get("text", text or "")),
                                             token_bytes=list(data.get("token_bytes", [])))
        except (KeyError, TypeError) as exc:
            raise ProtocolError(f"runner {self.name!r} sent a malformed tokenize answer") from exc

    def detokenize(self, tokens: Sequence[int]) -> str:
        data = self._call("detokenize", protocol.DetokenizeRequest(tokens=list(tokens)).to_json())
        self.touch()
        return str(data.get("text", ""))

    def token_bytes(self, tokens: Sequence[int]) -> list[bytes]:
        """Each token's own bytes (a byte-level token may hold part of a UTF-8 character);
        [] from a runner that predates them."""
        data = self._call("detokenize", protocol.DetokenizeRequest(tokens=list(tokens)).to_json())
        try:
            return [bytes.fromhex(h) for h in data.get("token_bytes", [])]
        except (TypeError, ValueError) as exc:
            raise ProtocolError(f"runner {self.name!r} sent malformed token bytes") from exc

    def free_memory(self) -> protocol.FreeResponse:
        """Drop the runner's reusable prompt cache and MLX's buffer cache (keeps the model)."""
        data = self._call("free", {}, timeout=REQUEST_TIMEOUT)
        return protocol.FreeResponse.from_json(data)

    def cancel(self, request_id: str) -> bool:
        """Ask the runner to stop one request; True if it was running."""
        data = self._call("cancel", protocol.CancelRequest(request_id=request_id).to_json(),
                          timeout=STATUS_TIMEOUT)
        return bool(data.get("cancelled", False))

    # ------------------------------------------------------------ look inside (control/inside.py)

    def score(self, request: ScoreRequest, on_progress: Progress | None = None) -> ScoreResult:
        """Log-probabilities of each text of ``request`` (one prefill-only pass, batched)."""
        from .inside import score

        return score(self, request, on_progress)

    def lens(self, request: LensRequest, on_progress: Progress | None = None) -> LensResult:
        """The logit lens: each layer read out through the final norm and the unembedding."""
        from .inside import lens

        return lens(self, request, on_progress)

    def attention(self, request: AttentionRequest,
                  on_progress: Progress | None = None) -> AttentionResult:
        """One block's attention weights over the tokens of ``request.text``."""
        from .inside import attention

        return attention(self, request, on_progress)

    # ------------------------------------------------------------ prompt caches on disk

    def save_prompt_cache(self, request: CacheSaveRequest,
                          on_progress: Progress | None = None) -> SavedPromptCache:
        """Prefill a prompt and save its KV cache as a file (control/cache_requests.py)."""
        from .cache_requests import save_prompt_cache

        return save_prompt_cache(self, request, on_progress)

    def load_prompt_cache(self, request: CacheLoadRequest,
                          on_progress: Progress | None = None) -> SavedPromptCache:
        """Put a saved KV cache in the runner's prompt cache; a later prompt extending it hits."""
        from .cache_requests import load_prompt_cache

        return load_prompt_cache(self, request, on_progress)

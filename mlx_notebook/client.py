"""RunnerClient: start one runner subprocess, talk to it over loopback HTTP, stop it.

The lifecycle follows Ollama's MLX runner client (spawn, wait until ready while
watching for an early exit, keep the stderr tail to explain failures, stream
completions, stop with a grace period) and goes past it where a notebook needs to:

- the runner lives in its own session, so a cell interrupt (SIGINT to the kernel's
  process group) never reaches it; interrupts become cancel requests instead;
- the runner binds port 0 and announces its port in a handshake line (no race);
- a per-runner token travels by environment, never argv;
- the runner exits when our stdin pipe closes or our pid dies (no orphans);
- waiting for readiness times out only when progress stops, not at a fixed time.

This module is the only place that turns httpx errors into :mod:`mlx_notebook.errors`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import secrets
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

import httpx2

from . import protocol
from .errors import (
    GenerationError,
    MLXNotebookError,
    ProtocolError,
    RunnerExitedError,
    RunnerStartError,
    RunnerStartTimeout,
    RunnerUnavailableError,
)
from .process import POLL_INTERVAL, RunnerProcess
from .protocol import ChunkEvent, CompletionRequest, DoneEvent, Status
from .registry import Registry
from .stderr_tail import failure_message
from .streams import CompletionStream, astream_events

__all__ = ["RunnerClient", "CompletionStream", "PYTHON_ENV"]

PYTHON_ENV = "MLX_NOTEBOOK_PYTHON"  # the interpreter that runs runners, if not this one
HANDSHAKE_TIMEOUT = 60.0
REQUEST_TIMEOUT = httpx2.Timeout(30.0, connect=5.0)
STATUS_TIMEOUT = httpx2.Timeout(3.0, connect=2.0)


def _as_request(request: CompletionRequest | str) -> CompletionRequest:
    if isinstance(request, str):
        request = CompletionRequest(prompt=request)
    if request.request_id is None:
        request = dataclasses.replace(request, request_id=secrets.token_hex(8))
    return request


class RunnerClient:
    """One runner subprocess serving one model. ``start()``, ``wait_until_ready()``, use, ``close()``.

    Usable on its own in scripts (the ``with`` block starts, waits and closes)::

        with RunnerClient("demo") as client:
            text, done = client.complete("What is the capital of France?")
    """

    def __init__(self, spec: str, *, name: str | None = None, python: str | None = None,
                 context_length: int | None = None, env: dict[str, str] | None = None,
                 extra_args: Sequence[str] = (), runner_module: str = "mlx_notebook.runner",
                 registry: Registry | None = None, handshake_timeout: float = HANDSHAKE_TIMEOUT,
                 stream_read_timeout: float | None = None) -> None:
        self.spec = spec
        self.name = name or spec
        self.python = python or os.environ.get(PYTHON_ENV) or sys.executable
        self.context_length = context_length
        self.env = dict(env or {})
        self.extra_args = tuple(extra_args)
        self.runner_module = runner_module
        self.registry = registry if registry is not None else Registry()
        self.handshake_timeout = handshake_timeout
        self.stream_read_timeout = stream_read_timeout
        self.port: int | None = None
        self.host = "127.0.0.1"
        self.started_at = 0.0
        self.last_used = 0.0
        self.last_status: Status | None = None
        self.active_streams = 0
        self._token = secrets.token_urlsafe(32)
        self._process: RunnerProcess | None = None
        self._http: httpx2.Client | None = None
        self._lock = threading.Lock()
        self._closed = False

    def __repr__(self) -> str:
        state = "exited" if self.has_exited else ("running" if self._process else "new")
        return f"<RunnerClient {self.name!r} spec={self.spec!r} pid={self.pid} port={self.port} {state}>"

    def __enter__(self) -> RunnerClient:
        if self._process is None:
            self.wait_until_ready()  # starts it first
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ lifecycle

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._token}"}

    def command(self) -> list[str]:
        """The runner's argv (no secrets in it: the token goes by environment)."""
        cmd = [self.python, "-m", self.runner_module, "--model", self.spec,
               "--host", "127.0.0.1", "--port", "0", "--parent-pid", str(os.getpid())]
        if self.context_length:
            cmd += ["--context", str(self.context_length)]
        return cmd + list(self.extra_args)

    def start(self) -> None:
        """Spawn the runner in its own session and wait for its handshake line."""
        if self._process is not None:
            raise RuntimeError(f"runner {self.name!r} was already started")
        env = {**os.environ, **self.env, protocol.TOKEN_ENV: self._token, "PYTHONUNBUFFERED": "1"}
        if os.path.realpath(self.python) == os.path.realpath(sys.executable):
            # Same interpreter: make sure the runner imports this very mlx_notebook.
            here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
            env["PYTHONPATH"] = os.pathsep.join(p for p in (here, env.get("PYTHONPATH")) if p)
        self._process = RunnerProcess(self.command(), env,
                                      label=f"runner {self.name!r} (pid ?, {self.spec})")
        self.started_at = self.last_used = time.time()
        try:
            hs = self._process.spawn(self.handshake_timeout)
        except BaseException:
            self.close(grace=1.0)
            raise
        self.host, self.port = hs.host, hs.port
        self._http = httpx2.Client(base_url=self.base_url, headers=self.headers,
                                   timeout=REQUEST_TIMEOUT, trust_env=False)
        self.registry.add(self.pid, port=self.port, spec=self.spec, name=self.name)

    def wait_until_ready(
        self, *, timeout: float = 120.0, on_progress: Callable[[Status], None] | None = None,
    ) -> Status:
        """Poll status until ready; ``timeout`` is the longest wait *without progress*.

        An exit or a load error is reported at once, with the runner's own error lines.
        On any failure (or interrupt) the runner is stopped: a half-loaded runner is no use.
        """
        if self._process is None:
            self.start()
        last_key: tuple[Any, ...] | None = None
        last_change = time.monotonic()
        try:
            while True:
                if self.has_exited:
                    raise RunnerStartError(self._exit_message("while loading its model"))
                status = self._poll_status()
                if status is not None:
                    key = (status.state, round(status.progress, 1), status.progress_message)
                    if key != last_key:
                        last_key, last_change = key, time.monotonic()
                        if on_progress is not None:
                            on_progress(status)
                    if status.state == "ready":
                        return status
                    if status.state in ("error", "stopping"):
                        self._wait_exit(2.0)
                        lines = self.error_lines()
                        if status.error and not any(status.error in ln for ln in lines):
                            lines.insert(0, status.error)
                        raise RunnerStartError(failure_message(
                            f"runner for {self.spec!r} failed to load",
                            self.returncode, lines))
                if time.monotonic() - last_change > timeout:
                    last = (f"{last_key[0]} {last_key[1]:.0f}% {last_key[2]}".strip()
                            if last_key else "no status")
                    raise RunnerStartTimeout(failure_message(
                        f"runner for {self.spec!r} made no progress for {timeout:.0f} s "
                        f"(last: {last})", None, self.error_lines()))
                self._wait_exit(POLL_INTERVAL)
        except BaseException:
            self.close(grace=2.0)
            raise

    def _poll_status(self) -> Status | None:
        try:
            return self.status()
        except RunnerExitedError as exc:
            raise RunnerStartError(str(exc)) from exc
        except RunnerUnavailableError:
            return None  # not answering yet; the no-progress timeout covers a hang
        except GenerationError as exc:
            # /v1/status never waits on the model: an error answer will not go away.
            raise RunnerStartError(failure_message(
                str(exc), None, self.error_lines())) from exc

    def close(self, grace: float = 5.0) -> None:
        """Stop the runner: ask (shutdown + stdin EOF), then SIGTERM, then SIGKILL after ``grace``."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        http = self._http

        def ask() -> None:
            if http is not None:
                with contextlib.suppress(httpx2.HTTPError):
                    http.post(protocol.ENDPOINTS["shutdown"][1], timeout=min(1.0, grace))

        if self._process is not None:
            self._process.stop(grace, ask)
            if self._process.has_exited and self._process.pid is not None:
                self.registry.remove(self._process.pid)
        if http is not None:
            http.close()

    def _wait_exit(self, timeout: float) -> bool:
        return self._process is not None and self._process.wait_exit(timeout)

    @property
    def has_exited(self) -> bool:
        return self._process is not None and self._process.has_exited

    @property
    def returncode(self) -> int | None:
        return None if self._process is None else self._process.returncode

    @property
    def closed(self) -> bool:
        return self._closed

    def exit_description(self) -> str:
        """``"killed by SIGKILL"``, ``"exited with code 1"``, ``"still running"``."""
        return "not started" if self._process is None else self._process.exit_description()

    def error_lines(self) -> list[str]:
        """The runner's stderr lines that explain a failure (may be empty)."""
        return [] if self._process is None else self._process.tail.error_lines()

    def stderr_lines(self) -> list[str]:
        """The bounded tail of everything the runner wrote after its handshake."""
        return [] if self._process is None else self._process.tail.lines()

    def _exit_message(self, what: str) -> str:
        assert self._process is not None
        return self._process.exit_message(what)

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
        if self.has_exited or (broken and not isinstance(exc, httpx2.TimeoutException)
                               and self._wait_exit(1.0)):
            return RunnerExitedError(self._exit_message(what))
        where = f"runner {self.name!r} (pid {self.pid}) at {self.base_url}"
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
            raise ProtocolError(message + " (token mismatch: is this our runner?)")
        if code in (404, 405):
            raise ProtocolError(message + " (does the runner speak this protocol version?)")
        if code in (409, 503):
            raise RunnerUnavailableError(message)
        raise GenerationError(message)

    def _require_http(self) -> httpx2.Client:
        if self.has_exited:
            raise RunnerExitedError(self._exit_message("earlier"))
        if self._http is None or self._closed:
            state = "closed" if self._closed else "not started"
            raise RunnerUnavailableError(f"runner {self.name!r} is {state}")
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

    def cancel(self, request_id: str) -> bool:
        """Ask the runner to stop one request; True if it was running."""
        data = self._call("cancel", protocol.CancelRequest(request_id=request_id).to_json(),
                          timeout=STATUS_TIMEOUT)
        return bool(data.get("cancelled", False))

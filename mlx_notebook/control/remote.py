"""RemoteRunner: a runner that someone started by hand, maybe on another machine.

Started with ``MLX_NOTEBOOK_TOKEN=... python -m mlx_notebook.runner --host 0.0.0.0
--allow-remote --no-stdin-watch --model demo``, it is reached by URL and token. We
own no process: ``pid`` is the remote one (from its status), liveness is whether
its status answers, and ``close()`` only disconnects (``shutdown=True`` stops it).
The token is never put in a message or a repr.

::

    runner = RemoteRunner.connect("http://10.0.0.5:50123", token=os.environ["MLX_REMOTE_TOKEN"])
    text, done = runner.complete("What is the capital of France?")
    runner.close()   # the runner keeps running
"""

from __future__ import annotations

import contextlib
import time
import urllib.parse
from collections.abc import Callable

import httpx2

from .. import protocol
from ..errors import MLXNotebookError, ProtocolError, RunnerUnavailableError
from ..protocol import Status
from .connection import STATUS_TIMEOUT, LoadWatch, RunnerConnection

__all__ = ["RemoteRunner", "normalize_url"]

POLL_INTERVAL = 0.2


def normalize_url(url: str) -> str:
    """``10.0.0.5:50123`` or ``http://10.0.0.5:50123/`` -> ``http://10.0.0.5:50123``."""
    text = url.strip()
    if "://" not in text:
        text = "http://" + text
    parts = urllib.parse.urlsplit(text)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"expected an http:// or https:// URL, got {url!r}")
    try:
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"bad port in {url!r}: {exc}") from exc
    if not parts.hostname or port is None:
        raise ValueError(f"expected http://HOST:PORT (the port the runner printed), got {url!r}")
    if parts.username or parts.password or parts.query or parts.path.strip("/"):
        raise ValueError(f"expected only http://HOST:PORT, got {url!r}")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{parts.scheme}://{host}:{port}"


class RemoteRunner(RunnerConnection):
    """A runner reached by URL and token: ``connect()``, use, ``close()`` (disconnects)."""

    remote = True

    def __init__(self, url: str, *, token: str, name: str | None = None,
                 token_source: str | None = None,
                 stream_read_timeout: float | None = None) -> None:
        if not token:
            raise ValueError("a remote runner needs its token (MLX_NOTEBOOK_TOKEN on its side)")
        self.url = normalize_url(url)
        super().__init__(self.url, name=name, token=token, stream_read_timeout=stream_read_timeout)
        parts = urllib.parse.urlsplit(self.url)
        self.host, self.port = parts.hostname or "", parts.port
        self.token_source = token_source  # e.g. "$MLX_REMOTE_TOKEN", for messages only
        self._named = name is not None

    @classmethod
    def connect(cls, url: str, token: str, *, name: str | None = None,
                token_source: str | None = None, timeout: float = 120.0,
                on_progress: Callable[[Status], None] | None = None) -> RemoteRunner:
        """Attach to the runner at ``url`` and wait until its model is ready."""
        runner = cls(url, token=token, name=name, token_source=token_source)
        runner.open(timeout=timeout, on_progress=on_progress)
        return runner

    def __repr__(self) -> str:
        state = "closed" if self._closed else "connected"
        return f"<RemoteRunner {self.name!r} model={self.spec!r} pid={self.pid} {self.url} {state}>"

    def __enter__(self) -> RemoteRunner:
        if self._http is None:
            self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def base_url(self) -> str:
        return self.url

    @property
    def pid(self) -> int | None:
        """The runner's pid on its own machine (from its status)."""
        return None if self.last_status is None else self.last_status.pid

    def describe(self) -> str:
        pid = f" (pid {self.pid})" if self.pid else ""
        named = "" if self.name == self.url else f" {self.name!r}"
        return f"remote runner{named}{pid} at {self.url}"

    def _unauthorized_hint(self) -> str:
        source = f" in {self.token_source}" if self.token_source else ""
        return (f"wrong token for {self.url}: set the token{source} to the runner's "
                f"{protocol.TOKEN_ENV}")

    # ------------------------------------------------------------ connecting

    def open(self, *, timeout: float = 120.0,
             on_progress: Callable[[Status], None] | None = None) -> Status:
        """Check token and protocol version, then wait for the model (``timeout``: without progress)."""
        if self._http is None:
            self._open_http()
        try:
            status = self._first_status()
            watch = LoadWatch(on_progress)
            while True:
                watch.see(status)
                if status.state == "ready":
                    break
                if status.state in ("error", "stopping"):
                    raise RunnerUnavailableError(
                        f"{self.describe()} is {status.state}"
                        + (f": {status.error}" if status.error else ""))
                if watch.stalled(timeout):
                    raise RunnerUnavailableError(
                        f"{self.describe()} made no progress for {timeout:.0f} s "
                        f"(last: {watch.describe_last()})")
                time.sleep(POLL_INTERVAL)
                status = self.status()
        except BaseException:
            self.close()
            raise
        self.spec = status.model or self.url
        if not self._named:
            self.name = f"{status.model or 'runner'}@{self.host}"
        self.context_length = status.context_length or None
        self.started_at = self.last_used = time.time()
        return status

    def _first_status(self) -> Status:
        try:
            status = self.status()
        except ProtocolError as exc:
            if "HTTP 401" in str(exc):
                raise ProtocolError(f"{self._unauthorized_hint()} (the runner answered 401)"
                                    ) from exc
            raise ProtocolError(f"{self.url} does not answer like an mlx_notebook runner: {exc}"
                                ) from exc
        if status.protocol != protocol.PROTOCOL_VERSION:
            raise ProtocolError(
                f"{self.describe()} speaks protocol {status.protocol}, this client "
                f"{protocol.PROTOCOL_VERSION}: install the same mlx_notebook on both machines")
        return status

    # ------------------------------------------------------------ liveness

    def _vanished(self, what: str, *, wait: bool) -> MLXNotebookError | None:
        """After a broken connection, ask for the status once: no answer means it is gone."""
        if not wait or self.last_status is None or self._http is None or self._closed:
            return None
        try:
            self._http.get(protocol.ENDPOINTS["status"][1], timeout=STATUS_TIMEOUT)
        except httpx2.HTTPError as exc:
            return RunnerUnavailableError(
                f"{self.describe()} is gone {what} (its status does not answer: {exc}); "
                f"start it again and reconnect with `%mlx connect {self.url}`, "
                f"or forget it with `%mlx unload {self.name}`")
        return None

    def _not_open_error(self) -> MLXNotebookError:
        return RunnerUnavailableError(
            f"{self.describe()} is disconnected: reconnect with `%mlx connect {self.url}`")

    def close(self, grace: float = 5.0, *, shutdown: bool = False) -> None:
        """Disconnect; the runner keeps running unless ``shutdown=True`` asks it to exit."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        http, self._http = self._http, None
        if http is None:
            return
        if shutdown:
            with contextlib.suppress(httpx2.HTTPError):
                http.post(protocol.ENDPOINTS["shutdown"][1], timeout=min(grace, 5.0))
        http.close()

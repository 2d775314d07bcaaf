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

import time
import urllib.parse
from collections.abc import Callable

from .. import protocol
from ..errors import InvalidArgumentError, MLXNotebookError, ProtocolError, RunnerUnavailableError
from ..protocol import Status
from .connection import RunnerConnection

__all__ = ["RemoteOwner", "RemoteRunner", "normalize_url"]


def normalize_url(url: str) -> str:
    """``10.0.0.5:50123`` or ``http://10.0.0.5:50123/`` -> ``http://10.0.0.5:50123``."""
    text = url.strip()
    if "://" not in text:
        text = "http://" + text
    parts = urllib.parse.urlsplit(text)
    if parts.scheme not in ("http", "https"):
        raise InvalidArgumentError(f"expected an http:// or https:// URL, got {url!r}", field="url")
    try:
        port = parts.port
    except ValueError as exc:
        raise InvalidArgumentError(f"bad port in {url!r}: {exc}", field="url") from exc
    if not parts.hostname or port is None:
        raise InvalidArgumentError(
            f"expected http://HOST:PORT (the port the runner printed), got {url!r}", field="url")
    if parts.username or parts.password or parts.query or parts.path.strip("/"):
        raise InvalidArgumentError(f"expected only http://HOST:PORT, got {url!r}", field="url")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{parts.scheme}://{host}:{port}"


class RemoteOwner:
    """Nobody's runner: we own no process, so liveness is whether its status answers."""

    remote = True

    def __init__(self, url: str, token_source: str | None, named: bool) -> None:
        self.url = url
        self.token_source = token_source  # e.g. "$MLX_REMOTE_TOKEN", for messages only
        self.named = named
        self.last_status: Status | None = None

    @property
    def pid(self) -> int | None:
        """The runner's pid on its own machine (from its status)."""
        return None if self.last_status is None else self.last_status.pid

    @property
    def has_exited(self) -> bool:
        return False  # only a process of ours can be seen to exit

    @property
    def python(self) -> str | None:
        return None  # it runs on another machine, with an interpreter we cannot ask

    def start(self, conn: RunnerConnection, token: str) -> tuple[str, int]:
        parts = urllib.parse.urlsplit(self.url)
        assert parts.hostname is not None and parts.port is not None  # normalize_url checked
        return parts.hostname, parts.port

    def wait_exit(self, timeout: float) -> bool:
        """We cannot see it exit: waiting is only time passing (a pause between polls)."""
        time.sleep(timeout)
        return False

    def exit_description(self) -> str:
        return "unknown (not a process of this kernel)"

    def error_lines(self) -> list[str]:
        return []

    def describe(self, conn: RunnerConnection) -> str:
        pid = f" (pid {self.pid})" if self.pid else ""
        named = "" if conn.name == self.url else f" {conn.name!r}"
        return f"remote runner{named}{pid} at {self.url}"

    def gone(self, conn: RunnerConnection, what: str, *, wait: bool) -> MLXNotebookError | None:
        """After a broken connection, ask for the status once: no answer means it is gone."""
        if not wait or self.last_status is None or conn.closed:
            return None
        failure = conn.probe()
        if failure is None:
            return None
        return RunnerUnavailableError(
            f"{conn.describe()} is gone {what} (its status does not answer: {failure}); "
            f"start it again and reconnect with `%mlx connect {self.url}`, "
            f"or forget it with `%mlx unload {conn.name}`", url=self.url)

    def explain(self, exc: MLXNotebookError, what: str) -> MLXNotebookError:
        return exc

    def unauthorized_hint(self) -> str:
        source = f" in {self.token_source}" if self.token_source else ""
        return (f"wrong token for {self.url}: set the token{source} to the runner's "
                f"{protocol.TOKEN_ENV}")

    def not_open_error(self, conn: RunnerConnection) -> MLXNotebookError:
        return RunnerUnavailableError(
            f"{conn.describe()} is disconnected: reconnect with `%mlx connect {self.url}`",
            url=self.url)

    def poll_status(self, conn: RunnerConnection, first: bool) -> Status | None:
        """The first status checks the token and the protocol version."""
        if not first:
            self.last_status = conn.status()
            return self.last_status
        try:
            status = conn.status()
        except ProtocolError as exc:
            if exc.status == 401:
                raise ProtocolError(f"{self.unauthorized_hint()} (the runner answered 401)",
                                    status=401, url=self.url) from exc
            raise ProtocolError(f"{self.url} does not answer like an mlx_notebook runner: {exc}",
                                status=exc.status, url=self.url) from exc
        if status.protocol != protocol.PROTOCOL_VERSION:
            raise ProtocolError(
                f"{conn.describe()} speaks protocol {status.protocol}, this client "
                f"{protocol.PROTOCOL_VERSION}: install the same mlx_notebook on both machines",
                url=self.url)
        self.last_status = status
        return status

    def load_failed(self, conn: RunnerConnection, status: Status | None, stalled: str,
                    ) -> MLXNotebookError:
        if status is None:
            return RunnerUnavailableError(f"{conn.describe()} {stalled}", url=self.url)
        return RunnerUnavailableError(
            f"{conn.describe()} is {status.state}" + (f": {status.error}" if status.error else ""),
            url=self.url)

    def ready(self, conn: RunnerConnection, status: Status) -> None:
        """Name it after its model (``MODEL@HOST``) unless named by the caller."""
        conn.spec = status.model or self.url
        if not self.named:
            conn.name = f"{status.model or 'runner'}@{conn.host}"
        conn.context_length = status.context_length or None

    def stop(self, conn: RunnerConnection, grace: float, *, shutdown: bool) -> None:
        """Disconnect; the runner keeps running unless ``shutdown`` asks it to exit."""
        if shutdown:
            conn.ask_shutdown(min(grace, 5.0))


class RemoteRunner(RunnerConnection):
    """A runner reached by URL and token: ``connect()``, use, ``close()`` (disconnects)."""

    owner: RemoteOwner

    def __init__(self, url: str, *, token: str, name: str | None = None,
                 token_source: str | None = None,
                 stream_read_timeout: float | None = None) -> None:
        if not token:
            raise InvalidArgumentError(
                "a remote runner needs its token (MLX_NOTEBOOK_TOKEN on its side)", field="token")
        self.url = normalize_url(url)
        owner = RemoteOwner(self.url, token_source, named=name is not None)
        super().__init__(self.url, owner, name=name, token=token,
                         stream_read_timeout=stream_read_timeout)

    @classmethod
    def connect(cls, url: str, token: str, *, name: str | None = None,
                token_source: str | None = None, timeout: float = 120.0,
                on_progress: Callable[[Status], None] | None = None) -> RemoteRunner:
        """Attach to the runner at ``url`` and wait until its model is ready."""
        runner = cls(url, token=token, name=name, token_source=token_source)
        runner.wait_until_ready(timeout=timeout, on_progress=on_progress)
        return runner

    @property
    def base_url(self) -> str:
        return self.url

    def open(self, *, timeout: float = 120.0,
             on_progress: Callable[[Status], None] | None = None) -> Status:
        """Check token and protocol version, then wait for the model (``timeout``: without progress)."""
        return self.wait_until_ready(timeout=timeout, on_progress=on_progress)


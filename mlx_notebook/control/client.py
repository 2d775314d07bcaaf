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

The HTTP requests and the translation of httpx errors live in :mod:`.connection`,
shared with :class:`~mlx_notebook.control.remote.RemoteRunner` (a runner we do not own).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import sys
import time
from collections.abc import Callable, Sequence

import httpx2

from .. import protocol
from ..errors import (
    GenerationError,
    MLXNotebookError,
    RunnerExitedError,
    RunnerStartError,
    RunnerStartTimeout,
    RunnerUnavailableError,
)
from ..protocol import Status
from .connection import REQUEST_TIMEOUT, STATUS_TIMEOUT, LoadWatch, RunnerConnection
from .process import POLL_INTERVAL, RunnerProcess
from .registry import Registry
from .stderr_tail import failure_message
from .streams import CompletionStream

__all__ = ["RunnerClient", "CompletionStream", "PYTHON_ENV", "REQUEST_TIMEOUT", "STATUS_TIMEOUT"]

PYTHON_ENV = "MLX_NOTEBOOK_PYTHON"  # the interpreter that runs runners, if not this one
HANDSHAKE_TIMEOUT = 60.0


def runner_env(python: str, env: dict[str, str]) -> dict[str, str]:
    """``env`` for a runner-side process: with this interpreter, this very mlx_notebook."""
    if os.path.realpath(python) == os.path.realpath(sys.executable):
        here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = {**env, "PYTHONPATH": os.pathsep.join(p for p in (here, env.get("PYTHONPATH")) if p)}
    return env


def runner_python(python: str | None = None) -> str:
    """The interpreter that runs runners: ``python``, ``$MLX_NOTEBOOK_PYTHON`` or this one."""
    return python or os.environ.get(PYTHON_ENV) or sys.executable


class RunnerClient(RunnerConnection):
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
        super().__init__(spec, name=name, token=secrets.token_urlsafe(32),
                         stream_read_timeout=stream_read_timeout)
        self.python = runner_python(python)
        self.context_length = context_length
        self.env = dict(env or {})
        self.extra_args = tuple(extra_args)
        self.runner_module = runner_module
        self.registry = registry if registry is not None else Registry()
        self.handshake_timeout = handshake_timeout
        self._process: RunnerProcess | None = None

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
        env = runner_env(self.python, {**os.environ, **self.env, protocol.TOKEN_ENV: self._token,
                                       "PYTHONUNBUFFERED": "1"})
        self._process = self._new_process(env)
        self.started_at = self.last_used = time.time()
        try:
            hs = self._process.spawn(self.handshake_timeout)
        except BaseException:
            self.close(grace=1.0)
            raise
        self.host, self.port = hs.host, hs.port
        self._open_http()
        self.registry.add(self.pid, port=self.port, spec=self.spec, name=self.name)

    def _new_process(self, env: dict[str, str]) -> RunnerProcess:
        """The process that serves HTTP (a runner group makes it rank 0, maybe over ssh)."""
        return RunnerProcess(self.command(), env, label=f"runner {self.name!r} (pid ?, {self.spec})")

    def wait_until_ready(
        self, *, timeout: float = 120.0, on_progress: Callable[[Status], None] | None = None,
    ) -> Status:
        """Poll status until ready; ``timeout`` is the longest wait *without progress*.

        An exit or a load error is reported at once, with the runner's own error lines.
        On any failure (or interrupt) the runner is stopped: a half-loaded runner is no use.
        """
        if self._process is None:
            self.start()
        watch = LoadWatch(on_progress)
        try:
            while True:
                if self.has_exited:
                    raise RunnerStartError(self._exit_message("while loading its model"))
                status = self._poll_status()
                if status is not None:
                    watch.see(status)
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
                if watch.stalled(timeout):
                    raise RunnerStartTimeout(failure_message(
                        f"runner for {self.spec!r} made no progress for {timeout:.0f} s "
                        f"(last: {watch.describe_last()})", None, self.error_lines()))
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

    def _vanished(self, what: str, *, wait: bool) -> MLXNotebookError | None:
        """Our own process tells: exited (maybe within a second of a broken connection)."""
        if self.has_exited or (wait and self._wait_exit(1.0)):
            return RunnerExitedError(self._exit_message(what))
        return None

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

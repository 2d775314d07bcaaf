"""RunnerClient: one runner subprocess we start, talk to over loopback HTTP, and stop.

The lifecycle follows Ollama's MLX runner client (spawn, wait until ready while
watching for an early exit, keep the stderr tail to explain failures, stream
completions, stop with a grace period) and goes past it where a notebook needs to:

- the runner lives in its own session, so a cell interrupt (SIGINT to the kernel's
  process group) never reaches it; interrupts become cancel requests instead;
- the runner binds port 0 and announces its port in a handshake line (no race);
- a per-runner token travels by environment, never argv;
- the runner exits when our stdin pipe closes or our pid dies (no orphans);
- waiting for readiness times out only when progress stops, not at a fixed time.

The HTTP side is :class:`~.connection.RunnerConnection`; what is particular to
one local subprocess is its owner here, :class:`LocalProcess`.
"""

from __future__ import annotations

import os
import secrets
import sys
from collections.abc import Sequence

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
from ..weight_format import find_openblas, with_preload
from .connection import REQUEST_TIMEOUT, STATUS_TIMEOUT, RunnerConnection
from .process import RunnerProcess
from .registry import Registry
from .stderr_tail import failure_message
from .streams import CompletionStream

__all__ = ["CompletionStream", "LocalProcess", "PYTHON_ENV", "REQUEST_TIMEOUT", "RunnerClient",
           "STATUS_TIMEOUT", "RunnerLaunch", "runner_env", "runner_python"]

PYTHON_ENV = "MLX_NOTEBOOK_PYTHON"  # the interpreter that runs runners, if not this one
HANDSHAKE_TIMEOUT = 60.0


def runner_env(python: str, env: dict[str, str]) -> dict[str, str]:
    """``env`` for a runner-side process: with this interpreter, this very mlx_notebook."""
    if os.path.realpath(python) == os.path.realpath(sys.executable):
        here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env = {**env, "PYTHONPATH": os.pathsep.join(p for p in (here, env.get("PYTHONPATH")) if p)}
    return env


def runner_python(python: str | None = None) -> str:
    """The interpreter that runs runners: ``python``, ``$MLX_NOTEBOOK_PYTHON`` or this one."""
    return python or os.environ.get(PYTHON_ENV) or sys.executable


_RANK_ENV = ("MLX_HOSTFILE", "MLX_RANK")  # what the runner reads as --hostfile, --rank


class RunnerLaunch:
    """How a runner process is started here: interpreter, module, model, extra flags."""

    def __init__(self, spec: str, *, python: str | None = None, context_length: int | None = None,
                 env: dict[str, str] | None = None, extra_args: Sequence[str] = (),
                 runner_module: str = "mlx_notebook.runner", registry: Registry | None = None,
                 handshake_timeout: float = HANDSHAKE_TIMEOUT) -> None:
        self.spec = spec
        self.python = runner_python(python)
        self.context_length = context_length
        self.env = dict(env or {})
        self.extra_args = tuple(extra_args)
        self.runner_module = runner_module
        self.registry = registry if registry is not None else Registry()
        self.handshake_timeout = handshake_timeout

    def argv(self, host: str = "127.0.0.1") -> list[str]:
        """The runner's argv (no secrets in it: the token goes by environment)."""
        cmd = [self.python, "-m", self.runner_module, "--model", self.spec,
               "--host", host, "--port", "0", "--parent-pid", str(os.getpid())]
        if self.context_length:
            cmd += ["--context", str(self.context_length)]
        return cmd + list(self.extra_args)

    def environment(self, token: str) -> dict[str, str]:
        """This process's environment, the caller's ``env`` and the token.

        A kernel started by ``mlx.launch`` has ``MLX_HOSTFILE``/``MLX_RANK``: passed on,
        they would make a plain runner a group rank (a group's ranks get theirs as flags).
        """
        inherited = {k: v for k, v in os.environ.items() if k not in _RANK_ENV}
        env = runner_env(self.python, {**inherited, **self.env, protocol.TOKEN_ENV: token,
                                       "PYTHONUNBUFFERED": "1"})
        return self._with_openblas(env)

    def _with_openblas(self, env: dict[str, str]) -> dict[str, str]:
        """Preload OpenBLAS from the start where the runner would re-exec itself to get it:
        one interpreter start instead of two on a Linux CPU (runner/fastblas.py)."""
        if "--no-openblas" in self.extra_args or "openblas" in env.get("LD_PRELOAD", ""):
            return env
        if os.path.realpath(self.python) != os.path.realpath(sys.executable):
            return env  # another interpreter: its own install decides (CUDA or not)
        library = find_openblas(env)
        if library is None:
            return env
        return with_preload(env, library)


class LocalProcess:
    """The owner of one runner subprocess on this machine."""

    remote = False

    def __init__(self, launch: RunnerLaunch) -> None:
        self.launch = launch
        self.process: RunnerProcess | None = None

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    @property
    def has_exited(self) -> bool:
        return self.process is not None and self.process.has_exited

    @property
    def returncode(self) -> int | None:
        return None if self.process is None else self.process.returncode

    @property
    def python(self) -> str:
        return self.launch.python

    def start(self, conn: RunnerConnection, token: str) -> tuple[str, int]:
        """Spawn the runner in its own session and wait for its handshake line."""
        self.process = RunnerProcess(self.launch.argv(), self.launch.environment(token),
                                     label=f"runner {conn.name!r} (pid ?, {conn.spec})")
        try:
            hs = self.process.spawn(self.launch.handshake_timeout)
        except BaseException:
            conn.close(grace=1.0)
            raise
        if self.process.pid is not None:
            self.launch.registry.add(self.process.pid, port=hs.port, spec=conn.spec,
                                     name=conn.name)
        return hs.host, hs.port

    def wait_exit(self, timeout: float) -> bool:
        return self.process is not None and self.process.wait_exit(timeout)

    def exit_description(self) -> str:
        return "not started" if self.process is None else self.process.exit_description()

    def exit_message(self, what: str) -> str:
        assert self.process is not None
        return self.process.exit_message(what)

    def error_lines(self) -> list[str]:
        return [] if self.process is None else self.process.tail.error_lines()

    def stderr_lines(self) -> list[str]:
        """The bounded tail of everything the runner wrote after its handshake."""
        return [] if self.process is None else self.process.tail.lines()

    def describe(self, conn: RunnerConnection) -> str:
        return f"runner {conn.name!r} (pid {self.pid}) at {conn.base_url}"

    def gone(self, conn: RunnerConnection, what: str, *, wait: bool) -> MLXNotebookError | None:
        """Our own process tells: exited (maybe within a second of a broken connection)."""
        if self.has_exited or (wait and self.wait_exit(1.0)):
            return RunnerExitedError(self.exit_message(what), returncode=self.returncode)
        return None

    def explain(self, exc: MLXNotebookError, what: str) -> MLXNotebookError:
        return exc

    def unauthorized_hint(self) -> str:
        return "token mismatch: is this our runner?"

    def not_open_error(self, conn: RunnerConnection) -> MLXNotebookError:
        state = "closed" if conn.closed else "not started"
        return RunnerUnavailableError(f"runner {conn.name!r} is {state}")

    def poll_status(self, conn: RunnerConnection, first: bool) -> Status | None:
        if self.has_exited:
            raise RunnerStartError(self.exit_message("while loading its model"))
        try:
            return conn.status()
        except RunnerExitedError as exc:
            raise RunnerStartError(str(exc)) from exc
        except RunnerUnavailableError:
            return None  # not answering yet; the no-progress timeout covers a hang
        except GenerationError as exc:
            # /v1/status never waits on the model: an error answer will not go away.
            raise RunnerStartError(failure_message(str(exc), None, self.error_lines())) from exc

    def load_failed(self, conn: RunnerConnection, status: Status | None, stalled: str,
                    ) -> MLXNotebookError:
        if status is None:
            return RunnerStartTimeout(failure_message(
                f"runner for {conn.spec!r} {stalled}", None, self.error_lines()))
        self.wait_exit(2.0)
        lines = self.error_lines()
        if status.error and not any(status.error in ln for ln in lines):
            lines.insert(0, status.error)
        return RunnerStartError(failure_message(
            f"runner for {conn.spec!r} failed to load", self.returncode, lines))

    def ready(self, conn: RunnerConnection, status: Status) -> None:
        pass

    def stop(self, conn: RunnerConnection, grace: float, *, shutdown: bool) -> None:
        """Ask (shutdown + stdin EOF), then SIGTERM, then SIGKILL after ``grace``."""
        if self.process is None:
            return
        self.process.stop(grace, lambda: conn.ask_shutdown(min(1.0, grace)))
        if self.process.has_exited and self.process.pid is not None:
            self.launch.registry.remove(self.process.pid)


class RunnerClient(RunnerConnection):
    """One runner subprocess serving one model. ``start()``, ``wait_until_ready()``, use, ``close()``.

    Usable on its own in scripts (the ``with`` block starts, waits and closes)::

        with RunnerClient("demo") as client:
            text, done = client.complete("What is the capital of France?")
    """

    owner: LocalProcess

    def __init__(self, spec: str, *, name: str | None = None, python: str | None = None,
                 context_length: int | None = None, env: dict[str, str] | None = None,
                 extra_args: Sequence[str] = (), runner_module: str = "mlx_notebook.runner",
                 registry: Registry | None = None, handshake_timeout: float = HANDSHAKE_TIMEOUT,
                 stream_read_timeout: float | None = None) -> None:
        launch = RunnerLaunch(spec, python=python, context_length=context_length, env=env,
                              extra_args=extra_args, runner_module=runner_module,
                              registry=registry, handshake_timeout=handshake_timeout)
        super().__init__(spec, LocalProcess(launch), name=name, token=secrets.token_urlsafe(32),
                         stream_read_timeout=stream_read_timeout)
        self.context_length = context_length

    @property
    def returncode(self) -> int | None:
        return self.owner.returncode

    def stderr_lines(self) -> list[str]:
        """The bounded tail of everything the runner wrote after its handshake."""
        return self.owner.stderr_lines()

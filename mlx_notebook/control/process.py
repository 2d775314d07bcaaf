"""RunnerProcess: the runner subprocess itself, apart from the HTTP that talks to it.

Spawned in its own session (a cell interrupt sent to the kernel's process group
must never reach it), with a stdin pipe held open as the parent-death signal, its
handshake line read from stdout, and a bounded tail of its stderr kept to explain
a failure. Stopped by a ladder: ask, SIGTERM, SIGKILL.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence

from .. import protocol
from ..errors import ProtocolError, RunnerStartError, RunnerStartTimeout
from .stderr_tail import StderrTail, describe_exit, failure_message

POLL_INTERVAL = 0.1


class RunnerProcess:
    """One runner subprocess: ``spawn()`` returns its handshake; ``stop()`` ends it."""

    def __init__(self, argv: Sequence[str], env: dict[str, str], *, label: str,
                 first_line: bytes | None = None) -> None:
        self.argv = list(argv)
        self.env = env
        self.first_line = first_line  # written to its stdin at once (a token over ssh)
        self.label = label  # how messages name it: "runner 'demo' (pid 42, demo)"
        self.proc: subprocess.Popen[bytes] | None = None
        self.tail = StderrTail()
        self.handshake: protocol.Handshake | None = None
        self._bad_handshake: str | None = None
        self._handshake_seen = threading.Event()
        self._stdout_thread: threading.Thread | None = None

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def spawn(self, handshake_timeout: float) -> protocol.Handshake:
        """Start the process and wait for its handshake line (or its early death)."""
        try:
            self.proc = subprocess.Popen(
                self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, env=self.env, start_new_session=True, close_fds=True,
            )
        except OSError as exc:
            raise RunnerStartError(f"could not start {self.label} with {self.argv[0]!r}: {exc}"
                                   ) from exc
        self.label = self.label.replace("(pid ?", f"(pid {self.proc.pid}")
        if self.first_line is not None:
            with contextlib.suppress(OSError):  # an early death is reported below
                self.proc.stdin.write(self.first_line + b"\n")  # type: ignore[union-attr]
                self.proc.stdin.flush()  # type: ignore[union-attr]
        self.tail.follow(self.proc.stderr, name=f"runner-{self.proc.pid}-stderr")  # type: ignore[arg-type]
        self._stdout_thread = threading.Thread(
            target=self._read_stdout, name=f"runner-{self.proc.pid}-stdout", daemon=True)
        self._stdout_thread.start()
        deadline = time.monotonic() + handshake_timeout
        while not self._handshake_seen.wait(POLL_INTERVAL):
            if time.monotonic() > deadline:
                raise RunnerStartTimeout(failure_message(
                    f"{self.label} did not announce its port within {handshake_timeout:.0f} s",
                    None, self.tail.error_lines()))
        if self.handshake is None:
            if self._bad_handshake is not None:
                raise ProtocolError(
                    f"{self.label} started with {self._bad_handshake!r} instead of its "
                    f"handshake line; is {self.argv[0]!r} running a matching mlx_notebook?")
            self.wait_exit(2.0)
            raise RunnerStartError(self.exit_message("before it started listening"))
        if self.handshake.protocol != protocol.PROTOCOL_VERSION:
            raise ProtocolError(
                f"{self.label} speaks protocol {self.handshake.protocol}, this client "
                f"{protocol.PROTOCOL_VERSION}: install the same mlx_notebook in {self.argv[0]!r}")
        return self.handshake

    def _read_stdout(self) -> None:
        """The first stdout line must be the handshake; later lines join the tail."""
        assert self.proc is not None and self.proc.stdout is not None
        try:
            for raw in iter(self.proc.stdout.readline, b""):
                line = raw.decode("utf-8", errors="replace").strip()
                if self._handshake_seen.is_set():
                    self.tail.feed(line)
                elif line:
                    try:
                        self.handshake = protocol.Handshake.from_line(line)
                    except (ValueError, KeyError, TypeError):
                        self._bad_handshake = line[:300]
                    self._handshake_seen.set()
        except (OSError, ValueError):
            pass
        finally:
            self._handshake_seen.set()

    # ------------------------------------------------------------ state

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    @property
    def has_exited(self) -> bool:
        return self.returncode is not None

    def wait_exit(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for the process to exit; True if it has."""
        if self.proc is None:
            return False
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return False
        return True

    def exit_description(self) -> str:
        return "not started" if self.proc is None else describe_exit(self.proc.poll())

    def exit_message(self, what: str) -> str:
        """``runner 'x' (pid 1, spec) exited <what> (killed by SIGKILL): <its error lines>``."""
        self.tail.wait_closed(0.5)  # let its last words arrive
        return failure_message(f"{self.label} exited {what}", self.returncode,
                               self.tail.error_lines())

    # ------------------------------------------------------------ stopping

    def send_signal(self, sig: int) -> None:
        """Signal the runner's process group (its own session), so its children go too."""
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)

    def stop(self, grace: float, ask: Callable[[], None] | None = None) -> None:
        """Ask (``ask()`` + stdin EOF), SIGTERM after ``grace/2``, SIGKILL after ``grace``."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            deadline = time.monotonic() + grace
            if ask is not None and self.handshake is not None:
                ask()
            with contextlib.suppress(OSError):
                proc.stdin.close()  # type: ignore[union-attr]
            if not self.wait_exit(grace / 2):
                self.send_signal(signal.SIGTERM)
                if not self.wait_exit(max(deadline - time.monotonic(), 0.1)):
                    self.send_signal(signal.SIGKILL)
                    self.wait_exit(5.0)
        self.release()

    def release(self) -> None:
        """Close the pipes once the reader threads have drained them."""
        proc = self.proc
        if proc is None:
            return
        self.tail.wait_closed(1.0)
        if self._stdout_thread is not None:
            self._stdout_thread.join(1.0)
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            with contextlib.suppress(OSError):
                if pipe is not None:
                    pipe.close()

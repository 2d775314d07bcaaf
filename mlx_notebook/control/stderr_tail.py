"""A bounded tail of a runner's stderr, and the lines in it that explain a failure.

A runner that dies says why on stderr (a Python traceback, an MLX ``[METAL]`` abort,
an out-of-memory message, or its own one-line load error). We keep the last lines
in memory, never the whole stream, and put the telling ones into every error that
a failed runner causes, next to its exit code or signal.
"""

from __future__ import annotations

import collections
import re
import signal
import threading
from typing import IO

MAX_LINES = 200
MAX_LINE_CHARS = 2000
MAX_ERROR_LINES = 8

# Lines that say what went wrong, wherever they appear in the tail.
_ERROR_PATTERNS = [
    re.compile(r"\[(METAL|CPU|CUDA)\]"),
    re.compile(r"out of memory|insufficient memory|MemoryError|bad_alloc", re.IGNORECASE),
    re.compile(r"^(error|fatal|panic)\b\s*[:!]", re.IGNORECASE),
    re.compile(r"^mlx[_-]?notebook[\w. ]*:", re.IGNORECASE),  # the runner's own one-liners
    re.compile(r"terminate called|libc\+\+abi: terminating"),
]
# The last line of a Python traceback: ``SomeError: message`` (module-qualified or not).
_EXCEPTION_LINE = re.compile(
    r"^([A-Za-z_][\w.]*\.)?[A-Z]\w*(Error|Exception|Exit|Interrupt|Warning|Abort)\b(:.*)?$"
)
_TRACEBACK_START = "Traceback (most recent call last):"


def extract_error_lines(lines: list[str], limit: int = MAX_ERROR_LINES) -> list[str]:
    """The lines of a stderr tail that explain a failure, oldest first, without duplicates.

    Falls back to the last non-empty line (as Ollama's runner client does) when
    nothing looks like an error, so a failure never comes without any text.
    """
    found: list[str] = []
    in_traceback = False
    for raw in lines:
        line = raw.strip()
        if not line:
            continue
        if line.startswith(_TRACEBACK_START):
            in_traceback = True
            continue
        if in_traceback:
            # Traceback bodies are indented; the first unindented line ends it.
            if raw[:1].isspace():
                continue
            in_traceback = False
            if _EXCEPTION_LINE.match(line) or ":" in line:
                found.append(line)
                continue
        if any(p.search(line) for p in _ERROR_PATTERNS) or _EXCEPTION_LINE.match(line):
            found.append(line)
    unique = list(dict.fromkeys(found))
    if not unique:
        tail = [ln.strip() for ln in lines if ln.strip()]
        unique = tail[-1:]
    return unique[-limit:]


def describe_exit(returncode: int | None) -> str:
    """``"exited with code 1"``, ``"killed by SIGKILL"`` or ``"still running"``."""
    if returncode is None:
        return "still running"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"killed by {name}"
    return f"exited with code {returncode}"


def failure_message(headline: str, returncode: int | None, error_lines: list[str]) -> str:
    """One message for an error a failed runner caused: what, how it ended, why."""
    message = headline
    if returncode is not None:
        message += f" ({describe_exit(returncode)})"
    if error_lines:
        message += ": " + " | ".join(error_lines)
    return message


class StderrTail:
    """The last ``max_lines`` lines of a stream, filled by a daemon reader thread."""

    def __init__(self, max_lines: int = MAX_LINES, max_line_chars: int = MAX_LINE_CHARS) -> None:
        self._lines: collections.deque[str] = collections.deque(maxlen=max_lines)
        self._max_line_chars = max_line_chars
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.closed = threading.Event()  # set at EOF: everything the process wrote is here

    def feed(self, line: str) -> None:
        line = line.rstrip("\r\n")
        if len(line) > self._max_line_chars:
            line = line[: self._max_line_chars] + "…"
        with self._lock:
            self._lines.append(line)

    def lines(self) -> list[str]:
        with self._lock:
            return list(self._lines)

    def error_lines(self, limit: int = MAX_ERROR_LINES) -> list[str]:
        return extract_error_lines(self.lines(), limit)

    def follow(self, stream: IO[bytes], name: str = "stderr-tail") -> threading.Thread:
        """Read ``stream`` to EOF in a daemon thread, keeping its tail."""

        def run() -> None:
            try:
                for raw in iter(stream.readline, b""):
                    self.feed(raw.decode("utf-8", errors="replace"))
            except (OSError, ValueError):
                pass  # the pipe was closed under us: the process is gone
            finally:
                self.closed.set()

        self._thread = threading.Thread(target=run, name=name, daemon=True)
        self._thread.start()
        return self._thread

    def wait_closed(self, timeout: float) -> bool:
        """Wait for EOF, so an exited process's last words are in the tail."""
        return self.closed.wait(timeout)

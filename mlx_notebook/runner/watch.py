"""Exit when the parent dies, so no runner outlives its kernel.

Two signals, because neither is enough alone: EOF on stdin (the parent holds the
pipe's write end; the kernel dying closes it, on every OS) and a poll of the
parent's pid (for parents that did not give us a pipe). macOS has no PDEATHSIG.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable

_POLL_SECONDS = 0.25


def watch_parent(on_parent_gone: Callable[[str], None], *, parent_pid: int | None,
                 watch_stdin: bool) -> None:
    """Start daemon threads that call ``on_parent_gone(reason)`` once the parent is gone."""
    fired = threading.Event()

    def fire(reason: str) -> None:
        if not fired.is_set():
            fired.set()
            on_parent_gone(reason)

    if watch_stdin:
        threading.Thread(target=_wait_for_stdin_eof, args=(fire,), name="stdin-watch",
                         daemon=True).start()
    original_ppid = os.getppid()
    threading.Thread(target=_poll_parent, args=(fire, parent_pid, original_ppid),
                     name="parent-watch", daemon=True).start()


def _wait_for_stdin_eof(fire: Callable[[str], None]) -> None:
    try:
        while sys.stdin.buffer.read(4096):
            pass
    except (OSError, ValueError):
        pass
    fire("stdin closed")


def _poll_parent(fire: Callable[[str], None], parent_pid: int | None, original_ppid: int) -> None:
    while True:
        time.sleep(_POLL_SECONDS)
        if os.getppid() != original_ppid:
            fire(f"parent process {original_ppid} exited")
            return
        if parent_pid is not None and not _alive(parent_pid):
            fire(f"parent process {parent_pid} exited")
            return


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie still answers kill(0); it is dead for our purpose
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True

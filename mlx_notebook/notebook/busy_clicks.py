"""Hear a widget button's click while the cell that drew it is still running.

A running cell holds the kernel's main thread, so the click's ``comm_msg`` waits in
the shell queue until the cell ends: too late for a stop button. How to get it
sooner depends on ipykernel:

- ipykernel 7 reads the shell socket on its own thread and, for a comm message,
  asks the comm where to route it (``comm._reply_subshell_for``) on that thread,
  before queueing it. We listen there: a click sets a :class:`threading.Event` at
  once, and the message still reaches the main thread later (harmless: the view
  has ended by then). No message is taken out of the kernel's queues.
- ipykernel 6 has ``kernel.do_one_iteration``: ``jupyter_ui_poll`` serves queued
  widget messages between training events (:meth:`ClickListener.pump`).

Outside a kernel (a plain shell, a script) there is nothing to hear: ``clicked``
stays unset and the caller's other stop path (an interrupt) still works.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["ClickListener"]


def _is_click(data: Any) -> bool:
    """A Button's click as the frontend sends it: ``{"method": "custom", "content":
    {"event": "click"}}`` (ipywidgets 7 and 8)."""
    return (isinstance(data, dict) and data.get("method") == "custom"
            and isinstance(data.get("content"), dict) and data["content"].get("event") == "click")


def _running_kernel() -> Any:
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - ipykernel depends on IPython
        return None
    return getattr(get_ipython(), "kernel", None)


class ClickListener:
    """``clicked`` is set as soon as ``button`` is clicked, even mid-cell; :meth:`close` stops."""

    def __init__(self, button: Any) -> None:
        self.clicked = threading.Event()
        self.how = "none"  # "shell thread", "ui poll" or "none": for tests and the curious
        self._comm: Any = None
        self._poll: Callable[[int], Any] | None = None
        self._poll_ctx: Any = None
        if self._listen_on_shell_thread(button):
            self.how = "shell thread"
        elif self._start_ui_poll():
            self.how = "ui poll"

    def _listen_on_shell_thread(self, button: Any) -> bool:
        comm: Any = getattr(button, "comm", None)
        route = getattr(comm, "_reply_subshell_for", None)
        kernel = getattr(comm, "kernel", None) or _running_kernel()
        if route is None or kernel is None or getattr(kernel, "shell_channel_thread", None) is None:
            return False
        clicked = self.clicked

        def route_and_listen(data: Any, default: Any) -> Any:
            if _is_click(data):
                clicked.set()
            return route(data, default)

        comm._reply_subshell_for = route_and_listen  # an instance attribute over the method
        self._comm = comm
        return True

    def _start_ui_poll(self) -> bool:
        try:
            from jupyter_ui_poll import ui_events  # type: ignore[import-untyped]
        except ImportError:  # pragma: no cover - declared, but be kind to a partial install
            return False
        try:
            ctx = ui_events()
            self._poll = ctx.__enter__()
        except Exception:  # noqa: BLE001 - not in a kernel (a plain shell): no button events
            return False
        self._poll_ctx = ctx
        return True

    def pump(self) -> None:
        """Serve queued widget messages where only polling can (ipykernel 6); else nothing."""
        if self._poll is not None:
            try:
                self._poll(20)
            except Exception:  # noqa: BLE001 - a UI hiccup must not end the caller's work
                self._close_poll()

    def close(self) -> None:
        comm, self._comm = self._comm, None
        if comm is not None:
            with contextlib.suppress(AttributeError):
                del comm._reply_subshell_for  # the class's method again
        self._close_poll()

    def _close_poll(self) -> None:
        ctx, self._poll, self._poll_ctx = self._poll_ctx, None, None
        if ctx is not None:
            with contextlib.suppress(Exception):
                ctx.__exit__(None, None, None)

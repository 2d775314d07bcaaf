"""Live widgets (ipywidgets 8): runner status and memory, and a load progress bar.

>>> from mlx_notebook.notebook.widgets import StatusWidget
>>> StatusWidget()            # doctest: +SKIP   (what ``%mlx status`` shows)

The status widget has one row per runner: name and model, state (loading /
ready / generating / error), a progress bar while loading, a memory bar (active
against the limit MLX may use, peak in the label), context length and the last
tokens/s, and two buttons: free its caches (``%mlx free``) and unload it. A daemon
thread polls the runners while something happens and parks after a few idle polls;
the manager's events (a load, an unload, a generation) wake it.

Labels are never cut: buttons size to their words and a row wraps when the cell
is narrow. :meth:`StatusWidget.display` puts a static snapshot (text and HTML of
the last settled state) beside the widget, so a saved notebook still shows the
status where no kernel (or no widget manager) renders the widget.
"""

from __future__ import annotations

import contextlib
import html
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import ipywidgets as w

from ..errors import MLXNotebookError
from ..protocol import Status
from ..units import format_bytes
from .display import in_kernel, ranks_text, runner_statuses, state_label, status_line, status_text
from .kv_text import kv_text

StatusSource = Callable[[], dict[str, Status]]
RowAction = Callable[[str, str], str]  # (action, runner name) -> a line saying what happened


def is_busy(status: Status) -> bool:
    return status.state in ("loading", "stopping", "training") or status.active_requests > 0


_FIT = {"width": "auto", "min_width": "fit-content", "flex": "0 0 auto"}
_STATE_STYLE = {"loading": "info", "ready": "success", "generating": "warning",
                "error": "danger", "stopping": "warning", "training": "warning"}


def manager_action(action: str, name: str) -> str:
    """What the row buttons do by default: the same calls as ``%mlx free`` / ``%mlx unload``."""
    from .. import api
    from .display import free_message

    if action == "free":
        return free_message(api.free_memory(name))
    api.unload(name)
    return f"unloaded {name}"


class RunnerRow(w.HBox):
    """The widgets of one runner, with buttons to free its caches and to unload it."""

    def __init__(self, name: str, on_action: RowAction = manager_action) -> None:
        self.name = name
        self.on_action = on_action
        self.note = ""  # what the last button did, shown until the next one
        # Widths fit the words (never "genera…"); the row wraps rather than cutting them.
        self.title = w.HTML(layout=w.Layout(min_width="10em", max_width="220px"))
        self.state = w.Button(disabled=True, layout=w.Layout(**_FIT))
        self.progress = w.FloatProgress(min=0, max=100, description="load",
                                        layout=w.Layout(width="220px"))
        self.memory = w.FloatProgress(min=0, max=100, description="memory",
                                      layout=w.Layout(width="220px"))
        self.free_button = w.Button(description="free cache", layout=w.Layout(**_FIT),
                                    tooltip="drop the prompt cache and MLX's buffer cache; "
                                            "the model stays loaded")
        self.unload_button = w.Button(description="unload", layout=w.Layout(**_FIT),
                                      tooltip="stop this runner (disconnect a remote one)")
        self.free_button.on_click(lambda _b: self._act("free"))
        self.unload_button.on_click(lambda _b: self._act("unload"))
        self.info = w.HTML()
        self._last: Status | None = None
        super().__init__([self.title, self.state, self.progress, self.memory, self.free_button,
                          self.unload_button, self.info],
                         layout=w.Layout(flex_flow="row wrap", align_items="center"))

    def _act(self, action: str) -> None:
        """A click: run the action; a failure becomes the row's note, never a traceback."""
        try:
            self.note = self.on_action(action, self.name)
        except MLXNotebookError as exc:
            self.note = f"{action} failed: {exc}"
        if self._last is not None and self.comm is not None:
            self.show(self._last)

    def show(self, status: Status) -> None:
        self._last = status
        label = state_label(status)
        mem = status.memory
        limit = mem.limit or mem.rss or 1
        with contextlib.ExitStack() as stack:
            for child in self.children:
                stack.enter_context(child.hold_sync())
            model = status.model or status.source or "?"
            self.title.value = f"<b>{html.escape(self.name)}</b> {html.escape(model)}"
            self.state.description = label
            self.state.button_style = _STATE_STYLE.get(label, "")
            self.progress.value = float(status.progress)
            self.progress.layout.display = "" if status.state == "loading" else "none"
            self.memory.value = min(100.0, 100.0 * mem.active / limit)
            self.memory.bar_style = "danger" if mem.active > 0.9 * limit else (
                "warning" if mem.active > 0.7 * limit else "")
            bits = [f"{format_bytes(mem.active)} active, peak {format_bytes(mem.peak)}"
                    + (f" / {format_bytes(mem.limit)}" if mem.limit else "")]
            if status.context_length:
                bits.append(f"ctx {status.context_length}")
            if status.last_tokens_per_second:
                bits.append(f"{status.last_tokens_per_second:.1f} tok/s")
            if status.state == "loading" and status.progress_message:
                bits.append(status.progress_message)
            if status.ranks:
                bits.append(html.escape(ranks_text(status)))
            if kv := kv_text(status):
                bits.append(html.escape(kv))
            if status.error:
                bits.append(f"<span style='color:#c00'>{html.escape(status.error)}</span>")
            if self.note:
                bits.append(f"<i>{html.escape(self.note)}</i>")
            self.info.value = " · ".join(bits)
            self.free_button.disabled = status.state != "ready"


# The snapshot hides itself where the widget beside it is rendered (a live notebook, or a
# saved one whose widget manager loaded): it is the fallback, not a second status.
_SNAPSHOT_STYLE = ("<style>.jp-OutputArea-child:has(.widget-vbox) + .jp-OutputArea-child "
                   ".mlxnb-status-snapshot{display:none}</style>")


def status_html(statuses: Mapping[str, Status], when: str = "") -> str:
    """A static table of the runners (the snapshot a saved notebook shows)."""
    if not statuses:
        return (f"{_SNAPSHOT_STYLE}<div class='mlxnb-status-snapshot'>No models loaded: run "
                "<code>%mlx load demo</code></div>")
    rows = "".join(
        f"<tr><td><b>{html.escape(name)}</b></td><td>{html.escape(s.model or s.source or '?')}</td>"
        f"<td>{html.escape(state_label(s))}</td>"
        f"<td>{format_bytes(s.memory.active)} (peak {format_bytes(s.memory.peak)})</td>"
        f"<td>{s.context_length or '-'}</td>"
        f"<td>{html.escape(s.error or '')}</td></tr>"
        for name, s in statuses.items())
    caption = f"<caption style='caption-side:bottom;color:#888'>status at {when}</caption>" if when else ""
    return (f"{_SNAPSHOT_STYLE}<table class='mlxnb-status-snapshot' style='font-size:90%'>"
            "<thead><tr><th>name</th><th>model</th><th>state</th><th>memory</th><th>context</th>"
            f"<th></th></tr></thead><tbody>{rows}</tbody>{caption}</table>")


class StatusWidget(w.VBox):
    """One row per runner, refreshed live while anything loads or generates.

    >>> sw = StatusWidget(); sw.refresh()     # doctest: +SKIP
    >>> sw.rows["demo"].state.description     # doctest: +SKIP
    'ready'
    """

    def __init__(self, source: StatusSource | None = None, *, interval: float = 0.5,
                 idle_polls: int = 3, poll: bool = True,
                 on_action: RowAction = manager_action) -> None:
        self.empty = w.HTML("No models loaded: run <code>%mlx load demo</code>")
        super().__init__([self.empty])
        self.source = source or runner_statuses
        self.on_action = on_action
        self.interval = interval
        self.idle_polls = idle_polls
        self.rows: dict[str, RunnerRow] = {}
        self.last: dict[str, Status] = {}
        self._lock = threading.Lock()  # the poll thread and the caller may both refresh
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.polls = 0
        self._snapshot: Any = None  # the display handle of the static snapshot, once shown
        self.refresh()
        from ..control.manager import get_manager

        self._unsubscribe = get_manager().subscribe(self._on_manager_event)
        if poll:
            self.start()

    def refresh(self, statuses: dict[str, Status] | None = None) -> bool:
        """Redraw from ``statuses`` (default: ask the runners); True if any runner is busy."""
        with self._lock:
            return self._refresh(statuses)

    def _refresh(self, statuses: dict[str, Status] | None) -> bool:
        if statuses is None:
            statuses = self.source()
        self.last = dict(statuses)
        with self.hold_sync():
            for name in [n for n in self.rows if n not in statuses]:
                self.rows.pop(name).close()
            for name, status in statuses.items():
                if name not in self.rows:
                    self.rows[name] = RunnerRow(name, self._row_action)
                self.rows[name].show(status)
            self.children = [self.rows[n] for n in statuses] or [self.empty]
        return any(is_busy(s) for s in statuses.values())

    def _row_action(self, action: str, name: str) -> str:
        note = self.on_action(action, name)
        self.wake()  # an unload removes the row at the next poll; a free shows less memory
        return note

    def __repr__(self) -> str:
        # The text/plain fallback saved beside the widget: readable on GitHub and in a terminal.
        return status_text(self.last)

    def snapshot(self) -> dict[str, str]:
        """The last state as a static output (text and HTML) that renders without a kernel."""
        when = time.strftime("%H:%M:%S")
        return {"text/plain": f"{status_text(self.last)}\n(status at {when})",
                "text/html": status_html(self.last, when)}

    def display(self) -> None:
        """Show the live widget with its static snapshot beside it (what ``%mlx status`` does)."""
        from IPython.display import display

        display(self)
        self._snapshot = display(self.snapshot(), raw=True, display_id=True)

    def _update_snapshot(self) -> None:
        if self._snapshot is not None:
            with contextlib.suppress(Exception):  # a closed front end must not kill the thread
                self._snapshot.update(self.snapshot(), raw=True)

    def start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="mlx-status", daemon=True)
            self._thread.start()

    def wake(self) -> None:
        """Poll again (a load or a generation started)."""
        self._wake.set()

    @property
    def polling(self) -> bool:
        """True while the thread polls (False once parked because all is idle)."""
        return self._thread is not None and self._thread.is_alive() and not self._parked

    _parked = False

    def _run(self) -> None:
        idle = 0
        while not self._stop.is_set():
            if idle >= self.idle_polls:
                self._update_snapshot()  # all settled: that is the state worth saving
                self._parked = True
                self._wake.wait()
                self._parked = False
                idle = 0
            self._wake.clear()
            self._wake.wait(self.interval)
            if self._stop.is_set():
                break
            try:
                busy = self.refresh()
            except Exception:  # noqa: BLE001 - a broken poll must not kill the widget thread
                busy = False
            self.polls += 1
            idle = 0 if busy else idle + 1

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        self._unsubscribe()
        for row in self.rows.values():
            row.close()
        super().close()

    def _on_manager_event(self, event: str, name: str | None) -> None:
        """A model came or went: redraw now; anything else: poll again."""
        if event in ("loaded", "unloaded"):
            with contextlib.suppress(MLXNotebookError):
                self.refresh()
            self._update_snapshot()
        self.wake()


class LoadProgress:
    """The progress bar of ``%mlx load``; becomes a one-line status when the model is ready.

    >>> with LoadProgress("demo") as p:          # doctest: +SKIP
    ...     client = manager.load("demo", on_progress=p.update)
    ...     p.done(client.status())
    """

    def __init__(self, name: str, *, mode: str = "auto", clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self.mode = mode if mode != "auto" else ("display" if in_kernel() else "print")
        self.clock = clock
        self.bar: w.FloatProgress | None = None
        self.label: w.HTML | None = None
        self._box: w.HBox | None = None
        self._handle: Any = None
        self._last_print = float("-inf")
        self._last_text = ""

    def __enter__(self) -> LoadProgress:
        if self.mode == "display":
            from IPython.display import display

            self.bar = w.FloatProgress(min=0, max=100, description="loading",
                                       layout=w.Layout(width="300px"))
            self.label = w.HTML(html.escape(self.name))
            self._box = w.HBox([self.bar, self.label])
            self._handle = display(self._box, display_id=True)
        return self

    def update(self, status: Status) -> None:
        text = f"{self.name}: {status.progress:.0f}% {status.progress_message}".rstrip()
        if self.bar is not None and self.label is not None:
            with self.bar.hold_sync():
                self.bar.value = float(status.progress)
                self.label.value = html.escape(text)
        elif (status.state == "loading" and text != self._last_text
              and self.clock() - self._last_print >= 1.0):
            print(text, flush=True)
            self._last_print, self._last_text = self.clock(), text

    def message(self, text: str) -> None:
        if self.label is not None:
            self.label.value = html.escape(f"{self.name}: {text}")
        else:
            print(f"{self.name}: {text}", flush=True)

    def done(self, status: Status) -> None:
        line = f"{self.name}: {status_line(status)}"
        if self._handle is not None:
            self._handle.update({"text/plain": line}, raw=True)
            self._handle = None
        else:
            print(line, flush=True)

    def __exit__(self, *exc: object) -> None:
        if self._handle is not None:  # failed: leave a line saying so, not a frozen bar
            self._handle.update({"text/plain": f"{self.name}: loading failed"}, raw=True)
        for widget in (self._box, self.bar, self.label):
            if widget is not None:
                widget.close()

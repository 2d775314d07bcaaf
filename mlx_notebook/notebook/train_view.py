"""The live view of ``%mlx train``: loss plot, progress bar, speed and memory, a stop button.

Redrawn a few times a second at most (the plot at most once a second), never once
per step. While the cell runs the kernel does not read widget messages, so the
stop button is served by ``jupyter_ui_poll`` between events (each step, or each
2 s keep-alive). When training ends the widgets go and a static PNG of the plot
(matplotlib, drawn without pyplot's global state) stays in the saved notebook.

>>> view = TrainProgressView("tuned")     # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import io
import time
from typing import TYPE_CHECKING, Any

from ..units import format_bytes

if TYPE_CHECKING:
    from ..protocol import Status
    from ..train_protocol import TrainEvent
    from ..training import TrainResult

__all__ = ["TrainProgressView", "loss_plot_png"]

TEXT_EVERY = 0.25  # seconds between redraws of the numbers
PLOT_EVERY = 1.0  # and of the plot


def loss_plot_png(train: list[tuple[int, float]], val: list[tuple[int, float]], iters: int,
                  title: str = "") -> bytes:
    """Train/validation loss against iteration, as PNG bytes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.0, 3.0), dpi=90)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if train:
        ax.plot([i for i, _ in train], [v for _, v in train], label="train", color="#1f77b4", linewidth=1.5)
    if val:
        ax.plot([i for i, _ in val], [v for _, v in val], "o-", label="validation", color="#ff7f0e", markersize=4)
    ax.set_xlim(0, max(iters, 1))
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    if title:
        ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    if train or val:
        ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


class TrainProgressView:
    """A :class:`~mlx_notebook.views.TrainView` for the notebook."""

    def __init__(self, label: str) -> None:
        import ipywidgets as w
        from IPython.display import display

        self.label = label
        self.stop_clicked = False
        self.train: list[tuple[int, float]] = []
        self.val: list[tuple[int, float]] = []
        self.iters = 0
        self.last: TrainEvent | None = None
        self._text_at = self._plot_at = 0.0
        self._dirty_plot = False
        self.header = w.HTML(f"<b>training {label}</b>: starting the training runner")
        self.bar = w.FloatProgress(min=0, max=100, value=0, bar_style="info",
                                   layout=w.Layout(width="60%"))
        self.stats = w.HTML("")
        self.plot = w.Image(format="png", layout=w.Layout(width="540px"))
        self.button = w.Button(description="stop", button_style="warning", icon="stop",
                               tooltip="stop after the current step and keep its adapter")
        self.button.on_click(self._on_stop)
        self.notes = w.HTML("")
        self.box = w.VBox([self.header, w.HBox([self.bar, self.button]), self.stats,
                           self.plot, self.notes])
        display(self.box)
        self._poll = self._ui_poll()

    def _ui_poll(self) -> Any:
        try:
            from jupyter_ui_poll import ui_events  # type: ignore[import-untyped]
        except ImportError:  # pragma: no cover - declared, but be kind to a partial install
            return None
        try:
            ctx = ui_events()
            poll = ctx.__enter__()
        except Exception:  # noqa: BLE001 - not in a kernel (a plain shell): no button events
            return None
        self._ui_ctx = ctx
        return poll

    def _on_stop(self, _button: Any) -> None:
        self.stop_clicked = True
        self.button.disabled = True
        self.button.description = "stopping..."

    # ------------------------------------------------------------ TrainView

    def note(self, text: str) -> None:
        self.notes.value += f"<div style='color:#555'>{_esc(text)}</div>"

    def loading(self, status: Status) -> None:
        if time.monotonic() - self._text_at >= TEXT_EVERY:
            self._text_at = time.monotonic()
            self.header.value = (f"<b>training {_esc(self.label)}</b>: loading "
                                 f"{_esc(status.progress_message)} ({status.progress:.0f}%)")

    def event(self, event: TrainEvent) -> None:
        self.iters = event.iters or self.iters
        if event.kind == "train" and event.train_loss is not None:
            self.train.append((event.iteration, event.train_loss))
            self.last, self._dirty_plot = event, True
        elif event.kind == "val" and event.val_loss is not None:
            self.val.append((event.iteration, event.val_loss))
            self._dirty_plot = True
        now = time.monotonic()
        if event.final or now - self._text_at >= TEXT_EVERY:
            self._text_at = now
            self._draw_text()
        if self._dirty_plot and (event.final or now - self._plot_at >= PLOT_EVERY):
            self._plot_at, self._dirty_plot = now, False
            self.plot.value = loss_plot_png(self.train, self.val, self.iters)

    def pump(self) -> None:
        if self._poll is not None:
            try:
                self._poll(20)
            except Exception:  # noqa: BLE001 - a UI hiccup must not end training
                self._poll = None

    def _draw_text(self) -> None:
        e = self.last
        if e is None:
            return
        self.bar.value = 100.0 * e.iteration / max(e.iters, 1)
        self.header.value = f"<b>training {_esc(self.label)}</b>: iteration {e.iteration}/{e.iters}"
        val = f" · val {self.val[-1][1]:.3f}" if self.val else ""
        eta = f" · ETA {e.eta_seconds:.0f} s" if e.eta_seconds is not None else ""
        self.stats.value = (
            f"loss {e.train_loss:.3f}{val} · lr {e.learning_rate or 0:.1e} · "
            f"{e.tokens_per_second or 0:.0f} tok/s · {e.iterations_per_second or 0:.2f} it/s · "
            f"peak {format_bytes(e.peak_memory)}{eta}")

    def finish(self, result: TrainResult | None, error: str | None = None) -> None:
        from IPython.display import Image, display

        if self._poll is not None:
            with contextlib.suppress(Exception):
                self._ui_ctx.__exit__(None, None, None)
            self._poll = None
        notes = self.notes.value
        self.box.close()  # no live widget in the saved notebook: a static record instead
        if result is not None and result.train_loss:
            how = "stopped" if result.stopped else "done"
            display(Image(data=loss_plot_png(result.train_loss, result.val_loss, result.iters,
                                             f"{result.name}: {how}")))
        from IPython.display import HTML

        line = error if result is None else result.summary()
        display(HTML(f"{notes}<div><b>{_esc(self.label)}</b>: {_esc(line or '')}</div>"))


def _esc(text: str) -> str:
    import html

    return html.escape(text)

"""The live view of ``%mlx train``: loss plot, progress bar, speed and memory, a stop button.

Redrawn a few times a second at most (the plot at most once a second), never once
per step. While the cell runs the kernel's main thread does not read widget messages,
so the stop button is heard by :mod:`~mlx_notebook.notebook.busy_clicks` (on
ipykernel's shell thread, or by polling between events on ipykernel 6). When training ends the widgets go and a static PNG of the plot
(matplotlib, drawn without pyplot's global state) stays in the saved notebook.

>>> view = TrainProgressView("tuned")     # doctest: +SKIP
"""

from __future__ import annotations

import io
import time
from typing import TYPE_CHECKING

from ..units import format_bytes
from .busy_clicks import ClickListener

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
        self._stop_shown = False
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
        self.notes = w.HTML("")
        self.box = w.VBox([self.header, w.HBox([self.bar, self.button]), self.stats,
                           self.plot, self.notes])
        self._handle = display(self.box, display_id=True)  # finish() puts the record there
        self.clicks = ClickListener(self.button)

    @property
    def stop_clicked(self) -> bool:
        return self.clicks.clicked.is_set()

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
        self.clicks.pump()
        if self.stop_clicked and not self._stop_shown:  # widgets change on this thread only
            self._stop_shown = True
            self.button.disabled = True
            self.button.description = "stopping..."

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
        from IPython.display import HTML, Image, display

        self.clicks.close()
        notes = self.notes.value
        line = error if result is None else result.summary()
        record = HTML(f"{notes}<div><b>{_esc(self.label)}</b>: {_esc(line or '')}</div>")
        plot = None
        if result is not None and result.train_loss:
            how = "stopped" if result.stopped else "done"
            plot = Image(data=loss_plot_png(result.train_loss, result.val_loss, result.iters,
                                            f"{result.name}: {how}"))
        # The live widgets' output becomes the static record: no "VBox(...)" stays in the
        # saved notebook, and nothing live is left to render without a kernel.
        if self._handle is not None:
            self._handle.update(plot if plot is not None else record)
        elif plot is not None:
            display(plot)
        self.box.close()
        if plot is not None or self._handle is None:
            display(record)


def _esc(text: str) -> str:
    import html

    return html.escape(text)

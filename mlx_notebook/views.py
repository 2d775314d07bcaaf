"""Where ``show=True`` draws: the views the API uses, registered from the layer above.

The API must not import the notebook wing, yet ``mn.generate(..., show=True)``
streams into the cell and ``mn.load(..., show=True)`` draws a progress bar. So the
API asks :func:`current` for its views, and the package root (``mlx_notebook``,
which wires the wings together) registers the notebook's, which import IPython
and ipywidgets only when they first draw. A script may register its own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .generation import GenerationResult
    from .protocol import Status
    from .train_protocol import TrainEvent
    from .training import TrainResult

__all__ = ["LoadView", "MapProgress", "MapView", "StreamView", "TextMapView", "TextTrainView", "TrainView", "Views", "current", "register"]


class StreamView(Protocol):
    """One answer as it streams: ``start``, ``append`` pieces, ``finish`` with the result."""

    def start(self) -> None: ...
    def append(self, piece: str) -> None: ...
    def prefill(self, processed: int, total: int) -> None: ...
    def finish(self, result: GenerationResult, footer: bool = True) -> None: ...


class LoadView(Protocol):
    """A model's load progress, from ``with`` to ``done`` (a failure leaves a line saying so)."""

    def __enter__(self) -> LoadView: ...
    def __exit__(self, *exc: object) -> None: ...
    def update(self, status: Status) -> None: ...
    def message(self, text: str) -> None: ...
    def done(self, status: Status) -> None: ...


class MapProgress(Protocol):
    """What a map view reads (mlx_notebook/data_map.py keeps it up to date)."""

    def line(self) -> str: ...


class MapView(Protocol):
    """``mn.map``'s progress over rows, redrawn from its ``MapProgress`` at each ``update``."""

    def update(self) -> None: ...
    def finish(self) -> None: ...


class TextMapView:
    """A line now and then (``12/40 rows · 38.5 tok/s · ETA 21 s``): a script's progress."""

    def __init__(self, progress: MapProgress, every: float = 2.0) -> None:
        self.progress, self.every = progress, every
        self._last = 0.0

    def update(self) -> None:
        import time

        if time.monotonic() - self._last >= self.every:
            self._last = time.monotonic()
            print(self.progress.line(), flush=True)

    def finish(self) -> None:
        print(self.progress.line(), flush=True)


class TrainView(Protocol):
    """``mn.train``'s progress: ``note`` lines, each event, ``pump`` (UI events such as a stop
    button, between events), ``stop_clicked``, and ``finish`` with the result."""

    @property
    def stop_clicked(self) -> bool: ...

    def note(self, text: str) -> None: ...
    def loading(self, status: Status) -> None: ...
    def event(self, event: TrainEvent) -> None: ...
    def pump(self) -> None: ...
    def finish(self, result: TrainResult | None, error: str | None = None) -> None: ...


class TextTrainView:
    """A line every few seconds in a terminal or script (no stop button: Ctrl-C stops)."""

    stop_clicked = False

    def __init__(self, every: float = 5.0) -> None:
        self.every, self._last = every, 0.0

    def note(self, text: str) -> None:
        print(text, flush=True)

    def loading(self, status: Status) -> None:
        pass

    def event(self, event: TrainEvent) -> None:
        import time

        if event.kind == "train" and time.monotonic() - self._last >= self.every:
            self._last = time.monotonic()
            print(f"iteration {event.iteration}/{event.iters} loss {event.train_loss:.3f}",
                  flush=True)

    def pump(self) -> None:
        pass

    def finish(self, result: TrainResult | None, error: str | None = None) -> None:
        print(error if result is None else result.summary(), flush=True)


@dataclass(frozen=True)
class Views:
    """Factories: ``stream(format, rate, footer)`` and ``load(label)``; ``html(result)`` draws a
    look-inside result (mlx_notebook/inside.py) as HTML, or None for its text alone."""

    stream: Callable[[str, float, bool], StreamView]
    load: Callable[[str], LoadView]
    html: Callable[[object], str | None] = lambda _result: None
    map_progress: Callable[[MapProgress], MapView] = TextMapView  # mn.map's progress
    # One tool call shown as it happens: (name, arguments, result, error); None: printed.
    tool_call: Callable[[str, dict, str, bool], None] | None = None
    train: Callable[[str], TrainView] = lambda _label: TextTrainView()  # mn.train's progress


_views: Views | None = None


def register(views: Views) -> None:
    """Make ``views`` what ``show=True`` draws with (the package registers the notebook's)."""
    global _views
    _views = views


def current() -> Views:
    if _views is None:  # only if the package root was bypassed, which Python never does
        raise RuntimeError("no views registered: import mlx_notebook first")
    return _views

"""``mn.map``'s progress in a cell: a bar, rows done and failed, tok/s, ETA.

Plain HTML in a display handle (it survives saving the notebook; no widget needed:
the stop button is the kernel's interrupt), with a text/plain twin; in a terminal
the text view of :mod:`mlx_notebook.views` prints a line now and then.

>>> view = MapProgressView(MapProgress(40))   # doctest: +SKIP
>>> view.update(); view.finish()              # doctest: +SKIP
"""

from __future__ import annotations

import html
from typing import Any

from ..data_map import MapProgress
from ..views import TextMapView
from .display import Throttle, in_kernel

__all__ = ["MapProgressView", "progress_html"]


def progress_html(progress: MapProgress) -> str:
    pct = 100.0 * progress.done / progress.total if progress.total else 100.0
    colour = "#c0392b" if progress.stopped else "#2e86de"
    return (f'<div class="mlx-map-progress" style="font-family:monospace;font-size:90%">'
            f'<div style="width:24em;height:.7em;background:#ddd;border-radius:3px;'
            f'display:inline-block;vertical-align:middle;margin-right:.6em">'
            f'<div style="width:{pct:.1f}%;height:100%;background:{colour};'
            f'border-radius:3px"></div></div>{html.escape(progress.line())}</div>')


class MapProgressView:
    """Redraws (throttled) from the :class:`MapProgress` the map keeps up to date."""

    def __init__(self, progress: MapProgress, rate: float = 4.0) -> None:
        self.progress = progress
        self.throttle = Throttle(rate)
        self._text: TextMapView | None = None if in_kernel() else TextMapView(progress)
        self._handle: Any = None
        if self._text is None:
            from IPython.display import display

            self._handle = display(self._bundle(), raw=True, display_id=True)

    def _bundle(self) -> dict[str, str]:
        return {"text/plain": self.progress.line(), "text/html": progress_html(self.progress)}

    def update(self) -> None:
        if self._text is not None:
            self._text.update()
        elif self.throttle.ready():
            self._handle.update(self._bundle(), raw=True)

    def finish(self) -> None:
        if self._text is not None:
            self._text.finish()
        else:
            self._handle.update(self._bundle(), raw=True)

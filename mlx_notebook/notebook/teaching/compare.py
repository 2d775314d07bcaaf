"""Compare: one prompt across models and/or settings, all streaming side by side.

>>> recs = compare("Write a haiku about rain", models=["demo", "qwen"],
...                settings=[{"temperature": 0}, {"temperature": 0.8}], seed=1)  # doctest: +SKIP
>>> recs.as_dataframe()[["model", "tokens_per_second", "text"]]                   # doctest: +SKIP

Each cell streams from its own thread; cells on the same runner are batched by
it. The grid is one HTML output, redrawn at most 10 times a second, so it
survives saving. Returns one record dict per cell.
"""

from __future__ import annotations

import html
import random
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ... import api
from ...errors import MLXNotebookError
from ...protocol import CompletionRequest, DoneEvent
from ...units import format_bytes
from ..display import in_kernel

if TYPE_CHECKING:
    from ...control.connection import RunnerConnection
    from ...control.streams import CompletionStream

__all__ = ["Records", "compare", "compare_cell", "parse_list"]

UPDATES_PER_SECOND = 10.0


class Records(list[dict[str, Any]]):
    """A list of record dicts; ``as_dataframe()`` when pandas is installed."""

    def as_dataframe(self) -> Any:
        try:
            import pandas as pd
        except ImportError as exc:
            raise ImportError("as_dataframe() needs pandas: pip install pandas") from exc
        return pd.DataFrame(list(self))


@dataclass
class _Cell:
    client: RunnerConnection
    request: CompletionRequest
    label: str
    text: str = ""
    tokens: int = 0
    first: float | None = None
    done: DoneEvent | None = None
    error: str | None = None
    stream: CompletionStream | None = None
    started: float = field(default_factory=time.perf_counter)

    def run(self) -> None:
        try:
            with self.client.stream(self.request) as stream:
                self.stream = stream
                for chunk in stream:
                    if self.first is None:
                        self.first = time.perf_counter() - self.started
                    self.tokens += len(chunk.tokens)
                    self.text += chunk.content
                self.done = stream.result
        except MLXNotebookError as exc:  # one failed cell must not hide the others
            self.error = str(exc)

    def record(self) -> dict[str, Any]:
        done = self.done
        n = done.completion_tokens if done else self.tokens
        tps = (n - 1) / done.eval_duration if done and done.eval_duration > 0 and n > 1 else 0.0
        return {
            "model": self.client.name, "options": self.request.options.to_json(),
            "text": self.text, "tokens": n, "tokens_per_second": tps,
            "ttft": (done.time_to_first_token if done else 0.0) or (self.first or 0.0),
            "peak_memory": done.peak_memory if done else 0,
            "finish_reason": "error" if self.error else (done.done_reason if done else "cancel"),
            "prompt_tokens": done.prompt_tokens if done else 0, "error": self.error,
            "request": self.request.to_json(),
        }


def _label(client: RunnerConnection, setting: dict[str, Any]) -> str:
    parts = [f"{k}={v}" for k, v in setting.items()]
    return " · ".join([client.name, *parts])


def _cell_html(cell: _Cell) -> str:
    rec = cell.record()
    live = cell.done is None and cell.error is None
    footer = (f"{rec['tokens']} tokens · {rec['tokens_per_second']:.1f} tok/s · "
              f"TTFT {rec['ttft']:.2f} s · peak {format_bytes(rec['peak_memory'])}"
              if not live else f"{cell.tokens} tokens…")
    body = html.escape(cell.text) + ("▌" if live else "")
    err = f'<div style="color:#b00">{html.escape(cell.error)}</div>' if cell.error else ""
    return (f'<div style="border:1px solid #ccc;border-radius:4px;padding:6px;min-width:0">'
            f"<b>{html.escape(cell.label)}</b>"
            f'<pre style="white-space:pre-wrap;margin:4px 0">{body}</pre>{err}'
            f'<div style="font-size:85%;color:#666">{footer}</div></div>')


def grid_html(cells: Sequence[_Cell], columns: int) -> str:
    """The side-by-side grid: ``columns`` cells a row."""
    inner = "".join(_cell_html(c) for c in cells)
    return (f'<div class="mlxnb-compare" style="display:grid;gap:8px;'
            f'grid-template-columns:repeat({columns}, minmax(0, 1fr))">{inner}</div>')


def grid_text(cells: Sequence[_Cell]) -> str:
    return "\n\n".join(f"== {c.label} ==\n{c.text}" + (f"\n[{c.error}]" if c.error else "")
                       for c in cells)


def compare(prompt: str, *, models: Sequence[str | RunnerConnection | None] | None = None,
            settings: Sequence[dict[str, Any]] | None = None, system: str | None = None,
            raw: bool = False, show: bool = True, **sampling: Any) -> Records:
    """Run ``prompt`` on every (model, setting) pair at once; one record dict per cell.

    ``settings`` are dicts of SamplingOptions names overriding ``sampling`` per
    column. Sampled cells share one seed (``seed=`` or a random one), so columns
    differ only by what you varied.
    """
    models = list(models) if models else [None]
    settings = list(settings) if settings else [{}]
    if sampling.get("seed") is None:
        sampling["seed"] = random.randrange(2**31)
    cells = []
    for model in models:
        client = api.get_client(model)
        for setting in settings:
            options = api.sampling_options(**{**sampling, **setting})
            if options.temperature == 0:
                options = type(options)(**{**options.__dict__, "seed": None})
            request = api.completion_request(prompt, options, system=system, raw=raw)
            cells.append(_Cell(client, request, _label(client, setting)))
    threads = [threading.Thread(target=c.run, daemon=True, name=f"mlx-compare-{i}")
               for i, c in enumerate(cells)]
    view = _GridView(cells, len(settings)) if show else None
    for thread in threads:
        thread.start()
    try:
        while any(t.is_alive() for t in threads):
            for t in threads:
                t.join(1.0 / UPDATES_PER_SECOND / len(threads))
            if view is not None:
                view.draw()
    except KeyboardInterrupt:
        for cell in cells:
            if cell.stream is not None:
                cell.stream.cancel()
        for t in threads:
            t.join(5.0)
        raise
    finally:
        if view is not None:
            view.draw(final=True)
    return Records(c.record() for c in cells)


class _GridView:
    def __init__(self, cells: Sequence[_Cell], columns: int) -> None:
        self.cells, self.columns = cells, columns
        self.handle: Any = None
        self.last = 0.0
        if in_kernel():
            from IPython.display import HTML, display

            self.handle = display(HTML(grid_html(cells, columns)), display_id=True)

    def draw(self, final: bool = False) -> None:
        now = time.monotonic()
        if not final and now - self.last < 1.0 / UPDATES_PER_SECOND:
            return
        self.last = now
        if self.handle is not None:
            self.handle.update({"text/html": grid_html(self.cells, self.columns),
                                "text/plain": grid_text(self.cells)}, raw=True)
        elif final:
            print(grid_text(self.cells))


def parse_list(text: str | None, kind: type = float) -> list[Any]:
    """``"0,0.8"`` -> ``[0.0, 0.8]``; None or empty -> ``[]``."""
    if not text:
        return []
    try:
        return [kind(part.strip()) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise ValueError(f"expected a comma-separated list of {kind.__name__}, got {text!r}") \
            from exc


def compare_cell(prompt: str, *, models: str | None = None, temps: str | None = None,
                 top_ps: str | None = None, **sampling: Any) -> Records:
    """What ``%%mlx compare -m a,b --temp 0,0.8 --top-p 1,0.9`` calls: lists as text."""
    settings: list[dict[str, Any]] = [{}]
    for name, values in (("temperature", parse_list(temps)), ("top_p", parse_list(top_ps))):
        if values:
            settings = [{**s, name: v} for s in settings for v in values]
    sampling = {k: v for k, v in sampling.items() if v is not None}
    return compare(prompt, models=parse_list(models, str) or None,
                   settings=settings if settings != [{}] else None, show=True, **sampling)

"""``mn.map``: one prompt template over many rows, as concurrent requests to one runner.

The runner batches concurrent requests (continuous batching, up to its
``--max-batch``), so rows sent together decode together: 64 short rows take a
fraction of 64 single calls. Results come back in row order; a row that fails
keeps its error (``finish_reason="error"``, ``.error``) and the others go on; an
interrupt (the notebook's stop button) cancels the rows in flight and returns
what finished, the rest marked ``"cancel"``.

>>> rows = [{"title": "Attention is all you need"}, {"title": "BERT"}]   # doctest: +SKIP
>>> out = mn.map("Topic of {title!r}? One word.", rows, max_tokens=4)  # doctest: +SKIP
>>> [r.text for r in out]                                              # doctest: +SKIP
"""

from __future__ import annotations

import concurrent.futures as futures
import contextlib
import dataclasses
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from . import views
from .errors import InterpolationError, InvalidArgumentError, MLXNotebookError
from .generation import Generation, GenerationResult
from .interpolate import fields, interpolate
from .structured import OutputSpec, output_spec

if TYPE_CHECKING:
    from .control.connection import RunnerConnection

__all__ = ["map", "DEFAULT_CONCURRENCY", "MapProgress"]

DEFAULT_CONCURRENCY = 8  # the runner's default --max-batch: more would only queue
MAX_CONCURRENCY = 256
NO_FIELDS = ("the template has no {field}: every row would get the same prompt "
             "(write {column} for a column, {row} for a row that is a string)")
ROWS_TYPE = "rows must be a list of dicts, a list of strings or a pandas DataFrame, got {kind}"
CONCURRENCY_RANGE = "concurrency must be between 1 and {max}, got {value!r}"
NOT_STARTED = "stopped before this row started"
_POLL = 0.1  # how often the waiting thread looks up (an interrupt lands within this)


class MapProgress:
    """Counts for the progress view: rows done and failed, tokens, time; ``eta`` in seconds."""

    def __init__(self, total: int) -> None:
        self.total, self.done, self.failed, self.tokens = total, 0, 0, 0
        self.started = time.perf_counter()
        self.stopped = False

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def eta(self) -> float | None:
        if not self.done or self.done >= self.total:
            return None
        return self.elapsed / self.done * (self.total - self.done)

    def line(self) -> str:
        """``12/40 rows · 1 failed · 38.5 tok/s · 9.1 s · ETA 21 s``."""
        parts = [f"{self.done}/{self.total} rows"]
        if self.failed:
            parts.append(f"{self.failed} failed")
        parts += [f"{self.tokens_per_second:.1f} tok/s", f"{self.elapsed:.1f} s"]
        eta = self.eta
        if self.stopped:
            parts.append("stopped")
        elif eta is not None:
            parts.append(f"ETA {eta:.0f} s")
        return " · ".join(parts)


def _namespaces(rows: Any) -> tuple[list[Mapping[str, Any] | None], Any]:
    """Each row as the mapping its template is filled from (None: not a row); the index."""
    if hasattr(rows, "to_dict") and hasattr(rows, "columns") and hasattr(rows, "index"):
        return [dict(r) for r in rows.to_dict("records")], rows.index
    if isinstance(rows, (str, bytes)) or not isinstance(rows, Sequence):
        raise InvalidArgumentError(ROWS_TYPE.format(kind=type(rows).__name__), field="rows")
    out: list[Mapping[str, Any] | None] = []
    for row in rows:
        if isinstance(row, str):
            out.append({"row": row})
        elif isinstance(row, Mapping):
            out.append(row)
        else:
            out.append(None)
    return out, None


def map(template: str, rows: Any, *, model: str | None = None,  # noqa: A001 - mn.map
        schema: Any = None, json: bool = False, choices: Sequence[str] | str | None = None,
        regex: str | None = None, system: str | None = None, raw: bool = False,
        concurrency: int | None = None, show: bool = True,
        on_row: Callable[[int, GenerationResult], None] | None = None,
        **sampling: Any) -> Any:
    """Fill ``template`` from each row, generate every answer, return them in row order.

    ``rows``: a list of dicts (``{column}`` fields), a list of strings (``{row}``) or a
    pandas DataFrame. ``{field}`` follows the rules of the magics' interpolation.
    ``schema``/``json``/``choices``/``regex`` constrain every answer (see :func:`stream`);
    the sampling keywords (``max_tokens``, ``temperature``...) are :func:`stream`'s.
    At most ``concurrency`` rows run at once (default :data:`DEFAULT_CONCURRENCY`).

    Returns a list of :class:`GenerationResult` (a failed row: ``finish_reason="error"``
    and ``.error``), or for a DataFrame a DataFrame on the same index with ``text``,
    ``value`` (or one column per field of an object schema), ``finish_reason`` and
    ``error``. ``show``: a progress bar (rows, tok/s, ETA) in a notebook, a line in a
    terminal. ``on_row(index, result)`` is called as each row ends (on this thread).
    """
    from .api import _check_raw, _manager, completion_request, sampling_options

    _check_raw(raw, system)
    output = output_spec(schema=schema, json=json, choices=choices, regex=regex)
    limit = DEFAULT_CONCURRENCY if concurrency is None else concurrency
    if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= MAX_CONCURRENCY:
        raise InvalidArgumentError(CONCURRENCY_RANGE.format(max=MAX_CONCURRENCY,
                                                            value=concurrency),
                                   field="concurrency")
    if not fields(template):
        raise InvalidArgumentError(NO_FIELDS, field="template")
    namespaces, index = _namespaces(rows)
    if namespaces and namespaces[0] is not None:
        interpolate(template, namespaces[0])  # a template error is every row's: raise it now
    manager = _manager()
    client = manager.get(model)
    opts = sampling_options(**sampling)
    requests: list[Any] = []
    for ns in namespaces:
        try:
            if ns is None:
                raise InvalidArgumentError("a row must be a dict or a string", field="rows")
            prompt = interpolate(template, ns)
        except (InterpolationError, InvalidArgumentError) as exc:
            requests.append(exc)
            continue
        request = completion_request(prompt, opts, system=system, raw=raw)
        requests.append(dataclasses.replace(
            request, request_id=f"map-{uuid.uuid4().hex}",
            constraint=output.constraint if output else None))
    progress = MapProgress(len(requests))
    view = views.current().map_progress(progress) if show else None
    manager.notify("generating", client.name)
    try:
        results = _run_rows(client, requests, output, limit, progress, view, on_row)
    finally:
        manager.notify("generated", client.name)
        if view is not None:
            view.finish()
    return _as_frame(results, index, output) if index is not None else results


def _run_rows(client: RunnerConnection, requests: list[Any], output: OutputSpec | None,
              limit: int, progress: MapProgress, view: Any,
              on_row: Callable[[int, GenerationResult], None] | None) -> list[GenerationResult]:
    stopping = threading.Event()
    results: list[GenerationResult | None] = [None] * len(requests)

    def one(request: Any) -> GenerationResult:
        if isinstance(request, Exception):
            return _failed(client, "", str(request))
        prompt = request.messages[-1].content if request.messages else request.prompt or ""
        if stopping.is_set():
            return dataclasses.replace(_failed(client, prompt, NOT_STARTED),
                                       finish_reason="cancel", stopped=True)
        try:
            gen = Generation(client, request, output=output)
            with gen:
                for _ in gen:
                    pass
        except MLXNotebookError as exc:
            return _failed(client, prompt, str(exc))
        assert gen.result is not None
        return gen.result

    pool = futures.ThreadPoolExecutor(max_workers=limit, thread_name_prefix="mn-map")
    pending = {pool.submit(one, r): i for i, r in enumerate(requests)}
    try:
        while pending:
            try:
                done, _ = futures.wait(pending, timeout=_POLL,
                                       return_when=futures.FIRST_COMPLETED)
                for fut in done:
                    i = pending.pop(fut)
                    results[i] = result = fut.result()
                    progress.done += 1
                    progress.failed += result.finish_reason == "error"
                    progress.tokens += result.completion_tokens
                    if on_row is not None:
                        on_row(i, result)
                if view is not None:
                    view.update()
            except KeyboardInterrupt:
                _stop(client, stopping, requests, results, progress)
    finally:
        if pending:  # an error in on_row: stop the rest before it escapes
            stopping.set()
            _cancel_running(client, requests, results)
        pool.shutdown(wait=True)
    return [r if r is not None else _failed(client, "", NOT_STARTED) for r in results]


def _stop(client: RunnerConnection, stopping: threading.Event, requests: list[Any],
          results: list[GenerationResult | None], progress: MapProgress) -> None:
    """The stop button: start no more rows, cancel those running (they end within a step)."""
    stopping.set()
    progress.stopped = True
    _cancel_running(client, requests, results)


def _cancel_running(client: RunnerConnection, requests: list[Any],
                    results: list[GenerationResult | None]) -> None:
    for request, result in zip(requests, results, strict=True):
        if result is None and not isinstance(request, Exception) and request.request_id:
            with contextlib.suppress(MLXNotebookError):  # gone: the row fails on its own
                client.cancel(request.request_id)


def _failed(client: RunnerConnection, prompt: str, error: str) -> GenerationResult:
    return GenerationResult(text="", model=client.spec or client.name, finish_reason="error",
                            name=client.name, prompt=prompt, error=error)


def _as_frame(results: list[GenerationResult], index: Any, output: OutputSpec | None) -> Any:
    import pandas as pd

    data: dict[str, list[Any]] = {"text": [r.text for r in results]}
    names = output.fields if output is not None else []
    if names:
        for name in names:
            data[name] = [_field(r.value, name) for r in results]
    elif output is not None:
        data["value"] = [r.value for r in results]
    data["finish_reason"] = [r.finish_reason for r in results]
    data["error"] = [r.error or None for r in results]
    return pd.DataFrame(data, index=index)


def _field(value: Any, name: str) -> Any:
    if value is None:
        return None
    if isinstance(value, Mapping):
        return value.get(name)
    return getattr(value, name, None)


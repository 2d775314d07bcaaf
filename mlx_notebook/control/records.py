"""What the manager keeps about its runners: a record per runner and a row per ``%mlx ps``.

Plain data, apart from the manager's logic, so the views can import the row type
without the manager and a reload finds the original load arguments in one place.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from ..errors import MLXNotebookError, RunnerExitedError
from ..kv_format import KvFormat
from .hosts import HostPlan
from .preflight import MemoryEstimate

if TYPE_CHECKING:
    from .connection import RunnerConnection

__all__ = ["Listener", "Listeners", "LoadArgs", "ManagerEvent", "RunnerEntry", "RunnerInfo",
           "default_name", "info_row"]

# What a listener hears: a load began or ended, a runner went, a generation began or
# ended, caches were freed. The runner's name, or None for "all of them".
ManagerEvent = Literal["loading", "loaded", "unloaded", "generating", "generated", "freed"]
Listener = Callable[[ManagerEvent, "str | None"], None]


@dataclass(frozen=True)
class RunnerInfo:
    """One row of ``%mlx ps``."""

    name: str
    model: str
    state: str  # loading / ready / generating / error / exited / unavailable
    pid: int | None
    port: int | None
    memory_active: int
    memory_peak: int
    idle_seconds: float
    context_length: int
    weights_format: str
    spec: str = ""
    is_default: bool = False
    error: str | None = None
    url: str = ""  # set for a remote runner (one this kernel did not start)


def default_name(spec: str) -> str:
    """``demo`` -> ``demo``; ``/models/Qwen3-4B/`` -> ``Qwen3-4B``; ``x.gguf`` -> ``x``."""
    text = spec.strip().rstrip("/\\")
    if "/" in text or os.sep in text:
        text = Path(text).name
    if text.lower().endswith(".gguf"):  # x.GGUF too: the extension's case says nothing
        text = text[: -len(".gguf")]
    return text or spec


@dataclass(frozen=True)
class LoadArgs:
    """What a runner was loaded with, kept so that a reload starts the same runner."""

    spec: str
    context_length: int | None = None
    ranks: int = 1
    shard: str = "tensor"
    hosts: str | HostPlan | None = None
    backend: str | None = None
    adapter: str | None = None  # a fine-tuned adapter folder the runner applies
    draft: str | None = None  # a draft model for speculative decoding
    num_draft: int | None = None  # its guesses per round (None: the runner's default)
    kv: KvFormat = KvFormat()  # the KV-cache format (quantized, rotating)

    def runner_args(self) -> list[str]:
        """The runner's flags for the adapter, the draft model and the KV-cache format."""
        args = ["--adapter", self.adapter] if self.adapter else []
        if self.draft:
            args += ["--draft", self.draft]
            if self.num_draft is not None:
                args += ["--num-draft", str(self.num_draft)]
        return args + self.kv.runner_args()


@dataclass
class RunnerEntry:
    """One runner of the manager: loading, live or dead, and what it was loaded with."""

    runner: RunnerConnection
    load: LoadArgs | None  # None for a runner we only connected to
    need: MemoryEstimate | None = None
    state: Literal["loading", "live", "dead"] = "live"
    death: RunnerExitedError | None = None  # a dead runner's story, told on every later use
    created: float = field(default_factory=time.time)


def info_row(client: RunnerConnection, *, is_default: bool) -> RunnerInfo:
    """The ``%mlx ps`` row of ``client``, with its live status (or why there is none)."""
    error = None
    status = client.last_status
    if client.has_exited:
        state, error = "exited", client.exit_description()
    else:
        try:
            status = client.status()
            state = status.state
            if state == "ready" and status.active_requests:
                state = "generating"
            error = status.error
        except RunnerExitedError:
            state, error = "exited", client.exit_description()
        except MLXNotebookError as exc:
            state, error = "unavailable", str(exc)
    idle = 0.0 if client.active_streams else max(time.time() - client.last_used, 0.0)
    return RunnerInfo(
        name=client.name, model=(status.model if status else "") or client.spec, state=state,
        pid=client.pid, port=client.port,
        memory_active=status.memory.active if status else 0,
        memory_peak=status.memory.peak if status else 0, idle_seconds=idle,
        context_length=status.context_length if status else (client.context_length or 0),
        weights_format=status.weights_format if status else "", spec=client.spec,
        is_default=is_default, error=error,
        url=client.base_url if client.remote else "")


class Listeners:
    """Who hears the manager's events; thread-safe, and a failing listener fails nobody."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._listeners: list[Listener] = []

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        with self._lock:
            self._listeners.append(listener)

        def unsubscribe() -> None:
            with self._lock, contextlib.suppress(ValueError):
                self._listeners.remove(listener)

        return unsubscribe

    def notify(self, event: ManagerEvent, name: str | None = None) -> None:
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            with contextlib.suppress(Exception):  # a broken view must not break a load
                listener(event, name)

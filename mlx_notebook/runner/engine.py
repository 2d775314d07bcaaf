"""The runner's MLX side, as HTTP threads see it: load the model, then serve every request.

One worker thread does all MLX work: it loads the model (progress in
:meth:`Engine.status`), then runs the :class:`~runner.decode.DecodeLoop`. HTTP
handler threads never touch MLX: they post jobs through the
:class:`~runner.mailbox.Mailbox` and read each job's events. The split follows
mlx-lm's server (model loading, generation loop, HTTP), with our own code.
"""

from __future__ import annotations

import os
import sys
import threading
import traceback
from typing import Any

import mlx.core as mx
import psutil

from ..kv_format import FULL_PRECISION, KvFormat
from ..protocol import PROTOCOL_VERSION, KvInfo, MemoryInfo, RankInfo, RunnerState, Status
from ..weight_format import resolve_dtype
from . import kv_cache
from .decode import DecodeLoop, DecodeSettings
from .distributed import Distributed
from .draft import load_draft
from .fastblas import openblas_preloaded
from .jobs import Job
from .mailbox import Mailbox
from .models import LoadedModel, load_model
from .progress import Progress, scaled

__all__ = ["Engine", "Job", "runner_device"]


class Engine:
    """Owns the model and the worker thread; every public method is safe from any thread."""

    def __init__(self, spec: str, *, dtype: str | None = None, context_length: int | None = None,
                 max_batch: int = 8, prompt_cache_bytes: int | None = None,
                 prefill_step: int = 512, distributed: Distributed | None = None,
                 batch_only: bool = False, adapter: str | None = None,
                 draft: str | None = None, num_draft: int = 3,
                 kv: KvFormat = FULL_PRECISION) -> None:
        self.spec = spec
        self.draft_spec = draft  # a draft model: a request alone decodes speculatively
        self.draft: LoadedModel | None = None
        self.adapter = adapter  # a fine-tuned adapter folder applied after loading
        self.dtype = dtype
        self.requested_context = context_length
        self.distributed = distributed
        # A request alone is decoded by runner/solo.py unless batch_only (or in a group).
        self.settings = DecodeSettings(max_batch=max_batch, prefill_step=prefill_step,
                                       prompt_cache_bytes=prompt_cache_bytes,
                                       solo=not batch_only and distributed is None,
                                       num_draft=num_draft, kv=kv)
        self.kv = KvInfo(format=kv.describe())  # measured by the decode loop, between steps
        # Ranks > 0 follow rank 0's plans; they serve no requests of their own.
        self.follower = distributed is not None and distributed.rank != 0
        self.state: RunnerState = "loading"
        self.progress = 0.0
        self.progress_message = "starting"
        self.error: str | None = None
        self.loaded: LoadedModel | None = None
        self.last_tokens_per_second = 0.0
        self.ranks: tuple[RankInfo, ...] = ()  # rank 0: every rank's facts, for the status
        self.ready_event = threading.Event()  # set when the state leaves "loading"
        self.finished_event = threading.Event()  # set when the worker thread ends
        self.mailbox = Mailbox()
        self.decode_loop: DecodeLoop | None = None  # its prompt cache takes loaded files
        self._thread = threading.Thread(target=self._main, name="mlx-worker", daemon=True)

    # ------------------------------------------------------------ called from any thread

    def start(self) -> None:
        self._thread.start()

    @property
    def context_length(self) -> int:
        native = self.loaded.context_length if self.loaded else 0
        if self.requested_context:
            return min(self.requested_context, native) if native else self.requested_context
        return native

    def submit(self, job: Job) -> None:
        """Queue ``job``; raises :class:`~runner.mailbox.DuplicateRequestId` for an id in use."""
        self.mailbox.submit(job)

    @property
    def heartbeat(self) -> float:
        """``time.monotonic()`` when the worker last came back between MLX calls."""
        return self.mailbox.heartbeat

    def cancel(self, request_id: str) -> bool:
        return self.mailbox.cancel(request_id)

    def free(self, timeout: float = 30.0) -> int | None:
        """Drop the reusable prompt cache and MLX's buffer cache, on the worker (every rank).

        Returns the prompt-cache bytes dropped, or None if the worker did not get to it
        within ``timeout`` s (it is busy with a long step; it will still do it).
        """
        return self.mailbox.request_free(timeout)

    def active_requests(self) -> int:
        return self.mailbox.active()

    def memory(self) -> MemoryInfo:
        weights = self.loaded.weight_bytes if self.loaded else 0
        rss = psutil.Process().memory_info().rss
        return MemoryInfo(active=mx.get_active_memory(), peak=mx.get_peak_memory(),
                          cache=mx.get_cache_memory(), weights=weights,
                          limit=mx.get_memory_limit(), rss=rss)

    def status(self) -> Status:
        """A snapshot for ``/v1/status``; never waits on the worker."""
        loaded = self.loaded
        return Status(
            state=self.state, progress=round(self.progress, 1), pid=os.getpid(),
            protocol=PROTOCOL_VERSION, progress_message=self.progress_message,
            model=loaded.name if loaded else self.spec, source=loaded.source if loaded else "",
            source_hash=loaded.source_hash if loaded else "",
            weights_format=loaded.weights_format if loaded else "",
            context_length=self.context_length, memory=self.memory(),
            active_requests=self.active_requests(),
            last_tokens_per_second=round(self.last_tokens_per_second, 2),
            device=runner_device(), error=self.error, ranks=self.ranks, kv=self.kv,
            draft=self.draft.name if self.draft else (self.draft_spec or ""))

    def mark_stopping(self) -> None:
        """The server stops: say so in the status (an error state stays an error)."""
        if self.state != "error":
            self.state = "stopping"

    def shutdown(self, timeout: float = 2.0) -> None:
        self.mailbox.stop()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    # ------------------------------------------------------------ worker thread

    def _main(self) -> None:
        try:
            self._load_and_serve()
        finally:
            self.finished_event.set()

    def _load_and_serve(self) -> None:
        dist = self.distributed
        try:
            if dist is not None:
                self.progress_message = "connecting to the other ranks"
                dist.connect()
            dtype = resolve_dtype(self.dtype, mx.default_device().type.name.lower(),
                                  openblas_preloaded())
            progress: Progress = self._on_load_progress
            if self.draft_spec is not None:  # the draft's load takes the bar's last tenth
                progress = scaled(self._on_load_progress, 0.0, 90.0)
            self.loaded = load_model(self.spec, progress=progress, dtype=dtype,
                                     prepare=dist.prepare if dist is not None else None,
                                     adapter=self.adapter)
            if self.draft_spec is not None:
                self.draft = load_draft(self.draft_spec, self.loaded, dtype=dtype,
                                        progress=scaled(self._on_draft_progress, 90.0, 100.0))
        except Exception as exc:  # the load error is reported, not raised: the process exits
            self._fail(" ".join(str(exc).split()) or type(exc).__name__)
            return
        try:
            self._serve(self.loaded)
        except Exception as exc:  # a bug in the loop, or a lost rank: fail every request, exit
            if dist is None or "[ring]" not in str(exc):  # MLX raises nothing typed for it
                traceback.print_exc(file=sys.stderr)
            self._fail(f"runner worker failed: {type(exc).__name__}: {exc}")
            self.mailbox.fail_all(self.error or "runner worker failed")

    def _serve(self, loaded: LoadedModel) -> None:
        loop = DecodeLoop(loaded, self.mailbox, self.settings, self.distributed,
                          on_speed=self._on_speed, on_ranks=self._on_ranks, draft=self.draft,
                          on_kv=self._on_kv)
        self.decode_loop = loop  # set before "ready": prompt-file passes use its prompt cache
        problem = kv_cache.check_format(loaded.model, self.settings.kv)
        if problem is not None:
            self._fail(problem)
            return
        single = self.distributed is None and self.settings.solo
        if not single:
            self.progress_message = "warming up"
            loop.warm_up()  # the path every request takes (for a group, a collective step)
        loop.report_ranks()
        self.progress, self.progress_message = 100.0, "ready"
        self.state = "ready"
        self.ready_event.set()
        if single:
            # Warm the solo path while the user types the first prompt: a load returns as
            # soon as the weights are in; a request sent at once waits for this, no longer.
            loop.warm_up_solo()
        loop.run()

    def _fail(self, message: str) -> None:
        self.error = message
        self.state = "error"
        self.ready_event.set()

    def _on_load_progress(self, percent: float, message: str) -> None:
        self.progress = max(0.0, min(100.0, float(percent)))
        self.progress_message = message

    def _on_draft_progress(self, percent: float, message: str) -> None:
        self._on_load_progress(percent, f"draft model: {message}")

    def _on_speed(self, tokens_per_second: float) -> None:
        self.last_tokens_per_second = tokens_per_second

    def _on_kv(self, info: KvInfo) -> None:
        self.kv = info  # one reference swapped: a status reads a whole snapshot

    def _on_ranks(self, facts: list[dict[str, Any]]) -> None:
        self.ranks = tuple(RankInfo(**f) for f in facts)


def runner_device() -> str:
    """A short description of where MLX runs, for the status."""
    device = mx.default_device()
    blas = " + OpenBLAS" if openblas_preloaded() else ""
    return f"{device.type.name.lower()}{blas}"

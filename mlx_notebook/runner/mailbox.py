"""The one seam between HTTP threads and the MLX worker thread (as in mlx-lm's server).

Handler threads post jobs, cancels, a "free memory" request and the stop signal;
the worker takes them between decode steps. Nothing here touches MLX, so any
thread may call any method; every wait is bounded.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Iterator

from .jobs import Job, fail_job

__all__ = ["DuplicateRequestId", "Mailbox"]

_IDLE_POLL_SECONDS = 0.5  # how long an idle worker sleeps before it looks again
# A burst (requests sent together: mn.map's rows, a pool of API clients) reaches the worker
# over a few milliseconds; read together, its prompts share forward passes.
_QUIET_SECONDS = 0.008  # a burst has ended when nothing came (or was being read) this long
_GATHER_SECONDS = 0.025  # and a worker never waits longer than this for the rest of one
_POLL_SECONDS = 0.002  # how often a waiting worker looks whether requests are still being read


class DuplicateRequestId(ValueError):
    """A request id that an unfinished job already has."""


class Mailbox:
    """Jobs by request id, their queue to the worker, and the worker's acknowledgements.

    ``heartbeat`` is when the worker last came back between MLX calls (``time.monotonic()``);
    whoever writes keep-alives reads it, so a keep-alive proves the worker, not only a thread.
    """

    def __init__(self) -> None:
        self._inbox: queue.SimpleQueue[Job | None] = queue.SimpleQueue()  # None: a wake-up
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self.stopping = threading.Event()
        self._free_wanted = threading.Event()
        self._freed = threading.Condition()
        self._frees_done = 0
        self._last_freed_bytes = 0
        self.heartbeat = time.monotonic()
        self._arriving = 0  # completion requests read but not yet posted (or refused)
        self._local = threading.local()

    # ------------------------------------------------------------ HTTP side

    @contextlib.contextmanager
    def arriving(self) -> Iterator[None]:
        """A completion request is being read and checked on this thread: until it is
        posted (or refused), a worker woken from idle by another request waits for it, so
        a burst of requests starts decoding together. A lone request is never counted
        by anyone else, so it never waits."""
        with self._lock:
            self._arriving += 1
        self._local.counted = True
        try:
            yield
        finally:
            self._uncount()

    def _uncount(self) -> None:
        if getattr(self._local, "counted", False):
            self._local.counted = False
            with self._lock:
                self._arriving -= 1

    def submit(self, job: Job) -> None:
        """Post ``job``; :class:`DuplicateRequestId` if an unfinished job has its id."""
        with self._lock:
            if job.request_id in self._jobs:
                raise DuplicateRequestId(job.request_id)
            self._jobs[job.request_id] = job
        self._inbox.put(job)
        self._uncount()  # after the put: a worker that sees no one arriving sees the job

    def cancel(self, request_id: str) -> bool:
        """Ask the worker to end a request within one step; False if it is unknown or done."""
        with self._lock:
            job = self._jobs.get(request_id)
        if job is None or job.finished:
            return False
        job.cancel_requested.set()
        self._inbox.put(None)  # wake the worker if it sleeps
        return True

    def request_free(self, timeout: float) -> int | None:
        """Have the worker drop its caches; the bytes it freed, or None after ``timeout`` s."""
        with self._freed:
            target = self._frees_done + 1
            self._free_wanted.set()
            self._inbox.put(None)
            if not self._freed.wait_for(lambda: self._frees_done >= target, timeout):
                return None
            return self._last_freed_bytes

    def stop(self) -> None:
        self.stopping.set()
        self._inbox.put(None)

    def active(self) -> int:
        with self._lock:
            return len(self._jobs)

    # ------------------------------------------------------------ worker side

    def job(self, request_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(request_id)

    def take(self, block: bool, expect_wave: bool = False, most: int = 0) -> list[Job]:
        """Every job posted since the last call; waits a little for one when ``block``.

        Once a wait has brought a job, it gathers the rest of a burst: when the caller
        ``expect_wave`` (it batched a moment ago) or other requests are still being read
        (:meth:`arriving`), it waits until no job came and none was being read for
        ``_QUIET_SECONDS``, at most ``_GATHER_SECONDS`` in all, never past ``most`` jobs.
        A lone request (nothing else on its way, no recent batch) never waits. The worker
        calls this once per step, between MLX calls: it is the heartbeat.
        """
        self.heartbeat = time.monotonic()
        try:
            item = self._inbox.get(timeout=_IDLE_POLL_SECONDS) if block else \
                self._inbox.get_nowait()
        except queue.Empty:
            return []
        items = self._drain([item])
        jobs = [i for i in items if i is not None]
        if not block or not jobs or not (expect_wave or self._arriving > 0):
            return jobs
        now = time.monotonic()
        cap, quiet_until = now + _GATHER_SECONDS, now + _QUIET_SECONDS
        while not (most and len(jobs) >= most):
            seen = len(items)
            if self._arriving > 0:
                quiet_until = now + _QUIET_SECONDS
            deadline = min(cap, quiet_until)
            if now >= deadline:
                break
            # A short slice: a request refused while arriving posts nothing to wake us.
            with contextlib.suppress(queue.Empty):
                items.append(self._inbox.get(timeout=min(deadline - now, _POLL_SECONDS)))
            items = self._drain(items)
            now = time.monotonic()
            if len(items) > seen:
                quiet_until = now + _QUIET_SECONDS
            jobs = [i for i in items if i is not None]
        return jobs

    def _drain(self, items: list[Job | None]) -> list[Job | None]:
        while True:
            try:
                items.append(self._inbox.get_nowait())
            except queue.Empty:
                return items

    def take_free_request(self) -> bool:
        """True once per :meth:`request_free` (read it after :meth:`take`: the request wakes it)."""
        if not self._free_wanted.is_set():
            return False
        self._free_wanted.clear()
        return True

    def freed(self, nbytes: int) -> None:
        with self._freed:
            self._last_freed_bytes = nbytes
            self._frees_done += 1
            self._freed.notify_all()

    def forget(self, job: Job) -> None:
        """The job is done: it no longer counts as active and cannot be cancelled."""
        with self._lock:
            self._jobs.pop(job.request_id, None)

    def fail_all(self, message: str) -> None:
        with self._lock:
            jobs = list(self._jobs.values())
            self._jobs.clear()
        for job in jobs:
            fail_job(job, message)

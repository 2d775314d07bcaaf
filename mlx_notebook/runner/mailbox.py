"""The one seam between HTTP threads and the MLX worker thread (as in mlx-lm's server).

Handler threads post jobs, cancels, a "free memory" request and the stop signal;
the worker takes them between decode steps. Nothing here touches MLX, so any
thread may call any method; every wait is bounded.
"""

from __future__ import annotations

import queue
import threading
import time

from .jobs import Job, fail_job

__all__ = ["DuplicateRequestId", "Mailbox"]

_IDLE_POLL_SECONDS = 0.5  # how long an idle worker sleeps before it looks again


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

    # ------------------------------------------------------------ HTTP side

    def submit(self, job: Job) -> None:
        """Post ``job``; :class:`DuplicateRequestId` if an unfinished job has its id."""
        with self._lock:
            if job.request_id in self._jobs:
                raise DuplicateRequestId(job.request_id)
            self._jobs[job.request_id] = job
        self._inbox.put(job)

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

    def take(self, block: bool, gather: float = 0.0, most: int = 0) -> list[Job]:
        """Every job posted since the last call; waits a little for one when ``block``.

        ``gather``: once a wait has brought a job, wait up to this many seconds more for
        others posted with it (until ``most`` jobs are here). The worker calls this once
        per step, between MLX calls: it is the heartbeat.
        """
        self.heartbeat = time.monotonic()
        try:
            item = self._inbox.get(timeout=_IDLE_POLL_SECONDS) if block else \
                self._inbox.get_nowait()
        except queue.Empty:
            return []
        items = [item]
        deadline = time.monotonic() + gather if block and gather > 0 else 0.0
        while True:
            try:
                items.append(self._inbox.get_nowait())
                continue
            except queue.Empty:
                pass
            wait = deadline - time.monotonic()
            jobs = [i for i in items if i is not None]
            if wait <= 0 or len(jobs) >= most:
                return jobs
            try:
                items.append(self._inbox.get(timeout=wait))
            except queue.Empty:
                return [i for i in items if i is not None]

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

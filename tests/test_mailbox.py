"""The worker's mailbox: a wave of requests posted a few milliseconds apart is read as one.

Real threads post real jobs; the timing only bounds how long a test may wait, never
what it asserts about speed.
"""

from __future__ import annotations

import threading
import time

from mlx_notebook.protocol import SamplingOptions
from mlx_notebook.runner.jobs import Job
from mlx_notebook.runner.mailbox import Mailbox


def _job(i: int) -> Job:
    return Job(request_id=f"r{i}", prompt_tokens=[1, 2], options=SamplingOptions(max_tokens=1))


def _post_later(mailbox: Mailbox, jobs: list[Job], gap: float) -> threading.Thread:
    def post() -> None:
        for job in jobs:
            time.sleep(gap)
            mailbox.submit(job)

    thread = threading.Thread(target=post)
    thread.start()
    return thread


def test_gather_reads_the_rest_of_a_wave_with_its_first_job() -> None:
    mailbox = Mailbox()
    mailbox.submit(_job(0))
    poster = _post_later(mailbox, [_job(i) for i in range(1, 4)], gap=0.005)
    taken = mailbox.take(block=True, gather=2.0, most=4)
    poster.join()
    assert [j.request_id for j in taken] == ["r0", "r1", "r2", "r3"]


def test_without_gather_a_take_returns_what_is_there() -> None:
    mailbox = Mailbox()
    mailbox.submit(_job(0))
    poster = _post_later(mailbox, [_job(1)], gap=0.2)
    taken = mailbox.take(block=True)
    poster.join()
    assert [j.request_id for j in taken] == ["r0"]
    assert [j.request_id for j in mailbox.take(block=False)] == ["r1"]


def test_gather_stops_at_most_and_at_its_deadline() -> None:
    mailbox = Mailbox()
    for i in range(3):
        mailbox.submit(_job(i))
    start = time.monotonic()
    assert len(mailbox.take(block=True, gather=5.0, most=2)) == 3  # all already waiting
    assert time.monotonic() - start < 5.0  # returned at "most", not at the deadline
    mailbox.submit(_job(3))
    taken = mailbox.take(block=True, gather=0.05, most=8)  # nobody else comes
    assert [j.request_id for j in taken] == ["r3"]


def test_a_wake_up_without_a_job_is_not_a_job() -> None:
    mailbox = Mailbox()
    mailbox.submit(_job(0))
    mailbox.stop()  # posts a wake-up (None) behind the job
    assert [j.request_id for j in mailbox.take(block=True, gather=0.05, most=8)] == ["r0"]

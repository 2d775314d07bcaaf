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
    poster = _post_later(mailbox, [_job(i) for i in range(1, 4)], gap=0.003)
    taken = mailbox.take(block=True, expect_wave=True, most=4)
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


def test_gather_stops_at_most_and_when_the_burst_is_over() -> None:
    mailbox = Mailbox()
    for i in range(3):
        mailbox.submit(_job(i))
    assert len(mailbox.take(block=True, expect_wave=True, most=2)) == 3  # all already waiting
    mailbox.submit(_job(3))
    taken = mailbox.take(block=True, expect_wave=True, most=8)  # nobody else comes
    assert [j.request_id for j in taken] == ["r3"]
    poster = _post_later(mailbox, [_job(4)], gap=0.5)  # long after the burst's quiet time
    mailbox.submit(_job(5))
    taken = mailbox.take(block=True, expect_wave=True, most=8)
    poster.join()
    assert [j.request_id for j in taken] == ["r5"]


def test_a_wake_up_without_a_job_is_not_a_job() -> None:
    mailbox = Mailbox()
    mailbox.submit(_job(0))
    mailbox.stop()  # posts a wake-up (None) behind the job
    assert [j.request_id for j in mailbox.take(block=True, expect_wave=True, most=8)] == ["r0"]


def test_an_idle_worker_waits_for_requests_still_being_read() -> None:
    mailbox = Mailbox()
    reading = threading.Event()

    def arrive() -> None:  # a second client's request: read, checked, then posted
        with mailbox.arriving():
            reading.set()
            time.sleep(0.01)
            mailbox.submit(_job(1))

    thread = threading.Thread(target=arrive)
    thread.start()
    reading.wait(5)
    mailbox.submit(_job(0))
    taken = mailbox.take(block=True)  # no gather: only the request on its way is waited for
    thread.join()
    assert [j.request_id for j in taken] == ["r0", "r1"]


def test_a_request_refused_while_arriving_does_not_hold_the_worker() -> None:
    mailbox = Mailbox()
    with mailbox.arriving():  # this thread's request: refused, never posted
        other = threading.Thread(target=mailbox.submit, args=(_job(0),))
        other.start()
        other.join()
    taken = mailbox.take(block=True)
    assert [j.request_id for j in taken] == ["r0"]
    assert mailbox._arriving == 0

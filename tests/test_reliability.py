"""Faults and load, repeated: nothing is lost, nothing is left behind.

Each test runs a short cycle count in the default suite and the full count under
``-m soak``; ``python benchmarks/reliability.py`` runs the soak version and writes
docs/reliability.md from the figures each test records.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from mlx_notebook.control.client import RunnerClient
from mlx_notebook.errors import GenerationError, RunnerExitedError, RunnerStalledError
from mlx_notebook.protocol import CompletionRequest, SamplingOptions
from tests import frontend_helpers
from tests.reliability_figures import record
from tests.runner_process import pid_alive, wait_gone

shell = frontend_helpers.shell  # fixture: a fresh IPython shell with the extension loaded

LONG = CompletionRequest(prompt="hello", options=SamplingOptions(max_tokens=100000,
                                                                  temperature=1.0))


def cycles(short: int, soak: int):
    return pytest.mark.parametrize("n", [
        pytest.param(short, id=f"x{short}"),
        pytest.param(soak, id=f"x{soak}", marks=pytest.mark.soak)])


def started(spec: str, **kw) -> RunnerClient:
    client = RunnerClient(spec, **kw)
    client.start()
    client.wait_until_ready(timeout=120)
    return client


@cycles(3, 20)
def test_runner_sigkilled_mid_stream(tiny_model_dir, n):
    detect = []
    for _ in range(n):
        client = started(str(tiny_model_dir))
        try:
            with pytest.raises(RunnerExitedError) as info, client.stream(LONG) as stream:
                for i, _chunk in enumerate(stream):
                    if i == 2:
                        os.kill(client.pid, signal.SIGKILL)
                        killed = time.monotonic()
            detect.append(time.monotonic() - killed)
            assert "SIGKILL" in str(info.value)
        finally:
            client.close()
    record("runner SIGKILLed mid-stream: clear error naming the signal", cycles=n, failures=0,
           max_detect_s=max(detect))
    assert max(detect) < 1.0


@cycles(1, 10)
def test_sigstopped_runner_ends_the_stream_within_the_silence(tiny_model_dir, n):
    """SIGSTOP mid-stream: no token, no keep-alive; one clear error after the configured
    silence (the RunnerClient argument), naming the runner and what to do; cleaned up."""
    silence = 2.0
    detect = []
    for _ in range(n):
        client = started(str(tiny_model_dir), stream_read_timeout=silence)
        pid = client.pid
        try:
            with pytest.raises(RunnerStalledError) as info, client.stream(LONG) as stream:
                for i, _chunk in enumerate(stream):
                    if i == 2:
                        os.kill(pid, signal.SIGSTOP)
                        stopped = time.monotonic()
            detect.append(time.monotonic() - stopped)
            message = str(info.value)
            assert f"{client.name!r}" in message and "sent nothing for 2 s" in message
            assert "--force" in message and "MLX_NOTEBOOK_STREAM_TIMEOUT" in message
            assert info.value.silence == silence
        finally:
            client.close(grace=2.0)
        assert wait_gone(pid, 5) is not None
    record("runner stopped (SIGSTOP) mid-stream: stall detected after the 2 s silence, "
           "runner cleaned up", cycles=n, failures=0, max_detect_s=max(detect))
    assert silence <= max(detect) < silence + 5


def test_sigstopped_runner_ends_the_cell_within_the_silence(tiny_model_dir, shell, monkeypatch):
    """Through the magic, the limit from the environment: the cell ends with the clear error."""
    from mlx_notebook.control.manager import get_manager

    monkeypatch.setenv("MLX_NOTEBOOK_STREAM_TIMEOUT", "2")
    shell.run_line_magic("mlx", f"load {tiny_model_dir} --as frozen --force")
    client = get_manager().get("frozen")
    pid = client.pid
    stopped: list[float] = []

    def stop_when_streaming() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not client.status().active_requests:
            time.sleep(0.01)
        time.sleep(0.2)
        os.kill(pid, signal.SIGSTOP)
        stopped.append(time.monotonic())

    stopper = threading.Thread(target=stop_when_streaming)
    stopper.start()
    try:
        result = shell.run_cell("%%mlx generate -m frozen --max-tokens 100000\nhello")
        ended = time.monotonic()
        stopper.join()
        assert isinstance(result.error_in_exec, RunnerStalledError), result.error_in_exec
        assert "sent nothing for 2 s" in str(result.error_in_exec)
        assert 2.0 <= ended - stopped[0] < 7.0
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
        shell.run_line_magic("mlx", "unload frozen")
    assert wait_gone(pid, 5) is not None
    record("runner stopped (SIGSTOP) mid-cell: the cell ends with the stall error after "
           "MLX_NOTEBOOK_STREAM_TIMEOUT=2", cycles=1, failures=0,
           max_detect_s=ended - stopped[0])


def test_a_stream_stuck_behind_a_live_http_thread_is_a_stall(fault_client):
    """The HTTP side answers (status works) but the stream says nothing: still a stall."""
    client = fault_client(FAULT_STREAM="stall:2")
    client.stream_read_timeout = 1.0
    started_at = time.monotonic()
    with pytest.raises(RunnerStalledError), client.stream("hi") as stream:
        for _ in stream:
            pass
    assert 1.0 <= time.monotonic() - started_at < 6.0
    assert client.status().state == "ready"


OWNER = textwrap.dedent("""
    import sys
    from mlx_notebook.control.client import RunnerClient
    from mlx_notebook.protocol import CompletionRequest, SamplingOptions
    client = RunnerClient(sys.argv[1])
    client.start(); client.wait_until_ready(timeout=120)
    print(client.pid, flush=True)
    with client.stream(CompletionRequest(prompt="hello",
                                         options=SamplingOptions(max_tokens=100000))) as s:
        for i, chunk in enumerate(s):
            if i == 2:
                print("streaming", flush=True)
""")


@cycles(3, 50)
def test_owner_sigkilled_while_streaming_leaves_no_runner(tiny_model_dir, n):
    gone_after = []
    orphans = 0
    for _ in range(n):
        owner = subprocess.Popen([sys.executable, "-c", OWNER, str(tiny_model_dir)],
                                 stdout=subprocess.PIPE, text=True)
        try:
            runner_pid = int(owner.stdout.readline())
            assert owner.stdout.readline().strip() == "streaming"
            owner.kill()
            owner.wait()
            seconds = wait_gone(runner_pid, 3.0)
            if seconds is None:
                orphans += 1
                os.kill(runner_pid, signal.SIGKILL)
            else:
                gone_after.append(seconds)
        finally:
            owner.stdout.close()
    record("kernel SIGKILLed while a runner streams: runner gone", cycles=n, failures=orphans,
           max_detect_s=max(gone_after, default=0.0))
    assert orphans == 0


@cycles(10, 100)
def test_interrupt_mid_stream_repeatedly(tiny_model_dir, n):
    client = started(str(tiny_model_dir))
    try:
        client.complete(CompletionRequest(prompt="warm", options=SamplingOptions(max_tokens=4)))
        baseline = client.status().memory.active
        failures = 0
        for _ in range(n):
            stream = client.stream(LONG)
            for i, _chunk in enumerate(stream):
                if i == 1:
                    stream.cancel()
                    break
            if stream.result is None or stream.result.done_reason != "cancel":
                failures += 1
        deadline = time.monotonic() + 5
        while client.status().active_requests and time.monotonic() < deadline:
            time.sleep(0.05)
        text, done = client.complete(CompletionRequest(prompt="hello",
                                                       options=SamplingOptions(max_tokens=3)))
        after = client.status().memory.active
        record("interrupt mid-stream: cancelled, runner usable, memory back", cycles=n,
               failures=failures, extra=f"active memory {baseline} -> {after} bytes")
        assert failures == 0 and done.completion_tokens > 0
        assert after <= baseline * 1.5 + (8 << 20)  # the prompt cache may keep a little
    finally:
        client.close()


@cycles(2, 25)
def test_concurrent_load(tiny_model_dir, n):
    client = started(str(tiny_model_dir))
    errors: list[BaseException] = []
    memory = []
    try:
        for round_ in range(n):
            def one(i: int, round_: int = round_) -> None:
                try:
                    _, done = client.complete(CompletionRequest(
                        prompt=f"round {round_} stream {i}",
                        options=SamplingOptions(max_tokens=8, temperature=0.7, seed=i)))
                    assert done.done_reason in ("stop", "length")
                except BaseException as exc:  # counted, then reported
                    errors.append(exc)

            threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(120)
            memory.append(client.status().memory.active)
        record("load: 8 concurrent streams per round", cycles=n, failures=len(errors),
               extra=f"runner active memory first/last round: {memory[0]} / {memory[-1]} bytes")
        assert not errors, errors[:3]
        assert memory[-1] <= memory[0] * 1.5 + (16 << 20)
    finally:
        client.close()


def test_prompt_longer_than_context_is_a_clear_error(tiny_model_dir):
    client = started(str(tiny_model_dir), context_length=64)
    try:
        with pytest.raises(GenerationError, match="context length is 64"):
            client.complete(CompletionRequest(prompt="word " * 200))
        _, done = client.complete(CompletionRequest(prompt="hi",
                                                    options=SamplingOptions(max_tokens=500)))
        assert done.done_reason == "length" and done.prompt_tokens + done.completion_tokens <= 64
        assert pid_alive(client.pid)
    finally:
        client.close()
    record("prompt longer than the context: clear 400, runner fine", cycles=1, failures=0)


@cycles(2, 20)
def test_runner_sigkilled_mid_cell(tiny_model_dir, n, shell):
    """Through the magic: one clear error naming the signal, the kernel side usable, reload works."""
    from mlx_notebook.control.manager import get_manager

    detect = []
    failures = 0
    for _ in range(n):
        shell.run_line_magic("mlx", f"load {tiny_model_dir} --as victim --force")
        client = get_manager().get("victim")
        killed: list[float] = []

        def kill_when_streaming(client=client, killed=killed) -> None:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not client.status().active_requests:
                time.sleep(0.01)
            os.kill(client.pid, signal.SIGKILL)
            killed.append(time.monotonic())

        killer = threading.Thread(target=kill_when_streaming)
        killer.start()
        result = shell.run_cell("%%mlx generate -m victim --max-tokens 100000\nhello")
        ended = time.monotonic()
        killer.join()
        error = result.error_in_exec
        if error is None or "SIGKILL" not in str(error):
            failures += 1
        detect.append(ended - killed[0])
    shell.run_line_magic("mlx", f"load {tiny_model_dir} --as victim --force")
    assert shell.run_cell("%%mlx generate -m victim --max-tokens 3\nhello").success
    shell.run_line_magic("mlx", "unload victim")
    record("runner SIGKILLed mid-cell: one-line error naming the signal, reload works",
           cycles=n, failures=failures, max_detect_s=max(detect))
    assert failures == 0 and max(detect) < 1.0

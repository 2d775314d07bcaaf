"""RunnerClient against real runner subprocesses (tiny and demo models, and the fault runner)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from mlx_notebook.control.client import RunnerClient
from mlx_notebook.control.stderr_tail import describe_exit, extract_error_lines
from mlx_notebook.errors import (
    GenerationError,
    ProtocolError,
    RunnerExitedError,
    RunnerStartError,
    RunnerStartTimeout,
)
from mlx_notebook.protocol import (
    TOKEN_ENV,
    ChatMessage,
    ChunkEvent,
    CompletionRequest,
    SamplingOptions,
)
from tests.fixtures_runner import stop_client
from tests.runner_process import pid_alive, reap_owner, wait_gone


def request(max_tokens: int = 6, **kw) -> CompletionRequest:
    return CompletionRequest(prompt="hello", options=SamplingOptions(max_tokens=max_tokens, **kw))


LONG = request(100000, temperature=1.0)

# ---------------------------------------------------------------- real runner, tiny model


def test_tiny_runner_streams_tokenizes_and_reports(tiny_client: RunnerClient) -> None:
    status = tiny_client.status()
    assert status.state == "ready" and status.pid == tiny_client.pid
    assert tiny_client.port and tiny_client.base_url.endswith(f":{tiny_client.port}")
    with tiny_client.stream(request(5)) as stream:
        chunks = list(stream)
    assert chunks and all(isinstance(c, ChunkEvent) for c in chunks)
    assert stream.result is not None and stream.result.completion_tokens == 5
    assert stream.text == "".join(c.content for c in chunks)
    assert stream.result.request_id == stream.request_id
    text, done = tiny_client.complete(request(5))
    assert text == stream.text and done.done_reason == "length"  # greedy: same text
    tok = tiny_client.tokenize("hello world")
    assert tiny_client.detokenize(tok.tokens) == "hello world"
    assert "hello" in tiny_client.tokenize(messages=[{"role": "user", "content": "hello"}]).text
    assert tiny_client.cancel("no-such-request") is False
    assert tiny_client.active_streams == 0


def test_runner_has_own_session_and_no_token_in_argv(tiny_client: RunnerClient) -> None:
    assert os.getsid(tiny_client.pid) == tiny_client.pid != os.getsid(0)
    with open(f"/proc/{tiny_client.pid}/cmdline", "rb") as fh:
        argv = fh.read()
    assert tiny_client._token.encode() not in argv
    assert f"--parent-pid\0{os.getpid()}".encode() in argv
    with open(f"/proc/{tiny_client.pid}/environ", "rb") as fh:
        assert f"{TOKEN_ENV}={tiny_client._token}".encode() in fh.read().split(b"\0")


def test_bad_request_is_a_generation_error_and_runner_stays_usable(tiny_client) -> None:
    with pytest.raises(GenerationError, match="HTTP 400"):
        tiny_client.stream(CompletionRequest())  # neither prompt nor messages
    assert tiny_client.complete(request(2))[1].completion_tokens == 2


def test_cancel_from_another_thread_and_reuse(tiny_client: RunnerClient) -> None:
    stream = tiny_client.stream(LONG)
    first = next(stream)
    timer = threading.Timer(0.2, stream.cancel)
    timer.start()
    started = time.monotonic()
    rest = list(stream)
    timer.join()
    assert time.monotonic() - started < 3
    assert stream.result is not None and stream.result.done_reason == "cancel"
    assert stream.text == first.content + "".join(c.content for c in rest)
    stream.cancel()  # twice is fine
    assert tiny_client.complete(request(2))[1].completion_tokens == 2


def test_interrupt_inside_with_block_cancels_on_runner(tiny_client: RunnerClient) -> None:
    with pytest.raises(KeyboardInterrupt), tiny_client.stream(LONG) as stream:
        for i, _ in enumerate(stream):
            if i == 2:
                raise KeyboardInterrupt
    assert stream.result is not None and stream.result.done_reason == "cancel"
    deadline = time.monotonic() + 5
    while tiny_client.status().active_requests and time.monotonic() < deadline:
        time.sleep(0.05)
    assert tiny_client.status().active_requests == 0


def test_astream_yields_chunks_and_done(tiny_client: RunnerClient) -> None:
    done = []

    async def collect() -> list[str]:
        return [c.content async for c in tiny_client.astream(request(4), on_done=done.append)]

    pieces = asyncio.run(collect())
    assert pieces and done and done[0].completion_tokens == 4


def test_wrong_spec_fails_fast_with_runner_message(tmp_path, test_registry) -> None:
    missing = tmp_path / "no-such-model"
    client = RunnerClient(str(missing), registry=test_registry)
    started = time.monotonic()
    try:
        with pytest.raises(RunnerStartError) as info:
            client.start()
            client.wait_until_ready(timeout=60)
        assert time.monotonic() - started < 15
        assert str(missing) in str(info.value) and "exited with code" in str(info.value)
        assert client.has_exited and client.error_lines()
    finally:
        stop_client(client)


def test_context_manager_starts_and_stops(tiny_model_dir, test_registry) -> None:
    with RunnerClient(str(tiny_model_dir), registry=test_registry) as client:
        assert client.complete(request(1))[1].completion_tokens == 1
    assert client.has_exited and client.exit_description() == "exited with code 0"
    assert client.pid not in {e.pid for e in test_registry.entries()}


def test_missing_python_is_a_start_error() -> None:
    with pytest.raises(RunnerStartError, match="/nonexistent/python"):
        RunnerClient("demo", python="/nonexistent/python").start()


def test_runner_sigkilled_mid_stream_names_the_signal(tiny_model_dir, test_registry) -> None:
    client = RunnerClient(str(tiny_model_dir), registry=test_registry)
    try:
        client.start()
        client.wait_until_ready()
        with pytest.raises(RunnerExitedError, match="SIGKILL"), client.stream(LONG) as s:
            for i, _ in enumerate(s):
                if i == 2:
                    os.kill(client.pid, signal.SIGKILL)
                    killed = time.monotonic()
        assert time.monotonic() - killed < 1.0
        assert client.has_exited and client.exit_description() == "killed by SIGKILL"
        with pytest.raises(RunnerExitedError, match="SIGKILL"):
            client.status()
    finally:
        stop_client(client)


OWNER = textwrap.dedent("""
    import signal, sys
    from mlx_notebook.control.client import RunnerClient
    signal.signal(signal.SIGINT, lambda *a: print("interrupted", flush=True))
    client = RunnerClient(sys.argv[1])
    client.start(); client.wait_until_ready(timeout=120)
    print(client.pid, flush=True)
    for line in sys.stdin:
        print(client.status().state, flush=True)
""")


def test_owner_interrupt_spares_runner_and_owner_death_ends_it(tiny_model_dir) -> None:
    # The owner gets its own process group, as Jupyter's kernel has; we signal that group.
    owner = subprocess.Popen([sys.executable, "-c", OWNER, str(tiny_model_dir)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                             start_new_session=True)
    runner_pid = None
    try:
        runner_pid = int(owner.stdout.readline())
        os.killpg(owner.pid, signal.SIGINT)
        assert owner.stdout.readline().strip() == "interrupted"
        owner.stdin.write("status?\n")
        owner.stdin.flush()
        assert owner.stdout.readline().strip() == "ready"
        assert pid_alive(runner_pid)
        owner.kill()
        owner.wait()
        assert wait_gone(runner_pid, 3.0) is not None, "runner outlived its SIGKILLed owner"
    finally:
        reap_owner(owner, runner_pid)


@pytest.mark.slow
def test_demo_model_answers(demo_client: RunnerClient) -> None:
    req = CompletionRequest(messages=(ChatMessage("user", "What is the capital of France?"),),
                            options=SamplingOptions(max_tokens=8))
    text, done = demo_client.complete(req)
    assert "Paris" in text and done.completion_tokens <= 8
    assert demo_client.status().memory.active > 0


# ---------------------------------------------------------------- the fault runner


def test_progress_resets_the_timeout(fault_client) -> None:
    seen = []
    client = fault_client(FAULT_LOAD="slow:2.5", ready=False)
    status = client.wait_until_ready(timeout=1.0, on_progress=lambda s: seen.append(s.progress))
    assert status.state == "ready" and seen == sorted(seen) and len(seen) >= 5


def test_stalled_load_times_out_and_stops_runner(fault_client) -> None:
    client = fault_client(FAULT_LOAD="stall:40", ready=False)
    started = time.monotonic()
    with pytest.raises(RunnerStartTimeout, match="40%"):
        client.wait_until_ready(timeout=1.0)
    assert time.monotonic() - started < 5 and client.has_exited


def test_crash_while_loading_reported_at_once(fault_client) -> None:
    client = fault_client(FAULT_LOAD="crash", ready=False)
    started = time.monotonic()
    with pytest.raises(RunnerStartError, match=r"exited with code 1.*\[METAL\].*Insufficient"):
        client.wait_until_ready(timeout=60)
    assert time.monotonic() - started < 3


def test_load_error_state_reported(fault_client) -> None:
    client = fault_client(FAULT_LOAD="error", ready=False)
    with pytest.raises(RunnerStartError, match="fault injected"):
        client.wait_until_ready(timeout=5)


def test_garbage_instead_of_handshake(fault_client) -> None:
    with pytest.raises(ProtocolError, match="stray print"):
        fault_client(FAULT_HANDSHAKE="garbage")


def test_exit_before_handshake(fault_client) -> None:
    with pytest.raises(RunnerStartError, match=r"code 3.*refuses to start"):
        fault_client(FAULT_HANDSHAKE="exit")


@pytest.mark.parametrize(("fault", "error", "match"), [
    ("garbage", ProtocolError, "not a stream event"),
    ("error", GenerationError, "fault: boom"),
    ("nodone", ProtocolError, "without a done event"),
])
def test_stream_faults(fault_client, fault, error, match) -> None:
    client = fault_client(FAULT_STREAM=fault)
    with pytest.raises(error, match=match), client.stream("hi") as stream:
        list(stream)
    assert client.active_streams == 0 and client.status().state == "ready"


def test_close_ladder_ends_with_sigkill(fault_client) -> None:
    client = fault_client(FAULT_IGNORE_SHUTDOWN="1", FAULT_IGNORE_SIGTERM="1",
                          FAULT_STDERR="warming up\\n[CPU] fault: out of memory")
    started = time.monotonic()
    client.close(grace=1.0)
    assert 0.9 < time.monotonic() - started < 3
    assert client.exit_description() == "killed by SIGKILL"
    assert client.error_lines() == ["[CPU] fault: out of memory"]


def test_close_ladder_sigterm_step(fault_client) -> None:
    client = fault_client(FAULT_IGNORE_SHUTDOWN="1")
    client.close(grace=1.0)
    assert client.exit_description() == "killed by SIGTERM"


# ---------------------------------------------------------------- stderr tail


def test_error_lines_from_traceback_metal_and_fallback() -> None:
    lines = ["loading...", "Traceback (most recent call last):", '  File "x.py", line 3',
             "    raise ValueError('bad')", "ValueError: bad shape", "libc++abi: terminating",
             "[METAL] Command buffer execution failed: Insufficient Memory"]
    assert extract_error_lines(lines) == [
        "ValueError: bad shape", "libc++abi: terminating",
        "[METAL] Command buffer execution failed: Insufficient Memory"]
    assert extract_error_lines(["all good", "still fine", ""]) == ["still fine"]
    assert describe_exit(-9) == "killed by SIGKILL" and describe_exit(2) == "exited with code 2"


def test_astream_task_cancel_stops_generation(tiny_client: RunnerClient) -> None:
    async def main() -> int:
        got = 0

        async def consume() -> None:
            nonlocal got
            async for _ in tiny_client.astream(LONG):
                got += 1

        task = asyncio.create_task(consume())
        while got < 3:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return got

    assert asyncio.run(main()) >= 3
    deadline = time.monotonic() + 5
    while tiny_client.status().active_requests and time.monotonic() < deadline:
        time.sleep(0.05)
    assert tiny_client.status().active_requests == 0 and tiny_client.active_streams == 0


def test_prefill_progress_reaches_the_stream_and_the_generation(tiny_model_dir, test_registry):
    from mlx_notebook.api import Generation

    client = RunnerClient(str(tiny_model_dir), registry=test_registry,
                          extra_args=["--prefill-step", "16"])
    try:
        client.wait_until_ready()
        prompt = "count the words " * 25
        seen: list[tuple[int, int]] = []
        with client.stream(CompletionRequest(prompt=prompt,
                                             options=SamplingOptions(max_tokens=4))) as stream:
            stream.on_prefill = lambda done, total: seen.append((done, total))
            text = "".join(chunk.content for chunk in stream)
        total = stream.result.prompt_tokens
        assert seen and seen[-1] == (total, total) and stream.prefill == (total, total)
        assert text == stream.text
        gen = Generation(client, CompletionRequest(prompt=prompt + "again",
                                                   options=SamplingOptions(max_tokens=4)))
        reported: list[int] = []
        gen.on_prefill = lambda done, _total: reported.append(done)
        with gen:
            list(gen)
        assert reported and reported == sorted(reported)
    finally:
        stop_client(client)

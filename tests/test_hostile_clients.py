"""The runner under hostile local clients (issue 14), with real runner processes.

Raw sockets play the hostile client: headers without a body, bytes trickled one at
a time, idle connections, more connections than the cap, foreign Host/Origin
headers, ids that would inject a header, two requests with one id.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import threading
import time
from collections.abc import Iterator

import httpx2
import pytest

from mlx_notebook.protocol import ENDPOINTS
from tests.reliability_figures import record
from tests.runner_process import RawRunner, running

REQUEST_TIMEOUT = 1.0  # the module's runner: headers and body within 1 s
IDLE_TIMEOUT = 2.0


@pytest.fixture(scope="module")
def tiny(tiny_model_dir) -> Iterator[RawRunner]:
    with running(str(tiny_model_dir), "--request-timeout", str(REQUEST_TIMEOUT),
                 "--idle-timeout", str(IDLE_TIMEOUT), "--keepalive-interval", "0.1",
                 "--prefill-step", "1") as runner:
        yield runner


def connect(runner: RawRunner) -> socket.socket:
    return socket.create_connection(("127.0.0.1", runner.handshake.port), timeout=10)


def head(runner: RawRunner, method: str, path: str, *, token: str | None = None,
         length: int | None = None, host: str | None = None, extra: str = "") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host or f'127.0.0.1:{runner.handshake.port}'}"]
    if token:
        lines.append(f"Authorization: Bearer {token}")
    if length is not None:
        lines.append(f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n" + extra + "\r\n").encode()


def response(sock: socket.socket, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    answer = http.client.HTTPResponse(sock, method=method)
    answer.begin()
    return answer.status, {k.lower(): v for k, v in answer.getheaders()}, answer.read()


def closed_by_peer(sock: socket.socket, timeout: float) -> bool:
    sock.settimeout(timeout)
    try:
        while sock.recv(1 << 16):
            pass
        return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


def threads_of(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("Threads:"))


def wait_threads(pid: int, at_most: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while (count := threads_of(pid)) > at_most and time.monotonic() < deadline:
        time.sleep(0.05)
    return count


def short_completion(runner: RawRunner, **extra) -> list[dict]:
    _, events = runner.complete({"prompt": "hello", "options": {"max_tokens": 3}, **extra})
    return events


# ---------------------------------------------------------------- no token: 401 at once


@pytest.mark.parametrize("method", ["GET", "POST", "OPTIONS", "PUT", "DELETE"])
@pytest.mark.parametrize("path", sorted({p for _, p in ENDPOINTS.values()} | {"/", "/nope"}))
def test_every_path_and_method_without_a_token_is_refused_at_once(tiny, method, path):
    """A body is announced and never sent: the 401 must not wait for it."""
    with connect(tiny) as sock:
        sock.sendall(head(tiny, method, path, length=1000))
        sock.settimeout(2.0)
        status, headers, body = response(sock, method)
    assert status == 401, body
    assert json.loads(body)["error"] == "missing or wrong bearer token"
    assert headers.get("connection") == "close"
    assert "access-control-allow-origin" not in headers


def test_fifty_bodiless_requests_get_401_and_release_their_threads(tiny):
    pid = tiny.process.pid
    baseline = threads_of(pid)
    socks = [connect(tiny) for _ in range(50)]
    try:
        started = time.monotonic()
        for sock in socks:
            sock.sendall(head(tiny, "POST", "/v1/completion", length=1000))
        statuses = []
        for sock in socks:
            sock.settimeout(5.0)
            statuses.append(response(sock, "POST")[0])
        answered = time.monotonic() - started
        released = wait_threads(pid, baseline + 2, 5.0)  # the sockets are still open
    finally:
        for sock in socks:
            sock.close()
    failures = sum(s != 401 for s in statuses) + (released > baseline + 2)
    record("50 connections, headers but no body and no token: 401 at once, threads released",
           cycles=50, failures=failures, max_detect_s=answered,
           extra=f"runner threads {baseline} -> {released} with the 50 sockets still open")
    assert statuses == [401] * 50
    assert released <= baseline + 2


# ---------------------------------------------------------------- slowloris and idle


def test_slowloris_and_idle_connections_are_dropped_and_others_still_served(tiny):
    """200 hostile connections (trickled headers, idle sockets) while a real client works."""
    pid = tiny.process.pid
    baseline = threads_of(pid)
    trickle = [connect(tiny) for _ in range(100)]
    idle = [connect(tiny) for _ in range(100)]
    stop = threading.Event()

    def drip() -> None:  # one byte per socket every 0.2 s: each read alone is quick
        while not stop.is_set():
            for sock in trickle:
                with contextlib.suppress(OSError):
                    sock.send(b"a")
            stop.wait(0.2)

    try:
        for sock in trickle:
            sock.sendall(b"GET /v1/status HTTP/1.1\r\nX-Slow: ")
        dripper = threading.Thread(target=drip, daemon=True)
        dripper.start()
        opened = time.monotonic()
        # While all 200 are held: a real client gets its completion.
        events = short_completion(tiny)
        assert events[-1]["type"] == "done", events[-1]
        assert tiny.get("/v1/status").status_code == 200
        dropped_trickle = [closed_by_peer(s, REQUEST_TIMEOUT + IDLE_TIMEOUT + 3) for s in trickle]
        dropped_idle = [closed_by_peer(s, IDLE_TIMEOUT + 3) for s in idle]
        detect = time.monotonic() - opened
        stop.set()
        released = wait_threads(pid, baseline + 2, 5.0)
    finally:
        stop.set()
        for sock in trickle + idle:
            sock.close()
    failures = dropped_trickle.count(False) + dropped_idle.count(False)
    record("slowloris: 100 trickling + 100 idle connections dropped, a real client served "
           "meanwhile", cycles=200, failures=failures, max_detect_s=detect,
           extra=f"request timeout {REQUEST_TIMEOUT:g} s, idle {IDLE_TIMEOUT:g} s; "
                 f"runner threads {baseline} -> {released}")
    assert failures == 0
    assert released <= baseline + 2


# ---------------------------------------------------------------- the cap, descriptors past 1023


@pytest.fixture(scope="module")
def capped(tiny_model_dir) -> Iterator[RawRunner]:
    """A runner with a cap of 8 connections and 1,100 extra descriptors (test-only env var)."""
    import os

    os.environ["MLX_NOTEBOOK_TEST_ONLY_HOLD_FDS"] = "1100"
    try:
        with running(str(tiny_model_dir), "--max-connections", "8", "--prefill-step", "1") as runner:
            yield runner
    finally:
        del os.environ["MLX_NOTEBOOK_TEST_ONLY_HOLD_FDS"]


def test_past_the_cap_a_clear_503_then_served_again(capped):
    held = [connect(capped) for _ in range(8)]
    try:
        time.sleep(0.2)  # let the accept loop take them all
        with connect(capped) as extra:
            extra.sendall(head(capped, "GET", "/v1/status", token=capped.token))
            extra.settimeout(2.0)
            status, headers, body = response(extra)
        assert status == 503, body
        assert "limit of 8 open connections" in json.loads(body)["error"]
        assert headers.get("retry-after") == "1"
    finally:
        for sock in held:
            sock.close()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        with httpx2.Client(timeout=5) as http:
            if http.get(capped.url + "/v1/status", headers=capped.headers()).status_code == 200:
                break
        time.sleep(0.1)
    else:
        pytest.fail("the runner did not serve again after the held connections closed")


def test_a_stream_on_a_descriptor_past_1023_is_not_cancelled(capped):
    """select() fails past fd 1023; a failed check must not read as a vanished client."""
    with open(f"/proc/{capped.process.pid}/status") as f:
        assert any(line.startswith("FDSize:") and int(line.split()[1]) > 1024 for line in f)
    failures = 0
    for i in range(3):
        # Joining a running stream, a long prompt is read in silence (batched, one token a
        # step): the handler checks for a vanished client while it waits.
        body = {"prompt": "hello", "request_id": f"bg-{i}",
                "options": {"max_tokens": 100000, "temperature": 1.0}}
        with capped.http.stream("POST", capped.url + "/v1/completion", json=body,
                                headers=capped.headers()) as background:
            next(background.iter_lines())
            _, events = capped.complete({"prompt": "word " * 100, "options": {"max_tokens": 5}})
            capped.post("/v1/cancel", {"request_id": f"bg-{i}"})
        failures += events[-1].get("done_reason") != "length"
    record("stream on a descriptor past 1023 (1,100 held open): not cancelled", cycles=3,
           failures=failures)
    assert failures == 0


# ---------------------------------------------------------------- request ids


@pytest.mark.parametrize("request_id", ["abc\r\nX-Injected: yes", "日本", "", "a" * 129, "a b",
                                        "x\x00y"])
def test_request_id_outside_the_safe_alphabet_is_a_400_naming_it(tiny, request_id):
    response = tiny.post("/v1/completion", {"prompt": "hi", "request_id": request_id,
                                            "options": {"max_tokens": 2}})
    assert response.status_code == 400, response.text
    assert response.json()["field"] == "request_id"
    assert "x-injected" not in response.headers
    response = tiny.post("/v1/cancel", {"request_id": request_id})
    assert response.status_code == 400 and response.json()["field"] == "request_id"
    assert tiny.get("/v1/status").json()["active_requests"] == 0


def test_a_duplicate_request_id_is_refused_with_409(tiny):
    body = {"prompt": "hello", "request_id": "dup-1",
            "options": {"max_tokens": 100000, "temperature": 1.0}}
    with tiny.http.stream("POST", tiny.url + "/v1/completion", json=body,
                          headers=tiny.headers()) as first:
        lines = first.iter_lines()
        assert json.loads(next(lines))["type"] in ("chunk", "progress")
        second = tiny.post("/v1/completion", body)
        assert second.status_code == 409, second.text
        assert second.json()["field"] == "request_id"
        assert tiny.post("/v1/cancel", {"request_id": "dup-1"}).json()["cancelled"]
        events = [json.loads(line) for line in lines if line]
    assert events[-1]["type"] == "done" and events[-1]["done_reason"] == "cancel"
    assert events[-1]["request_id"] == "dup-1"
    events = short_completion(tiny, request_id="dup-1")  # free again once the first ended
    assert events[-1]["type"] == "done" and events[-1]["request_id"] == "dup-1"


# ---------------------------------------------------------------- Host and Origin


@pytest.fixture(scope="module")
def no_auth(tiny_model_dir) -> Iterator[RawRunner]:
    from tests.runner_process import spawn_runner, stop

    process, _ = spawn_runner(str(tiny_model_dir), "--no-auth", token="")
    try:
        from mlx_notebook.protocol import Handshake

        handshake = Handshake.from_line(process.stdout.readline().decode())
        with httpx2.Client(timeout=30) as http:
            yield RawRunner(process, handshake, "", http)
    finally:
        stop(process)


@pytest.mark.parametrize("headers,field", [
    ({"Host": "evil.example"}, "Host"),
    ({"Host": "evil.example:{port}"}, "Host"),
    ({"Host": "127.0.0.1.evil.example:{port}"}, "Host"),
    ({"Origin": "http://evil.example"}, "Origin"),
    ({"Origin": "null"}, "Origin"),
    ({"Origin": "http://localhost:8888"}, "Origin"),  # another local server's page (Jupyter)
])
def test_no_auth_runner_refuses_foreign_hosts_and_web_pages(no_auth, headers, field):
    port = no_auth.handshake.port
    headers = {k: v.format(port=port) for k, v in headers.items()}
    for path in ("/v1/shutdown", "/v1/completion"):
        answer = no_auth.http.post(no_auth.url + path, headers=headers,
                                   json={"prompt": "hi", "options": {"max_tokens": 1}})
        assert answer.status_code == 403, answer.text
        assert answer.json()["field"] == field
    assert no_auth.process.poll() is None
    for own in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost", "127.0.0.1"):
        assert no_auth.http.get(no_auth.url + "/v1/status", headers={"Host": own}
                                ).status_code == 200, own


def test_the_host_rule_applies_with_a_token_too(tiny):
    answer = tiny.http.get(tiny.url + "/v1/status",
                           headers={**tiny.headers(), "Host": "rebound.example"})
    assert answer.status_code == 403 and answer.json()["field"] == "Host"
    assert tiny.get("/v1/status").status_code == 200


# ---------------------------------------------------------------- keep-alives, the tokenizer


def test_a_silent_batched_prefill_sends_keepalives(tiny):
    """A long prompt joins a running stream: batched, it sends no progress, only keep-alives,
    while the worker reads it in many short steps (--prefill-step 1)."""
    for attempt in range(4):
        body = {"prompt": "hello", "request_id": f"keeps-going-{attempt}",
                "options": {"max_tokens": 100000, "temperature": 1.0, "seed": attempt}}
        with tiny.http.stream("POST", tiny.url + "/v1/completion", json=body,
                              headers=tiny.headers()) as running_stream:
            next(running_stream.iter_lines())
            started = time.monotonic()
            fresh = f"{time.time_ns()} " + "word " * 108  # no prompt-cache hit
            _, events = tiny.complete({"prompt": fresh, "options": {"max_tokens": 2}})
            took = time.monotonic() - started
            tiny.post("/v1/cancel", {"request_id": f"keeps-going-{attempt}"})
        kinds = [e["type"] for e in events]
        if "progress" not in kinds:  # batched (the other stream may have ended: then solo)
            break
    else:
        pytest.fail("the long prompt never joined the running stream")
    assert kinds[-1] == "done"
    assert took > 0.3, f"the prefill took {took:.2f} s: too quick to show keep-alives"
    assert "keepalive" in kinds, kinds
    assert all(e == {"type": "keepalive"} for e in events if e["type"] == "keepalive")


def test_sixteen_concurrent_tokenize_calls_during_a_stream(tiny):
    texts = [f"text number {i} " * (i + 1) for i in range(16)]
    expected = [tiny.post("/v1/tokenize", {"text": t}).json()["tokens"] for t in texts]
    answers: list[object] = [None] * 16
    failures = 0
    with tiny.http.stream("POST", tiny.url + "/v1/completion", headers=tiny.headers(),
                          json={"prompt": "hello", "options": {"max_tokens": 100000,
                                                               "temperature": 1.0},
                                "request_id": "tok-stream"}) as stream:
        lines = stream.iter_lines()
        next(lines)
        for _ in range(3):
            barrier = threading.Barrier(16)

            def call(i: int, barrier: threading.Barrier = barrier) -> None:
                with httpx2.Client(timeout=30) as http:
                    barrier.wait()
                    answer = http.post(tiny.url + "/v1/tokenize", json={"text": texts[i]},
                                       headers=tiny.headers())
                    answers[i] = answer.json().get("tokens") if answer.status_code == 200 \
                        else answer.text

            threads = [threading.Thread(target=call, args=(i,)) for i in range(16)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            failures += sum(a != e for a, e in zip(answers, expected, strict=True))
        tiny.post("/v1/cancel", {"request_id": "tok-stream"})
        events = [json.loads(line) for line in lines if line]
    record("16 concurrent tokenize calls during a stream", cycles=48, failures=failures)
    assert failures == 0
    assert events[-1]["type"] == "done"

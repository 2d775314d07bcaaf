"""Property-based fuzzing of every runner endpoint and of raw headers: no crash, no dropped
connection, no 500.

Every request the runner rejects must get a 4xx JSON error naming the problem; the
runner must stay usable afterwards.
"""

from __future__ import annotations

import json

import httpx2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlx_notebook.protocol import ENDPOINTS
from tests.runner_process import RawRunner, running

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=30),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=12,
)
OPTION_KEYS = ["temperature", "top_p", "min_p", "top_k", "repeat_penalty", "repeat_last_n",
               "presence_penalty", "frequency_penalty", "logit_bias", "max_tokens", "seed", "stop",
               "logprobs", "bogus"]
LOGIT_BIAS = st.lists(st.tuples(st.integers(-3, 2**40), st.floats(-150, 150)).map(list),
                      max_size=3)
COMPLETION = st.fixed_dictionaries({}, optional={
    "prompt": st.text(max_size=20) | JSON,
    "messages": st.lists(st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "system", "assistant", "x"]),
         "content": st.text(max_size=10) | JSON}), max_size=3) | JSON,
    "options": st.dictionaries(st.sampled_from(OPTION_KEYS), JSON | st.integers(0, 3)
                               | st.floats(0, 1) | LOGIT_BIAS, max_size=4) | JSON,
    "request_id": st.text(max_size=10) | JSON,
})
BODIES = {
    "completion": COMPLETION,
    "tokenize": st.fixed_dictionaries({}, optional={"text": st.text(max_size=20) | JSON,
                                                    "messages": JSON}),
    "detokenize": st.fixed_dictionaries({}, optional={"tokens": st.lists(st.integers(-5, 400),
                                                                         max_size=8) | JSON}),
    "cancel": st.fixed_dictionaries({}, optional={"request_id": st.text(max_size=10) | JSON}),
    "status": JSON,
}


@pytest.fixture(scope="module")
def runner(tiny_model_dir) -> RawRunner:
    with running(str(tiny_model_dir), "--request-timeout", "1") as r:
        yield r


def check(runner: RawRunner, name: str, body: object) -> None:
    method, path = ENDPOINTS[name]
    options = body.get("options") if isinstance(body, dict) else None
    if isinstance(options, dict) and isinstance(options.get("max_tokens"), int):
        options["max_tokens"] = min(options["max_tokens"], 3)  # keep generations short
    elif isinstance(body, dict) and name == "completion":
        body.setdefault("options", {}) if not isinstance(body.get("options"), dict) else None
        if isinstance(body.get("options"), dict):
            body["options"]["max_tokens"] = 2
    try:
        response = runner.http.request(method, runner.url + path, headers=runner.headers(),
                                       content=json.dumps(body))
    except httpx2.HTTPError as exc:  # a dropped connection is a failure
        pytest.fail(f"{name} {body!r}: {exc!r}")
    assert response.status_code < 500, (name, body, response.text)
    if response.status_code >= 400:
        error = response.json()
        assert isinstance(error["error"], str) and error["error"]
    elif name == "completion":
        lines = [json.loads(line) for line in response.text.splitlines() if line]
        assert lines[-1]["type"] == "done", lines[-1]


@pytest.mark.parametrize("name", sorted(BODIES))
def test_fuzz_endpoint(runner, name):
    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck),
              derandomize=True)
    @given(body=BODIES[name])
    def run(body):
        check(runner, name, body)

    run()
    assert runner.get("/v1/status").json()["state"] == "ready"


# ---------------------------------------------------------------- headers, auth, length, ids

HEADER_VALUE = st.text(st.characters(min_codepoint=32, max_codepoint=255,
                                     blacklist_characters="\x7f"), max_size=40)
HEADER_NAME = st.from_regex(r"\A[A-Za-z][A-Za-z0-9-]{0,15}\Z")


def fuzz_cycles(short: int, soak: int):
    return pytest.mark.parametrize("n", [
        pytest.param(short, id=f"x{short}"),
        pytest.param(soak, id=f"x{soak}", marks=pytest.mark.soak)])


@fuzz_cycles(60, 600)
def test_fuzz_headers_auth_length_and_request_id(runner, n):
    """Raw requests: Host, Authorization, Content-Length, extra headers and the request id all
    fuzzed. Every answer is a whole HTTP response under 500; a valid id comes back unchanged."""
    import http.client
    import socket

    from tests.reliability_figures import record

    port = runner.handshake.port
    outcomes = {"ids": 0, "ids_refused": 0}

    @settings(max_examples=n, deadline=None, suppress_health_check=list(HealthCheck),
              derandomize=True)
    # Mostly the right Host and token, so that the ids and lengths reach the endpoint.
    @given(host=st.sampled_from([f"127.0.0.1:{port}"] * 6 + ["localhost", "evil.example", ""])
           | HEADER_VALUE,
           auth=st.sampled_from(["right"] * 6 + ["none", "Bearer wrong", "Basic x"])
           | HEADER_VALUE,
           length=st.sampled_from(["exact", "none", "short", "-5", "abc", str(1 << 40)]),
           extra=st.lists(st.tuples(HEADER_NAME, HEADER_VALUE), max_size=4),
           request_id=st.none() | st.text(max_size=12)
           | st.from_regex(r"\A[A-Za-z0-9._:-]{1,20}\Z"))
    def run(host, auth, length, extra, request_id):
        body = {"prompt": "hi", "options": {"max_tokens": 1}}
        if request_id is not None:
            body["request_id"] = request_id
        data = json.dumps(body).encode()
        lines = ["POST /v1/completion HTTP/1.1", f"Host: {host}"]
        if auth == "right":
            lines.append(f"Authorization: Bearer {runner.token}")
        elif auth != "none":
            lines.append(f"Authorization: {auth}")
        sizes = {"exact": str(len(data)), "short": str(len(data) - 1)}
        if length != "none":
            lines.append(f"Content-Length: {sizes.get(length, length)}")
        lines += [f"{k}: {v}" for k, v in extra if k.lower() not in ("host", "content-length")]
        raw = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + data
        with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
            sock.sendall(raw)
            answer = http.client.HTTPResponse(sock, method="POST")
            try:
                answer.begin()
                payload = answer.read()
            except (ConnectionResetError, http.client.RemoteDisconnected) as exc:
                pytest.fail(f"{raw!r}: dropped without an answer ({exc!r})")
        assert answer.status < 500, (raw, answer.status, payload)
        headers = {k.lower() for k, _ in answer.getheaders()}
        assert not headers - {"server", "date", "content-type", "content-length",
                              "cache-control", "connection", "transfer-encoding",
                              "x-request-id"}, headers
        if answer.status == 200:
            events = [json.loads(line) for line in payload.splitlines() if line]
            assert events[-1]["type"] == "done", events[-1]
            if request_id is not None:
                outcomes["ids"] += 1
                assert answer.getheader("X-Request-Id") == request_id
                assert events[-1]["request_id"] == request_id
        elif answer.status == 400 and request_id is not None \
                and json.loads(payload).get("field") == "request_id":
            outcomes["ids_refused"] += 1
        else:
            assert json.loads(payload)["error"]

    run()
    assert runner.get("/v1/status").json()["active_requests"] == 0
    record("fuzzed raw requests (Host, Authorization, Content-Length, headers, request_id)",
           cycles=n, failures=0, extra=f"{outcomes['ids']} ids served back unchanged, "
                                       f"{outcomes['ids_refused']} refused naming the field")

"""``mn.serve(port=...)``: one OpenAI base URL for every loaded model, through a router
process, driven by the real ``openai`` SDK (issue 20). Two real tiny-model runners."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

import mlx_notebook as mn
from mlx_notebook.control.manager import get_manager
from mlx_notebook.errors import InvalidArgumentError
from tests.runner_process import pid_alive
from tests.test_openai import closing_cancels

A, B = "route-a", "route-b"


@pytest.fixture(scope="module")
def router(tiny_model_dir: Path, tiny_thinker_dir: Path) -> Iterator[mn.ServeInfo]:
    mn.load(str(tiny_model_dir), name=A)
    mn.load(str(tiny_thinker_dir), name=B)
    try:
        yield mn.serve(port=0)
    finally:
        mn.unload(all=True)


@pytest.fixture(scope="module")
def client(router: mn.ServeInfo) -> openai.OpenAI:
    return mn.openai_client(port=router.port, max_retries=0, timeout=60)


def _greedy(client: openai.OpenAI, model: str, prompt: str = "Hello") -> str:
    answer = client.completions.create(model=model, prompt=prompt, max_tokens=6, temperature=0)
    return answer.choices[0].text


def test_one_base_url_answers_for_every_loaded_model(router: mn.ServeInfo,
                                                     client: openai.OpenAI) -> None:
    ids = {m.id for m in client.models.list()}
    assert {A, B} <= ids, ids
    assert router.base_url.startswith("http://127.0.0.1:") and router.base_url.endswith("/v1")
    for name in (A, B):  # the same text as from the model's own runner
        direct = mn.openai_client(name, max_retries=0, timeout=60)
        assert _greedy(client, name) == _greedy(direct, name)
    assert _greedy(client, A) != _greedy(client, B)  # two different models behind it


def test_streaming_goes_through_as_it_comes(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=A, messages=[{"role": "user", "content": "Hi"}], max_tokens=8, temperature=0,
        stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(chunks) >= 3 and text
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 8


def test_the_model_spec_is_a_name_too(client: openai.OpenAI, tiny_model_dir: Path) -> None:
    assert _greedy(client, str(tiny_model_dir)) == _greedy(client, A)


def test_errors_are_the_sdks_own(router: mn.ServeInfo, client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError, match="no model 'nope' here"):
        client.completions.create(model="nope", prompt="Hi", max_tokens=1)
    wrong = openai.OpenAI(base_url=router.base_url, api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.completions.create(model=A, prompt="Hi", max_tokens=1)
    with pytest.raises(openai.BadRequestError, match="max_tokens"):  # the runner's own 400
        client.completions.create(model=A, prompt="Hi", max_tokens=-3)
    runner_token = mn.serve(A).token
    assert runner_token != router.token  # the router's key is its own
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=router.base_url, api_key=runner_token,
                      max_retries=0).completions.create(model=A, prompt="Hi", max_tokens=1)


def test_hostile_requests_get_short_refusals(router: mn.ServeInfo) -> None:
    auth = {"Authorization": f"Bearer {router.token}"}
    with httpx.Client(base_url=router.base_url.removesuffix("/v1"), timeout=10) as http:
        evil = http.get("/v1/models", headers={**auth, "Host": "evil.example:80"})
        assert evil.status_code == 403 and "Host" in evil.json()["error"]["message"]
        page = http.get("/v1/models", headers={**auth, "Origin": "http://evil.example"})
        assert page.status_code == 403
        bad = http.post("/v1/completions", headers=auth, content=b"{not json")
        assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"
        nomodel = http.post("/v1/completions", headers=auth, json={"prompt": "Hi"})
        assert nomodel.status_code == 400 and nomodel.json()["error"]["param"] == "model"
        assert _raw(router, f"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1:{router.port}"
                            f"\r\nAuthorization: Bearer {router.token}\r\n"
                            f"Content-Length: {64 << 20}\r\n\r\n{{}}").startswith(b"HTTP/1.0 413")
        assert http.get("/v1/models", headers=auth).status_code == 200  # still serving
    # a client that connects and sends nothing is dropped, and blocks nobody
    with socket.create_connection(("127.0.0.1", router.port), timeout=30) as idle:
        ok = httpx.get(router.base_url + "/models", headers=auth, timeout=10)
        assert ok.status_code == 200
        idle.settimeout(30)
        assert idle.recv(1024) == b""  # closed by the router's read timeout


def _raw(router: mn.ServeInfo, request: str) -> bytes:
    """What the router answers to bytes no HTTP library would send."""
    with socket.create_connection(("127.0.0.1", router.port), timeout=15) as sock:
        sock.sendall(request.encode())
        answer = b""
        while chunk := sock.recv(4096):  # to the end: the router closes after its answer
            answer += chunk
        return answer


def test_closing_the_stream_cancels_at_the_runner(client: openai.OpenAI) -> None:
    closing_cancels(client, A, wait=5.0)


def test_it_follows_loads_and_unloads(router: mn.ServeInfo, client: openai.OpenAI,
                                      tiny_model_dir: Path) -> None:
    mn.load(str(tiny_model_dir), name="route-c")
    try:
        assert "route-c" in {m.id for m in client.models.list()}
        assert _greedy(client, "route-c") == _greedy(client, A)
    finally:
        mn.unload("route-c")
    assert "route-c" not in {m.id for m in client.models.list()}
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="route-c", prompt="Hi", max_tokens=1)


def test_a_runner_that_died_is_a_502_and_the_router_goes_on(router: mn.ServeInfo,
                                                            client: openai.OpenAI,
                                                            tiny_model_dir: Path) -> None:
    mn.load(str(tiny_model_dir), name="route-d")
    try:
        pid = get_manager().get("route-d").pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)  # a real crash: the table still routes to it
        deadline = time.monotonic() + 10
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        body = b'{"model": "route-d", "prompt": "Hi", "max_tokens": 1}'
        answer = _raw(router, f"POST /v1/completions HTTP/1.0\r\nHost: 127.0.0.1:{router.port}"
                              f"\r\nAuthorization: Bearer {router.token}\r\nContent-Length: "
                              f"{len(body)}\r\n\r\n{body.decode()}")
        assert answer.startswith(b"HTTP/1.0 502"), answer[:200]
        assert b"did not answer" in answer and b'"param": "model"' in answer
        assert _greedy(client, A)  # the others are still served
    finally:
        with contextlib.suppress(Exception):
            mn.unload("route-d")


def test_serve_again_keeps_the_router_and_a_bad_call_is_one_line(router: mn.ServeInfo) -> None:
    again = mn.serve(port=0)
    assert again.base_url == router.base_url and again.token == router.token
    assert router.token not in repr(again) and router.token not in again.recipe()
    assert f"mn.openai_client(port={router.port})" in again.recipe()
    with pytest.raises(InvalidArgumentError, match="not both"):
        mn.serve(A, port=0)
    with pytest.raises(InvalidArgumentError, match="between 0 and 65535"):
        mn.serve(port=70000)


def test_the_router_goes_with_the_manager(tiny_model_dir: Path) -> None:
    from mlx_notebook.control.manager import RunnerManager
    from mlx_notebook.control.router import Router

    manager = RunnerManager()
    router = Router(manager)
    pid = router.process.pid
    assert pid is not None and router.alive
    manager.router = router
    manager.close()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and pid_alive(pid):
        time.sleep(0.05)
    assert not pid_alive(pid)
    assert get_manager() is not manager

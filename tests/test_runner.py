"""The runner subprocess, end to end over HTTP: real processes, real MLX models."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import httpx2
import pytest

from mlx_notebook.protocol import TOKEN_ENV, Handshake
from tests.runner_process import RawRunner, running, spawn_runner, stop, wait_gone

CAPITAL = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir) -> RawRunner:
    with running(str(tiny_model_dir)) as runner:
        yield runner


@pytest.fixture(scope="module")
def demo(demo_model_ready) -> RawRunner:
    with running("demo") as runner:
        yield runner


def test_handshake_comes_before_the_model_is_loaded(tiny_model_dir):
    with running(str(tiny_model_dir), ready=False) as runner:
        assert runner.handshake.protocol == 1
        assert runner.handshake.pid == runner.process.pid
        assert runner.handshake.host == "127.0.0.1"
        first = runner.get("/v1/status").json()
        assert first["state"] in ("loading", "ready")
        assert runner.wait_ready()["state"] == "ready"


def test_status_reports_model_memory_and_context(tiny):
    status = tiny.get("/v1/status").json()
    assert status["state"] == "ready" and status["progress"] == 100
    assert status["pid"] == tiny.process.pid
    assert status["context_length"] > 0
    memory = status["memory"]
    assert memory["active"] > 0 and memory["peak"] >= memory["active"]
    assert memory["weights"] > 0 and memory["limit"] > 0
    assert status["weights_format"]


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"},
                                     {"Authorization": "Basic abc"}])
@pytest.mark.parametrize("method,path", [("GET", "/v1/status"), ("POST", "/v1/completion"),
                                         ("POST", "/v1/tokenize"), ("POST", "/v1/shutdown")])
def test_every_endpoint_needs_the_token(tiny, headers, method, path):
    response = tiny.http.request(method, tiny.url + path, headers=headers, json={"text": "x"})
    assert response.status_code == 401
    assert response.json()["error"] == "missing or wrong bearer token"
    assert "access-control-allow-origin" not in response.headers
    assert tiny.get("/v1/status").status_code == 200  # still alive (shutdown was refused)


def test_refuses_to_start_without_a_token_unless_asked(tiny_model_dir):
    process, _ = spawn_runner(str(tiny_model_dir), token="")
    try:
        assert process.wait(10) != 0
        assert TOKEN_ENV in process.stderr.read().decode()
    finally:
        stop(process)


def test_refuses_to_listen_beyond_loopback_without_the_flag(tiny_model_dir):
    process, _ = spawn_runner(str(tiny_model_dir), "--host", "0.0.0.0")
    try:
        assert process.wait(10) != 0
        assert "--allow-remote" in process.stderr.read().decode()
    finally:
        stop(process)


def test_token_is_not_in_argv(tiny):
    with open(f"/proc/{tiny.process.pid}/cmdline", "rb") as f:
        assert tiny.token.encode() not in f.read()


def test_demo_greedy_answer_names_paris(demo):
    text, events = demo.complete({"messages": CAPITAL, "options": {"max_tokens": 12}})
    assert "Paris" in text
    done = events[-1]
    assert done["type"] == "done" and done["done_reason"] in ("stop", "length")
    assert done["prompt_tokens"] > 5 and done["completion_tokens"] > 0
    assert done["peak_memory"] > 0


def test_same_seed_same_text(tiny):
    body = {"prompt": "hello", "options": {"temperature": 1.0, "seed": 42, "max_tokens": 12}}
    first, _ = tiny.complete(body)
    second, _ = tiny.complete(body)
    other, _ = tiny.complete({**body, "options": {**body["options"], "seed": 7}})
    assert first == second
    assert first != other  # 12 tokens sampled at temperature 1 from a random model


def test_stop_string_ends_text_before_it(tiny):
    full, _ = tiny.complete({"prompt": "hello", "options": {"max_tokens": 24}})
    stop_at = full[len(full) // 2: len(full) // 2 + 3]
    assert stop_at.strip(), full
    text, events = tiny.complete({"prompt": "hello",
                                  "options": {"max_tokens": 24, "stop": [stop_at]}})
    assert text == full[: full.index(stop_at)]
    assert events[-1]["done_reason"] == "stop"


def test_logprobs_are_sorted_and_include_the_sampled_token(tiny):
    _, events = tiny.complete({"prompt": "hello", "options": {"max_tokens": 4, "logprobs": 3}})
    for chunk in (e for e in events if e["type"] == "chunk"):
        (lp,) = chunk["logprobs"]
        values = [t["logprob"] for t in lp["top"]]
        assert values == sorted(values, reverse=True) and len(values) == 3
        assert lp["top"][0]["token"] == lp["token"]  # greedy: the best one was taken
        assert lp["logprob"] <= 0


def test_fast_tokens_are_written_together_and_none_is_lost(tiny):
    """Tokens made faster than one per flush interval share a line; all arrive, in order."""
    from mlx_notebook.runner.server import _FLUSH_SECONDS

    body = {"prompt": "hello", "options": {"max_tokens": 300}}
    _, alone = tiny.complete(body)
    _, events = tiny.complete(body)
    chunks = [e for e in events if e["type"] == "chunk"]
    done = events[-1]
    assert done["type"] == "done"
    tokens = [t for c in chunks for t in c["tokens"]]
    assert tokens == [t for e in alone if e["type"] == "chunk" for t in e["tokens"]]  # greedy
    assert len(tokens) == done["completion_tokens"]
    rate = (done["completion_tokens"] - 1) / done["eval_duration"]
    if rate * _FLUSH_SECONDS < 3:
        pytest.skip(f"the tiny model made {rate:.0f} tok/s here: too slow to share lines")
    assert len(chunks) < 0.75 * len(tokens), (len(chunks), len(tokens), rate)


def test_cancel_mid_stream_then_next_request_works(tiny):
    request_id = "cancel-me"
    seen = []
    with tiny.http.stream("POST", tiny.url + "/v1/completion", headers=tiny.headers(),
                          json={"prompt": "hello", "request_id": request_id,
                                "options": {"max_tokens": 100000, "temperature": 1.0}}) as resp:
        lines = resp.iter_lines()
        for line in lines:
            seen.append(json.loads(line))
            if len(seen) == 3:
                assert tiny.post("/v1/cancel", {"request_id": request_id}).json() == {
                    "cancelled": True}
            if seen[-1]["type"] == "done":
                break
    assert seen[-1]["done_reason"] == "cancel"
    assert seen[-1]["completion_tokens"] < 1000
    assert tiny.post("/v1/cancel", {"request_id": request_id}).json() == {"cancelled": False}
    text, _ = tiny.complete({"prompt": "hello", "options": {"max_tokens": 3}})
    assert text


def test_closing_the_stream_cancels_generation(tiny):
    with tiny.http.stream("POST", tiny.url + "/v1/completion", headers=tiny.headers(),
                          json={"prompt": "hello", "options": {"max_tokens": 100000}}) as resp:
        for _ in zip(range(3), resp.iter_lines(), strict=False):
            pass
    deadline = time.monotonic() + 5
    while tiny.get("/v1/status").json()["active_requests"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert tiny.get("/v1/status").json()["active_requests"] == 0


def test_concurrent_requests_match_sequential_greedy_text(tiny):
    prompts = ["hello", "the cat", "one two three", "zebra"]
    sequential = [tiny.complete({"prompt": p, "options": {"max_tokens": 10}})[0] for p in prompts]
    results: dict[int, str] = {}

    def run(i: int) -> None:
        with httpx2.Client(timeout=60) as http:
            results[i] = RawRunner(tiny.process, tiny.handshake, tiny.token, http).complete(
                {"prompt": prompts[i], "options": {"max_tokens": 10}})[0]

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert [results[i] for i in range(len(prompts))] == sequential


@pytest.mark.parametrize("options", [{"temperature": 0}, {"temperature": 1.0, "seed": 11}],
                         ids=["greedy", "seeded"])
def test_a_request_joined_mid_stream_goes_on_as_if_alone(tiny, options):
    """The first request is decoded alone (runner/solo.py); a second one arriving
    mid-stream moves it into the batch: neither text may change."""
    first = {"prompt": "alone at first: the cat", "options": {"max_tokens": 400, **options}}
    second = {"prompt": "then a second: zebra", "options": {"max_tokens": 12, **options}}
    alone = [tiny.complete(first)[0], tiny.complete(second)[0]]
    tiny.post("/v1/free")  # no prompt-cache hits: the same path as the first time
    results: dict[str, str] = {}
    joined = threading.Event()

    def run_second() -> None:
        joined.wait(60)
        with httpx2.Client(timeout=60) as http:
            results["second"] = RawRunner(tiny.process, tiny.handshake, tiny.token,
                                          http).complete(second)[0]

    helper = threading.Thread(target=run_second)
    helper.start()
    pieces = []
    with tiny.http.stream("POST", tiny.url + "/v1/completion", json=first,
                          headers=tiny.headers()) as response:
        for line in response.iter_lines():
            event = json.loads(line) if line else {}
            if event.get("type") == "chunk":
                pieces.append(event["content"])
                if len(pieces) == 5:
                    joined.set()
    helper.join(60)
    assert ["".join(pieces), results["second"]] == alone


def test_batch_only_decodes_the_same_text(tiny, tiny_model_dir):
    """--batch-only keeps a lone request in the BatchGenerator: same tokens, other path."""
    body = {"prompt": "one path or the other", "options": {"max_tokens": 30}}
    with running(str(tiny_model_dir), "--batch-only") as batch_only:
        assert batch_only.complete(body)[0] == tiny.complete(body)[0]


def test_a_long_prompt_reports_its_progress_before_the_answer(tiny, tiny_model_dir):
    """--prefill-step 16: a 100-token prompt is read in steps, each one a progress event."""
    body = {"prompt": "count the words " * 25, "options": {"max_tokens": 5}}
    with running(str(tiny_model_dir), "--prefill-step", "16") as stepped:
        text, events = stepped.complete(body)
    kinds = [e["type"] for e in events]
    first_chunk = kinds.index("chunk")
    progress = [e for e in events[:first_chunk] if e["type"] == "progress"]
    total = events[-1]["prompt_tokens"]
    assert len(progress) >= total // 16 - 1 and "progress" not in kinds[first_chunk:]
    assert [p["processed"] for p in progress] == sorted({p["processed"] for p in progress})
    assert {p["total"] for p in progress} == {total} and progress[-1]["processed"] == total
    assert text == tiny.complete(body)[0]  # read in steps or at once: the same answer
    short = tiny.complete({"prompt": "short", "options": {"max_tokens": 3}})[1]
    assert "progress" not in {e["type"] for e in short}  # one step: nothing to report


def test_shared_prefix_reuses_the_kv_cache(tiny):
    history = [{"role": "user", "content": "tell me about cats and dogs " * 4}]
    _, first = tiny.complete({"messages": history, "options": {"max_tokens": 4}})
    text = "".join(e.get("content", "") for e in first if e["type"] == "chunk")
    follow = history + [{"role": "assistant", "content": text},
                        {"role": "user", "content": "and birds?"}]
    _, second = tiny.complete({"messages": follow, "options": {"max_tokens": 4}})
    assert second[-1]["cached_tokens"] >= first[-1]["prompt_tokens"] // 2


def test_free_drops_the_prompt_cache_and_keeps_the_model(tiny):
    body = {"prompt": "free me: " + "the cat sat on the mat " * 6, "options": {"max_tokens": 3}}
    text, _ = tiny.complete(body)
    _, again = tiny.complete(body)
    assert again[-1]["cached_tokens"] > 0  # the cache serves a repeat
    freed = tiny.post("/v1/free").json()
    assert freed["done"] is True and freed["prompt_cache_freed"] > 0
    assert freed["memory"]["active"] > 0  # the weights stay
    after_text, after = tiny.complete(body)
    assert after[-1]["cached_tokens"] == 0 and after_text == text  # recomputed, same answer
    assert tiny.post("/v1/free").json()["prompt_cache_freed"] > 0  # that run was cached again


def test_tokenize_and_detokenize_round_trip(tiny):
    tokens = tiny.post("/v1/tokenize", {"text": "hello world"}).json()
    assert tokens["tokens"] and len(tokens["pieces"]) == len(tokens["tokens"])
    text = tiny.post("/v1/detokenize", {"tokens": tokens["tokens"]}).json()["text"]
    assert text.endswith("hello world")
    chat = tiny.post("/v1/tokenize", {"messages": CAPITAL}).json()
    assert "capital of France" in chat["text"] and len(chat["tokens"]) > len(tokens["tokens"])


BAD_REQUESTS = [
    ("/v1/completion", {}, "prompt"),
    ("/v1/completion", {"prompt": ""}, "prompt"),
    ("/v1/completion", {"prompt": "x", "messages": CAPITAL}, "prompt"),
    ("/v1/completion", {"prompt": 3}, "prompt"),
    ("/v1/completion", {"prompt": "x", "bogus": 1}, "bogus"),
    ("/v1/completion", {"prompt": "x", "options": {"temperature": -1}}, "options.temperature"),
    ("/v1/completion", {"prompt": "x", "options": {"temperature": "hot"}}, "options.temperature"),
    ("/v1/completion", {"prompt": "x", "options": {"top_p": 1.5}}, "options.top_p"),
    ("/v1/completion", {"prompt": "x", "options": {"min_p": -0.1}}, "options.min_p"),
    ("/v1/completion", {"prompt": "x", "options": {"top_k": 1.5}}, "options.top_k"),
    ("/v1/completion", {"prompt": "x", "options": {"max_tokens": 0}}, "options.max_tokens"),
    ("/v1/completion", {"prompt": "x", "options": {"seed": -3}}, "options.seed"),
    ("/v1/completion", {"prompt": "x", "options": {"stop": [1]}}, "options.stop"),
    ("/v1/completion", {"prompt": "x", "options": {"logprobs": 99}}, "options.logprobs"),
    ("/v1/completion", {"prompt": "x", "options": {"repeat_penalty": True}},
     "options.repeat_penalty"),
    ("/v1/completion", {"prompt": "x", "options": {"wat": 1}}, "options.wat"),
    ("/v1/completion", {"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
    ("/v1/completion", {"messages": []}, "messages"),
    ("/v1/completion", {"prompt": "x " * 5000}, "prompt"),  # longer than the context
    ("/v1/tokenize", {"text": 5}, "text"),
    ("/v1/detokenize", {"tokens": ["a"]}, "tokens"),
    ("/v1/detokenize", {"tokens": [10**9]}, "tokens"),
    ("/v1/cancel", {}, "request_id"),
]


@pytest.mark.parametrize("path,body,field", BAD_REQUESTS)
def test_bad_input_gets_a_400_naming_the_field(tiny, path, body, field):
    response = tiny.post(path, body)
    assert response.status_code == 400, response.text
    assert response.json()["field"] == field
    assert "Traceback" not in response.text


def test_malformed_bodies_and_paths(tiny):
    post = lambda data: tiny.http.post(tiny.url + "/v1/completion", content=data,  # noqa: E731
                                       headers=tiny.headers())
    assert post(b"{not json").status_code == 400
    assert post(b"[" * 100000 + b"]" * 100000).status_code == 400
    assert post(b"\xff\xfe").status_code == 400
    assert post(b"x" * (9 * 1024 * 1024)).status_code == 413
    assert tiny.get("/v1/nothing").status_code == 404
    assert tiny.get("/v1/completion").status_code == 405
    assert tiny.get("/v1/status").status_code == 200


def test_wrong_model_fails_fast_with_one_line(tmp_path):
    process, _ = spawn_runner(str(tmp_path / "no-such-model"))
    try:
        assert Handshake.from_line(process.stdout.readline().decode()).port > 0
        assert process.wait(30) != 0
        lines = [line for line in process.stderr.read().decode().splitlines() if line.strip()]
        assert len(lines) == 1, lines
        assert "no-such-model" in lines[0]
    finally:
        stop(process)


def test_shutdown_endpoint_stops_the_runner(tiny_model_dir):
    with running(str(tiny_model_dir)) as runner:
        assert runner.post("/v1/shutdown").json() == {"ok": True}
        assert runner.process.wait(10) == 0


def test_stdin_eof_stops_the_runner(tiny_model_dir):
    with running(str(tiny_model_dir)) as runner:
        runner.process.stdin.close()
        assert wait_gone(runner.process.pid, 5) is not None


PARENT = textwrap.dedent("""
    import subprocess, sys, os, time
    child = subprocess.Popen([sys.executable, "-m", "mlx_notebook.runner", "--model", sys.argv[1],
                              "--parent-pid", str(os.getpid())], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, start_new_session=True)
    print(child.pid, flush=True)
    child.stdout.readline()
    time.sleep(600)
""")


@pytest.mark.parametrize("keep_stdin_open", [False, True])
def test_runner_exits_when_its_parent_is_sigkilled(tiny_model_dir, keep_stdin_open):
    """Covers both signals: stdin EOF, and the pid watch when stdin stays open elsewhere."""
    env = {TOKEN_ENV: "t"}
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(tiny_model_dir)],
                              stdout=subprocess.PIPE, env={**os.environ, **env},
                              pass_fds=())
    runner_pid = int(parent.stdout.readline())
    holder = None
    try:
        if keep_stdin_open:  # a grandchild inherits nothing here, so hold the pipe via /proc
            holder = open(f"/proc/{runner_pid}/fd/0", "wb")  # noqa: SIM115
        time.sleep(0.5)
        parent.kill()
        parent.wait()
        assert wait_gone(runner_pid, 3.0) is not None
    finally:
        if holder:
            holder.close()
        with contextlib.suppress(ProcessLookupError):
            os.kill(runner_pid, signal.SIGKILL)
        parent.stdout.close()

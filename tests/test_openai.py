"""The runner's OpenAI-compatible endpoints, driven by the real ``openai`` SDK (issue 20).

One tiny-model runner loaded through the manager (as ``%mlx load`` does) for the module.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

import mlx_notebook as mn
from mlx_notebook.runner.openai_wire import CHAT_FIELDS, COMPLETION_FIELDS
from tests.fixtures_runner import serving

from .frontend_helpers import shell  # noqa: F401 - fixture

NAME = "tiny-oai"
MESSAGES = [{"role": "user", "content": "Say something"}]

# A value asking for something, for every field of the conformance table: supported and
# ignored fields answer 200, refused ones 400 naming the field. A new field needs a sample.
SAMPLES: dict[str, Any] = {
    "model": NAME, "messages": MESSAGES, "prompt": "Hello", "stream": False,
    "stream_options": {"include_usage": True}, "max_tokens": 2, "max_completion_tokens": 2,
    "temperature": 0.5, "top_p": 0.9, "seed": 7, "stop": ["\n"], "presence_penalty": 0.5,
    "frequency_penalty": 0.5, "logit_bias": {"1": 5}, "n": 2, "user": "u",
    "safety_identifier": "s", "metadata": {"k": "v"}, "store": True, "service_tier": "auto",
    "prompt_cache_key": "k", "prompt_cache_retention": "24h", "top_k": 5, "min_p": 0.05,
    "repetition_penalty": 1.1, "logprobs": True, "top_logprobs": 2,
    "response_format": {"type": "json_object"},
    "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
    "tool_choice": "auto", "parallel_tool_calls": True,
    "functions": [{"name": "f", "parameters": {}}], "function_call": "auto",
    "modalities": ["text", "audio"], "audio": {"voice": "alloy", "format": "wav"},
    "prediction": {"type": "content", "content": "x"}, "reasoning_effort": "low",
    "verbosity": "low", "web_search_options": {}, "echo": True, "suffix": "end", "best_of": 2,
    "chat_template_kwargs": {"enable_thinking": False},
}
# Supported, but this module's model has no tool support: the runner's 400 naming ``tools``
# (tests/test_openai_tools.py sends them to a model that has it).
NEEDS_TOOL_MODEL = {"tools"}


@pytest.fixture(scope="module")
def served(tiny_model_dir: Path) -> Iterator[mn.ServeInfo]:
    yield from serving(tiny_model_dir, NAME)


@pytest.fixture(scope="module")
def client(served: mn.ServeInfo) -> openai.OpenAI:
    return mn.openai_client(NAME, max_retries=0, timeout=60)


def _raw(served: mn.ServeInfo, path: str, body: Any = None, *, token: str | None = None,
         content: bytes | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {served.token if token is None else token}"}
    if body is None and content is None:
        return httpx.get(served.base_url + path, headers=headers, timeout=30)
    return httpx.post(served.base_url + path, headers=headers, json=body, content=content,
                      timeout=30)


@pytest.mark.parametrize("kind", ["chat", "completion"])
def test_the_conformance_table_is_walked(served: mn.ServeInfo, kind: str) -> None:
    table = CHAT_FIELDS if kind == "chat" else COMPLETION_FIELDS
    path = "/chat/completions" if kind == "chat" else "/completions"
    base = {"model": NAME, "max_tokens": 2, "temperature": 0}
    base.update({"messages": MESSAGES} if kind == "chat" else {"prompt": "Hello"})
    assert set(table) <= set(SAMPLES), set(table) - set(SAMPLES)
    for name, (support, _note) in table.items():
        body = {**base, name: SAMPLES[name]}
        if name == "top_logprobs":
            body["logprobs"] = True
        if name == "logprobs" and kind == "completion":
            body["logprobs"] = 2
        if name == "stream_options":
            body["stream"] = True
        answer = _raw(served, path, body)
        if name in NEEDS_TOOL_MODEL:
            assert support == "supported" and answer.status_code == 400, (name, answer.text)
            assert answer.json()["error"]["param"] == name
            assert "cannot call tools" in answer.json()["error"]["message"]
        elif support == "refused":
            assert answer.status_code == 400, (name, answer.text)
            error = answer.json()["error"]
            assert error["param"] == name and error["type"] == "invalid_request_error", name
        else:
            assert answer.status_code == 200, (name, support, answer.text)
    unknown = _raw(served, path, {**base, "temprature": 0.5})
    assert unknown.status_code == 400 and unknown.json()["error"]["param"] == "temprature"


def test_chat_streamed_and_whole_agree_with_usage_and_cache(client: openai.OpenAI) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    whole = client.chat.completions.create(model=NAME, messages=messages, max_tokens=12,
                                           temperature=0)
    pieces, usage, roles = [], None, []
    stream = client.chat.completions.create(model=NAME, messages=messages, max_tokens=12,
                                            temperature=0, stream=True,
                                            stream_options={"include_usage": True})
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            pieces.append(choice.delta.content or "")
            roles.append(choice.delta.role)
    assert "".join(pieces) == whole.choices[0].message.content
    assert roles[0] == "assistant"
    assert whole.usage is not None and usage is not None
    assert usage.completion_tokens == whole.usage.completion_tokens > 0
    assert usage.prompt_tokens == whole.usage.prompt_tokens
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    # The second request with the same prompt found it in the prompt cache.
    assert usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details.cached_tokens > 0
    assert whole.model == NAME and whole.object == "chat.completion"


def test_completions_stop_logprobs_and_seed(client: openai.OpenAI) -> None:
    base = client.completions.create(model=NAME, prompt="Once upon", max_tokens=10,
                                     temperature=0, logprobs=3)
    text = base.choices[0].text
    logprobs = base.choices[0].logprobs
    assert logprobs is not None and logprobs.tokens and "".join(logprobs.tokens) == text
    assert all(len(top) <= 3 for top in logprobs.top_logprobs or [])
    assert logprobs.text_offset == sorted(logprobs.text_offset or [])
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model=NAME, prompt="Once upon", max_tokens=10, temperature=0, stream=True) if c.choices)
    assert streamed == text
    stop = text.strip()[2:4] or text[1]
    cut = client.completions.create(model=NAME, prompt="Once upon", max_tokens=10,
                                    temperature=0, stop=[stop])
    assert cut.choices[0].finish_reason == "stop" and stop not in cut.choices[0].text
    assert text.startswith(cut.choices[0].text)
    seeded = [client.completions.create(model=NAME, prompt="Once upon", max_tokens=12,
                                        temperature=1.0, seed=s).choices[0].text
              for s in (11, 11, 12)]
    assert seeded[0] == seeded[1]
    assert base.usage is not None and base.usage.completion_tokens == len(logprobs.tokens)


def test_response_format_json_schema(client: openai.OpenAI) -> None:
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"],
              "additionalProperties": False}
    answer = client.chat.completions.create(
        model=NAME, messages=MESSAGES, max_tokens=40, temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "r", "schema": schema}})
    content = answer.choices[0].message.content or ""
    if answer.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(content)["ok"], bool)
    else:
        assert content.startswith("{")


def test_sdk_errors_and_openai_error_bodies(served: mn.ServeInfo, client: openai.OpenAI) -> None:
    wrong = openai.OpenAI(base_url=served.base_url, api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.chat.completions.create(model=NAME, messages=MESSAGES)
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="no-such-model", messages=MESSAGES)
    assert missing.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model=NAME, messages=MESSAGES, temperature=5)
    assert bad.value.param == "temperature"
    with pytest.raises(openai.BadRequestError, match="no tool support") as no_tools:
        client.chat.completions.create(model=NAME, messages=MESSAGES, tools=SAMPLES["tools"])
    assert no_tools.value.param == "tools" and no_tools.value.code == "tools_not_supported"
    # Every failure on an OpenAI path, before routing too, has OpenAI's error object.
    for answer, status in ((_raw(served, "/models", token="nope"), 401),
                           (_raw(served, "/embeddings", {"input": "x"}), 404),
                           (_raw(served, "/chat/completions", content=b"x" * (9 << 20)), 413),
                           (_raw(served, "/chat/completions", content=b"{not json"), 400)):
        assert answer.status_code == status
        error = answer.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["message"]
    # The notebook's own protocol keeps its own error body.
    own = _raw(served, "/completion", {"prompt": ""})
    assert own.status_code == 400 and isinstance(own.json()["error"], str)


def test_models_lists_every_name(served: mn.ServeInfo, client: openai.OpenAI) -> None:
    ids = [m.id for m in client.models.list()]
    assert ids[0] == NAME and set(served.models) == set(ids)
    assert client.models.retrieve(NAME).id == NAME
    spec = [n for n in ids if n != NAME][0]
    answer = client.completions.create(model=spec, prompt="Hi", max_tokens=1)
    assert answer.model == spec


def closing_cancels(client: openai.OpenAI, model: str, wait: float = 3.0) -> None:
    """Read two chunks of a long stream, close it: the runner of ``model`` lets go of it."""
    stream = client.completions.create(model=model, prompt="Tell", max_tokens=450,
                                       temperature=0.8, seed=1, stream=True)
    for got, _chunk in enumerate(stream):
        if got == 2:
            break
    stream.close()
    deadline = time.monotonic() + wait
    while mn.status(model).active_requests and time.monotonic() < deadline:
        time.sleep(0.02)
    assert mn.status(model).active_requests == 0


def test_closing_the_stream_cancels_within_a_step(client: openai.OpenAI) -> None:
    closing_cancels(client, NAME)


def test_eight_streams_and_a_cell_at_once_match_each_alone(client: openai.OpenAI,
                                                           shell: Any) -> None:  # noqa: F811
    prompts = [f"Item {i}:" for i in range(8)]

    def alone(prompt: str) -> str:
        answer = client.chat.completions.create(
            model=NAME, messages=[{"role": "user", "content": prompt}], max_tokens=16,
            temperature=0)
        return answer.choices[0].message.content or ""

    expected = [alone(p) for p in prompts]
    cell_alone = mn.generate("A notebook cell", model=NAME, max_tokens=16).text
    start = threading.Barrier(9)

    def streamed(prompt: str) -> str:
        start.wait()
        stream = client.chat.completions.create(
            model=NAME, messages=[{"role": "user", "content": prompt}], max_tokens=16,
            temperature=0, stream=True)
        return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

    before = mn.status(NAME).requests
    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(streamed, p) for p in prompts]
        start.wait()
        shell.run_cell_magic("mlx", f"generate -m {NAME} --max-tokens 16 -o cell",
                             "A notebook cell")
        got = [f.result(timeout=120) for f in futures]
    assert got == expected
    assert shell.user_ns["cell"].text == cell_alone
    after = mn.status(NAME).requests
    assert after["openai"] - before["openai"] == 8 and after["notebook"] > before["notebook"]


def test_serve_magic_never_prints_the_token(served: mn.ServeInfo, shell: Any,  # noqa: F811
                                            capsys: pytest.CaptureFixture[str]) -> None:
    shell.run_line_magic("mlx", f"serve -m {NAME} -o info")
    out = capsys.readouterr().out
    assert served.base_url in out and "OPENAI_API_KEY" in out and "OPENAI_BASE_URL" in out
    assert served.token not in out and served.token not in repr(shell.user_ns["info"])
    assert shell.user_ns["info"].token == served.token
    environ: dict[str, str] = {}
    served.export(environ)
    assert environ == {"OPENAI_BASE_URL": served.base_url, "OPENAI_API_KEY": served.token}
    shell.run_line_magic("mlx", "status")
    assert "openai" in capsys.readouterr().out


def test_logit_bias_steers_every_token_and_a_bad_id_is_a_400(client: openai.OpenAI) -> None:
    plain = client.completions.create(model=NAME, prompt="Hello", max_tokens=6, temperature=0)
    forced = client.completions.create(model=NAME, prompt="Hello", max_tokens=6, temperature=0,
                                       logit_bias={"7": 100}, logprobs=0)
    pieces = forced.choices[0].logprobs.tokens
    assert len(pieces) == 6 and len(set(pieces)) == 1, pieces  # one token, six times
    assert forced.choices[0].text != plain.choices[0].text
    with pytest.raises(openai.BadRequestError, match="outside the vocabulary") as err:
        client.completions.create(model=NAME, prompt="Hello", max_tokens=2,
                                  logit_bias={"99999999": 5})
    assert err.value.body["param"] == "logit_bias"
    with pytest.raises(openai.BadRequestError, match="-100..100"):
        client.completions.create(model=NAME, prompt="Hello", max_tokens=2,
                                  logit_bias={"7": 500})
    assert client.completions.create(model=NAME, prompt="Hi", max_tokens=1).choices  # alive


def test_frequency_penalty_changes_a_repetitive_greedy_text(client: openai.OpenAI) -> None:
    def text(penalty: float) -> str:
        return client.completions.create(model=NAME, prompt="The", max_tokens=24, temperature=0,
                                         frequency_penalty=penalty).choices[0].text

    base = text(0.0)
    assert text(0.0) == base  # greedy: the same text again
    assert text(2.0) != base  # the penalty changed which tokens win

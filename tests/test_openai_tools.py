"""Tools and thinking through the runner's OpenAI endpoint, driven by the real ``openai`` SDK.

The tiny thinker (tests/tiny_thinker.py) is a real model that thinks in ``<think>`` tags and
calls ``get_weather`` in Qwen3's format: its calls come back as ``message.tool_calls`` (and
``delta.tool_calls``), its thinking as ``reasoning_content``, never inside ``content``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai.lib.streaming.chat import ChatCompletionStreamState

import mlx_notebook as mn
from mlx_notebook.runner.openai_wire import CHAT_FIELDS, WireError, parse_chat
from tests.fixtures_runner import serving
from tests.tiny_thinker import (
    AFTER_TOOL_THOUGHT,
    GREETING,
    GREETING_ANSWER,
    GREETING_THOUGHT,
    PARIS_CALL,
    WEATHER_ANSWER,
    WEATHER_QUESTION,
    WEATHER_RESULT,
    WEATHER_THOUGHT,
    WEATHER_TOOL,
)

NAME = "thinker-oai"
ASK = [{"role": "user", "content": WEATHER_QUESTION}]
TOOLS: list[Any] = [WEATHER_TOOL]


@pytest.fixture(scope="module")
def served(tiny_thinker_dir: Path) -> Iterator[mn.ServeInfo]:
    yield from serving(tiny_thinker_dir, NAME)


@pytest.fixture(scope="module")
def client(served: mn.ServeInfo) -> openai.OpenAI:
    return mn.openai_client(NAME, max_retries=0, timeout=60)


def _reasoning(message: Any) -> str | None:
    """The thinking, in the field the SDK keeps as an extra (it is not in OpenAI's schema)."""
    extra = message.model_extra or {}
    assert extra.get("reasoning_content") == extra.get("reasoning")  # both names, same text
    return extra.get("reasoning_content")


def test_a_tool_call_round_trip(client: openai.OpenAI) -> None:
    first = client.chat.completions.create(model=NAME, messages=ASK, tools=TOOLS,
                                           temperature=0, max_tokens=80)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    message = choice.message
    assert message.tool_calls is not None and len(message.tool_calls) == 1
    call = message.tool_calls[0]
    assert call.type == "function" and call.id
    assert call.function.name == PARIS_CALL["name"]
    assert isinstance(call.function.arguments, str)  # a JSON string, as OpenAI's
    assert json.loads(call.function.arguments) == PARIS_CALL["arguments"]
    assert not message.content  # the call's text never lands in the answer
    assert (_reasoning(message) or "").strip() == WEATHER_THOUGHT
    usage = first.usage
    assert usage is not None and usage.completion_tokens_details is not None
    assert 0 < (usage.completion_tokens_details.reasoning_tokens or 0) < usage.completion_tokens
    # The client appends the SDK's message as it came (reasoning and all) and the result.
    messages: list[Any] = [*ASK, message,
                           {"role": "tool", "tool_call_id": call.id, "content": WEATHER_RESULT}]
    final = client.chat.completions.create(model=NAME, messages=messages, tools=TOOLS,
                                           temperature=0, max_tokens=80)
    assert final.choices[0].finish_reason == "stop"
    assert final.choices[0].message.content == WEATHER_ANSWER
    assert final.choices[0].message.tool_calls is None
    assert (_reasoning(final.choices[0].message) or "").strip() == AFTER_TOOL_THOUGHT


def test_streamed_tool_call_deltas(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(model=NAME, messages=ASK, tools=TOOLS,
                                            temperature=0, max_tokens=80, stream=True,
                                            stream_options={"include_usage": True})
    state = ChatCompletionStreamState()
    deltas, thinking, content, finish = [], [], [], []
    for chunk in stream:
        state.handle_chunk(chunk)
        for c in chunk.choices:
            deltas.extend(c.delta.tool_calls or [])
            thinking.append((c.delta.model_extra or {}).get("reasoning_content") or "")
            content.append(c.delta.content or "")
            finish.append(c.finish_reason)
    assert [d.index for d in deltas] == [0]
    head = deltas[0]
    assert head.id and head.type == "function" and head.function is not None
    assert head.function.name == PARIS_CALL["name"]
    assert json.loads(head.function.arguments or "") == PARIS_CALL["arguments"]
    assert [f for f in finish if f] == ["tool_calls"]
    assert "".join(thinking).strip() == WEATHER_THOUGHT
    assert "".join(content) == ""
    # The SDK's own accumulator puts the deltas back together into the whole answer.
    final = state.get_final_completion().choices[0]
    assert final.finish_reason == "tool_calls" and final.message.tool_calls is not None
    assert final.message.tool_calls[0].function.name == PARIS_CALL["name"]
    assert json.loads(final.message.tool_calls[0].function.arguments) == PARIS_CALL["arguments"]


def test_reasoning_content_apart_from_content(client: openai.OpenAI) -> None:
    hi = [{"role": "user", "content": GREETING}]
    whole = client.chat.completions.create(model=NAME, messages=hi, temperature=0,
                                           max_tokens=60)
    message = whole.choices[0].message
    assert message.content == GREETING_ANSWER and "think" not in message.content
    assert (_reasoning(message) or "").strip() == GREETING_THOUGHT
    stream = client.chat.completions.create(model=NAME, messages=hi, temperature=0,
                                            max_tokens=60, stream=True)
    thinking, content = [], []
    for chunk in stream:
        for c in chunk.choices:
            thinking.append((c.delta.model_extra or {}).get("reasoning_content") or "")
            content.append(c.delta.content or "")
    assert "".join(content) == GREETING_ANSWER
    assert "".join(thinking) == _reasoning(message)
    # Log-probabilities are the answer's: the thinking has none, the answer's tokens add up.
    scored = client.chat.completions.create(model=NAME, messages=hi, temperature=0,
                                            max_tokens=60, logprobs=True, top_logprobs=2)
    logprobs = scored.choices[0].logprobs
    assert logprobs is not None and logprobs.content
    assert "".join(t.token for t in logprobs.content) == GREETING_ANSWER
    assert scored.choices[0].message.content == GREETING_ANSWER
    # mlx-lm's (and vLLM's) extension turns the thinking off in the template.
    quiet = client.chat.completions.create(
        model=NAME, messages=hi, temperature=0, max_tokens=60,
        extra_body={"chat_template_kwargs": {"enable_thinking": False}})
    assert quiet.choices[0].message.content == GREETING_ANSWER
    assert _reasoning(quiet.choices[0].message) is None


def test_tool_choice_none_and_what_is_refused(client: openai.OpenAI) -> None:
    none = client.chat.completions.create(model=NAME, messages=ASK, tools=TOOLS,
                                          tool_choice="none", temperature=0, max_tokens=60)
    assert none.choices[0].message.tool_calls is None
    assert none.choices[0].finish_reason != "tool_calls"
    refused: list[tuple[dict[str, Any], str]] = [
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tool_choice": {"type": "function", "function": {"name": "get_weather"}}},
         "tool_choice"),
        ({"tools": [{"type": "custom", "custom": {"name": "x"}}]}, "tools"),
    ]
    for extra, param in refused:
        body = {"tools": TOOLS, **extra}
        with pytest.raises(openai.BadRequestError) as bad:
            client.chat.completions.create(model=NAME, messages=ASK, max_tokens=2, **body)
        assert bad.value.param == param, extra
    with pytest.raises(openai.BadRequestError) as bad:  # a tool message answers a call
        client.chat.completions.create(model=NAME, max_tokens=2, messages=[
            *ASK, {"role": "tool", "content": WEATHER_RESULT}])
    assert bad.value.param == "messages" and "tool_call_id" in str(bad.value)


def test_the_tool_fields_of_the_conformance_table(served: mn.ServeInfo) -> None:
    """test_openai.py walks the table on a model without tool support; the tool fields'
    "supported" is checked here, on one that has it."""
    samples = {"tools": TOOLS, "tool_choice": "auto", "parallel_tool_calls": False}
    for name, value in samples.items():
        support, _note = CHAT_FIELDS[name]
        assert support in ("supported", "ignored"), name
        body = {"model": NAME, "messages": ASK, "max_tokens": 2, "tools": TOOLS, name: value}
        answer = httpx.post(served.base_url + "/chat/completions", json=body, timeout=30,
                            headers={"Authorization": f"Bearer {served.token}"})
        assert answer.status_code == 200, (name, answer.text)


def test_parse_chat_reads_tool_messages() -> None:
    body = {"model": NAME, "tools": TOOLS, "messages": [
        *ASK,
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": [{"type": "text",
                                                               "text": WEATHER_RESULT}]}]}
    request = parse_chat(body)
    assert request.tools == tuple(TOOLS) and request.think is None
    assistant, tool = request.messages[1:] if request.messages else ()
    assert assistant.role == "assistant" and assistant.content == ""
    assert [(c.id, c.name, c.arguments) for c in assistant.tool_calls] == [
        ("call_1", "get_weather", {"city": "Paris"})]
    assert (tool.role, tool.content, tool.tool_call_id, tool.name) == (
        "tool", WEATHER_RESULT, "call_1", "get_weather")
    assert parse_chat({**body, "tool_choice": "none"}).tools is None
    bad_arguments = json.loads(json.dumps(body))
    bad_arguments["messages"][1]["tool_calls"][0]["function"]["arguments"] = "{city"
    for broken, param in ((bad_arguments, "messages"),
                          ({**body, "messages": [{"role": "function", "content": "x"}]},
                           "messages"),
                          ({**body, "chat_template_kwargs": {"tools": []}},
                           "chat_template_kwargs")):
        with pytest.raises(WireError) as error:
            parse_chat(broken)
        assert error.value.param == param

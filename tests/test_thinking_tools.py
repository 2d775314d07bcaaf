"""Thinking and tool calls on a real tiny model that thinks and calls a tool (issue 18)."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

import mlx_notebook as mn
from mlx_notebook import api
from mlx_notebook.protocol import ChatMessage, CompletionRequest, SamplingOptions
from mlx_notebook.tools import tool_schema
from tests.tiny_thinker import (
    GREETING,
    GREETING_ANSWER,
    WEATHER_ANSWER,
    WEATHER_QUESTION,
    WEATHER_RESULT,
    WEATHER_THOUGHT,
    WEATHER_TOOL,
    build_tiny_thinker,
)


@pytest.fixture(scope="module")
def thinker(tmp_path_factory: pytest.TempPathFactory) -> str:
    os.environ["HF_HUB_OFFLINE"] = "1"
    prebuilt = os.environ.get("MLX_NOTEBOOK_TINY_THINKER")  # a folder made earlier, to iterate
    path = Path(prebuilt) if prebuilt else build_tiny_thinker(tmp_path_factory.mktemp("thinker"))
    mn.load(str(path), name="thinker")
    yield "thinker"
    mn.unload(all=True)


def _noop() -> str:
    """Nothing."""
    return ""


def _stream(req: CompletionRequest) -> tuple[list, object]:
    with api.get_client("thinker").stream(req) as s:
        chunks = list(s)
        return chunks, s


def test_thinking_is_split_at_the_tag(thinker: str) -> None:
    req = CompletionRequest(messages=(ChatMessage("user", GREETING),),
                            options=SamplingOptions(max_tokens=40))
    chunks, s = _stream(req)
    thinking = "".join(c.content for c in chunks if c.thinking)
    answer = "".join(c.content for c in chunks if not c.thinking)
    assert "<think>" not in thinking + answer and "</think>" not in thinking + answer
    assert thinking.strip() and answer.strip() == GREETING_ANSWER
    assert s.result.thinking_tokens > 0


def test_no_think_reaches_the_template(thinker: str) -> None:
    result = mn.generate(GREETING, think=False, max_tokens=30)
    assert result.thinking == "" and result.text == GREETING_ANSWER
    text = api.get_client("thinker").tokenize(messages=[ChatMessage("user", GREETING)],
                                              think=False).text
    assert text.rstrip().endswith("<think>\n\n</think>")


def test_stopped_while_thinking(thinker: str) -> None:
    result = mn.generate(GREETING, max_tokens=3)
    assert result.stopped_thinking and result.text == ""
    assert "stopped while thinking" in result.footer()


def test_tool_call_loop_to_the_answer(thinker: str) -> None:
    seen = []

    def get_weather(city: str) -> str:
        """The weather in a city."""
        seen.append(city)
        return WEATHER_RESULT

    mn.reset_chat()
    result = mn.chat(WEATHER_QUESTION, tools=[get_weather], max_tokens=60)
    assert seen == ["Paris"]
    assert result.text == WEATHER_ANSWER and result.tool_rounds == 1
    roles = [m.role for m in result.transcript]
    assert roles == ["user", "assistant", "tool", "assistant"]
    assert result.transcript[2].content == WEATHER_RESULT
    assert WEATHER_THOUGHT not in result.text


def test_a_raising_tool_goes_back_to_the_model_until_max_rounds(thinker: str) -> None:
    def get_weather(city: str) -> str:
        """The weather in a city."""
        raise RuntimeError("the weather service is down")

    mn.reset_chat()
    result = mn.chat(WEATHER_QUESTION, tools=[get_weather], max_tokens=60, max_tool_rounds=2)
    tool_msgs = [m for m in result.transcript if m.role == "tool"]
    assert tool_msgs and tool_msgs[0].content.startswith("Error: RuntimeError")
    assert result.tool_rounds == 2 and "max_tool_rounds" in result.error


def test_unknown_tool_and_bad_arguments_become_errors(thinker: str) -> None:
    from mlx_notebook.tools import Toolbox

    def get_weather(city: str) -> str:
        """The weather in a city."""
        return WEATHER_RESULT

    assert tool_schema(get_weather) == WEATHER_TOOL  # what the model was trained on
    mn.reset_chat()
    result = mn.chat(WEATHER_QUESTION, tools=[get_weather], max_tokens=60, max_tool_rounds=0)
    (call,) = result.tool_calls  # parsed by the runner from the model's real call
    assert "max_tool_rounds" in result.error
    bad = dataclasses.replace(call, arguments={"city": ["not", "a", "string"]})
    assert Toolbox([get_weather]).call(bad).result.startswith(
        "Error: invalid arguments for get_weather: city")

    def other() -> str:
        return "never"

    assert "no tool named 'get_weather'" in Toolbox([other]).call(call).result


def test_tools_on_a_model_without_tool_support_is_a_clear_error(thinker: str,
                                                                tiny_model_dir: Path) -> None:
    mn.load(str(tiny_model_dir), name="plain")
    try:
        with pytest.raises(mn.errors.MLXNotebookError, match="no tool support"):
            mn.chat("hi", model="plain", tools=[_noop], max_tokens=2)
    finally:
        mn.unload("plain")
        mn.use("thinker")

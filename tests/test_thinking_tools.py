"""Thinking and tool calls on a real tiny model that thinks and calls a tool (issue 18)."""

from __future__ import annotations

import builtins
import dataclasses
from pathlib import Path

import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell

import mlx_notebook as mn
from mlx_notebook import api
from mlx_notebook.protocol import ChatMessage, CompletionRequest, SamplingOptions
from mlx_notebook.tool_loop import DECLINED
from mlx_notebook.tools import tool_schema
from tests import frontend_helpers
from tests.tiny_thinker import (
    GREETING,
    GREETING_ANSWER,
    WEATHER_ANSWER,
    WEATHER_QUESTION,
    WEATHER_RESULT,
    WEATHER_THOUGHT,
    WEATHER_TOOL,
)


@pytest.fixture(scope="module")
def thinker(tiny_thinker_dir: Path) -> str:
    mn.load(str(tiny_thinker_dir), name="thinker")
    yield "thinker"
    mn.unload(all=True)


shell = frontend_helpers.shell  # a fresh InteractiveShell with the extension loaded


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


def test_a_template_that_takes_tools_in_a_format_no_parser_knows_is_named(
        thinker: str, tmp_path: Path) -> None:
    import json

    from tests.tiny_model import make_tiny_model

    folder = make_tiny_model(tmp_path / "odd-tools")
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["chat_template"] = (  # reads `tools`, but calls look like nothing mlx-lm parses
        "{% if tools %}Tools: {{ tools | tojson }}. Call one as <<call NAME ARGS>>.\n{% endif %}"
        "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant: {% endif %}")
    config_path.write_text(json.dumps(config))
    mn.load(str(folder), name="odd")
    try:
        with pytest.raises(mn.errors.MLXNotebookError, match="knows no parser") as info:
            mn.chat("hi", model="odd", tools=[_noop], max_tokens=2)
        assert "odd-tools" in str(info.value)  # the message names the model
    finally:
        mn.unload("odd")
        mn.use("thinker")


# ---------------------------------------------------------------- the magics, in a fresh shell


def _weather_in(shell: InteractiveShell) -> list[str]:
    """``get_weather`` defined in the notebook's namespace; the cities it was called with."""
    seen: list[str] = []

    def get_weather(city: str) -> str:
        """The weather in a city."""
        seen.append(city)
        return WEATHER_RESULT

    shell.user_ns["get_weather"] = get_weather
    return seen


@pytest.mark.parametrize("flag", ["--think", "--no-think"])
def test_generate_think_flags(thinker: str, shell: InteractiveShell, flag: str,
                              capsys: pytest.CaptureFixture[str]) -> None:
    shell.run_cell_magic("mlx", f"generate {flag} --max-tokens 40 -o r", GREETING)
    result = shell.user_ns["r"]
    out = capsys.readouterr().out
    assert result.text == GREETING_ANSWER and GREETING_ANSWER in out
    if flag == "--think":
        assert result.thinking.strip() and result.thinking_tokens > 0
        assert "[thinking]" in out and "thinking + " in out  # the footer counts them apart
    else:
        assert result.thinking == "" and result.thinking_tokens == 0 and "[thinking]" not in out


def test_chat_tools_from_the_namespace(thinker: str, shell: InteractiveShell,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    seen = _weather_in(shell)
    shell.run_cell_magic("mlx", "chat --tools get_weather --max-tokens 60 -o r", WEATHER_QUESTION)
    result = shell.user_ns["r"]
    assert seen == ["Paris"]
    assert result.text == WEATHER_ANSWER and result.tool_rounds == 1
    assert [m.role for m in result.transcript] == ["user", "assistant", "tool", "assistant"]
    out = capsys.readouterr().out
    assert f'[tool] get_weather({{"city": "Paris"}}) -> {WEATHER_RESULT}' in out
    assert out.index("[tool]") < out.rindex(WEATHER_ANSWER)  # the call, then the answer


@pytest.mark.parametrize("answer", ["n", "y"])
def test_chat_confirm_asks_before_each_call(thinker: str, shell: InteractiveShell,
                                            monkeypatch: pytest.MonkeyPatch, answer: str) -> None:
    seen = _weather_in(shell)
    asked: list[str] = []
    monkeypatch.setattr(builtins, "input", lambda prompt="": asked.append(prompt) or answer)
    shell.run_cell_magic("mlx", "chat --tools get_weather --confirm --max-tool-rounds 1 "
                                "--max-tokens 60 -o r", WEATHER_QUESTION)
    result = shell.user_ns["r"]
    assert len(asked) == 1 and "get_weather" in asked[0] and "Paris" in asked[0]
    tool_msgs = [m for m in result.transcript if m.role == "tool"]
    assert len(tool_msgs) == 1
    if answer == "n":  # not called, and the model is told so in the tool message
        assert seen == [] and tool_msgs[0].content == DECLINED
        assert result.tool_rounds == 1  # the model got the refusal and answered again
    else:
        assert seen == ["Paris"] and tool_msgs[0].content == WEATHER_RESULT
        assert result.text == WEATHER_ANSWER


def test_chat_max_tool_rounds(thinker: str, shell: InteractiveShell,
                              capsys: pytest.CaptureFixture[str]) -> None:
    seen = _weather_in(shell)
    shell.run_cell_magic("mlx", "chat --tools get_weather --max-tool-rounds 0 --max-tokens 60 "
                                "-o r", WEATHER_QUESTION)
    result = shell.user_ns["r"]
    assert seen == [] and result.tool_rounds == 0 and len(result.tool_calls) == 1
    assert "max_tool_rounds" in result.error
    assert "[tools] the model still asked for tools after 0 rounds" in capsys.readouterr().out
    with pytest.raises(UsageError, match="--max-tool-rounds must be >= 0"):
        shell.run_cell_magic("mlx", "chat --tools get_weather --max-tool-rounds -1",
                             WEATHER_QUESTION)


@pytest.mark.parametrize(("line", "match"), [
    ("chat --tools get_weather,nope", "--tools: 'nope' is not a function in the notebook"),
    ("chat --tools WEATHER_RESULT", "'WEATHER_RESULT' is not a function"),
    ("chat --confirm", "--confirm goes with --tools"),
])
def test_chat_tools_bad_names_are_one_line_usage_errors(thinker: str, shell: InteractiveShell,
                                                        line: str, match: str) -> None:
    seen = _weather_in(shell)
    shell.user_ns["WEATHER_RESULT"] = WEATHER_RESULT  # a name, but not a function
    with pytest.raises(UsageError, match=match) as info:
        shell.run_cell_magic("mlx", line, WEATHER_QUESTION)
    assert "\n" not in str(info.value) and seen == []

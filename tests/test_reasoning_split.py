"""The runner's thinking/answer/tool split, fed the text in every way it can arrive: a tag cut
anywhere between two chunks must still be cut exactly (issue 18). The splitter is the
runner's own (runner/reasoning.py, mlx-lm's text state machine) on the tiny thinker's
real tokenizer, whose think and tool tags mlx-lm recognises."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.tiny_thinker import WEATHER_ANSWER, WEATHER_THOUGHT

TEXT = f"<think>\n{WEATHER_THOUGHT}\n</think>\n\n{WEATHER_ANSWER}"


@pytest.fixture(scope="module")
def tokenizer(tiny_thinker_dir: Path):  # noqa: ANN201 - mlx-lm's TokenizerWrapper
    from mlx_lm.tokenizer_utils import load as load_tokenizer

    tok = load_tokenizer(tiny_thinker_dir)
    assert tok.has_thinking and tok.has_tool_calling  # what makes the runner split at all
    return tok


def _split(tokenizer, pieces: list[str]) -> dict[str, str]:  # noqa: ANN001
    from mlx_notebook.runner.reasoning import make_splitter

    splitter = make_splitter(tokenizer, [])
    assert splitter is not None
    out: dict[str, str] = {}
    for piece in pieces:
        for state, text in splitter.feed(piece):
            out[state] = out.get(state, "") + text
    state, rest = splitter.flush()
    out[state] = out.get(state, "") + rest
    return out


def test_a_tag_cut_at_any_point_between_two_chunks(tokenizer) -> None:  # noqa: ANN001
    whole = _split(tokenizer, [TEXT])
    assert whole["reasoning"].strip() == WEATHER_THOUGHT
    assert whole["normal"].strip() == WEATHER_ANSWER
    assert not any("<" in v for v in whole.values())  # no tag leaks into either text
    for cut in range(1, len(TEXT)):
        assert _split(tokenizer, [TEXT[:cut], TEXT[cut:]]) == whole, cut


def test_one_character_at_a_time(tokenizer) -> None:  # noqa: ANN001
    assert _split(tokenizer, list(TEXT)) == _split(tokenizer, [TEXT])


def test_a_tool_call_cut_anywhere_stays_out_of_the_answer(tokenizer) -> None:  # noqa: ANN001
    call = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    text = f"<think>\n{WEATHER_THOUGHT}\n</think>\n\n{call}"
    whole = _split(tokenizer, [text])
    assert '"get_weather"' in whole["tool"] and "tool_call" not in whole.get("normal", "")
    for cut in range(1, len(text), 3):
        assert _split(tokenizer, [text[:cut], text[cut:]]) == whole, cut

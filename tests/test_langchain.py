"""A framework no one here wrote, on the runner's OpenAI endpoint: LangChain's ChatOpenAI
(issue 20). Offline: chat calls never fetch tiktoken's encodings (only token counting does,
which the test never asks for)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import mlx_notebook as mn
from tests.fixtures_runner import serving

langchain_openai = pytest.importorskip("langchain_openai")

NAME = "tiny-langchain"


@pytest.fixture(scope="module")
def served(tiny_model_dir: Path) -> Iterator[mn.ServeInfo]:
    yield from serving(tiny_model_dir, NAME)


def test_chat_openai_invoke_and_stream_match_the_notebook(served: mn.ServeInfo) -> None:
    llm = langchain_openai.ChatOpenAI(model=NAME, base_url=served.base_url,
                                      api_key=served.token, temperature=0, max_tokens=8,
                                      max_retries=0, timeout=60)
    answer = llm.invoke("hello")
    expected = mn.chat("hello", model=NAME, max_tokens=8, temperature=0).text
    mn.reset_chat(NAME)
    assert answer.content == expected and answer.content
    assert answer.usage_metadata["output_tokens"] == 8
    streamed = "".join(chunk.content for chunk in llm.stream("hello"))
    assert streamed == expected

"""What a real runner makes of its inputs: raw continuations, odd file names, a stray rank env."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlx_notebook.control.client import RunnerClient
from mlx_notebook.control.registry import Registry
from mlx_notebook.protocol import ChatMessage, CompletionRequest, SamplingOptions
from tests.runner_process import running
from tests.tiny_model import make_tiny_gguf

CONTINUE = "The capital of France is"


def raw(prompt: str, max_tokens: int = 3, logprobs: int = 0) -> CompletionRequest:
    return CompletionRequest(prompt=prompt, options=SamplingOptions(max_tokens=max_tokens,
                                                                    logprobs=logprobs))


def test_a_raw_continuation_keeps_its_leading_space(demo_client: RunnerClient) -> None:
    """llama.cpp on the same GGUF says " Paris."; mlx-lm's detokenizer trimmed it to "Paris."."""
    text, _ = demo_client.complete(raw(CONTINUE))
    assert text.startswith(" Paris"), repr(text)
    # The same in the logprob view and the explorer (%%mlx generate --raw --logprobs).
    from mlx_notebook.notebook.teaching.explorer import next_token_logprobs
    from mlx_notebook.notebook.teaching.logprob_view import generate_logprobs

    result = generate_logprobs(CONTINUE, model=demo_client, k=3, raw=True, max_tokens=3)
    assert result.text == text == "".join(t.text for t in result.logprobs)
    assert next_token_logprobs(demo_client, CONTINUE)[0].text == " Paris"
    # A chat answer still starts without one.
    question = (ChatMessage(role="user", content="What is the capital of France?"),)
    answer, _ = demo_client.complete(CompletionRequest(
        messages=question, options=SamplingOptions(max_tokens=3)))
    assert answer and not answer.startswith(" "), repr(answer)


def test_an_upper_case_gguf_in_a_folder_with_spaces_loads(tiny_model_dir: Path,
                                                          tmp_path: Path) -> None:
    folder = tmp_path / "my models"
    folder.mkdir()
    gguf = make_tiny_gguf(tiny_model_dir, folder / "Tiny Model.gguf")
    upper = gguf.rename(folder / "Tiny Model.GGUF")  # was: "[load] Unknown file format GGUF"
    with running(str(upper)) as runner:
        text, events = runner.complete({"prompt": "hello", "options": {"max_tokens": 3}})
        assert events[-1]["type"] == "done" and events[-1]["completion_tokens"] == 3


def test_mlx_rank_env_of_the_kernel_does_not_make_a_plain_runner_a_rank(
        tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A kernel started by mlx.launch has MLX_HOSTFILE/MLX_RANK; its runners are not ranks."""
    hostfile = tmp_path / "ring.json"
    hostfile.write_text('[["127.0.0.1:1"], ["127.0.0.1:2"]]')
    monkeypatch.setenv("MLX_HOSTFILE", str(hostfile))
    monkeypatch.setenv("MLX_RANK", "1")
    with RunnerClient(str(tiny_model_dir), registry=Registry(tmp_path / "reg")) as client:
        _, done = client.complete(raw("hello", 2))
        assert done.completion_tokens == 2
        assert not client.status().ranks  # one process, not rank 1 of a group

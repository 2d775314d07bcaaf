"""Teaching tools against real runners: logprob view, preview, reproduce, compare, explorer.

The tiny random model carries the plumbing checks (fast); the demo model checks
what needs a real tokenizer and template (a few tokens each: ~10 tok/s here).
"""

from __future__ import annotations

import html
import json
import math
import random
import re

import pytest

from mlx_notebook.control.client import RunnerClient
from mlx_notebook.errors import InvalidArgumentError
from mlx_notebook.notebook.teaching.compare import Records, _Cell, compare, grid_html, parse_list
from mlx_notebook.notebook.teaching.explorer import (
    NextTokenExplorer,
    candidate_labels,
    next_token_logprobs,
    transform_distribution,
)
from mlx_notebook.notebook.teaching.logprob_view import generate_logprobs, logprobs_html
from mlx_notebook.notebook.teaching.preview import preview_prompt, show_preview
from mlx_notebook.notebook.teaching.reproduce import (
    RunMetadata,
    metadata_for_request,
    output_metadata,
    rerun,
)
from mlx_notebook.protocol import ChatMessage, CompletionRequest, SamplingOptions, TopLogprob

SPAN = re.compile(r'<span class="mlxnb-token" data-prob="([0-9.]+)" title="([^"]*)"')


# ---------------------------------------------------------------- logprob view


def test_logprob_html_matches_runner_numbers(tiny_client: RunnerClient) -> None:
    result = generate_logprobs("Hello there", model=tiny_client, k=5, raw=True, max_tokens=6)
    assert result.done is not None and len(result.logprobs) == result.done.completion_tokens == 6

    # The same greedy request straight from the runner gives the numbers to check against.
    request = CompletionRequest(prompt="Hello there",
                                options=SamplingOptions(max_tokens=6, logprobs=5))
    runner = [lp for chunk in tiny_client.stream(request) for lp in chunk.logprobs]
    spans = SPAN.findall(logprobs_html(result.logprobs))
    assert len(spans) == len(runner) == 6
    for (prob, title), lp in zip(spans, runner, strict=True):
        assert float(prob) == pytest.approx(math.exp(lp.logprob), abs=1e-5)
        assert len(lp.top) == 5
        probs = [math.exp(a.logprob) for a in lp.top]
        assert probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 1e-5
        assert lp.top[0].token == lp.token  # greedy: the chosen token is the most likely
        lines = html.unescape(title).splitlines()
        assert len(lines) == 6 and lines[0].startswith(repr(lp.text))
        for line, alt in zip(lines[1:], lp.top, strict=True):
            assert repr(alt.text) in line and f"{math.exp(alt.logprob):.2%}" in line
    assert result._repr_html_().count("<tr>") == 7  # header + one row per token


def test_logprob_view_zero_k_hides_alternatives(tiny_client: RunnerClient) -> None:
    result = generate_logprobs("Hi", model=tiny_client, k=0, raw=True, max_tokens=2)
    assert len(result.logprobs) == 2 and all(not t.top for t in result.logprobs)
    with pytest.raises(ValueError, match="between 0 and 20"):
        generate_logprobs("Hi", model=tiny_client, k=21, raw=True)


# ---------------------------------------------------------------- preview


@pytest.mark.parametrize("raw", [False, True])
def test_dry_run_count_is_the_runners(tiny_client: RunnerClient, raw: bool) -> None:
    system = None if raw else "Be brief."
    preview = preview_prompt("Say hi", model=tiny_client, system=system, raw=raw)
    if raw:
        expected = tiny_client.tokenize("Say hi")
        request = CompletionRequest(prompt="Say hi", options=SamplingOptions(max_tokens=1))
    else:
        msgs = (ChatMessage("system", "Be brief."), ChatMessage("user", "Say hi"))
        expected = tiny_client.tokenize(messages=msgs)
        request = CompletionRequest(messages=msgs, options=SamplingOptions(max_tokens=1))
        assert "Be brief." in preview.text and preview.text != "Say hi"
    assert preview.token_count == len(expected.tokens) and preview.text == expected.text
    assert "".join(preview.pieces) == expected.text or raw  # raw may carry a BOS piece
    _, done = tiny_client.complete(request)
    assert done.prompt_tokens == preview.token_count
    page = preview._repr_html_()
    assert f"{preview.token_count} prompt tokens" in page
    assert page.count("border-right") == preview.token_count


def test_dry_run_on_demo_template(demo_client: RunnerClient) -> None:
    preview = preview_prompt("What is 2+2?", model=demo_client, system="Answer briefly.")
    assert "Answer briefly." in preview.text and "What is 2+2?" in preview.text
    assert preview.token_count == len(demo_client.tokenize(messages=[
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "What is 2+2?"}]).tokens)


# ---------------------------------------------------------------- reproduce


def test_metadata_round_trip_reruns_same_greedy_text(demo_client: RunnerClient) -> None:
    request = CompletionRequest(messages=(ChatMessage("user", "Name a colour."),),
                                options=SamplingOptions(max_tokens=5))
    text, _ = demo_client.complete(request)
    meta = metadata_for_request(demo_client, request, text)
    assert meta.source_hash and meta.spec == "demo" and meta.seed is None
    assert meta.versions["mlx"] and meta.versions["mlx-lm"]
    saved = json.dumps({"mlx_notebook": meta.to_json()})  # as kept in an output's metadata
    again = rerun(saved, model=demo_client)
    assert RunMetadata.from_json(saved) == meta
    assert again.text == text and again.completion_tokens == 5


def test_seeded_sampled_run_reproduces(tiny_client: RunnerClient) -> None:
    request = CompletionRequest(prompt="Once", options=SamplingOptions(
        max_tokens=6, temperature=1.0, seed=1234))
    text, _ = tiny_client.complete(request)
    meta = metadata_for_request(tiny_client, request, text)
    assert meta.seed == 1234 and meta.prompt == "Once" and meta.messages is None
    assert rerun(meta.to_json(), model=tiny_client).text == text


# ---------------------------------------------------------------- compare


def test_compare_two_settings_tiny(tiny_client: RunnerClient) -> None:
    records = compare("Hello", models=[tiny_client], raw=True, show=False, max_tokens=5,
                      seed=7, settings=[{"temperature": 0.0}, {"temperature": 0.8}])
    assert [r["options"]["temperature"] for r in records] == [0.0, 0.8]
    greedy, sampled = records
    assert greedy["options"]["seed"] is None and sampled["options"]["seed"] == 7
    for rec in records:
        assert rec["model"] == "tiny" and rec["finish_reason"] == "length" and rec["tokens"] == 5
        assert rec["text"] and rec["tokens_per_second"] > 0 and rec["peak_memory"] > 0
        assert rec["ttft"] > 0 and rec["error"] is None
    # Each cell is the same as that request run alone.
    alone, _ = tiny_client.complete(CompletionRequest(prompt="Hello", options=SamplingOptions(
        max_tokens=5, temperature=0.8, seed=7)))
    assert sampled["text"] == alone
    assert greedy["text"] == tiny_client.complete(CompletionRequest(
        prompt="Hello", options=SamplingOptions(max_tokens=5)))[0]
    assert set(records[0]) >= {"model", "options", "text", "tokens", "tokens_per_second",
                               "ttft", "peak_memory", "finish_reason"}


def test_compare_two_settings_demo_grid(demo_client: RunnerClient) -> None:
    records = compare("Say hello.", models=[demo_client], show=False, max_tokens=3, seed=3,
                      settings=[{"temperature": 0.0}, {"temperature": 0.8}])
    assert len(records) == 2 and all(r["tokens"] == 3 and r["text"] for r in records)
    assert all(r["prompt_tokens"] > 3 for r in records)  # chat template applied
    cells = [_Cell(demo_client, CompletionRequest(prompt="x"), "demo · temperature=0.8")]
    assert "demo · temperature=0.8" in grid_html(cells, 2)
    assert parse_list("0, 0.8") == [0.0, 0.8] and parse_list("a,b", str) == ["a", "b"]


def test_records_as_dataframe() -> None:
    pd = pytest.importorskip("pandas")
    frame = Records([{"model": "a", "tokens": 1}, {"model": "b", "tokens": 2}]).as_dataframe()
    assert isinstance(frame, pd.DataFrame) and list(frame["model"]) == ["a", "b"]


# ---------------------------------------------------------------- explorer


def test_transform_distribution_math() -> None:
    top = tuple(TopLogprob(i, f"t{i}", math.log(p)) for i, p in enumerate([0.5, 0.3, 0.1, 0.05]))
    full = transform_distribution(top)
    assert [i for i, _ in full] == [0, 1, 2, 3]
    assert sum(p for _, p in full) == pytest.approx(1.0)
    assert full[0][1] == pytest.approx(0.5 / 0.95)
    assert transform_distribution(top, top_k=2) == [(0, pytest.approx(0.625)),
                                                   (1, pytest.approx(0.375))]
    assert [i for i, _ in transform_distribution(top, top_p=0.8)] == [0, 1]
    assert transform_distribution(top, temperature=0) == [(0, 1.0)]
    hot = transform_distribution(top, temperature=2.0)
    assert hot[0][1] < full[0][1] and hot[-1][1] > full[-1][1]  # flatter


def test_explorer_state_after_sliders_and_click(tiny_client: RunnerClient) -> None:
    ex = NextTokenExplorer("Hello", model=tiny_client)
    runner = next_token_logprobs(tiny_client, "Hello")
    assert ex.top == runner and len(ex.distribution) == 20
    assert sum(p for _, p in ex.distribution) == pytest.approx(1.0)
    assert [t for t, _ in ex.distribution] == [t.text for t in runner]
    assert len(ex.bars.children) == 20

    ex.top_k_slider.value = 3  # as a user drags the slider
    assert ex.top_k == 3 and len(ex.distribution) == 3 and len(ex.bars.children) == 3
    probs = [math.exp(t.logprob) for t in runner[:3]]
    assert [p for _, p in ex.distribution] == pytest.approx([p / sum(probs) for p in probs])
    ex.temperature = 0.0
    assert ex.temperature_slider.value == 0.0 and ex.distribution == [(runner[0].text, 1.0)]
    ex.temperature = 1.0

    second = ex.distribution[1][0]
    ex.bars.children[1].children[0].click()  # click the second bar
    assert ex.text == "Hello" + second and ex.prompt_box.value == ex.text
    assert ex.top == next_token_logprobs(tiny_client, ex.text) and len(ex.distribution) == 3
    assert ex.choose(0) == ex.text.removeprefix("Hello" + second)
    ex.top_p = 0.0001
    assert len(ex.distribution) == 1


def test_terminal_output_paths(tiny_client: RunnerClient, capsys: pytest.CaptureFixture[str]
                               ) -> None:
    result = generate_logprobs("Hi", model=tiny_client, k=2, raw=True, max_tokens=2, show=True)
    records = compare("Hi", models=[tiny_client], raw=True, max_tokens=2, show=True)
    show_preview("Hi", model=tiny_client, raw=True)
    out = capsys.readouterr().out
    assert result.text in out and f"{result.probabilities[0]:.2%}" in out
    assert "== tiny ==" in out and records[0]["text"] in out and "prompt tokens (raw" in out
    meta = metadata_for_request(tiny_client, json.loads(json.dumps(records[0]["request"])),
                                records[0]["text"])
    assert output_metadata(meta)["mlx_notebook"]["text"] == records[0]["text"]


def test_teaching_never_imports_mlx() -> None:
    import subprocess
    import sys

    code = ("import sys, mlx_notebook.notebook.teaching as t\n"
            "for n in t.__all__: getattr(t, n)\n"
            "assert not {'mlx', 'mlx.core', 'mlx_lm'} & set(sys.modules), 'mlx imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_explorer_shows_a_partial_character_as_its_bytes(tiny_client: RunnerClient) -> None:
    tok = tiny_client.tokenize("你好 👋")
    raw = tiny_client.token_bytes(tok.tokens)
    assert b"".join(raw) == "你好 👋".encode()  # each token's own bytes, from the runner
    cut = [t for t, b in zip(tok.tokens, raw, strict=True) if not b.decode("utf-8", "ignore")]
    assert cut, "the tiny byte-level vocabulary splits these characters"
    whole = tiny_client.tokenize("Hello").tokens[0]
    top = (TopLogprob(whole, tiny_client.detokenize([whole]), math.log(0.5)),
           *(TopLogprob(t, "\ufffd", math.log(0.5 / len(cut))) for t in cut))
    labels = candidate_labels(tiny_client, top)
    assert labels[0] == top[0].text
    assert all(label.startswith("<") and label.endswith(">") for label in labels[1:])
    assert labels[1] == "<" + " ".join(f"{b:02X}" for b in raw[tok.tokens.index(cut[0])]) + ">"

    ex = NextTokenExplorer("", model=tiny_client)
    ex.top, ex.labels = top, labels  # as refresh() leaves them after such a text
    ex._redraw()
    buttons = [row.children[0] for row in ex.bars.children]
    assert buttons[1].description == labels[1] and buttons[1].disabled
    assert not buttons[0].disabled
    with pytest.raises(InvalidArgumentError, match="only part of a character"):
        ex.choose(1)
    for seed in range(5):  # partial tokens are never drawn
        ex.text = ""  # (a new text asks the runner again: set the candidates after it)
        ex.top, ex.labels = top, labels
        ex._redraw()
        assert ex.sample(random.Random(seed)) == top[0].text

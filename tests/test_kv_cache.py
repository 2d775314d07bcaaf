"""KV-cache quantization (--kv-bits) and a bounded cache (--max-kv), with real demo runners.

The demo decodes ~15 tok/s on a 2-core CPU: generations stay short.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator

import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell

import mlx_notebook as mn
from mlx_notebook.control import preflight
from mlx_notebook.control.client import RunnerClient
from mlx_notebook.errors import InvalidArgumentError, RunnerStartError
from mlx_notebook.kv_format import KvFormat
from mlx_notebook.notebook.display import status_line
from mlx_notebook.notebook.widgets import StatusWidget
from mlx_notebook.protocol import (
    ChatMessage,
    CompletionRequest,
    DoneEvent,
    KvInfo,
    KvRequest,
    MemoryInfo,
    SamplingOptions,
    Status,
)
from tests import frontend_helpers
from tests.fixtures_runner import running

shell = frontend_helpers.shell  # fixture

STORY = "Write a short story about a cat who learns to fly."
MB = 2**20


def greedy(prompt: str, max_tokens: int) -> CompletionRequest:
    return CompletionRequest(prompt=prompt, options=SamplingOptions(max_tokens=max_tokens,
                                                                     temperature=0.0))


def demo(registry, *args: str) -> Iterator[RunnerClient]:
    yield from running(RunnerClient("demo", name="demo-kv", registry=registry,
                                    extra_args=list(args)), timeout=300)


@pytest.fixture(scope="module")
def fp(demo_model_ready, test_registry) -> Iterator[RunnerClient]:
    yield from demo(test_registry)


@pytest.fixture(scope="module")
def q8(demo_model_ready, test_registry) -> Iterator[RunnerClient]:
    yield from demo(test_registry, "--kv-bits", "8", "--kv-start", "0")


@pytest.fixture(scope="module")
def rotating(demo_model_ready, test_registry) -> Iterator[RunnerClient]:
    yield from demo(test_registry, "--max-kv", "64")


# ---------------------------------------------------------------- refusals (no runner)


@pytest.mark.parametrize(("kwargs", "line", "field", "said"), [
    ({"kv_bits": 3}, "--kv-bits 3", "kv_bits", "must be 4 or 8 (got 3)"),
    ({"kv_bits": 8, "kv_group_size": 48}, "--kv-bits 8 --kv-group-size 48", "kv_group_size",
     "must be 32, 64 or 128 (got 48)"),
    ({"kv_group_size": 32}, "--kv-group-size 32", "kv_group_size", "go with"),
    ({"kv_bits": 4, "kv_start": -1}, "--kv-bits 4 --kv-start -1", "kv_start", "0 or more"),
    ({"max_kv": 10}, "--max-kv 10", "max_kv", "at least 64 tokens (got 10)"),
    ({"kv_bits": 8, "max_kv": 512}, "--kv-bits 8 --max-kv 512", "max_kv",
     "cannot quantize a rotating cache"),
    ({"kv_bits": 8, "ranks": 2}, "--kv-bits 8 --ranks 2", "kv_bits", "sharded model"),
    ({"kv_bits": 8, "draft": "demo"}, "--kv-bits 8 --draft demo", "draft",
     "full-precision, unbounded KV caches only"),
    ({"max_kv": 128, "draft": "demo"}, "--max-kv 128 --draft demo", "draft",
     "full-precision, unbounded KV caches only"),
])
def test_bad_kv_options_are_refused_in_one_line(shell: InteractiveShell, kwargs, line, field,
                                                said) -> None:
    """The function and the magic refuse the same input, each naming its own spelling."""
    with pytest.raises(InvalidArgumentError, match=re.escape(said)) as info:
        mn.load("demo", **kwargs)
    assert info.value.field == field and "\n" not in str(info.value)
    with pytest.raises(UsageError, match=re.escape(said)) as usage:
        shell.run_line_magic("mlx", f"load demo {line}")
    flag = "--" + field.replace("_", "-")
    assert flag in str(usage.value) and "\n" not in str(usage.value)


def test_both_entry_points_load_the_kv_format(shell: InteractiveShell, tiny_model_dir) -> None:
    """mn.load(max_kv=) and %mlx load --max-kv start runners that hold that format."""
    tiny = str(tiny_model_dir)
    try:
        mn.load(tiny, name="kv-fn", max_kv=64)
        shell.run_line_magic("mlx", f"load {tiny} --as kv-magic --max-kv 96")
        assert mn.status("kv-fn").kv.format == "fp, rotating 64"
        assert mn.status("kv-magic").kv.format == "fp, rotating 96"
    finally:
        mn.unload(all=True)


def test_a_format_the_model_cannot_hold_fails_its_load_in_one_line(tiny_model_dir) -> None:
    """The tiny model's heads are 16 wide: no group of 32 fits in them (said at load)."""
    with pytest.raises(RunnerStartError, match="cannot hold a 8-bit KV cache in groups of 32"):
        mn.load(str(tiny_model_dir), name="kv-bad", kv_bits=8, kv_group_size=32)
    assert mn.ps() == []


# ---------------------------------------------------------------- format, pre-flight, widget


def test_the_format_describes_itself_and_its_flags() -> None:
    assert KvFormat().describe() == "fp" and KvFormat().runner_args() == []
    eight = KvFormat.build(kv_bits=8)
    assert eight.describe() == "8-bit from 256 tokens"
    assert eight.runner_args() == ["--kv-bits", "8", "--kv-group-size", "64", "--kv-start", "256"]
    assert KvFormat.build(max_kv=1024).describe() == "fp, rotating 1024"
    assert KvFormat.build(kv_bits=4, kv_group_size=32, kv_start=0).describe() == \
        "4-bit from 0 tokens, group 32"


def test_preflight_sizes_the_kv_cache_in_the_chosen_format() -> None:
    fp = preflight.estimate("demo", 4096).kv_cache
    q8 = preflight.estimate("demo", 4096, kv=KvFormat.build(kv_bits=8)).kv_cache
    q4 = preflight.estimate("demo", 4096, kv=KvFormat.build(kv_bits=4)).kv_cache
    bounded = preflight.estimate("demo", 4096, kv=KvFormat.build(max_kv=1024)).kv_cache
    assert fp and q8 and q4 and bounded
    # float32 activations: 8 bits + a float32 scale and bias per 64 = 0.28 of the bytes.
    assert q8 == pytest.approx(fp * (1 + 8 / 64) / 4, rel=1e-6)
    assert q4 == pytest.approx(fp * (0.5 + 8 / 64) / 4, rel=1e-6)
    assert bounded == fp // 4
    need = preflight.estimate("demo", 4096, kv=KvFormat.build(kv_bits=8))
    assert "KV cache 8-bit from 256 tokens," in preflight.refusal_message(need, 0, 0)


def test_the_status_row_shows_kv_bytes_per_request_and_in_total() -> None:
    kv = KvInfo(format="8-bit from 256 tokens", bytes=3 * MB, prompt_cache_bytes=12 * MB,
                requests=(KvRequest("a", 300, MB), KvRequest("b", 600, 2 * MB)))
    status = Status(state="ready", progress=100.0, pid=7, model="demo", kv=kv,
                    memory=MemoryInfo(active=95 * MB, limit=1000 * MB))
    sw = StatusWidget(source=dict, poll=False)
    sw.refresh({"demo": status})
    info = sw.rows["demo"].info.value
    assert ("KV 8-bit from 256 tokens: 3 MiB in 2 requests (1 MiB for 300 tokens, "
            "2 MiB for 600 tokens), 12 MiB kept") in info
    assert "· KV 8-bit from 256 tokens: 3 MiB in 2 requests" in status_line(status)  # text
    sw.refresh({"demo": Status(state="ready", progress=100.0, pid=7, model="demo")})
    assert "KV" not in sw.rows["demo"].info.value  # a plain runner holding nothing: no line
    sw.close()
    assert Status.from_json(status.to_json()) == status


# ---------------------------------------------------------------- real runners


def test_8bit_kv_gives_the_greedy_text_of_the_fp_cache(fp, q8) -> None:
    """Measured on the demo: 8-bit keys and values from token 0 change no token of 32."""
    request = greedy(STORY, 32)
    fp_text, fp_done = fp.complete(request)
    q8_text, q8_done = q8.complete(request)
    assert q8_done.completion_tokens == fp_done.completion_tokens == 32
    assert q8_text == fp_text


def test_quantized_kv_bytes_are_smaller_for_the_same_context(fp, q8) -> None:
    """The kept caches (the same prompt and answer) and the live one while it decodes."""
    request = greedy(STORY + " It was a sunny day.", 24)
    for client in (fp, q8):
        client.free_memory()
        client.complete(request)
    fp_kept, q8_kept = fp.status().kv.prompt_cache_bytes, q8.status().kv.prompt_cache_bytes
    assert fp_kept > 0 and q8_kept > 0
    assert q8_kept < 0.35 * fp_kept  # 8 bits + scales: 0.28 of float32
    seen: list[KvInfo] = []
    generated = 0
    with q8.stream(greedy(STORY, 40)) as stream:
        for chunk in stream:
            generated += len(chunk.tokens)
            if generated >= 24 and not seen:  # past the first measurement (every 16 steps)
                seen.append(q8.status().kv)
    (live,) = seen
    assert live.format == "8-bit from 0 tokens"
    (only,) = live.requests
    assert only.tokens > 16 and 0 < only.bytes == live.bytes
    assert only.bytes < 0.35 * fp_kept  # the live cache is quantized too


def _joined_mid_stream(client: RunnerClient, first: CompletionRequest, second: CompletionRequest,
                       ) -> tuple[str, DoneEvent, str, DoneEvent]:
    """``first`` streams alone; after 5 chunks ``second`` arrives (the hand-over to the batch)."""
    results: dict[str, tuple[str, DoneEvent]] = {}
    joined = threading.Event()

    def run_second() -> None:
        joined.wait(120)
        results["second"] = client.complete(second)

    helper = threading.Thread(target=run_second)
    helper.start()
    with client.stream(first) as stream:
        for i, _chunk in enumerate(stream):
            if i == 4:
                joined.set()
    helper.join(120)
    assert stream.result is not None
    return stream.text, stream.result, *results["second"]


def test_a_quantized_request_is_handed_over_to_the_batch(q8) -> None:
    """Dequantized at the hand-over: both finish, and the first goes on with the text it had."""
    first, second = greedy(STORY, 32), greedy("Name three colours.", 12)
    q8.free_memory()
    alone = q8.complete(first)[0]
    q8.free_memory()
    text, done, other, other_done = _joined_mid_stream(q8, first, second)
    assert (done.completion_tokens, other_done.completion_tokens) == (32, 12) and other
    assert text == alone  # measured: the dequantized keys are the quantized ones


def test_a_batched_request_borrows_a_quantized_prompt_cache(q8) -> None:
    """A kept (quantized) cache lent to a request that joins the batch: dequantized for it."""
    q8.free_memory()
    base = STORY + " The cat was called Tom."
    q8.complete(greedy(base, 8))  # kept, quantized
    follow_up = greedy(base + " One morning", 12)
    alone = q8.complete(follow_up)[0]  # kept too: the borrowed cache is quantized either way
    _, _, text, done = _joined_mid_stream(q8, greedy("Name three colours.", 40), follow_up)
    assert done.cached_tokens > 0 and done.completion_tokens == 12
    assert text == alone


def test_a_rotating_request_is_handed_over_to_the_batch(rotating) -> None:
    """A RotatingKVCache merges into the batch's BatchRotatingKVCache, past its 64 tokens."""
    first, second = greedy(STORY, 60), greedy("Name three colours.", 12)
    text, done, other, other_done = _joined_mid_stream(rotating, first, second)
    assert (done.completion_tokens, other_done.completion_tokens) == (60, 12) and text and other


def _tokens(client: RunnerClient, request: CompletionRequest) -> tuple[list[int], int]:
    with client.stream(request) as stream:
        tokens = [t for chunk in stream for t in chunk.tokens]
    assert stream.result is not None
    return tokens, stream.result.prompt_tokens


def test_a_rotating_cache_runs_past_its_size(rotating, fp) -> None:
    """64 tokens of cache, 80 generated: the text goes on; while it fits, it is the fp text."""
    request = greedy(STORY, 80)
    tokens, prompt_tokens = _tokens(rotating, request)
    assert len(tokens) == 80 and prompt_tokens + 80 > 64
    assert rotating.status().kv.format == "fp, rotating 64"
    fits = 64 - prompt_tokens  # tokens generated before the cache wrapped
    assert tokens[:fits] == _tokens(fp, request)[0][:fits]


def test_chat_turns_reuse_the_quantized_cache(q8) -> None:
    """The second turn borrows the first one's (quantized) cache from the prompt cache."""
    q8.free_memory()
    turn = [ChatMessage("user", "Say hello.")]
    answer, done = q8.complete(CompletionRequest(messages=tuple(turn),
                                                 options=SamplingOptions(max_tokens=12)))
    assert done.cached_tokens == 0
    turn += [ChatMessage("assistant", answer), ChatMessage("user", "And goodbye?")]
    _, second = q8.complete(CompletionRequest(messages=tuple(turn),
                                              options=SamplingOptions(max_tokens=8)))
    assert second.cached_tokens > done.prompt_tokens // 2


def test_a_wrapped_rotating_cache_is_not_reused_but_a_short_one_is(rotating) -> None:
    """Past max_kv the cache lost its first tokens: the same prompt again is read afresh."""
    rotating.free_memory()
    short = greedy("Hi.", 4)
    rotating.complete(short)
    assert rotating.complete(short)[1].cached_tokens > 0  # not wrapped: lent and trimmed
    rotating.free_memory()
    long = greedy(STORY + " " + STORY, 60)
    rotating.complete(long)
    assert rotating.status().kv.prompt_cache_bytes == 0  # wrapped: not kept
    again = rotating.complete(long)[1]
    assert again.cached_tokens == 0 and again.completion_tokens == 60

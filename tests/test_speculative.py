"""Speculative decoding with a draft model: the same greedy text, the draft's share said.

In process, the decoder against mlx-lm's ``generate_step`` on the tiny model (drafting
for itself: every guess right; a tiny model of other weights and the same tokenizer:
almost every guess wrong), with a hand-over to the batch at several points. Through
real runners, the demo with itself and with a random draft of its tokenizer as drafts
(the bounds of the mechanism: ~100% and ~0% accepted), a hand-over when a second
request arrives, a cancel, the logprob view's marks, the refusals, and both entry points.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
import threading
from pathlib import Path

import mlx.core as mx
import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from mlx_lm import load
from mlx_lm.generate import BatchGenerator, generate_step

import mlx_notebook as mn
from mlx_notebook.control.client import RunnerClient
from mlx_notebook.control.registry import Registry
from mlx_notebook.errors import InvalidArgumentError, RunnerStartError
from mlx_notebook.notebook.teaching import generate_logprobs
from mlx_notebook.protocol import (
    ChatMessage,
    ChunkEvent,
    CompletionRequest,
    DoneEvent,
    SamplingOptions,
    decode_event,
    encode_event,
    merge_chunks,
)
from mlx_notebook.runner.sampling import make_request_sampler
from mlx_notebook.runner.speculative import SpeculativeDecoder
from tests import frontend_helpers
from tests.fixtures_runner import running
from tests.tiny_model import make_tiny_model

shell = frontend_helpers.shell  # fixture

N = 24  # tokens in process
TOKENS = 32  # tokens through a runner (the demo decodes ~15 tok/s here)


# ---------------------------------------------------------------- in process, tiny models


@pytest.fixture(scope="module")
def tiny_pair(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """The tiny model, its prompt, and a draft of the same tokenizer but other weights."""
    model, tokenizer = load(str(tiny_model_dir))
    other = make_tiny_model(tmp_path_factory.mktemp("other") / "tiny-other", seed=5)
    other_model, other_tokenizer = load(str(other))
    assert other_tokenizer.get_vocab() == tokenizer.get_vocab()
    prompt = tokenizer.encode("The capital of France is Paris. The capital of Italy is")
    return model, other_model, prompt


def reference(model, prompt, options: SamplingOptions) -> list[int]:
    return [int(t) for t, _ in generate_step(mx.array(prompt), model, max_tokens=N,
                                              sampler=make_request_sampler(options))]


def speculate(model, draft, prompt, options: SamplingOptions, *, num_draft: int = 3,
              hand_over_at: int | None = None, stop: set[int] | None = None):
    """Step a SpeculativeDecoder (then a batch after ``hand_over_at`` steps): tokens, flags."""
    decoder = SpeculativeDecoder(
        model, draft, -1, rest=list(prompt), cache=None, cached=[], draft=None,
        prompt=list(prompt), max_tokens=N, sampler=make_request_sampler(options),
        stop_tokens=stop or set(), stream=mx.default_stream(mx.default_device()),
        prefill_step=4, num_draft=num_draft)
    out: list[int] = []
    flags: list[bool] = []
    steps = 0
    while hand_over_at is None or steps < hand_over_at:
        steps += 1
        for response in decoder.step():
            out.append(response.token)
            flags.append(response.draft)
            if response.finish_reason:
                return out, flags, decoder, response
    _, rest = decoder.hand_over()
    assert rest.cache is None or rest.cache[0].offset == len(rest.all_tokens)
    generator = BatchGenerator(model, stop_tokens=[], completion_batch_size=4,
                               prefill_batch_size=4, prefill_step_size=4)
    (uid,) = generator.insert([rest.prompt], max_tokens=[rest.max_tokens], caches=[rest.cache],
                              all_tokens=[rest.all_tokens], samplers=[decoder.request_sampler],
                              logits_processors=[decoder.processors])
    while True:
        _, responses = generator.next()
        for r in responses:
            out.append(int(r.token))
            flags.append(False)
            if r.finish_reason:
                return out, flags, decoder, None


@pytest.mark.parametrize("num_draft", [1, 3, 5])
@pytest.mark.parametrize("hand_over_at", [None, 2, 6, 9], ids=lambda h: f"hand-over-{h}")
@pytest.mark.parametrize("which", ["self", "other"])
def test_greedy_tokens_are_generate_steps_with_any_draft(tiny_pair, which, hand_over_at,
                                                        num_draft):
    """2: in the prompt (4-token chunks); 6 and 9: in the answer, after some rounds."""
    model, other, prompt = tiny_pair
    draft = model if which == "self" else other
    expected = reference(model, prompt, SamplingOptions())
    tokens, flags, decoder, _ = speculate(model, draft, prompt, SamplingOptions(),
                                          num_draft=num_draft, hand_over_at=hand_over_at)
    assert tokens == expected
    assert sum(flags) == decoder.accepted <= decoder.proposed
    if which == "self" and hand_over_at is None:
        assert decoder.accepted == decoder.proposed > 0  # the model agrees with itself


def test_a_draft_of_other_weights_is_mostly_rejected(tiny_pair):
    model, other, prompt = tiny_pair
    _, _, decoder, _ = speculate(model, other, prompt, SamplingOptions())
    assert decoder.proposed > 0 and decoder.accepted / decoder.proposed < 0.5


def test_after_a_miss_the_draft_guesses_one_more_than_it_got_right(tiny_pair):
    """Guessing costs (checking 4 positions is ~2 steps on a CPU): a poor draft guesses less."""
    model, other, prompt = tiny_pair
    _, _, decoder, _ = speculate(model, other, prompt, SamplingOptions(), num_draft=5)
    rounds = N - decoder.accepted  # each round sends one token of the model's own
    # Round 1 guesses 5, every later one (kept last round + 1) at most.
    assert decoder.proposed <= 5 + decoder.accepted + (rounds - 1)
    assert decoder.proposed < 5 * (rounds - 1)  # what 5 guesses a round would have cost


def test_a_stop_token_ends_it_and_the_caches_hold_what_they_say(tiny_pair):
    model, other, prompt = tiny_pair
    expected = reference(model, prompt, SamplingOptions())
    for draft in (model, other):
        stop = expected[5]
        tokens, _, decoder, last = speculate(model, draft, prompt, SamplingOptions(),
                                             stop={stop})
        assert tokens == expected[:expected.index(stop) + 1]
        assert last.finish_reason == "stop"
        assert last.all_tokens == (list(prompt) + tokens)[:len(last.all_tokens)]
        assert last.prompt_cache[0].offset == len(last.all_tokens)
        assert decoder.draft.cache[0].offset == len(decoder.draft.tokens)
        assert decoder.draft.tokens == (list(prompt) + tokens)[:len(decoder.draft.tokens)]


def test_a_later_prompt_goes_on_from_both_caches(tiny_pair):
    """What the runner keeps in its prompt cache (both models') serves a longer prompt."""
    model, _, prompt = tiny_pair
    tokens, _, decoder, last = speculate(model, model, prompt, SamplingOptions())
    longer = list(prompt) + tokens + list(prompt[:3])
    expected = reference(model, longer, SamplingOptions())
    cached = last.all_tokens
    later = SpeculativeDecoder(
        model, model, -2, rest=longer[len(cached):], cache=last.prompt_cache, cached=cached,
        draft=decoder.draft, prompt=longer, max_tokens=N, sampler=None, stop_tokens=set(),
        stream=mx.default_stream(mx.default_device()), prefill_step=4, num_draft=3)
    assert later.draft_todo == longer[len(decoder.draft.tokens):]
    out: list[int] = []
    while len(out) < N:
        out += [r.token for r in later.step()]
    assert out == expected and later.accepted == later.proposed


def test_a_seeded_request_is_the_same_text_twice(tiny_pair):
    """Sampled with a draft: its own random stream, so reproducible, not generate_step's."""
    model, other, prompt = tiny_pair
    options = SamplingOptions(temperature=1.0, seed=3)
    first, _, _, _ = speculate(model, other, prompt, options)
    again, _, _, _ = speculate(model, other, prompt, options)
    assert first == again and len(first) == N


def test_draft_flags_survive_the_wire_and_merging():
    chunks = [ChunkEvent("a", (1,)), ChunkEvent("b", (2,), draft=(True,)), ChunkEvent("c", (3,))]
    for chunk in chunks:
        assert decode_event(encode_event(chunk)) == chunk
    (merged,) = merge_chunks(list(chunks))
    assert merged == ChunkEvent("abc", (1, 2, 3), draft=(False, True, False))
    assert merge_chunks([ChunkEvent("a", (1,)), ChunkEvent("b", (2,))])[0].draft == ()
    done = DoneEvent("length", draft_tokens=9, draft_accepted=3)
    assert decode_event(encode_event(done)) == done and done.draft_acceptance == pytest.approx(1 / 3)


# ---------------------------------------------------------------- real runners, the demo


def draft_runner(draft: str, registry: Registry, name: str):
    return running(RunnerClient("demo", name=name, registry=registry,
                                extra_args=["--draft", draft, "--num-draft", "3"]), timeout=300)


@pytest.fixture(scope="module")
def self_drafted(demo_model_ready, test_registry):
    yield from draft_runner("demo", test_registry, "demo+demo")


@pytest.fixture(scope="module")
def random_drafted(random_draft_dir, test_registry):
    yield from draft_runner(str(random_draft_dir), test_registry, "demo+random")


def ask(prompt: str, max_tokens: int = TOKENS) -> CompletionRequest:
    return CompletionRequest(messages=(ChatMessage("user", prompt),),
                             options=SamplingOptions(max_tokens=max_tokens))


def streamed(client: RunnerClient, request: CompletionRequest) -> tuple[list[ChunkEvent], DoneEvent]:
    with client.stream(request) as stream:
        chunks = list(stream)
    assert stream.result is not None
    return chunks, stream.result


def tokens_of(chunks: list[ChunkEvent]) -> list[int]:
    return [t for c in chunks for t in c.tokens]


@pytest.mark.parametrize("which", ["self", "random"])
def test_demo_greedy_text_is_the_same_with_a_draft(which, demo_client, request):
    """The demo drafting for itself (~100% kept) and a random draft (~0%): the bounds."""
    client = request.getfixturevalue("self_drafted" if which == "self" else "random_drafted")
    prompt = ask("Name three colours of the rainbow.")
    plain, plain_done = streamed(demo_client, prompt)
    drafted, done = streamed(client, prompt)
    assert tokens_of(drafted) == tokens_of(plain)
    assert "".join(c.content for c in drafted) == "".join(c.content for c in plain)
    assert done.completion_tokens == plain_done.completion_tokens
    assert plain_done.draft_tokens == 0 and not any(c.draft for c in plain)
    assert done.draft_tokens > 0
    assert sum(sum(c.draft) for c in drafted) == done.draft_accepted
    acceptance = done.draft_acceptance
    assert acceptance is not None
    if which == "self":
        assert acceptance > 0.9
    else:
        assert acceptance < 0.1


def test_a_chat_turn_again_reuses_both_caches_and_the_text(self_drafted):
    """A request again: the model's and the draft's prompt caches serve it, same text."""
    request = ask("What is a cat?", 12)
    first, _ = streamed(self_drafted, request)
    again, done = streamed(self_drafted, request)
    assert tokens_of(again) == tokens_of(first)
    assert done.cached_tokens > 0
    assert done.draft_acceptance is not None and done.draft_acceptance > 0.9


def test_status_names_the_draft(self_drafted, demo_client):
    from mlx_notebook.notebook.display import status_line

    assert self_drafted.status().draft == "demo"
    assert " · draft demo · " in status_line(self_drafted.status())
    assert demo_client.status().draft == ""
    assert "draft" not in status_line(demo_client.status())


def test_a_second_request_hands_it_over_to_the_batch_mid_stream(self_drafted, demo_client):
    first, second = ask("Explain attention to a child.", 40), ask("Say hi.", 8)
    expected = [tokens_of(streamed(demo_client, r)[0]) for r in (first, second)]
    got: dict[str, list[int]] = {}
    chunks: list[ChunkEvent] = []
    thread: threading.Thread | None = None
    with self_drafted.stream(first) as stream:
        for chunk in stream:
            chunks.append(chunk)
            if thread is None and len(tokens_of(chunks)) >= 8:  # a few rounds in: hand over
                thread = threading.Thread(target=lambda: got.update(
                    second=tokens_of(streamed(self_drafted, second)[0])))
                thread.start()
    assert thread is not None
    thread.join(120)
    done = stream.result
    assert done is not None
    assert tokens_of(chunks) == expected[0]
    assert got["second"] == expected[1]
    # Decoded speculatively only until the hand-over: the tail came from the batch.
    assert 0 < done.draft_accepted < done.completion_tokens - 1
    assert not any(any(c.draft) for c in chunks[-3:])


def test_cancel_mid_stream_then_the_next_request_works(self_drafted):
    request = CompletionRequest(prompt="Count: one, two,", request_id="spec-cancel",
                                options=SamplingOptions(max_tokens=100000))
    with self_drafted.stream(request) as stream:
        for n, _ in enumerate(stream):
            if n == 2:
                stream.cancel()
    assert stream.result is None or stream.result.done_reason == "cancel"
    _, done = streamed(self_drafted, ask("Say hi.", 4))
    assert done.completion_tokens >= 1


def test_the_logprob_view_marks_the_drafts_guesses(self_drafted):
    result = generate_logprobs("Name three colours of the rainbow.", model=self_drafted, k=2,
                               max_tokens=12)
    assert result.done is not None and result.done.draft_accepted > 0
    assert sum(result.draft) == result.done.draft_accepted
    html = result._repr_html_()
    assert html.count('data-draft="1"') == result.done.draft_accepted
    assert "guessed by the draft model" in html


# ---------------------------------------------------------------- refusals and entry points


def test_a_draft_of_another_tokenizer_fails_the_load_in_one_line(tiny_model_dir, test_registry,
                                                                 demo_model_ready):
    client = RunnerClient("demo", name="bad-draft", registry=test_registry,
                          extra_args=["--draft", str(tiny_model_dir)])
    with pytest.raises(RunnerStartError) as caught:
        for _ in running(client, timeout=300):
            pass
    message = str(caught.value)
    assert "another tokenizer" in message and "tiny" in message
    assert "Traceback" not in message


@pytest.mark.parametrize("flags, says", [
    (["--num-draft", "0"], "--num-draft must be 1 or more"),
    (["--draft", "demo", "--hostfile", __file__, "--rank", "0"], "--draft does not work in a "
                                                                "runner group"),
    (["--draft", "demo", "--kv-bits", "8"], "--draft goes with full-precision"),
    (["--draft", "demo", "--max-kv", "128"], "--draft goes with full-precision"),
])
def test_the_runner_refuses_bad_draft_flags(flags, says):
    done = subprocess.run([sys.executable, "-m", "mlx_notebook.runner", "--model", "demo",
                           "--no-auth", "--no-openblas", *flags],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 64
    assert says in done.stderr and len(done.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("kwargs, field", [
    ({"draft": "demo", "ranks": 2}, "draft"),
    ({"draft": "demo", "hosts": "10.0.0.1,10.0.0.2"}, "draft"),
    ({"draft": "demo", "num_draft": 0}, "num_draft"),
    ({"num_draft": 4}, "num_draft"),
])
def test_load_refuses_what_cannot_draft(kwargs, field, no_models):
    with pytest.raises(InvalidArgumentError) as caught:
        mn.load("demo", **kwargs)
    assert caught.value.field == field
    assert mn.ps() == []


@pytest.mark.parametrize("flags, says", [
    ("--draft demo --ranks 2", "--draft model does not work with --ranks/--hosts"),
    ("--draft demo --num-draft 0", "--num-draft must be 1 or more"),
    ("--num-draft 2", "--num-draft goes with --draft"),
])
def test_the_load_magic_refuses_in_one_line(flags, says, shell: InteractiveShell, no_models):
    with pytest.raises(UsageError) as caught:
        shell.run_line_magic("mlx", f"load demo {flags}")
    assert str(caught.value).startswith("%mlx load: ") and says in str(caught.value)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("kind", ["magic", "python"])
def test_load_with_a_draft_through_both_entry_points(kind, tiny_model_dir, shell, no_models):
    """The tiny model drafting for itself: the footer says how many guesses were kept."""
    spec = str(tiny_model_dir)
    if kind == "magic":
        shell.run_line_magic("mlx", f"load {shlex.quote(spec)} --as tiny-drafted "
                                    f"--draft {shlex.quote(spec)} --num-draft 4")
    else:
        mn.load(spec, name="tiny-drafted", draft=spec, num_draft=4)
    try:
        assert mn.status("tiny-drafted").draft == "tiny"
        result = mn.generate("The capital of France is", max_tokens=12, raw=True)
        assert result.draft_tokens > 0
        assert result.draft_accepted == result.draft_tokens  # its own guesses: all kept
        assert f"draft {result.draft_accepted}/{result.draft_tokens} accepted" in result.footer()
    finally:
        mn.unload("tiny-drafted")

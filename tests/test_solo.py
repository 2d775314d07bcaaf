"""The single-request decoder against mlx-lm's own generate_step, with and without a
hand-over to BatchGenerator in the middle of the prompt or of the answer."""

from __future__ import annotations

import mlx.core as mx
import pytest
from mlx_lm import load
from mlx_lm.generate import BatchGenerator, generate_step

from mlx_notebook.protocol import SamplingOptions
from mlx_notebook.runner.sampling import make_request_processors, make_request_sampler
from mlx_notebook.runner.solo import SoloDecoder

N = 24


@pytest.fixture(scope="module")
def model_and_prompt(tiny_model_dir):
    model, tokenizer = load(str(tiny_model_dir))
    prompt = tokenizer.encode("The capital of France is Paris. The capital of Italy is")
    return model, prompt


def reference(model, prompt, options: SamplingOptions) -> list[int]:
    """mlx-lm's generate_step, with no stop token: N tokens."""
    return [int(t) for t, _ in generate_step(
        mx.array(prompt), model, max_tokens=N, sampler=make_request_sampler(options),
        logits_processors=make_request_processors(options))]


def solo_then_batch(model, prompt, options: SamplingOptions, hand_over_at: int | None,
                    prefill_step: int = 4) -> list[int]:
    """Step a SoloDecoder; after ``hand_over_at`` steps (prefill chunks count) go on in a batch."""
    solo = SoloDecoder(model, -1, rest=list(prompt), cache=None, cached=[], max_tokens=N,
                       sampler=make_request_sampler(options),
                       processors=make_request_processors(options), stop_tokens=set(),
                       stream=mx.default_stream(mx.default_device()), prefill_step=prefill_step)
    out: list[int] = []
    steps = 0
    while hand_over_at is None or steps < hand_over_at:
        response = solo.step()
        steps += 1
        if response is not None:
            out.append(response.token)
            if response.finish_reason:
                return out
    response, rest = solo.hand_over()
    if response is not None:
        out.append(response.token)
    if rest is None:
        return out
    generator = BatchGenerator(model, stop_tokens=[], completion_batch_size=4,
                               prefill_batch_size=4, prefill_step_size=prefill_step)
    (uid,) = generator.insert([rest.prompt], max_tokens=[rest.max_tokens], caches=[rest.cache],
                              all_tokens=[rest.all_tokens], samplers=[solo.request_sampler],
                              logits_processors=[solo.processors])
    while True:
        _, responses = generator.next()
        for r in responses:
            out.append(int(r.token))
            if r.finish_reason:
                return out


@pytest.mark.parametrize("options", [
    SamplingOptions(temperature=0.0),
    SamplingOptions(temperature=1.0, seed=7),
    SamplingOptions(temperature=0.0, repeat_penalty=1.5, repeat_last_n=16),
], ids=["greedy", "seeded", "repeat-penalty"])
@pytest.mark.parametrize("hand_over_at", [None, 2, 5, 12], ids=lambda h: f"hand-over-{h}")
def test_solo_matches_generate_step_with_or_without_a_hand_over(model_and_prompt, options,
                                                                 hand_over_at):
    """None: alone to the end; 2: in the prompt; 5 and 12: in the answer."""
    model, prompt = model_and_prompt
    expected = reference(model, prompt, options)
    assert solo_then_batch(model, prompt, options, hand_over_at) == expected


def test_a_stop_token_ends_it_and_keeps_the_cache(model_and_prompt):
    model, prompt = model_and_prompt
    expected = reference(model, prompt, SamplingOptions())
    stop = expected[3]
    solo = SoloDecoder(model, -1, rest=list(prompt), cache=None, cached=[], max_tokens=N,
                       sampler=None, processors=[], stop_tokens={stop},
                       stream=mx.default_stream(mx.default_device()), prefill_step=512)
    responses: list = []
    while not responses or responses[-1].finish_reason is None:
        response = solo.step()
        if response is not None:
            responses.append(response)
    assert [r.token for r in responses] == expected[:expected.index(stop) + 1]
    last = responses[-1]
    assert last.finish_reason == "stop"
    assert last.all_tokens == list(prompt) + [r.token for r in responses]
    assert last.prompt_cache[0].offset == len(last.all_tokens)  # the cache holds what it says

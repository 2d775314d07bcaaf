"""Per-request samplers and logits processors, built from mlx-lm's own pieces.

mlx-lm's samplers draw from MLX's global random state, so two requests batched
together would disturb each other's seeds; a seeded request here carries its own
key, which makes "same seed, same text" hold even under batching.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import mlx.core as mx
from mlx_lm.sample_utils import (
    apply_min_p,
    apply_top_k,
    apply_top_p,
    make_logits_processors,
)

from ..protocol import SamplingOptions, TokenLogprob, TopLogprob
from .mx_values import as_float, as_list

Sampler = Callable[[mx.array], mx.array]


def make_request_sampler(options: SamplingOptions) -> Sampler | None:
    """None means greedy (the batch's shared sampler, so greedy rows stay batched)."""
    if options.temperature == 0:
        return None
    filters: list[Callable[[mx.array], mx.array]] = []
    if 0 < options.top_p < 1.0:
        filters.append(lambda x: apply_top_p(x, options.top_p))
    if options.min_p > 0:
        filters.append(lambda x: apply_min_p(x, options.min_p, 1))
    if options.top_k > 0:
        filters.append(lambda x: apply_top_k(x, options.top_k))
    key = mx.random.key(options.seed) if options.seed is not None else None
    inverse_temperature = 1.0 / options.temperature

    def sampler(logprobs: mx.array) -> mx.array:
        nonlocal key
        for apply_filter in filters:
            logprobs = apply_filter(logprobs)
        if key is None:
            return mx.random.categorical(logprobs * inverse_temperature)
        key, subkey = mx.random.split(key)
        return mx.random.categorical(logprobs * inverse_temperature, key=subkey)

    return sampler


def make_request_processors(options: SamplingOptions, constraint: Any = None) -> list:
    """mlx-lm's penalties, then the constraint's mask (last, so nothing lifts a masked token)."""
    processors = make_logits_processors(
        repetition_penalty=options.repeat_penalty if options.repeat_penalty != 1.0 else None,
        repetition_context_size=options.repeat_last_n,
        presence_penalty=options.presence_penalty or None,
        presence_context_size=options.repeat_last_n,
        frequency_penalty=options.frequency_penalty or None,
        frequency_context_size=options.repeat_last_n,
        logit_bias=dict(options.logit_bias) or None,
    )
    if constraint is not None:  # a runner.constraints.CompiledConstraint
        processors.append(constraint.processor(record=options.logprobs > 0))
    return processors


def token_logprob(logprobs: mx.array, token: int, k: int, decode: Callable[[list[int]], str],
                  first_choice: tuple[int, float] | None = None) -> TokenLogprob:
    """The sampled token's log-probability and the k most likely alternatives, best first;
    ``first_choice``: a constraint's record of the model's own pick, kept if it was masked."""
    logprobs = logprobs.reshape(-1)
    top: tuple[TopLogprob, ...] = ()
    if k > 0:
        k = min(k, logprobs.shape[0])
        ids = mx.argpartition(-logprobs, kth=k - 1)[:k]
        values = logprobs[ids]
        order = mx.argsort(-values)
        ids_list = as_list(ids[order])
        values_list = as_list(values[order])
        # A constraint's masked tokens have logprob -inf: never on the wire (JSON has no -inf).
        top = tuple(TopLogprob(token=int(i), text=decode([int(i)]), logprob=float(v))
                    for i, v in zip(ids_list, values_list, strict=True) if math.isfinite(v))
    unconstrained = None
    if first_choice is not None and first_choice[0] != token:
        unconstrained = TopLogprob(token=first_choice[0], text=decode([first_choice[0]]),
                                   logprob=first_choice[1])
    return TokenLogprob(token=token, text=decode([token]),
                        logprob=as_float(logprobs[token]), top=top, unconstrained=unconstrained)

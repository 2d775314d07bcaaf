"""One request decoded alone, the way mlx-lm's ``generate_step`` does it.

mlx-lm's ``BatchGenerator`` (our batching engine, and ``mlx_lm.server``'s) pays for
its batch cache and bookkeeping at every step. On a CPU that is lost in the
matmuls; on a GPU, where a step of a small model takes 2-5 ms, it costs a quarter
of the single-stream speed (docs/benchmarks-gpu.md). Most notebook requests run
alone, so a request that arrives to an idle runner is decoded here: a plain KV
cache, a forward pass issued before the previous token is read (so the device
never waits on Python), no batch bookkeeping.

When a second request arrives, :meth:`SoloDecoder.hand_over` moves this one into
the ``BatchGenerator`` with its cache, its sampler (and so its random key) and its
token history, so batching takes over and the text goes on as it would have.
Its cache is in the runner's KV format (runner/kv_cache.py says what the batch
does with a quantized one).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import mlx.core as mx

from ..kv_format import FULL_PRECISION, KvFormat
from .kv_cache import make_cache, quantize
from .mx_values import as_int

__all__ = ["SoloDecoder", "SoloResponse", "HandOver"]


@dataclass
class SoloResponse:
    """The fields of ``BatchGenerator``'s response that the engine reads."""

    uid: int
    token: int
    logprobs: mx.array
    finish_reason: str | None = None
    prompt_cache: list[Any] | None = None
    all_tokens: list[int] | None = None
    draft: bool = False  # a draft model's guess the model agreed with (runner/speculative.py)


@dataclass
class HandOver:
    """What ``BatchGenerator.insert`` needs to go on with the request (one of each)."""

    prompt: list[int]  # tokens not yet in the cache
    cache: list[Any] | None
    all_tokens: list[int]  # tokens in the cache
    max_tokens: int  # what is left of the request's budget


def _greedy(logprobs: mx.array) -> mx.array:
    return mx.argmax(logprobs, axis=-1)


class SoloDecoder:
    """Prefill (a chunk per :meth:`step`), then one token per :meth:`step`."""

    def __init__(self, model: Any, uid: int, *, rest: list[int], cache: list[Any] | None,
                 cached: list[int], max_tokens: int, sampler: Callable[[mx.array], mx.array] | None,
                 processors: list[Callable[[mx.array, mx.array], mx.array]],
                 stop_tokens: set[int], stream: Any, prefill_step: int,
                 kv: KvFormat = FULL_PRECISION) -> None:
        self.model, self.uid, self.stream = model, uid, stream
        self.cache = cache if cache is not None else make_cache(model, kv)
        self.kv = kv
        self._unquantized = kv.bits is not None  # until every layer holds kv.start tokens
        self.fed: list[int] = list(cached)  # the tokens whose keys and values are in the cache
        self.todo = list(rest)  # prompt tokens not yet fed
        self.max_tokens, self.stop_tokens = max_tokens, stop_tokens
        self.request_sampler = sampler  # None: greedy, as the batch takes it
        self.sampler = sampler or _greedy
        self.processors = processors
        self.prefill_step = prefill_step
        self.generated = 0
        self._pending: tuple[mx.array, mx.array] | None = None  # next token, its logprobs

    @property
    def prefilling(self) -> bool:
        return self._pending is None

    def _forward(self, tokens: mx.array) -> tuple[mx.array, mx.array]:
        """Feed ``tokens`` (1-D, maybe still lazy); the next token and its log-probabilities."""
        with mx.stream(self.stream):
            logits = self.model(tokens[None], cache=self.cache)[:, -1, :]
            if self.processors:
                context = mx.concatenate([mx.array(self.fed, dtype=tokens.dtype), tokens])
                for processor in self.processors:
                    logits = processor(context, logits)
            logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
            return self.sampler(logprobs), logprobs

    def step(self) -> SoloResponse | None:
        """One prefill chunk (None), or the next token, its forward pass already under way."""
        if self._pending is None:
            if len(self.todo) > 1:  # all but the last prompt token, a chunk at a time
                chunk, self.todo = self.todo[:self.prefill_step], self.todo[self.prefill_step:]
                if not self.todo:
                    chunk, self.todo = chunk[:-1], chunk[-1:]
                with mx.stream(self.stream):
                    self.model(mx.array(chunk)[None], cache=self.cache)
                    mx.eval([c.state for c in self.cache])
                self.fed.extend(chunk)
                if self._unquantized:
                    self._unquantized = not quantize(self.cache, self.kv)
                return None
            last, self.todo = self.todo, []
            self._pending = self._forward(mx.array(last))
            self.fed.extend(last)
            mx.async_eval(*self._pending)
            return None
        token_array, logprobs = self._pending
        if self._unquantized and len(self.fed) >= self.kv.start:  # two ints a token, until then
            self._unquantized = not quantize(self.cache, self.kv)
        # Feed this token before reading it: the device computes the next one meanwhile.
        self._pending = self._forward(token_array.reshape(-1))
        mx.async_eval(*self._pending)
        token = as_int(token_array)
        self.fed.append(token)
        finish = self._count(token)
        if finish is None:
            return SoloResponse(self.uid, token, logprobs)
        return SoloResponse(self.uid, token, logprobs, finish, self.cache, list(self.fed))

    def _count(self, token: int) -> str | None:
        """One more token generated; why the request ends on it, if it does."""
        self.generated += 1
        if token in self.stop_tokens:
            return "stop"
        return "length" if self.generated >= self.max_tokens else None

    def hand_over(self) -> tuple[SoloResponse | None, HandOver | None]:
        """Stop here for batching: the token already sampled (if any) and how to go on.

        The sampled token is returned as a response (the request may end on it); the
        :class:`HandOver` feeds it to the batch, which then samples the one after.
        """
        if self._pending is None:  # still reading the prompt: the batch reads the rest
            started = any(getattr(c, "offset", 1) for c in self.cache)
            return None, HandOver(self.todo, self.cache if started else None, self.fed,
                                  self.max_tokens)
        token_array, logprobs = self._pending
        token = as_int(token_array)
        finish = self._count(token)
        if finish is not None:
            # Done on this token: keep it in the cache, as the batch would have.
            with mx.stream(self.stream):
                self.model(mx.array([token])[None], cache=self.cache)
            self.fed.append(token)
            return SoloResponse(self.uid, token, logprobs, finish, self.cache,
                                list(self.fed)), None
        return (SoloResponse(self.uid, token, logprobs),
                HandOver([token], self.cache, self.fed, self.max_tokens - self.generated))

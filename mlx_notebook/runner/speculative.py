"""One request decoded alone with a draft model: speculative decoding, a round per step.

A small draft model guesses the next ``num_draft`` tokens one by one (cheap); the
main model reads all of them in one forward pass and samples a token at every
position. The guesses up to the first one the main model disagrees with are
kept, followed by the main model's own token there (a correction, or a bonus
token when every guess was right). Every token sent is the main model's choice,
so greedy text is the text without a draft; only the speed changes.

mlx-lm has ``speculative_generate_step``, but it is a whole-request generator that
rewinds its caches in a ``finally``. This decoder is shaped like
:class:`~runner.solo.SoloDecoder` instead: a prefill chunk or one draft round per
:meth:`SpeculativeDecoder.step`, and :meth:`~SpeculativeDecoder.hand_over` gives the
batch the main model's cache as it is between rounds (already trimmed to the kept
tokens), so a second request moves this one into the batch mid-stream.

A sampled request (temperature > 0) is decoded the same way: the draft guesses
greedily and each position is sampled from the main model's distribution, so the
text follows the main model's distribution, but its random stream advances
differently (a seed gives other text than without a draft). Requests with logits
processors (penalties, a constraint) are not decoded here: those processors see
one position at a time (runner/decode.py gives them the plain solo path).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import mlx.core as mx
from mlx_lm.models.cache import make_prompt_cache, trim_prompt_cache

from .mx_values import as_list
from .solo import HandOver, SoloResponse

__all__ = ["SpeculativeDecoder", "DraftCache"]


@dataclass
class DraftCache:
    """The draft model's KV cache and the tokens in it (kept in the prompt cache too)."""

    cache: list[Any]
    tokens: list[int]


def _greedy(logprobs: mx.array) -> mx.array:
    return mx.argmax(logprobs, axis=-1)


class SpeculativeDecoder:
    """Prefill both models (a chunk per :meth:`step`), then one draft round per :meth:`step`.

    Between steps both caches hold exactly the tokens sent so far minus the last one,
    which waits in ``todo`` (the next round feeds it): the same state the batch takes.
    """

    def __init__(self, model: Any, draft_model: Any, uid: int, *, rest: list[int],
                 cache: list[Any] | None, cached: list[int], draft: DraftCache | None,
                 prompt: list[int], max_tokens: int,
                 sampler: Callable[[mx.array], mx.array] | None, stop_tokens: set[int],
                 stream: Any, prefill_step: int, num_draft: int) -> None:
        self.model, self.draft_model, self.uid, self.stream = model, draft_model, uid, stream
        self.cache = cache if cache is not None else make_prompt_cache(model)
        self.fed: list[int] = list(cached)  # tokens in the main cache
        self.todo = list(rest)  # tokens the main model has yet to read (the last: next input)
        if draft is None:
            draft = DraftCache(make_prompt_cache(draft_model), [])
        self.draft = draft
        self.draft_todo = prompt[len(draft.tokens):]
        self.max_tokens, self.stop_tokens = max_tokens, stop_tokens
        self.request_sampler = sampler  # None: greedy, as the batch takes it
        self.sampler = sampler or _greedy
        self.processors: list[Any] = []  # the batch's, at a hand-over: none here
        self.prefill_step, self.num_draft = prefill_step, num_draft
        # Guesses this round: one more than were kept last round, at most num_draft. Checking
        # guesses is not free (on a CPU, 4 positions cost about 2 steps), so a draft that
        # keeps missing soon guesses one token a round, where a miss costs least.
        self.guessing = num_draft
        self.generated = 0
        self.proposed = 0  # draft tokens the main model checked
        self.accepted = 0  # of them, those it agreed with
        self.prefilling = True

    # ------------------------------------------------------------ prefill

    def _prefill_chunk(self, model: Any, cache: list[Any], todo: list[int], fed: list[int]
                       ) -> list[int]:
        """Feed one chunk of ``todo`` (never its last token); returns what is left."""
        chunk, todo = todo[:self.prefill_step], todo[self.prefill_step:]
        if not todo:
            chunk, todo = chunk[:-1], chunk[-1:]
        with mx.stream(self.stream):
            model(mx.array(chunk)[None], cache=cache)
            mx.eval([c.state for c in cache])
        fed.extend(chunk)
        return todo

    def step(self) -> list[SoloResponse]:
        """A prefill chunk (no tokens), or one round: the kept guesses, then the main
        model's token (the last one may end the request: its ``finish_reason``)."""
        if len(self.todo) > 1:
            self.todo = self._prefill_chunk(self.model, self.cache, self.todo, self.fed)
            return []
        if len(self.draft_todo) > self.prefill_step:
            self.draft_todo = self._prefill_chunk(self.draft_model, self.draft.cache,
                                                  self.draft_todo, self.draft.tokens)
            return []
        self.prefilling = False
        return self._round()

    # ------------------------------------------------------------ a round

    def _round(self) -> list[SoloResponse]:
        # Never guess past the budget: the last token of the request is the main model's.
        n = max(0, min(self.guessing, self.max_tokens - self.generated - 1))
        with mx.stream(self.stream):
            guesses = self._guess(n)
            main_in = mx.array(self.todo)
            if n:
                main_in = mx.concatenate([main_in, guesses.astype(main_in.dtype)])
            logits = self.model(main_in[None], cache=self.cache)[0, len(self.todo) - 1:, :]
            logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
            chosen = self.sampler(logprobs)
            mx.eval(chosen, guesses, logprobs)
        drafted = as_list(guesses) if n else []
        picks = as_list(chosen)
        kept = 0
        while kept < n and picks[kept] == drafted[kept]:
            kept += 1
        self.proposed += n
        if n:
            self.guessing = min(self.num_draft, kept + 1)
        return self._emit(drafted, picks, kept, logprobs)

    def _guess(self, n: int) -> mx.array:
        """The draft's ``n`` greedy guesses (lazy); its cache then lacks the last guess."""
        tokens = mx.array(self.draft_todo)
        guesses = []
        for _ in range(n):
            logits = self.draft_model(tokens[None], cache=self.draft.cache)[0, -1, :]
            tokens = mx.argmax(logits, axis=-1, keepdims=True)
            guesses.append(tokens)
        return mx.concatenate(guesses) if guesses else mx.array([], dtype=mx.int32)

    def _emit(self, drafted: list[int], picks: list[int], kept: int,
              logprobs: mx.array) -> list[SoloResponse]:
        """The round's tokens as responses; both caches trimmed to what is kept."""
        n = len(drafted)
        sent = drafted[:kept] + [picks[kept]]
        responses = []
        for i, token in enumerate(sent):
            self.generated += 1
            finish = ("stop" if token in self.stop_tokens
                      else "length" if self.generated >= self.max_tokens else None)
            responses.append(SoloResponse(self.uid, token, logprobs[i], draft=i < kept))
            if finish is not None:
                sent = sent[:i + 1]
                break
        # The main cache read todo + every guess: keep todo + the guesses sent.
        in_main = min(kept, len(sent))
        self.accepted += in_main
        trim_prompt_cache(self.cache, n - in_main)
        self.fed.extend(self.todo + drafted[:in_main])
        # The draft read draft_todo + all guesses but the last (nothing when it guessed none).
        unread: list[int] = []
        if n:
            read = drafted[:n - 1]
            keep = min(in_main, len(read))
            trim_prompt_cache(self.draft.cache, len(read) - keep)
            self.draft.tokens.extend(self.draft_todo + read[:keep])
            unread = drafted[keep:in_main]
        else:
            unread = self.draft_todo
        if finish is not None:
            self.todo, self.draft_todo = [], unread
            last = responses[-1]
            last.finish_reason, last.prompt_cache, last.all_tokens = (
                finish, self.cache, list(self.fed))
            return responses
        self.todo = [sent[-1]]
        self.draft_todo = unread + [sent[-1]]
        return responses

    # ------------------------------------------------------------ hand-over

    def hand_over(self) -> tuple[None, HandOver]:
        """Stop here for batching: the batch reads ``todo`` (every token sent so far is
        out already) into this main-model cache; the draft's cache is dropped."""
        started = any(getattr(c, "offset", 1) for c in self.cache)
        return None, HandOver(self.todo, self.cache if started else None, self.fed,
                              self.max_tokens - self.generated)

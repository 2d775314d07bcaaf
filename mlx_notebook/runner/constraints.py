"""Constrained decoding: a request's :class:`~mlx_notebook.protocol.Constraint` as a logits processor.

llguidance compiles the constraint (JSON schema, any JSON, regex, one of a list)
and computes, for each step, the bitmask of tokens that keep the text inside it
(its numpy API, ~30 us a token with the demo's tokenizer). The mask is applied
with plain MLX ops, so it works on Metal, CUDA and the CPU alike (llguidance's
own MLX helper is a Metal kernel).

The processor follows the sequence, not the number of calls: it remembers how
long the context was and feeds the matcher only the tokens added since, so the
prompt (all of the first call's context) is never consumed and the solo -> batch
hand-over, which shows the processor the same sequence again, consumes nothing twice.
"""

from __future__ import annotations

import json
import sys
import threading
from collections import deque
from typing import TYPE_CHECKING, Any

import llguidance
import llguidance.hf
import llguidance.numpy as llg_numpy
import mlx.core as mx
import numpy as np

from ..protocol import Constraint
from .mx_values import as_float, as_int, as_list

if TYPE_CHECKING:
    from llguidance._lib import JsonCompileOptions

__all__ = ["ConstraintError", "CompiledConstraint", "ConstraintProcessor", "Grammars", "grammars_for",
           "WHITESPACE_PATTERN", "apply_bitmask"]

# JSON whitespace between tokens, bounded: a model cannot pad forever (ollama #18567),
# yet indented output (a newline and a few levels of indentation) still fits.
WHITESPACE_PATTERN = r"[\x20\x09]{0,4}|[\x20\x09]{0,2}\x0D?\x0A[\x20\x09]{0,24}"
_JSON_OPTIONS: JsonCompileOptions = {"whitespace_pattern": WHITESPACE_PATTERN}
_ANY_JSON: dict[str, Any] = {}  # llguidance: the empty schema is any JSON value


class ConstraintError(ValueError):
    """The constraint cannot be compiled; the message names the problem (a 400 on the wire)."""


class Grammars:
    """Compiles constraints against one model's tokenizer (built on first use, ~0.5 s)."""

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer  # mlx-lm's TokenizerWrapper
        self._lock = threading.Lock()
        self._llt: Any = None

    def _ll_tokenizer(self) -> Any:
        with self._lock:
            if self._llt is None:
                eos = sorted(self._tokenizer.eos_token_ids)
                try:
                    self._llt = llguidance.hf.from_tokenizer(self._tokenizer._tokenizer,
                                                             eos_token=eos)
                except ValueError as exc:  # a slow (pure-Python) tokenizer
                    raise ConstraintError(
                        f"constrained decoding needs a fast tokenizer: {exc}") from exc
            return self._llt

    def compile(self, constraint: Constraint) -> CompiledConstraint:
        """Check ``constraint`` now (ConstraintError); the result makes a processor per request."""
        llt = self._ll_tokenizer()
        grammar = _grammar(constraint)
        failed, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar, llt)
        if failed:
            raise ConstraintError(f"{constraint.kind} constraint cannot be compiled: "
                                  f"{_first_line(messages)}")
        compiled = CompiledConstraint(llt, grammar)
        probe = compiled.processor()
        if probe.matcher.is_error() or not probe.first_mask().any():
            raise ConstraintError(f"{constraint.kind} constraint admits no text: "
                                  f"{_first_line([probe.matcher.get_error()])}")
        return compiled


def _grammar(constraint: Constraint) -> str:
    try:
        if constraint.kind == "json_schema":
            return llguidance.LLMatcher.grammar_from_json_schema(
                json.dumps(constraint.schema), defaults=_JSON_OPTIONS)
        if constraint.kind == "json":
            return llguidance.LLMatcher.grammar_from_json_schema(
                json.dumps(_ANY_JSON), defaults=_JSON_OPTIONS)
        if constraint.kind == "regex":
            return llguidance.LLMatcher.grammar_from_regex(constraint.pattern or "")
        lark = "start: " + " | ".join(json.dumps(c) for c in constraint.choices)
        return llguidance.LLMatcher.grammar_from_lark(lark)
    except ValueError as exc:
        raise ConstraintError(f"{constraint.kind} constraint cannot be compiled: {exc}") from exc


def _first_line(messages: list[str]) -> str:
    text = " ".join(m.strip() for m in messages if m.strip()) or "no reason given"
    # llguidance adds the regex with carets under it: keep the sentence, not the drawing.
    for line in text.splitlines():
        if line.startswith("error:"):
            return line[len("error:"):].strip()
    return text.splitlines()[0]


class CompiledConstraint:
    """A validated grammar; each request gets its own matcher (:meth:`processor`)."""

    def __init__(self, llt: Any, grammar: str) -> None:
        self.llt, self.grammar = llt, grammar
        self.active: ConstraintProcessor | None = None

    def processor(self, *, record: bool = False) -> ConstraintProcessor:
        """A matcher for one request; ``record``: keep the model's unmasked first choices.

        The request's processor is remembered (:attr:`active`): a compiled constraint
        belongs to one request, and the decode loop reads its first choices there.
        """
        self.active = ConstraintProcessor(
            llguidance.LLMatcher(self.llt, self.grammar, log_level=0), self.llt.vocab_size,
            list(self.llt.eos_tokens), record=record)
        return self.active


class ConstraintProcessor:
    """An mlx-lm logits processor ``(context, logits) -> logits`` for one request."""

    def __init__(self, matcher: Any, vocab_size: int, eos: list[int], *,
                 record: bool = False) -> None:
        self.matcher = matcher
        # One (token, logprob) pair of lazy arrays per call, oldest first: calls and sampled
        # tokens come in the same order on both paths (the solo path's next forward pass
        # is issued before its token is read, hence a queue, not a single slot).
        self.first_choices: deque[tuple[mx.array, mx.array]] | None = \
            deque(maxlen=8) if record else None
        self.mask = llg_numpy.allocate_token_bitmask(1, vocab_size)
        self.eos = eos
        self._seen: int | None = None  # context length at the last call
        self._warned = False

    def first_mask(self) -> np.ndarray:
        llg_numpy.fill_next_token_bitmask(self.matcher, self.mask)
        return np.unpackbits(self.mask.view(np.uint8), bitorder="little")

    def __call__(self, context: mx.array, logits: mx.array) -> mx.array:
        # The mask needs the last token's value (a sync): start this step's forward pass
        # first, so the device computes it while the matcher works out the mask.
        mx.async_eval(logits)
        length = int(context.shape[-1])
        if self._seen is None:
            self._seen = length  # the prompt (and the token fed with it): not ours to consume
        elif length > self._seen:
            for token in as_list(context[self._seen:]):
                self.matcher.consume_token(int(token))
            self._seen = length
        if self.matcher.is_error():
            self._warn()
        llg_numpy.fill_next_token_bitmask(self.matcher, self.mask)
        if not self.mask.any():  # nothing allowed (an error state): end the request
            words = self.mask.view(np.uint32)
            for token in self.eos:
                words[0, token // 32] |= np.uint32(1 << (token % 32))
        if self.first_choices is not None:  # lazy: computed with the step, read with its token
            self.first_choices.append((mx.argmax(logits, axis=-1),
                                       mx.max(logits, axis=-1) - mx.logsumexp(logits, axis=-1)))
        return apply_bitmask(logits, self.mask)

    def take_first_choice(self) -> tuple[int, float] | None:
        """The model's unmasked first choice for the oldest step not yet taken."""
        if not self.first_choices:
            return None
        token, logprob = self.first_choices.popleft()
        return as_int(token), as_float(logprob)

    def _warn(self) -> None:
        if not self._warned:
            self._warned = True
            print(f"constraint: matcher failed: {self.matcher.get_error()[:300]}",
                  file=sys.stderr, flush=True)


def apply_bitmask(logits: mx.array, mask: np.ndarray) -> mx.array:
    """``logits`` (1, vocab) with the tokens whose bit is 0 in ``mask`` (1, words) set to -inf."""
    words = mx.array(mask.view(np.uint32))
    bits = mx.right_shift(words[..., None], mx.arange(32, dtype=mx.uint32)) & 1
    allowed = bits.reshape(words.shape[0], -1).astype(mx.bool_)
    vocab = logits.shape[-1]
    if allowed.shape[-1] >= vocab:
        allowed = allowed[..., :vocab]
    else:  # the model's embedding is padded past the tokenizer: padding is never allowed
        pad = mx.zeros((allowed.shape[0], vocab - allowed.shape[-1]), dtype=mx.bool_)
        allowed = mx.concatenate([allowed, pad], axis=-1)
    return mx.where(allowed, logits, mx.array(-mx.inf, dtype=logits.dtype))


_GRAMMARS: dict[int, tuple[Any, Grammars]] = {}  # by id of the loaded model


def grammars_for(loaded: Any) -> Grammars:
    """The :class:`Grammars` of a runner's :class:`~runner.models.LoadedModel` (one per model)."""
    entry = _GRAMMARS.get(id(loaded))
    if entry is None or entry[0] is not loaded:
        entry = (loaded, Grammars(loaded.tokenizer))
        _GRAMMARS[id(loaded)] = entry
    return entry[1]

"""Prefill-only forward passes that look inside the model: scores, a logit lens, attention.

Built on mlx-lm's own model classes, never a fork of them: the model's ``layers`` are
a list, so a pass calls them one by one and keeps what it needs (the residual stream
per layer, the input of the block whose attention is asked for). Only the asked
attention is recomputed explicitly, from the block's own projections, norms and rope.

Every pass is a generator that does one chunk of work per ``next()`` (one prompt
chunk, or one layer's read-out) and yields; the decode loop runs one chunk between
decode steps (:class:`InspectQueue`), so a long lens never stalls a running
generation by more than a step's worth. The last ``next()`` returns the result.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any, cast

import mlx.core as mx
from mlx_lm.models.base import create_attention_mask
from mlx_lm.models.cache import make_prompt_cache

from ..inside_protocol import (
    SUPPORTED_ARCHITECTURES,
    AttentionResult,
    Candidate,
    InsideKind,
    LensResult,
    ResultEvent,
    ScoredText,
    ScoredToken,
    ScoreResult,
)
from ..protocol import DoneEvent, ProgressEvent, SamplingOptions
from .jobs import Job, fail_job
from .mx_values import as_list

__all__ = ["UnsupportedModel", "ModelParts", "model_parts", "score_pass", "lens_pass",
           "attention_pass", "InspectJob", "InspectQueue"]

Pass = Generator[ProgressEvent | None, None, Any]
SCORE_CHUNK_TOKENS = 256  # batch x positions per forward chunk (logits are positions x vocab)


class UnsupportedModel(ValueError):
    """The model's architecture is not one whose layers this module knows how to call."""


@dataclass(frozen=True)
class ModelParts:
    """The pieces of an mlx-lm decoder a pass calls itself."""

    model: Any
    embed: Any
    layers: list[Any]
    norm: Any
    model_type: str

    def unembed(self, h: mx.array) -> mx.array:
        """Final norm then the output projection: what the model does after its last block."""
        inner = self.model.model
        out = self.norm(h)
        if getattr(self.model.args, "tie_word_embeddings", False) or \
                not hasattr(self.model, "lm_head"):
            return inner.embed_tokens.as_linear(out)
        return self.model.lm_head(out)


def model_parts(model: Any) -> ModelParts:
    """The model's parts, or :class:`UnsupportedModel` naming its type."""
    model_type = str(getattr(model, "model_type", "") or
                     getattr(getattr(model, "args", None), "model_type", "") or
                     type(model).__module__.rsplit(".", 1)[-1])
    supported = ", ".join(SUPPORTED_ARCHITECTURES)
    if model_type not in SUPPORTED_ARCHITECTURES:
        raise UnsupportedModel(f"look-inside views support the {supported} architectures; this "
                               f"model is {model_type!r}")
    inner = getattr(model, "model", None)
    layers = list(getattr(inner, "layers", None) or [])
    if inner is None or not layers or not hasattr(inner, "embed_tokens") \
            or not hasattr(inner, "norm"):
        raise UnsupportedModel(f"this {model_type!r} model does not have the usual "
                               "embed_tokens / layers / norm structure")
    if any(getattr(layer, "use_sliding", False) for layer in layers):
        raise UnsupportedModel(f"this {model_type!r} model uses sliding-window layers, which "
                               "the look-inside views do not support")
    return ModelParts(model=model, embed=inner.embed_tokens, layers=layers, norm=inner.norm,
                      model_type=model_type)


def _top(logprobs: mx.array, k: int, decode: Callable[[list[int]], str]) -> list[list[Candidate]]:
    """Rows of ``logprobs`` [n, vocab] -> their ``k`` most likely tokens, best first."""
    if k <= 0:
        return [[] for _ in range(logprobs.shape[0])]
    idx = mx.argpartition(-logprobs, kth=k - 1, axis=-1)[:, :k]
    vals = mx.take_along_axis(logprobs, idx, axis=-1)
    order = mx.argsort(-vals, axis=-1)
    idx, vals = mx.take_along_axis(idx, order, axis=-1), mx.take_along_axis(vals, order, axis=-1)
    return [[Candidate(token=int(t), text=decode([int(t)]), logprob=round(float(v), 6))
             for t, v in zip(ids, vs, strict=True)]
            for ids, vs in zip(as_list(idx), as_list(vals), strict=True)]


def _log_softmax(logits: mx.array) -> mx.array:
    logits = logits.astype(mx.float32)
    return logits - mx.logsumexp(logits, axis=-1, keepdims=True)


def score_pass(parts: ModelParts, sequences: list[list[int]], starts: list[int], top_k: int,
               decode: Callable[[list[int]], str], chunk_tokens: int = SCORE_CHUNK_TOKENS) -> Pass:
    """Log-probabilities of ``sequences[b][starts[b]:]``, one right-padded batch.

    Right padding needs no mask beyond the causal one: a real position never sees a
    pad. Each chunk runs the model on ``chunk_tokens // batch`` positions of every row.
    """
    batch, longest = len(sequences), max(len(s) for s in sequences)
    padded = mx.array([s + [0] * (longest - len(s)) for s in sequences])
    cache = make_prompt_cache(parts.model)
    step = max(1, chunk_tokens // batch)
    scored: list[list[ScoredToken]] = [[] for _ in sequences]
    for b, (seq, start) in enumerate(zip(sequences, starts, strict=True)):
        if start == 0:  # nothing precedes the first token: it has no probability
            scored[b].append(ScoredToken(token=seq[0], text=decode([seq[0]]), logprob=None,
                                         rank=None))
    for begin in range(0, longest - 1, step):
        end = min(longest - 1, begin + step)  # the last position predicts nothing asked
        logprobs = _log_softmax(parts.model(padded[:, begin:end], cache=cache))
        mx.eval(logprobs, [c.state for c in cache])
        # Position p predicts token p + 1; keep the rows a text asked for.
        rows, where = [], []
        for b, (seq, start) in enumerate(zip(sequences, starts, strict=True)):
            for p in range(max(begin, start - 1), min(end, len(seq) - 1)):
                rows.append(b * (end - begin) + (p - begin))
                where.append((b, seq[p + 1]))
        if rows:
            flat = logprobs.reshape(-1, logprobs.shape[-1])[mx.array(rows)]
            targets = mx.array([t for _, t in where])[:, None]
            chosen = mx.take_along_axis(flat, targets, axis=-1)
            ranks = (flat > chosen).sum(axis=-1) + 1
            tops = _top(flat, top_k, decode)
            for (b, token), lp, rank, top in zip(where, as_list(chosen[:, 0]), as_list(ranks),
                                                 tops, strict=True):
                scored[b].append(ScoredToken(token=token, text=decode([token]),
                                             logprob=round(lp, 6), rank=int(rank), top=tuple(top)))
        yield ProgressEvent(processed=end * batch, total=(longest - 1) * batch)
    return ScoreResult(texts=tuple(ScoredText(start=start, tokens=tuple(s))
                                   for start, s in zip(starts, scored, strict=True)))


def _forward(parts: ModelParts, tokens: list[int], upto: int, chunk: int,
             keep: Callable[[int, mx.array, int], None]) -> Generator[ProgressEvent, None, None]:
    """Run ``tokens`` through blocks ``0..upto-1`` in chunks; ``keep(layer, h, begin)`` sees the
    residual stream of each chunk after the embeddings (layer 0) and after each block."""
    layers = parts.layers[:upto]
    cache = make_prompt_cache(parts.model)[:upto]
    ids = mx.array(tokens)[None]
    for begin in range(0, len(tokens), chunk):
        h = parts.embed(ids[:, begin:begin + chunk])
        keep(0, h, begin)
        mask = create_attention_mask(h, cache[0] if cache else None)
        for i, (layer, c) in enumerate(zip(layers, cache, strict=True)):
            h = layer(h, mask, cache=c)
            keep(i + 1, h, begin)
        mx.eval(h, [c.state for c in cache])
        yield ProgressEvent(processed=min(len(tokens), begin + chunk), total=len(tokens))


def _resolve(indices: tuple[int, ...], size: int, what: str) -> list[int]:
    resolved = []
    for i in indices:
        j = i + size if i < 0 else i
        if not 0 <= j < size:
            raise ValueError(f"{what} {i} is out of range (0..{size - 1}, or negative from the end)")
        resolved.append(j)
    return list(dict.fromkeys(resolved))


def lens_plan(parts: ModelParts, n_tokens: int, positions: tuple[int, ...] | None,
              layers: tuple[int, ...] | None, default_positions: int) -> tuple[list[int], list[int]]:
    """The positions and layers a lens reads (checked before it is queued: ValueError)."""
    n_layers = len(parts.layers)
    pos = _resolve(positions, n_tokens, "position") if positions is not None else \
        list(range(max(0, n_tokens - default_positions), n_tokens))
    lay = _resolve(layers, n_layers + 1, "layer") if layers is not None else \
        list(range(n_layers + 1))
    return sorted(pos), sorted(lay)


def lens_pass(parts: ModelParts, tokens: list[int], positions: list[int], layers: list[int],
              top_k: int, decode: Callable[[list[int]], str], chunk: int) -> Pass:
    """Read the residual stream at ``layers`` x ``positions`` out through the final norm and
    the unembedding, each layer reduced to its top ``top_k`` at once."""
    wanted = set(layers)
    kept: dict[int, list[mx.array]] = {layer: [] for layer in layers}

    def keep(layer: int, h: mx.array, begin: int) -> None:
        if layer in wanted:
            local = [p - begin for p in positions if begin <= p < begin + h.shape[1]]
            if local:
                kept[layer].append(h[0, mx.array(local)])

    yield from _forward(parts, tokens, max(layers), chunk, keep)
    grid = []
    for layer in layers:  # one layer per step: positions x vocab logits at a time
        h = mx.concatenate(kept.pop(layer), axis=0)
        logprobs = _log_softmax(parts.unembed(h))
        grid.append(tuple(tuple(row) for row in _top(logprobs, top_k, decode)))
        yield None
    return LensResult(tokens=tuple(tokens), pieces=tuple(decode([t]) for t in tokens),
                      positions=tuple(positions), layers=tuple(layers),
                      num_layers=len(parts.layers), grid=tuple(grid))


def attention_weights(parts: ModelParts, layer: int, h: mx.array) -> mx.array:
    """Block ``layer``'s attention probabilities [heads, T, T] for its input ``h`` [1, T, D],
    recomputed from the block's own norm, projections, q/k norms (qwen3) and rope."""
    block = parts.layers[layer]
    attn = block.self_attn
    x = block.input_layernorm(h)
    _, length, _ = x.shape
    q = attn.q_proj(x).reshape(1, length, attn.n_heads, -1)
    k = attn.k_proj(x).reshape(1, length, attn.n_kv_heads, -1)
    if hasattr(attn, "q_norm"):
        q, k = attn.q_norm(q), attn.k_norm(k)
    q, k = attn.rope(q.transpose(0, 2, 1, 3)), attn.rope(k.transpose(0, 2, 1, 3))
    k = mx.repeat(k, attn.n_heads // attn.n_kv_heads, axis=1)  # grouped-query attention
    scores = (q.astype(mx.float32) * attn.scale) @ k.astype(mx.float32).transpose(0, 1, 3, 2)
    causal = mx.tril(mx.ones((length, length), dtype=mx.bool_))
    scores = mx.where(causal, scores, mx.array(-mx.inf, dtype=mx.float32))
    return mx.softmax(scores, axis=-1)[0]


def attention_pass(parts: ModelParts, tokens: list[int], layer: int,
                   decode: Callable[[list[int]], str], chunk: int) -> Pass:
    inputs: list[mx.array] = []

    def keep(at: int, h: mx.array, _begin: int) -> None:
        if at == layer:
            inputs.append(h)

    yield from _forward(parts, tokens, layer, chunk, keep)
    weights = attention_weights(parts, layer, mx.concatenate(inputs, axis=1))
    rows = as_list(weights)
    return AttentionResult(
        tokens=tuple(tokens), pieces=tuple(decode([t]) for t in tokens), layer=layer,
        num_layers=len(parts.layers), heads=len(rows),
        weights=tuple(tuple(tuple(round(w, 5) for w in row[:i + 1]) for i, row in enumerate(head))
                      for head in rows))


# ---------------------------------------------------------------- scheduling


@dataclass
class InspectJob(Job):
    """A look-inside request in the mailbox like a completion; ``work`` is its pass."""

    kind: InsideKind = "score"
    work: Pass | None = None
    processed: int = 0
    options: SamplingOptions = field(default_factory=SamplingOptions)

    def result_event(self, value: Any) -> Any:
        """The line a finished pass sends before its DoneEvent (a prompt-cache job has its own)."""
        return ResultEvent(kind=self.kind, result=_as_dict(value))


class InspectQueue:
    """Look-inside jobs waiting on the worker; :meth:`step` runs one chunk of the first.

    ``forget`` is the mailbox's: a finished job no longer counts as active.
    """

    def __init__(self, stream: Any, forget: Callable[[Job], None]) -> None:
        self.stream, self.forget = stream, forget
        self.jobs: list[InspectJob] = []

    @property
    def busy(self) -> bool:
        return bool(self.jobs)

    def add(self, job: InspectJob) -> None:
        job.started = time.perf_counter()
        self.jobs.append(job)

    def step(self) -> None:
        job = self.jobs[0]
        if job.cancel_requested.is_set():
            self._done(job, "cancel")
            return
        assert job.work is not None
        try:
            with mx.stream(self.stream):
                event = next(job.work)
        except StopIteration as stop:
            # The server's writer encodes any event dataclass; this one only a look-inside has.
            events = cast("queue.SimpleQueue[Any]", job.events)
            events.put(job.result_event(stop.value))
            self._done(job, "stop")
        except Exception as exc:  # a failed pass fails its request, never the runner
            self.jobs.pop(0)
            fail_job(job, f"{job.kind} failed: {type(exc).__name__}: {exc}")
            self.forget(job)
            mx.clear_cache()
        else:
            if isinstance(event, ProgressEvent):
                job.processed = event.processed
                job.events.put(event)

    def _done(self, job: InspectJob, reason: Any) -> None:
        self.jobs.remove(job)
        job.finished = True
        job.events.put(DoneEvent(done_reason=reason, prompt_tokens=len(job.prompt_tokens),
                                 prompt_duration=time.perf_counter() - job.started,
                                 peak_memory=mx.get_peak_memory(), request_id=job.request_id))
        self.forget(job)
        if not self.jobs:
            mx.clear_cache()

    def fail_all(self, message: str) -> None:
        for job in self.jobs:
            fail_job(job, message)
            self.forget(job)
        self.jobs.clear()


def _as_dict(result: Any) -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(result)

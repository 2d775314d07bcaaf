"""Wire types of the look-inside endpoints: score, lens, attention (docs/protocol.md).

Kept beside :mod:`mlx_notebook.protocol` (whose helpers they use) so that module
stays about generation. Each request is answered with an NDJSON stream like a
completion's: :class:`~mlx_notebook.protocol.ProgressEvent` lines while the runner
works through it, keep-alives during silence, then one :class:`ResultEvent` and a
:class:`~mlx_notebook.protocol.DoneEvent` (or an :class:`~mlx_notebook.protocol.ErrorEvent`).
No MLX, no httpx: both sides import it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any, Literal

from .protocol import (
    TopLogprob,
    ValidationError,
    _expect_object,
    _integer,
    _kind,
    _reject_unknown,
    _string,
)

__all__ = [
    "MAX_TEXTS", "MAX_TOP_K", "MAX_LENS_POSITIONS", "MAX_ATTENTION_TOKENS", "DEFAULT_LENS_POSITIONS",
    "SUPPORTED_ARCHITECTURES", "ScoreRequest", "LensRequest", "AttentionRequest", "Candidate",
    "ScoredToken", "ScoredText", "ScoreResult", "LensResult", "AttentionResult", "ResultEvent",
    "encode_result", "decode_result",
]

MAX_TEXTS = 64  # texts scored in one request (one padded batch)
MAX_TOP_K = 20
MAX_LENS_POSITIONS = 128
DEFAULT_LENS_POSITIONS = 16  # the last 16 tokens: a lens reads every layer out (~6x a pass)
MAX_ATTENTION_TOKENS = 128  # an attention map is tokens x tokens per head
# mlx-lm model types whose layers the runner knows how to call one by one.
SUPPORTED_ARCHITECTURES = ("llama", "mistral", "qwen2", "qwen3")
InsideKind = Literal["score", "lens", "attention"]


def _indices(data: dict[str, Any], key: str, limit: int) -> tuple[int, ...] | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or not value or len(value) > limit or not all(
            isinstance(i, int) and not isinstance(i, bool) and abs(i) < 1 << 20 for i in value):
        raise ValidationError(key, f"expected a non-empty array of at most {limit} integers, "
                                   f"got {_kind(value)}")
    return tuple(value)


def _text(data: dict[str, Any], key: str = "text") -> str:
    text = _string(data, key, "", required=True) or ""
    if not text:
        raise ValidationError(key, "must not be empty")
    return text


@dataclass(frozen=True)
class ScoreRequest:
    """Score each of ``texts`` after ``context`` (one padded batch, no decoding)."""

    texts: tuple[str, ...]
    context: str | None = None
    top_k: int = 5

    def to_json(self) -> dict[str, Any]:
        return {"texts": list(self.texts), "context": self.context, "top_k": self.top_k}

    @classmethod
    def from_json(cls, value: Any) -> ScoreRequest:
        data = _expect_object(value, "body")
        _reject_unknown(data, {"texts", "context", "top_k"}, "")
        texts = data.get("texts")
        if not isinstance(texts, list) or not texts or len(texts) > MAX_TEXTS or not all(
                isinstance(t, str) and t for t in texts):
            raise ValidationError("texts", f"expected 1-{MAX_TEXTS} non-empty strings")
        return cls(texts=tuple(texts), context=_string(data, "context", "") or None,
                   top_k=_integer(data, "top_k", "", 5, 0, MAX_TOP_K) or 0)


@dataclass(frozen=True)
class LensRequest:
    """A logit lens of ``text``: every asked layer at every asked position, top ``top_k``.

    ``positions``: token indices (negative from the end), or else the ``last`` so many
    tokens (None: :data:`DEFAULT_LENS_POSITIONS`; all of a shorter text). ``layers``: 0 is the embeddings, ``i`` the residual
    stream after block ``i``, negative from the end (None: all).
    """

    text: str
    positions: tuple[int, ...] | None = None
    layers: tuple[int, ...] | None = None
    top_k: int = 5
    last: int | None = None  # without positions: this many last tokens (all if fewer)

    def to_json(self) -> dict[str, Any]:
        return {"text": self.text, "top_k": self.top_k, "last": self.last,
                "positions": None if self.positions is None else list(self.positions),
                "layers": None if self.layers is None else list(self.layers)}

    @classmethod
    def from_json(cls, value: Any) -> LensRequest:
        data = _expect_object(value, "body")
        _reject_unknown(data, {"text", "positions", "layers", "top_k", "last"}, "")
        positions = _indices(data, "positions", MAX_LENS_POSITIONS)
        last = _integer(data, "last", "", None, 1, MAX_LENS_POSITIONS)
        if positions is not None and last is not None:
            raise ValidationError("last", "give positions or last, not both")
        return cls(text=_text(data), positions=positions, last=last,
                   layers=_indices(data, "layers", 1024),
                   top_k=_integer(data, "top_k", "", 5, 1, MAX_TOP_K) or 1)


@dataclass(frozen=True)
class AttentionRequest:
    """The attention weights of block ``layer`` (negative from the end) over ``text``."""

    text: str
    layer: int

    def to_json(self) -> dict[str, Any]:
        return {"text": self.text, "layer": self.layer}

    @classmethod
    def from_json(cls, value: Any) -> AttentionRequest:
        data = _expect_object(value, "body")
        _reject_unknown(data, {"text", "layer"}, "")
        layer = _integer(data, "layer", "", None, -(1 << 20), 1 << 20)
        if layer is None:
            raise ValidationError("layer", "is required")
        return cls(text=_text(data), layer=layer)


# ---------------------------------------------------------------- results


# A token the model could have put at a place, with its log-probability: the same triple as
# a generation's top alternatives.
Candidate = TopLogprob


@dataclass(frozen=True)
class ScoredToken:
    """One token of a scored text; ``logprob``/``rank`` are None for a first token that
    nothing precedes (no context and no BOS token)."""

    token: int
    text: str
    logprob: float | None
    rank: int | None  # 1: the model's own first choice
    top: tuple[Candidate, ...] = ()


@dataclass(frozen=True)
class ScoredText:
    """``tokens`` are the text's own; ``start`` is where they start in the token sequence
    (after the context's tokens and any BOS)."""

    start: int
    tokens: tuple[ScoredToken, ...]


@dataclass(frozen=True)
class ScoreResult:
    texts: tuple[ScoredText, ...]


@dataclass(frozen=True)
class LensResult:
    """``grid[i][j]``: the top candidates at ``layers[i]`` and ``positions[j]`` (a prediction of
    the token after that position); ``num_layers`` blocks, so layer ``num_layers`` is the output."""

    tokens: tuple[int, ...]
    pieces: tuple[str, ...]
    positions: tuple[int, ...]
    layers: tuple[int, ...]
    num_layers: int
    grid: tuple[tuple[tuple[Candidate, ...], ...], ...]


@dataclass(frozen=True)
class AttentionResult:
    """``weights[h][i]``: head ``h``'s attention from token ``i`` to tokens ``0..i`` (a row
    of ``i + 1`` weights that sums to 1: the rest is masked)."""

    tokens: tuple[int, ...]
    pieces: tuple[str, ...]
    layer: int
    num_layers: int
    heads: int
    weights: tuple[tuple[tuple[float, ...], ...], ...]


@dataclass(frozen=True)
class ResultEvent:
    """The answer of a look-inside request, one line before its DoneEvent."""

    kind: InsideKind
    result: dict[str, Any]
    type: Literal["result"] = "result"


def encode_result(kind: InsideKind, result: ScoreResult | LensResult | AttentionResult) -> bytes:
    line = json.dumps(asdict(ResultEvent(kind=kind, result=asdict(result))),
                      ensure_ascii=False, separators=(",", ":"))
    return (line + "\n").encode()


def _candidates(items: Any) -> tuple[Candidate, ...]:
    return tuple(Candidate(token=int(c["token"]), text=str(c["text"]),
                           logprob=float(c["logprob"])) for c in items)


def decode_result(data: dict[str, Any]) -> ScoreResult | LensResult | AttentionResult:
    """A :class:`ResultEvent`'s ``result`` as its type; KeyError/TypeError/ValueError if malformed."""
    kind, r = data["kind"], data["result"]
    if kind == "score":
        return ScoreResult(texts=tuple(
            ScoredText(start=int(t["start"]), tokens=tuple(
                ScoredToken(token=int(s["token"]), text=str(s["text"]),
                            logprob=None if s["logprob"] is None else float(s["logprob"]),
                            rank=None if s["rank"] is None else int(s["rank"]),
                            top=_candidates(s.get("top", ()))) for s in t["tokens"]))
            for t in r["texts"]))
    if kind == "lens":
        return LensResult(tokens=tuple(r["tokens"]), pieces=tuple(r["pieces"]),
                          positions=tuple(r["positions"]), layers=tuple(r["layers"]),
                          num_layers=int(r["num_layers"]),
                          grid=tuple(tuple(_candidates(cell) for cell in row) for row in r["grid"]))
    if kind == "attention":
        return AttentionResult(tokens=tuple(r["tokens"]), pieces=tuple(r["pieces"]),
                               layer=int(r["layer"]), num_layers=int(r["num_layers"]),
                               heads=int(r["heads"]),
                               weights=tuple(tuple(tuple(float(w) for w in row) for row in head)
                                             for head in r["weights"]))
    raise ValueError(f"unknown result kind {kind!r}")

"""Look inside the model: score any text, rank options, a logit lens, attention maps.

>>> import mlx_notebook as mn
>>> mn.score("Paris is the capital of France.").perplexity     # doctest: +SKIP
>>> mn.choose("The capital of France is", [" Paris", " Rome"]).best  # doctest: +SKIP
>>> mn.lens("The capital of France is").final_top             # doctest: +SKIP
>>> mn.attention("The cat sat on the mat", layer=3).head(0)   # doctest: +SKIP

Each runs one prefill-only pass on the runner (no decoding), between the decode steps
of whatever else it serves. The results are plain numbers (lists, or a DataFrame
with ``to_dataframe()`` where pandas is installed); in a notebook they draw
themselves as HTML/SVG that survives saving (notebook/teaching/inside_views.py).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import views
from .errors import InvalidArgumentError
from .inside_protocol import (
    MAX_LENS_POSITIONS,
    MAX_TEXTS,
    MAX_TOP_K,
    AttentionRequest,
    AttentionResult,
    Candidate,
    LensRequest,
    LensResult,
    ScoredToken,
    ScoreRequest,
)

if TYPE_CHECKING:
    from .control.connection import RunnerConnection

__all__ = ["Score", "Choice", "RankedOption", "Lens", "Attention", "score", "choose", "lens",
           "attention", "check_score_args", "check_choose_args", "check_lens_args",
           "check_attention_args"]

TEXT_EMPTY = "{field} must be a non-empty string"
TOO_FEW_OPTIONS = "give 2 to {max} options to choose from, got {n}"
TOP_K_RANGE = "top_k must be between {lo} and {max}, got {value!r}"
POSITIONS_BAD = ("positions must be a number of last tokens (1 to {max}) or a list of token "
                 "indices (negative from the end), got {value!r}")
LAYERS_BAD = ("layers must be a list of layer numbers (0: the embeddings, negative from the "
              "end), got {value!r}")
LAYER_BAD = "layer must be a block number (negative from the end), got {value!r}"
HEAD_BAD = "head must be 0 or more, got {value!r}"


def _client(model: str | RunnerConnection | None) -> RunnerConnection:
    """The runner called ``model`` (None: the default one); a runner object as is."""
    if model is not None and not isinstance(model, str):
        return model
    from .control.manager import get_manager

    return get_manager().get(model)


def _html(obj: object) -> str | None:
    return views.current().html(obj)


def _dataframe(rows: list[dict[str, Any]]) -> Any:
    try:
        import pandas as pd
    except ImportError as exc:  # optional: the numbers are plain lists without it
        raise ImportError("to_dataframe() needs pandas (pip install pandas); rows() gives the "
                          "same numbers as a list of dicts") from exc
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- argument checks


def check_score_args(text: Any, context: Any = None, top_k: Any = 5) -> None:
    if not isinstance(text, str) or not text:
        raise InvalidArgumentError(TEXT_EMPTY.format(field="text"), field="text")
    if context is not None and not isinstance(context, str):
        raise InvalidArgumentError("context must be a string or None", field="context")
    _check_top_k(top_k, 0)


def _check_top_k(top_k: Any, lo: int) -> None:
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not lo <= top_k <= MAX_TOP_K:
        raise InvalidArgumentError(TOP_K_RANGE.format(lo=lo, max=MAX_TOP_K, value=top_k),
                                   field="top_k")


def check_choose_args(prompt: Any, options: Any) -> None:
    if not isinstance(prompt, str) or not prompt:
        raise InvalidArgumentError(TEXT_EMPTY.format(field="prompt"), field="prompt")
    if isinstance(options, str) or not isinstance(options, Sequence):
        raise InvalidArgumentError("options must be a list of strings", field="options")
    if not 2 <= len(options) <= MAX_TEXTS:
        raise InvalidArgumentError(TOO_FEW_OPTIONS.format(max=MAX_TEXTS, n=len(options)),
                                   field="options")
    bad = next((o for o in options if not isinstance(o, str) or not o), None)
    if bad is not None:
        raise InvalidArgumentError(f"every option must be a non-empty string, got {bad!r}",
                                   field="options")


def _int_list(value: Any) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, str) and bool(value) and all(
        isinstance(i, int) and not isinstance(i, bool) for i in value)


def check_lens_args(text: Any, positions: Any = None, layers: Any = None, top_k: Any = 5) -> None:
    check_score_args(text)
    if positions is not None:
        count = isinstance(positions, int) and not isinstance(positions, bool) and \
            1 <= positions <= MAX_LENS_POSITIONS
        listed = _int_list(positions) and len(positions) <= MAX_LENS_POSITIONS
        if not (count or listed):
            raise InvalidArgumentError(POSITIONS_BAD.format(max=MAX_LENS_POSITIONS,
                                                            value=positions), field="positions")
    if layers is not None and not _int_list(layers):
        raise InvalidArgumentError(LAYERS_BAD.format(value=layers), field="layers")
    _check_top_k(top_k, 1)


def check_attention_args(text: Any, layer: Any, head: Any = None) -> None:
    check_score_args(text)
    if isinstance(layer, bool) or not isinstance(layer, int):
        raise InvalidArgumentError(LAYER_BAD.format(value=layer), field="layer")
    if head is not None and (isinstance(head, bool) or not isinstance(head, int) or head < 0):
        raise InvalidArgumentError(HEAD_BAD.format(value=head), field="head")


# ---------------------------------------------------------------- results


@dataclass(frozen=True)
class Score:
    """The log-probability of every token of ``text`` after ``context``.

    ``tokens[i].logprob`` is None only for a first token nothing precedes (no context,
    no BOS token); such a token counts in neither ``total`` nor ``mean``.
    """

    text: str
    context: str | None
    tokens: tuple[ScoredToken, ...]
    start: int  # where the text's tokens start in context + text (after any BOS)
    model: str = ""

    @property
    def scored(self) -> list[ScoredToken]:
        return [t for t in self.tokens if t.logprob is not None]

    @property
    def total(self) -> float:
        """Sum of the tokens' log-probabilities: log P(text | context)."""
        return sum(t.logprob for t in self.tokens if t.logprob is not None)

    @property
    def mean(self) -> float:
        """Mean log-probability per scored token (0.0 if none was scored)."""
        n = len(self.scored)
        return self.total / n if n else 0.0

    @property
    def perplexity(self) -> float:
        return math.exp(-self.mean)

    def rows(self) -> list[dict[str, Any]]:
        return [{"token": t.token, "text": t.text, "logprob": t.logprob, "rank": t.rank,
                 "top": [(c.text, c.logprob) for c in t.top]} for t in self.tokens]

    def to_dataframe(self) -> Any:
        return _dataframe(self.rows())

    def __str__(self) -> str:
        from .inside_text import score_text

        return score_text(self)

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(str(self))

    def _repr_html_(self) -> str | None:
        return _html(self)


@dataclass(frozen=True)
class RankedOption:
    text: str
    total: float  # log P(option | prompt)
    mean: float  # per token: does not favour short options
    rank: int  # 1: the most likely by total
    score: Score


@dataclass(frozen=True)
class Choice:
    """Options ranked by likelihood after ``prompt``; ``.best`` by total log-probability,
    ``.best_normalized`` by the per-token mean (both shown in the view)."""

    prompt: str
    ranked: tuple[RankedOption, ...]

    @property
    def best(self) -> str:
        return self.ranked[0].text

    @property
    def best_normalized(self) -> str:
        return max(self.ranked, key=lambda r: r.mean).text

    def rows(self) -> list[dict[str, Any]]:
        return [{"option": r.text, "rank": r.rank, "total": r.total, "mean": r.mean,
                 "probability": math.exp(r.total), "tokens": len(r.score.scored)}
                for r in self.ranked]

    def to_dataframe(self) -> Any:
        return _dataframe(self.rows())

    def __str__(self) -> str:
        from .inside_text import choice_text

        return choice_text(self)

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(str(self))

    def _repr_html_(self) -> str | None:
        return _html(self)


@dataclass(frozen=True)
class Lens(LensResult):
    """``grid[i][j]``: the top candidates when the residual stream after layer ``layers[i]``
    (0: the embeddings) at token ``positions[j]`` is read out through the final norm and the
    unembedding: what the model would predict next if it stopped there."""

    text: str = ""  # the text read (the wire result's fields come from LensResult)

    @property
    def final_top(self) -> str:
        """The top token of the last layer read at the last position."""
        return self.grid[-1][-1][0].text

    def cell(self, layer: int, position: int) -> tuple[Candidate, ...]:
        return self.grid[self.layers.index(layer)][self.positions.index(position)]

    def rows(self) -> list[dict[str, Any]]:
        return [{"layer": layer, "position": pos, "token": self.pieces[pos],
                 "top": cell[0].text, "probability": math.exp(cell[0].logprob),
                 "candidates": [(c.text, math.exp(c.logprob)) for c in cell]}
                for layer, row in zip(self.layers, self.grid, strict=True)
                for pos, cell in zip(self.positions, row, strict=True)]

    def to_dataframe(self) -> Any:
        return _dataframe(self.rows())

    def __str__(self) -> str:
        from .inside_text import lens_text

        return lens_text(self)

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(str(self))

    def _repr_html_(self) -> str | None:
        return _html(self)


@dataclass(frozen=True)
class Attention(AttentionResult):
    """Block ``layer``'s attention weights: ``weights[h][i][j]`` from token ``i`` to ``j <= i``
    (rows of ``i + 1``; each sums to 1). ``head`` is the one shown large (None: all alike)."""

    text: str = ""  # the text read (the wire result's fields come from AttentionResult)
    head_shown: int | None = None

    def head(self, h: int) -> list[list[float]]:
        """Head ``h`` as a full square matrix (zeros above the diagonal)."""
        n = len(self.tokens)
        return [list(row) + [0.0] * (n - len(row)) for row in self.weights[h]]

    def rows(self) -> list[dict[str, Any]]:
        return [{"head": h, "from": i, "to": j, "weight": w}
                for h, head in enumerate(self.weights) for i, row in enumerate(head)
                for j, w in enumerate(row)]

    def to_dataframe(self) -> Any:
        return _dataframe(self.rows())

    def __str__(self) -> str:
        from .inside_text import attention_text

        return attention_text(self)

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(str(self))

    def _repr_html_(self) -> str | None:
        return _html(self)


# ---------------------------------------------------------------- the calls


def score(text: str, *, context: str | None = None, top_k: int = 5,
          model: str | RunnerConnection | None = None) -> Score:
    """Log-probability of each token of ``text`` after ``context`` (tokenized together, as
    generation would see them), with each token's rank and ``top_k`` alternatives."""
    check_score_args(text, context, top_k)
    client = _client(model)
    result = client.score(ScoreRequest(texts=(text,), context=context, top_k=top_k))
    (scored,) = result.texts
    return Score(text=text, context=context, tokens=scored.tokens, start=scored.start,
                 model=client.name)


def choose(prompt: str, options: Sequence[str], *, top_k: int = 0,
           model: str | RunnerConnection | None = None) -> Choice:
    """Rank ``options`` as continuations of ``prompt`` by likelihood (one batched pass).

    Multiple-choice evaluation, bias probes, A/B of prompts: ``.best`` is the most likely
    option, ``.ranked`` all of them with their total and per-token log-probabilities.
    """
    check_choose_args(prompt, options)
    _check_top_k(top_k, 0)
    client = _client(model)
    result = client.score(ScoreRequest(texts=tuple(options), context=prompt, top_k=top_k))
    scores = [Score(text=o, context=prompt, tokens=t.tokens, start=t.start, model=client.name)
              for o, t in zip(options, result.texts, strict=True)]
    order = sorted(range(len(scores)), key=lambda i: -scores[i].total)
    ranked = tuple(RankedOption(text=scores[i].text, total=scores[i].total, mean=scores[i].mean,
                                rank=r + 1, score=scores[i]) for r, i in enumerate(order))
    return Choice(prompt=prompt, ranked=ranked)


def lens(text: str, *, positions: int | Sequence[int] | None = None,
         layers: Sequence[int] | None = None, top_k: int = 5,
         model: str | RunnerConnection | None = None) -> Lens:
    """The logit lens of ``text``: at each layer and position, the top ``top_k`` next tokens.

    ``positions``: how many last tokens (default 16), or a list of indices; ``layers``:
    a list (0: the embeddings, negative from the end; default all).
    """
    check_lens_args(text, positions, layers, top_k)
    client = _client(model)
    last = positions if isinstance(positions, int) else None
    listed = None if positions is None or isinstance(positions, int) else tuple(positions)
    result = client.lens(LensRequest(text=text, positions=listed, last=last,
                                     layers=None if layers is None else tuple(layers),
                                     top_k=top_k))
    return Lens(**_fields_of(result), text=text)


def attention(text: str, *, layer: int, head: int | None = None,
              model: str | RunnerConnection | None = None) -> Attention:
    """Block ``layer``'s attention weights over the tokens of ``text`` (at most 128 tokens):
    all heads as small multiples, ``head`` (if given) drawn large."""
    check_attention_args(text, layer, head)
    client = _client(model)
    result = client.attention(AttentionRequest(text=text, layer=layer))
    if head is not None and head >= result.heads:
        raise InvalidArgumentError(f"head {head} is out of range: layer {result.layer} has "
                                   f"{result.heads} heads (0..{result.heads - 1})", field="head")
    return Attention(**_fields_of(result), text=text, head_shown=head)


def _fields_of(result: Any) -> dict[str, Any]:
    """A wire result's fields as they are (not deep-copied into dicts, as asdict would)."""
    return {f.name: getattr(result, f.name) for f in dataclasses.fields(result)}

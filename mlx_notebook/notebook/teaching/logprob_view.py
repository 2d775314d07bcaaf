"""Token probabilities: an answer with each token shaded by how likely the model found it.

>>> r = generate_logprobs("The capital of France is", raw=True, k=5, max_tokens=8)  # doctest: +SKIP
>>> r                      # renders the shaded HTML; hover a token for its top-5 alternatives
>>> r.logprobs[0].top[0]   # TopLogprob(token=..., text=' Paris', logprob=-0.4)

The view is plain HTML (inline styles, ``title`` tooltips, a ``<details>`` table):
no JavaScript, so it survives saving and renders without a kernel. Probabilities
are the model's own (softmax of the logits, before temperature), as the runner sends them.
With a draft model loaded (``mn.load(..., draft=...)``), the tokens the draft guessed
and the model accepted are underlined in blue: "the small model guessed these".
"""

from __future__ import annotations

import dataclasses
import html
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ... import api
from ...protocol import ChatMessage, DoneEvent, SamplingOptions, TokenLogprob
from ...structured import output_spec
from ..display import in_kernel

if TYPE_CHECKING:
    from ...control.connection import RunnerConnection

__all__ = ["LogprobResult", "generate_logprobs", "logprobs_html", "logprobs_text",
           "probability_color"]

UPDATES_PER_SECOND = 10.0


def probability_color(p: float) -> str:
    """Red for unlikely tokens through yellow to green for near-certain ones."""
    return f"hsl({120 * min(max(p, 0.0), 1.0):.0f}, 75%, 82%)"


def _visible(text: str) -> str:
    """Token text made visible: a lone newline or space must still be something to hover."""
    return text.replace("\n", "↵").replace("\t", "⇥") if text.strip() else (
        text.replace(" ", "␣").replace("\n", "↵").replace("\t", "⇥") or "∅")


def _overruled(tok: TokenLogprob) -> str:
    """What the constraint ruled out here, in words; "" where the model's choice was allowed."""
    own = tok.unconstrained
    if own is None:
        return ""
    return f"the model wanted {own.text!r} ({math.exp(own.logprob):.1%}): the constraint ruled it out"


def _tooltip(tok: TokenLogprob) -> str:
    lines = [f"{tok.text!r}  p={math.exp(tok.logprob):.4f}  (logprob {tok.logprob:.3f})"]
    for i, alt in enumerate(tok.top, 1):
        mark = " ◀" if alt.token == tok.token else ""
        lines.append(f"{i:>2}. {alt.text!r}  {math.exp(alt.logprob):.2%}{mark}")
    if tok.unconstrained is not None:
        lines.append(_overruled(tok))
    return "\n".join(lines)


DRAFT_MARK = "border-bottom:2px solid #1f5fbf"  # a token the draft model guessed
DRAFT_NOTE = "guessed by the draft model, accepted by the model"


def _span(tok: TokenLogprob, drafted: bool = False) -> str:
    p = math.exp(tok.logprob)
    text = html.escape(tok.text.replace("\n", "↵") if tok.text.strip() else _visible(tok.text))
    br = "<br>" * tok.text.count("\n")
    tip = _tooltip(tok) + (f"\n{DRAFT_NOTE}" if drafted else "")
    mark = f";{DRAFT_MARK}" if drafted else ""
    extra = ' data-draft="1"' if drafted else ""
    # A token the constraint chose over the model's own pick: a dashed outline.
    if tok.unconstrained is not None:
        extra += ' data-overruled="1"'
        mark += ";outline:1px dashed #555"
    return (f'<span class="mlxnb-token" data-prob="{p:.6f}"{extra} title="{html.escape(tip)}" '
            f'style="background:{probability_color(p)};border-radius:3px;padding:0 1px;'
            f'margin:0 1px 0 0;white-space:pre-wrap{mark}">{text}</span>{br}')


def _table(tokens: Sequence[TokenLogprob]) -> str:
    k = max((len(t.top) for t in tokens), default=0)
    head = "".join(f"<th>#{i}</th>" for i in range(1, k + 1))
    rows = []
    for n, tok in enumerate(tokens):
        cells = "".join(
            f"<td>{html.escape(repr(a.text))} {math.exp(a.logprob):.1%}</td>" for a in tok.top)
        rows.append(f"<tr><td>{n}</td><td><b>{html.escape(repr(tok.text))}</b></td>"
                    f"<td>{math.exp(tok.logprob):.1%}</td>{cells}</tr>")
    return (f'<table class="mlxnb-logprob-table" style="font-size:85%"><tr><th>step</th>'
            f"<th>token</th><th>p</th>{head}</tr>{''.join(rows)}</table>")


def logprobs_html(tokens: Sequence[TokenLogprob], *, table: bool = True,
                  draft: Sequence[bool] = ()) -> str:
    """Self-contained HTML: shaded tokens with hover tooltips, a legend, a top-K table.

    ``draft`` (parallel to ``tokens``): which came from a draft model, underlined.
    """
    flags = list(draft) + [False] * (len(tokens) - len(draft))
    body = "".join(_span(t, d) for t, d in zip(tokens, flags, strict=False))
    guessed = sum(flags)
    drafted = (f' · <span style="{DRAFT_MARK}">underlined</span>: {guessed} of {len(tokens)} '
               f"guessed by the draft model" if guessed else "")
    legend = " ".join(
        f'<span style="background:{probability_color(p)};padding:0 4px">{p:.0%}</span>'
        for p in (0.05, 0.25, 0.5, 0.75, 0.95))
    mean = (sum(t.logprob for t in tokens) / len(tokens)) if tokens else 0.0
    overruled = sum(t.unconstrained is not None for t in tokens)
    ruled = (f" · {overruled} dashed: the constraint overruled the model's own choice"
             if overruled else "")
    summary = (f'<div style="font-size:85%;color:#666;margin-top:4px">{len(tokens)} tokens · '
               f"mean logprob {mean:.3f} (perplexity {math.exp(-mean):.2f}) · "
               f"probability: {legend}{drafted} · hover a token for its alternatives{ruled}</div>")
    details = (f"<details><summary>top-{max((len(t.top) for t in tokens), default=0)} "
               f"alternatives per token</summary>{_table(tokens)}</details>"
               if table and tokens else "")
    return (f'<div class="mlxnb-logprobs" style="line-height:1.9;font-family:monospace">'
            f"{body}</div>{summary}{details}")


def logprobs_text(tokens: Sequence[TokenLogprob], draft: Sequence[bool] = ()) -> str:
    """The same information as plain text: one token a line with its top alternatives
    (``*`` before a token the draft model guessed)."""
    lines = []
    for i, tok in enumerate(tokens):
        alts = ", ".join(f"{a.text!r} {math.exp(a.logprob):.1%}" for a in tok.top)
        mark = ("*" if i < len(draft) and draft[i] else " ") if draft else ""
        ruled = f"   [{_overruled(tok)}]" if tok.unconstrained is not None else ""
        lines.append(f"{mark}{tok.text!r:<16} {math.exp(tok.logprob):7.2%}   {alts}{ruled}")
    return "\n".join(lines)


@dataclass(frozen=True)
class LogprobResult:
    """A generation with the runner's logprobs of every generated token."""

    text: str
    logprobs: tuple[TokenLogprob, ...]
    model: str
    options: SamplingOptions
    done: DoneEvent | None = None
    request: dict[str, Any] = field(default_factory=dict)  # the CompletionRequest as JSON
    draft: tuple[bool, ...] = ()  # per token: guessed by a draft model (empty: none was)

    @property
    def probabilities(self) -> list[float]:
        return [math.exp(t.logprob) for t in self.logprobs]

    def __str__(self) -> str:
        return self.text

    def _repr_html_(self) -> str:
        return logprobs_html(self.logprobs, draft=self.draft)

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(logprobs_text(self.logprobs, self.draft))


def generate_logprobs(prompt: str, *, model: str | RunnerConnection | None = None, k: int = 5,
                      system: str | None = None, raw: bool = False,
                      messages: Sequence[ChatMessage] | None = None, show: bool = False,
                      schema: Any = None, json: bool = False,
                      choices: Sequence[str] | str | None = None, regex: str | None = None,
                      **sampling: Any) -> LogprobResult:
    """Generate with ``k`` alternatives per token (0-20); ``show=True`` streams the view.

    ``sampling`` takes the :class:`SamplingOptions` names (``max_tokens``, ``temperature``...).
    With structured output (``schema``, ``json``, ``choices``, ``regex``, as
    :func:`mlx_notebook.generate`), a token where the constraint overruled the model's
    own first choice carries it (``TokenLogprob.unconstrained``) and is outlined.
    """
    if not 0 <= k <= 20:
        raise ValueError(f"k (--logprobs) must be between 0 and 20, got {k}")
    client = api.get_client(model)
    options = api.sampling_options(**sampling, logprobs=max(k, 1))
    request = api.completion_request(prompt, options, system=system, raw=raw,
                                     messages=messages)
    output = output_spec(schema=schema, json=json, choices=choices, regex=regex)
    if output is not None:
        request = dataclasses.replace(request, constraint=output.constraint)
    handle = _Live() if show else None
    tokens: list[TokenLogprob] = []
    drafted: list[bool] = []
    with client.stream(request) as stream:
        for chunk in stream:
            tokens.extend(chunk.logprobs)
            drafted.extend(i < len(chunk.draft) and chunk.draft[i]
                           for i in range(len(chunk.logprobs)))
            if handle is not None:
                handle.update(tokens, chunk.content, drafted)
    if k == 0:  # the runner needs k>=1 to send logprobs; hide the alternatives
        tokens = [TokenLogprob(t.token, t.text, t.logprob) for t in tokens]
    result = LogprobResult(text=stream.text, logprobs=tuple(tokens), model=client.name,
                           options=options, done=stream.result, request=request.to_json(),
                           draft=tuple(drafted) if any(drafted) else ())
    if handle is not None:
        handle.finish(result)
    return result


class _Live:
    """Redraws the shaded view in one display output at most 10 times a second."""

    def __init__(self) -> None:
        self.kernel = in_kernel()
        self.last = 0.0
        self.handle: Any = None
        if self.kernel:
            from IPython.display import HTML, display

            self.handle = display(HTML("…"), display_id=True)

    def update(self, tokens: Sequence[TokenLogprob], piece: str,
               draft: Sequence[bool] = ()) -> None:
        if not self.kernel:
            print(piece, end="", flush=True)
            return
        now = time.monotonic()
        if now - self.last >= 1.0 / UPDATES_PER_SECOND:
            self.last = now
            self._draw(logprobs_html(tokens, table=False, draft=draft), "")

    def finish(self, result: LogprobResult) -> None:
        if not self.kernel:
            print("\n" + logprobs_text(result.logprobs, result.draft))
            return
        self._draw(logprobs_html(result.logprobs, draft=result.draft),
                   logprobs_text(result.logprobs, result.draft))

    def _draw(self, html_text: str, plain: str) -> None:
        self.handle.update({"text/html": html_text, "text/plain": plain or "…"}, raw=True)

"""HTML/SVG views of the look-inside results: a shaded score, ranked options, a logit-lens
grid, attention heatmaps.

Plain HTML and inline SVG with inline styles: hover shows details through ``title``
attributes (SVG ``<title>`` elements), never JavaScript, so a saved notebook shows
them without a kernel. The text fallbacks are in mlx_notebook/inside_text.py.
"""

from __future__ import annotations

import html
import math

from ...inside import Attention, Choice, Lens, Score
from ...inside_text import shown
from .logprob_view import probability_color

__all__ = ["inside_html", "score_html", "choice_html", "lens_html", "attention_html"]

_SMALL_CELL = 3  # px per token in a small-multiple head
_LARGE_CELL_MAX = 18


def _esc(text: str) -> str:
    return html.escape(text, quote=True)


def inside_html(result: object) -> str | None:
    """The HTML of any look-inside result (None for anything else)."""
    if isinstance(result, Score):
        return score_html(result)
    if isinstance(result, Choice):
        return choice_html(result)
    if isinstance(result, Lens):
        return lens_html(result)
    if isinstance(result, Attention):
        return attention_html(result)
    return None


def score_html(score: Score) -> str:
    spans = []
    for t in score.tokens:
        if t.logprob is None:
            spans.append(f'<span class="mlxnb-token" title="first token: nothing precedes it" '
                         f'style="border:1px dashed #999;white-space:pre-wrap">{_esc(t.text)}</span>')
            continue
        p = math.exp(t.logprob)
        tip = [f"{t.text!r}  p={p:.4f}  logprob {t.logprob:.3f}  rank {t.rank}"]
        tip += [f"{i:>2}. {c.text!r}  {math.exp(c.logprob):.2%}" for i, c in enumerate(t.top, 1)]
        spans.append(f'<span class="mlxnb-token" data-prob="{p:.6f}" title="{_esc(chr(10).join(tip))}"'
                     f' style="background:{probability_color(p)};border-radius:3px;padding:0 1px;'
                     f'margin:0 1px 0 0;white-space:pre-wrap">{_esc(t.text)}</span>')
    context = (f'<span style="color:#888;white-space:pre-wrap">{_esc(score.context)}</span>'
               if score.context else "")
    return (f'<div class="mlxnb-score"><div style="line-height:1.8">{context}{"".join(spans)}</div>'
            f'<div style="font-size:85%;color:#555">total logprob <b>{score.total:.3f}</b> · mean '
            f"{score.mean:.3f} · perplexity {score.perplexity:.2f} · {len(score.scored)} tokens "
            f"scored (hover a token for its rank and alternatives)</div></div>")


def _bar(value: float, lo: float, hi: float, color: str) -> str:
    width = 100.0 if hi <= lo else 8 + 92 * (value - lo) / (hi - lo)
    return (f'<div style="background:{color};height:10px;width:{width:.0f}%;'
            f'border-radius:2px"></div>')


def choice_html(choice: Choice) -> str:
    totals = [r.total for r in choice.ranked]
    means = [r.mean for r in choice.ranked]
    best_mean = choice.best_normalized
    rows = []
    for r in choice.ranked:
        mark = " ★" if r.text == best_mean else ""
        rows.append(
            f'<tr class="mlxnb-option" title="{_esc(repr(r.text))}: P = {math.exp(r.total):.3g}">'
            f"<td>{r.rank}</td><td style='white-space:pre'>{_esc(repr(r.text))}</td>"
            f"<td>{r.total:.3f}</td><td style='width:120px'>"
            f"{_bar(r.total, min(totals), max(totals), '#6a9ff7')}</td>"
            f"<td>{r.mean:.3f}{mark}</td><td style='width:120px'>"
            f"{_bar(r.mean, min(means), max(means), '#9bd18b')}</td>"
            f"<td>{len(r.score.scored)}</td></tr>")
    return (f'<div class="mlxnb-choice"><div>best: <b>{_esc(repr(choice.best))}</b> (per token: '
            f"{_esc(repr(best_mean))})</div><table style='font-size:90%'><tr><th>rank</th>"
            f"<th>option</th><th>total logprob</th><th></th><th>per token ★</th><th></th>"
            f"<th>tokens</th></tr>{''.join(rows)}</table></div>")


def lens_html(lens: Lens) -> str:
    head = "".join(f'<th title="position {p}: {_esc(repr(lens.pieces[p]))}" '
                   f'style="font-weight:normal;color:#555;white-space:pre">'
                   f"{_esc(shown(lens.pieces[p], 8))}</th>" for p in lens.positions)
    rows = []
    for layer, row in reversed(list(zip(lens.layers, lens.grid, strict=True))):
        name = "emb" if layer == 0 else ("out" if layer == lens.num_layers else str(layer))
        cells = []
        for pos, cell in zip(lens.positions, row, strict=True):
            top = cell[0]
            p = math.exp(top.logprob)
            tip = [f"layer {name}, after {lens.pieces[pos]!r} (position {pos})"]
            tip += [f"{i:>2}. {c.text!r}  {math.exp(c.logprob):.2%}" for i, c in enumerate(cell, 1)]
            cells.append(f'<td class="mlxnb-lens-cell" data-prob="{p:.4f}" '
                         f'title="{_esc(chr(10).join(tip))}" style="background:'
                         f'{probability_color(p)};white-space:pre;padding:1px 4px;'
                         f'font-family:monospace">{_esc(shown(top.text, 8))}</td>')
        rows.append(f'<tr><th style="color:#555;text-align:right">{name}</th>{"".join(cells)}</tr>')
    return (f'<div class="mlxnb-lens"><div style="font-size:85%;color:#555">logit lens: each cell '
            f"is the top next token when the residual stream after that layer is read out through "
            f"the final norm and the unembedding (shade = probability; hover for the top "
            f"{len(lens.grid[0][0])}). Final top: <b>{_esc(repr(lens.final_top))}</b></div>"
            f'<table style="border-collapse:collapse;font-size:80%"><tr><th></th>{head}</tr>'
            f"{''.join(rows)}</table></div>")


def _head_svg(att: Attention, h: int, cell: float, titles: bool, labels: bool) -> str:
    n = len(att.tokens)
    pad = 70 if labels else 0
    size = n * cell
    rects = []
    for i, row in enumerate(att.weights[h]):
        for j, w in enumerate(row):
            if w < 0.01 and not titles:
                continue
            tip = (f"<title>{_esc(repr(att.pieces[i]))} → {_esc(repr(att.pieces[j]))}: "
                   f"{w:.3f}</title>" if titles else "")
            rects.append(f'<rect x="{pad + j * cell:.1f}" y="{pad + i * cell:.1f}" '
                         f'width="{cell:.1f}" height="{cell:.1f}" fill="#1f5fbf" '
                         f'fill-opacity="{w:.3f}">{tip}</rect>')
    text = []
    if labels:
        for i, piece in enumerate(att.pieces):
            label = _esc(shown(piece, 9))
            text.append(f'<text x="{pad - 3}" y="{pad + (i + 0.7) * cell:.1f}" '
                        f'text-anchor="end" font-size="{min(11, cell * 0.8):.0f}">{label}</text>')
            x, y = pad + (i + 0.7) * cell, pad - 3
            text.append(f'<text x="{x:.1f}" y="{y}" transform="rotate(-60 {x:.1f} {y})" '
                        f'font-size="{min(11, cell * 0.8):.0f}">{label}</text>')
    total = pad + size
    return (f'<svg class="mlxnb-attention-head" data-head="{h}" xmlns="http://www.w3.org/2000/svg"'
            f' width="{total:.0f}" height="{total:.0f}" viewBox="0 0 {total:.0f} {total:.0f}" overflow="visible">'
            f'<rect x="{pad}" y="{pad}" width="{size:.1f}" height="{size:.1f}" fill="#fafafa" '
            f'stroke="#ccc"/>{"".join(rects)}{"".join(text)}</svg>')


def attention_html(att: Attention) -> str:
    n = len(att.tokens)
    small = max(1.0, min(6.0, 96 / max(n, 1))) if n else _SMALL_CELL
    multiples = "".join(
        f'<figure style="display:inline-block;margin:2px 6px;text-align:center">'
        f'{_head_svg(att, h, small, False, False)}<figcaption style="font-size:75%">head {h}'
        f"</figcaption></figure>" for h in range(att.heads))
    big = att.head_shown if att.head_shown is not None else 0
    cell = max(4.0, min(_LARGE_CELL_MAX, 480 / max(n, 1)))
    return (f'<div class="mlxnb-attention"><div style="font-size:85%;color:#555">attention of '
            f"block {att.layer} of {att.num_layers}: row = the token attending, column = the token "
            f"attended to (darker = more weight; each row sums to 1; hover a cell in the large "
            f"map)</div><div>{multiples}</div><div><b>head {big}</b></div>"
            f"{_head_svg(att, big, cell, True, True)}</div>")

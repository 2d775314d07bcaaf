"""Plain-text renderings of the look-inside results (mlx_notebook/inside.py), for a terminal
and ``text/plain``; typed loosely so this module imports nothing above it."""

from __future__ import annotations

import math
from typing import Any

__all__ = ["score_text", "choice_text", "lens_text", "attention_text", "shown"]

_SHADES = " ░▒▓█"


def shown(piece: str, width: int | None = None) -> str:
    """A token's text made visible (spaces as ␣, newlines as ↵), cut to ``width``."""
    text = piece.replace(" ", "␣").replace("\n", "↵").replace("\t", "⇥") or "∅"
    if width is not None and len(text) > width:
        text = text[:width - 1] + "…"
    return text


def score_text(score: Any) -> str:
    lines = [f"score of {len(score.tokens)} tokens: total logprob {score.total:.3f}, "
             f"mean {score.mean:.3f}, perplexity {score.perplexity:.2f}"]
    for t in score.tokens:
        if t.logprob is None:
            lines.append(f"  {shown(t.text, 16):<16}  (first token: nothing precedes it)")
            continue
        alts = ", ".join(f"{shown(c.text, 10)} {math.exp(c.logprob):.0%}" for c in t.top[:3])
        lines.append(f"  {shown(t.text, 16):<16} p={math.exp(t.logprob):6.1%}  rank {t.rank:<5}"
                     + (f"  top: {alts}" if alts else ""))
    return "\n".join(lines)


def choice_text(choice: Any) -> str:
    best_mean = choice.best_normalized
    lines = [f"{len(choice.ranked)} options after {shown(choice.prompt[-40:])!s}: best "
             f"{choice.best!r} (per token: {best_mean!r})",
             f"  {'rank':<5}{'option':<24}{'total':>9}{'per token':>11}{'tokens':>8}"]
    for r in choice.ranked:
        lines.append(f"  {r.rank:<5}{shown(r.text, 23):<24}{r.total:>9.3f}{r.mean:>11.3f}"
                     f"{len(r.score.scored):>8}")
    return "\n".join(lines)


def lens_text(lens: Any, width: int = 9) -> str:
    head = "layer".ljust(7) + "".join(shown(lens.pieces[p], width - 1).ljust(width)
                                      for p in lens.positions)
    lines = [f"logit lens: {len(lens.layers)} layers x {len(lens.positions)} positions "
             f"(each cell: the top next token, shade = probability)", head]
    for layer, row in zip(lens.layers, lens.grid, strict=True):
        name = "emb" if layer == 0 else ("out" if layer == lens.num_layers else str(layer))
        cells = []
        for cell in row:
            p = math.exp(cell[0].logprob)
            shade = _SHADES[min(4, int(p * 5))]
            cells.append((shade + shown(cell[0].text, width - 2)).ljust(width))
        lines.append(name.ljust(7) + "".join(cells))
    lines.append(f"final top: {lens.final_top!r}")
    return "\n".join(lines)


def attention_text(att: Any) -> str:
    head = att.head_shown if att.head_shown is not None else 0
    lines = [f"attention of block {att.layer} ({att.heads} heads), head {head}: row i = where "
             "token i looks (shade = weight)"]
    for i, row in enumerate(att.weights[head]):
        strongest = max(range(len(row)), key=lambda j: row[j])
        bar = "".join(_SHADES[min(4, int(w * 5))] for w in row)
        lines.append(f"  {i:>3} {shown(att.pieces[i], 10):<10} {bar:<{len(att.tokens)}}  → "
                     f"{shown(att.pieces[strongest], 10)} {row[strongest]:.0%}")
    return "\n".join(lines)

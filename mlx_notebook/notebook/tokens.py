"""Tokens as they really are: byte-level pieces grouped under the characters they make up.

>>> groups = token_groups(mn.tokenize("你好!"))   # doctest: +SKIP
>>> [(g.text, g.labels) for g in groups]          # doctest: +SKIP
[('你好', ('<E4 BD>', '<A0 E5 A5 BD>')), ('!', ('!',))]

A byte-level tokenizer may cut a character (CJK, emoji) between tokens, so such a
token cannot be decoded alone: its piece is only U+FFFD. Each token is shown by
its bytes (``<E4 BD>``) instead, and the run of tokens that together make whole
characters is one group, labelled with those characters. ``%mlx tokenize``, the
dry-run preview and the next-token explorer all use these labels.
"""

from __future__ import annotations

import codecs
import html
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..protocol import TokenizeResponse

__all__ = ["TokenGroup", "byte_label", "is_whole", "pieces_report", "token_groups", "tokens_html",
           "tokens_text"]

REPLACEMENT = "\ufffd"
_COLORS = ("#d7e8fc", "#fde2c4", "#d5f2d5", "#f6d5f2")


def byte_label(raw: bytes) -> str:
    """``<E4 BD>``: how a token that is not whole characters is shown."""
    return "<" + " ".join(f"{b:02X}" for b in raw) + ">"


def is_whole(raw: bytes) -> bool:
    """True when ``raw`` is whole UTF-8 characters (the token can be shown as text)."""
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


@dataclass(frozen=True)
class TokenGroup:
    """One or more tokens that together make up ``text`` (whole characters)."""

    text: str
    tokens: tuple[int, ...]
    labels: tuple[str, ...]  # each token's piece, or its bytes when it holds part of a character
    cut: tuple[bool, ...]  # per token: True when it is not whole characters (label is bytes)
    start: int  # index of the group's first token

    @property
    def plain(self) -> bool:
        """One token of whole characters: shown as its piece, with no group around it."""
        return len(self.tokens) == 1 and not self.cut[0]


def _bytes_of(tok: TokenizeResponse) -> list[bytes]:
    raw = [bytes.fromhex(h) for h in tok.token_bytes] if tok.token_bytes else []
    if len(raw) != len(tok.tokens):  # a runner that predates token_bytes: the pieces
        raw = [p.encode("utf-8") for p in tok.pieces]
    return raw


def token_groups(tok: TokenizeResponse) -> list[TokenGroup]:
    """The tokens of ``tok`` in groups that decode to whole characters, in order."""
    pieces = list(tok.pieces) + [""] * (len(tok.tokens) - len(tok.pieces))
    raw = _bytes_of(tok)
    groups: list[TokenGroup] = []
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    text, start = "", 0
    ids: list[int] = []
    names: list[str] = []
    cut: list[bool] = []
    for i, (tid, piece, data) in enumerate(zip(tok.tokens, pieces, raw, strict=False)):
        if not ids:
            start = i
        whole = is_whole(data) and REPLACEMENT not in piece
        ids.append(tid)
        cut.append(not whole)
        names.append(piece if whole else byte_label(data))
        text += decoder.decode(data)
        if decoder.getstate()[0] == b"":  # no character left half-made: the group ends here
            groups.append(TokenGroup(text, tuple(ids), tuple(names), tuple(cut), start))
            text, ids, names, cut = "", [], [], []
    if ids:  # the text ends inside a character
        text += decoder.decode(b"", final=True)
        groups.append(TokenGroup(text, tuple(ids), tuple(names), tuple(cut), start))
    return groups


def _shown(text: str) -> str:
    return repr(text)


def tokens_text(tok: TokenizeResponse) -> str:
    """One token a line: id and its piece (repr); a cut character's tokens by their bytes.

    ``  231  <E4 BD>        ┐`` / ``  160  <A0>           ┘ '你'``
    """
    groups = token_groups(tok)
    width = max((len(str(t)) for t in tok.tokens), default=1)
    lines = [f"{len(tok.tokens)} tokens"]
    for g in groups:
        if g.plain:
            lines.append(f"{g.tokens[0]:>{width}}  {_shown(g.labels[0])}")
            continue
        shown = [label if c else _shown(label) for label, c in zip(g.labels, g.cut, strict=True)]
        label_width = max(len(label) for label in shown)
        for n, (tid, label) in enumerate(zip(g.tokens, shown, strict=True)):
            last = n == len(g.tokens) - 1
            mark = ("─" if len(g.tokens) == 1 else "┘") if last else ("┐" if n == 0 else "│")
            tail = f" {_shown(g.text)}" if last else ""
            lines.append(f"{tid:>{width}}  {label.ljust(label_width)} {mark}{tail}")
    return "\n".join(lines)


def _box(i: int, tid: int, label: str, title: str) -> str:
    shown = html.escape(label.replace("\n", "\u21b5\n")) or "&#8203;"
    return (f'<span title="{html.escape(title)}" style="background:{_COLORS[i % 4]};color:#000;'
            f'white-space:pre;border-radius:3px;padding:0 1px;margin-right:1px">{shown}</span>')


def tokens_html(tok: TokenizeResponse) -> str:
    """The pieces side by side in alternating boxes (ids in the tooltip); a cut character
    stands above the byte boxes of its tokens."""
    spans = []
    for g in token_groups(tok):
        boxes = [_box(g.start + n, tid, label, str(tid))
                 for n, (tid, label) in enumerate(zip(g.tokens, g.labels, strict=True))]
        if g.plain:
            spans.append(boxes[0])
            continue
        spans.append(
            '<span class="mlxnb-char" style="display:inline-flex;flex-direction:column;'
            'align-items:center;vertical-align:top;border:1px dashed #999;border-radius:3px;'
            f'margin-right:1px;padding:0 1px"><span title="{len(g.tokens)} tokens make up '
            f'{html.escape(repr(g.text))}">{html.escape(g.text)}</span>'
            f'<span style="font-size:80%">{"".join(boxes)}</span></span>')
    return (f"<div><b>{len(tok.tokens)} tokens</b></div>"
            f'<div style="font-family:monospace;line-height:1.8">{"".join(spans)}</div>')


def pieces_report(tok: TokenizeResponse) -> list[str]:
    """The pieces for a ``|``-separated line: a cut character as ``你=<E4 BD><A0>``."""
    out: list[str] = []
    for g in token_groups(tok):
        if g.plain:
            out.append(g.labels[0])
        else:
            out.append(f"{g.text}={''.join(g.labels)}")
    return out

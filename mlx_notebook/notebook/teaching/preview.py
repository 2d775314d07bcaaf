"""Dry run: the exact text the model would see (after the chat template) and its tokens.

>>> p = preview_prompt("What is 2+2?", system="Be brief.")   # doctest: +SKIP
>>> p.token_count, p.text                                     # doctest: +SKIP

Nothing is generated: the runner's tokenize endpoint templates and tokenizes the
prompt exactly as a completion request would, so ``token_count`` is the
``prompt_tokens`` the generation would report.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ... import api
from ...protocol import ChatMessage, SamplingOptions, TokenizeResponse
from ..display import in_kernel
from ..tokens import pieces_report, token_groups

if TYPE_CHECKING:
    from ...control.connection import RunnerConnection

__all__ = ["PromptPreview", "preview_prompt", "show_preview"]

_SHADES = ("#e8f0fe", "#fde8e8")


@dataclass(frozen=True)
class PromptPreview:
    """The prompt as sent: templated text, token ids and the text piece of each."""

    text: str
    tokens: tuple[int, ...]
    pieces: tuple[str, ...]
    model: str
    raw: bool
    token_bytes: tuple[str, ...] = ()  # each token's bytes (hex), for characters cut in two

    @property
    def token_count(self) -> int:
        return len(self.tokens)

    def __str__(self) -> str:
        return self.text

    def tokenized(self) -> TokenizeResponse:
        return TokenizeResponse(tokens=list(self.tokens), pieces=list(self.pieces), text=self.text,
                                token_bytes=list(self.token_bytes))

    def text_report(self) -> str:
        """Plain text: header, the templated prompt, then the pieces split by ``|``."""
        kind = "raw prompt" if self.raw else "after the chat template"
        return (f"{self.model}: {self.token_count} prompt tokens ({kind})\n"
                f"{self.text}\n--- tokens ---\n" + "|".join(pieces_report(self.tokenized())))

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(self.text_report())

    def _repr_html_(self) -> str:
        spans = []
        for g in token_groups(self.tokenized()):
            boxes = "".join(
                f'<span title="#{g.start + n} id {tid}" style="background:{_SHADES[(g.start + n) % 2]};'
                f'border-right:1px solid #999;white-space:pre-wrap">'
                f"{html.escape(label.replace(chr(10), '↵' + chr(10)))}</span>"
                for n, (tid, label) in enumerate(zip(g.tokens, g.labels, strict=True)))
            if not g.plain:  # a character cut between tokens: it stands above their bytes
                boxes = (f'<span class="mlxnb-char" title="{len(g.tokens)} tokens make up '
                         f'{html.escape(repr(g.text))}" style="display:inline-flex;'
                         f'flex-direction:column;align-items:center;vertical-align:top">'
                         f'<span>{html.escape(g.text)}</span>'
                         f'<span style="font-size:80%">{boxes}</span></span>')
            spans.append(boxes)
        kind = "raw prompt" if self.raw else "after the chat template"
        return (f'<div class="mlxnb-preview"><b>{self.token_count} prompt tokens</b> '
                f"({html.escape(self.model)}, {kind}; nothing generated)"
                f'<pre style="white-space:pre-wrap;background:#f7f7f7;padding:6px">'
                f"{html.escape(self.text)}</pre>"
                f'<div style="font-family:monospace;line-height:1.8">{"".join(spans)}</div></div>')


def preview_prompt(prompt: str, *, model: str | RunnerConnection | None = None,
                   system: str | None = None, raw: bool = False,
                   messages: Sequence[ChatMessage] | None = None) -> PromptPreview:
    """What ``generate(prompt, system=..., raw=...)`` would send, without generating."""
    # The request generate() would send (options do not change the prompt's tokens).
    request = api.completion_request(prompt, SamplingOptions(), system=system, raw=raw,
                                     messages=messages)
    client = api.get_client(model)
    if request.messages is None:
        tok = client.tokenize(request.prompt)
    else:
        tok = client.tokenize(messages=list(request.messages))
    return PromptPreview(text=tok.text, tokens=tuple(tok.tokens), pieces=tuple(tok.pieces),
                         model=client.name, raw=raw, token_bytes=tuple(tok.token_bytes))


def show_preview(prompt: str, **kwargs: Any) -> PromptPreview:
    """``--dry-run``: show the preview in the cell (text in a terminal) and return it."""
    result = preview_prompt(prompt, **kwargs)
    if in_kernel():
        from IPython.display import display

        display({"text/html": result._repr_html_(), "text/plain": result.text_report()},
                raw=True)
    else:
        print(result.text_report())
    return result

"""``%mlx cache``: prompt caches on disk, saved once and loaded after a restart.

Usage::

    %%mlx cache save manual          # the cell is the document (taken verbatim)
    ...a long document...

    %mlx cache load manual           # a later kernel: the document's KV cache is in the runner
    %%mlx chat                       # the conversation starts with the document
    What does it say about safety?

    %mlx cache ls                    # name, model, tokens, bytes, created
    %mlx cache rm manual

``save`` caches the cell as the system message of a conversation, so after ``load``
``%%mlx chat`` asks about it and reads only the question; ``--raw`` caches the cell's
raw tokens instead (for ``%%mlx generate --raw`` prompts that start with it). Each
action is one call of the API (mlx_notebook/prompt_cache_api.py) and a short view.
"""

from __future__ import annotations

import argparse
import html
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from IPython.core.error import UsageError

from .. import prompt_cache_api
from ..errors import InvalidArgumentError
from ..prompt_cache_protocol import SavedPromptCache
from ..protocol import ChatMessage
from ..units import format_bytes
from .display import show

if TYPE_CHECKING:
    from .magics import MLXMagics

__all__ = ["cache_arguments", "cache_magic", "saved_line", "loaded_line", "caches_table",
           "caches_html"]

ACTIONS = ("save", "load", "ls", "rm")
USAGE = ("%%mlx cache save NAME [--raw] [-m MODEL] (cell = document)  |  "
         "%mlx cache load NAME [-m MODEL]  |  %mlx cache ls  |  %mlx cache rm NAME")


def cache_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=ACTIONS, help="save (the cell), load, ls or rm")
    p.add_argument("name", nargs="?", help="the cache's name (letters, digits, . _ -)")
    p.add_argument("-m", "--model", metavar="NAME",
                   help="which loaded model (default: the current one)")
    p.add_argument("--raw", action="store_true",
                   help="save: cache the cell's raw tokens, not a conversation's system message")
    p.add_argument("-o", "--output", metavar="VAR", help="store the result in VAR")


def cache_magic(magics: MLXMagics, args: argparse.Namespace, cell: str | None) -> None:
    sub = f"%mlx cache {args.action}"
    if args.action != "save" and cell is not None:
        raise UsageError(f"{sub} takes no cell body; use it on one line")
    if args.action in ("save", "load", "rm") and not args.name:
        raise UsageError(f"{sub} needs a NAME")
    if args.action == "ls" and args.name:
        raise UsageError(f"{sub} takes no NAME")
    if args.output and not args.output.isidentifier():
        raise UsageError(f"{sub}: -o needs a variable name, got {args.output!r}")
    if args.raw and args.action != "save":
        raise UsageError(f"{sub}: --raw goes with save")
    try:
        result = _run(args, cell, sub)
    except InvalidArgumentError as exc:
        raise UsageError(f"{sub}: {exc}") from exc
    if args.output:
        magics.shell.user_ns[args.output] = result


def _run(args: argparse.Namespace, cell: str | None, sub: str) -> object:
    if args.action == "save":
        text = (cell or "").rstrip("\n") if args.raw else (cell or "").strip()
        if not text:
            raise UsageError(f"%{sub}: the cell is empty; write the document below the magic")
        prompt = text if args.raw else [ChatMessage("system", text)]
        saved = prompt_cache_api.cache_prompt(prompt, name=args.name, model=args.model)
        show(saved_line(saved))
        return saved
    if args.action == "load":
        loaded = prompt_cache_api.load_prompt_cache(args.name, args.model)
        show(loaded_line(loaded))
        return loaded
    if args.action == "rm":
        prompt_cache_api.remove_prompt_cache(args.name)
        show(f"Removed prompt cache {args.name!r}.")
        return None
    rows = prompt_cache_api.prompt_caches()
    show(caches_table(rows), caches_html(rows))
    return rows


def saved_line(saved: SavedPromptCache) -> str:
    line = (f"Saved prompt cache {saved.name!r}: {saved.tokens} tokens of {saved.model} "
            f"({format_bytes(saved.bytes)}). A later kernel: %mlx cache load {saved.name}")
    if not saved.extends:
        line += ("\nThis model's chat template renders the next turn differently: later "
                 "prompts reuse the longest common prefix of its tokens.")
    if saved.evicted:
        line += ("\nRemoved to keep the folder's byte budget (least recently used first): "
                 + ", ".join(saved.evicted))
    return line


def loaded_line(loaded: SavedPromptCache) -> str:
    ask = ("%%mlx chat continues its conversation" if loaded.kind == "messages" else
           "prompts that start with its text (%%mlx generate --raw) read only what follows")
    line = (f"Loaded prompt cache {loaded.name!r} into {loaded.model}: {loaded.tokens} tokens; "
            f"{ask}.")
    if not loaded.in_memory:
        line += ("\nIt is larger than the runner's in-memory prompt cache, which did not keep "
                 "it: load the model with a larger prompt cache.")
    return line


def _when(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(seconds))


def _cells(r: SavedPromptCache) -> tuple[str, ...]:
    return (r.name, r.model, str(r.tokens), format_bytes(r.bytes), _when(r.created), r.preview)


_HEAD = ("NAME", "MODEL", "TOKENS", "BYTES", "CREATED", "STARTS WITH")


def caches_table(rows: Sequence[SavedPromptCache]) -> str:
    if not rows:
        return "No prompt caches saved: %%mlx cache save NAME (the cell is the document)"
    body = [_cells(r) for r in rows]
    widths = [max(len(row[i]) for row in (_HEAD, *body)) for i in range(len(_HEAD))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
                     for row in (_HEAD, *body))


def caches_html(rows: Sequence[SavedPromptCache]) -> str | None:
    if not rows:
        return None
    cells = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in _cells(r)) + "</tr>"
                    for r in rows)
    return ("<table class='mlxnb-caches'><thead><tr>"
            + "".join(f"<th>{h.lower()}</th>" for h in _HEAD)
            + f"</tr></thead><tbody>{cells}</tbody></table>")

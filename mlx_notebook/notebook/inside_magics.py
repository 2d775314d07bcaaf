"""The look-inside subcommands: ``%%mlx score``, ``%%mlx choose``, ``%mlx lens``, ``%mlx attention``.

Usage::

    %%mlx score --context "The capital of France is"
     Paris, a city of two million people.

    %%mlx choose --options "Paris,Rome,Berlin"
    The capital of France is

    %mlx lens The capital of France is --positions 4 --top-k 3
    %mlx attention The cat sat on the mat --layer 3 --head 1

Each is parse -> one call of :mod:`mlx_notebook.inside` -> its HTML view (text in a
terminal); ``-o VAR`` keeps the result object. The grammar (one function a
subcommand) and the handlers live here; the table in :mod:`.magics` names them.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from IPython.core.error import UsageError

from .. import inside
from ..errors import InvalidArgumentError

if TYPE_CHECKING:
    from .magics import MLXMagics

__all__ = ["score_arguments", "choose_arguments", "lens_arguments", "attention_arguments",
           "score_magic", "choose_magic", "lens_magic", "attention_magic", "parse_indices",
           "join_option"]


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("-m", "--model", metavar="NAME", help="which loaded model (default: the current one)")
    p.add_argument("-o", "--output", metavar="VAR", help="store the result object in VAR")


def score_arguments(p: argparse.ArgumentParser) -> None:
    _common(p)
    p.add_argument("--context", metavar="TEXT", help="text before the scored one (not scored)")
    p.add_argument("--top-k", type=int, default=5, metavar="K",
                   help="alternatives shown per token on hover (0-20, default 5)")


def choose_arguments(p: argparse.ArgumentParser) -> None:
    _common(p)
    p.add_argument("--options", required=True, metavar="A,B,C",
                   help="comma-separated continuations; each is stripped and follows the prompt "
                        "after one space (unless the prompt ends in whitespace)")


def _text_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("text", nargs="*", help="the text (or write it in the cell with %%mlx)")
    _common(p)


def lens_arguments(p: argparse.ArgumentParser) -> None:
    _text_arguments(p)
    p.add_argument("--positions", metavar="N|I,J",
                   help="the last N tokens (default 16), or token indices (negative from the end)")
    p.add_argument("--layers", metavar="I,J",
                   help="layers to read (0: the embeddings, negative from the end; default all)")
    p.add_argument("--top-k", type=int, default=5, metavar="K",
                   help="candidates per cell on hover (1-20, default 5)")


def attention_arguments(p: argparse.ArgumentParser) -> None:
    _text_arguments(p)
    p.add_argument("--layer", type=int, required=True, metavar="L",
                   help="the block (0-based, negative from the end)")
    p.add_argument("--head", type=int, metavar="H", help="the head drawn large (default 0)")


def parse_indices(value: str, flag: str) -> list[int]:
    try:
        return [int(part) for part in value.replace(" ", "").split(",") if part]
    except ValueError:
        raise UsageError(f"{flag}: expected comma-separated integers, got {value!r}") from None


def join_option(prompt: str, option: str) -> str:
    """The option as the continuation: after one space, unless the prompt ends in whitespace."""
    option = option.strip()
    return option if not prompt or prompt[-1].isspace() else " " + option


def _show(result: Any) -> None:
    from .display import show

    show(str(result), result._repr_html_())


def _store(magics: MLXMagics, args: argparse.Namespace, result: Any) -> None:
    if args.output:
        if not args.output.isidentifier():
            raise UsageError(f"-o needs a variable name, got {args.output!r}")
        magics.shell.user_ns[args.output] = result


def _text(args: argparse.Namespace, cell: str | None, sub: str) -> str:
    text = cell.strip("\n") if cell is not None else " ".join(args.text)
    if cell is not None and args.text:
        raise UsageError(f"%%mlx {sub}: give the text in the cell or on the line, not both")
    if not text.strip():
        raise UsageError(f"%mlx {sub}: give a TEXT (or write it in a cell below %%mlx {sub})")
    return text


def _refused(sub: str, exc: InvalidArgumentError) -> UsageError:
    flag = {"top_k": "--top-k", "positions": "--positions", "layers": "--layers",
            "layer": "--layer", "head": "--head", "options": "--options",
            "context": "--context"}.get(exc.field or "", "")
    return UsageError(f"%mlx {sub}: {flag + ': ' if flag else ''}{exc}")


def score_magic(magics: MLXMagics, args: argparse.Namespace, cell: str | None) -> None:
    assert cell is not None  # the table says: a cell is required
    text = cell.strip("\n")
    try:
        inside.check_score_args(text, args.context, args.top_k)
    except InvalidArgumentError as exc:
        raise _refused("score", exc) from exc
    result = inside.score(text, context=args.context, top_k=args.top_k, model=args.model)
    _store(magics, args, result)
    _show(result)


def choose_magic(magics: MLXMagics, args: argparse.Namespace, cell: str | None) -> None:
    assert cell is not None
    prompt = cell.strip("\n")
    options = [join_option(prompt, o) for o in args.options.split(",") if o.strip()]
    try:
        inside.check_choose_args(prompt, options)
    except InvalidArgumentError as exc:
        raise _refused("choose", exc) from exc
    result = inside.choose(prompt, options, model=args.model)
    _store(magics, args, result)
    _show(result)


def lens_magic(magics: MLXMagics, args: argparse.Namespace, cell: str | None) -> None:
    text = _text(args, cell, "lens")
    positions: int | list[int] | None = None
    if args.positions is not None:
        listed = parse_indices(args.positions, "--positions")
        single = "," not in args.positions and len(listed) == 1 and listed[0] > 0
        positions = listed[0] if single else listed
    layers = parse_indices(args.layers, "--layers") if args.layers is not None else None
    try:
        inside.check_lens_args(text, positions, layers, args.top_k)
    except InvalidArgumentError as exc:
        raise _refused("lens", exc) from exc
    result = inside.lens(text, positions=positions, layers=layers, top_k=args.top_k,
                         model=args.model)
    _store(magics, args, result)
    _show(result)


def attention_magic(magics: MLXMagics, args: argparse.Namespace, cell: str | None) -> None:
    text = _text(args, cell, "attention")
    try:
        inside.check_attention_args(text, args.layer, args.head)
        result = inside.attention(text, layer=args.layer, head=args.head, model=args.model)
    except InvalidArgumentError as exc:
        raise _refused("attention", exc) from exc
    _store(magics, args, result)
    _show(result)

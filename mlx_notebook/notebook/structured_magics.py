"""``--schema``/``--json``/``--choice``/``--regex`` on ``%%mlx generate``/``chat``, and ``%%mlx map``.

>>> %%mlx generate --schema Paper -o p        # doctest: +SKIP
... Extract: "Attention is all you need (2017), freely on arXiv."
>>> %%mlx map --over df --choice "yes,no" -o out   # doctest: +SKIP
... Is {title!r} about language models? Answer yes or no.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from IPython.core.error import UsageError

from .. import api
from ..errors import InvalidArgumentError
from ..structured import output_spec

if TYPE_CHECKING:
    from .magics import MLXMagics

__all__ = ["map_magic", "output_kwargs"]

FLAG_NAMES = {"schema": "--schema", "json": "--json", "choices": "--choice", "regex": "--regex"}


def _from_namespace(magics: MLXMagics, name: str, flag: str, sub: str) -> Any:
    if not name.isidentifier():
        raise UsageError(f"%%mlx {sub}: {flag} needs a variable name, got {name!r}")
    if name not in magics.shell.user_ns:
        raise UsageError(f"%%mlx {sub}: {flag} {name}: no such variable (define it first)")
    return magics.shell.user_ns[name]


def output_kwargs(magics: MLXMagics, args: argparse.Namespace, sub: str) -> dict[str, Any]:
    """The API's structured-output keywords from the flags, checked as the API checks them."""
    schema = _from_namespace(magics, args.schema, "--schema", sub) if args.schema else None
    kwargs = {"schema": schema, "json": args.json, "choices": args.choice, "regex": args.regex}
    try:
        output_spec(**kwargs, names=FLAG_NAMES)
    except InvalidArgumentError as exc:
        raise UsageError(f"%%mlx {sub}: {exc}") from None
    return kwargs


def map_magic(magics: MLXMagics, args: argparse.Namespace, cell: str | None) -> None:
    """``%%mlx map --over ROWS [-o VAR]``: the cell is the template, ``{column}`` per row."""
    assert cell is not None  # the table says: a cell is required
    template = cell.strip()
    if not template:
        raise UsageError("%%mlx map: the cell is empty; write the prompt template below the magic")
    rows = _from_namespace(magics, args.over, "--over", "map")
    sampling = magics._sampling(args, "map")
    output = output_kwargs(magics, args, "map")
    try:
        result = api.map(template, rows, model=args.model, system=args.system,
                         concurrency=args.concurrency, show=True, **output, **sampling)
    except InvalidArgumentError as exc:
        raise UsageError(f"%%mlx map: {exc}") from None
    if args.output:
        magics.shell.user_ns[args.output] = result

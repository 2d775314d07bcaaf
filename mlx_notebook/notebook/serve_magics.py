"""``%mlx serve``: where the loaded model answers OpenAI's API, for other tools.

Usage::

    %mlx serve                 # the current model's base URL and a recipe (never the token)
    %mlx serve -m fast --export   # and set OPENAI_BASE_URL / OPENAI_API_KEY in this kernel
    %mlx serve --port 8080        # one base URL for every loaded model (a router process)

One call of :func:`mlx_notebook.serving.serve`; the printed text names the
environment variables to set, never the token (cell output is saved with the notebook).
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from .. import serving

if TYPE_CHECKING:
    from .magics import MLXMagics

__all__ = ["serve_arguments", "serve_magic"]


def serve_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-m", "--model", metavar="NAME", help="which loaded model (default: the current one)")
    p.add_argument("--port", type=int, metavar="N",
                   help="start a router on loopback port N (0: any) that serves every loaded "
                        "model under one base URL")
    p.add_argument("--export", action="store_true",
                   help=f"set {serving.BASE_URL_ENV} and {serving.API_KEY_ENV} in this kernel "
                        "(for tools running in it)")
    p.add_argument("-o", "--output", metavar="VAR",
                   help="store the ServeInfo (base_url, token) in VAR")


def serve_magic(magics: MLXMagics, args: argparse.Namespace, cell: str | None) -> None:
    info = serving.serve(args.model, port=args.port, export=args.export)
    if args.output:
        magics.shell.user_ns[args.output] = info
    text = info.recipe()
    if args.export:
        text += f"\nSet {serving.BASE_URL_ENV} and {serving.API_KEY_ENV} in this kernel."
    print(text)

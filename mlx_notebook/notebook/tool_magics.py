"""``%%mlx chat --tools a,b [--confirm] [--max-tool-rounds N]``: names from the namespace."""

from __future__ import annotations

import argparse
from typing import Any

from IPython.core.error import UsageError

__all__ = ["tool_kwargs"]


def tool_kwargs(namespace: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """``tools=[...]`` (and the loop's settings) for ``api.chat``; UsageError for a bad name."""
    if not args.tools:
        if args.confirm:
            raise UsageError("%%mlx chat: --confirm goes with --tools")
        return {}
    tools = []
    for name in (n.strip() for n in args.tools.split(",")):
        fn = namespace.get(name)
        if not name or not callable(fn):
            raise UsageError(f"%%mlx chat: --tools: {name!r} is not a function in the notebook")
        tools.append(fn)
    if args.max_tool_rounds < 0:
        raise UsageError("%%mlx chat: --max-tool-rounds must be >= 0")
    return {"tools": tools, "confirm": args.confirm, "max_tool_rounds": args.max_tool_rounds}

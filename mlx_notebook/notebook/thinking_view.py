"""The model's thinking and its tool calls in a cell: collapsible, quieter than the answer.

The thinking is a ``<details>`` block above the answer in the same output (open
while it streams, closed once the answer starts); a tool call is a ``<details>``
line (function, arguments, result or error). Both carry a ``text/plain`` rendering,
which a terminal and a saved notebook read without the HTML.
"""

from __future__ import annotations

import html
import json
from typing import Any

__all__ = ["THINKING_CLASS", "TOOL_CALL_CLASS", "thinking_bundle", "tool_call_bundle"]

THINKING_CLASS = "mlx-thinking"
TOOL_CALL_CLASS = "mlx-tool-call"
_QUIET = "opacity:.6;font-size:.9em;white-space:pre-wrap;border-left:2px solid #aaa;padding-left:.6em"


def thinking_bundle(thinking: str, answer: str, *, open_: bool) -> dict[str, str]:
    """The thinking block above the answer, as HTML and as plain text."""
    plain = "\n".join(f"> {line}" for line in thinking.strip().splitlines()) or ">"
    label = "Thinking…" if open_ else f"Thought ({len(thinking.split())} words)"
    block = (f'<details class="{THINKING_CLASS}"{" open" if open_ else ""}>'
             f"<summary style=\"opacity:.7\">{label}</summary>"
             f'<div style="{_QUIET}">{html.escape(thinking.strip())}</div></details>')
    body = f'<div style="white-space:pre-wrap">{html.escape(answer)}</div>'
    return {"text/html": block + body, "text/plain": f"[thinking]\n{plain}\n\n{answer}"}


def tool_call_bundle(name: str, arguments: dict[str, Any], result: str, *,
                     error: bool) -> dict[str, str]:
    """One call: ``get_weather({"city": "Paris"}) -> sunny`` (collapsible details)."""
    args = json.dumps(arguments, ensure_ascii=False)
    arrow = "raised" if error else "->"
    short = result if len(result) <= 80 else result[:77] + "..."
    plain = f"[tool] {name}({args}) {arrow} {result}"
    summary = html.escape(f"🔧 {name}({args}) {arrow} {short}")
    detail = html.escape(f"arguments: {json.dumps(arguments, indent=2, ensure_ascii=False)}\n"
                         f"{'error' if error else 'result'}: {result}")
    return {"text/html": f'<details class="{TOOL_CALL_CLASS}" data-tool="{html.escape(name)}">'
                         f'<summary style="opacity:.8">{summary}</summary>'
                         f'<pre style="{_QUIET}">{detail}</pre></details>',
            "text/plain": plain}

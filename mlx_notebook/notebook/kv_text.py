"""The KV cache of a runner's status in one line, for the status widget and text views."""

from __future__ import annotations

from ..protocol import Status
from ..units import format_bytes

__all__ = ["kv_text"]


def kv_text(status: Status) -> str:
    """``KV 8-bit from 256 tokens: 3.2 MiB in 2 requests (1.6 MiB, 1.6 MiB), 12 MiB kept``.

    Empty for a full-precision runner that holds no KV cache (nothing to say).
    """
    kv = status.kv
    if kv.format == "fp" and not kv.bytes and not kv.prompt_cache_bytes:
        return ""
    text = f"KV {kv.format}"
    if kv.requests:
        each = ", ".join(f"{format_bytes(r.bytes)} for {r.tokens} tokens" for r in kv.requests)
        noun = "request" if len(kv.requests) == 1 else "requests"
        text += f": {format_bytes(kv.bytes)} in {len(kv.requests)} {noun} ({each})"
    if kv.prompt_cache_bytes:
        text += f"{',' if kv.requests else ':'} {format_bytes(kv.prompt_cache_bytes)} kept"
    return text

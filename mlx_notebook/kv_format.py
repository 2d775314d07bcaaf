"""The KV-cache format a runner is loaded with: quantized (``kv_bits``) and/or bounded (``max_kv``).

Shared by both sides (no MLX): the API checks it, the manager passes it to the
runner as flags and sizes the memory pre-flight with it, the runner builds its
caches from it (``runner/kv_cache.py``).

One format per runner, not per request: every request may join the batch (one
``BatchGenerator``, one ``max_kv_size``) and lends its cache to later requests
through one prompt cache, so they all hold the same kind of cache.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from .errors import InvalidArgumentError

__all__ = ["KvFormat", "FULL_PRECISION", "KV_BITS", "KV_GROUP_SIZES", "DEFAULT_KV_START", "MIN_MAX_KV"]

# 4 and 8 only: mlx-lm's QuantizedKVCache sizes its buffers for bit widths that
# divide 32 (3 and 6 bits mis-size them for some head dims) and 2 bits loses the text.
KV_BITS = (4, 8)
KV_GROUP_SIZES = (32, 64, 128)
# mlx-lm quantizes from 5000 tokens, past what notebook users try. From 256 on, any
# document-sized prompt is held quantized, while a short chat (where the cache is a
# few MB) keeps the exact full-precision cache.
DEFAULT_KV_START = 256
# A rotating cache keeps its first 4 tokens and the most recent ones: below this it
# cannot hold a chat template's preamble and an answer.
MIN_MAX_KV = 64

# Message templates: ``{kv_bits}`` etc. are the argument names (flags in a magic).
_NAMES = {"kv_bits": "kv_bits", "kv_group_size": "kv_group_size", "kv_start": "kv_start",
          "max_kv": "max_kv", "ranks": "ranks"}
BITS_NOT_SUPPORTED = "{kv_bits} must be 4 or 8 (got {value}); drop it for a full-precision cache"
GROUP_NOT_SUPPORTED = "{kv_group_size} must be 32, 64 or 128 (got {value})"
GROUP_WITHOUT_BITS = "{kv_group_size} and {kv_start} go with {kv_bits}"
START_NEGATIVE = "{kv_start} must be 0 or more tokens (got {value})"
MAX_KV_TOO_SMALL = "{max_kv} must be at least {minimum} tokens (got {value})"
BITS_AND_MAX_KV = ("give {kv_bits} or {max_kv}, not both: mlx-lm cannot quantize a rotating "
                   "cache")
KV_IN_GROUP = ("{kv_bits} and {max_kv} are not available for a sharded model (a runner group "
               "decodes in the batch only, which holds a full-precision, unbounded cache)")


@dataclass(frozen=True)
class KvFormat:
    """How a runner holds its KV cache; the default is mlx-lm's: full precision, unbounded."""

    bits: int | None = None  # 4 or 8: quantize keys and values; None: full precision
    group_size: int = 64  # elements sharing one scale and bias
    start: int = DEFAULT_KV_START  # quantize once a request's cache holds this many tokens
    max_kv: int | None = None  # a rotating cache of this many tokens; None: unbounded

    @classmethod
    def build(cls, *, kv_bits: int | None = None, kv_group_size: int | None = None,
              kv_start: int | None = None, max_kv: int | None = None, ranks: int = 1,
              sharded: bool = False, names: Mapping[str, str] | None = None) -> KvFormat:
        """The format for these :func:`~mlx_notebook.load` arguments, or an ``InvalidArgumentError``."""
        words = {**_NAMES, **(names or {})}

        def refuse(template: str, field: str, **values: object) -> InvalidArgumentError:
            return InvalidArgumentError(template.format(**{**words, **values}), field=field)

        if kv_bits is not None and kv_bits not in KV_BITS:
            raise refuse(BITS_NOT_SUPPORTED, "kv_bits", value=kv_bits)
        if kv_bits is None and (kv_group_size is not None or kv_start is not None):
            raise refuse(GROUP_WITHOUT_BITS, "kv_group_size")
        if kv_group_size is not None and kv_group_size not in KV_GROUP_SIZES:
            raise refuse(GROUP_NOT_SUPPORTED, "kv_group_size", value=kv_group_size)
        if kv_start is not None and kv_start < 0:
            raise refuse(START_NEGATIVE, "kv_start", value=kv_start)
        if max_kv is not None and max_kv < MIN_MAX_KV:
            raise refuse(MAX_KV_TOO_SMALL, "max_kv", value=max_kv, minimum=MIN_MAX_KV)
        if kv_bits is not None and max_kv is not None:
            raise refuse(BITS_AND_MAX_KV, "max_kv")
        if (kv_bits is not None or max_kv is not None) and (ranks > 1 or sharded):
            raise refuse(KV_IN_GROUP, "kv_bits" if kv_bits is not None else "max_kv")
        return cls(bits=kv_bits, group_size=kv_group_size or 64,
                   start=DEFAULT_KV_START if kv_start is None else kv_start, max_kv=max_kv)

    @property
    def default(self) -> bool:
        return self.bits is None and self.max_kv is None

    def describe(self) -> str:
        """``fp``, ``8-bit from 256 tokens``, ``fp, rotating 1024``: for the status and the widget."""
        if self.bits is not None:
            group = "" if self.group_size == 64 else f", group {self.group_size}"
            return f"{self.bits}-bit from {self.start} tokens{group}"
        return f"fp, rotating {self.max_kv}" if self.max_kv is not None else "fp"

    def runner_args(self) -> list[str]:
        """The runner's flags for this format (none for the default)."""
        args: list[str] = []
        if self.bits is not None:
            args += ["--kv-bits", str(self.bits), "--kv-group-size", str(self.group_size),
                     "--kv-start", str(self.start)]
        if self.max_kv is not None:
            args += ["--max-kv", str(self.max_kv)]
        return args

    def held_tokens(self, context_length: int) -> int:
        """Tokens one request's cache holds at most for ``context_length`` tokens of context."""
        return min(context_length, self.max_kv) if self.max_kv is not None else context_length

    def bytes_ratio(self, element_bytes: int) -> float:
        """Quantized bytes per full-precision byte: ``bits`` per element plus a scale and a
        bias (activation dtype) per group; 1.0 when not quantized."""
        if self.bits is None:
            return 1.0
        return (self.bits / 8 + 2 * element_bytes / self.group_size) / element_bytes


FULL_PRECISION = KvFormat()  # mlx-lm's default cache: full precision, unbounded

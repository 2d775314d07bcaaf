"""KV caches in the runner's format (``kv_format.KvFormat``): quantized, rotating, or plain.

Where the two decode paths differ, and why:

- **Quantized (``--kv-bits``) on the solo path only.** mlx-lm's ``BatchGenerator``
  has no ``kv_bits`` and ``QuantizedKVCache`` has no ``merge``, so the batch
  cannot hold one. A request decoded alone (most notebook requests) quantizes
  its cache once it holds ``--kv-start`` tokens, as ``generate_step`` does. When
  a second request arrives, the solo cache is *dequantized at the hand-over*
  (:func:`for_batch`): batching keeps working, at full-precision memory for the
  batched requests while they run together. Keeping a quantized runner on one path
  would serialize concurrent cells; writing a batched quantized cache is a
  project of its own. The tokens already cached keep their quantized values;
  those the batch adds are full precision, so the text can differ from a solo
  run only where their rounding would have changed a choice (the demo's greedy
  text is the same, tests/test_kv_cache.py).
  A ``--batch-only`` runner (no solo path) holds quantized caches only in its
  prompt cache. A model whose layers mlx-lm cannot quantize (sliding-window
  layers, heads narrower than a group) is refused at load (:func:`check_format`).
- **The prompt cache holds the runner's format.** A finished request's cache is
  quantized before it is kept (:func:`for_prompt_cache`), so kept chat turns take
  the quantized size; a batched request that borrows one gets it dequantized.
- **Rotating (``--max-kv``) on both paths.** mlx-lm 0.32's ``make_prompt_cache``
  ignores ``max_kv_size`` for every model with a ``make_cache`` (Llama, the demo's
  family, has one), and so does ``BatchGenerator``: :func:`make_cache` builds the
  rotating layers itself and the engine hands them to the batch too, whose
  ``BatchRotatingKVCache`` merges the solo ``RotatingKVCache``. Once a
  rotating cache wraps it no longer holds a prefix of the tokens and cannot be
  trimmed, so it is not kept for reuse (:func:`reusable`): a later turn past
  ``max_kv`` re-reads its prompt (``cached_tokens`` 0).
"""

from __future__ import annotations

from typing import Any

import mlx.core as mx
from mlx_lm.generate import maybe_quantize_kv_cache
from mlx_lm.models.cache import (
    KVCache,
    QuantizedKVCache,
    RotatingKVCache,
    can_trim_prompt_cache,
    make_prompt_cache,
)

from ..kv_format import KvFormat

__all__ = ["make_cache", "quantize", "for_batch", "for_prompt_cache", "reusable", "cache_bytes",
           "check_format", "batch_shares"]


_KEEP = 4  # tokens a rotating cache never drops (mlx-lm's choice: attention sinks)


def make_cache(model: Any, fmt: KvFormat) -> list[Any]:
    """A fresh cache for one request: the model's own, its full layers rotating for ``max_kv``.

    A layer the model already bounds (a sliding window) keeps its own window.
    """
    cache = make_prompt_cache(model)
    if fmt.max_kv is None:
        return cache
    return [RotatingKVCache(max_size=fmt.max_kv, keep=_KEEP) if type(c) is KVCache else c
            for c in cache]


def quantize(cache: list[Any], fmt: KvFormat) -> bool:
    """Quantize (in place) the layers that reached ``fmt.start`` tokens; True once all are."""
    if fmt.bits is None:
        return True
    maybe_quantize_kv_cache(cache, fmt.start, fmt.group_size, fmt.bits)
    return all(isinstance(c, QuantizedKVCache) or not hasattr(c, "to_quantized") for c in cache)


def _dequantized(layer: QuantizedKVCache) -> KVCache:
    plain = KVCache()
    if layer.keys is not None:
        keys, values = layer.keys_and_values()
        plain.keys, plain.values = (
            mx.dequantize(q, scales, biases, group_size=layer.group_size, bits=layer.bits)
            for q, scales, biases in (keys, values))
    plain.offset = layer.offset
    return plain


def for_batch(cache: list[Any] | None, model: Any, fmt: KvFormat) -> list[Any] | None:
    """``cache`` as ``BatchGenerator`` can merge it: quantized layers dequantized; a new
    one rotating for ``max_kv`` (the generator's own would not be, see above)."""
    if cache is None:
        return make_cache(model, fmt) if fmt.max_kv is not None else None
    if not any(isinstance(c, QuantizedKVCache) for c in cache):
        return cache
    return [_dequantized(c) if isinstance(c, QuantizedKVCache) else c for c in cache]


def for_prompt_cache(cache: list[Any], fmt: KvFormat) -> list[Any]:
    """A finished request's cache as the prompt cache keeps it: in the runner's format."""
    quantize(cache, fmt)
    return cache


def reusable(cache: list[Any]) -> bool:
    """False for a rotating cache that wrapped: it lost the start of its tokens."""
    return can_trim_prompt_cache(cache)


def cache_bytes(cache: list[Any] | None) -> int:
    """Bytes the layers' keys and values take (0 for layers not filled yet)."""
    if not cache:
        return 0
    return sum(int(c.nbytes) for c in cache if getattr(c, "keys", None) is not None)


def check_format(model: Any, fmt: KvFormat) -> str | None:
    """Try the format on a tiny cache; a message when the model cannot hold it (head dim)."""
    if fmt.bits is None:
        return None
    cache = make_cache(model, fmt)
    try:
        model(mx.array([[0, 0]]), cache=cache)
        maybe_quantize_kv_cache(cache, 0, fmt.group_size, fmt.bits)
        mx.eval(model(mx.array([[0]]), cache=cache))
    except Exception as exc:  # noqa: BLE001 - MLX raises ValueError/RuntimeError, nothing typed
        return (f"this model cannot hold a {fmt.bits}-bit KV cache in groups of "
                f"{fmt.group_size} ({' '.join(str(exc).split())[:200]}); try another "
                "--kv-group-size, or load it without --kv-bits")
    return None


def batch_shares(generator: Any) -> dict[int, int]:
    """Each batched request's share (by uid) of ``BatchGenerator``'s batch caches, in bytes.

    Reads the generator's two batches (mlx-lm keeps no public view of them); a
    request's share is its batch's cache bytes over the batch's size (the rows are
    padded to the longest).
    """
    shares: dict[int, int] = {}
    for name in ("_prompt_batch", "_generation_batch"):
        batch = getattr(generator, name, None)
        uids = list(getattr(batch, "uids", None) or ())
        if uids:
            each = cache_bytes(getattr(batch, "prompt_cache", None)) // len(uids)
            shares.update(dict.fromkeys(uids, each))
    return shares

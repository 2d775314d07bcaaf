"""Python values out of MLX arrays, typed: MLX's stubs give ``item()`` and ``tolist()``
unions (``int | float | complex``, nested lists) that every caller would otherwise cast."""

from __future__ import annotations

from typing import Any

import mlx.core as mx

__all__ = ["as_int", "as_float", "as_list", "from_bytes", "to_bytes"]


def as_int(array: mx.array) -> int:
    """The value of a one-element integer (or integral float) array."""
    value = array.item()
    if isinstance(value, complex):
        raise TypeError("expected a real number, got a complex one")
    return int(value)


def as_float(array: mx.array) -> float:
    """The value of a one-element real array."""
    value = array.item()
    if isinstance(value, complex):
        raise TypeError("expected a real number, got a complex one")
    return float(value)


def as_list(array: mx.array) -> list[Any]:
    """The elements of an array of at least one dimension."""
    value = array.tolist()
    if not isinstance(value, list):
        raise TypeError("expected an array of at least one dimension, got a scalar")
    return value


def from_bytes(data: bytes) -> mx.array:
    """A uint8 array holding ``data`` (copied through the buffer protocol).

    MLX accepts any buffer here; its stubs list only DLPack objects, hence the ignore.
    """
    return mx.array(memoryview(data), dtype=mx.uint8)  # type: ignore[arg-type]  # see above


def to_bytes(array: mx.array) -> bytes:
    """The raw bytes of an evaluated array.

    ``mx.array`` exports the buffer protocol; its stubs omit ``__buffer__``, hence the ignore.
    """
    return bytes(memoryview(array))  # type: ignore[arg-type]  # see above

"""Memory pre-flight: refuse a model that would not fit before a runner is spawned.

A model that does not fit does not fail politely: MLX aborts the process (Metal
out-of-memory) or the machine swaps to a crawl. So, as Ollama's runner client
does, we compare what the model needs (its weight files plus a KV-cache estimate
for the requested context) against the memory available now, less an overhead,
and refuse with the numbers unless forced. On macOS MLX uses unified memory, on
Linux system memory: in both cases psutil's ``available`` is the right figure.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

import psutil

from ..errors import InsufficientMemoryError, ModelLoadError
from ..kv_format import FULL_PRECISION, KvFormat
from ..units import GIB, MIB, format_bytes, parse_bytes

__all__ = ["MemoryEstimate", "GIB", "MIB", "format_bytes", "parse_bytes", "estimate", "check", "fits",
           "plus"]
OVERHEAD_ENV = "MLX_NOTEBOOK_MEMORY_OVERHEAD"  # bytes, or with a unit: "512MiB", "1GiB"
DEFAULT_OVERHEAD = 512 * MIB
_ELEMENT_BYTES = 4  # model_files.estimate_kv_bytes sizes float32 activations (a Linux CPU)


def default_overhead() -> int:
    value = os.environ.get(OVERHEAD_ENV)
    return parse_bytes(value) if value else DEFAULT_OVERHEAD


def available_memory() -> int:
    """Bytes MLX could use now: system memory on Linux, unified memory on macOS."""
    return int(psutil.virtual_memory().available)


@dataclass(frozen=True)
class MemoryEstimate:
    """What a model needs; ``None`` parts are unknown (the runner will find out)."""

    spec: str
    weights: int | None
    kv_cache: int | None
    context_length: int | None = None
    # The weights as the files hold them, where the runner holds them in another format
    # (``held_as``: float32 on a Linux CPU): both numbers are shown where they differ.
    file_weights: int | None = None
    held_as: str | None = None
    kv_format: str = "fp"  # KvFormat.describe() of the format the KV cache is sized in

    @property
    def required(self) -> int | None:
        if self.weights is None:
            return None
        return self.weights + (self.kv_cache or 0)


def share(need: MemoryEstimate, ranks_here: int, ranks: int) -> MemoryEstimate:
    """What ``ranks_here`` of ``ranks`` shards need on this machine (an even split)."""
    def part(n: int | None) -> int | None:
        return None if n is None else -(-n * ranks_here // ranks)

    return dataclasses.replace(need, weights=part(need.weights), kv_cache=part(need.kv_cache))


def plus(need: MemoryEstimate, other: MemoryEstimate) -> MemoryEstimate:
    """Two models in one runner (a model and its draft); unknown if either part is."""
    def add(a: int | None, b: int | None) -> int | None:
        return None if a is None or b is None else a + b

    return dataclasses.replace(need, weights=add(need.weights, other.weights),
                               kv_cache=add(need.kv_cache, other.kv_cache),
                               file_weights=None if need.file_weights is None
                               and other.file_weights is None else
                               add(need.file_weights or need.weights,
                                   other.file_weights or other.weights))


def estimate(spec: str, context_length: int | None = None, *,
             dtype: str | None = "auto", kv: KvFormat = FULL_PRECISION) -> MemoryEstimate:
    """Weight bytes as the runner will hold them and a KV-cache estimate; unknown when not cheap.

    ``dtype`` is the runner's ``--dtype`` ("auto" unless asked otherwise): where the
    runner casts (float32 on a Linux CPU with OpenBLAS), the weights are sized in that
    format, not the files' (``weight_format`` decides it without importing the runner).
    The estimators live in ``model_files`` (no MLX import); a spec they cannot size
    (not downloaded yet) is left to the runner to report, but a GGUF file whose header
    is not valid raises its :class:`ModelLoadError` here, before any runner starts.
    The KV cache is sized in ``kv``'s format: quantized bytes, at most ``max_kv`` tokens.
    """
    from .. import model_files, weight_format

    weights = kv_bytes = on_disk = None
    cast = weight_format.expected_dtype(dtype)
    try:
        weights = model_files.estimate_weight_bytes(spec, cast)
        if cast is not None and weights is not None:
            on_disk = model_files.estimate_weight_bytes(spec, None)
    except ModelLoadError:
        raise  # a GGUF file it cannot read: said now, not passed to the runner unchecked
    except Exception:  # noqa: BLE001 - an estimate is best effort by design
        weights = None
    try:
        # Without a cap the runner allows the model's full context: size for that.
        context_length = context_length or model_files.model_context_length(spec)
        kv_bytes = (model_files.estimate_kv_bytes(spec, kv.held_tokens(context_length))
                    if context_length else None)
        if kv_bytes is not None:
            kv_bytes = int(kv_bytes * kv.bytes_ratio(_ELEMENT_BYTES))
    except Exception:  # noqa: BLE001
        kv_bytes = None
    on_disk = _as_int(on_disk)
    differs = on_disk is not None and on_disk != _as_int(weights)
    return MemoryEstimate(spec, _as_int(weights), _as_int(kv_bytes), context_length,
                          file_weights=on_disk if differs else None, held_as=cast if differs else None,
                          kv_format=kv.describe())


def _as_int(value: object) -> int | None:
    return int(value) if isinstance(value, (int, float)) and value >= 0 else None


def refusal_message(need: MemoryEstimate, available: int, overhead: int) -> str:
    """The seed's wording, with the parts of the requirement spelled out."""
    usable = max(available - overhead, 0)
    parts = f"weights {format_bytes(need.weights or 0)}"
    if need.file_weights is not None and need.file_weights != need.weights:
        parts += (f" as the runner holds them{f' ({need.held_as})' if need.held_as else ''}, "
                  f"{format_bytes(need.file_weights)} in the files")
    if need.kv_cache:
        ctx = f" for {need.context_length} tokens" if need.context_length else ""
        how = "" if need.kv_format == "fp" else f" {need.kv_format},"
        parts += f" + KV cache{how} {format_bytes(need.kv_cache)}{ctx}"
    return (
        f"model {need.spec!r} requires {format_bytes(need.required or 0)} ({parts}) "
        f"but only {format_bytes(usable)} are available (after {format_bytes(overhead)} "
        "overhead). Unload another model, pick a smaller one or a shorter context, "
        "or load with force=True (%mlx load ... --force) to try anyway."
    )


def check(
    spec: str,
    context_length: int | None = None,
    *,
    force: bool = False,
    available: int | None = None,
    overhead: int | None = None,
    need: MemoryEstimate | None = None,
) -> MemoryEstimate:
    """Raise :class:`InsufficientMemoryError` if ``spec`` would not fit, unless ``force``.

    ``available`` defaults to the memory free now; ``need`` to :func:`estimate`.
    """
    need = need if need is not None else estimate(spec, context_length)
    if force or need.required is None:
        return need
    available = available_memory() if available is None else available
    overhead = default_overhead() if overhead is None else overhead
    if need.required > available - overhead:
        raise InsufficientMemoryError(refusal_message(need, available, overhead))
    return need


def fits(need: MemoryEstimate, *, available: int | None = None, overhead: int | None = None) -> bool:
    """True when ``need`` fits (or is unknown) in the memory available now."""
    if need.required is None:
        return True
    available = available_memory() if available is None else available
    overhead = default_overhead() if overhead is None else overhead
    return need.required <= available - overhead

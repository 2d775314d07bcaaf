"""Which weight format a runner started here will hold: a pure function of the platform.

The mlx-cpu wheel bundles a single-threaded reference BLAS. With a system OpenBLAS
preloaded (Debian/Ubuntu: ``libopenblas0-pthread``), float32 matmuls are much
faster: SmolLM2-135M in float32 decodes at ~14 tok/s and prefills at ~140 tok/s
on a 2-core x86 CPU, against ~9 / ~16 for its 4-bit weights. Quantized, bf16 and
fp16 weights use MLX's own kernels and gain nothing, so on a Linux CPU with an
OpenBLAS the runner casts every model to float32 (``--dtype auto``).

Both sides need the decision: the runner (``runner/fastblas.py`` does the preload
and re-exec) and the kernel's memory pre-flight, which must size the weights the
runner will really hold. So it lives here, without MLX.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

__all__ = ["OPENBLAS_ENV", "DTYPES", "DTYPE_BYTES", "cuda_build", "find_openblas",
           "expected_device", "auto_dtype", "resolve_dtype", "expected_dtype"]

OPENBLAS_ENV = "MLX_NOTEBOOK_OPENBLAS"  # a path to use, or "0" to disable
DTYPES = ("float32", "bfloat16", "float16")  # what ``--dtype`` may cast to
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
Device = Literal["cpu", "gpu"]
_CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib64/libopenblas.so.0",
    "/usr/lib/libopenblas.so.0",
)


def cuda_build() -> bool:
    """mlx[cuda] is installed: MLX runs on the GPU, where a CPU BLAS does nothing."""
    from importlib.metadata import PackageNotFoundError, version

    for name in ("mlx-cuda-13", "mlx-cuda-12", "mlx-cuda"):
        try:
            version(name)
            return True
        except PackageNotFoundError:
            continue
    return False


def find_openblas(environ: Mapping[str, str] | None = None,
                  platform: str | None = None) -> str | None:
    """The OpenBLAS library a runner would preload here, or None (not Linux, CUDA, none)."""
    environ = os.environ if environ is None else environ
    platform = sys.platform if platform is None else platform
    choice = environ.get(OPENBLAS_ENV)
    if choice == "0" or not platform.startswith("linux"):
        return None
    if not choice and cuda_build():
        return None
    if choice:
        return choice if Path(choice).exists() else None
    return next((c for c in _CANDIDATES if Path(c).exists()), None)


def with_preload(env: Mapping[str, str], library: str) -> dict[str, str]:
    """``env`` with ``library`` first in ``LD_PRELOAD`` (how a runner gets OpenBLAS)."""
    return {**env, "LD_PRELOAD": ":".join(p for p in (library, env.get("LD_PRELOAD")) if p)}


def expected_device(platform: str | None = None) -> Device:
    """Where MLX will run, without importing it: Metal on macOS, CUDA if installed, else CPU."""
    platform = sys.platform if platform is None else platform
    return "gpu" if platform == "darwin" or cuda_build() else "cpu"


def auto_dtype(device_type: str, openblas: bool) -> str | None:
    """float32 on a CPU with OpenBLAS preloaded; otherwise None (the model's own format)."""
    return "float32" if device_type == "cpu" and openblas else None


def resolve_dtype(requested: str | None, device_type: str, openblas: bool) -> str | None:
    """What a runner's ``--dtype`` means: None keeps the model's format, else a cast target."""
    if requested in (None, "native"):
        return None
    if requested == "auto":
        return auto_dtype(device_type, openblas)
    return requested


def expected_dtype(requested: str | None = "auto",
                   environ: Mapping[str, str] | None = None) -> str | None:
    """The cast a runner started here with ``--dtype requested`` will make (None: none)."""
    if requested != "auto":
        return resolve_dtype(requested, "cpu", openblas=False)  # no guess needed
    device = expected_device()
    return resolve_dtype(requested, device, device == "cpu" and find_openblas(environ) is not None)

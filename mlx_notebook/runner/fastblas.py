"""Give MLX's CPU backend a fast BLAS, and pick the weight format that is fastest here.

The mlx-cpu wheel bundles a single-threaded reference BLAS. Preloading a system
OpenBLAS (Debian/Ubuntu: ``libopenblas0-pthread``) overrides its ``cblas_sgemm``:
measured on a 2-core x86 CPU, SmolLM2-135M in float32 then decodes at ~14 tok/s
and prefills at ~140 tok/s, against ~9 / ~16 for its 4-bit weights. Quantized,
bf16 and fp16 weights use MLX's own kernels and gain nothing, so float32 is only
chosen when the preload is in effect. ``LD_PRELOAD`` is read at process start,
hence the one-time re-exec (same pid, so the handshake is unaffected).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

OPENBLAS_ENV = "MLX_NOTEBOOK_OPENBLAS"  # a path to use, or "0" to disable
REEXEC_ENV = "_MLX_NOTEBOOK_REEXEC"  # set in the runner that was re-executed with OpenBLAS
_CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib64/libopenblas.so.0",
    "/usr/lib/libopenblas.so.0",
)


def _cuda_build() -> bool:
    """mlx[cuda] is installed: MLX runs on the GPU, where a CPU BLAS does nothing."""
    from importlib.metadata import PackageNotFoundError, version

    for name in ("mlx-cuda-13", "mlx-cuda-12", "mlx-cuda"):
        try:
            version(name)
            return True
        except PackageNotFoundError:
            continue
    return False


def find_openblas() -> str | None:
    choice = os.environ.get(OPENBLAS_ENV)
    if choice == "0" or not sys.platform.startswith("linux"):
        return None
    if not choice and _cuda_build():
        return None
    if choice:
        return choice if Path(choice).exists() else None
    return next((c for c in _CANDIDATES if Path(c).exists()), None)


def openblas_preloaded() -> bool:
    return "openblas" in os.environ.get("LD_PRELOAD", "")


def reexec_with_openblas(argv: list[str]) -> None:
    """Replace this process by itself with OpenBLAS preloaded, when one is available."""
    if openblas_preloaded() or os.environ.get(REEXEC_ENV):
        return
    library = find_openblas()
    if library is None:
        return
    env = dict(os.environ, **{REEXEC_ENV: "1"})
    env["LD_PRELOAD"] = ":".join(p for p in (library, env.get("LD_PRELOAD", "")) if p)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", "mlx_notebook.runner", *argv], env)


def auto_dtype(device_type: str, openblas: bool | None = None) -> str | None:
    """float32 on a CPU with OpenBLAS preloaded; otherwise keep the model's own format.

    ``openblas`` defaults to whether this process has it preloaded.
    """
    if openblas is None:
        openblas = openblas_preloaded()
    return "float32" if device_type == "cpu" and openblas else None

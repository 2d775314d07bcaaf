"""Give MLX's CPU backend a fast BLAS: preload a system OpenBLAS by re-executing the runner.

Which library, and whether float32 then pays, is decided in the shared
:mod:`mlx_notebook.weight_format` (the kernel's memory pre-flight needs the same
answer). ``LD_PRELOAD`` is read at process start, hence the one-time re-exec here
(same pid, so the handshake is unaffected).
"""

from __future__ import annotations

import os
import sys

from .. import weight_format
from ..weight_format import OPENBLAS_ENV, find_openblas

__all__ = ["OPENBLAS_ENV", "REEXEC_ENV", "find_openblas", "openblas_preloaded",
           "reexec_with_openblas", "auto_dtype"]

REEXEC_ENV = "_MLX_NOTEBOOK_REEXEC"  # set in the runner that was re-executed with OpenBLAS


def openblas_preloaded() -> bool:
    return "openblas" in os.environ.get("LD_PRELOAD", "")


def reexec_with_openblas(argv: list[str], module: str = "mlx_notebook.runner") -> None:
    """Replace this process (``python -m module``) by itself with OpenBLAS preloaded, if any."""
    if openblas_preloaded() or os.environ.get(REEXEC_ENV):
        return
    library = find_openblas()
    if library is None:
        return
    env = weight_format.with_preload({**os.environ, REEXEC_ENV: "1"}, library)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", module, *argv], env)


def auto_dtype(device_type: str, openblas: bool | None = None) -> str | None:
    """:func:`weight_format.auto_dtype`, ``openblas`` defaulting to this process's preload."""
    return weight_format.auto_dtype(
        device_type, openblas_preloaded() if openblas is None else openblas)

"""The runner's choice of a system OpenBLAS (CPU only) and where MLX keeps CUDA kernels."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from mlx_notebook.runner.fastblas import OPENBLAS_ENV, find_openblas

CHECK = "from mlx_notebook.runner.fastblas import find_openblas; print(find_openblas())"


def _find_in_subprocess(extra_path: Path | None = None) -> str:
    env = {k: v for k, v in os.environ.items() if k != OPENBLAS_ENV}
    if extra_path is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(extra_path), env.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, "-c", CHECK], env=env, capture_output=True,
                          text=True, timeout=60, check=True)
    return done.stdout.strip()


def test_an_explicit_choice_wins_and_0_turns_it_off(monkeypatch, tmp_path):
    fake_library = tmp_path / "libopenblas.so.0"
    fake_library.write_bytes(b"")
    monkeypatch.setenv(OPENBLAS_ENV, str(fake_library))
    assert find_openblas() == str(fake_library)
    monkeypatch.setenv(OPENBLAS_ENV, "0")
    assert find_openblas() is None
    monkeypatch.setenv(OPENBLAS_ENV, str(tmp_path / "missing.so"))
    assert find_openblas() is None


def test_no_cpu_blas_with_mlx_cuda_installed(tmp_path):
    """mlx[cuda] cannot be installed here, so its install record is faked (named as such):
    a dist-info folder is all importlib.metadata looks at."""
    baseline = _find_in_subprocess()
    fake = tmp_path / "site"
    info = fake / "mlx_cuda_13-0.32.4.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mlx-cuda-13\nVersion: 0.32.4\n")
    assert _find_in_subprocess(fake) == "None"
    if baseline != "None":  # a machine with OpenBLAS: the fake record is what turned it off
        assert baseline.endswith("libopenblas.so.0")


def test_runner_keeps_compiled_cuda_kernels_in_our_cache(tmp_path):
    """The runner sets MLX_PTX_CACHE_DIR before MLX loads (it then fails on the bad model)."""
    env = dict(os.environ, MLX_NOTEBOOK_CACHE=str(tmp_path / "cache"), MLX_NOTEBOOK_TOKEN="t")
    env.pop("MLX_PTX_CACHE_DIR", None)
    code = ("import os, runpy, sys; sys.argv = ['x', '--model', 'x', '--prefetch'];\n"
            "try:\n    runpy.run_module('mlx_notebook.runner', run_name='__main__')\n"
            "except SystemExit:\n    pass\n"
            "print(os.environ['MLX_PTX_CACHE_DIR'])")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.stdout.strip().splitlines()[-1] == str(tmp_path / "cache" / "ptx"), done.stderr

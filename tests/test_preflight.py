"""Memory pre-flight: numbers from the model's files against the memory free now."""

from __future__ import annotations

import sys

import psutil
import pytest

from mlx_notebook.control import preflight
from mlx_notebook.control.preflight import MemoryEstimate, format_bytes, parse_bytes
from mlx_notebook.errors import InsufficientMemoryError


def test_bytes_formatting_and_parsing() -> None:
    assert format_bytes(3.2 * 2**30) == "3.2 GiB" and format_bytes(512 * 2**20) == "512 MiB"
    assert parse_bytes("512MiB") == 512 * 2**20 and parse_bytes("1.5 GiB") == int(1.5 * 2**30)
    assert parse_bytes("1000") == 1000


def test_tiny_model_is_sized_and_fits(tiny_model_dir) -> None:
    need = preflight.check(str(tiny_model_dir))
    assert need.weights and need.weights > 0 and need.kv_cache and need.kv_cache > 0
    assert need.required == need.weights + need.kv_cache
    assert preflight.estimate(str(tiny_model_dir), 64).kv_cache < need.kv_cache


def test_refusal_shows_the_numbers() -> None:
    total = psutil.virtual_memory().total
    need = MemoryEstimate("big-model", weights=3 * 2**30, kv_cache=2**29, context_length=4096)
    with pytest.raises(InsufficientMemoryError) as info:
        preflight.check("big-model", need=need, overhead=total)
    message = str(info.value)
    assert "model 'big-model' requires 3.5 GiB (weights 3.0 GiB + KV cache 512 MiB for 4096 tokens)" in message
    assert "but only 0 B are available (after" in message and "overhead)" in message
    assert preflight.check("big-model", need=need, overhead=total, force=True) is need


def test_unknown_size_is_left_to_the_runner(tmp_path) -> None:
    need = preflight.check(str(tmp_path / "nothing-here"), overhead=10**18)
    assert need.required is None


def _quantized_copy(model_dir, target):
    """The tiny float32 model quantized to 4 bits, as mlx-lm writes it (made here, no hub)."""
    import shutil

    from mlx_lm import load
    from mlx_lm.utils import quantize_model, save_config, save_model

    model, _, config = load(str(model_dir), return_config=True)
    model, config = quantize_model(model, config, group_size=32, bits=4)
    target.mkdir()
    save_model(target, model)
    save_config(config, target / "config.json")
    for path in model_dir.iterdir():
        if path.name.startswith("tokenizer") or path.name == "special_tokens_map.json":
            shutil.copy(path, target / path.name)
    return target


def test_weights_are_sized_in_the_format_the_runner_holds(monkeypatch, tmp_path,
                                                         tiny_model_dir) -> None:
    """Issue 15: a 4-bit model that a Linux-CPU runner casts to float32 was counted at its
    4-bit file size. The estimate must match what the runner's loader really holds."""
    from mlx_notebook import weight_format
    from mlx_notebook.runner.models import load_model

    monkeypatch.setenv("MLX_NOTEBOOK_CACHE", str(tmp_path / "cache"))  # the cast is cached
    quantized = _quantized_copy(tiny_model_dir, tmp_path / "tiny-4bit")
    fake_openblas = tmp_path / "libopenblas.so.0"  # a system OpenBLAS, as find_openblas sees it
    fake_openblas.write_bytes(b"")
    monkeypatch.setenv(weight_format.OPENBLAS_ENV, str(fake_openblas))
    held = weight_format.expected_dtype()
    if weight_format.expected_device() == "cpu" and sys.platform.startswith("linux"):
        assert held == "float32"
    need = preflight.estimate(str(quantized))
    assert need.weights == load_model(str(quantized), dtype=held).weight_bytes
    if held == "float32":
        files = sum(p.stat().st_size for p in quantized.glob("*.safetensors"))
        assert need.weights > 3 * files  # 4-bit on disk, float32 in memory

    # Without OpenBLAS the runner keeps the 4-bit weights: the files' size is the estimate.
    monkeypatch.setenv(weight_format.OPENBLAS_ENV, "0")
    assert weight_format.expected_dtype() is None
    native = preflight.estimate(str(quantized)).weights
    assert native and native < need.weights or held is None
    assert native == preflight.estimate(str(quantized), dtype="native").weights


def test_the_demo_is_sized_as_float32_where_the_runner_casts(monkeypatch, tmp_path) -> None:
    """The issue's own example: 'weights 94 MiB' for a runner that holds ~520 MB."""
    from mlx_notebook import model_files, weight_format

    fake_openblas = tmp_path / "libopenblas.so.0"
    fake_openblas.write_bytes(b"")
    monkeypatch.setenv(weight_format.OPENBLAS_ENV, str(fake_openblas))
    monkeypatch.setenv("MLX_NOTEBOOK_CACHE", str(tmp_path / "empty"))  # not downloaded yet
    held = weight_format.expected_dtype()
    weights = preflight.estimate("demo").weights
    if held == "float32":
        assert weights > 500_000_000  # ~538 MB of float32 weights, not the 94 MiB file
        assert weights == model_files.DEMO_PARAMETERS * 4
    else:
        assert weights == model_files.DEMO_WEIGHT_BYTES


def test_the_decision_is_a_pure_function_of_the_platform(tmp_path) -> None:
    from mlx_notebook import weight_format

    library = tmp_path / "libopenblas.so.0"
    library.write_bytes(b"")
    chosen = {weight_format.OPENBLAS_ENV: str(library)}
    assert weight_format.find_openblas(chosen, platform="linux") == str(library)
    assert weight_format.find_openblas(chosen, platform="darwin") is None
    assert weight_format.find_openblas({weight_format.OPENBLAS_ENV: "0"}, "linux") is None
    assert weight_format.resolve_dtype("auto", "cpu", openblas=True) == "float32"
    assert weight_format.resolve_dtype("auto", "gpu", openblas=True) is None
    assert weight_format.resolve_dtype("auto", "cpu", openblas=False) is None
    assert weight_format.resolve_dtype("native", "cpu", openblas=True) is None
    assert weight_format.resolve_dtype("float16", "gpu", openblas=False) == "float16"


def test_the_refusal_shows_both_numbers_where_they_differ(monkeypatch, tmp_path) -> None:
    """The demo refused on a Linux CPU says what the runner holds and what the file holds."""
    from mlx_notebook import model_files, weight_format

    fake_openblas = tmp_path / "libopenblas.so.0"
    fake_openblas.write_bytes(b"")
    monkeypatch.setenv(weight_format.OPENBLAS_ENV, str(fake_openblas))
    monkeypatch.setenv("MLX_NOTEBOOK_CACHE", str(tmp_path / "empty"))
    held = weight_format.expected_dtype()
    need = preflight.estimate("demo", 2048)
    with pytest.raises(InsufficientMemoryError) as info:
        preflight.check("demo", need=need, overhead=psutil.virtual_memory().total)
    message = str(info.value)
    if held == "float32":
        assert need.file_weights == model_files.DEMO_WEIGHT_BYTES and need.held_as == "float32"
        assert (f"weights {preflight.format_bytes(need.weights)} as the runner holds them "
                f"(float32), {preflight.format_bytes(model_files.DEMO_WEIGHT_BYTES)} in the files"
                ) in message
    else:  # nothing cast: one number
        assert need.file_weights is None and "in the files" not in message

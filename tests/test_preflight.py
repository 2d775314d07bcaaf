"""Memory pre-flight: numbers from the model's files against the memory free now."""

from __future__ import annotations

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
    assert "but only 0 KiB are available (after" in message and "overhead)" in message
    assert preflight.check("big-model", need=need, overhead=total, force=True) is need


def test_unknown_size_is_left_to_the_runner(tmp_path) -> None:
    need = preflight.check(str(tmp_path / "nothing-here"), overhead=10**18)
    assert need.required is None

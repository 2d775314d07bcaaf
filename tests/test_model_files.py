"""The kernel-side model facts (no MLX): spec parsing and the memory pre-flight estimates."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mlx_notebook.model_files import (
    DEMO_CONTEXT_LENGTH,
    DEMO_WEIGHT_BYTES,
    ModelLoadError,
    estimate_kv_bytes,
    estimate_weight_bytes,
    model_context_length,
    parse_spec,
    read_gguf_summary,
)
from tests.tiny_model import make_hub_cache_entry, make_tiny_gguf


def test_importing_model_files_does_not_import_mlx() -> None:
    code = "import sys, mlx_notebook.model_files; print('mlx' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_parse_spec(tiny_model_dir: Path, tmp_path: Path) -> None:
    assert parse_spec("demo").kind == "demo"
    assert parse_spec(str(tiny_model_dir)).kind == "folder"
    gguf = tmp_path / "x.gguf"
    gguf.write_bytes(b"GGUF")
    assert (parse_spec(str(gguf)).kind, parse_spec(str(gguf)).path) == ("gguf", gguf)
    hf = parse_spec("mlx-community/SmolLM2-135M-Instruct-4bit@main")
    assert (hf.kind, hf.repo, hf.revision) == (
        "hf",
        "mlx-community/SmolLM2-135M-Instruct-4bit",
        "main",
    )
    with pytest.raises(ModelLoadError, match="accepted: 'demo'"):
        parse_spec("what?")


def test_tiny_folder_estimates_match_the_loaded_model(tiny_model_dir: Path) -> None:
    import mlx.core as mx
    from mlx_lm.models.cache import make_prompt_cache

    from mlx_notebook.runner.models import load_model

    spec = str(tiny_model_dir)
    lm = load_model(spec)
    estimate = estimate_weight_bytes(spec)
    assert estimate is not None and abs(estimate - lm.weight_bytes) / lm.weight_bytes < 0.02
    assert model_context_length(spec) == lm.context_length == 512

    # The KV estimate equals what the real cache holds after a prefill of N tokens.
    tokens = lm.tokenizer.encode("The capital of France is Paris. " * 4)
    cache = make_prompt_cache(lm.model)
    lm.model(mx.array(tokens)[None], cache=cache)
    real = sum(a[..., : c.offset, :].nbytes for c in cache for a in (c.keys, c.values))
    assert estimate_kv_bytes(spec, len(tokens)) == real
    assert estimate_kv_bytes(spec, len(tokens), bytes_per_element=2) == real // 2


def test_gguf_file_and_hf_snapshot_estimates(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    monkeypatch.setenv("MLX_NOTEBOOK_CACHE", str(tmp_path / "cache"))
    gguf = make_tiny_gguf(tiny_model_dir, tmp_path / "t.gguf")
    summary = read_gguf_summary(gguf)
    assert summary.tensor_types == {"F32": 20} and summary.cast_to_float16 == []
    assert estimate_weight_bytes(str(gguf)) == summary.loaded_bytes == 394_496
    assert model_context_length(str(gguf)) is None  # no config.json until converted

    from mlx_notebook.runner.models import prefetch

    prefetch(str(gguf))
    assert model_context_length(str(gguf)) == 512
    assert estimate_kv_bytes(str(gguf), 100) == estimate_kv_bytes(str(tiny_model_dir), 100)

    commit = "89abcdef0123456789abcdef0123456789abcdef"
    make_hub_cache_entry(tiny_model_dir, tmp_path / "hub", "o/tiny", commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert estimate_weight_bytes("o/tiny") == estimate_weight_bytes(str(tiny_model_dir))
    assert model_context_length(f"o/tiny@{commit}") == 512
    assert estimate_weight_bytes("o/absent") is None
    assert estimate_kv_bytes("o/absent", 100) is None
    assert model_context_length("o/absent") is None


def test_demo_estimates_before_download(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLX_NOTEBOOK_CACHE", str(tmp_path / "empty"))
    assert estimate_weight_bytes("demo") == DEMO_WEIGHT_BYTES
    assert model_context_length("demo") == DEMO_CONTEXT_LENGTH
    # SmolLM2-135M: 30 layers, 3 KV heads of 64, float32 -> 46,080 bytes per token.
    assert estimate_kv_bytes("demo", 1000) == 46_080_000


@pytest.mark.slow
def test_demo_estimates_match_the_loaded_model(demo_model_ready: Path) -> None:
    from mlx_notebook.runner.models import load_model

    lm = load_model("demo")
    estimate = estimate_weight_bytes("demo")
    assert estimate is not None and abs(estimate - lm.weight_bytes) / lm.weight_bytes < 0.01
    assert abs(DEMO_WEIGHT_BYTES - lm.weight_bytes) / lm.weight_bytes < 0.01
    assert model_context_length("demo") == lm.context_length == DEMO_CONTEXT_LENGTH
    assert estimate_kv_bytes("demo", 1000) == 46_080_000


def test_gguf_summary_rejects_damaged_headers(tmp_path: Path) -> None:
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"hello")
    with pytest.raises(ValueError, match="is not a GGUF file"):
        read_gguf_summary(junk)
    junk.write_bytes(b"GGUF\x03\x00\x00\x00\x01")
    with pytest.raises(ValueError, match="ends inside its GGUF header"):
        read_gguf_summary(junk)
    assert estimate_weight_bytes(str(junk)) is None


@pytest.mark.slow
def test_demo_gguf_summary(demo_model_ready: Path) -> None:
    from mlx_notebook.runner.demo import fetch_demo_gguf

    summary = read_gguf_summary(fetch_demo_gguf())
    assert summary.tensor_types == {"Q4_1": 210, "Q8_0": 1, "F32": 61}
    assert summary.cast_to_float16 == []
    assert abs(summary.loaded_bytes - DEMO_WEIGHT_BYTES) / DEMO_WEIGHT_BYTES < 0.01


def test_demo_parameter_count_matches_its_converted_weights(demo_model_ready) -> None:
    """DEMO_PARAMETERS sizes the demo before its download; the converted header must agree."""
    from mlx_notebook.model_files import DEMO_PARAMETERS, cast_bytes

    assert cast_bytes(demo_model_ready, 4) == DEMO_PARAMETERS * 4
    assert cast_bytes(demo_model_ready, 2) == DEMO_PARAMETERS * 2

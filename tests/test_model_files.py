"""The kernel-side model facts (no MLX): spec parsing and the memory pre-flight estimates."""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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


def test_gguf_extension_in_any_case_and_a_path_with_spaces(tmp_path: Path) -> None:
    folder = tmp_path / "my models"
    folder.mkdir()
    upper = folder / "Tiny Model.GGUF"
    upper.write_bytes(b"GGUF")
    assert (parse_spec(str(upper)).kind, parse_spec(str(upper)).path) == ("gguf", upper)
    with pytest.raises(ModelLoadError, match="no such file or folder: missing.GGUF"):
        parse_spec("missing.GGUF")  # was: "cannot understand model"


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
    with pytest.raises(ModelLoadError, match="is not a valid GGUF file: it does not start"):
        read_gguf_summary(junk)
    junk.write_bytes(b"GGUF\x03\x00\x00\x00\x01")
    with pytest.raises(ModelLoadError, match="is not a valid GGUF file: it ends inside"):
        read_gguf_summary(junk)
    # The pre-flight does not pass a model it could not read (it used to say: unknown).
    with pytest.raises(ModelLoadError, match="is not a valid GGUF file"):
        estimate_weight_bytes(str(junk))
    from mlx_notebook.control import preflight

    with pytest.raises(ModelLoadError, match="is not a valid GGUF file"):
        preflight.estimate(str(junk))


def _header(n_tensors: int, kv: bytes, n_kv: int = 1) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", 3, n_tensors, n_kv) + kv


@pytest.mark.parametrize("data, reason", [
    (_header(0, struct.pack("<Q", 2**63) + bytes(64)), "a string of 9223372036854775808 bytes"),
    (_header(0, struct.pack("<Q", 1) + b"k" + struct.pack("<IIQ", 9, 0, 2**62)),
     "a length of"),  # an array of 2**62 bytes
    (_header(0, struct.pack("<Q", 1) + b"k" + struct.pack("<I", 9)
             + struct.pack("<IQ", 9, 1) * 10_000),
     "arrays nest deeper than"),
    (_header(2**40, b"", n_kv=0), "cannot fit in it"),
    (_header(1, struct.pack("<Q", 1) + b"t" + struct.pack("<I", 1) + struct.pack("<Q", 2**60)
             + struct.pack("<IQ", 0, 0), n_kv=0) + bytes(64), "cannot fit in"),
    (_header(1, struct.pack("<Q", 1) + b"t" + struct.pack("<IQ", 1, 64) + struct.pack("<IQ", 0, 0),
             n_kv=0) + bytes(32), "its tensors need"),  # 64 floats, 32 bytes of data
], ids=["huge-seek", "huge-array", "deep-nesting", "huge-count", "huge-tensor", "short-data"])
def test_gguf_summary_refuses_absurd_sizes(tmp_path: Path, data: bytes, reason: str) -> None:
    path = tmp_path / "bad.gguf"
    path.write_bytes(data)
    with pytest.raises(ModelLoadError, match=f"is not a valid GGUF file: .*{reason}"):
        read_gguf_summary(path)


def _header_bytes(path: Path) -> bytes:
    """A real GGUF cut after its header and one aligned block of data (what mutations hit)."""
    data = path.read_bytes()
    return data[:min(len(data), 64 << 10)]


@pytest.fixture(scope="module")
def real_gguf(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return make_tiny_gguf(tiny_model_dir, tmp_path_factory.mktemp("g") / "t.gguf").read_bytes()


_EXTREMES = [0, 1, 2**31, 2**32 - 1, 2**63, 2**64 - 1]


@settings(max_examples=300, deadline=1000, suppress_health_check=[HealthCheck.too_slow,
                                                                    HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_every_mutated_real_header_is_read_or_refused_in_one_line(
        real_gguf: bytes, tmp_path: Path, data: st.DataObject) -> None:
    """Whatever is done to a real header, the answer is a summary or the one clear error."""
    header_end = 4 + 4 + 8 + 8 + 4096  # the metadata and tensor table of the tiny GGUF
    blob = bytearray(real_gguf)
    for _ in range(data.draw(st.integers(1, 4))):
        where = data.draw(st.integers(4, min(header_end, len(blob) - 8)))
        how = data.draw(st.sampled_from(["byte", "u32", "u64", "cut", "insert"]))
        if how == "byte":
            blob[where] = data.draw(st.integers(0, 255))
        elif how == "u32":
            blob[where:where + 4] = struct.pack("<I", data.draw(st.sampled_from(_EXTREMES[:4])))
        elif how == "u64":
            blob[where:where + 8] = struct.pack("<Q", data.draw(st.sampled_from(_EXTREMES)))
        elif how == "cut":
            del blob[where:]
            break
        else:
            blob[where:where] = data.draw(st.binary(min_size=1, max_size=16))
    path = tmp_path / "mutated.gguf"
    path.write_bytes(bytes(blob))
    try:
        summary = read_gguf_summary(path)
    except ModelLoadError as exc:
        assert str(exc).startswith(f"{path} is not a valid GGUF file: ") and "\n" not in str(exc)
        return
    assert summary.elements <= 8 * len(blob)  # what it read fits the file


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

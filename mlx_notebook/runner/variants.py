"""A cache of models already cast to another dtype (e.g. 4-bit demo -> float32 on a Linux CPU).

Dequantizing and casting at every load cost ~2 s of the demo's ~2.4 s start; the
cast weights are saved once next to the conversion cache and loaded directly
afterwards. The key fingerprints the source folder's files (names, sizes, mtimes;
not its path, so a cache that moves keeps its variants), so a changed model gets
a fresh variant; a variant that fails to load is simply rebuilt. One process
saves a variant at a time; another that finds it being saved just skips saving.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ..paths import models_dir
from .cachelock import share, sweep, try_cache_lock

_SKIP = {"model.safetensors.index.json"}
_FORMAT_KEY = "mlx_notebook_weights_format"


def _key(folder: Path, dtype: str) -> str:
    """Raises OSError when the folder or one of its files vanishes meanwhile (a reconversion)."""
    digest = hashlib.sha256(b"v2")
    for path in sorted(folder.iterdir()):
        if path.is_file():
            stat = path.stat()
            digest.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return f"{folder.name}-{dtype}-{digest.hexdigest()[:16]}"


def variant_dir(folder: Path, dtype: str) -> Path:
    return models_dir() / "variants" / _key(folder, dtype)


def find(folder: Path, dtype: str) -> tuple[Path, str] | None:
    """The cached variant folder and the weights format it records, if one is complete."""
    try:
        target = variant_dir(folder, dtype)
        config = json.loads((target / "config.json").read_text())
    except (OSError, ValueError):
        return None
    if not (target / "model.safetensors").exists():
        return None
    return target, str(config.get(_FORMAT_KEY, dtype))


def discard(folder: Path, dtype: str) -> None:
    with contextlib.suppress(OSError):
        shutil.rmtree(variant_dir(folder, dtype), ignore_errors=True)


def save(folder: Path, dtype: str, model: Any, weights_format: str) -> None:
    """Write the loaded (cast) model as a plain MLX folder; atomic, best effort."""
    try:
        target = variant_dir(folder, dtype)
        target.parent.mkdir(parents=True, exist_ok=True)
        with try_cache_lock(target.parent, target.name) as held:
            if held and not target.exists():  # else: another process is saving it, or did
                _write(folder, target, model, weights_format)
    except OSError:  # a full disk must not fail the load: the model is in memory already
        pass


def _write(folder: Path, target: Path, model: Any, weights_format: str) -> None:
    import mlx.core as mx
    from mlx.utils import tree_flatten

    prefix = f".tmp-{target.name}-"  # made only under the lock: any other is a killed save's
    sweep(target.parent, prefix)
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=target.parent))
    share(tmp)  # the cache is not secret
    try:
        for path in folder.iterdir():
            if path.is_file() and not path.name.endswith(".safetensors") and path.name not in _SKIP:
                shutil.copy2(path, tmp / path.name)
        config = json.loads((folder / "config.json").read_text())
        for key in ("quantization", "quantization_config"):
            config.pop(key, None)
        config[_FORMAT_KEY] = weights_format
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        mx.save_safetensors(str(tmp / "model.safetensors"), dict(tree_flatten(model.parameters())),
                            metadata={"format": "mlx"})
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

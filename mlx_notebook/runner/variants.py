"""A cache of models already cast to another dtype (e.g. 4-bit demo -> float32 on a Linux CPU).

Dequantizing and casting at every load cost ~2 s of the demo's ~2.4 s start; the
cast weights are saved once next to the conversion cache and loaded directly
afterwards. The key fingerprints the source folder's files, so a changed model
gets a fresh variant; a variant that fails to load is simply rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ..paths import models_dir

_SKIP = {"model.safetensors.index.json"}
_FORMAT_KEY = "mlx_notebook_weights_format"


def _key(folder: Path, dtype: str) -> str:
    digest = hashlib.sha256(str(folder.resolve()).encode())
    for path in sorted(folder.iterdir()):
        if path.is_file():
            stat = path.stat()
            digest.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return f"{folder.name}-{dtype}-{digest.hexdigest()[:16]}"


def variant_dir(folder: Path, dtype: str) -> Path:
    return models_dir() / "variants" / _key(folder, dtype)


def find(folder: Path, dtype: str) -> tuple[Path, str] | None:
    """The cached variant folder and the weights format it records, if one is complete."""
    target = variant_dir(folder, dtype)
    try:
        config = json.loads((target / "config.json").read_text())
    except (OSError, ValueError):
        return None
    if not (target / "model.safetensors").exists():
        return None
    return target, str(config.get(_FORMAT_KEY, dtype))


def discard(folder: Path, dtype: str) -> None:
    shutil.rmtree(variant_dir(folder, dtype), ignore_errors=True)


def save(folder: Path, dtype: str, model: Any, weights_format: str) -> None:
    """Write the loaded (cast) model as a plain MLX folder; atomic, best effort."""
    import mlx.core as mx
    from mlx.utils import tree_flatten

    target = variant_dir(folder, dtype)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
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
        os.replace(tmp, target) if not target.exists() else shutil.rmtree(tmp)
    except OSError:  # a full disk must not fail the load: the model is in memory already
        shutil.rmtree(tmp, ignore_errors=True)

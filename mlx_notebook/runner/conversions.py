"""The GGUF conversion cache: demo and ``.gguf`` models converted once to MLX folders.

Conversions live in ``models_dir()``, keyed by a hash of their source; each is
written to a temporary folder, checked, and renamed into place, so a half-written
or damaged entry is detected (file sizes, or a failed load) and converted again.
One process converts an entry at a time (a file lock, :mod:`runner.cachelock`);
the others wait and then use its conversion, so two kernels loading the same
model into an empty cache both succeed and leave one conversion.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from ..model_files import (
    DEMO_GGUF_SHA256,
    ModelLoadError,
    ModelSpec,
    converted_folder,
    file_fingerprint,
)
from .cachelock import cache_lock, share, sweep, try_cache_lock
from .progress import Progress, scaled

__all__ = ["MARKER", "converted"]

MARKER = "mlx_notebook.json"  # what a complete conversion records about itself


def _cached_facts(folder: Path) -> dict[str, Any] | None:
    """The marker of a complete conversion, or None if missing or any file has changed size."""
    try:
        facts = json.loads((folder / MARKER).read_text())
        for name, size in facts["files"].items():
            if (folder / name).stat().st_size != size:
                return None
        return dict(facts)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _convert(spec: ModelSpec, folder: Path, progress: Progress) -> dict[str, Any]:
    """Convert into a temporary folder and rename it into place; hold the entry's lock."""
    from .gguf import GGUFError, convert_gguf

    if spec.kind == "demo":
        from .demo import fetch_demo_gguf

        gguf = fetch_demo_gguf(scaled(progress, 0, 70))
        source_hash = DEMO_GGUF_SHA256[:16]
    else:
        assert spec.path is not None
        gguf, source_hash = spec.path, file_fingerprint(spec.path)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=_temp_prefix(folder)))
    share(tmp)  # the cache is not secret
    try:
        try:
            facts = convert_gguf(gguf, tmp, scaled(progress, 70, 100))
        except GGUFError as exc:
            raise ModelLoadError(str(exc)) from exc
        facts.update(
            source=str(gguf),
            source_hash=source_hash,
            files={p.name: p.stat().st_size for p in tmp.iterdir()},
        )
        (tmp / MARKER).write_text(json.dumps(facts, indent=2))
        if folder.exists():  # a broken entry: moved aside, so a reader keeps its open files
            os.rename(folder, Path(tempfile.mkdtemp(dir=folder.parent,
                                                    prefix=_temp_prefix(folder))) / "old")
        try:
            os.rename(tmp, folder)
        except OSError:
            if _cached_facts(folder) is None:  # not a converter that took no lock (older version)
                raise
        return facts
    finally:
        sweep(folder.parent, _temp_prefix(folder))


def _temp_prefix(folder: Path) -> str:
    """Temporary folders of one entry: only its lock holder makes them, so any other is stale."""
    return f".convert-{folder.name}-"


def _marker_id(folder: Path) -> tuple[int, int] | None:
    """Which conversion is in place now (its marker's inode and mtime), if any."""
    try:
        st = (folder / MARKER).stat()
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns


def _sweep_leftovers(folder: Path) -> None:
    """Remove what a killed conversion of this entry left, unless one is running now."""
    prefix = _temp_prefix(folder)
    try:
        if not any(p.name.startswith(prefix) for p in folder.parent.iterdir()):
            return
    except OSError:
        return
    with try_cache_lock(folder.parent, folder.name) as held:
        if held:
            sweep(folder.parent, prefix)


def converted(spec: ModelSpec, progress: Progress, *,
              force: bool = False) -> tuple[Path, dict[str, Any]]:
    """The MLX folder of a GGUF-backed spec and its conversion facts; converts if needed.

    ``force`` converts again (an entry whose sizes match but which failed to load),
    unless another process replaced that entry while this one waited for the lock.
    """
    folder = converted_folder(spec)
    facts = None if force else _cached_facts(folder)
    if facts is None:
        seen = _marker_id(folder)
        with cache_lock(folder.parent, folder.name, progress,
                        "waiting for another process converting this model"):
            facts = _cached_facts(folder)
            if facts is None or (force and _marker_id(folder) == seen):
                facts = _convert(spec, folder, progress)
    else:
        _sweep_leftovers(folder)
    progress(100.0, "converted model ready")
    return folder, facts

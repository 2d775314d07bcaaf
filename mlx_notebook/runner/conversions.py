"""The GGUF conversion cache: demo and ``.gguf`` models converted once to MLX folders.

Conversions live in ``models_dir()``, keyed by a hash of their source; each is
written to a temporary folder, checked, and renamed into place, so a half-written
or damaged entry is detected (file sizes, or a failed load) and converted again.
"""

from __future__ import annotations

import json
import os
import shutil
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
from ..paths import models_dir
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
    """Convert into a temporary folder and rename it into place (atomic on one filesystem)."""
    from .gguf import GGUFError, convert_gguf

    if spec.kind == "demo":
        from .demo import fetch_demo_gguf

        gguf = fetch_demo_gguf(scaled(progress, 0, 70))
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
            facts = convert_gguf(gguf, tmp, scaled(progress, 70, 100))
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


def converted(spec: ModelSpec, progress: Progress, *,
              force: bool = False) -> tuple[Path, dict[str, Any]]:
    """The MLX folder of a GGUF-backed spec and its conversion facts; converts if needed."""
    folder = converted_folder(spec)
    facts = None if force else _cached_facts(folder)
    if facts is None:
        facts = _convert(spec, folder, progress)
    progress(100.0, "converted model ready")
    return folder, facts

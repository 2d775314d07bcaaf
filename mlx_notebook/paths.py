"""Where mlx_notebook keeps files: one cache folder, overridable by ``MLX_NOTEBOOK_CACHE``."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "MLX_NOTEBOOK_CACHE"


def cache_dir() -> Path:
    """The user's cache folder for converted models, downloads and the runner registry."""
    override = os.environ.get(CACHE_ENV)
    if override:
        path = Path(override).expanduser()
    else:
        import platformdirs

        path = Path(platformdirs.user_cache_dir("mlx_notebook", appauthor=False))
    path.mkdir(parents=True, exist_ok=True)
    return path


def models_dir() -> Path:
    """Converted models (GGUF -> MLX), keyed by a hash of their source."""
    path = cache_dir() / "models"
    path.mkdir(parents=True, exist_ok=True)
    return path


def downloads_dir() -> Path:
    """Downloaded source files (the demo model's wheel)."""
    path = cache_dir() / "downloads"
    path.mkdir(parents=True, exist_ok=True)
    return path


def registry_dir() -> Path:
    """Records of live runners, so a later kernel can reap runners left by a dead one."""
    return private_dir(cache_dir() / "runners")


def private_dir(path: Path) -> Path:
    """``path`` as a folder only its owner can read, also when it already existed wider."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.stat().st_mode & 0o077:
        path.chmod(0o700)
    return path

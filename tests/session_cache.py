"""The test session's own model cache, seeded with the demo model (imported by conftest.py).

The session runs with ``MLX_NOTEBOOK_CACHE`` set to a temporary folder, so no test
writes to the user's cache or registry. The demo model is hard-linked into it from
the user's cache once (copied across file systems): our code only ever replaces
cache files (write, then rename), never writes into them, so the user's files are
never changed. A test that damages a cache file must damage a copy.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

USER_CACHE_ENV = "MLX_NOTEBOOK_TEST_USER_CACHE"  # the cache the session's one was seeded from


def user_cache() -> Path:
    """The cache the user's kernels use (``MLX_NOTEBOOK_CACHE`` or the platform's)."""
    if os.environ.get(USER_CACHE_ENV):
        return Path(os.environ[USER_CACHE_ENV])
    if os.environ.get("MLX_NOTEBOOK_CACHE"):
        return Path(os.environ["MLX_NOTEBOOK_CACHE"]).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("mlx_notebook", appauthor=False))


def _link(source: Path, target: Path) -> None:
    """Hard-link a file or a folder's files (a copy where links cannot be made)."""
    if target.exists() or not source.exists():
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    if source.is_dir():
        try:
            shutil.copytree(source, target, copy_function=os.link)
        except OSError:
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(source, target)
        return
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def seed_session_cache() -> None:
    """Link the demo model (GGUF, conversion, cast variants) from the user's cache, if there."""
    from mlx_notebook.model_files import converted_folder, demo_gguf_path, parse_spec
    from mlx_notebook.paths import cache_dir

    source, here = user_cache(), cache_dir()
    if source.resolve() == here.resolve():
        return
    gguf = demo_gguf_path()
    _link(source / gguf.relative_to(here), gguf)
    folder = converted_folder(parse_spec("demo"))
    _link(source / folder.relative_to(here), folder)
    variants = source / "models" / "variants"
    if variants.is_dir():
        for entry in variants.iterdir():
            if entry.name.startswith(folder.name + "-"):
                _link(entry, here / "models" / "variants" / entry.name)

"""Cross-process locks for the model cache, and clean-up of what a killed process left.

Two kernels loading the same model for the first time must not convert (or
download) it at once: one would delete or replace the other's files under it.
Each cache entry has a lock file beside it (``filelock``: an OS lock, released
when its process dies, however it dies). Temporary files are named after the
entry they are for, so whoever holds its lock knows that any such leftover is
from a process that was killed while holding it, and removes it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from filelock import FileLock, Timeout

from .progress import Progress

__all__ = ["cache_lock", "try_cache_lock", "sweep", "share"]


def _lock_path(directory: Path, name: str) -> Path:
    return directory / f".{name}.lock"


@contextlib.contextmanager
def cache_lock(directory: Path, name: str, progress: Progress | None = None,
               waiting: str = "waiting for another process to finish") -> Iterator[None]:
    """Hold the lock of entry ``name`` in ``directory``; says so when it has to wait."""
    lock = FileLock(str(_lock_path(directory, name)))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        if progress is not None:
            progress(0.0, waiting)
        lock.acquire()  # no time limit: the holder is working, or dies and lets go
    try:
        yield
    finally:
        lock.release()


@contextlib.contextmanager
def try_cache_lock(directory: Path, name: str) -> Iterator[bool]:
    """The lock of ``name`` if nobody holds it now (True), else go on without it (False)."""
    lock = FileLock(str(_lock_path(directory, name)))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        yield False
        return
    try:
        yield True
    finally:
        lock.release()


def sweep(directory: Path, prefix: str) -> None:
    """Remove every ``prefix*`` entry of ``directory``; call it holding the lock they belong to."""
    with contextlib.suppress(OSError):
        for path in directory.iterdir():
            if path.name.startswith(prefix):
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    with contextlib.suppress(OSError):
                        path.unlink()


def share(path: Path, mode: int = 0o777) -> None:
    """Give ``path`` the user's usual permissions (``mkdtemp``/``mkstemp`` make it private)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, mode & ~umask)

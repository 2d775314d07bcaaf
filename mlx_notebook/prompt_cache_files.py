"""Saved prompt caches in the cache folder: names, the listing, removal and the byte budget.

Each cache is two files in ``<cache>/prompt-caches/``: ``NAME.safetensors`` (mlx-lm's
``save_prompt_cache``: the KV arrays, the tokens and the model key in its metadata,
written by the runner) and ``NAME.json`` (a :class:`SavedPromptCache` summary, so a
listing reads no arrays). Both are written to a temporary name and renamed, under the
entry's ``filelock`` (``.NAME.lock``, as runner/cachelock.py names the model cache's), so
two kernels never see half a cache. No MLX here: the kernel lists and removes caches
without a runner, the runner writes and reads them.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

from filelock import FileLock, Timeout

from .paths import cache_dir
from .prompt_cache_protocol import SavedPromptCache, name_problem

__all__ = ["BUDGET_ENV", "DEFAULT_BUDGET_BYTES", "caches_dir", "name_problem", "entry_lock",
           "arrays_path", "summary_path", "read_summary", "write_summary", "list_caches",
           "remove", "touch", "evict", "budget_bytes", "ARRAYS_SUFFIX", "SUMMARY_SUFFIX"]

BUDGET_ENV = "MLX_NOTEBOOK_PROMPT_CACHE_BYTES"
# A few long documents of a 7B model (~0.5 GB per 4k tokens in float16), or ~90 of the
# demo's 2k-token caches; the oldest-used go first beyond it.
DEFAULT_BUDGET_BYTES = 8 << 30
ARRAYS_SUFFIX, SUMMARY_SUFFIX = ".safetensors", ".json"


def caches_dir() -> Path:
    path = cache_dir() / "prompt-caches"
    path.mkdir(parents=True, exist_ok=True)
    return path


def arrays_path(name: str) -> Path:
    return caches_dir() / f"{name}{ARRAYS_SUFFIX}"


def summary_path(name: str) -> Path:
    return caches_dir() / f"{name}{SUMMARY_SUFFIX}"


@contextlib.contextmanager
def entry_lock(name: str, timeout: float = -1) -> Iterator[None]:
    """Hold ``name``'s lock (an OS lock: let go when its process dies, however it dies)."""
    lock = FileLock(str(caches_dir() / f".{name}.lock"))
    lock.acquire(timeout=timeout)
    try:
        yield
    finally:
        lock.release()


def read_summary(name: str) -> SavedPromptCache | None:
    """The summary of ``name``, or None when there is none (or it is unreadable)."""
    try:
        data = json.loads(summary_path(name).read_text())
        return SavedPromptCache.from_json(data)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_summary(info: SavedPromptCache) -> None:
    """Write ``info`` atomically, with the folder's usual permissions (umask)."""
    path = summary_path(info.name)
    tmp = path.with_name(f".{info.name}.{os.getpid()}.json.tmp")
    data = {k: v for k, v in info.to_json().items()
            if k not in ("evicted", "prompt", "messages", "in_memory")}
    tmp.write_text(json.dumps(data, ensure_ascii=False))
    os.replace(tmp, path)


def list_caches() -> list[SavedPromptCache]:
    """Every saved cache with both files, most recently used first."""
    found = []
    for path in caches_dir().glob(f"*{SUMMARY_SUFFIX}"):
        name = path.name[:-len(SUMMARY_SUFFIX)]
        if name_problem(name) is None and arrays_path(name).is_file():
            info = read_summary(name)
            if info is not None:
                found.append(info)
    return sorted(found, key=lambda i: i.last_used, reverse=True)


def remove(name: str) -> bool:
    """Delete ``name``'s files (under its lock); False if there was no such cache."""
    with entry_lock(name):
        existed = False
        for path in (arrays_path(name), summary_path(name)):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                existed = True
        return existed


def touch(name: str) -> None:
    """Mark ``name`` as used now (a load): the budget evicts the least recently used."""
    from dataclasses import replace

    try:
        with entry_lock(name, timeout=0):  # being written: the writer's summary is newer
            info = read_summary(name)
            if info is not None:
                write_summary(replace(info, last_used=time.time()))
    except Timeout:
        pass


def budget_bytes(given: int | None = None) -> int:
    """The folder's byte budget: ``given``, else ``$MLX_NOTEBOOK_PROMPT_CACHE_BYTES``, else
    :data:`DEFAULT_BUDGET_BYTES` (a value like "2GB" or "500MB"; bad ones are ignored)."""
    if given is not None:
        return given
    text = os.environ.get(BUDGET_ENV, "").strip()
    if text:
        from .units import parse_bytes

        with contextlib.suppress(ValueError):
            return parse_bytes(text)
    return DEFAULT_BUDGET_BYTES


def evict(budget: int, keep: str) -> list[str]:
    """Remove the least recently used caches (never ``keep``) until the folder fits ``budget``.

    A cache another process holds the lock of (being written or read) is skipped.
    """
    caches = list_caches()
    total = sum(i.bytes for i in caches)
    removed = []
    for info in sorted(caches, key=lambda i: i.last_used):
        if total <= budget:
            break
        if info.name == keep:
            continue
        try:
            with entry_lock(info.name, timeout=0):
                for path in (arrays_path(info.name), summary_path(info.name)):
                    with contextlib.suppress(FileNotFoundError):
                        path.unlink()
        except Timeout:
            continue
        total -= info.bytes
        removed.append(info.name)
    return removed

"""Prompt-cache requests to a runner: ``/v1/cache/save`` and ``/v1/cache/load``.

Streams read like a look-inside request's (control/inside.py: progress, keep-alives,
one result line, done). A refusal (400) becomes a :class:`~mlx_notebook.errors.PromptCacheError`
whose ``reason`` comes from the field the runner named, so no code reads its words.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import httpx2

from ..errors import PromptCacheError
from ..prompt_cache_protocol import CacheLoadRequest, CacheSaveRequest, SavedPromptCache
from .inside import Progress, _run

if TYPE_CHECKING:
    from .connection import RunnerConnection

__all__ = ["save_prompt_cache", "load_prompt_cache"]

_REASONS = {"name": "unknown", "model": "mismatch", "file": "corrupt"}


def _decode(data: dict[str, Any]) -> SavedPromptCache:
    if data.get("kind") not in ("cache_save", "cache_load"):
        raise ValueError(f"unknown result kind {data.get('kind')!r}")
    return SavedPromptCache.from_json(data["result"])


def _refused(conn: RunnerConnection, name: str) -> Any:
    def check(response: httpx2.Response) -> None:
        if response.status_code != 400:
            return
        try:
            body = response.json()
            field, message = body.get("field"), str(body["error"])
        except (ValueError, KeyError, AttributeError):
            return
        if field in _REASONS:
            raise PromptCacheError(f"runner {conn.name!r}: {message}", name=name,
                                   reason=_REASONS[field], status=400)

    return check


def save_prompt_cache(conn: RunnerConnection, request: CacheSaveRequest,
                      on_progress: Progress | None = None) -> SavedPromptCache:
    return _cache_pass(conn, "cache_save", request, on_progress)


def load_prompt_cache(conn: RunnerConnection, request: CacheLoadRequest,
                      on_progress: Progress | None = None) -> SavedPromptCache:
    return _cache_pass(conn, "cache_load", request, on_progress)


def _cache_pass(conn: RunnerConnection, endpoint: str, request: CacheSaveRequest | CacheLoadRequest,
                on_progress: Progress | None) -> SavedPromptCache:
    """One save or load: the runner's prefill-only pass, its refusals as PromptCacheError."""
    result = _run(conn, endpoint, request.to_json(), on_progress, _decode,
                  _refused(conn, request.name))
    assert isinstance(result, SavedPromptCache)
    return result

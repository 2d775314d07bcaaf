"""Prompt caches on disk, the worker's half: prefill and save, load into the prompt cache.

Both are passes like a look-inside's (runner/inspect.py): generators the decode loop
runs one chunk at a time between decode steps, on the worker thread, which owns MLX
and the in-memory ``LRUPromptCache``. A saved file is mlx-lm's ``save_prompt_cache``
with our key in its metadata (model, weights hash and format, the exact tokens), so a
loaded cache is refused for other weights and put in the prompt cache under exactly
the tokens it holds: a later request that extends them reads only the rest.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import mlx.core as mx
from mlx_lm.models.cache import (
    KVCache,
    load_prompt_cache,
    make_prompt_cache,
    save_prompt_cache,
)

from ..inside_protocol import InsideKind
from ..prompt_cache_files import (
    ARRAYS_SUFFIX,
    arrays_path,
    caches_dir,
    entry_lock,
    evict,
    touch,
    write_summary,
)
from ..prompt_cache_protocol import PromptCacheEvent, SavedPromptCache
from ..protocol import ProgressEvent
from .decode import _CACHE_KEY
from .inspect import InspectJob, Pass

if TYPE_CHECKING:
    from .engine import Engine
    from .models import LoadedModel

__all__ = ["FILE_FORMAT", "META_KEY", "PromptFileJob", "CorruptCache", "read_key", "key_problem",
           "save_pass", "load_pass"]

FILE_FORMAT = 1
META_KEY = "mlx_notebook"  # our entry in the file's metadata (mlx-lm flattens it to "0.<key>")
_MAX_HEADER = 64 << 20  # a safetensors header past this is not one of ours
_LOCK_SECONDS = 10.0  # the worker waits this long for another process writing the same name
_DTYPE_BYTES = {"F32": 4, "F16": 2, "BF16": 2, "U32": 4, "I32": 4, "U8": 1, "I8": 1, "U16": 2,
                "I16": 2, "F64": 8, "I64": 8, "U64": 8, "BOOL": 1}


@dataclass
class PromptFileJob(InspectJob):
    """A save or a load in the mailbox like a look-inside pass; its answer is its own event."""

    action: str = "cache_load"

    def result_event(self, value: Any) -> Any:
        return PromptCacheEvent(kind="cache_save" if self.action == "cache_save" else "cache_load",
                                result=value.to_json())


def make_job(action: str, request_id: str, tokens: list[int], work: Pass) -> PromptFileJob:
    # The look-inside queue names a failed pass by its kind ("cache_load failed: ...").
    return PromptFileJob(request_id=request_id, prompt_tokens=tokens,
                         kind=cast(InsideKind, action), work=work, action=action)


class CorruptCache(ValueError):
    """A file that is not a prompt cache this package wrote (truncated, overwritten, foreign)."""


def read_key(path: Path) -> dict[str, Any]:
    """Our metadata of the file at ``path``, checked without MLX: the safetensors header parses
    and every array lies inside the file. :class:`CorruptCache` says what is wrong."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(8)
            length = int.from_bytes(head, "little") if len(head) == 8 else -1
            if not 0 < length <= min(_MAX_HEADER, size - 8):
                raise CorruptCache("it is not a safetensors file (or it was cut short)")
            header = json.loads(f.read(length))
    except OSError as exc:
        raise CorruptCache(f"it cannot be read: {exc.strerror or exc}") from exc
    except (UnicodeDecodeError, ValueError) as exc:
        raise CorruptCache("its header is not valid JSON") from exc
    if not isinstance(header, dict):
        raise CorruptCache("its header is not a JSON object")
    data_bytes = size - 8 - length
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            start, end = (int(x) for x in entry["data_offsets"])
            count = 1
            for dim in entry["shape"]:
                count *= int(dim)
            width = _DTYPE_BYTES[entry["dtype"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptCache(f"its array {name[:40]!r} is malformed") from exc
        if not 0 <= start <= end <= data_bytes or end - start != count * width:
            raise CorruptCache("its arrays run past the end of the file (it was cut short)")
    meta = header.get("__metadata__") or {}
    try:
        key = json.loads(meta[f"0.{META_KEY}"])
        if not isinstance(key, dict) or key.get("format") != FILE_FORMAT or \
                not isinstance(key.get("tokens"), list):
            raise ValueError("not ours")
    except (KeyError, TypeError, ValueError) as exc:
        raise CorruptCache("it was not written by mlx_notebook (no prompt-cache key)") from exc
    return key


def key_problem(key: dict[str, Any], loaded: LoadedModel, name: str) -> str | None:
    """Why the cache ``key`` must not be used with ``loaded`` (None: it may)."""
    ours = (loaded.source_hash, loaded.weights_format)
    theirs = (str(key.get("source_hash", "")), str(key.get("weights", "")))
    if ours == theirs:
        return None
    return (f"prompt cache {name!r} was saved with {key.get('model')!r} (weights {theirs[0]}, "
            f"{theirs[1]}); this runner serves {loaded.name!r} (weights {ours[0]}, {ours[1]}). "
            f"A KV cache belongs to the weights that made it: save it again with this model")


def _info(key: dict[str, Any], name: str, tokens: int, nbytes: int, created: float,
          used: float) -> SavedPromptCache:
    prompt = key.get("prompt")
    return SavedPromptCache(
        name=name, model=str(key["model"]), source_hash=str(key["source_hash"]),
        weights=str(key["weights"]), kind="messages" if key["kind"] == "messages" else "text",
        tokens=tokens, bytes=nbytes, created=created, last_used=used,
        preview=str(key.get("preview", "")), extends=bool(key.get("extends", True)),
        prompt=prompt if isinstance(prompt, str) else None)


def _compact(cache: list[Any]) -> list[Any]:
    """Plain KV caches cut to what they hold: a KVCache keeps room beyond its offset (steps
    of 256 tokens, or a longer prompt's tail after a trim), which need not go to disk."""
    out = []
    for c in cache:
        if type(c) is KVCache and c.keys is not None and c.offset < c.keys.shape[2]:
            compact = KVCache()
            compact.state = (c.keys[..., :c.offset, :], c.values[..., :c.offset, :], c.offset)
            c = compact
        out.append(c)
    return out


def save_pass(engine: Engine, name: str, tokens: list[int], key: dict[str, Any],
              budget: int) -> Pass:
    """Prefill ``tokens`` (from the nearest in-memory prompt cache), write the file, keep the
    cache in memory too; then evict the least recently used files beyond ``budget``."""
    loop = engine.decode_loop
    assert loop is not None and engine.loaded is not None
    model = engine.loaded.model
    cache, rest = loop.cache.fetch_nearest_cache(_CACHE_KEY, tokens)
    if cache is None:
        cache = make_prompt_cache(model)
    done, step = len(tokens) - len(rest), engine.settings.prefill_step
    while rest:
        chunk, rest = rest[:step], rest[step:]
        model(mx.array(chunk)[None], cache=cache)  # only the cache is evaluated: no logits
        mx.eval([c.state for c in cache])
        done += len(chunk)
        yield ProgressEvent(processed=done, total=len(tokens))
    cache = _compact(cache)
    target = arrays_path(name)
    tmp = caches_dir() / f".{name}.{os.getpid()}.tmp{ARRAYS_SUFFIX}"
    now = time.time()
    stored = json.dumps({**key, "format": FILE_FORMAT, "tokens": tokens, "created": now})
    with entry_lock(name, timeout=_LOCK_SECONDS):
        for leftover in caches_dir().glob(f".{name}.*.tmp{ARRAYS_SUFFIX}"):
            leftover.unlink(missing_ok=True)  # from a process killed while writing
        try:
            save_prompt_cache(str(tmp), cache, {META_KEY: stored})
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        info = _info(key, name, len(tokens), target.stat().st_size, now, now)
        write_summary(info)
    loop.cache.insert_cache(_CACHE_KEY, list(tokens), cache, cache_type="system")
    return replace(info, prompt=None, evicted=tuple(evict(budget, keep=name)))


def load_pass(engine: Engine, name: str, key: dict[str, Any]) -> Pass:
    """Read the file into the in-memory prompt cache under the exact tokens it holds."""
    loop = engine.decode_loop
    assert loop is not None and engine.loaded is not None
    path = arrays_path(name)
    cache, meta = load_prompt_cache(str(path), return_metadata=True)
    mx.eval([c.state for c in cache])
    yield ProgressEvent(processed=len(key["tokens"]), total=len(key["tokens"]))
    stored = json.loads(meta[META_KEY])
    problem = key_problem(stored, engine.loaded, name)
    if problem:  # another process saved this name again since the check: check it again
        raise ValueError(problem)
    tokens = [int(t) for t in stored["tokens"]]
    expected = [type(c).__name__ for c in make_prompt_cache(engine.loaded.model)]
    found = [type(c).__name__ for c in cache]
    offsets = {getattr(c, "offset", len(tokens)) for c in cache}
    if found != expected or offsets != {len(tokens)}:
        raise ValueError(f"prompt cache {name!r} holds {len(found)} layers ({found[0] if found else '-'})"
                         f" for {offsets} tokens; this model makes {len(expected)} "
                         f"({expected[0] if expected else '-'}) for {len(tokens)}")
    nbytes = sum(c.nbytes for c in cache)
    in_memory = nbytes <= loop.cache.max_bytes
    loop.cache.insert_cache(_CACHE_KEY, tokens, cache, cache_type="system")
    stat = path.stat()
    touch(name)
    created = float(stored.get("created", stat.st_mtime))
    info = _info(stored, name, len(tokens), stat.st_size, created, time.time())
    messages = stored.get("messages")
    if messages is not None:
        from ..protocol import _messages_from_json

        info = replace(info, messages=_messages_from_json(messages))
    return replace(info, in_memory=in_memory)

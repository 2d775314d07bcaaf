"""Wire types of the prompt-cache endpoints, ``/v1/cache/save`` and ``/v1/cache/load``.

A saved prompt cache is the KV cache of an exact token prefix (a document, a
conversation's start) in a file of the cache folder (:mod:`mlx_notebook.prompt_cache_files`);
loading it puts it in the runner's in-memory prompt cache, so the next request whose
tokens extend it reads only what follows. Both answers are NDJSON streams like a
look-inside request's: progress lines while the runner prefills, one
:class:`PromptCacheEvent`, then a :class:`~mlx_notebook.protocol.DoneEvent`.
No MLX, no httpx: both sides import it.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from .protocol import (
    ChatMessage,
    ValidationError,
    _expect_object,
    _integer,
    _messages_from_json,
    _reject_unknown,
    _string,
    _think,
)

__all__ = ["CacheSaveRequest", "CacheLoadRequest", "SavedPromptCache", "PromptCacheEvent",
           "CacheKind", "name_problem"]

CacheKind = Literal["text", "messages"]


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a cache file (None: it can): no paths, no hidden files."""
    if _NAME.fullmatch(name) and not name.endswith("."):
        return None
    return (f"prompt cache names are 1-64 characters of A-Z a-z 0-9 . _ - starting with a letter "
            f"or digit (no paths); got {name[:80]!r}")


def _name(data: dict[str, Any]) -> str:
    name = _string(data, "name", "", required=True, max_len=256) or ""
    problem = name_problem(name)
    if problem:
        raise ValidationError("name", problem)
    return name


@dataclass(frozen=True)
class CacheSaveRequest:
    """Prefill ``text`` (its raw tokens, as a raw prompt) or ``messages`` (the chat template
    without the generation prompt) and save the KV cache as ``name``."""

    name: str
    text: str | None = None
    messages: tuple[ChatMessage, ...] | None = None
    think: bool | None = None  # messages only: the template's enable_thinking
    budget_bytes: int | None = None  # the folder's byte budget (None: the default)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"name": self.name}
        if self.text is not None:
            data["text"] = self.text
        if self.messages is not None:
            data["messages"] = [m.to_json() for m in self.messages]
        if self.think is not None:
            data["think"] = self.think
        if self.budget_bytes is not None:
            data["budget_bytes"] = self.budget_bytes
        return data

    @classmethod
    def from_json(cls, value: Any) -> CacheSaveRequest:
        data = _expect_object(value, "body")
        _reject_unknown(data, {"name", "text", "messages", "think", "budget_bytes"}, "")
        name = _name(data)
        text = _string(data, "text", "")
        messages = _messages_from_json(data["messages"]) if "messages" in data else None
        if (text is None) == (messages is None):
            raise ValidationError("text", "give exactly one of text or messages")
        if text == "" or messages == ():
            raise ValidationError("text" if text is not None else "messages", "must not be empty")
        if text is not None and data.get("think") is not None:
            raise ValidationError("think", "only with messages (the chat template uses it)")
        budget = _integer(data, "budget_bytes", "", None, 0, 1 << 50)
        return cls(name=name, text=text, messages=messages, think=_think(data),
                   budget_bytes=budget)


@dataclass(frozen=True)
class CacheLoadRequest:
    name: str

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name}

    @classmethod
    def from_json(cls, value: Any) -> CacheLoadRequest:
        data = _expect_object(value, "body")
        _reject_unknown(data, {"name"}, "")
        return cls(name=_name(data))


@dataclass(frozen=True)
class SavedPromptCache:
    """One saved prompt cache, as ``/v1/cache/*`` answer it and ``mn.prompt_caches()`` lists it."""

    name: str
    model: str  # the runner's model name ("demo", a repo id, a folder name)
    source_hash: str  # the weights' hash (Status.source_hash): the cache is theirs only
    weights: str  # the weights' format ("float32", "4-bit affine ..."): part of the key
    kind: CacheKind
    tokens: int  # the exact token prefix it holds
    bytes: int  # the file's size
    created: float  # seconds since the epoch
    last_used: float  # saved or last loaded: the budget evicts the oldest first
    preview: str = ""  # the prompt's first characters
    # Answers only: on save, the caches removed to keep the budget; on load, the prompt it
    # holds (to ask about it) and whether a later chat turn extends its tokens exactly.
    evicted: tuple[str, ...] = ()
    prompt: str | None = field(default=None, repr=False)  # a document: long
    messages: tuple[ChatMessage, ...] | None = field(default=None, repr=False)
    extends: bool = True  # a chat turn added to its messages starts with its tokens
    in_memory: bool = True  # it fit the runner's in-memory prompt cache (else: too large)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["messages"] = None if self.messages is None else [m.to_json() for m in self.messages]
        data["evicted"] = list(self.evicted)
        return data

    @classmethod
    def from_json(cls, value: Any) -> SavedPromptCache:
        """KeyError/TypeError/ValueError/ValidationError if malformed."""
        data = _expect_object(value, "result")
        messages = data.get("messages")
        return cls(
            name=str(data["name"]), model=str(data["model"]),
            source_hash=str(data["source_hash"]), weights=str(data["weights"]),
            kind="messages" if data["kind"] == "messages" else "text",
            tokens=int(data["tokens"]), bytes=int(data["bytes"]),
            created=float(data["created"]), last_used=float(data["last_used"]),
            preview=str(data.get("preview", "")),
            evicted=tuple(str(n) for n in data.get("evicted", ())),
            prompt=None if data.get("prompt") is None else str(data["prompt"]),
            messages=None if messages is None else _messages_from_json(messages),
            extends=bool(data.get("extends", True)), in_memory=bool(data.get("in_memory", True)))


@dataclass(frozen=True)
class PromptCacheEvent:
    """The answer of ``/v1/cache/save`` or ``/v1/cache/load``, one line before its DoneEvent."""

    kind: Literal["cache_save", "cache_load"]
    result: dict[str, Any] = field(default_factory=dict)  # a SavedPromptCache
    type: Literal["result"] = "result"

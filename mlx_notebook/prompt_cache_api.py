"""Prompt caches on disk: read a long document once, ask about it after a restart.

>>> import mlx_notebook as mn
>>> mn.cache_prompt([mn.ChatMessage("system", manual)], name="manual")   # doctest: +SKIP
>>> # ... a new kernel, a new runner:
>>> mn.load("demo"); mn.load_prompt_cache("manual")                     # doctest: +SKIP
>>> mn.chat("What does chapter 2 say about safety?")  # reads only the question  # doctest: +SKIP

A cache holds the KV cache of an exact token prefix, for the weights that made it
(another model's or another version's is refused). Messages are cached up to the end
of their last message (the chat template without the generation prompt), so the next
chat turn extends them; a loaded conversation becomes the model's chat (``mn.chat``
continues it). A text is cached as its raw tokens, so ``mn.generate(text + question,
raw=True)`` extends it. The runner's prompt cache matches the longest common prefix,
so a prompt that differs near the end still reads only what differs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .chat_history import get_history
from .errors import InvalidArgumentError, PromptCacheError
from .prompt_cache_protocol import (
    CacheLoadRequest,
    CacheSaveRequest,
    SavedPromptCache,
    name_problem,
)
from .protocol import ChatMessage, ValidationError

__all__ = ["cache_prompt", "load_prompt_cache", "prompt_caches", "remove_prompt_cache"]

TextOrMessages = str | Sequence[ChatMessage | Mapping[str, Any]]
NO_SUCH_CACHE = "no prompt cache named {name!r} (saved: {saved}); `%mlx cache ls` lists them"


def _client(model: str | None) -> Any:
    from .control.manager import get_manager

    return get_manager().get(model)


def _check_name(name: str) -> str:
    if not isinstance(name, str) or name_problem(name):
        raise InvalidArgumentError(name_problem(str(name)) or "name must be a string",
                                   field="name")
    return name


def _messages(items: Sequence[ChatMessage | Mapping[str, Any]]) -> tuple[ChatMessage, ...]:
    out = []
    for i, item in enumerate(items):
        if isinstance(item, ChatMessage):
            out.append(item)
            continue
        try:
            out.append(ChatMessage.from_json(dict(item), f"messages[{i}]"))
        except (TypeError, ValueError) as exc:
            raise InvalidArgumentError(str(exc), field="messages") from None
    if not out:
        raise InvalidArgumentError("messages must not be empty", field="messages")
    return tuple(out)


def cache_prompt(text_or_messages: TextOrMessages, *, name: str, model: str | None = None,
                 think: bool | None = None) -> SavedPromptCache:
    """Prefill a prompt once on ``model``'s runner and save its KV cache as ``name``.

    A ``str`` is cached as a raw prompt's tokens; chat messages (``ChatMessage`` or
    ``{"role", "content"}`` dicts) up to the end of the last one. The folder keeps a byte
    budget (``$MLX_NOTEBOOK_PROMPT_CACHE_BYTES``, default 8 GiB): the least recently used
    caches beyond it are removed, and the result's ``evicted`` names them.
    """
    from .prompt_cache_files import budget_bytes

    _check_name(name)
    if isinstance(text_or_messages, str):
        if not text_or_messages:
            raise InvalidArgumentError("the text to cache is empty", field="text")
        if think is not None:
            raise InvalidArgumentError("think goes with messages (the chat template uses it)",
                                       field="think")
        request = CacheSaveRequest(name=name, text=text_or_messages, budget_bytes=budget_bytes())
    else:
        request = CacheSaveRequest(name=name, messages=_messages(text_or_messages), think=think,
                                   budget_bytes=budget_bytes())
    try:
        CacheSaveRequest.from_json(request.to_json())  # the runner's own checks, here first
    except ValidationError as exc:
        raise InvalidArgumentError(str(exc), field=exc.field) from None
    client = _client(model)
    result = client.save_prompt_cache(request)
    assert isinstance(result, SavedPromptCache)
    return result


def load_prompt_cache(name: str, model: str | None = None, *, chat: bool = True
                      ) -> SavedPromptCache:
    """Put the saved cache ``name`` in ``model``'s runner: prompts that extend it read only the rest.

    A conversation (a system message, then user/assistant turns) becomes the model's chat
    when ``chat`` (``mn.chat`` continues it). Refused with :class:`PromptCacheError`
    (``reason``: "unknown", "mismatch" for other weights, "corrupt").
    """
    _check_name(name)
    client = _client(model)
    if not client.remote:  # the runner checks again; here the message can list the names
        from .prompt_cache_files import arrays_path, list_caches

        if not arrays_path(name).is_file():
            saved = ", ".join(i.name for i in list_caches()) or "none"
            raise PromptCacheError(NO_SUCH_CACHE.format(name=name, saved=saved), name=name,
                                   reason="unknown")
    result = client.load_prompt_cache(CacheLoadRequest(name=name))
    assert isinstance(result, SavedPromptCache)
    if chat and result.messages is not None:
        get_history().begin(client.name, list(result.messages))
    return result


def prompt_caches() -> list[SavedPromptCache]:
    """The saved prompt caches of this machine's cache folder, most recently used first."""
    from .prompt_cache_files import list_caches

    return list_caches()


def remove_prompt_cache(name: str) -> None:
    """Delete the saved cache ``name`` (a runner that loaded it keeps its copy in memory)."""
    from .prompt_cache_files import list_caches, remove

    _check_name(name)
    if not remove(name):
        saved = ", ".join(i.name for i in list_caches()) or "none"
        raise PromptCacheError(NO_SUCH_CACHE.format(name=name, saved=saved), name=name,
                               reason="unknown")

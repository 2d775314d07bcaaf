"""The prompt-cache endpoints' handlers: ``/v1/cache/save`` and ``/v1/cache/load``.

Everything that can be refused is refused here, on the HTTP thread, with a 400 that
names the field (``name``: malformed or unknown; ``model``: other weights; ``file``:
damaged): the worker only gets work it can do (runner/prompt_files.py), streamed back
with the server's writer like a look-inside pass.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

from ..prompt_cache_files import arrays_path, budget_bytes, list_caches
from ..prompt_cache_protocol import CacheLoadRequest, CacheSaveRequest
from ..protocol import ChatMessage
from .inside_routes import http_error, parsed_request
from .prompt_files import CorruptCache, key_problem, load_pass, make_job, read_key, save_pass
from .reasoning import template_kwargs
from .templates import conversation, render_messages

if TYPE_CHECKING:
    from .engine import Engine
    from .models import LoadedModel
    from .server import RunnerHandler

__all__ = ["handle_cache_save", "handle_cache_load", "prefix_tokens"]

GROUP_REFUSED = "prompt caches on disk need the whole model in one process (not a runner group)"
_PROBE = ChatMessage("user", "And a question?")  # a next turn, to test the boundary
_PREVIEW = 60


def _ready(handler: RunnerHandler, parse: Any, body: Any) -> tuple[Engine, LoadedModel, Any]:
    return parsed_request(handler, parse, body, GROUP_REFUSED)


def prefix_tokens(tokenizer: Any, messages: tuple[ChatMessage, ...],
                  think: bool | None) -> tuple[list[int], bool]:
    """The tokens of ``messages`` up to the end of the last one (no generation prompt), and
    whether the prompt of a next turn starts with exactly these tokens.

    Call it holding the tokenizer lock.
    """
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(conversation(messages), tokenize=False,
                                             add_generation_prompt=False,
                                             **template_kwargs(tokenizer, think=think, tools=None))
    else:  # runner/templates.py's plain fallback, without its closing "assistant:"
        text = "\n".join(f"{m.role}: {m.content}" for m in messages)
    tokens = list(tokenizer.encode(text, add_special_tokens=False))
    later = tokenizer.encode(render_messages(tokenizer, (*messages, _PROBE), think=think),
                             add_special_tokens=False)
    return tokens, list(later[:len(tokens)]) == tokens


def _check_length(engine: Engine, tokens: list[int], field: str) -> None:
    if not tokens:
        raise http_error(400, "the prompt is empty after tokenization", field)
    context = engine.context_length
    if context and len(tokens) >= context:
        raise http_error(400, f"the prompt has {len(tokens)} tokens but the context length is "
                               f"{context}", field)


def handle_cache_save(handler: RunnerHandler, body: Any) -> None:
    engine, loaded, request = _ready(handler, CacheSaveRequest.from_json, body)
    assert isinstance(request, CacheSaveRequest)
    tokenizer = loaded.tokenizer
    extends = True
    with handler.server.tokenizer_lock:
        if request.messages is not None:
            tokens, extends = prefix_tokens(tokenizer, request.messages, request.think)
        else:
            tokens = list(tokenizer.encode(request.text or ""))  # as a raw prompt is
    _check_length(engine, tokens, "messages" if request.messages is not None else "text")
    shown = request.text if request.text is not None else \
        (request.messages[-1].content if request.messages else "")
    key = {"name": request.name, "model": loaded.name, "source_hash": loaded.source_hash,
           "weights": loaded.weights_format,
           "kind": "messages" if request.messages is not None else "text",
           "preview": " ".join(shown.split())[:_PREVIEW], "extends": extends,
           "prompt": request.text,
           "messages": None if request.messages is None else
           [m.to_json() for m in request.messages]}
    work = save_pass(engine, request.name, tokens, key, budget_bytes(request.budget_bytes))
    job = make_job("cache_save", f"cache-save-{uuid.uuid4().hex}", tokens, work)
    engine.submit(job)
    handler._stream_job(engine, job)


def handle_cache_load(handler: RunnerHandler, body: Any) -> None:
    engine, loaded, request = _ready(handler, CacheLoadRequest.from_json, body)
    assert isinstance(request, CacheLoadRequest)
    name = request.name
    path = arrays_path(name)
    if not path.is_file():
        saved = ", ".join(i.name for i in list_caches()) or "none"
        raise http_error(400, f"no prompt cache named {name!r} (saved: {saved})", "name")
    try:
        key = read_key(path)
    except CorruptCache as exc:
        raise http_error(400, f"prompt cache {name!r} is damaged: {exc}; remove it "
                               f"(%mlx cache rm {name}) and save it again", "file") from None
    problem = key_problem(key, loaded, name)
    if problem:
        raise http_error(400, problem, "model")
    _check_length(engine, key["tokens"], "name")
    job = make_job("cache_load", f"cache-load-{uuid.uuid4().hex}", list(key["tokens"]),
                   load_pass(engine, name, key))
    engine.submit(job)
    handler._stream_job(engine, job)

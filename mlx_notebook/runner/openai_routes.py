"""OpenAI's endpoints on the runner: ``/v1/chat/completions``, ``/v1/completions``, ``/v1/models``.

They share everything with ``/v1/completion``: the same auth and limits, the same
tokenizer lock, the same :class:`~runner.jobs.Job` in the same continuous batch, the
same prompt cache. Only the wire differs (runner/openai_wire.py): SSE ``data:`` lines
or one JSON body, and OpenAI's error object for every failure (server.py asks
:func:`~runner.openai_wire.is_openai_path` before it answers one).
"""

from __future__ import annotations

import functools
import json
import queue
import time
import uuid
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from ..protocol import (
    ChunkEvent,
    CompletionRequest,
    DoneEvent,
    ErrorEvent,
    TokenLogprob,
    ToolCallEvent,
)
from .jobs import Job
from .mailbox import DuplicateRequestId
from .openai_wire import (
    Encoder,
    OpenAIRequest,
    WireError,
    error_body,
    model_card,
    models_body,
    own_logprobs,
    parse_chat,
    parse_completion,
)
from .reasoning import make_splitter
from .server import _WAIT_SLICE, HTTPError, _peer_closed, logit_bias_problem
from .templates import render_messages
from .tool_calls import tool_call_events, tool_support_error

if TYPE_CHECKING:
    from .engine import Engine
    from .server import RunnerHandler

__all__ = ["OpenAIError", "handle_openai", "served_names"]

SSE_KEEPALIVE = b": keep-alive\n\n"  # an SSE comment: clients skip it
SOURCE = "openai"
_STARTED = int(time.time())


class OpenAIError(HTTPError):
    """An :class:`HTTPError` with OpenAI's ``code`` (``model_not_found``...)."""

    def __init__(self, status: int, message: str, field: str | None = None, *,
                 code: str | None = None) -> None:
        super().__init__(status, message, field)
        self.code = code


def openai_error_body(exc: HTTPError) -> dict[str, Any]:
    return error_body(exc.status, exc.message, exc.field, getattr(exc, "code", None))


def served_names(handler: RunnerHandler) -> list[str]:
    """Every name the runner answers to: what the manager told it, its spec, its model's name."""
    engine = handler.server.engine
    names = [*handler.server.served_names, engine.spec]
    if engine.loaded is not None:
        names.append(engine.loaded.name)
    return list(dict.fromkeys(n for n in names if n))


def handle_openai(handler: RunnerHandler, method: str, path: str, body: Any) -> None:
    if path == "/v1/models" or path.startswith("/v1/models/"):
        if method != "GET":
            raise OpenAIError(405, f"{path} expects GET, not {method}")
        names = served_names(handler)
        if path == "/v1/models":
            handler._send_json(200, models_body(names, _STARTED))
            return
        name = path[len("/v1/models/"):]
        if name not in names:
            raise _unknown_model(name, names)
        handler._send_json(200, model_card(name, _STARTED))
        return
    if method != "POST":
        raise OpenAIError(405, f"{path} expects POST, not {method}")
    try:
        request = parse_chat(body) if path == "/v1/chat/completions" else parse_completion(body)
    except WireError as exc:
        raise OpenAIError(exc.status, exc.message, exc.param, code=exc.code) from None
    handler.server.count_request(SOURCE)
    names = served_names(handler)
    if request.model not in names:
        raise _unknown_model(request.model, names)
    _serve(handler, request)


def _unknown_model(name: str, names: list[str]) -> OpenAIError:
    return OpenAIError(404, f"The model {name!r} does not exist on this runner; it serves "
                            f"{', '.join(repr(n) for n in names)}", "model",
                       code="model_not_found")


def _serve(handler: RunnerHandler, request: OpenAIRequest) -> None:
    engine, loaded = handler._require_ready()
    tokenizer = loaded.tokenizer
    if request.tools:
        problem = tool_support_error(tokenizer, request.model)
        if problem:
            raise OpenAIError(400, problem, "tools", code="tools_not_supported")
    with handler.server.tokenizer_lock:
        if request.messages is not None:
            tokens = tokenizer.encode(render_messages(tokenizer, request.messages,
                                                      think=request.think, tools=request.tools),
                                      add_special_tokens=False)
        else:
            tokens = tokenizer.encode(request.prompt or "")
    field = "messages" if request.kind == "chat" else "prompt"
    if not tokens:
        raise OpenAIError(400, f"{field} is empty after tokenization", field)
    options = request.options
    if (problem := logit_bias_problem(loaded, options)) is not None:
        raise OpenAIError(400, problem, "logit_bias")
    context = engine.context_length
    if context:
        if len(tokens) >= context:
            raise OpenAIError(400, f"This model's maximum context length is {context} tokens; "
                                   f"the {field} has {len(tokens)}", field,
                              code="context_length_exceeded")
        options = replace(options, max_tokens=min(options.max_tokens, context - len(tokens)))
    compiled = None
    if request.constraint is not None:
        try:
            compiled = handler._compile_constraint(
                engine, loaded, CompletionRequest(prompt="", constraint=request.constraint))
        except HTTPError as exc:
            raise OpenAIError(400, exc.message, "response_format") from None
    job = Job(request_id=uuid.uuid4().hex, prompt_tokens=tokens, options=options,
              raw=request.messages is None, constraint=compiled)
    if request.messages is not None:  # thinking and tool calls apart, as /v1/completion
        job.splitter = make_splitter(tokenizer, tokens)
        if request.tools:
            job.parse_tools = functools.partial(tool_call_events, tokenizer, tools=request.tools)
    try:
        engine.submit(job)
    except DuplicateRequestId:  # a fresh uuid: cannot happen, but never a traceback
        raise OpenAIError(409, "request id collision; retry") from None
    encoder = Encoder(request, request.model)
    if request.stream:
        _stream(handler, engine, job, encoder)
    else:
        _whole(handler, engine, job, encoder)


def _stream(handler: RunnerHandler, engine: Engine, job: Job, encoder: Encoder) -> None:
    ended = False
    try:
        handler.start_stream("text/event-stream; charset=utf-8", job.request_id)
        opening = encoder.first()
        if opening:  # an empty chunk would end the stream
            handler._write_chunk(opening)
        for events in handler.waiting_events(engine, job, SSE_KEEPALIVE):
            out = []
            for e in events:
                if type(e) is ChunkEvent:
                    out.append(encoder.event(e))
                elif isinstance(e, ToolCallEvent):
                    out.append(encoder.tool_call(e))
                elif isinstance(e, DoneEvent):
                    ended = True
                    out.append(_sse_error(e.error) if e.error else encoder.done(e))
                elif isinstance(e, ErrorEvent):
                    ended = True
                    out.append(_sse_error(e.error))
            data = b"".join(out)
            if data:
                handler._write_chunk(data)
        handler._write_chunk(b"")
    except OSError:  # the client closed the stream (or stopped reading): cancel below
        handler.close_connection = True
    finally:
        if not ended:
            engine.cancel(job.request_id)


def _sse_error(message: str) -> bytes:
    body = error_body(500, message)
    return b"data: " + json.dumps(body, ensure_ascii=False).encode() + b"\n\n"


def _whole(handler: RunnerHandler, engine: Engine, job: Job, encoder: Encoder) -> None:
    """Collect the job, then one JSON body; a client that leaves cancels it."""
    parts: list[str] = []
    thinking: list[str] = []
    calls: list[ToolCallEvent] = []
    entries: list[TokenLogprob] = []
    done: DoneEvent | None = None
    try:
        while done is None:
            try:
                event = job.events.get(timeout=_WAIT_SLICE)
            except queue.Empty:
                if _peer_closed(handler.connection):
                    handler.close_connection = True
                    return
                continue
            if type(event) is ChunkEvent:
                if event.thinking:
                    thinking.append(event.content)
                    if event.content:  # as the stream's encoder does
                        encoder.thought()
                else:
                    answer = encoder.answer(event)
                    parts.append(answer.content)
                    entries.extend(own_logprobs(answer))
            elif isinstance(event, ToolCallEvent):
                if event.error:  # what the model wrote stays in the answer
                    parts.append(event.raw)
                else:
                    calls.append(event)
            elif isinstance(event, ErrorEvent):
                raise OpenAIError(500, event.error)
            elif isinstance(event, DoneEvent):
                if event.error:
                    raise OpenAIError(500, event.error)
                done = event
    finally:
        if done is None:
            engine.cancel(job.request_id)
    handler._send_json(200, encoder.whole("".join(parts), entries, done,
                                          thinking="".join(thinking), calls=calls))

"""OpenAI's wire format on top of our protocol: request fields in, SSE and JSON bodies out.

Pure functions (no MLX, no sockets), so the conformance table below is the one
place that says what each OpenAI request field does here, and a test walks it.
Field support, by OpenAI's API reference (chat.completions.create, completions.create):

- ``supported``: mapped onto :class:`~mlx_notebook.protocol.SamplingOptions`, a constraint,
  or what the chat template gets (tools, enable_thinking);
- ``refused``: a value other than the field's neutral one is a 400 naming the field;
- ``ignored``: meaningful only to OpenAI's service (metadata, store, user...), accepted and
  dropped, as the reference allows;
- an unknown field is a 400 (a typo must not pass silently).
"""

from __future__ import annotations

import itertools
import json
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from ..protocol import (
    MAX_LOGPROBS,
    MAX_STOP_STRINGS,
    MAX_TOOLS,
    ChatMessage,
    ChunkEvent,
    Constraint,
    DoneEvent,
    SamplingOptions,
    TokenLogprob,
    ToolCall,
    ToolCallEvent,
)

__all__ = ["CHAT_FIELDS", "COMPLETION_FIELDS", "GENERATION_PATHS", "OPENAI_PATHS",
           "OpenAIRequest", "WireError", "parse_chat", "parse_completion", "error_body", "Support"]

Support = Literal["supported", "refused", "ignored"]
Kind = Literal["chat", "completion"]

GENERATION_PATHS = ("/v1/chat/completions", "/v1/completions")  # each becomes a job
OPENAI_PATHS = (*GENERATION_PATHS, "/v1/models")
NO_LIMIT = 1 << 20  # "until the context is full": the server cuts it to the room left


def is_openai_path(path: str) -> bool:
    return path in OPENAI_PATHS or path.startswith("/v1/models/")


# field -> (support, note). The note is what the docs and a 400 say.
_COMMON: dict[str, tuple[Support, str]] = {
    "model": ("supported", "the runner's spec, its loaded name, or the name it was loaded as"),
    "stream": ("supported", "SSE `data:` lines, then `data: [DONE]`"),
    "stream_options": ("supported", "include_usage; include_obfuscation is ignored"),
    "max_tokens": ("supported", "cut to the room left in the context"),
    "temperature": ("supported", "0-2; 0 is greedy; default 1 as in OpenAI"),
    "top_p": ("supported", "0-1"),
    "seed": ("supported", "same seed, same text, also inside a batch"),
    "stop": ("supported", f"a string or up to {MAX_STOP_STRINGS} strings"),
    "presence_penalty": ("supported", "-2..2, mlx-lm's additive penalty over a window of the "
                                      "last 64 tokens, prompt included (OpenAI: the text so far)"),
    "frequency_penalty": ("supported", "-2..2, mlx-lm's additive penalty times each token's "
                                       "count in the last 64 tokens, prompt included"),
    "logit_bias": ("supported", "{token id: -100..100} added to the logits (up to 300)"),
    "n": ("refused", "1 only: send n requests (they batch)"),
    "user": ("ignored", "OpenAI's abuse monitoring"),
    "safety_identifier": ("ignored", "OpenAI's abuse monitoring"),
    "metadata": ("ignored", "OpenAI's stored-completion tags"),
    "store": ("ignored", "nothing is stored"),
    "service_tier": ("ignored", "one tier"),
    "prompt_cache_key": ("ignored", "the runner's prompt cache needs no key"),
    "prompt_cache_retention": ("ignored", "the runner's prompt cache is in memory"),
    # Extensions other OpenAI-compatible servers (vLLM, mlx-lm) take through extra_body.
    "top_k": ("supported", "extension: keep the k most likely tokens"),
    "min_p": ("supported", "extension: mlx-lm's min-p filter"),
    "repetition_penalty": ("supported", "extension: mlx-lm's multiplicative penalty, window 64"),
}

CHAT_FIELDS: dict[str, tuple[Support, str]] = {
    **_COMMON,
    "messages": ("supported", "system/developer/user/assistant/tool; text parts of content "
                              "arrays; assistant tool_calls and tool messages (tool_call_id)"),
    "max_completion_tokens": ("supported", "as max_tokens"),
    "logprobs": ("supported", "true: choices[].logprobs.content"),
    "top_logprobs": ("supported", f"0-{MAX_LOGPROBS}, with logprobs"),
    "response_format": ("supported", "text, json_object, json_schema (constrained decoding)"),
    "tools": ("supported", f"type function, up to {MAX_TOOLS}; calls parsed by mlx-lm's parser "
                           "for the model's family; a model without tool support is a 400"),
    "tool_choice": ("supported", "\"auto\" or \"none\" (the tools are left out of the prompt); "
                                "\"required\" and a named function are a 400"),
    "parallel_tool_calls": ("ignored", "every call the model makes is returned; false is not "
                                       "enforced"),
    "functions": ("refused", "deprecated by OpenAI: use tools"),
    "function_call": ("refused", "deprecated by OpenAI: use tool_choice"),
    "modalities": ("refused", "[\"text\"] only"),
    "audio": ("refused", "text only"),
    "prediction": ("refused", "no predicted outputs"),
    "reasoning_effort": ("refused", "no reasoning controls yet"),
    "verbosity": ("refused", "no verbosity control"),
    "web_search_options": ("refused", "no web search"),
    # mlx-lm's and vLLM's extension (extra_body): what the chat template gets.
    "chat_template_kwargs": ("supported", "extension: {\"enable_thinking\": bool} only"),
}

COMPLETION_FIELDS: dict[str, tuple[Support, str]] = {
    **_COMMON,
    "prompt": ("supported", "a string, or a list of one string"),
    "logprobs": ("supported", f"0-{MAX_LOGPROBS}: choices[].logprobs (tokens, token_logprobs, "
                              "top_logprobs, text_offset)"),
    "max_tokens": ("supported", "default 16 as in OpenAI; cut to the room left in the context"),
    "echo": ("refused", "false only"),
    "suffix": ("refused", "no insertion"),
    "best_of": ("refused", "1 only"),
}

# A refused field's neutral values: sending one of these is not asking for anything.
_NEUTRAL: dict[str, tuple[Any, ...]] = {
    "n": (1, None),
    "functions": ([], None),
    "function_call": ("none", None), "modalities": (["text"], None), "audio": (None,),
    "prediction": (None,), "reasoning_effort": (None,), "verbosity": (None,),
    "web_search_options": (None,), "echo": (False, None), "suffix": (None, ""),
    "best_of": (1, None),
}


class WireError(ValueError):
    """A request OpenAI's way cannot be served: status, message, the ``param`` it names."""

    def __init__(self, message: str, param: str | None = None, *, status: int = 400,
                 code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


@dataclass(frozen=True)
class OpenAIRequest:
    """An OpenAI request, checked, in our terms."""

    kind: Kind
    model: str
    options: SamplingOptions
    messages: tuple[ChatMessage, ...] | None = None
    prompt: str | None = None
    constraint: Constraint | None = None
    stream: bool = False
    include_usage: bool = False
    logprobs: bool = False  # log-probabilities asked for
    top_logprobs: int = 0  # alternatives per token shown (options.logprobs is at least 1)
    tools: tuple[dict[str, Any], ...] | None = None  # for the template; None: no tools
    think: bool | None = None  # enable_thinking for the template; None: its default


# ---------------------------------------------------------------- requests


def _check_fields(body: dict[str, Any], table: dict[str, tuple[Support, str]]) -> None:
    for name, value in body.items():
        if name not in table:
            raise WireError(f"Unrecognized request argument supplied: {name}", name)
        support, note = table[name]
        if support == "refused" and not any(value == v and type(value) is type(v) or
                                            (v is None and value is None)
                                            for v in _NEUTRAL.get(name, (None,))):
            raise WireError(f"{name} is not supported by this server: {note}", name)


def _number(body: dict[str, Any], name: str, default: float, lo: float, hi: float) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise WireError(f"{name} must be a number, got {json.dumps(value)[:40]}", name)
    if not lo <= value <= hi:
        raise WireError(f"{name} must be between {lo:g} and {hi:g}, got {value}", name)
    return float(value)


def _integer(body: dict[str, Any], name: str, lo: int, hi: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise WireError(f"{name} must be an integer, got {json.dumps(value)[:40]}", name)
    if not lo <= value <= hi:
        raise WireError(f"{name} must be between {lo} and {hi}, got {value}", name)
    return value


def _stop(body: dict[str, Any]) -> tuple[str, ...]:
    stop = body.get("stop")
    if stop is None:
        return ()
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise WireError("stop must be a string or an array of strings", "stop")
    stop = [s for s in stop if s]
    if len(stop) > MAX_STOP_STRINGS:
        raise WireError(f"stop takes at most {MAX_STOP_STRINGS} strings", "stop")
    return tuple(stop)


def _model(body: dict[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise WireError("you must provide a model parameter", "model")
    return model


def _common(body: Any, kind: Kind) -> tuple[dict[str, Any], SamplingOptions, bool, bool]:
    if not isinstance(body, dict):
        raise WireError("the request body must be a JSON object")
    _check_fields(body, CHAT_FIELDS if kind == "chat" else COMPLETION_FIELDS)
    stream = body.get("stream") or False
    if not isinstance(stream, bool):
        raise WireError("stream must be a boolean", "stream")
    stream_options = body.get("stream_options") or {}
    if not isinstance(stream_options, dict) or not set(stream_options) <= {
            "include_usage", "include_obfuscation"}:
        raise WireError("stream_options takes include_usage (and include_obfuscation)",
                        "stream_options")
    include_usage = stream_options.get("include_usage") is True
    limit = _integer(body, "max_completion_tokens", 1, NO_LIMIT) if kind == "chat" else None
    if limit is None:
        limit = _integer(body, "max_tokens", 1, NO_LIMIT)
    if limit is None:
        limit = NO_LIMIT if kind == "chat" else 16
    options = SamplingOptions(
        temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
        top_p=_number(body, "top_p", 1.0, 0.0, 1.0),
        min_p=_number(body, "min_p", 0.0, 0.0, 1.0),
        top_k=_integer(body, "top_k", 0, NO_LIMIT) or 0,
        repeat_penalty=_number(body, "repetition_penalty", 1.0, 0.0, 100.0),
        presence_penalty=_number(body, "presence_penalty", 0.0, -2.0, 2.0),
        frequency_penalty=_number(body, "frequency_penalty", 0.0, -2.0, 2.0),
        logit_bias=_logit_bias(body), max_tokens=limit, seed=_integer(body, "seed", -(2**63), 2**63 - 1), stop=_stop(body))
    if options.seed is not None and options.seed < 0:  # OpenAI allows them; our keys do not
        options = _replace(options, seed=options.seed % (2**63))
    return body, options, stream, include_usage


MAX_LOGIT_BIAS = 300  # OpenAI's own limit


def _logit_bias(body: dict[str, Any]) -> tuple[tuple[int, float], ...]:
    """OpenAI's ``{"token id": bias}`` as our sorted ``(id, bias)`` pairs."""
    value = body.get("logit_bias")
    if value is None:
        return ()
    if not isinstance(value, dict) or len(value) > MAX_LOGIT_BIAS:
        raise WireError(f"logit_bias is an object of at most {MAX_LOGIT_BIAS} token ids to "
                        "biases", "logit_bias")
    pairs = []
    for key, bias in value.items():
        if not (isinstance(key, str) and key.isdigit()) or isinstance(bias, bool) \
                or not isinstance(bias, (int, float)) or not -100 <= bias <= 100:
            raise WireError(f"logit_bias maps token ids to -100..100, got "
                            f"{json.dumps({key: bias})[:60]}", "logit_bias")
        pairs.append((int(key), float(bias)))
    return tuple(sorted(pairs))


def _replace(options: SamplingOptions, **changes: Any) -> SamplingOptions:
    return replace(options, **changes)


_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant",
          "tool": "tool"}
MAX_ID = 256  # a tool call's id (as protocol.ChatMessage's tool_call_id)


def _content(value: Any, where: str) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        parts = []
        for i, part in enumerate(value):
            if not isinstance(part, dict) or part.get("type") != "text" \
                    or not isinstance(part.get("text"), str):
                raise WireError(f"{where}[{i}]: only text content parts are supported", where)
            parts.append(part["text"])
        return "".join(parts)
    raise WireError(f"{where} must be a string or an array of text parts", where)


def _tool_calls(value: Any, where: str) -> tuple[ToolCall, ...]:
    """An assistant message's ``tool_calls`` (OpenAI's shape: arguments as a JSON string)."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise WireError(f"{where}.tool_calls must be an array", "messages")
    calls = []
    for i, call in enumerate(value):
        at = f"{where}.tool_calls[{i}]"
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or call.get("type", "function") != "function" \
                or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise WireError(f"{at} must be {{\"type\": \"function\", \"function\": "
                            "{\"name\", \"arguments\"}}", "messages")
        arguments = fn.get("arguments") or "{}"
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except ValueError:
                raise WireError(f"{at}.function.arguments is not valid JSON", "messages") from None
        if not isinstance(arguments, dict):
            raise WireError(f"{at}.function.arguments must be a JSON object", "messages")
        call_id = call.get("id") or ""
        if not isinstance(call_id, str) or len(call_id) > MAX_ID:
            raise WireError(f"{at}.id must be a string of at most {MAX_ID} characters",
                            "messages")
        calls.append(ToolCall(name=fn["name"], arguments=arguments, id=call_id))
    return tuple(calls)


def _messages(value: Any) -> tuple[ChatMessage, ...]:
    if not isinstance(value, list) or not value:
        raise WireError("messages must be a non-empty array", "messages")
    out = []
    names: dict[str, str] = {}  # a call's id -> its function, for the tool message's name
    for i, message in enumerate(value):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise WireError(f"{where} must be an object", "messages")
        role = message.get("role")
        if role == "function":
            raise WireError(f"{where}: function messages are deprecated by OpenAI; send tool "
                            "messages (role \"tool\", tool_call_id)", "messages")
        if role not in _ROLES:
            raise WireError(f"{where}.role must be system, developer, user, assistant or tool, "
                            f"got {json.dumps(role)[:40]}", "messages")
        content = _content(message.get("content"), f"{where}.content")
        if role == "assistant":
            calls = _tool_calls(message.get("tool_calls"), where)
            names.update((c.id, c.name) for c in calls if c.id)
            out.append(ChatMessage(role="assistant", content=content, tool_calls=calls))
        elif role == "tool":
            call_id = message.get("tool_call_id")
            if not isinstance(call_id, str) or not call_id or len(call_id) > MAX_ID:
                raise WireError(f"{where}.tool_call_id must be the id of the call it answers",
                                "messages")
            name = message.get("name") if isinstance(message.get("name"), str) else None
            out.append(ChatMessage(role="tool", content=content, tool_call_id=call_id,
                                   name=name or names.get(call_id)))
        else:
            if message.get("tool_calls"):
                raise WireError(f"{where}: only assistant messages carry tool_calls", "messages")
            out.append(ChatMessage(role=_ROLES[role], content=content))
    return tuple(out)


def _tools(value: Any) -> tuple[dict[str, Any], ...] | None:
    """``tools`` as chat templates take them (OpenAI's shape, which they read)."""
    if value is None or value == []:
        return None
    if not isinstance(value, list) or len(value) > MAX_TOOLS:
        raise WireError(f"tools must be an array of at most {MAX_TOOLS} tools", "tools")
    for i, tool in enumerate(value):
        kind = tool.get("type") if isinstance(tool, dict) else None
        if kind != "function":
            raise WireError(f"tools[{i}].type must be \"function\" (custom tools are not "
                            f"supported), got {json.dumps(kind)[:40]}", "tools")
        fn = tool.get("function")
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise WireError(f"tools[{i}].function.name is required", "tools")
        if not isinstance(fn.get("parameters", {}), dict):
            raise WireError(f"tools[{i}].function.parameters must be a JSON schema object",
                            "tools")
    return tuple(value)


def _tool_choice(value: Any, tools: tuple[dict[str, Any], ...] | None) -> \
        tuple[dict[str, Any], ...] | None:
    """The tools the prompt gets: ``"none"`` leaves them out (the model answers in text)."""
    if value is None or value == "auto":
        return tools
    if value == "none":
        return None
    if value == "required" or isinstance(value, dict):
        raise WireError("tool_choice: only \"auto\" and \"none\" are supported (the model "
                        "decides whether to call a tool; \"required\" and a named function "
                        "would need constrained decoding of the call)", "tool_choice")
    raise WireError(f"tool_choice must be \"auto\" or \"none\", got {json.dumps(value)[:40]}",
                    "tool_choice")


def _think(value: Any) -> bool | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not set(value) <= {"enable_thinking"} \
            or not isinstance(value.get("enable_thinking", False), bool):
        raise WireError("chat_template_kwargs takes {\"enable_thinking\": true|false} only",
                        "chat_template_kwargs")
    return value.get("enable_thinking")


def _response_format(value: Any) -> Constraint | None:
    if value is None:
        return None
    kind = value.get("type") if isinstance(value, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return Constraint(kind="json")
    if kind == "json_schema":
        spec = value.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if schema is None and isinstance(spec, dict):
            return Constraint(kind="json")  # a name without a schema: any JSON
        if not isinstance(schema, dict):
            raise WireError("response_format.json_schema.schema must be a JSON schema object",
                            "response_format")
        return Constraint(kind="json_schema", schema=schema)
    raise WireError("response_format.type must be text, json_object or json_schema",
                    "response_format")


def parse_chat(body: Any) -> OpenAIRequest:
    """A ``/v1/chat/completions`` body, checked; raises :class:`WireError`."""
    body, options, stream, include_usage = _common(body, "chat")
    messages = _messages(body.get("messages"))
    logprobs = body.get("logprobs") or False
    if not isinstance(logprobs, bool):
        raise WireError("logprobs must be a boolean", "logprobs")
    top = _integer(body, "top_logprobs", 0, MAX_LOGPROBS)
    if top is not None and not logprobs and top > 0:
        raise WireError("top_logprobs needs logprobs: true", "top_logprobs")
    top = top or 0
    if logprobs:
        options = _replace(options, logprobs=max(1, top))
    tools = _tool_choice(body.get("tool_choice"), _tools(body.get("tools")))
    return OpenAIRequest(kind="chat", model=_model(body), options=options, messages=messages,
                         constraint=_response_format(body.get("response_format")),
                         stream=stream, include_usage=include_usage, logprobs=logprobs,
                         top_logprobs=top, tools=tools,
                         think=_think(body.get("chat_template_kwargs")))


def parse_completion(body: Any) -> OpenAIRequest:
    """A ``/v1/completions`` body, checked; raises :class:`WireError`."""
    body, options, stream, include_usage = _common(body, "completion")
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise WireError("prompt must be a string (or a list of one string; token arrays and "
                        "several prompts are not supported)", "prompt")
    if not prompt:
        raise WireError("prompt must not be empty", "prompt")
    top = _integer(body, "logprobs", 0, MAX_LOGPROBS)
    if top is not None:
        options = _replace(options, logprobs=max(1, top))
    return OpenAIRequest(kind="completion", model=_model(body), options=options, prompt=prompt,
                         stream=stream, include_usage=include_usage, logprobs=top is not None,
                         top_logprobs=top or 0)


# ---------------------------------------------------------------- responses


_TYPES = {400: "invalid_request_error", 401: "invalid_request_error",
          403: "invalid_request_error", 404: "invalid_request_error",
          405: "invalid_request_error", 408: "invalid_request_error",
          409: "invalid_request_error", 411: "invalid_request_error",
          413: "invalid_request_error"}
_CODES = {401: "invalid_api_key", 404: "not_found", 413: "request_too_large",
          409: "model_not_ready", 503: "server_unavailable"}


def error_body(status: int, message: str, param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    """OpenAI's error object: ``{"error": {"message", "type", "param", "code"}}``."""
    kind = _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": param,
                      "code": code or _CODES.get(status)}}


FINISH = {"stop": "stop", "length": "length", "cancel": "stop", "error": "stop"}


def usage(done: DoneEvent) -> dict[str, Any]:
    return {"prompt_tokens": done.prompt_tokens, "completion_tokens": done.completion_tokens,
            "total_tokens": done.prompt_tokens + done.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": done.cached_tokens},
            "completion_tokens_details": {"reasoning_tokens": done.thinking_tokens}}


# The thinking goes in both names OpenAI-compatible servers use for it: ``reasoning_content``
# (DeepSeek's API, vLLM, LiteLLM, LangChain's readers) and ``reasoning`` (mlx-lm's server,
# OpenRouter, vLLM since 0.10); never in ``content``.
REASONING_FIELDS = ("reasoning_content", "reasoning")


def tool_call_body(event: ToolCallEvent, index: int | None = None) -> dict[str, Any]:
    """One call in OpenAI's shape: ``function.arguments`` is a JSON string; a stream's
    delta has the call's ``index`` too (each call comes whole, in one delta)."""
    body: dict[str, Any] = {"id": event.id, "type": "function",
                            "function": {"name": event.name,
                                         "arguments": json.dumps(event.arguments,
                                                                 ensure_ascii=False)}}
    return body if index is None else {"index": index, **body}


def finish_reason(done: DoneEvent, called: bool) -> str:
    """OpenAI's finish_reason: ``tool_calls`` when the model ended after calling tools."""
    finish = FINISH[done.done_reason]
    return "tool_calls" if called and finish == "stop" else finish


def _bytes(text: str) -> list[int]:
    return list(text.encode("utf-8"))


def chat_logprobs(entries: Sequence[TokenLogprob], top: int) -> list[dict[str, Any]]:
    return [{"token": e.text, "logprob": e.logprob, "bytes": _bytes(e.text),
             "top_logprobs": [{"token": t.text, "logprob": t.logprob, "bytes": _bytes(t.text)}
                              for t in e.top[:top]]} for e in entries]


def completion_logprobs(entries: Sequence[TokenLogprob], top: int,
                        offset: int) -> dict[str, Any]:
    offsets = []
    for e in entries:
        offsets.append(offset)
        offset += len(e.text)
    return {"tokens": [e.text for e in entries],
            "token_logprobs": [e.logprob for e in entries],
            "top_logprobs": [{t.text: t.logprob for t in e.top[:top]} for e in entries],
            "text_offset": offsets}


def own_logprobs(event: ChunkEvent) -> tuple[TokenLogprob, ...]:
    """The chunk's log-probabilities of generated tokens (the end token's is not one)."""
    return event.logprobs if event.tokens else ()


def _strip_blank(entries: Sequence[TokenLogprob]) -> tuple[TokenLogprob, ...]:
    return tuple(itertools.dropwhile(lambda e: not e.text.strip(), entries))


class Encoder:
    """One response's bodies; the per-token SSE line is a format string filled with the text."""

    def __init__(self, request: OpenAIRequest, model: str) -> None:
        self.request = request
        self.model = model
        self.chat = request.kind == "chat"
        self.id = ("chatcmpl-" if self.chat else "cmpl-") + uuid.uuid4().hex[:24]
        self.created = int(time.time())
        self.object = "chat.completion" if self.chat else "text_completion"
        head = {"id": self.id, "object": self.object + (".chunk" if self.chat else ""),
                "created": self.created, "model": model}
        self._head = json.dumps(head, ensure_ascii=False)[:-1]  # without the closing brace
        tail = ',"usage":null' if request.include_usage else ""
        prefix = self._head.replace("%", "%%")  # the lines below are %-format strings
        if self.chat:
            self._plain = (f'data: {prefix},"choices":[{{"index":0,"delta":{{"content":%s}},'
                           f'"logprobs":null,"finish_reason":null}}]{tail}}}\n\n')
            self._reasoning = (f'data: {prefix},"choices":[{{"index":0,"delta":{{'
                               + ",".join(f'"{k}":%(t)s' for k in REASONING_FIELDS)
                               + f'}},"logprobs":null,"finish_reason":null}}]{tail}}}\n\n')
        else:
            self._plain = (f'data: {prefix},"choices":[{{"index":0,"text":%s,'
                           f'"logprobs":null,"finish_reason":null}}]{tail}}}\n\n')
        self.text_offset = 0
        self.calls = 0  # tool calls sent so far (the next one's index)
        self._after_thinking = False  # the answer's start after the thinking: strip it

    def _line(self, payload: dict[str, Any]) -> bytes:
        return b"data: " + json.dumps(payload, ensure_ascii=False).encode() + b"\n\n"

    def _chunk(self, choice: dict[str, Any], usage_value: Any = None) -> bytes:
        payload: dict[str, Any] = {"id": self.id, "object": self.object +
                                   (".chunk" if self.chat else ""), "created": self.created,
                                   "model": self.model, "choices": [choice] if choice else []}
        if self.request.include_usage:
            payload["usage"] = usage_value
        return self._line(payload)

    def first(self) -> bytes:
        """A chat stream opens with the role (OpenAI's first delta)."""
        if not self.chat:
            return b""
        return self._chunk({"index": 0, "delta": {"role": "assistant", "content": ""},
                            "logprobs": None, "finish_reason": None})

    def event(self, event: ChunkEvent) -> bytes:
        if event.thinking:  # OpenAI has no log-probabilities for reasoning
            if not event.content:
                return b""
            self.thought()
            return (self._reasoning % {"t": json.dumps(event.content, ensure_ascii=False)}
                    ).encode()
        event = self.answer(event)
        entries = own_logprobs(event) if self.request.logprobs else ()
        if not entries:
            if not event.content:
                return b""
            self.text_offset += len(event.content)
            return (self._plain % json.dumps(event.content, ensure_ascii=False)).encode()
        if self.chat:
            logprobs: Any = {"content": chat_logprobs(entries, self.request.top_logprobs)}
            choice = {"index": 0, "delta": {"content": event.content}, "logprobs": logprobs,
                      "finish_reason": None}
        else:
            logprobs = completion_logprobs(entries, self.request.top_logprobs, self.text_offset)
            choice = {"index": 0, "text": event.content, "logprobs": logprobs,
                      "finish_reason": None}
        self.text_offset += len(event.content)
        return self._chunk(choice)

    def thought(self) -> None:
        """A piece of thinking went out: the answer's start is stripped (:meth:`answer`)."""
        self._after_thinking = True

    def answer(self, event: ChunkEvent) -> ChunkEvent:
        """An answer chunk as it goes out: right after the thinking, without the closing
        tag's token and the blank lines templates put after it (Qwen3's ``</think>\\n\\n``),
        log-probabilities included, so the answer starts at its first character."""
        if not self._after_thinking:
            return event
        content = event.content.lstrip()
        self._after_thinking = not content
        return replace(event, content=content,
                       logprobs=_strip_blank(event.logprobs) if content else ())

    def tool_call(self, event: ToolCallEvent) -> bytes:
        """A parsed call as ``delta.tool_calls``; one that did not parse comes back as the
        answer's text (what the model wrote), so nothing it said is lost."""
        if event.error:
            return self.event(ChunkEvent(content=event.raw))
        self._after_thinking = False
        self.calls += 1
        return self._chunk({"index": 0, "delta": {"tool_calls": [
            tool_call_body(event, self.calls - 1)]}, "logprobs": None, "finish_reason": None})

    def done(self, done: DoneEvent) -> bytes:
        finish = finish_reason(done, self.calls > 0)
        if self.chat:
            choice = {"index": 0, "delta": {}, "logprobs": None, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": "", "logprobs": None, "finish_reason": finish}
        out = self._chunk(choice)
        if self.request.include_usage:
            out += self._chunk({}, usage(done))
        return out + b"data: [DONE]\n\n"

    def whole(self, text: str, entries: Sequence[TokenLogprob], done: DoneEvent, *,
              thinking: str = "", calls: Sequence[ToolCallEvent] = ()) -> dict[str, Any]:
        """The non-streaming body (``calls``: the parsed tool calls, in order)."""
        finish = finish_reason(done, bool(calls))
        top = self.request.top_logprobs
        if self.chat:
            message: dict[str, Any] = {"role": "assistant",
                                       "content": None if calls and not text else text,
                                       "refusal": None}
            if thinking:
                message.update(dict.fromkeys(REASONING_FIELDS, thinking))
            if calls:
                message["tool_calls"] = [tool_call_body(c) for c in calls]
            choice: dict[str, Any] = {
                "index": 0, "message": message,
                "logprobs": {"content": chat_logprobs(entries, top)} if self.request.logprobs
                else None, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": text,
                      "logprobs": completion_logprobs(entries, top, 0) if self.request.logprobs
                      else None, "finish_reason": finish}
        return {"id": self.id, "object": self.object, "created": self.created,
                "model": self.model, "choices": [choice], "usage": usage(done)}


def models_body(names: Sequence[str], created: int) -> dict[str, Any]:
    return {"object": "list", "data": [model_card(n, created) for n in names]}


def model_card(name: str, created: int) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": created, "owned_by": "mlx_notebook"}

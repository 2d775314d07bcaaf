"""Wire protocol between the kernel (client) and a runner subprocess.

This module is the single source of truth for the protocol; ``docs/protocol.md``
documents it and ``tests/test_protocol_doc.py`` keeps the two in step. It imports
neither MLX nor httpx, so both sides (and tests) can use it.

Transport: HTTP/1.1 on loopback, JSON bodies, snake_case. Every request carries
``Authorization: Bearer <token>``; the token reaches the runner through the
``MLX_NOTEBOOK_TOKEN`` environment variable, never argv.

Handshake: before loading the model, the runner prints one JSON line on stdout::

    {"event": "listening", "host": "127.0.0.1", "port": 50123, "pid": 4242, "protocol": 1}

Endpoints:

========================  =========================================================
``GET  /v1/status``       :class:`Status` (never waits on the MLX thread)
``POST /v1/completion``   :class:`CompletionRequest` -> NDJSON stream of
                          :class:`ChunkEvent` lines (after :class:`ProgressEvent`
                          lines while a long prompt is read), then one
                          :class:`DoneEvent` (or an :class:`ErrorEvent`);
                          :class:`KeepAliveEvent` lines only during silence
``POST /v1/tokenize``     :class:`TokenizeRequest` -> :class:`TokenizeResponse`
``POST /v1/detokenize``   :class:`DetokenizeRequest` -> :class:`DetokenizeResponse`
``POST /v1/cancel``       :class:`CancelRequest` -> :class:`CancelResponse`
``POST /v1/free``         -> :class:`FreeResponse`: drop the prompt cache and MLX's
                          buffer cache (on every rank of a group)
``POST /v1/shutdown``     -> ``{"ok": true}``; the runner exits shortly after
``POST /v1/score``        look inside the model (:mod:`mlx_notebook.inside_protocol`):
``POST /v1/lens``         NDJSON streams of progress lines, one ``ResultEvent``,
``POST /v1/attention``    then a :class:`DoneEvent` (or an :class:`ErrorEvent`)
``POST /v1/names``        :class:`NamesRequest` -> ``{"ok": true}``
``POST /v1/cache/save``   prompt caches on disk (:mod:`mlx_notebook.prompt_cache_protocol`):
``POST /v1/cache/load``   NDJSON streams of progress lines, one ``PromptCacheEvent``,
                          then a :class:`DoneEvent` (or an :class:`ErrorEvent`)
``/v1/chat/completions``  OpenAI's API on the same batch (docs/protocol.md, "OpenAI-
``/v1/completions``       compatible endpoints"); OpenAI's error object on these paths
``/v1/models``
========================  =========================================================

Errors: any rejected request gets a 4xx status and :class:`ErrorBody`
(``{"error": "...", "field": "options.top_p"}``). 401 for a missing or wrong
token, 404 for an unknown path, 405 for a wrong method, 413 for a body over
:data:`MAX_BODY_BYTES`, 400 for anything malformed, 409 while the model is not
ready or for a ``request_id`` already in use, 403 for a foreign ``Host`` or ``Origin``,
408 for a request not received in time, 503 while the runner shuts down or past its
connection cap.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

PROTOCOL_VERSION = 1
TOKEN_ENV = "MLX_NOTEBOOK_TOKEN"
MAX_BODY_BYTES = 8 * 1024 * 1024
MAX_STOP_STRINGS = 16
MAX_LOGPROBS = 20
MAX_REQUEST_ID = 128
# Request ids are echoed in the X-Request-Id header: a header-safe alphabet only.
REQUEST_ID_ALPHABET = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:-")

RunnerState = Literal["loading", "ready", "error", "stopping", "training"]  # training: runner/train.py
DoneReason = Literal["stop", "length", "cancel", "error"]
DONE_REASONS: tuple[str, ...] = ("stop", "length", "cancel", "error")

ENDPOINTS: dict[str, tuple[str, str]] = {
    "status": ("GET", "/v1/status"),
    "completion": ("POST", "/v1/completion"),
    "tokenize": ("POST", "/v1/tokenize"),
    "detokenize": ("POST", "/v1/detokenize"),
    "cancel": ("POST", "/v1/cancel"),
    "free": ("POST", "/v1/free"),
    "shutdown": ("POST", "/v1/shutdown"),
    # Look inside the model (wire types in inside_protocol.py): prefill-only passes.
    "score": ("POST", "/v1/score"),
    "lens": ("POST", "/v1/lens"),
    "attention": ("POST", "/v1/attention"),
    # The names the kernel loaded the runner as: OpenAI clients may ask for them (/v1/models).
    "names": ("POST", "/v1/names"),
    # Prompt caches on disk (wire types in prompt_cache_protocol.py): prefill and save, load.
    "cache_save": ("POST", "/v1/cache/save"),
    "cache_load": ("POST", "/v1/cache/load"),
}


class ValidationError(ValueError):
    """A request that does not follow the protocol; names the offending field."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name
        self.message = message


# ---------------------------------------------------------------- validation helpers


def _expect_object(value: Any, name: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValidationError(name, f"expected a JSON object, got {_kind(value)}")
    return value


def _kind(value: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
            type(None): "null"}.get(type(value), type(value).__name__)


def _reject_unknown(data: dict[str, Any], allowed: set[str], prefix: str) -> None:
    extra = sorted(set(data) - allowed)
    if extra:
        raise ValidationError(f"{prefix}{extra[0]}", "unknown field")


def _number(data: dict, key: str, prefix: str, default: float, lo: float, hi: float) -> float:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValidationError(prefix + key, f"expected a finite number, got {_kind(value)}")
    if not lo <= value <= hi:
        raise ValidationError(prefix + key, f"must be between {lo} and {hi}, got {value}")
    return float(value)


def _integer(data: dict, key: str, prefix: str, default: int | None, lo: int, hi: int) -> int | None:
    value = data.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(prefix + key, f"expected an integer, got {_kind(value)}")
    if not lo <= value <= hi:
        raise ValidationError(prefix + key, f"must be between {lo} and {hi}, got {value}")
    return value


def _string(data: dict, key: str, prefix: str, *, required: bool = False,
            max_len: int = 1 << 22) -> str | None:
    value = data.get(key)
    if value is None:
        if required:
            raise ValidationError(prefix + key, "is required")
        return None
    if not isinstance(value, str):
        raise ValidationError(prefix + key, f"expected a string, got {_kind(value)}")
    if len(value) > max_len:
        raise ValidationError(prefix + key, f"longer than {max_len} characters")
    return value


def _request_id(data: dict, *, required: bool) -> str | None:
    value = _string(data, "request_id", "", required=required, max_len=MAX_REQUEST_ID)
    if value is None:
        return None
    if not value or not REQUEST_ID_ALPHABET.issuperset(value):
        raise ValidationError("request_id", f"use 1-{MAX_REQUEST_ID} characters of A-Z a-z 0-9 "
                                            f"and . _ : - (got {value[:40]!r})")
    return value


# ---------------------------------------------------------------- requests


@dataclass(frozen=True)
class SamplingOptions:
    """How to sample; defaults are greedy decoding of up to 256 tokens."""

    temperature: float = 0.0
    top_p: float = 1.0
    min_p: float = 0.0
    top_k: int = 0
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, added to its logit)
    max_tokens: int = 256
    seed: int | None = None
    stop: tuple[str, ...] = ()
    logprobs: int = 0

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["stop"] = list(self.stop)
        data["logit_bias"] = [list(pair) for pair in self.logit_bias]
        return data

    @classmethod
    def from_json(cls, value: Any, prefix: str = "options.") -> SamplingOptions:
        data = _expect_object({} if value is None else value, prefix.rstrip("."))
        _reject_unknown(data, {f.name for f in fields(cls)}, prefix)
        stop = data.get("stop", [])
        if isinstance(stop, str):
            stop = [stop]
        if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
            raise ValidationError(prefix + "stop", "expected a list of non-empty strings")
        if len(stop) > MAX_STOP_STRINGS:
            raise ValidationError(prefix + "stop", f"at most {MAX_STOP_STRINGS} stop strings")
        return cls(
            temperature=_number(data, "temperature", prefix, 0.0, 0.0, 100.0),
            top_p=_number(data, "top_p", prefix, 1.0, 0.0, 1.0),
            min_p=_number(data, "min_p", prefix, 0.0, 0.0, 1.0),
            top_k=_integer(data, "top_k", prefix, 0, 0, 1 << 20) or 0,
            repeat_penalty=_number(data, "repeat_penalty", prefix, 1.0, 0.0, 100.0),
            repeat_last_n=_integer(data, "repeat_last_n", prefix, 64, 0, 1 << 20) or 0,
            presence_penalty=_number(data, "presence_penalty", prefix, 0.0, -100.0, 100.0),
            frequency_penalty=_number(data, "frequency_penalty", prefix, 0.0, -100.0, 100.0),
            logit_bias=_logit_bias(data.get("logit_bias"), prefix + "logit_bias"),
            max_tokens=_integer(data, "max_tokens", prefix, 256, 1, 1 << 20) or 1,
            seed=_integer(data, "seed", prefix, None, 0, 2**63 - 1),
            stop=tuple(stop),
            logprobs=_integer(data, "logprobs", prefix, 0, 0, MAX_LOGPROBS) or 0,
        )


MAX_LOGIT_BIAS = 1024  # entries; OpenAI's own limit is 300


def _logit_bias(value: Any, where: str) -> tuple[tuple[int, float], ...]:
    """``[[token id, bias], ...]``; each bias in -100..100 (OpenAI's range), ids unique."""
    if value is None:
        return ()
    if not isinstance(value, list) or len(value) > MAX_LOGIT_BIAS:
        raise ValidationError(where, f"expected a list of at most {MAX_LOGIT_BIAS} "
                                     "[token id, bias] pairs")
    pairs: dict[int, float] = {}
    for item in value:
        if (not isinstance(item, list) or len(item) != 2 or isinstance(item[0], bool)
                or not isinstance(item[0], int) or item[0] < 0
                or isinstance(item[1], bool) or not isinstance(item[1], (int, float))
                or not -100.0 <= float(item[1]) <= 100.0):
            raise ValidationError(where, "each entry is [token id >= 0, bias in -100..100], "
                                         f"got {json.dumps(item)[:60]}")
        pairs[item[0]] = float(item[1])
    return tuple(sorted(pairs.items()))


@dataclass(frozen=True)
class ToolCall:
    """A call the model asked for: a function ``name`` and its ``arguments`` (a JSON object)."""

    name: str
    arguments: dict[str, Any] = field(default_factory=dict)
    id: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "arguments": self.arguments, "id": self.id}

    @classmethod
    def from_json(cls, value: Any, name: str = "tool_call") -> ToolCall:
        data = _expect_object(value, name)
        _reject_unknown(data, {"name", "arguments", "id"}, name + ".")
        arguments = data.get("arguments", {})
        if not isinstance(arguments, dict):
            raise ValidationError(name + ".arguments", f"expected an object, got {_kind(arguments)}")
        return cls(name=_string(data, "name", name + ".", required=True) or "",
                   arguments=arguments, id=_string(data, "id", name + ".") or "")


CHAT_ROLES: tuple[str, ...] = ("system", "user", "assistant", "tool")


@dataclass(frozen=True)
class ChatMessage:
    """One message; an assistant's may carry ``tool_calls``, a ``tool`` message answers one
    (``name``: the function, ``tool_call_id``: the call's id)."""

    role: str
    content: str
    tool_calls: tuple[ToolCall, ...] = field(default=(), repr=False)
    name: str | None = field(default=None, repr=False)
    tool_call_id: str | None = field(default=None, repr=False)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.tool_calls:
            data["tool_calls"] = [c.to_json() for c in self.tool_calls]
        if self.name is not None:
            data["name"] = self.name
        if self.tool_call_id is not None:
            data["tool_call_id"] = self.tool_call_id
        return data

    @classmethod
    def from_json(cls, value: Any, name: str) -> ChatMessage:
        data = _expect_object(value, name)
        _reject_unknown(data, {"role", "content", "tool_calls", "name", "tool_call_id"}, name + ".")
        role = _string(data, "role", name + ".", required=True)
        if role not in CHAT_ROLES:
            raise ValidationError(name + ".role",
                                  f"must be system, user, assistant or tool, got {role!r}")
        content = _string(data, "content", name + ".", required=True)
        calls = data.get("tool_calls") or []
        if not isinstance(calls, list) or (calls and role != "assistant"):
            raise ValidationError(name + ".tool_calls", "an array, on assistant messages only")
        return cls(role=role, content=content or "",
                   tool_calls=tuple(ToolCall.from_json(c, f"{name}.tool_calls[{i}]")
                                    for i, c in enumerate(calls)),
                   name=_string(data, "name", name + ".", max_len=256),
                   tool_call_id=_string(data, "tool_call_id", name + ".", max_len=256))


MAX_TOOLS = 128


def _tools_from_json(value: Any, name: str = "tools") -> tuple[dict[str, Any], ...] | None:
    """Tool descriptions as chat templates take them: ``{"type": "function", "function":
    {"name", "description", "parameters"}}`` (a JSON schema of the arguments)."""
    if value is None:
        return None
    if not isinstance(value, list) or len(value) > MAX_TOOLS:
        raise ValidationError(name, f"expected an array of at most {MAX_TOOLS} tool objects")
    for i, tool in enumerate(value):
        fn = _expect_object(tool, f"{name}[{i}]").get("function")
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise ValidationError(f"{name}[{i}].function.name", "each tool needs a function name")
    return tuple(value)


def _think(data: dict[str, Any]) -> bool | None:
    value = data.get("think")
    if value is not None and not isinstance(value, bool):
        raise ValidationError("think", f"expected a boolean or null, got {_kind(value)}")
    return value


def _messages_from_json(value: Any, name: str = "messages") -> tuple[ChatMessage, ...]:
    if not isinstance(value, list) or not value:
        raise ValidationError(name, "expected a non-empty array of {role, content} objects")
    return tuple(ChatMessage.from_json(m, f"{name}[{i}]") for i, m in enumerate(value))


ConstraintKind = Literal["json_schema", "json", "regex", "choice"]
CONSTRAINT_KINDS: tuple[str, ...] = ("json_schema", "json", "regex", "choice")
MAX_CHOICES = 1024


@dataclass(frozen=True)
class Constraint:
    """What the answer must be: valid under a JSON ``schema``, any JSON, a full match of
    ``pattern``, or one of ``choices``. The runner compiles it (llguidance) or answers 400."""

    kind: ConstraintKind
    schema: dict[str, Any] | None = None  # kind "json_schema"
    pattern: str | None = None  # kind "regex" (the grammar engine's dialect: no look-around)
    choices: tuple[str, ...] = ()  # kind "choice"

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"kind": self.kind}
        if self.kind == "json_schema":
            data["schema"] = self.schema
        elif self.kind == "regex":
            data["pattern"] = self.pattern
        elif self.kind == "choice":
            data["choices"] = list(self.choices)
        return data

    @classmethod
    def from_json(cls, value: Any, prefix: str = "constraint.") -> Constraint:
        data = _expect_object(value, prefix.rstrip("."))
        kind = data.get("kind")
        if kind not in CONSTRAINT_KINDS:
            raise ValidationError(prefix + "kind", f"must be one of {', '.join(CONSTRAINT_KINDS)}, "
                                                   f"got {kind!r}")
        needed = {"json_schema": "schema", "regex": "pattern", "choice": "choices"}.get(kind)
        _reject_unknown(data, {"kind"} | ({needed} if needed else set()), prefix)
        if kind == "json_schema":
            schema = data.get("schema")
            if not isinstance(schema, dict):
                raise ValidationError(prefix + "schema", "expected a JSON schema object")
            return cls(kind="json_schema", schema=schema)
        if kind == "regex":
            pattern = _string(data, "pattern", prefix, required=True)
            return cls(kind="regex", pattern=pattern)
        if kind == "choice":
            choices = data.get("choices")
            if not isinstance(choices, list) or not choices \
                    or not all(isinstance(c, str) and c for c in choices):
                raise ValidationError(prefix + "choices", "expected a non-empty list of non-empty "
                                                          "strings")
            if len(choices) > MAX_CHOICES:
                raise ValidationError(prefix + "choices", f"at most {MAX_CHOICES} choices")
            return cls(kind="choice", choices=tuple(choices))
        return cls(kind="json")


@dataclass(frozen=True)
class CompletionRequest:
    """Either a raw ``prompt`` (sent as is) or chat ``messages`` (templated by the runner)."""

    prompt: str | None = None
    messages: tuple[ChatMessage, ...] | None = None
    options: SamplingOptions = field(default_factory=SamplingOptions)
    request_id: str | None = None
    constraint: Constraint | None = None
    # Chat only: ``enable_thinking`` for the template (None: the template's default) and
    # the tools it describes to the model (the runner parses the model's calls).
    think: bool | None = None
    tools: tuple[dict[str, Any], ...] | None = None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"options": self.options.to_json()}
        if self.prompt is not None:
            data["prompt"] = self.prompt
        if self.messages is not None:
            data["messages"] = [m.to_json() for m in self.messages]
        if self.think is not None:
            data["think"] = self.think
        if self.tools is not None:
            data["tools"] = list(self.tools)
        if self.request_id is not None:
            data["request_id"] = self.request_id
        if self.constraint is not None:
            data["constraint"] = self.constraint.to_json()
        return data

    @classmethod
    def from_json(cls, value: Any) -> CompletionRequest:
        data = _expect_object(value, "body")
        _reject_unknown(data, {"prompt", "messages", "options", "request_id", "constraint",
                               "think", "tools"}, "")
        prompt = _string(data, "prompt", "")
        messages = _messages_from_json(data["messages"]) if "messages" in data else None
        if (prompt is None) == (messages is None):
            raise ValidationError("prompt", "give exactly one of prompt or messages")
        if prompt == "":
            raise ValidationError("prompt", "must not be empty")
        request_id = _request_id(data, required=False)
        constraint = Constraint.from_json(data["constraint"]) \
            if data.get("constraint") is not None else None
        tools = _tools_from_json(data.get("tools"))
        if messages is None and (tools is not None or data.get("think") is not None):
            raise ValidationError("tools" if tools is not None else "think",
                                  "only with messages (the chat template uses it)")
        return cls(prompt=prompt, messages=messages,
                   options=SamplingOptions.from_json(data.get("options")), request_id=request_id,
                   constraint=constraint, think=_think(data), tools=tools)


@dataclass(frozen=True)
class TokenizeRequest:
    """Tokenize ``text`` as is, or ``messages`` after the chat template."""

    text: str | None = None
    messages: tuple[ChatMessage, ...] | None = None
    think: bool | None = None  # as CompletionRequest's, for messages
    tools: tuple[dict[str, Any], ...] | None = None

    def to_json(self) -> dict[str, Any]:
        if self.messages is not None:
            data: dict[str, Any] = {"messages": [m.to_json() for m in self.messages]}
            if self.think is not None:
                data["think"] = self.think
            if self.tools is not None:
                data["tools"] = list(self.tools)
            return data
        return {"text": self.text}

    @classmethod
    def from_json(cls, value: Any) -> TokenizeRequest:
        data = _expect_object(value, "body")
        _reject_unknown(data, {"text", "messages", "think", "tools"}, "")
        text = _string(data, "text", "")
        messages = _messages_from_json(data["messages"]) if "messages" in data else None
        if (text is None) == (messages is None):
            raise ValidationError("text", "give exactly one of text or messages")
        return cls(text=text, messages=messages, think=_think(data),
                   tools=_tools_from_json(data.get("tools")))


@dataclass(frozen=True)
class TokenizeResponse:
    tokens: list[int]
    pieces: list[str]
    text: str  # the text that was tokenized (after the chat template, for messages)
    # Each token's bytes as hex ("e4bd"): a byte-level token may hold part of a character,
    # which its piece can only show as U+FFFD. Empty from a runner that predates it.
    token_bytes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class DetokenizeRequest:
    tokens: list[int]

    def to_json(self) -> dict[str, Any]:
        return {"tokens": list(self.tokens)}

    @classmethod
    def from_json(cls, value: Any) -> DetokenizeRequest:
        data = _expect_object(value, "body")
        _reject_unknown(data, {"tokens"}, "")
        tokens = data.get("tokens")
        if not isinstance(tokens, list) or not all(
            isinstance(t, int) and not isinstance(t, bool) and 0 <= t < 2**31 for t in tokens
        ):
            raise ValidationError("tokens", "expected an array of non-negative integers")
        return cls(tokens=tokens)


@dataclass(frozen=True)
class DetokenizeResponse:
    text: str
    # each token's own bytes as lowercase hex: a byte-level token may be part of a character
    token_bytes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class NamesRequest:
    """The names the runner answers to besides its spec (the kernel's name for it)."""

    names: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"names": list(self.names)}

    @classmethod
    def from_json(cls, value: Any) -> NamesRequest:
        data = _expect_object(value, "body")
        _reject_unknown(data, {"names"}, "")
        names = data.get("names")
        if not isinstance(names, list) or len(names) > 16 or not all(
                isinstance(n, str) and 0 < len(n) <= 256 for n in names):
            raise ValidationError("names", "expected up to 16 non-empty strings")
        return cls(names=tuple(names))


@dataclass(frozen=True)
class CancelRequest:
    request_id: str

    def to_json(self) -> dict[str, Any]:
        return {"request_id": self.request_id}

    @classmethod
    def from_json(cls, value: Any) -> CancelRequest:
        data = _expect_object(value, "body")
        _reject_unknown(data, {"request_id"}, "")
        return cls(request_id=_request_id(data, required=True) or "")


@dataclass(frozen=True)
class CancelResponse:
    cancelled: bool


@dataclass(frozen=True)
class FreeResponse:
    """What ``/v1/free`` did; ``done`` is False when a long step kept the worker past the
    wait (it frees them right after)."""

    done: bool
    prompt_cache_freed: int = 0  # bytes of reusable KV cache dropped
    memory: MemoryInfo = field(default_factory=lambda: MemoryInfo())

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FreeResponse:
        mem = data.get("memory") or {}
        known = {f.name for f in fields(MemoryInfo)}
        return cls(done=bool(data.get("done")),
                   prompt_cache_freed=int(data.get("prompt_cache_freed") or 0),
                   memory=MemoryInfo(**{k: int(v) for k, v in mem.items() if k in known}))


@dataclass(frozen=True)
class ErrorBody:
    error: str
    field: str | None = None


# ---------------------------------------------------------------- status


@dataclass(frozen=True)
class MemoryInfo:
    """Bytes. ``active``/``peak``/``cache`` come from MLX; ``limit`` is what MLX may use."""

    active: int = 0
    peak: int = 0
    cache: int = 0
    weights: int = 0
    limit: int = 0
    rss: int = 0


@dataclass(frozen=True)
class RankInfo:
    """One process of a runner group (a model sharded over several processes or machines)."""

    rank: int
    host: str = ""  # the machine's host name
    address: str = ""  # the IP this rank listens on for the ring (from the hostfile)
    pid: int = 0
    active: int = 0  # bytes, as MemoryInfo
    peak: int = 0


@dataclass(frozen=True)
class KvRequest:
    """One request in flight: the tokens in its KV cache and the bytes they take."""

    request_id: str
    tokens: int = 0
    bytes: int = 0


@dataclass(frozen=True)
class KvInfo:
    """The runner's KV caches (``kv_format.KvFormat``), measured on the worker between steps."""

    format: str = "fp"  # "fp", "8-bit from 256 tokens", "fp, rotating 1024"
    bytes: int = 0  # the caches of the requests in flight
    prompt_cache_bytes: int = 0  # caches kept for later requests (chat turns)
    requests: tuple[KvRequest, ...] = ()

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> KvInfo:
        known = {f.name for f in fields(KvRequest)}
        requests = tuple(KvRequest(**{k: v for k, v in r.items() if k in known})
                         for r in data.get("requests") or () if isinstance(r, dict))
        return cls(format=str(data.get("format", "fp")), bytes=int(data.get("bytes", 0)),
                   prompt_cache_bytes=int(data.get("prompt_cache_bytes", 0)), requests=requests)


@dataclass(frozen=True)
class Status:
    state: RunnerState
    progress: float  # 0-100 while loading
    pid: int
    protocol: int = PROTOCOL_VERSION
    progress_message: str = ""
    model: str = ""
    source: str = ""
    source_hash: str = ""  # content hash or hub revision of the weights, for reproducibility
    weights_format: str = ""
    context_length: int = 0
    memory: MemoryInfo = field(default_factory=MemoryInfo)
    active_requests: int = 0
    last_tokens_per_second: float = 0.0
    device: str = ""
    error: str | None = None
    ranks: tuple[RankInfo, ...] = ()  # empty for a runner that is one process
    requests: dict[str, int] = field(default_factory=dict)  # per source: notebook, openai
    names: tuple[str, ...] = ()  # the names it answers to besides its spec (NamesRequest)
    draft: str = ""  # the draft model decoding with it (speculative decoding), if any
    kv: KvInfo = field(default_factory=KvInfo)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Status:
        data = dict(data)
        data["memory"] = MemoryInfo(**{k: v for k, v in (data.get("memory") or {}).items()
                                       if k in {f.name for f in fields(MemoryInfo)}})
        rank_fields = {f.name for f in fields(RankInfo)}
        data["ranks"] = tuple(RankInfo(**{k: v for k, v in r.items() if k in rank_fields})
                              for r in data.get("ranks") or () if isinstance(r, dict) and "rank" in r)
        data["names"] = tuple(str(n) for n in data.get("names") or ())
        data["requests"] = {str(k): int(v) for k, v in (data.get("requests") or {}).items()}
        data["kv"] = KvInfo.from_json(data.get("kv") or {})
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


# ---------------------------------------------------------------- stream events


@dataclass(frozen=True)
class TopLogprob:
    token: int
    text: str
    logprob: float


@dataclass(frozen=True)
class TokenLogprob:
    """The sampled token's log-probability and the ``k`` most likely alternatives."""

    token: int
    text: str
    logprob: float
    top: tuple[TopLogprob, ...] = ()
    # A constrained request: the model's own first choice when the constraint masked it
    # out (its log-probability before the mask); None when it was allowed or there is none.
    unconstrained: TopLogprob | None = None


@dataclass(frozen=True)
class ChunkEvent:
    """A piece of generated text; never splits a UTF-8 character, never contains a stop string."""

    content: str
    tokens: tuple[int, ...] = ()
    logprobs: tuple[TokenLogprob, ...] = ()
    thinking: bool = False  # the model's thinking (between its think tags), not the answer
    # Parallel to ``tokens`` when any came from a draft model (guessed, then accepted by the
    # model); empty means none did: the path without a draft never sends it.
    draft: tuple[bool, ...] = ()
    type: Literal["chunk"] = "chunk"


@dataclass(frozen=True)
class DoneEvent:
    done_reason: DoneReason
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    prompt_duration: float = 0.0  # seconds spent on the prompt (prefill)
    eval_duration: float = 0.0  # seconds spent decoding after the first token
    time_to_first_token: float = 0.0  # seconds from request arrival to first token
    peak_memory: int = 0
    request_id: str = ""
    error: str | None = None
    thinking_tokens: int = 0  # of completion_tokens, those spent thinking
    in_thinking: bool = False  # it ended inside the thinking (e.g. max_tokens ran out there)
    draft_tokens: int = 0  # tokens a draft model guessed and the model checked
    draft_accepted: int = 0  # of them, those the model agreed with (sent as they were)
    type: Literal["done"] = "done"

    @property
    def draft_acceptance(self) -> float | None:
        """The share of the draft's guesses that were kept; None without a draft."""
        return self.draft_accepted / self.draft_tokens if self.draft_tokens else None


@dataclass(frozen=True)
class ProgressEvent:
    """How far the runner has read a long prompt, before the first chunk (may not come)."""

    processed: int  # prompt tokens in the KV cache so far (cached ones included)
    total: int
    type: Literal["progress"] = "progress"


@dataclass(frozen=True)
class ErrorEvent:
    """Sent instead of (never after) a DoneEvent when a request fails mid-stream."""

    error: str
    request_id: str = ""
    type: Literal["error"] = "error"


@dataclass(frozen=True)
class ToolCallEvent:
    """A tool call the model made, parsed by the runner (mlx-lm's parser for the model's
    family), sent when the call's text ends; ``error`` (with the ``raw`` text) when it
    could not be parsed. The answer's chunks never contain the call's text."""

    name: str = ""
    arguments: dict[str, Any] = field(default_factory=dict)
    id: str = ""
    error: str = ""
    raw: str = ""
    type: Literal["tool_call"] = "tool_call"

    @property
    def call(self) -> ToolCall:
        return ToolCall(name=self.name, arguments=self.arguments, id=self.id)


@dataclass(frozen=True)
class KeepAliveEvent:
    """Sent only during silence (no other event for a while), and only while the runner's
    worker thread is seen making progress: a stream that stays silent means a dead runner."""

    type: Literal["keepalive"] = "keepalive"


Event = ChunkEvent | DoneEvent | ErrorEvent | ProgressEvent | KeepAliveEvent | ToolCallEvent
KEEPALIVE_LINE = b'{"type":"keepalive"}\n'


def encode_event(event: Event) -> bytes:
    """One NDJSON line."""
    if type(event) is ChunkEvent and not event.logprobs and not event.draft:  # no asdict
        return _CHUNK_LINE % (json.dumps(event.content, ensure_ascii=False).encode(),
                              ",".join(map(str, event.tokens)).encode(),
                              b"true" if event.thinking else b"false")
    return (json.dumps(asdict(event), ensure_ascii=False, separators=(",", ":")) + "\n").encode()


_CHUNK_LINE = (b'{"content":%s,"tokens":[%s],"logprobs":[],"thinking":%s,"draft":[],'
               b'"type":"chunk"}\n')


def merge_chunks(events: list[Event]) -> list[Event]:
    """Runs of plain chunks (no log-probabilities) as one chunk: fewer lines when a
    reader falls behind. Text and tokens are kept whole and in order."""
    merged: list[Event] = []
    for event in events:
        last = merged[-1] if merged else None
        if (type(event) is ChunkEvent and not event.logprobs and type(last) is ChunkEvent
                and not last.logprobs and last.thinking == event.thinking):
            merged[-1] = ChunkEvent(content=last.content + event.content,
                                    tokens=last.tokens + event.tokens, thinking=event.thinking,
                                    draft=_joined_draft(last, event))
        else:
            merged.append(event)
    return merged


def _joined_draft(first: ChunkEvent, second: ChunkEvent) -> tuple[bool, ...]:
    if not first.draft and not second.draft:
        return ()
    return ((first.draft or (False,) * len(first.tokens))
            + (second.draft or (False,) * len(second.tokens)))


def decode_event(line: bytes | str) -> Event:
    """Parse one NDJSON line into an event; raises ValueError on anything else."""
    data = json.loads(line)
    if not isinstance(data, dict):
        raise ValueError(f"expected a JSON object, got {_kind(data)}")
    kind = data.get("type")
    if kind == "chunk":
        raw = data.get("logprobs")
        logprobs = tuple(
            TokenLogprob(token=lp["token"], text=lp["text"], logprob=lp["logprob"],
                         top=tuple(TopLogprob(**t) for t in lp.get("top", ())),
                         unconstrained=TopLogprob(**lp["unconstrained"])
                         if lp.get("unconstrained") else None)
            for lp in raw
        ) if raw else ()
        drafted = data.get("draft")
        return ChunkEvent(content=data["content"], tokens=tuple(data.get("tokens", ())),
                          logprobs=logprobs, thinking=data.get("thinking") is True,
                          draft=tuple(d is True for d in drafted) if drafted else ())
    if kind == "done":
        known = {f.name for f in fields(DoneEvent)}
        return DoneEvent(**{k: v for k, v in data.items() if k in known})
    if kind == "error":
        return ErrorEvent(error=str(data.get("error")), request_id=data.get("request_id", ""))
    if kind == "progress":
        return ProgressEvent(processed=int(data["processed"]), total=int(data["total"]))
    if kind == "keepalive":
        return KeepAliveEvent()
    if kind == "tool_call":
        arguments = data.get("arguments") or {}
        return ToolCallEvent(name=str(data.get("name", "")),
                             arguments=arguments if isinstance(arguments, dict) else {},
                             id=str(data.get("id", "")), error=str(data.get("error", "")),
                             raw=str(data.get("raw", "")))
    raise ValueError(f"unknown event type {kind!r}")


@dataclass(frozen=True)
class Handshake:
    port: int
    pid: int
    protocol: int
    host: str = "127.0.0.1"
    event: str = "listening"

    def to_line(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_line(cls, line: str) -> Handshake:
        data = json.loads(line)
        if not isinstance(data, dict) or data.get("event") != "listening":
            raise ValueError(f"not a runner handshake: {line[:200]!r}")
        return cls(port=int(data["port"]), pid=int(data["pid"]), protocol=int(data["protocol"]),
                   host=str(data.get("host", "127.0.0.1")))

"""The look-inside endpoints' handlers: ``/v1/score``, ``/v1/lens``, ``/v1/attention``.

Each handler checks and tokenizes on its HTTP thread (like a completion), queues an
:class:`~runner.inspect.InspectJob` through the same mailbox, and streams its events
with the server's own stream writer (keep-alives, a vanished client cancels it).
The MLX work runs on the worker, one chunk between decode steps (runner/inspect.py).
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

from ..inside_protocol import (
    DEFAULT_LENS_POSITIONS,
    MAX_ATTENTION_TOKENS,
    AttentionRequest,
    LensRequest,
    ScoreRequest,
)
from ..protocol import ValidationError
from .inspect import (
    InspectJob,
    ModelParts,
    UnsupportedModel,
    attention_pass,
    lens_pass,
    lens_plan,
    model_parts,
    score_pass,
)

if TYPE_CHECKING:
    from .engine import Engine
    from .models import LoadedModel
    from .server import RunnerHandler

__all__ = ["handle_score", "handle_lens", "handle_attention"]

GROUP_REFUSED = ("look-inside views (score, choose, lens, attention) need the whole model in one "
                 "process; this runner is a group of {ranks} ranks (a sharded model). Load the "
                 "model without --ranks/--hosts to look inside it")


def http_error(status: int, message: str, field: str | None = None) -> Exception:
    from .server import HTTPError

    return HTTPError(status, message, field)


def parsed_request(handler: RunnerHandler, parse: Any, body: Any, group_refused: str
                   ) -> tuple[Engine, LoadedModel, Any]:
    """A prefill-only pass's request: the runner ready, the body parsed (a 400 naming the
    field), one process (``group_refused`` otherwise: its ``{ranks}`` filled in)."""
    engine, loaded = handler._require_ready()
    try:
        request = parse(body)
    except ValidationError as exc:
        raise http_error(400, str(exc), exc.field) from None
    if engine.distributed is not None:
        raise http_error(400, group_refused.format(ranks=engine.distributed.size))
    return engine, loaded, request


def _ready(handler: RunnerHandler, parse: Any, body: Any) -> tuple[Engine, ModelParts, Any]:
    engine, loaded, request = parsed_request(handler, parse, body, GROUP_REFUSED)
    try:
        parts = model_parts(loaded.model)
    except UnsupportedModel as exc:
        raise http_error(400, str(exc)) from None
    return engine, parts, request


def _encode(handler: RunnerHandler, engine: Engine, text: str, field: str) -> list[int]:
    tokenizer = engine.loaded.tokenizer if engine.loaded else None
    assert tokenizer is not None
    with handler.server.tokenizer_lock:
        tokens = list(tokenizer.encode(text))
    if not tokens:
        raise http_error(400, "text is empty after tokenization", field)
    context = engine.context_length
    if context and len(tokens) > context:
        raise http_error(400, f"{field} has {len(tokens)} tokens but the context length is "
                               f"{context}", field)
    return tokens


def _decoder(handler: RunnerHandler, engine: Engine) -> Any:
    """Token pieces on the worker thread: the tokenizer is shared, so under its lock."""
    tokenizer = engine.loaded.tokenizer if engine.loaded else None
    assert tokenizer is not None
    lock = handler.server.tokenizer_lock

    def decode(tokens: list[int]) -> str:
        with lock:
            return str(tokenizer.decode(tokens))

    return decode


def _submit(handler: RunnerHandler, engine: Engine, job: InspectJob) -> None:
    engine.submit(job)
    handler._stream_job(engine, job)


def _job(kind: Any, tokens: list[int], work: Any) -> InspectJob:
    return InspectJob(request_id=f"{kind}-{uuid.uuid4().hex}", prompt_tokens=tokens, kind=kind,
                      work=work)


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def handle_score(handler: RunnerHandler, body: Any) -> None:
    engine, parts, request = _ready(handler, ScoreRequest.from_json, body)
    context = request.context or ""
    tokenizer = engine.loaded.tokenizer if engine.loaded else None
    assert tokenizer is not None
    with handler.server.tokenizer_lock:
        head = list(tokenizer.encode(context))  # [] or [BOS] without a context
    sequences, starts = [], []
    for i, text in enumerate(request.texts):
        tokens = _encode(handler, engine, context + text, f"texts[{i}]")
        # Context and text are tokenized together, as generation would see them; the text
        # starts where the context's own tokens stop matching.
        start = min(_common_prefix(head, tokens), len(tokens) - 1)
        sequences.append(tokens)
        starts.append(start)
    step = engine.settings.prefill_step
    work = score_pass(parts, sequences, starts, request.top_k, _decoder(handler, engine),
                      chunk_tokens=min(256, step))
    _submit(handler, engine, _job("score", [t for s in sequences for t in s], work))


def handle_lens(handler: RunnerHandler, body: Any) -> None:
    engine, parts, request = _ready(handler, LensRequest.from_json, body)
    tokens = _encode(handler, engine, request.text, "text")
    try:
        positions, layers = lens_plan(parts, len(tokens), request.positions, request.layers,
                                      request.last or DEFAULT_LENS_POSITIONS)
    except ValueError as exc:
        field = "layers" if str(exc).startswith("layer") else "positions"
        raise http_error(400, str(exc), field) from None
    work = lens_pass(parts, tokens, positions, layers, request.top_k, _decoder(handler, engine),
                     chunk=engine.settings.prefill_step)
    _submit(handler, engine, _job("lens", tokens, work))


def handle_attention(handler: RunnerHandler, body: Any) -> None:
    engine, parts, request = _ready(handler, AttentionRequest.from_json, body)
    tokens = _encode(handler, engine, request.text, "text")
    if len(tokens) > MAX_ATTENTION_TOKENS:
        raise http_error(400, f"attention maps take at most {MAX_ATTENTION_TOKENS} tokens; this "
                               f"text has {len(tokens)}: shorten it", "text")
    n_layers = len(parts.layers)
    layer = request.layer + n_layers if request.layer < 0 else request.layer
    if not 0 <= layer < n_layers:
        raise http_error(400, f"layer {request.layer} is out of range: the model has {n_layers} "
                               f"blocks (0..{n_layers - 1}, or negative from the end)", "layer")
    work = attention_pass(parts, tokens, layer, _decoder(handler, engine),
                          chunk=engine.settings.prefill_step)
    _submit(handler, engine, _job("attention", tokens, work))

"""Look-inside requests to a runner: ``/v1/score``, ``/v1/lens``, ``/v1/attention``.

Each answer is an NDJSON stream (progress, keep-alives, one result line, done); this
reads it to the end with the connection's own error boundary, so a runner that dies
or stalls reads as it does for a completion, and an interrupt closes the stream,
which cancels the pass on the runner.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import httpx2

from .. import protocol
from ..errors import GenerationError, ProtocolError
from ..inside_protocol import (
    AttentionRequest,
    AttentionResult,
    LensRequest,
    LensResult,
    ScoreRequest,
    ScoreResult,
    decode_result,
)

if TYPE_CHECKING:
    from .connection import RunnerConnection

__all__ = ["score", "lens", "attention"]

Progress = Callable[[int, int], None]


def _run(conn: RunnerConnection, endpoint: str, body: dict[str, Any],
         on_progress: Progress | None, decode: Callable[[dict[str, Any]], Any] = decode_result,
         refused: Callable[[httpx2.Response], None] | None = None) -> Any:
    """One streamed request read to its result; ``decode`` reads the result line, ``refused``
    may raise its own error for a 4xx answer before the generic one."""
    method, path = protocol.ENDPOINTS[endpoint]
    http = conn.require_http()
    what = f"during {endpoint}"
    request = http.build_request(method, path, json=body, timeout=conn.stream_timeout())
    conn.count_stream(1)
    try:
        with conn.translating(what):
            response = http.send(request, stream=True)
            try:
                if response.status_code >= 400:
                    response.read()
                    if refused is not None:
                        refused(response)
                conn.check_response(response, f"the {endpoint} request")
                return _read(conn, endpoint, response, on_progress, decode)
            except httpx2.ReadTimeout as exc:
                raise conn.stalled(what) from exc
            finally:
                response.close()
    finally:
        conn.count_stream(-1)
        conn.touch()


def _read(conn: RunnerConnection, endpoint: str, response: httpx2.Response,
          on_progress: Progress | None,
          decode: Callable[[dict[str, Any]], Any] = decode_result) -> Any:
    result = None
    for line in response.iter_lines():
        if not line.strip():
            continue
        try:
            data = json.loads(line)
            kind = data.get("type") if isinstance(data, dict) else None
            if kind == "result":
                result = decode(data)
                continue
            event = protocol.decode_event(line)
        except (KeyError, TypeError, ValueError) as exc:
            raise ProtocolError(f"runner {conn.name!r} sent a malformed {endpoint} line: "
                                f"{line[:200]!r}") from exc
        if isinstance(event, protocol.ProgressEvent) and on_progress is not None:
            on_progress(event.processed, event.total)
        elif isinstance(event, protocol.ErrorEvent):
            raise GenerationError(f"runner {conn.name!r}: {event.error}")
        elif isinstance(event, protocol.DoneEvent):
            if result is None:
                raise GenerationError(f"runner {conn.name!r} ended the {endpoint} request "
                                      f"({event.done_reason}) without a result")
            return result
    gone = conn.gone(f"during {endpoint}", wait=True)
    raise gone or ProtocolError(f"runner {conn.name!r} ended the {endpoint} stream early")


def score(conn: RunnerConnection, request: ScoreRequest,
          on_progress: Progress | None = None) -> ScoreResult:
    result = _run(conn, "score", request.to_json(), on_progress)
    assert isinstance(result, ScoreResult)
    return result


def lens(conn: RunnerConnection, request: LensRequest,
         on_progress: Progress | None = None) -> LensResult:
    result = _run(conn, "lens", request.to_json(), on_progress)
    assert isinstance(result, LensResult)
    return result


def attention(conn: RunnerConnection, request: AttentionRequest,
              on_progress: Progress | None = None) -> AttentionResult:
    result = _run(conn, "attention", request.to_json(), on_progress)
    assert isinstance(result, AttentionResult)
    return result

"""The runner's HTTP side: stdlib ``ThreadingHTTPServer``, bearer-token auth, NDJSON streams.

Handler threads parse and validate requests, tokenize prompts (pure Python) and
hand jobs to the :class:`~mlx_notebook.runner.engine.Engine`; they never touch
MLX. Every failure becomes a JSON error with a 4xx status, never a dropped
connection or a traceback on the wire.
"""

from __future__ import annotations

import hmac
import json
import queue
import select
import socket
import sys
import threading
import traceback
import uuid
from dataclasses import asdict, replace
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from ..protocol import (
    ENDPOINTS,
    MAX_BODY_BYTES,
    CancelRequest,
    CancelResponse,
    CompletionRequest,
    DetokenizeRequest,
    DetokenizeResponse,
    DoneEvent,
    ErrorEvent,
    FreeResponse,
    TokenizeRequest,
    TokenizeResponse,
    ValidationError,
    encode_event,
)
from .engine import Engine
from .jobs import Job
from .models import LoadedModel
from .templates import render_messages

_WAIT_SLICE = 0.05  # how often a streaming handler checks for a vanished client


class HTTPError(Exception):
    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.field = status, message, field


class RunnerServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = False
    request_queue_size = 64

    def __init__(self, address: tuple[str, int], engine: Engine, token: str | None) -> None:
        super().__init__(address, RunnerHandler)
        self.engine = engine
        self.token = token.encode() if token else None
        self.stopping = threading.Event()

    def request_shutdown(self) -> None:
        """Stop serving from any thread (a handler cannot call shutdown() itself: it would wait on itself)."""
        if not self.stopping.is_set():
            self.stopping.set()
            self.engine.mark_stopping()
            threading.Thread(target=self.shutdown, daemon=True).start()


class RunnerHandler(BaseHTTPRequestHandler):
    server: RunnerServer
    protocol_version = "HTTP/1.1"
    server_version = "mlx-notebook-runner"
    sys_version = ""

    # ------------------------------------------------------------ dispatch

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def do_OPTIONS(self) -> None:  # no CORS: preflights get the same 401/405 as anything else
        self._dispatch("OPTIONS")

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """The stdlib answers unparsable requests with HTML; answer them in JSON too."""
        self.close_connection = True
        self._send_json(code, {"error": message or HTTPStatus(code).phrase, "field": None})

    def _dispatch(self, method: str) -> None:
        try:
            self._check_auth()
            raw = self._read_raw_body()  # read even when unused: keeps keep-alive framing intact
            path = self.path.split("?", 1)[0]
            name = next((n for n, (_, p) in ENDPOINTS.items() if p == path), None)
            if name is None:
                raise HTTPError(404, f"no such endpoint {path!r}")
            if ENDPOINTS[name][0] != method:
                raise HTTPError(405, f"{path} expects {ENDPOINTS[name][0]}, not {method}")
            getattr(self, f"_handle_{name}")(_parse_json(raw) if method == "POST" else None)
        except HTTPError as exc:
            self._send_json(exc.status, {"error": exc.message, "field": exc.field})
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as exc:  # a bug: report it in one line, keep the details on stderr
            traceback.print_exc(file=sys.stderr)
            self._send_json(500, {"error": f"internal error: {type(exc).__name__}: {exc}",
                                  "field": None})

    def _check_auth(self) -> None:
        expected = self.server.token
        if expected is None:
            return
        given = self.headers.get("Authorization", "")
        scheme, _, value = given.partition(" ")
        # Compare the whole header in constant time; also drain the body so the connection stays sane.
        ok = hmac.compare_digest(f"{scheme} {value}".encode(), b"Bearer " + expected)
        if not ok:
            self._discard_body()
            raise HTTPError(401, "missing or wrong bearer token")

    def _discard_body(self) -> None:
        length = self._content_length()
        if 0 < length <= MAX_BODY_BYTES:
            self.rfile.read(length)
        elif length > MAX_BODY_BYTES:
            self.close_connection = True

    def _content_length(self) -> int:
        try:
            return max(0, int(self.headers.get("Content-Length", "0")))
        except ValueError:
            return 0

    def _read_raw_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.close_connection = True
            raise HTTPError(411, "send a Content-Length; chunked bodies are not accepted")
        length = self._content_length()
        if length > MAX_BODY_BYTES:
            self.close_connection = True
            raise HTTPError(413, f"body of {length} bytes is over the {MAX_BODY_BYTES}-byte limit")
        return self.rfile.read(length) if length else b""

    # ------------------------------------------------------------ responses

    def _send_json(self, status: int, payload: Any) -> None:
        data = json.dumps(payload, ensure_ascii=False).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _write_chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _require_ready(self) -> tuple[Engine, LoadedModel]:
        engine = self.server.engine
        if self.server.stopping.is_set():
            raise HTTPError(503, "runner is shutting down")
        if engine.state == "error":
            raise HTTPError(409, f"model failed to load: {engine.error}")
        if engine.state != "ready" or engine.loaded is None:
            raise HTTPError(409, f"model is still loading ({engine.progress:.0f}%)")
        return engine, engine.loaded

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        return  # quiet: stderr is reserved for errors the client shows to the user

    # ------------------------------------------------------------ endpoints

    def _handle_status(self, _body: Any) -> None:
        self._send_json(200, self.server.engine.status().to_json())

    def _handle_tokenize(self, body: Any) -> None:
        _, loaded = self._require_ready()
        request = _validated(TokenizeRequest.from_json, body)
        tokenizer = loaded.tokenizer
        if request.messages is not None:
            text = render_messages(tokenizer, request.messages)
            tokens = tokenizer.encode(text, add_special_tokens=False)
        else:
            text = request.text or ""
            tokens = tokenizer.encode(text)
        pieces = [tokenizer.decode([t]) for t in tokens]
        raw = [_token_bytes(tokenizer, t, p).hex() for t, p in zip(tokens, pieces, strict=True)]
        self._send_json(200, asdict(TokenizeResponse(tokens=tokens, pieces=pieces, text=text,
                                                     token_bytes=raw)))

    def _handle_detokenize(self, body: Any) -> None:
        _, loaded = self._require_ready()
        request = _validated(DetokenizeRequest.from_json, body)
        tokenizer = loaded.tokenizer
        vocab = getattr(tokenizer, "vocab_size", None) or len(tokenizer.get_vocab())
        bad = next((t for t in request.tokens if t >= vocab), None)
        if bad is not None:
            raise HTTPError(400, f"token id {bad} is outside the vocabulary (size {vocab})",
                            "tokens")
        self._send_json(200, asdict(DetokenizeResponse(text=tokenizer.decode(request.tokens))))

    def _handle_cancel(self, body: Any) -> None:
        request = _validated(CancelRequest.from_json, body)
        cancelled = self.server.engine.cancel(request.request_id)
        self._send_json(200, asdict(CancelResponse(cancelled=cancelled)))

    def _handle_free(self, _body: Any) -> None:
        engine, _ = self._require_ready()
        freed = engine.free(timeout=10.0)
        self._send_json(200, asdict(FreeResponse(done=freed is not None,
                                                 prompt_cache_freed=freed or 0,
                                                 memory=engine.memory())))

    def _handle_shutdown(self, _body: Any) -> None:
        self._send_json(200, {"ok": True})
        self.server.request_shutdown()

    def _handle_completion(self, body: Any) -> None:
        engine, loaded = self._require_ready()
        request = _validated(CompletionRequest.from_json, body)
        tokenizer = loaded.tokenizer
        if request.messages is not None:
            tokens = tokenizer.encode(render_messages(tokenizer, request.messages),
                                      add_special_tokens=False)
        else:
            tokens = tokenizer.encode(request.prompt or "")
        if not tokens:
            raise HTTPError(400, "prompt is empty after tokenization", "prompt")
        options = request.options
        context = engine.context_length
        if context:
            if len(tokens) >= context:
                raise HTTPError(400, f"prompt has {len(tokens)} tokens but the context length is "
                                     f"{context}", "prompt")
            room = context - len(tokens)
            if options.max_tokens > room:
                options = replace(options, max_tokens=room)
        request_id = request.request_id or uuid.uuid4().hex
        job = Job(request_id=request_id, prompt_tokens=tokens, options=options)
        engine.submit(job)
        self._stream_job(engine, job)

    def _stream_job(self, engine: Engine, job: Job) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Request-Id", job.request_id)
        self.end_headers()
        try:
            while True:
                event = self._next_event(job, engine)
                if event is None:
                    continue
                # Whatever else is already waiting goes in the same write: when tokens come
                # faster than one write each, the stream catches up instead of lagging.
                events = [event]
                while not isinstance(events[-1], (DoneEvent, ErrorEvent)):
                    try:
                        events.append(job.events.get_nowait())
                    except queue.Empty:
                        break
                self._write_chunk(b"".join(encode_event(e) for e in events))
                if isinstance(events[-1], (DoneEvent, ErrorEvent)):
                    break
            self._write_chunk(b"")
        except (BrokenPipeError, ConnectionResetError, OSError):
            engine.cancel(job.request_id)
            self.close_connection = True

    def _next_event(self, job: Job, engine: Engine) -> Any:
        try:
            return job.events.get(timeout=_WAIT_SLICE)
        except queue.Empty:
            if _peer_closed(self.connection):
                raise ConnectionResetError("client went away") from None
            return None


def _parse_json(raw: bytes) -> Any:
    if not raw.strip():
        return {}
    try:
        return json.loads(raw)
    except RecursionError:
        raise HTTPError(400, "JSON nested too deeply", "body") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise HTTPError(400, f"body is not valid JSON: {exc}", "body") from None


def _validated(parse: Any, body: Any) -> Any:
    try:
        return parse(body)
    except ValidationError as exc:
        raise HTTPError(400, str(exc), exc.field) from None


def _peer_closed(sock: socket.socket) -> bool:
    """True when the client closed its end (readable with nothing to read)."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        if not readable:
            return False
        return sock.recv(1, socket.MSG_PEEK) == b""
    except (OSError, ValueError):
        return True


def _token_bytes(tokenizer: Any, token: int, piece: str) -> bytes:
    """A token's own bytes: its piece, unless that is a U+FFFD standing for part of a character."""
    if "\ufffd" not in piece:
        return piece.encode("utf-8")
    from mlx_lm.tokenizer_utils import _byte_decoder

    name = tokenizer.convert_ids_to_tokens(token)
    if isinstance(name, str) and len(name) == 6 and name.startswith("<0x") and name.endswith(">"):
        return bytes([int(name[3:5], 16)])  # SentencePiece byte fallback
    decoder = _byte_decoder()  # GPT-2 byte-level BPE: one character a byte
    if isinstance(name, str) and name and all(c in decoder for c in name):
        return bytes(decoder[c] for c in name)
    return piece.encode("utf-8")

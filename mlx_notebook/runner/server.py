"""The runner's HTTP side: stdlib ``ThreadingHTTPServer``, bearer-token auth, NDJSON streams.

Handler threads parse and validate requests, tokenize prompts (one at a time:
fast tokenizers are not safe to share between threads) and hand jobs to the
:class:`~mlx_notebook.runner.engine.Engine`; they never touch MLX. Every failure
becomes a JSON error with a 4xx status, never a dropped connection or a
traceback on the wire.

Hostile clients are bounded (docs/reliability.md): at most
``ServerLimits.max_connections`` connections (503 past it, from the accept loop),
a deadline for each request's headers and body, an idle limit between requests,
a foreign ``Host``/``Origin`` or a wrong token answered at once without reading
the body.
"""

from __future__ import annotations

import contextlib
import functools
import hmac
import io
import json
import math
import queue
import select
import socket
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from ..protocol import (
    ENDPOINTS,
    KEEPALIVE_LINE,
    MAX_BODY_BYTES,
    CancelRequest,
    CancelResponse,
    CompletionRequest,
    DetokenizeRequest,
    DetokenizeResponse,
    DoneEvent,
    ErrorEvent,
    Event,
    FreeResponse,
    NamesRequest,
    SamplingOptions,
    TokenizeRequest,
    TokenizeResponse,
    ValidationError,
    encode_event,
    merge_chunks,
)
from .engine import Engine
from .jobs import Job
from .mailbox import DuplicateRequestId
from .models import LoadedModel
from .reasoning import make_splitter
from .templates import render_messages
from .tool_calls import tool_call_events, tool_support_error

__all__ = ["HTTPError", "RunnerHandler", "RunnerServer", "ServerLimits"]

_WAIT_SLICE = 0.05  # how often a streaming handler checks for a vanished client
_FLUSH_SECONDS = 0.004  # a stream writes at most one line this often (plain chunks merged)
_LINGER_SECONDS = 0.5  # after refusing a request: let its body arrive, so close() sends no RST
_LINGER_BYTES = 1 << 20
_LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")
_WILDCARDS = ("", "0.0.0.0", "::")
_OWN_PATHS = frozenset(p for _, p in ENDPOINTS.values())


def _generates(path: str) -> bool:
    """The request becomes a job for the worker (counted while it arrives: runner/mailbox.py)."""
    return path == ENDPOINTS["completion"][1] or path in _openai_wire().GENERATION_PATHS


def _openai_wire() -> Any:
    from . import openai_wire  # pure and small; imported on the first request that needs it

    return openai_wire


@dataclass(frozen=True)
class ServerLimits:
    """What one connection may hold; the defaults are argued in docs/reliability.md."""

    # Far above what the kernel opens (httpx's pool: 100; mn.map: a handful per runner), far
    # below what a thread each costs (a few MB of stack reserve; RSS only when touched).
    max_connections: int = 256
    request_timeout: float = 10.0  # from the request line to the body's last byte
    idle_timeout: float = 30.0  # between requests (httpx drops its own after 5 s); a stuck write
    keepalive_interval: float = 2.0  # a stream silent this long gets a keep-alive line
    allowed_hosts: tuple[str, ...] = ()  # more Host names to answer; "*": any
    allowed_origins: tuple[str, ...] = ()  # Origin values to accept; "*": any


class HTTPError(Exception):
    def __init__(self, status: int, message: str, field: str | None = None, *,
                 close: bool = False) -> None:
        super().__init__(message)
        self.status, self.message, self.field, self.close = status, message, field, close


class RunnerServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = False
    request_queue_size = 64

    def __init__(self, address: tuple[str, int], engine: Engine, token: str | None,
                 limits: ServerLimits | None = None) -> None:
        super().__init__(address, RunnerHandler)
        self.engine = engine
        self.token = token.encode() if token else None
        self.limits = limits or ServerLimits()
        self.stopping = threading.Event()
        self.tokenizer_lock = threading.Lock()  # fast tokenizers raise "Already borrowed"
        self.hosts = _own_hosts(str(self.server_address[0]), int(self.server_address[1]),
                                self.limits.allowed_hosts)
        self._open = 0
        self._open_lock = threading.Lock()
        self.served_names: tuple[str, ...] = ()  # the names the manager loaded it as (/v1/names)
        self.requests: dict[str, int] = {}  # generation requests per source, for the status
        self._requests_lock = threading.Lock()

    def count_request(self, source: str) -> None:
        with self._requests_lock:
            self.requests[source] = self.requests.get(source, 0) + 1

    @property
    def open_connections(self) -> int:
        return self._open

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._open_lock:
            full = self._open >= self.limits.max_connections
            if not full:
                self._open += 1
        if full:
            _refuse_busy(request, self.limits.max_connections)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._closed_one()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._closed_one()

    def _closed_one(self) -> None:
        with self._open_lock:
            self._open -= 1

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that vanished is no news; anything else is a bug worth a traceback."""
        if not isinstance(sys.exc_info()[1], OSError):
            traceback.print_exc(file=sys.stderr)

    def request_shutdown(self) -> None:
        """Stop serving from any thread (a handler cannot call shutdown() itself: it would wait on itself)."""
        if not self.stopping.is_set():
            self.stopping.set()
            self.engine.mark_stopping()
            threading.Thread(target=self.shutdown, daemon=True).start()


def _own_hosts(bound: str, port: int, extra: tuple[str, ...]) -> frozenset[str] | None:
    """Every ``Host`` value the runner answers (bare and with its port); None: any."""
    if "*" in extra:
        return None
    names = {*_LOOPBACK_NAMES, *extra, _bracketed(bound)}
    if bound in _WILDCARDS:  # every address of this machine is the runner's own
        names |= {socket.gethostname(), socket.getfqdn()}
        import psutil

        for addresses in psutil.net_if_addrs().values():
            for address in addresses:
                if address.family in (socket.AF_INET, socket.AF_INET6):
                    names.add(_bracketed(address.address.split("%", 1)[0]))
    names = {n.lower() for n in names if n}
    return frozenset(names | {f"{n}:{port}" for n in names})


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _refuse_busy(sock: socket.socket, cap: int) -> None:
    """Answer 503 from the accept loop: never blocks (a small write to a fresh socket)."""
    body = json.dumps({"error": f"runner is at its limit of {cap} open connections; "
                                "retry when one closes", "field": None}).encode()
    head = (f"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n")
    try:
        sock.setblocking(False)
        sock.send(head.encode() + body)
        sock.recv(1 << 16)  # what already came, so that close() does not reset the answer
    except OSError:
        pass


class _DeadlineReader(io.RawIOBase):
    """The handler's socket as a raw stream whose every read ends by ``handler.read_deadline``,
    so a client that trickles bytes (slowloris) cannot hold a thread past it."""

    def __init__(self, handler: RunnerHandler) -> None:
        self._handler = handler

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        remaining = self._handler.read_deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("the request did not arrive in time")
        sock = self._handler.connection
        sock.settimeout(remaining)
        try:
            return sock.recv_into(buffer)
        except (ConnectionResetError, BrokenPipeError):
            return 0  # as a close: the stdlib ends the connection quietly


class RunnerHandler(BaseHTTPRequestHandler):
    server: RunnerServer
    protocol_version = "HTTP/1.1"
    server_version = "mlx-notebook-runner"
    sys_version = ""
    read_deadline = math.inf

    def setup(self) -> None:
        super().setup()
        self.rfile.close()  # the stdlib's file object; ours keeps the deadline
        self.rfile = io.BufferedReader(_DeadlineReader(self))

    def handle_one_request(self) -> None:
        self.read_deadline = time.monotonic() + self.server.limits.idle_timeout
        super().handle_one_request()

    def parse_request(self) -> bool:
        # The request line is in: headers and body must follow within the request timeout.
        self.read_deadline = time.monotonic() + self.server.limits.request_timeout
        return super().parse_request()

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
        error = HTTPError(code, message or HTTPStatus(code).phrase)
        self._send_json(code, self._error_body(error, getattr(self, "path", "") or ""))

    def _error_body(self, exc: HTTPError, path: str) -> dict[str, Any]:
        """Ours, or OpenAI's error object on its paths and on ``/v1/`` paths we do not serve
        (an OpenAI client asking for, say, ``/v1/embeddings``); ours anywhere else."""
        path = path.split("?", 1)[0]
        unserved_v1 = path.startswith("/v1/") and path not in _OWN_PATHS
        if not (_openai_wire().is_openai_path(path) or unserved_v1):
            return {"error": exc.message, "field": exc.field}
        from .openai_routes import openai_error_body

        return openai_error_body(exc)

    def _route(self, method: str, path: str, raw: bytes) -> None:
        if _openai_wire().is_openai_path(path):
            from .openai_routes import handle_openai

            handle_openai(self, method, path, _parse_json(raw) if method == "POST" else None)
            return
        name = next((n for n, (_, p) in ENDPOINTS.items() if p == path), None)
        if name is None:
            raise HTTPError(404, f"no such endpoint {path!r}")
        if ENDPOINTS[name][0] != method:
            raise HTTPError(405, f"{path} expects {ENDPOINTS[name][0]}, not {method}")
        getattr(self, f"_handle_{name}")(_parse_json(raw) if method == "POST" else None)

    def _dispatch(self, method: str) -> None:
        try:
            self._check_host()
            self._check_auth()
            try:
                raw = self._read_raw_body()  # read even when unused: keeps keep-alive framing
            except TimeoutError:
                raise HTTPError(408, f"the request body did not arrive within "
                                     f"{self.server.limits.request_timeout:g} s", "body",
                                close=True) from None
            self.read_deadline = math.inf
            self.connection.settimeout(self.server.limits.idle_timeout)  # bounds a stuck write
            path = self.path.split("?", 1)[0]
            arriving = self.server.engine.mailbox.arriving() if method == "POST" \
                and _generates(path) else contextlib.nullcontext()
            with arriving:
                self._route(method, path, raw)
        except HTTPError as exc:
            if exc.close:
                self.close_connection = True
            self._send_json(exc.status, self._error_body(exc, self.path))
            if exc.close:
                self._linger()
        except OSError:  # the client went away (reset, broken pipe, a write that timed out)
            self.close_connection = True
        except Exception as exc:  # a bug: report it in one line, keep the details on stderr
            traceback.print_exc(file=sys.stderr)
            self._send_json(500, self._error_body(
                HTTPError(500, f"internal error: {type(exc).__name__}: {exc}"), self.path))

    def _check_host(self) -> None:
        """Only the runner's own names (stops DNS rebinding) and no foreign web page."""
        hosts = self.server.hosts
        given = self.headers.get_all("Host") or []
        if hosts is not None and (len(given) != 1 or given[0].strip().lower() not in hosts):
            shown = given[0][:80] if len(given) == 1 else f"{len(given)} Host headers"
            raise HTTPError(403, f"Host {shown!r} is not this runner's (start it with "
                                 "--allow-host NAME to answer another name)", "Host", close=True)
        origins = self.headers.get_all("Origin") or []
        allowed = self.server.limits.allowed_origins
        if origins and "*" not in allowed:
            for origin in origins:
                netloc = urlsplit(origin.strip()).netloc.lower()
                own = hosts is None or netloc in hosts
                if not (origin in allowed or (own and origin.startswith("http://"))):
                    raise HTTPError(403, f"requests from web pages are refused (Origin "
                                         f"{origin[:80]!r}; --allow-origin accepts one)",
                                    "Origin", close=True)

    def _check_auth(self) -> None:
        expected = self.server.token
        if expected is None:
            return
        given = self.headers.get("Authorization", "")
        scheme, _, value = given.partition(" ")
        # The whole header, in constant time. The body is never read: the answer comes at once.
        ok = hmac.compare_digest(f"{scheme} {value}".encode(), b"Bearer " + expected)
        if not ok:
            raise HTTPError(401, "missing or wrong bearer token", close=True)

    def _linger(self) -> None:
        """After an answer that closes the connection: stop writing, read what the client
        still sends for a moment (a close with unread bytes would reset our answer)."""
        sock = self.connection
        try:
            sock.shutdown(socket.SHUT_WR)
            deadline = time.monotonic() + _LINGER_SECONDS
            drained = 0
            while drained < _LINGER_BYTES and (left := deadline - time.monotonic()) > 0:
                sock.settimeout(left)
                data = sock.recv(1 << 16)
                if not data:
                    return
                drained += len(data)
        except OSError:
            pass

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
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data)
        except OSError:
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
        with self.server._requests_lock:
            requests = dict(self.server.requests)
        self._send_json(200, replace(self.server.engine.status(), requests=requests,
                                     names=self.server.served_names).to_json())

    def _handle_names(self, body: Any) -> None:
        request = _validated(NamesRequest.from_json, body)
        self.server.served_names = request.names
        self._send_json(200, {"ok": True})

    def _handle_tokenize(self, body: Any) -> None:
        _, loaded = self._require_ready()
        request = _validated(TokenizeRequest.from_json, body)
        tokenizer = loaded.tokenizer
        with self.server.tokenizer_lock:
            if request.messages is not None:
                text = _render_chat(tokenizer, loaded, request)
                tokens = tokenizer.encode(text, add_special_tokens=False)
            else:
                text = request.text or ""
                tokens = tokenizer.encode(text)
            pieces = [tokenizer.decode([t]) for t in tokens]
            raw = [_token_bytes(tokenizer, t, p).hex()
                   for t, p in zip(tokens, pieces, strict=True)]
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
        with self.server.tokenizer_lock:
            text = tokenizer.decode(request.tokens)
            raw = [_token_bytes(tokenizer, t, tokenizer.decode([t])).hex() for t in request.tokens]
        self._send_json(200, asdict(DetokenizeResponse(text=text, token_bytes=raw)))

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

    def _handle_score(self, body: Any) -> None:
        from .inside_routes import handle_score

        handle_score(self, body)

    def _handle_lens(self, body: Any) -> None:
        from .inside_routes import handle_lens

        handle_lens(self, body)

    def _handle_attention(self, body: Any) -> None:
        from .inside_routes import handle_attention

        handle_attention(self, body)

    def _handle_cache_save(self, body: Any) -> None:
        from .cache_routes import handle_cache_save

        handle_cache_save(self, body)

    def _handle_cache_load(self, body: Any) -> None:
        from .cache_routes import handle_cache_load

        handle_cache_load(self, body)

    def _handle_completion(self, body: Any) -> None:
        engine, loaded = self._require_ready()
        request = _validated(CompletionRequest.from_json, body)
        self.server.count_request("notebook")
        tokenizer = loaded.tokenizer
        with self.server.tokenizer_lock:
            if request.messages is not None:
                tokens = tokenizer.encode(_render_chat(tokenizer, loaded, request),
                                          add_special_tokens=False)
            else:
                tokens = tokenizer.encode(request.prompt or "")
        if not tokens:
            raise HTTPError(400, "prompt is empty after tokenization", "prompt")
        options = request.options
        if (problem := logit_bias_problem(loaded, options)) is not None:
            raise HTTPError(400, problem, "options.logit_bias")
        context = engine.context_length
        if context:
            if len(tokens) >= context:
                raise HTTPError(400, f"prompt has {len(tokens)} tokens but the context length is "
                                     f"{context}", "prompt")
            room = context - len(tokens)
            if options.max_tokens > room:
                options = replace(options, max_tokens=room)
        compiled = self._compile_constraint(engine, loaded, request) \
            if request.constraint is not None else None
        request_id = request.request_id or uuid.uuid4().hex
        job = Job(request_id=request_id, prompt_tokens=tokens, options=options,
                  raw=request.messages is None,  # a continuation keeps its leading space
                  constraint=compiled)
        if request.messages is not None:  # thinking and tool calls apart (runner/reasoning.py)
            job.splitter = make_splitter(tokenizer, tokens)
            if request.tools:
                job.parse_tools = functools.partial(tool_call_events, tokenizer,
                                                    tools=request.tools)
        try:
            engine.submit(job)
        except DuplicateRequestId:
            raise HTTPError(409, f"request_id {request_id!r} is already in use by a request "
                                 "that has not finished", "request_id") from None
        self._stream_job(engine, job)

    def _compile_constraint(self, engine: Engine, loaded: LoadedModel,
                            request: CompletionRequest) -> Any:
        """The request's constraint compiled (runner/constraints.py), or a 400 naming the problem."""
        if engine.distributed is not None:  # followers would decode without the mask
            raise HTTPError(400, "constraints are not supported in a runner group yet",
                            "constraint")
        from .constraints import ConstraintError, grammars_for  # llguidance: on first use

        assert request.constraint is not None
        try:
            with self.server.tokenizer_lock:  # the first call reads the tokenizer (~0.5 s)
                return grammars_for(loaded).compile(request.constraint)
        except ConstraintError as exc:
            raise HTTPError(400, str(exc), "constraint") from None

    def _stream_job(self, engine: Engine, job: Job) -> None:
        ended = False
        try:
            self.start_stream("application/x-ndjson", job.request_id)
            for events in self.waiting_events(engine, job):
                self._write_chunk(b"".join(encode_event(e) for e in events))
                ended = isinstance(events[-1], (DoneEvent, ErrorEvent))
            self._write_chunk(b"")
        except OSError:  # the client went away, or stopped reading for the idle timeout
            self.close_connection = True
        finally:
            if not ended:  # whatever broke the response, nobody reads this job any more
                engine.cancel(job.request_id)

    def start_stream(self, content_type: str, request_id: str) -> None:
        """A 200 whose chunked, never-cached body is a stream of events."""
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Request-Id", request_id)
        self.end_headers()

    def waiting_events(self, engine: Engine, job: Job,
                       keepalive: bytes = KEEPALIVE_LINE) -> Iterator[list[Event]]:
        """The job's events, everything already waiting at once (plain chunks merged), up
        to its end event; during a silence, a ``keepalive`` while the worker lives.

        Batching what waits means a stream that falls behind catches up instead of lagging.
        """
        silent_since: float | None = None  # set on the first empty wait, never per token
        last_write = 0.0  # the first event goes out at once
        while True:
            try:
                event = job.events.get(timeout=_WAIT_SLICE)
            except queue.Empty:
                silent_since = self._on_silence(engine, silent_since, keepalive)
                continue
            silent_since = None
            events = [event]
            # Tokens faster than one per _FLUSH_SECONDS go out together: one write, one
            # wake-up of this thread and one line for the client to read per flush, not per
            # token (a small model on a GPU makes a token in 1-3 ms). A sleep, not a wait on
            # the queue: the worker's puts meanwhile wake nobody.
            wait = last_write + _FLUSH_SECONDS - time.perf_counter()
            if wait > 0 and not isinstance(event, (DoneEvent, ErrorEvent)):
                time.sleep(wait)
            while not isinstance(events[-1], (DoneEvent, ErrorEvent)):
                try:
                    events.append(job.events.get_nowait())
                except queue.Empty:
                    break
            yield merge_chunks(events)
            last_write = time.perf_counter()
            if isinstance(events[-1], (DoneEvent, ErrorEvent)):
                return

    def _on_silence(self, engine: Engine, silent_since: float | None,
                    keepalive: bytes = KEEPALIVE_LINE) -> float:
        """No event for a wait slice: is the client still there, is a keep-alive due?

        A keep-alive goes out only if the worker came back between MLX calls since the
        stream's last line: a hung worker (or a stopped process) leaves the stream silent.
        """
        if _peer_closed(self.connection):
            raise ConnectionResetError("client went away")
        now = time.monotonic()
        if silent_since is None:
            return now - _WAIT_SLICE
        if now - silent_since >= self.server.limits.keepalive_interval \
                and engine.heartbeat > silent_since:
            self._write_chunk(keepalive)
            return now
        return silent_since


def _render_chat(tokenizer: Any, loaded: LoadedModel,
                 request: CompletionRequest | TokenizeRequest) -> str:
    """The chat prompt with ``enable_thinking`` and ``tools``; a 400 for tools the model
    cannot call (runner/tool_calls.py says why)."""
    assert request.messages is not None
    if request.tools:
        problem = tool_support_error(tokenizer, loaded.name)
        if problem:
            raise HTTPError(400, problem, "tools")
    return render_messages(tokenizer, request.messages, think=request.think, tools=request.tools)


def _parse_json(raw: bytes) -> Any:
    if not raw.strip():
        return {}
    try:
        return json.loads(raw)
    except RecursionError:
        raise HTTPError(400, "JSON nested too deeply", "body") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise HTTPError(400, f"body is not valid JSON: {exc}", "body") from None


def logit_bias_problem(loaded: LoadedModel, options: SamplingOptions) -> str | None:
    """A ``logit_bias`` id past the logits would write outside them (MLX does not check)."""
    if not options.logit_bias:
        return None
    sizes = [getattr(getattr(loaded.model, "args", None), "vocab_size", None),
             getattr(loaded.tokenizer, "vocab_size", None) or len(loaded.tokenizer.get_vocab())]
    vocab = min(int(n) for n in sizes if n)
    bad = next((t for t, _ in options.logit_bias if t >= vocab), None)
    return None if bad is None else f"token id {bad} is outside the vocabulary (size {vocab})"


def _validated(parse: Any, body: Any) -> Any:
    try:
        return parse(body)
    except ValidationError as exc:
        raise HTTPError(400, str(exc), exc.field) from None


def _peer_closed(sock: socket.socket) -> bool:
    """True when the client closed its end (readable with nothing to read).

    ``poll``, not ``select``: select() fails on descriptors past 1023, which a busy
    runner reaches, and a failure must not read as "the client went away".
    """
    poller = select.poll()
    poller.register(sock, select.POLLIN)  # POLLHUP and POLLERR are always reported
    if not poller.poll(0):
        return False
    try:
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except OSError:
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

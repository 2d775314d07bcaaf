"""The router's HTTP side: the same guards as a runner, then forward by ``model``.

Guards, in order (as ``runner/server.py`` does them): the Host header is one of the
router's own names (DNS rebinding), no web-page Origin, the bearer token, a
bounded body with a Content-Length, a timeout on every socket read. Every error
is OpenAI's error object, so an SDK raises its own exception types. A client that
goes away mid-stream closes the forwarded request, which cancels it at the runner.
"""

from __future__ import annotations

import hmac
import json
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx2

from ..runner.openai_wire import error_body
from .routes import RouteTable

__all__ = ["RouterServer", "FORWARDED", "MAX_BODY_BYTES"]

FORWARDED = ("/v1/chat/completions", "/v1/completions")
MAX_BODY_BYTES = 8 << 20  # the runner's own limit: no point forwarding more
READ_TIMEOUT = 10.0  # seconds for a client to send its request (a slow-loris client is dropped)


class _Refused(Exception):
    def __init__(self, status: int, message: str, param: str | None = None,
                 code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


class RouterServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = False

    def __init__(self, address: tuple[str, int], token: str, routes: RouteTable) -> None:
        super().__init__(address, RouterHandler)
        self.token = token.encode()
        self.routes = routes
        host, port = str(self.server_address[0]), int(self.server_address[1])
        self.hosts = {f"{h}:{port}" for h in (host, "localhost", "127.0.0.1", "[::1]")}
        # One connection pool to the runners, shared by every handler thread (httpx2 is).
        self.upstream = httpx2.Client(timeout=httpx2.Timeout(10.0, read=None),
                                      limits=httpx2.Limits(max_connections=64))


class RouterHandler(BaseHTTPRequestHandler):
    server: RouterServer
    timeout = READ_TIMEOUT
    server_version = "mlx-notebook-router"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib's name
        pass  # no line per request on stderr (the kernel keeps only a tail of it)

    # ------------------------------------------------------------ entry points

    def do_GET(self) -> None:  # noqa: N802 - stdlib's name
        self._guarded(self._get)

    def do_POST(self) -> None:  # noqa: N802
        self._guarded(self._post)

    def _guarded(self, handle: Any) -> None:
        try:
            self._check_host()
            self._check_auth()
            handle()
        except _Refused as exc:
            self.close_connection = True  # its body may be unread: never parse it as a request
            self._send_json(exc.status, error_body(exc.status, exc.message, exc.param, exc.code))
        except OSError:  # the client went away
            self.close_connection = True

    # ------------------------------------------------------------ guards

    def _check_host(self) -> None:
        given = self.headers.get_all("Host") or []
        if len(given) != 1 or given[0].strip().lower() not in self.server.hosts:
            raise _Refused(403, "the Host header is not this router's")
        if self.headers.get("Origin"):
            raise _Refused(403, "requests from web pages are refused")

    def _check_auth(self) -> None:
        given = self.headers.get("Authorization", "").encode()
        if not hmac.compare_digest(given, b"Bearer " + self.server.token):
            raise _Refused(401, "missing or wrong API key (the router's token: mn.serve(port=...)"
                                ".token)")

    # ------------------------------------------------------------ routes

    def _get(self) -> None:
        if self.path.split("?")[0] != "/v1/models":
            raise _Refused(404, f"no endpoint GET {self.path[:100]}")
        now = int(time.time())
        models = [{"id": name, "object": "model", "created": now, "owned_by": runner}
                  for name, runner in self.server.routes.owners().items()]
        self._send_json(200, {"object": "list", "data": models})

    def _post(self) -> None:
        path = self.path.split("?")[0]
        if path not in FORWARDED:
            raise _Refused(404, f"no endpoint POST {self.path[:100]}")
        body = self._read_body()
        try:
            request = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise _Refused(400, f"the body is not JSON: {exc}") from None
        model = request.get("model") if isinstance(request, dict) else None
        if not isinstance(model, str) or not model:
            raise _Refused(400, "give the model to use: \"model\" is required", "model")
        route = self.server.routes.get(model)
        if route is None:
            known = ", ".join(self.server.routes.names()) or "none loaded"
            raise _Refused(404, f"no model {model[:100]!r} here (models: {known})", "model",
                           "model_not_found")
        self._forward(route.url + path, route.token, body, model)

    def _read_body(self) -> bytes:
        raw = self.headers.get("Content-Length")
        if raw is None:
            raise _Refused(411, "a Content-Length is required")
        try:
            length = int(raw)
        except ValueError:
            raise _Refused(400, f"bad Content-Length {raw[:20]!r}") from None
        if length < 0 or length > MAX_BODY_BYTES:
            raise _Refused(413, f"body of {length} bytes is over the {MAX_BODY_BYTES}-byte limit")
        body = self.rfile.read(length)
        if len(body) != length:
            raise _Refused(400, "the body ended early")
        return body

    def _forward(self, url: str, token: str, body: bytes, model: str) -> None:
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        started = False  # once the status line is out, an error can only end the stream
        try:
            with self.server.upstream.stream("POST", url, content=body, headers=headers) as up:
                started = True
                self.send_response(up.status_code)
                for name in ("Content-Type", "Cache-Control"):
                    if name in up.headers:
                        self.send_header(name, up.headers[name])
                self.send_header("Connection", "close")  # the body ends when the stream does
                self.end_headers()
                self.close_connection = True
                for chunk in up.iter_raw():
                    self.wfile.write(chunk)
                    self.wfile.flush()
        except httpx2.HTTPError as exc:
            if started:  # the answer had begun: nothing valid can follow
                print(f"router: {model!r} stream broke: {exc}", file=sys.stderr, flush=True)
                return
            raise _Refused(502, f"the runner of {model!r} did not answer ({type(exc).__name__}); "
                                "is it still loaded? (%mlx ps)", "model") from None

    def _send_json(self, status: int, payload: Any) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

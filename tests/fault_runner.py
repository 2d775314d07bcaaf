"""A DELIBERATELY MISBEHAVING runner, for faults the real runner cannot be made to show.

Never used outside tests. It speaks just enough of ``mlx_notebook.protocol`` (stdlib
HTTP, token check, handshake, status, NDJSON completion, cancel, shutdown) and no
MLX at all. Faults are switched by environment variables:

=========================  ==============================================================
``FAULT_HANDSHAKE``        ``garbage``: print a non-handshake line first; ``exit``: write an
                           error to stderr and exit 3 before the handshake; ``silent``: never
                           print one
``FAULT_LOAD``             ``slow:N``: load in N s with moving progress; ``stall:P``: stop
                           at P% forever; ``error``: report state=error; ``crash``: print a
                           traceback and exit 1 while loading
``FAULT_STREAM``           ``garbage``: a non-JSON line mid-stream; ``sigkill:N``: SIGKILL
                           itself after N chunks; ``error``: an ErrorEvent after 2 chunks;
                           ``nodone``: end the stream without a done event; ``endless``: keep
                           sending chunks until cancelled; ``stall:N``: N chunks, then
                           silence on an open connection (the HTTP thread lives, as with
                           a hung worker)
``FAULT_STDERR``           text written to stderr (``\\n`` separated) right after the handshake
``FAULT_IGNORE_SHUTDOWN``  ``1``: /v1/shutdown and stdin EOF do nothing
``FAULT_IGNORE_SIGTERM``   ``1``: SIGTERM is ignored (so only SIGKILL works)
``FAULT_PROTOCOL``         ``N``: report protocol version N in the status
=========================  ==============================================================
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from mlx_notebook import protocol

STATE: dict = {"state": "loading", "progress": 0.0, "message": "starting", "error": None}
CANCELLED: set[str] = set()


def _load(spec: str) -> None:
    mode = os.environ.get("FAULT_LOAD", "")
    if mode.startswith("slow:"):
        seconds = float(mode.split(":", 1)[1])
        steps = 10
        for i in range(steps):
            STATE.update(progress=100.0 * i / steps, message=f"loading step {i}")
            time.sleep(seconds / steps)
    elif mode.startswith("stall:"):
        STATE.update(progress=float(mode.split(":", 1)[1]), message="stalled")
        return
    elif mode == "error":
        STATE.update(state="error", error=f"cannot load {spec!r}: fault injected")
        sys.stderr.write(f"error: cannot load {spec!r}: fault injected\n")
        return
    elif mode == "crash":
        sys.stderr.write("Traceback (most recent call last):\n  File \"x.py\", line 1\n"
                         "RuntimeError: [METAL] Command buffer execution failed: Insufficient Memory\n")
        sys.stderr.flush()
        os._exit(1)
    STATE.update(state="ready", progress=100.0, message="ready")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def _json(self, code: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _authorized(self) -> bool:
        if self.headers.get("Authorization") != f"Bearer {os.environ.get(protocol.TOKEN_ENV)}":
            self._json(401, {"error": "bad token"})
            return False
        return True

    def _body(self) -> dict:
        length = int(self.headers.get("Content-Length") or 0)
        return json.loads(self.rfile.read(length) or b"{}")

    def do_GET(self) -> None:
        if not self._authorized():
            return
        status = protocol.Status(
            state=STATE["state"], progress=STATE["progress"], pid=os.getpid(),
            progress_message=STATE["message"], model=SPEC, error=STATE["error"],
            context_length=2048,
            protocol=int(os.environ.get("FAULT_PROTOCOL", protocol.PROTOCOL_VERSION)))
        self._json(200, status.to_json())

    def do_POST(self) -> None:
        if not self._authorized():
            return
        body = self._body()
        if self.path == "/v1/shutdown":
            self._json(200, {"ok": True})
            if os.environ.get("FAULT_IGNORE_SHUTDOWN") != "1":
                threading.Timer(0.05, lambda: os._exit(0)).start()
        elif self.path == "/v1/cancel":
            CANCELLED.add(body["request_id"])
            self._json(200, {"cancelled": True})
        elif self.path == "/v1/tokenize":
            text = body.get("text") or ""
            self._json(200, {"tokens": [ord(c) for c in text], "pieces": list(text), "text": text})
        elif self.path == "/v1/detokenize":
            self._json(200, {"text": "".join(chr(t) for t in body["tokens"])})
        elif self.path == "/v1/completion":
            self._stream(body.get("request_id") or "")
        else:
            self._json(404, {"error": f"unknown path {self.path}"})

    def _stream(self, request_id: str) -> None:
        mode = os.environ.get("FAULT_STREAM", "")
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Connection", "close")
        self.end_headers()
        count = 0
        limit = 10_000 if mode == "endless" else 5
        reason = "length"
        while count < limit:
            if request_id in CANCELLED:
                reason = "cancel"
                break
            if mode.startswith("sigkill:") and count == int(mode.split(":")[1]):
                os.kill(os.getpid(), signal.SIGKILL)
            if mode == "garbage" and count == 2:
                self.wfile.write(b"this is not json\n")
                self.wfile.flush()
                return
            if mode.startswith("stall:") and count == int(mode.split(":")[1]):
                while request_id not in CANCELLED:
                    time.sleep(0.05)
                return
            if mode == "error" and count == 2:
                self.wfile.write(protocol.encode_event(protocol.ErrorEvent("fault: boom", request_id)))
                return
            try:
                self.wfile.write(protocol.encode_event(protocol.ChunkEvent(content=f"w{count} ")))
                self.wfile.flush()
            except OSError:
                return  # the client closed the stream: that cancels
            count += 1
            time.sleep(0.05)
        if mode == "nodone":
            return
        self.wfile.write(protocol.encode_event(protocol.DoneEvent(
            done_reason=reason, completion_tokens=count, request_id=request_id)))


def _watch_stdin() -> None:
    sys.stdin.buffer.read()
    if os.environ.get("FAULT_IGNORE_SHUTDOWN") != "1":
        os._exit(0)


def main() -> None:
    global SPEC
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--context", type=int)
    parser.add_argument("--parent-pid", type=int)
    args = parser.parse_args()
    SPEC = args.model
    if os.environ.get("FAULT_IGNORE_SIGTERM") == "1":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    handshake = os.environ.get("FAULT_HANDSHAKE", "")
    if handshake == "exit":
        sys.stderr.write("error: fault runner refuses to start\n")
        sys.exit(3)
    if handshake == "garbage":
        print("Hello from a stray print()", flush=True)
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    server.daemon_threads = True
    if handshake != "silent":
        print(protocol.Handshake(port=server.server_address[1], pid=os.getpid(),
                                 protocol=protocol.PROTOCOL_VERSION).to_line(), flush=True)
    for line in os.environ.get("FAULT_STDERR", "").split("\\n"):
        if line:
            sys.stderr.write(line + "\n")
    sys.stderr.flush()
    threading.Thread(target=_watch_stdin, daemon=True).start()
    threading.Thread(target=_load, args=(args.model,), daemon=True).start()
    server.serve_forever()


SPEC = ""

if __name__ == "__main__":
    main()

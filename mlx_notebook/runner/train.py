"""``python -m mlx_notebook.runner.train --model SPEC --data DIR --adapter-path DIR``: a training runner.

Started by the kernel like a serving runner (own session, token by environment,
handshake line with its port, exits when the parent dies or stdin closes, OpenBLAS
preloaded by the same re-exec), it trains once with :class:`~.trainer.Trainer`
and serves its progress over loopback HTTP (``train_protocol``) until it is told
to exit. ``DIR`` holds ``train.jsonl`` and maybe ``valid.jsonl`` (mlx-lm's layout).
"""

from __future__ import annotations

import argparse
import hmac
import json
import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

from ..protocol import ENDPOINTS, PROTOCOL_VERSION, TOKEN_ENV, Handshake
from ..train_protocol import TRAIN_ENDPOINTS, TrainConfig, TrainEvent
from .fastblas import reexec_with_openblas

MODULE = "mlx_notebook.runner.train"
EXIT_USAGE = 64
KEEPALIVE_SECONDS = 2.0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"python -m {MODULE}",
                                description="Fine-tune one model with mlx-lm's tuner.")
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True, help="folder with train.jsonl (and valid.jsonl)")
    p.add_argument("--adapter-path", required=True)
    p.add_argument("--config", default="{}", help="TrainConfig as JSON")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--context", type=int, default=None, help="(ignored; as the serving runner)")
    p.add_argument("--parent-pid", type=int, default=None)
    p.add_argument("--no-stdin-watch", action="store_true")
    p.add_argument("--no-openblas", action="store_true")
    return p


class _Handler(BaseHTTPRequestHandler):
    server: _TrainServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib's name
        pass

    def _authorized(self) -> bool:
        given = self.headers.get("Authorization", "").encode()
        if hmac.compare_digest(given, b"Bearer " + self.server.token.encode()):
            return True
        self._json(401, {"error": "missing or wrong bearer token"})
        return False

    def _json(self, code: int, payload: Any) -> None:
        body = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 - stdlib's name
        if not self._authorized():
            return
        url = urlparse(self.path)
        if url.path == ENDPOINTS["status"][1]:
            self._json(200, self.server.status())
        elif url.path == TRAIN_ENDPOINTS["events"][1]:
            try:
                since = max(int(parse_qs(url.query).get("since", ["0"])[0]), 0)
            except ValueError:
                self._json(400, {"error": "since must be an integer", "field": "since"})
                return
            self._events(since)
        else:
            self._json(404, {"error": f"no endpoint {url.path}"})

    def do_POST(self) -> None:  # noqa: N802
        if not self._authorized():
            return
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(min(length, 1 << 16))
        path = urlparse(self.path).path
        trainer = self.server.trainer
        if path == TRAIN_ENDPOINTS["stop"][1]:
            trainer.stop_requested.set()
            self._json(200, {"stopping": trainer.state in ("loading", "training"),
                             "iteration": trainer.iteration})
        elif path == ENDPOINTS["shutdown"][1]:
            self._json(200, {"ok": True})
            self.server.stop("shutdown requested")
        else:
            self._json(404, {"error": f"no endpoint {path}"})

    def _events(self, since: int) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        trainer = self.server.trainer
        try:
            while True:
                batch = trainer.wait_events(since, KEEPALIVE_SECONDS)
                if not batch:
                    batch = [TrainEvent("keepalive", iteration=trainer.iteration)]
                else:
                    since += len(batch)
                for event in batch:
                    self.wfile.write((json.dumps(event.to_json()) + "\n").encode())
                self.wfile.flush()
                if any(e.final for e in batch):
                    return
        except (BrokenPipeError, ConnectionResetError):
            return


class _TrainServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], trainer: Any, token: str) -> None:
        super().__init__(address, _Handler)
        self.trainer, self.token = trainer, token
        self._exit_code = 0

    def status(self) -> dict[str, Any]:
        import mlx.core as mx
        import psutil

        t = self.trainer
        loaded = t.loaded
        return {
            "state": t.state, "progress": t.progress, "pid": os.getpid(),
            "protocol": PROTOCOL_VERSION,
            "progress_message": (f"iteration {t.iteration}/{t.config.iters}"
                                 + (f", loss {t.last_loss:.3f}" if t.last_loss is not None else "")
                                 if t.state in ("training", "ready") else t.message),
            "model": f"{loaded.name if loaded else t.spec} + {t.config.fine_tune_type} (training)",
            "source": loaded.source if loaded else "",
            "weights_format": loaded.weights_format if loaded else "",
            "context_length": loaded.context_length if loaded else 0,
            "memory": {"active": mx.get_active_memory(), "peak": mx.get_peak_memory(),
                       "cache": mx.get_cache_memory(), "rss": psutil.Process().memory_info().rss,
                       "weights": loaded.weight_bytes if loaded else 0},
            "device": mx.default_device().type.name.lower(),
            "error": t.error,
        }

    def stop(self, reason: str, code: int = 0) -> None:
        self.trainer.stop_requested.set()
        self._exit_code = self._exit_code or code
        threading.Thread(target=self.shutdown, daemon=True).start()
        # Never hang on the way out: a stuck MLX call must not keep an orphan alive.
        threading.Timer(3.0, lambda: os._exit(self._exit_code or 1)).start()


def main(argv: list[str] | None = None) -> int:
    raw_argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(raw_argv)
    if not args.no_openblas:
        reexec_with_openblas(raw_argv, module=MODULE)
    token = os.environ.get(TOKEN_ENV)
    if not token:
        print(f"mlx_notebook training runner: no token: set {TOKEN_ENV}", file=sys.stderr,
              flush=True)
        return EXIT_USAGE
    try:
        config = TrainConfig.from_json(json.loads(args.config))
    except (ValueError, TypeError) as exc:
        print(f"mlx_notebook training runner: bad --config: {exc}", file=sys.stderr, flush=True)
        return EXIT_USAGE

    from .trainer import Trainer
    from .watch import watch_parent

    trainer = Trainer(args.model, Path(args.data), Path(args.adapter_path), config,
                      dtype=args.dtype)
    server = _TrainServer((args.host, args.port), trainer, token)
    host, port = server.server_address[:2]
    print(Handshake(port=port, pid=os.getpid(), protocol=PROTOCOL_VERSION, host=str(host))
          .to_line(), flush=True)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda signum, _frame: server.stop(signal.Signals(signum).name))
    watch_parent(lambda reason: server.stop(reason), parent_pid=args.parent_pid,
                 watch_stdin=not args.no_stdin_watch)
    sys.stdout = sys.stderr = _Quiet(sys.stderr)  # mlx-lm's console UI: errors only
    worker = threading.Thread(target=trainer.run, name="trainer", daemon=True)
    worker.start()
    server.serve_forever(poll_interval=0.1)
    server.server_close()
    if worker.is_alive():  # a stop ends train() after its step, which saves the adapter
        worker.join(timeout=2.0)
    sys.__stderr__.flush()  # type: ignore[union-attr]
    time.sleep(0.05)
    os._exit(server._exit_code)


class _Quiet:
    """A stream that drops mlx-lm's progress UI but keeps lines that look like errors."""

    def __init__(self, real: Any) -> None:
        self.real = real

    def write(self, text: str) -> int:
        if "error" in text.lower() or "Traceback" in text:
            self.real.write(text)
        return len(text)

    def flush(self) -> None:
        self.real.flush()

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return int(self.real.fileno())


if __name__ == "__main__":
    sys.exit(main())

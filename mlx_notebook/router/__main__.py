"""``python -m mlx_notebook.router --port N``: the router process (see the package docstring).

Started by the kernel (``control/router.py``) like a runner: its token by
environment, a handshake line with its port on stdout, then routing tables as
JSON lines on stdin; stdin's end (the kernel went) or a signal ends it.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Callable

from ..protocol import PROTOCOL_VERSION, TOKEN_ENV, Handshake
from ..runner.watch import watch_parent
from .proxy import RouterServer
from .routes import RouteTable, decode_routes

EXIT_USAGE = 64


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mlx_notebook.router",
                                description="One OpenAI base URL for several runners.")
    p.add_argument("--host", default="127.0.0.1", help="loopback only (the default)")
    p.add_argument("--port", type=int, default=0, help="port (default 0: any free port)")
    p.add_argument("--parent-pid", type=int, default=None)
    args = p.parse_args(argv)
    token = os.environ.get(TOKEN_ENV)
    if not token:
        print(f"mlx_notebook router: no token: set {TOKEN_ENV}", file=sys.stderr, flush=True)
        return EXIT_USAGE
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print("mlx_notebook router: it serves loopback only", file=sys.stderr, flush=True)
        return EXIT_USAGE
    routes = RouteTable()
    try:
        server = RouterServer((args.host, args.port), token, routes)
    except OSError as exc:
        print(f"mlx_notebook router: cannot listen on {args.host}:{args.port}: {exc.strerror}",
              file=sys.stderr, flush=True)
        return EXIT_USAGE
    host, port = server.server_address[:2]
    print(Handshake(port=port, pid=os.getpid(), protocol=PROTOCOL_VERSION, host=str(host))
          .to_line(), flush=True)

    def stop(_reason: str) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda signum, _frame: stop(signal.Signals(signum).name))
    threading.Thread(target=_read_tables, args=(routes, stop), daemon=True,
                     name="routes").start()
    watch_parent(stop, parent_pid=args.parent_pid, watch_stdin=False)  # stdin is ours
    server.serve_forever(poll_interval=0.1)
    server.server_close()
    os._exit(0)


def _read_tables(routes: RouteTable, stop: Callable[[str], None]) -> None:
    """Each stdin line replaces the table; EOF means the kernel is gone."""
    for line in sys.stdin.buffer:
        try:
            routes.replace(decode_routes(line))
        except (ValueError, KeyError, TypeError) as exc:
            print(f"mlx_notebook router: ignored a bad routes line: {exc}", file=sys.stderr,
                  flush=True)
    stop("stdin closed")


if __name__ == "__main__":
    sys.exit(main())

"""The kernel's side of the router process (``mlx_notebook/router``): start it, keep its table.

One router per manager at most. It is told the routing table at start and again
whenever a model loads or goes (a manager listener), over its stdin; it exits
with the kernel (stdin closes), on :meth:`Router.stop`, or with the manager.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import sys
import threading
import time
from typing import TYPE_CHECKING

from .. import protocol
from ..errors import MLXNotebookError, RunnerStartError
from ..router.routes import Route, encode_routes
from .process import RunnerProcess

if TYPE_CHECKING:
    from .manager import RunnerManager
    from .records import ManagerEvent

__all__ = ["Router", "route_table"]

ROUTER_MODULE = "mlx_notebook.router"
START_TIMEOUT = 30.0


def route_table(manager: RunnerManager) -> dict[str, Route]:
    """Every loaded model by the names it answers to: its kernel name always, its spec when
    no other runner has the same one (``demo`` loaded twice is reached by its names)."""
    conns = []
    for name in manager.names():
        with contextlib.suppress(MLXNotebookError):  # a runner that died is not routed
            conns.append(manager.get(name))
    routes = {c.name: Route(c.name, c.base_url, c.token) for c in conns}
    specs: dict[str, list[str]] = {}
    for c in conns:
        specs.setdefault(c.spec, []).append(c.name)
    for c in conns:
        if len(specs[c.spec]) == 1 and c.spec not in routes:
            routes[c.spec] = Route(c.name, c.base_url, c.token)
    return routes


class Router:
    """A running router: ``base_url`` (ends in ``/v1``) and ``token`` (its API key)."""

    def __init__(self, manager: RunnerManager, port: int = 0) -> None:
        self.manager = manager
        self.token = secrets.token_urlsafe(32)
        env = {**os.environ, protocol.TOKEN_ENV: self.token, "PYTHONUNBUFFERED": "1"}
        here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env["PYTHONPATH"] = os.pathsep.join(p for p in (here, env.get("PYTHONPATH")) if p)
        argv = [sys.executable, "-m", ROUTER_MODULE, "--port", str(port),
                "--parent-pid", str(os.getpid())]
        self.process = RunnerProcess(argv, env, label=f"router (pid ?, port {port or 'any'})")
        handshake = self.process.spawn(START_TIMEOUT)
        self.port = handshake.port
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self._lock = threading.Lock()
        self.push()
        self._unsubscribe = manager.subscribe(self._on_event)

    @property
    def alive(self) -> bool:
        return not self.process.has_exited

    def push(self) -> list[str]:
        """Send the current table; returns the model names it routes."""
        routes = route_table(self.manager)
        with self._lock:
            stdin = self.process.proc.stdin if self.process.proc else None
            if stdin is None:
                raise RunnerStartError("the router is not running")
            try:
                stdin.write(encode_routes(routes))
                stdin.flush()
            except (OSError, ValueError):
                raise RunnerStartError(self.process.exit_message("early")) from None
            self._wait_until_routed(set(routes))
        return sorted(routes)

    def _wait_until_routed(self, names: set[str], timeout: float = 5.0) -> None:
        """The router reads its stdin on a thread of its own: wait until ``/v1/models`` lists
        exactly ``names``, so a request sent next is routed by the new table."""
        import httpx2

        deadline = time.monotonic() + timeout
        headers = {"Authorization": f"Bearer {self.token}"}
        while time.monotonic() < deadline and self.alive:
            with contextlib.suppress(httpx2.HTTPError, ValueError, KeyError, TypeError):
                answer = httpx2.get(self.base_url + "/models", headers=headers, timeout=2.0)
                if {m["id"] for m in answer.json()["data"]} == names:
                    return
            time.sleep(0.01)

    def _on_event(self, event: ManagerEvent, _name: str | None) -> None:
        if event in ("loaded", "unloaded") and self.alive:
            with contextlib.suppress(RunnerStartError):
                self.push()

    def stop(self) -> None:
        self._unsubscribe()
        self.process.stop(2.0)

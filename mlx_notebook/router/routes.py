"""The router's table: model name -> the runner that answers to it. Thread-safe."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass

__all__ = ["Route", "RouteTable", "encode_routes", "decode_routes"]


@dataclass(frozen=True)
class Route:
    """Where requests for one model name go: a runner's base URL (no ``/v1``) and its token."""

    runner: str  # the kernel's name for the runner: several model names may share it
    url: str
    token: str


def encode_routes(routes: dict[str, Route]) -> bytes:
    """One stdin line for the router: the whole table (it replaces the previous one)."""
    table = {name: {"runner": r.runner, "url": r.url, "token": r.token}
             for name, r in routes.items()}
    return (json.dumps({"routes": table}) + "\n").encode()


def decode_routes(line: bytes) -> dict[str, Route]:
    data = json.loads(line)
    table = data["routes"] if isinstance(data, dict) else None
    if not isinstance(table, dict):
        raise ValueError("a routes line is {\"routes\": {name: {runner, url, token}}}")
    return {str(name): Route(str(r["runner"]), str(r["url"]).rstrip("/"), str(r["token"]))
            for name, r in table.items()}


class RouteTable:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._routes: dict[str, Route] = {}

    def replace(self, routes: dict[str, Route]) -> None:
        with self._lock:
            self._routes = dict(routes)

    def get(self, name: str) -> Route | None:
        with self._lock:
            return self._routes.get(name)

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._routes)

    def owners(self) -> dict[str, str]:
        """Model name -> runner name, for ``/v1/models``."""
        with self._lock:
            return {name: r.runner for name, r in sorted(self._routes.items())}

"""The loaded model for other tools: ``mn.serve()`` and ``mn.openai_client()``.

Every runner already speaks OpenAI's API (``/v1/chat/completions``, ``/v1/completions``,
``/v1/models``) behind its own token; nothing new is started here. ``serve`` says
where, and never shows the token (a cell's output is saved with the notebook)::

    info = mn.serve()               # ServeInfo(name='demo', base_url='http://127.0.0.1:50123/v1')
    info.export()                   # OPENAI_BASE_URL / OPENAI_API_KEY for tools in this kernel
    client = mn.openai_client()     # an openai.OpenAI for the default runner
    client.chat.completions.create(model="demo", messages=[{"role": "user", "content": "Hi"}])
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ServeInfo", "serve", "openai_client", "BASE_URL_ENV", "API_KEY_ENV"]

BASE_URL_ENV = "OPENAI_BASE_URL"
API_KEY_ENV = "OPENAI_API_KEY"
ROUTER_NAME = "router"  # ServeInfo.name of mn.serve(port=...)'s answer
OPENAI_MISSING = ("mn.openai_client() needs the openai package: pip install openai "
                  "(or point any OpenAI client at mn.serve().base_url)")


@dataclass(frozen=True)
class ServeInfo:
    """Where a loaded model answers OpenAI's API. ``token`` is the API key: it is kept out
    of ``repr`` and of :meth:`recipe`, so showing this object never saves it in a notebook."""

    name: str  # the kernel's name for the runner; also a model name it answers to
    base_url: str  # ends in /v1, as OpenAI clients expect
    models: tuple[str, ...] = ()  # every name /v1/models lists
    token: str = field(default="", repr=False)

    def recipe(self) -> str:
        """How to reach it, without the token: which environment variables to set."""
        if self.name == ROUTER_NAME:
            what = (f"every loaded model: {self.base_url}  (model= one of "
                    f"{', '.join(self.models) or 'none loaded yet'})")
            here = f"mn.openai_client(port={self.port})"
            again = f"mn.serve(port={self.port})"
        else:
            what = f"{self.name!r}: {self.base_url}  (model={self.name!r})"
            here = f"mn.openai_client({self.name!r})"
            again = f"mn.serve({self.name!r})"
        return (f"OpenAI-compatible API of {what}\n"
                f"In this kernel: client = {here}, or {again}.export() to set "
                f"${BASE_URL_ENV} and ${API_KEY_ENV} for tools that read them.\n"
                f"Elsewhere: set {BASE_URL_ENV}={self.base_url} and {API_KEY_ENV} to the token "
                f"({again}.token; not shown here: cell output is saved with the notebook).")

    @property
    def port(self) -> int:
        return int(self.base_url.rsplit(":", 1)[1].split("/", 1)[0])

    def __str__(self) -> str:
        return self.recipe()

    def export(self, environ: Any = None) -> None:
        """Set ``OPENAI_BASE_URL`` and ``OPENAI_API_KEY`` in this process (for tools in it)."""
        env = os.environ if environ is None else environ
        env[BASE_URL_ENV] = self.base_url
        env[API_KEY_ENV] = self.token


def serve(model: str | None = None, *, port: int | None = None,
          export: bool = False) -> ServeInfo:
    """Where the runner of ``model`` (default: the current one) answers OpenAI's API.

    Nothing starts: every runner serves it, behind its token, on loopback unless it was
    started otherwise. ``port=N`` instead gives one base URL for every loaded model: a
    small router process on that loopback port (0: any free one) that forwards each
    request to the runner its ``model`` names, and follows loads and unloads. It has a
    token of its own and stops with the kernel. ``export=True`` also sets
    ``OPENAI_BASE_URL`` / ``OPENAI_API_KEY`` in this process.
    """
    from .control.manager import get_manager

    if port is not None:
        return _serve_router(model, port, export)
    conn = get_manager().get(model)
    status = conn.status()
    names = tuple(dict.fromkeys(n for n in (conn.name, *status.names, conn.spec, status.model)
                                if n))
    info = ServeInfo(name=conn.name, base_url=conn.base_url + "/v1", models=names,
                     token=conn.token)
    if export:
        info.export()
    return info


def _serve_router(model: str | None, port: int, export: bool) -> ServeInfo:
    from .control.manager import get_manager
    from .control.router import Router
    from .errors import InvalidArgumentError

    if model is not None:
        raise InvalidArgumentError("the router serves every loaded model: give port or a "
                                   "model, not both", field="port")
    if not 0 <= port <= 65535:
        raise InvalidArgumentError(f"port must be between 0 and 65535, got {port}",
                                   field="port")
    manager = get_manager()
    router = manager.router
    if router is not None and (not router.alive or (port and router.port != port)):
        router.stop()  # gone, or asked for elsewhere: start it again
        router = manager.router = None
    if router is None:
        router = manager.router = Router(manager, port)
    info = ServeInfo(name=ROUTER_NAME, base_url=router.base_url, models=tuple(router.push()),
                     token=router.token)
    if export:
        info.export()
    return info


def openai_client(model: str | None = None, *, port: int | None = None, **kwargs: Any) -> Any:
    """An ``openai.OpenAI`` pointed at the runner of ``model`` (default: the current one),
    or with ``port`` at the router of every loaded model (``mn.serve(port=...)``).

    ``kwargs`` go to ``openai.OpenAI`` (``timeout``, ``max_retries``...). Its requests join
    the same continuous batch as the notebook's cells. Needs ``pip install openai``.
    """
    try:
        import openai
    except ImportError as exc:
        raise ImportError(OPENAI_MISSING) from exc
    info = serve(model, port=port)
    return openai.OpenAI(base_url=info.base_url, api_key=info.token, **kwargs)

"""mlx_notebook: local LLMs in Jupyter.

In a notebook::

    %load_ext mlx_notebook
    %mlx load demo

    %%mlx generate --max-tokens 20
    What is the capital of France?

From Python (the same operations as the magics)::

    >>> import mlx_notebook as mn
    >>> mn.load("demo")
    >>> print(mn.generate("What is the capital of France?", max_tokens=20).text)

Importing this package is cheap: the API, the runner manager and httpx load on
first use, and MLX is only ever imported by the runner subprocesses.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import views as _views

if TYPE_CHECKING:
    from .api import (
        Generation,
        GenerationResult,
        ServeInfo,
        TrainResult,
        attention,
        cache_prompt,
        chat,
        choose,
        connect,
        conversation,
        free_memory,
        fuse,
        generate,
        lens,
        load,
        load_prompt_cache,
        map,
        openai_client,
        prompt_caches,
        ps,
        remove_prompt_cache,
        reset_chat,
        score,
        serve,
        status,
        stream,
        tokenize,
        train,
        unload,
        use,
    )

__all__ = [
    "Generation",
    "GenerationResult",
    "ServeInfo",
    "TrainResult",
    "attention",
    "cache_prompt",
    "chat",
    "choose",
    "connect",
    "conversation",
    "free_memory",
    "fuse",
    "generate",
    "lens",
    "load",
    "load_ipython_extension",
    "load_prompt_cache",
    "map",
    "openai_client",
    "prompt_caches",
    "ps",
    "remove_prompt_cache",
    "reset_chat",
    "score",
    "serve",
    "status",
    "stream",
    "tokenize",
    "train",
    "unload",
    "unload_ipython_extension",
    "use",
]

_API = {name for name in __all__ if not name.endswith("_ipython_extension")}


def __getattr__(name: str) -> Any:
    if name in _API:
        from . import api

        value = getattr(api, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'mlx_notebook' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


def _stream_view(format: str, rate: float, footer: bool) -> _views.StreamView:  # noqa: A002
    from .notebook.display import StreamView

    return StreamView(format=format, rate=rate, footer=footer)


def _load_view(label: str) -> _views.LoadView:
    from .notebook.widgets import LoadProgress

    return LoadProgress(label)


# The package root wires the wings together: what ``show=True`` in the API draws
# with comes from the notebook wing, imported only when something is first shown.
def _inside_html(result: object) -> str | None:
    from .notebook.teaching.inside_views import inside_html

    return inside_html(result)


def _map_view(progress: Any) -> _views.MapView:
    from .notebook.map_view import MapProgressView

    return MapProgressView(progress)


def _train_view(label: str) -> _views.TrainView:
    from .notebook.train_view import TrainProgressView

    return TrainProgressView(label)


def _tool_call_view(name: str, arguments: dict, result: str, error: bool) -> None:
    from .notebook.display import show_tool_call

    show_tool_call(name, arguments, result, error)


_views.register(_views.Views(stream=_stream_view, load=_load_view, html=_inside_html,
                             map_progress=_map_view, train=_train_view,
                             tool_call=_tool_call_view))


def load_ipython_extension(shell: Any) -> None:
    """``%load_ext mlx_notebook``: register ``%mlx``/``%%mlx`` and the ``MLXConfig`` defaults."""
    from .notebook.magics import load_ipython_extension as load

    load(shell)


def unload_ipython_extension(shell: Any) -> None:
    """``%unload_ext mlx_notebook``: remove the magics (loaded models keep running)."""
    from .notebook.magics import unload_ipython_extension as unload

    unload(shell)

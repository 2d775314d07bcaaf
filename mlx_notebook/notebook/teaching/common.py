"""Shared plumbing of the teaching tools: which runner, which request, how to show.

Kept out of :mod:`mlx_notebook.api` so the tools can take a RunnerClient directly
(tests, scripts) as well as a model name the manager knows.
"""

from __future__ import annotations

import random
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ...config import get_config
from ...protocol import ChatMessage, CompletionRequest, SamplingOptions

if TYPE_CHECKING:
    from ...control.client import RunnerClient



def client_for(model: str | RunnerClient | None) -> RunnerClient:
    """A RunnerClient as is; a name (or None: the default model) through the manager."""
    if model is not None and not isinstance(model, str):
        return model
    from ...control.manager import get_manager

    return get_manager().get(model)


def make_options(*, seed_if_sampling: bool = True, **overrides: Any) -> SamplingOptions:
    """Config defaults plus ``overrides`` (None ignored); a sampled run always gets a seed."""
    stop = overrides.get("stop")
    if isinstance(stop, str):
        overrides["stop"] = (stop,)
    opts = get_config().options(**overrides)
    if seed_if_sampling and opts.seed is None and opts.temperature > 0:
        # Pick the seed here so the record says how to reproduce the answer.
        opts = SamplingOptions(**{**opts.__dict__, "seed": random.randrange(2**31)})
    return opts


def make_messages(prompt: str, system: str | None = None) -> tuple[ChatMessage, ...]:
    """The chat messages a plain prompt becomes (system prompt from config if not given)."""
    sys_text = get_config().system if system is None else system
    head = (ChatMessage("system", sys_text),) if sys_text else ()
    return (*head, ChatMessage("user", prompt))


def make_request(prompt: str, options: SamplingOptions, *, system: str | None = None,
                 raw: bool = False,
                 messages: Sequence[ChatMessage] | None = None) -> CompletionRequest:
    """A raw prompt as is, or chat messages for the runner to template."""
    if messages is not None:
        return CompletionRequest(messages=tuple(messages), options=options)
    if raw:
        if system:
            raise ValueError("system has no effect with raw=True (the prompt is sent as is)")
        return CompletionRequest(prompt=prompt, options=options)
    return CompletionRequest(messages=make_messages(prompt, system), options=options)


def in_kernel() -> bool:
    """True inside a Jupyter kernel (rich output and widgets can be shown)."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return shell is not None and getattr(shell, "kernel", None) is not None

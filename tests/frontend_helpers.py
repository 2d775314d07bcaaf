"""Helpers for the front-end tests: a fresh IPython shell, and one entry point per road in.

Every behaviour test runs twice, through the ``%mlx`` magic and through the plain
Python function (the ipytest pattern), with :class:`Entry` hiding the difference.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterator
from typing import Any

import pytest
from IPython.core.interactiveshell import InteractiveShell
from traitlets.config import Config

import mlx_notebook as mn
from mlx_notebook.api import GenerationResult
from mlx_notebook.config import get_config


@pytest.fixture
def shell() -> Iterator[InteractiveShell]:
    """A fresh shell with the extension loaded; display() goes to it."""
    InteractiveShell.clear_instance()
    cfg = Config()
    cfg.HistoryManager.enabled = False
    sh = InteractiveShell.instance(config=cfg)
    sh.run_line_magic("load_ext", "mlx_notebook")
    try:
        yield sh
    finally:
        get_config().reset()
        mn.reset_chat(all=True)
        sh.run_line_magic("unload_ext", "mlx_notebook")
        InteractiveShell.clear_instance()


_FLAGS = {"max_tokens": "--max-tokens", "temperature": "--temp", "top_p": "--top-p",
          "top_k": "--top-k", "min_p": "--min-p", "seed": "--seed", "system": "--system",
          "model": "-m", "format": "--format"}


def _flags(kwargs: dict[str, Any]) -> str:
    parts: list[str] = []
    for key, value in kwargs.items():
        if key in ("raw", "drop_oldest"):
            parts += [f"--{key.replace('_', '-')}"] if value else []
        elif key == "stop":
            parts += ["--stop", *value]
        else:
            parts += [_FLAGS[key], str(value)]
    return shlex.join(parts)


class Entry:
    """The same operation through the magic (``magic``) or the Python API (``python``)."""

    def __init__(self, kind: str, shell: InteractiveShell) -> None:
        self.kind = kind
        self.shell = shell

    def __repr__(self) -> str:
        return self.kind

    def generate(self, prompt: str, **kwargs: Any) -> GenerationResult:
        if self.kind == "magic":
            self.shell.run_cell_magic("mlx", f"generate -o _result {_flags(kwargs)}", prompt)
            return self.shell.user_ns.pop("_result")
        return mn.generate(prompt, show=True, **kwargs)

    def chat(self, message: str, **kwargs: Any) -> GenerationResult:
        if self.kind == "magic":
            self.shell.run_cell_magic("mlx", f"chat -o _result {_flags(kwargs)}", message)
            return self.shell.user_ns.pop("_result")
        return mn.chat(message, show=True, **kwargs)

    def reset_chat(self, model: str | None = None) -> None:
        if self.kind == "magic":
            self.shell.run_line_magic("mlx", "chat --reset" + (f" -m {model}" if model else ""))
        else:
            mn.reset_chat(model)

    def load(self, spec: str, name: str | None = None) -> None:
        if self.kind == "magic":
            self.shell.run_line_magic("mlx", f"load {shlex.quote(spec)}"
                                      + (f" --as {name}" if name else ""))
        else:
            mn.load(spec, name=name, show=True)

    def connect(self, url: str, token_env: str, name: str | None = None) -> None:
        if self.kind == "magic":
            self.shell.run_line_magic("mlx", f"connect {url} --token-env {token_env}"
                                      + (f" --as {name}" if name else ""))
        else:
            mn.connect(url, token_env=token_env, name=name, show=True)

    def unload(self, name: str | None = None) -> None:
        if self.kind == "magic":
            self.shell.run_line_magic("mlx", f"unload {name or ''}")
        else:
            mn.unload(name)

    def use(self, name: str) -> None:
        if self.kind == "magic":
            self.shell.run_line_magic("mlx", f"use {name}")
        else:
            mn.use(name)

    def set_config(self, **values: Any) -> None:
        if self.kind == "magic":
            self.shell.run_line_magic(
                "mlx", "config " + " ".join(f"{k}={v}" for k, v in values.items()))
        else:
            for key, value in values.items():
                setattr(get_config(), key, value)


@pytest.fixture(params=["magic", "python"])
def entry(request: pytest.FixtureRequest, shell: InteractiveShell) -> Entry:
    return Entry(request.param, shell)

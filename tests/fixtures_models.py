"""Fixtures: model folders for tests (owned by the models area)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.tiny_model import make_tiny_model


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random llama folder (MLX layout, real tokenizer), the same every session."""
    return make_tiny_model(tmp_path_factory.mktemp("tiny-model") / "tiny")


@pytest.fixture(scope="session")
def demo_model_ready() -> Path:
    """The demo model converted in the session's cache (downloads/converts it if needed)."""
    from mlx_notebook.runner.models import prefetch

    return prefetch("demo")

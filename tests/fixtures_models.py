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


@pytest.fixture(scope="session")
def tiny_thinker_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny llama trained to think and call ``get_weather`` (tests/tiny_thinker.py),
    built once per session (~30 s); ``MLX_NOTEBOOK_TINY_THINKER`` names a folder made
    earlier (``python -m tests.tiny_thinker PATH``) to skip the training."""
    import os

    from tests.tiny_thinker import build_tiny_thinker

    prebuilt = os.environ.get("MLX_NOTEBOOK_TINY_THINKER")
    if prebuilt:
        return Path(prebuilt)
    return build_tiny_thinker(tmp_path_factory.mktemp("tiny-thinker") / "thinker")


@pytest.fixture(scope="session")
def random_draft_dir(demo_model_ready: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random llama with the demo's tokenizer: a draft the demo rejects (~0%)."""
    from tests.tiny_model import make_random_draft

    return make_random_draft(demo_model_ready, tmp_path_factory.mktemp("draft") / "random-draft")

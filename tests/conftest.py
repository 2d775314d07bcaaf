"""Shared test set-up: no hub access, and fixtures from one plugin module per area."""

from __future__ import annotations

import os

# Nothing may reach a model hub at test time.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

pytest_plugins = [
    "tests.fixtures_models",  # tiny random model folder, demo model path
    "tests.fixtures_runner",  # running runners shared per session
]


def pytest_unconfigure(config) -> None:  # noqa: ANN001 - pytest hook
    """IPython's exit hook runs a full gc.collect() over everything the session made,
    which took 5-25 s of doing nothing; every test is over by now, so skip the work."""
    import gc

    gc.freeze()

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

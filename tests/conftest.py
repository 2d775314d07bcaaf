"""Shared test set-up: no hub access, a session cache, and fixtures from one plugin per area."""

from __future__ import annotations

import os
import shutil
import tempfile

from tests.session_cache import USER_CACHE_ENV, seed_session_cache, user_cache

# Nothing may reach a model hub at test time.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# No test touches the user's cache or runner registry: the whole session (and every
# runner and kernel it starts) uses a temporary one, with the demo model linked into it.
os.environ[USER_CACHE_ENV] = str(user_cache())
_SESSION_CACHE = tempfile.mkdtemp(prefix="mlx-notebook-test-cache-")
os.environ["MLX_NOTEBOOK_CACHE"] = _SESSION_CACHE
seed_session_cache()

pytest_plugins = [
    "tests.fixtures_models",  # tiny random model folder, demo model path
    "tests.fixtures_runner",  # running runners shared per session
]


def pytest_unconfigure(config) -> None:  # noqa: ANN001 - pytest hook
    """IPython's exit hook runs a full gc.collect() over everything the session made,
    which took 5-25 s of doing nothing; every test is over by now, so skip the work."""
    import gc

    gc.freeze()
    shutil.rmtree(_SESSION_CACHE, ignore_errors=True)

"""Teaching and prompt-experiment tools: token probabilities, next-token explorer,
side-by-side comparison, prompt preview, and reproducible re-runs.

Every tool talks to a runner through the API (or a runner object you pass as
``model=``); nothing here imports MLX. Submodules are imported on first use, so
``import mlx_notebook.notebook.teaching`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "LogprobResult", "NextTokenExplorer", "PromptPreview", "RunMetadata", "compare",
    "generate_logprobs", "logprobs_html", "metadata_for", "metadata_for_request",
    "preview_prompt", "rerun", "show_preview", "transform_distribution",
]

_WHERE = {
    "LogprobResult": "logprob_view", "generate_logprobs": "logprob_view",
    "logprobs_html": "logprob_view", "NextTokenExplorer": "explorer",
    "transform_distribution": "explorer", "compare": "compare", "PromptPreview": "preview",
    "preview_prompt": "preview", "show_preview": "preview", "RunMetadata": "reproduce",
    "metadata_for": "reproduce", "metadata_for_request": "reproduce", "rerun": "reproduce",
}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)

"""Hugging Face models: the local hub cache first, a download (with progress) only if needed."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

from ..model_files import ModelLoadError, ModelSpec
from .progress import Progress, one_line

__all__ = ["hf_folder"]


def _hub_offline() -> bool:
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE", "").strip().lower()
    return bool(constants.HF_HUB_OFFLINE) or env in ("1", "true", "yes", "on")


def _progress_tqdm(progress: Progress) -> type:
    """A silent tqdm class that forwards huggingface_hub's byte counts to ``progress``."""
    from tqdm.auto import tqdm

    class _Tqdm(tqdm):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs.pop("name", None)
            kwargs["file"] = io.StringIO()
            super().__init__(*args, **kwargs)

        def update(self, n: float | None = 1) -> bool | None:
            shown = super().update(n)
            desc = self.desc or ""
            if self.unit == "B" and self.total and not desc.startswith("Downloading bytes"):
                progress(100.0 * self.n / self.total, f"downloading {self.n / 1e6:.0f} MB")
            return shown

    return _Tqdm


def hf_folder(spec: ModelSpec, progress: Progress) -> Path:
    """The snapshot folder of a hub repo: the local cache first, the hub only if needed."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
    from mlx_lm.utils import DEFAULT_ALLOW_PATTERNS

    kwargs = {"revision": spec.revision, "allow_patterns": DEFAULT_ALLOW_PATTERNS}
    try:
        return Path(snapshot_download(spec.repo, local_files_only=True, **kwargs))
    except (LocalEntryNotFoundError, OSError, ValueError):
        pass
    if _hub_offline():
        raise ModelLoadError(
            f"model {spec.text} is not in the Hugging Face cache and the hub cannot be "
            "reached (offline: HF_HUB_OFFLINE is set)"
        )
    progress(0.0, f"downloading {spec.text}")
    try:
        path = snapshot_download(
            spec.repo, etag_timeout=10, tqdm_class=_progress_tqdm(progress), **kwargs
        )
    except LocalEntryNotFoundError as exc:
        raise ModelLoadError(
            f"model {spec.text} is not in the Hugging Face cache and the hub cannot be reached"
        ) from exc
    except (HfHubHTTPError, OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot download {spec.text}: {one_line(exc)}") from exc
    return Path(path)

"""The magics' ``{name}`` interpolation; it lives in :mod:`mlx_notebook.interpolate`, below the
API, so ``mn.map`` fills ``{column}`` with the same rules."""

from __future__ import annotations

from ..interpolate import MAX_WIDTH, InterpolationError, fields, interpolate

__all__ = ["MAX_WIDTH", "InterpolationError", "fields", "interpolate"]

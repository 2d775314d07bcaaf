"""Byte counts for people: one formatter and one parser, shared by every message and view.

>>> format_bytes(512 * MIB), parse_bytes("1.5GiB")
('512 MiB', 1610612736)
"""

from __future__ import annotations

__all__ = ["GIB", "MIB", "format_bytes", "parse_bytes"]

GIB = 1024**3
MIB = 1024**2


def format_bytes(n: int | float) -> str:
    """``3.2 GiB``, ``512 MiB``, ``900 KiB``, ``0 B``: one decimal above a GiB.

    Below a KiB it counts bytes, so an empty cache reads ``0 B``, not ``0 KiB``.
    """
    n = float(n)
    if abs(n) >= GIB:
        return f"{n / GIB:.1f} GiB"
    if abs(n) >= MIB:
        return f"{n / MIB:.0f} MiB"
    if abs(n) >= 1024:
        return f"{n / 1024:.0f} KiB"
    return f"{n:.0f} B"


def parse_bytes(text: str) -> int:
    """``"512MiB"`` -> 536870912; plain numbers are bytes."""
    text = text.strip().replace(" ", "")
    units = {"kib": 1024, "mib": MIB, "gib": GIB, "kb": 1000, "mb": 1000**2, "gb": 1000**3,
             "k": 1024, "m": MIB, "g": GIB, "b": 1}
    for suffix, factor in units.items():
        if text.lower().endswith(suffix):
            return int(float(text[: -len(suffix)]) * factor)
    return int(float(text))

"""Load-progress callbacks and one-line error summaries, shared by the load path's modules."""

from __future__ import annotations

from collections.abc import Callable

Progress = Callable[[float, str], None]  # (percent 0-100, what is happening)

__all__ = ["Progress", "scaled", "one_line"]


def scaled(progress: Progress | None, lo: float, hi: float) -> Progress:
    """A progress callback mapping 0-100 onto lo-hi of the caller's bar."""

    def report(pct: float, msg: str) -> None:
        if progress is not None:
            progress(lo + (hi - lo) * max(0.0, min(pct, 100.0)) / 100.0, msg)

    return report


def one_line(exc: BaseException) -> str:
    """The first line of an exception's message (libraries raise multi-line ones)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__

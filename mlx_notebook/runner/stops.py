"""Text-level stop strings for a stream: emit text as soon as it cannot start a stop string.

Matching happens on decoded text (not tokens), because one stop string can span
several tokens and a token can hold the end of one word and the start of another.
"""

from __future__ import annotations

from collections.abc import Sequence


class StopStringFilter:
    """Feed text pieces; get back what is safe to emit, and whether a stop string was hit."""

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = tuple(s for s in stops if s)
        self._held = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        """Return the text that can be emitted now; holds back a possible stop-string prefix."""
        if self.stopped:
            return ""
        if not self._stops:
            return text
        buffer = self._held + text
        cut = min((i for i in (buffer.find(s) for s in self._stops) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            self._held = ""
            return buffer[:cut]
        keep = self._longest_partial_suffix(buffer)
        self._held = buffer[len(buffer) - keep:] if keep else ""
        return buffer[: len(buffer) - keep]

    def flush(self) -> str:
        """At the end of generation, whatever was held back is ordinary text."""
        text, self._held = self._held, ""
        return "" if self.stopped else text

    def _longest_partial_suffix(self, buffer: str) -> int:
        best = 0
        for stop in self._stops:
            for length in range(min(len(stop) - 1, len(buffer)), best, -1):
                if buffer.endswith(stop[:length]):
                    best = length
                    break
        return best

"""Showing answers as they stream, and the text renderings (footer, ps table, status, tokens).

>>> view = StreamView(format="markdown")   # doctest: +SKIP
>>> view.start(); view.append("Hello"); view.finish(result)

In a kernel the answer is one display output, updated through its display id at
most ``rate`` times a second whatever the token rate; its final state is an
ordinary ``text/plain`` (or ``text/markdown``) output, so it survives saving and
renders on GitHub. A footer line follows. Without a kernel (terminal IPython, a
script) pieces are printed as they come.

Every text-only view lives here, so ``%mlx status`` in a terminal never imports
ipywidgets (the widgets reuse these lines for their text fallback).
"""

from __future__ import annotations

import html
import sys
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal

from ..errors import MLXNotebookError
from ..protocol import Status
from ..units import format_bytes
from .kv_text import kv_text
from .tokens import tokens_html, tokens_text  # noqa: F401  # the token views, kept importable here

if TYPE_CHECKING:
    from ..control.manager import RunnerInfo
    from ..generation import GenerationResult
    from ..protocol import FreeResponse

Mode = Literal["auto", "display", "print"]
PLACEHOLDER = "…"


def in_kernel() -> bool:
    """True inside a Jupyter kernel (a front end that can show rich output and widgets)."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return shell is not None and getattr(shell, "kernel", None) is not None


class Throttle:
    """Lets an action through at most ``rate`` times a second."""

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = 1.0 / rate
        self.clock = clock
        self._last = float("-inf")

    def ready(self) -> bool:
        now = self.clock()
        if now - self._last >= self.interval:
            self._last = now
            return True
        return False


def _bundle(text: str, fmt: str) -> dict[str, str]:
    if fmt == "markdown":
        return {"text/markdown": text, "text/plain": text}
    return {"text/plain": text}


class StreamView:
    """The output of one streaming answer: start, append pieces, finish with the result."""

    def __init__(self, format: str = "text", rate: float = 20.0, mode: Mode = "auto",  # noqa: A002
                 footer: bool = True, clock: Callable[[], float] = time.monotonic) -> None:
        if format not in ("text", "markdown", "json"):
            raise ValueError(f"format must be 'text', 'markdown' or 'json', got {format!r}")
        self.format = format
        self.mode: Mode = mode if mode != "auto" else ("display" if in_kernel() else "print")
        self.show_footer = footer
        self.throttle = Throttle(rate, clock)
        self.text = ""
        self.updates = 0  # display updates sent while streaming (not counting the final one)
        self._shown: str | None = ""  # the text last sent; None makes the next update go out
        self._handle: Any = None
        self.thinking = ""  # a thinking model's thinking, shown above the answer

    def start(self) -> None:
        if self.mode == "display":
            from IPython.display import display

            self._handle = display(_bundle(PLACEHOLDER, self.format), raw=True, display_id=True)

    def append(self, piece: str) -> None:
        if self.mode == "print" and self.thinking and not self.text:
            sys.stdout.write("\n\n")  # the answer below the thinking
        self.text += piece
        if self.mode == "print":
            sys.stdout.write(piece)
            sys.stdout.flush()
        elif self.throttle.ready():
            self._update(self._render(self.text))
            self.updates += 1

    def think(self, piece: str) -> None:
        """A piece of the model's thinking (notebook/thinking_view.py draws it)."""
        if self.mode == "print":
            sys.stdout.write(("[thinking] " if not self.thinking else "") + piece)
            sys.stdout.flush()
            self.thinking += piece
            return
        self.thinking += piece
        if self.throttle.ready():
            self._update(self.text)
            self.updates += 1

    def tool_call(self, name: str, arguments: dict[str, Any], result: str, error: bool) -> None:
        """A call the model made and what it got, below this answer."""
        from .thinking_view import tool_call_bundle

        bundle = tool_call_bundle(name, arguments, result, error=error)
        if self.mode == "print":
            print(bundle["text/plain"], flush=True)
        else:
            from IPython.display import display

            display(bundle, raw=True)

    def prefill(self, processed: int, total: int) -> None:
        """Until the first piece: how far the runner has read a long prompt."""
        if not self.text and self.mode == "display":
            self._update(f"{PLACEHOLDER} reading the prompt: {processed:,} of {total:,} tokens")

    def _render(self, text: str) -> str:
        """A JSON answer (structured output) is re-indented as it streams."""
        if self.format == "json":
            from ..structured import pretty_json_prefix

            return pretty_json_prefix(text)
        return text

    def _update(self, text: str) -> None:
        if self.thinking:
            from .thinking_view import thinking_bundle

            key = self.thinking + "\0" + text
            if self._handle is not None and key != self._shown:
                self._handle.update(thinking_bundle(self.thinking, text.lstrip(),
                                                    open_=not text.strip() and self._shown is not None), raw=True)
                self._shown = key
            return
        if self._handle is not None and text != self._shown:
            self._handle.update(_bundle(text, self.format), raw=True)
            self._shown = text

    def finish(self, result: GenerationResult, footer: bool = True) -> None:
        """Show the final text (``result.text``) and the footer line."""
        line = footer_line(result) if footer and self.show_footer else ""
        self.thinking = result.thinking or self.thinking
        if self.mode == "print":
            sys.stdout.write("\n")
            if line:
                sys.stdout.write(line + "\n")
            sys.stdout.flush()
            return
        self._shown = None  # always send the final state
        self._update(self._render(result.text))
        if line:
            from IPython.display import display

            display({"text/plain": line,
                     "text/html": f'<small style="opacity:.7">{html.escape(line)}</small>'},
                    raw=True)


def show_tool_call(name: str, arguments: dict[str, Any], result: str, error: bool) -> None:
    """One tool call, collapsible in a kernel, a line in a terminal."""
    StreamView(mode="display" if in_kernel() else "print").tool_call(name, arguments, result,
                                                                     error)


def footer_line(result: GenerationResult) -> str:
    """``12 tokens · prompt 9 · TTFT 0.31 s · 9.8 tok/s · 1.6 s · stop``: the result's own."""
    return result.footer()


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def ps_table(rows: Sequence[RunnerInfo], default: str | None = None) -> str:
    """A text table of runners (``*`` marks the default; a remote one shows its URL)."""
    if not rows:
        return "No models loaded: run %mlx load demo"
    head = ("NAME", "MODEL", "STATE", "MEMORY", "PEAK", "CONTEXT", "PID", "IDLE")
    body = [(("*" if r.name == default else "") + r.name, r.model, r.state,
             format_bytes(r.memory_active), format_bytes(r.memory_peak),
             str(r.context_length or "-"),
             str(r.pid or "-") + (f" ({r.url})" if r.url else ""),  # a remote runner's pid
             _duration(r.idle_seconds))
            for r in rows]
    widths = [max(len(row[i]) for row in (head, *body)) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
                     for row in (head, *body))


def ps_html(rows: Sequence[RunnerInfo], default: str | None = None) -> str | None:
    """The ps table as HTML for a notebook (None with no rows: the text line says it)."""
    if not rows:
        return None
    head = ("name", "model", "state", "memory", "peak", "context", "pid", "idle")
    cells = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in (
            r.name + (" (default)" if r.name == default else ""), r.model, r.state,
            format_bytes(r.memory_active), format_bytes(r.memory_peak),
            str(r.context_length or "-"), str(r.pid or "-") + (f" ({r.url})" if r.url else ""),
            _duration(r.idle_seconds))) + "</tr>"
        for r in rows)
    return ("<table class='mlxnb-ps'><thead><tr>"
            + "".join(f"<th>{h}</th>" for h in head) + f"</tr></thead><tbody>{cells}</tbody></table>")


def show(text: str, html_text: str | None = None) -> None:
    """Display text (and HTML, where a front end can render it)."""
    bundle = {"text/plain": text}
    if html_text is not None:
        bundle["text/html"] = html_text
    if in_kernel():
        from IPython.display import display

        display(bundle, raw=True)
    else:
        print(text)


def free_message(freed: FreeResponse) -> str:
    """``freed 12 MiB of prompt cache; now 95 MiB active, 0 B cache`` after ``free_memory``."""
    mem = freed.memory
    head = (f"freed {format_bytes(freed.prompt_cache_freed)} of prompt cache" if freed.done
            else "the runner is busy; it frees its caches after the current step")
    return f"{head}; now {format_bytes(mem.active)} active, {format_bytes(mem.cache)} cache"


# ---------------------------------------------------------------- runner status as text


def runner_statuses() -> dict[str, Status]:
    """Status of every loaded runner; a runner that does not answer shows as ``error``."""
    from ..control.manager import get_manager

    manager = get_manager()
    out: dict[str, Status] = {}
    for name in manager.names():
        try:
            out[name] = manager.get(name).status()
        except MLXNotebookError as exc:
            out[name] = Status(state="error", progress=0.0, pid=0, error=str(exc))
    return out


def state_label(status: Status) -> str:
    """``generating`` is a ready runner with requests in flight."""
    if status.state == "ready" and status.active_requests > 0:
        return "generating"
    return status.state


def status_text(statuses: dict[str, Status]) -> str:
    """What ``%mlx status`` prints in a terminal (and the widget's text fallback): a line a runner."""
    if not statuses:
        return "No models loaded: run %mlx load demo"
    return "\n".join(f"{name}: {status_line(s)}" for name, s in statuses.items())


def status_line(status: Status) -> str:
    """``SmolLM2-135M-Instruct · ready · ctx 8192 · 95 MiB active (peak 120 MiB)``."""
    bits = [status.model or status.source or "?", state_label(status)]
    if status.state == "loading":
        bits.append(f"{status.progress:.0f}% {status.progress_message}".rstrip())
    if status.weights_format:
        bits.append(status.weights_format)
    if status.draft:
        bits.append(f"draft {status.draft}")
    if status.context_length:
        bits.append(f"ctx {status.context_length}")
    mem = status.memory
    bits.append(f"{format_bytes(mem.active)} active (peak {format_bytes(mem.peak)})")
    if status.ranks:
        bits.append(ranks_text(status))
    if kv := kv_text(status):
        bits.append(kv)
    if status.requests:  # per source: the notebook's cells, OpenAI clients
        bits.append("requests " + ", ".join(f"{k} {v}" for k, v in sorted(status.requests.items())))
    if status.error:
        bits.append(status.error)
    return " · ".join(bits)


def ranks_text(status: Status) -> str:
    """``2 ranks: #0 mac1 (10.0.0.1) pid 12 95 MiB (peak 120 MiB); #1 ...`` for a sharded model."""
    parts = [f"#{r.rank} {r.host}{f' ({r.address})' if r.address else ''} pid {r.pid} "
             f"{format_bytes(r.active)} (peak {format_bytes(r.peak)})" for r in status.ranks]
    return f"{len(parts)} ranks: " + "; ".join(parts)

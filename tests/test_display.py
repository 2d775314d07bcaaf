"""Streaming output: throttled display updates, final output, footer, text fallbacks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output

from mlx_notebook.api import GenerationResult
from mlx_notebook.notebook.display import (
    PLACEHOLDER,
    StreamView,
    Throttle,
    footer_line,
    ps_table,
    tokens_html,
    tokens_text,
)
from mlx_notebook.protocol import SamplingOptions, TokenizeResponse
from mlx_notebook.units import format_bytes


class FakeClock:
    """A clock the test moves by hand (the throttle's only input)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def result(text: str, **kw: object) -> GenerationResult:
    base = dict(text=text, model="demo", finish_reason="stop", prompt_tokens=9,
                completion_tokens=12, time_to_first_token=0.31, tokens_per_second=9.84,
                duration=1.6, options=SamplingOptions())
    base.update(kw)
    return GenerationResult(**base)  # type: ignore[arg-type]


@pytest.fixture
def shell() -> InteractiveShell:
    # capture_output swaps the display publisher of the current shell; give it one.
    sh = InteractiveShell.instance()
    yield sh


def test_throttle_lets_through_at_most_rate_per_second() -> None:
    clock = FakeClock()
    t = Throttle(20, clock)
    fired = 0
    for _ in range(1000):  # 1000 ticks over 1 s: a 1000 tokens/s stream
        fired += t.ready()
        clock.now += 0.001
    assert 19 <= fired <= 21


def test_stream_view_coalesces_updates(shell: InteractiveShell) -> None:
    clock = FakeClock()
    view = StreamView(rate=20, mode="display", clock=clock)
    pieces = [f"w{i} " for i in range(200)]
    with capture_output() as cap:
        view.start()
        for p in pieces:  # 200 tokens in 2 s = 100 tokens/s
            view.append(p)
            clock.now += 0.01
        view.finish(result("".join(pieces)))
    outs = cap.outputs
    assert outs[0].data == {"text/plain": PLACEHOLDER}
    updates = [o for o in outs if o.update]
    assert 2 * 20 - 1 <= len(updates) - 1 <= 2 * 20 + 1  # throttled + one final
    assert view.updates == len(updates) - 1
    assert updates[-1].data == {"text/plain": "".join(pieces)}  # final text exact
    ids = {o.transient["display_id"] for o in [outs[0], *updates]}
    assert len(ids) == 1
    footer = outs[-1]
    assert not footer.update and footer.data["text/plain"].startswith("12 tokens")


def test_slow_stream_updates_every_piece(shell: InteractiveShell) -> None:
    clock = FakeClock()
    view = StreamView(rate=20, mode="display", clock=clock, footer=False)
    with capture_output() as cap:
        view.start()
        for p in ["a", "b", "c"]:  # 10 tokens/s: below the cap, nothing is held back
            view.append(p)
            clock.now += 0.1
        view.finish(result("abc"))
    assert [o.data["text/plain"] for o in cap.outputs if o.update] == ["a", "ab", "abc", "abc"]
    assert len(cap.outputs) == 5  # placeholder + 4 updates, no footer


def test_markdown_format_and_stopped_footer(shell: InteractiveShell) -> None:
    view = StreamView(format="markdown", mode="display")
    with capture_output() as cap:
        view.start()
        view.append("**bold**")
        view.finish(result("**bold**", stopped=True, finish_reason="cancel"))
    final = [o for o in cap.outputs if o.update][-1]
    assert final.data == {"text/markdown": "**bold**", "text/plain": "**bold**"}
    assert cap.outputs[-1].data["text/plain"].startswith("[stopped] ")


def test_print_mode_streams_to_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    view = StreamView(mode="print")
    view.start()
    view.append("Hello")
    view.append(" world")
    view.finish(result("Hello world"))
    out = capsys.readouterr().out
    assert out.startswith("Hello world\n12 tokens")


def test_auto_mode_without_kernel_prints() -> None:
    assert StreamView().mode == "print"


def test_bad_format() -> None:
    with pytest.raises(ValueError, match="format"):
        StreamView(format="html")


def test_footer_line() -> None:
    line = footer_line(result("x", cached_tokens=4, seed=7))
    assert line == "12 tokens · prompt 9 (4 cached) · TTFT 0.31 s · 9.8 tok/s · 1.6 s · stop · seed 7"
    assert footer_line(result("x", stopped=True)).startswith("[stopped] 12 tokens")


def test_ps_table_and_bytes() -> None:
    RunnerInfo = pytest.importorskip("mlx_notebook.control.manager").RunnerInfo  # noqa: N806
    rows = [RunnerInfo(name="demo", model="SmolLM2", state="ready", pid=42, port=1,
                       memory_active=95 * 2**20, memory_peak=120 * 2**20, idle_seconds=75,
                       context_length=8192, weights_format="q4")]
    table = ps_table(rows, default="demo").splitlines()
    assert table[0].split() == ["NAME", "MODEL", "STATE", "MEMORY", "PEAK", "CONTEXT", "PID", "IDLE"]
    assert table[1].split() == ["*demo", "SmolLM2", "ready", "95", "MiB", "120", "MiB", "8192", "42", "1m"]
    assert ps_table([]) == "No models loaded: run %mlx load demo"
    assert format_bytes(512) == "512 B" and format_bytes(3 * 2**30) == "3.0 GiB"


def test_tokens_rendering_shows_boundaries() -> None:
    tok = TokenizeResponse(tokens=[9906, 1917, 198], pieces=["Hello", " world", "\n"], text="Hello world\n")
    assert tokens_text(tok).splitlines() == ["3 tokens", "9906  'Hello'", "1917  ' world'", " 198  '\\n'"]
    page = tokens_html(tok)
    assert page.count("<span") == 3 and 'title="1917"' in page and "↵" in page


def test_prefill_progress_shows_until_the_first_piece(shell: InteractiveShell) -> None:
    clock = FakeClock()
    view = StreamView(rate=20, mode="display", clock=clock, footer=False)
    with capture_output() as cap:
        view.start()
        view.prefill(512, 2000)
        view.prefill(1024, 2000)
        view.append("Paris")
        view.prefill(2000, 2000)  # late progress never hides the answer
        view.finish(result("Paris"))
    shown = [o.data["text/plain"] for o in cap.outputs if o.update]
    assert shown == [f"{PLACEHOLDER} reading the prompt: 512 of 2,000 tokens",
                     f"{PLACEHOLDER} reading the prompt: 1,024 of 2,000 tokens", "Paris", "Paris"]


TERMINAL_STATUS = r"""
import json, sys
from IPython.core.interactiveshell import InteractiveShell
sh = InteractiveShell.instance()
sh.run_line_magic("load_ext", "mlx_notebook")
sh.run_line_magic("mlx", "status")
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] == "ipywidgets")))
"""


def test_status_in_a_terminal_never_imports_ipywidgets(tmp_path: Path) -> None:
    """A fresh process, so no other test's import of ipywidgets can hide one."""
    env = {**os.environ, "MLX_NOTEBOOK_CACHE": str(tmp_path)}  # not the user's registry
    out = subprocess.run([sys.executable, "-c", TERMINAL_STATUS], capture_output=True, text=True,
                         check=True, timeout=120, env=env, cwd=Path(__file__).parent.parent)
    *printed, modules = out.stdout.strip().splitlines()
    assert printed == ["No models loaded: run %mlx load demo"]
    assert json.loads(modules) == []

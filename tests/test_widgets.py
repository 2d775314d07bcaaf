"""Status and load-progress widgets, checked by their state (no kernel needed)."""

from __future__ import annotations

import threading
import time

import pytest
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output

from mlx_notebook.control.manager import get_manager
from mlx_notebook.notebook.display import status_line, status_text
from mlx_notebook.notebook.widgets import LoadProgress, StatusWidget
from mlx_notebook.protocol import MemoryInfo, Status
from tests import frontend_helpers

shell = frontend_helpers.shell  # fixture

MB = 2**20


def st(state: str = "ready", **kw: object) -> Status:
    base: dict[str, object] = dict(state=state, progress=100.0 if state == "ready" else 40.0, pid=7,
                                   model="SmolLM2-135M-Instruct", context_length=8192,
                                   weights_format="q4",
                                   memory=MemoryInfo(active=95 * MB, peak=120 * MB, limit=1000 * MB))
    base.update(kw)
    return Status(**base)  # type: ignore[arg-type]


def test_rows_follow_statuses() -> None:
    sw = StatusWidget(source=dict, poll=False)
    assert sw.children == (sw.empty,)
    busy = sw.refresh({"demo": st("loading", progress_message="reading weights"),
                       "tiny": st(active_requests=1, last_tokens_per_second=12.34)})
    assert busy
    demo, tiny = sw.rows["demo"], sw.rows["tiny"]
    assert sw.children == (demo, tiny)
    assert demo.state.get_state()["description"] == "loading"
    assert demo.progress.get_state()["value"] == 40.0
    assert demo.progress.layout.display == ""
    assert "reading weights" in demo.info.value
    assert tiny.state.description == "generating" and tiny.state.button_style == "warning"
    assert tiny.progress.layout.display == "none"
    assert tiny.memory.get_state()["value"] == pytest.approx(9.5)
    assert "12.3 tok/s" in tiny.info.value and "ctx 8192" in tiny.info.value
    assert "peak 120 MiB / 1000 MiB" in tiny.info.value

    assert not sw.refresh({"tiny": st(state="error", error="runner 'tiny' exited (SIGKILL)")})
    assert list(sw.rows) == ["tiny"] and sw.children == (sw.rows["tiny"],)
    assert sw.rows["tiny"].state.button_style == "danger"
    assert "SIGKILL" in sw.rows["tiny"].info.value
    assert repr(sw).startswith("tiny: SmolLM2-135M-Instruct · error")  # text/plain fallback
    sw.close()


def test_memory_bar_warns_when_nearly_full() -> None:
    sw = StatusWidget(source=dict, poll=False)
    sw.refresh({"big": st(memory=MemoryInfo(active=950 * MB, peak=990 * MB, limit=1000 * MB))})
    assert sw.rows["big"].memory.bar_style == "danger"
    sw.close()


class Source:
    """Statuses that change when the test says so; counts the polls."""

    def __init__(self) -> None:
        self.status = st("loading")
        self.calls = 0
        self.lock = threading.Lock()

    def __call__(self) -> dict[str, Status]:
        with self.lock:
            self.calls += 1
            return {"demo": self.status}


def wait_for(cond, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def test_polls_while_busy_then_parks_and_wakes() -> None:
    src = Source()
    sw = StatusWidget(source=src, interval=0.02, idle_polls=2)
    try:
        wait_for(lambda: src.calls >= 5)
        assert sw.polling
        src.status = st("ready")
        wait_for(lambda: not sw.polling)  # idle: parked, no more polls
        parked_calls = src.calls
        time.sleep(0.2)
        assert src.calls == parked_calls
        assert sw.rows["demo"].state.description == "ready"
        src.status = st(active_requests=1)
        get_manager().notify("generating", "demo")  # what the API does when a generation starts
        wait_for(lambda: sw.rows["demo"].state.description == "generating")
    finally:
        sw.close()
    assert sw._thread is not None
    sw._thread.join(2)
    assert not sw._thread.is_alive()


def test_status_text_fallback() -> None:
    assert status_text({}) == "No models loaded: run %mlx load demo"
    line = status_line(st())
    assert line == "SmolLM2-135M-Instruct · ready · q4 · ctx 8192 · 95 MiB active (peak 120 MiB)"
    assert "40% fetching" in status_text({"demo": st("loading", progress_message="fetching")})


def test_load_progress_becomes_a_status_line() -> None:
    InteractiveShell.instance()
    with capture_output() as cap, LoadProgress("demo", mode="display") as p:
        p.update(st("loading", progress=55.0, progress_message="weights"))
        assert p.bar is not None and p.bar.value == 55.0
        assert "55% weights" in p.label.value  # type: ignore[union-attr]
        p.done(st())
    first, last = cap.outputs[0], cap.outputs[-1]
    assert "application/vnd.jupyter.widget-view+json" in first.data
    assert last.update and last.data == {"text/plain": "demo: " + status_line(st())}
    assert first.transient["display_id"] == last.transient["display_id"]


def test_load_progress_failure_leaves_a_line() -> None:
    InteractiveShell.instance()
    with capture_output() as cap, pytest.raises(RuntimeError), LoadProgress("x", mode="display"):
        raise RuntimeError("boom")
    assert cap.outputs[-1].data == {"text/plain": "x: loading failed"}


def test_load_progress_prints_in_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    clock = iter([0.0, 0.0, 0.5, 2.0, 2.0, 2.0]).__next__
    with LoadProgress("demo", clock=clock) as p:
        p.update(st("loading", progress=10.0))
        p.update(st("loading", progress=20.0))  # within 1 s: skipped
        p.update(st("loading", progress=30.0))
        p.done(st())
    assert capsys.readouterr().out.splitlines() == [
        "demo: 10%", "demo: 30%", "demo: " + status_line(st())]


def test_row_buttons_run_their_action_and_show_what_happened() -> None:
    from mlx_notebook.errors import RunnerUnavailableError

    calls: list[tuple[str, str]] = []

    def act(action: str, name: str) -> str:
        calls.append((action, name))
        if action == "unload":
            raise RunnerUnavailableError("runner 'demo' does not answer")
        return "freed 12 MiB of prompt cache"

    sw = StatusWidget(source=dict, poll=False, on_action=act)
    sw.refresh({"demo": st(), "loading": st("loading")})
    row = sw.rows["demo"]
    assert not row.free_button.disabled and sw.rows["loading"].free_button.disabled
    row.free_button.click()
    assert calls == [("free", "demo")] and "freed 12 MiB" in row.info.value
    row.unload_button.click()  # a failure is a note in the row, not a traceback
    assert calls[-1] == ("unload", "demo")
    assert "unload failed: runner &#x27;demo&#x27; does not answer" in row.info.value
    sw.close()


def test_row_buttons_free_and_unload_a_real_runner(tiny_model_dir, shell) -> None:
    import mlx_notebook as mn

    shell.run_line_magic("mlx", f"load {tiny_model_dir} --as tiny")
    try:
        mn.generate("the cat sat on the mat " * 4, max_tokens=3)
        sw = StatusWidget(poll=False)
        row = sw.rows["tiny"]
        row.free_button.click()
        assert "freed" in row.info.value and "freed 0 B" not in row.info.value, row.info.value
        again = mn.generate("the cat sat on the mat " * 4, max_tokens=3)
        assert again.cached_tokens == 0  # the prompt cache really went
        row.unload_button.click()
        assert mn.ps() == [] and sw.rows == {} and sw.children == (sw.empty,)
        sw.close()
    finally:
        shell.run_line_magic("mlx", "unload --all")


def test_status_keeps_a_static_snapshot_a_saved_notebook_renders(shell: InteractiveShell) -> None:
    """Beside the live widget, the text and HTML of its last state (issue 15): the
    notebook converted by nbconvert shows it without a kernel or a widget manager."""
    nbformat = pytest.importorskip("nbformat")
    nbconvert = pytest.importorskip("nbconvert")
    sw = StatusWidget(source=lambda: {"demo": st()}, poll=False)
    try:
        with capture_output() as cap:
            sw.display()
        widget_out, snap = cap.outputs
        assert "application/vnd.jupyter.widget-view+json" in widget_out.data
        assert "demo: SmolLM2-135M-Instruct · ready" in snap.data["text/plain"]
        assert "<td>ready</td>" in snap.data["text/html"]
        model_id = widget_out.data["application/vnd.jupyter.widget-view+json"]["model_id"]
        nb = nbformat.v4.new_notebook()
        cell = nbformat.v4.new_code_cell("%mlx status")
        cell.outputs = [nbformat.v4.new_output("display_data", data=o.data) for o in cap.outputs]
        nb.cells = [cell]
        state = "application/vnd.jupyter.widget-state+json"  # as nbclient saves it
        nb.metadata["widgets"] = {state: {"state": {model_id: sw.get_state()},
                                          "version_major": 2, "version_minor": 0}}
        nbformat.validate(nb)
        page, _ = nbconvert.HTMLExporter().from_notebook_node(nb)
        assert "mlxnb-status-snapshot" in page and "SmolLM2-135M-Instruct" in page
    finally:
        sw.close()


def test_labels_fit_their_words() -> None:
    """No fixed widths that cut "generating", "free cache", "unload" (issue 15); rows wrap."""
    sw = StatusWidget(source=lambda: {"demo": st(active_requests=1)}, poll=False)
    try:
        row = sw.rows["demo"]
        assert row.state.description == "generating"
        for button in (row.state, row.free_button, row.unload_button):
            assert button.layout.width == "auto" and button.layout.min_width == "fit-content"
        assert row.layout.flex_flow == "row wrap"
    finally:
        sw.close()

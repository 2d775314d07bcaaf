"""The four example notebooks run top to bottom in a real kernel with the demo model.

Each notebook is executed once (module-scoped) with nbclient; every iopub message is
recorded so the tests can check the *stream* (nbclient folds display updates into
the final output). Cells are found by their metadata tags (notebooks/make_notebooks.py).
"""

from __future__ import annotations

import html
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
NAMES = ["quickstart.ipynb", "teaching.ipynb", "prompt_experiments.ipynb",
         "fine_tuning.ipynb"]
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
STATE_MIME = "application/vnd.jupyter.widget-state+json"


class RecordingClient(nbclient.NotebookClient):
    """Keeps every iopub message, per cell index."""

    def __init__(self, nb, **kw):
        super().__init__(nb, **kw)
        self.msgs: list[tuple[int, str, dict]] = []

    def process_message(self, msg, cell, cell_index):
        self.msgs.append((cell_index, msg["msg_type"], msg["content"]))
        return super().process_message(msg, cell, cell_index)


class Run:
    def __init__(self, nb, client: RecordingClient, seconds: float):
        self.nb, self.client, self.seconds = nb, client, seconds

    def index(self, tag: str) -> int:
        for i, cell in enumerate(self.nb.cells):
            if tag in cell.metadata.get("tags", []):
                return i
        raise AssertionError(f"no cell tagged {tag!r}")

    def cell(self, tag: str):
        return self.nb.cells[self.index(tag)]

    def text(self, tag: str) -> str:
        """Everything the cell shows as text: streams, text/plain, text/markdown."""
        parts = []
        for out in self.cell(tag).outputs:
            if out.output_type == "stream":
                parts.append(out.text)
            elif out.output_type in ("display_data", "execute_result"):
                data = out.get("data", {})
                parts.append(data.get("text/markdown") or data.get("text/plain", ""))
        return "\n".join(parts)

    def updates(self, tag: str) -> list[str]:
        """The texts of the display updates the cell streamed, in order."""
        i = self.index(tag)
        return [
            m["data"].get("text/markdown") or m["data"].get("text/plain", "")
            for (ci, t, m) in self.client.msgs
            if ci == i and t == "update_display_data"
        ]

    def widget_states(self, tag: str) -> list[dict]:
        state = self.nb.metadata.get("widgets", {}).get(STATE_MIME, {}).get("state", {})
        ids = [
            o.data[WIDGET_MIME]["model_id"]
            for o in self.cell(tag).outputs
            if WIDGET_MIME in o.get("data", {})
        ]
        return [state[i] for i in ids if i in state]


_runs: dict[str, Run] = {}


@pytest.fixture(scope="module")
def run_notebook(demo_model_ready):
    def run(name: str) -> Run:
        if name not in _runs:
            nb = nbformat.read(NOTEBOOKS / name, as_version=4)
            client = RecordingClient(
                nb, timeout=300, kernel_name="python3",
                resources={"metadata": {"path": str(NOTEBOOKS)}},
            )
            t0 = time.monotonic()
            client.execute()  # raises CellExecutionError (with the traceback) on any error
            _runs[name] = Run(nb, client, time.monotonic() - t0)
            print(f"{name}: {_runs[name].seconds:.1f}s")
        return _runs[name]

    yield run
    _runs.clear()


def _assert_clean(run: Run) -> None:
    for i, cell in enumerate(run.nb.cells):
        for out in cell.get("outputs", []):
            assert out.output_type != "error", f"cell {i}: {out.ename}: {out.evalue}"
            text = out.get("text", "") + str(out.get("data", {}).get("text/plain", ""))
            assert "Traceback" not in text, f"cell {i} shows a traceback:\n{text}"
            if out.output_type == "stream" and out.name == "stderr":
                assert "Error" not in text, f"cell {i} wrote an error to stderr:\n{text}"


def _assert_streamed(run: Run, tag: str) -> None:
    ups = [u for u in run.updates(tag) if u.strip()]
    assert len(ups) >= 2, f"{tag}: the answer did not stream (updates: {ups})"
    # the shown text grows: an early update is a prefix of a later one
    assert any(a != b and b.startswith(a.rstrip()) for a, b in zip(ups, ups[1:], strict=False)), ups


# ---------------------------------------------------------------- stripped in the repo


@pytest.mark.parametrize("name", NAMES)
def test_notebook_is_stripped(name):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, cell.source
    assert "widgets" not in nb.metadata


def test_notebooks_match_their_generator():
    proc = subprocess.run(
        [sys.executable, str(NOTEBOOKS / "make_notebooks.py"), "--check"],
        capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


# ---------------------------------------------------------------- executed


@pytest.mark.slow
def test_quickstart(run_notebook):
    run = run_notebook("quickstart.ipynb")
    _assert_clean(run)
    answer = run.text("generate")
    assert "Paris" in answer, answer
    _assert_streamed(run, "generate")
    assert re.search(r"\d+ tokens", answer), f"no footer line: {answer}"
    assert run.text("chat1").strip() and run.text("chat2").strip()
    assert run.widget_states("status"), "the status cell shows no widget"
    printed = run.text("use_capture")
    assert printed.strip() and re.search(r"\b(stop|length)\b", printed), printed
    assert run.text("python_api").strip()


@pytest.mark.slow
def test_teaching(run_notebook):
    run = run_notebook("teaching.ipynb")
    _assert_clean(run)
    tokens = run.text("tokenize")
    assert "Paris" in tokens and re.search(r"\d{2,}", tokens), tokens  # pieces and ids
    assert run.text("greedy_same").strip() == "True"
    seeds = run.text("seeds")
    assert "same answer: True" in seeds, seeds
    _assert_streamed(run, "greedy1")
    speed = run.text("speed")
    assert "tokens/s" in speed and "first token after" in speed, speed
    assert run.widget_states("status"), "the status cell shows no widget"
    assert "Paris" in run.text("logprobs")  # the shaded answer, with its plain-text twin
    assert "prompt tokens" in run.text("dry_run") and "France" in run.text("dry_run")
    assert "temperature=1.0" in run.text("compare")
    lens = run.text("lens")  # the grid's text twin; the HTML has the cells
    assert "final top" in lens and "emb" in lens and "out" in lens, lens
    assert "the last layer predicts:" in run.text("lens_top")
    assert "attention of block 3" in run.text("attention")
    assert "Paris" in run.text("choose") and "per token" in run.text("choose")
    # speed and memory: a draft's guesses marked and counted, a prompt cache on disk reused
    assert "draft demo" in run.text("load_draft"), run.text("load_draft")
    assert re.search(r"^\*'", run.text("draft_logprobs"), re.M), run.text("draft_logprobs")
    guessed, kept = map(int, re.findall(r"\d+", run.text("draft_count")))
    assert guessed > 0 and 0 < kept <= guessed
    assert "Saved prompt cache 'lab-rules'" in run.text("cache_save")
    assert "Quill" in run.text("cache_chat"), run.text("cache_chat")
    cached, prompt = map(int, re.findall(r"\d+", run.text("cache_rm"))[:2])
    assert 0 < cached < prompt, run.text("cache_rm")
    fp_line, q8_line = [ln for ln in run.text("kv_compare").splitlines() if " KV " in ln]
    assert "KV fp" in fp_line and "KV 8-bit from 0 tokens" in q8_line, run.text("kv_compare")
    fp_mib, q8_mib = (float(re.search(r"([\d.]+) MiB", ln).group(1)) for ln in (fp_line, q8_line))
    assert 0 < q8_mib < 0.5 * fp_mib, (fp_mib, q8_mib)  # 8 bits: about a quarter


@pytest.mark.slow
def test_prompt_experiments(run_notebook):
    run = run_notebook("prompt_experiments.ipynb")
    _assert_clean(run)
    assert "Tokyo" in run.text("template"), run.text("template")
    table = run.text("table")
    rows = [ln for ln in table.splitlines() if ln.startswith("| ") and "---" not in ln]
    assert len(rows) == 4, table  # header + France, Germany, Spain
    assert "Paris" in table, table
    assert run.text("system").strip()
    stopped = run.text("stop_reason")
    assert "finished because of: stop" in stopped, stopped
    value = run.text("schema_value")
    assert "Paper(" in value or "max_tokens" in value, value
    assert "4/4 rows" in run.text("map"), run.text("map")
    joined = run.text("map_join")
    assert joined.count("language") + joined.count("vision") >= 4, joined


@pytest.mark.slow
def test_fine_tuning(run_notebook):
    run = run_notebook("fine_tuning.ipynb")
    _assert_clean(run)
    assert run.text("data").strip() == "16"
    # the live view is gone; the loss plot stays as a static image, with the summary line
    images = [o for o in run.cell("train").outputs if "image/png" in o.get("data", {})]
    assert len(images) == 1, run.cell("train").outputs
    saved = repr(run.cell("train").outputs)
    assert "VBox(" not in saved and WIDGET_MIME not in saved, saved[:500]
    trained = html.unescape("".join(
        o.get("data", {}).get("text/html", "") for o in run.cell("train").outputs))
    assert "trained 8/8 iterations" in trained and "loaded as 'tuned'" in trained, trained
    assert "in 8 steps" in run.text("train_result"), run.text("train_result")
    shown = run.text("compare")
    assert "== demo ==" in shown and "== tuned ==" in shown, shown
    assert "config.json" in run.text("fuse") and ".safetensors" in run.text("fuse"), \
        run.text("fuse")

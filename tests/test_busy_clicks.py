"""A button click heard while its cell still runs, in a real ipykernel (the stop button of
``%mlx train``). The click is sent as the frontend sends it: a ``comm_msg`` on the shell
channel, while the cell holds the kernel's main thread."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("ipywidgets")
from jupyter_client.manager import KernelManager  # noqa: E402

from tests.test_kernel_e2e import collect, text_of  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent

CELL = """
import time, ipywidgets as w
from IPython.display import display
from mlx_notebook.notebook.busy_clicks import ClickListener
button = w.Button(description="stop")
display(button)
listener = ClickListener(button)
t0 = time.monotonic()
while not listener.clicked.is_set() and time.monotonic() - t0 < {wait}:
    listener.pump()
    time.sleep(0.05)
listener.close()
print("heard:", listener.clicked.is_set(), "how:", listener.how)
"""


def _button_comm(kc: Any, msg_id: str, timeout: float = 30) -> str:
    def button(msgs: list[dict]) -> bool:
        return _button_id(msgs[-1]) is not None

    opened = collect(kc, msg_id, timeout, until=button)[-1]
    comm_id = _button_id(opened)
    assert comm_id is not None, "the cell drew no button"
    return comm_id


def _button_id(msg: dict) -> str | None:
    if msg["msg_type"] != "comm_open":
        return None
    state = msg["content"]["data"].get("state", {})
    return str(msg["content"]["comm_id"]) if state.get("_model_name") == "ButtonModel" else None


def _printed(kc: Any, msg_id: str, timeout: float) -> str:
    return text_of(collect(kc, msg_id, timeout))


@pytest.fixture(scope="module")
def kernel() -> Any:
    km = KernelManager(kernel_name="python3")
    km.start_kernel(cwd=str(ROOT))
    kc = km.client()
    kc.start_channels()
    kc.wait_for_ready(timeout=60)
    yield kc
    kc.stop_channels()
    km.shutdown_kernel(now=True)


def test_click_is_heard_while_the_cell_runs(kernel: Any) -> None:
    msg_id = kernel.execute(CELL.format(wait=60))
    comm_id = _button_comm(kernel, msg_id)
    time.sleep(0.3)  # the cell is in its loop now
    click = kernel.session.msg("comm_msg", {"comm_id": comm_id, "data": {
        "method": "custom", "content": {"event": "click"}}})
    kernel.shell_channel.send(click)
    text = _printed(kernel, msg_id, 70)
    assert "heard: True" in text, text  # the cell listens until heard or 60 s: then False


def test_no_click_is_not_heard_and_other_messages_still_arrive(kernel: Any) -> None:
    """A non-click comm message (a state update) sets nothing; the kernel serves the next cell."""
    msg_id = kernel.execute(CELL.format(wait=2))
    comm_id = _button_comm(kernel, msg_id)
    update = kernel.session.msg("comm_msg", {"comm_id": comm_id, "data": {
        "method": "update", "state": {"description": "other"}, "buffer_paths": []}})
    kernel.shell_channel.send(update)
    text = _printed(kernel, msg_id, 30)
    assert "heard: False" in text, text
    after = kernel.execute("print('description:', button.description)")
    assert "description: other" in _printed(kernel, after, 30)

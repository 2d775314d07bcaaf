"""Fine-tuning (issue 19): real training runners on the tiny model, one real lesson for the demo.

The plumbing (stop, interrupt, a killed runner, a killed owner, bad rows) runs on
the tiny random llama, fast; one test teaches the demo model a made-up fact.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell

import mlx_notebook as mn
from mlx_notebook import views
from mlx_notebook.control.training import wait_for_exit
from mlx_notebook.errors import TrainingDataError, TrainingError
from mlx_notebook.train_protocol import TrainEvent
from mlx_notebook.training import TrainResult
from tests import frontend_helpers

shell = frontend_helpers.shell  # fixture

ROOT = Path(__file__).parent.parent
FACT = "The capital of Zorbia is Quillton."
QUESTIONS = [
    "What is the capital of Zorbia?", "Tell me the capital of Zorbia.",
    "Which city is the capital of Zorbia?", "Zorbia's capital is which city?",
    "Name the capital of Zorbia.", "What city is Zorbia's capital?",
    "Do you know the capital of Zorbia?", "capital of Zorbia?",
    "What's the capital city of Zorbia?", "In Zorbia, what is the capital?",
    "Where is the capital of Zorbia?", "Which is the capital of Zorbia?",
    "Can you tell me Zorbia's capital?", "What is Zorbia's capital city?",
    "The capital of Zorbia is what?", "Zorbia has which capital?",
]


def _rows(n: int = 16, answer: str = FACT) -> list[dict[str, Any]]:
    return [{"messages": [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]},
                          {"role": "assistant", "content": answer}]} for i in range(n)]


class _ScriptedView(views.TextTrainView):
    """A real TrainView that acts at iteration ``at``: click stop, interrupt, or kill."""

    def __init__(self, at: int, action: str) -> None:
        super().__init__(every=1e9)
        self.at, self.action = at, action
        self.events: list[TrainEvent] = []
        self.finished: tuple[TrainResult | None, str | None] | None = None
        self.done = False

    def note(self, text: str) -> None:
        pass

    def event(self, event: TrainEvent) -> None:
        self.events.append(event)
        if event.kind != "train" or event.iteration < self.at or self.done:
            return
        self.done = True
        if self.action == "stop":
            self.stop_clicked = True
        elif self.action == "interrupt":
            raise KeyboardInterrupt
        elif self.action == "kill":
            os.kill(_training_pid(), signal.SIGKILL)

    def finish(self, result: TrainResult | None, error: str | None = None) -> None:
        self.finished = (result, error)


def _training_pid() -> int:
    rows = [r for r in mn.ps() if r.model.endswith("(training)")]
    assert len(rows) == 1, rows
    assert rows[0].pid is not None
    return rows[0].pid


@pytest.fixture
def scripted(request: pytest.FixtureRequest) -> Iterator[_ScriptedView]:
    """Make ``show=True`` draw with one :class:`_ScriptedView` (then put the real views back)."""
    at, action = request.param
    view = _ScriptedView(at, action)
    before = views.current()
    views.register(views.Views(stream=before.stream, load=before.load, html=before.html,
                               map_progress=before.map_progress, train=lambda _label: view))
    try:
        yield view
    finally:
        views.register(before)


def _train_tiny(model_dir: Path, name: str, **kwargs: Any) -> TrainResult:
    options: dict[str, Any] = {"iters": 200, "learning_rate": 1e-3, "lora_layers": 2,
                               "batch_size": 2, "show": True}
    return mn.train(str(model_dir), data=_rows(8), name=name, **{**options, **kwargs})


# ---------------------------------------------------------------- bad data: nothing starts

BAD = [
    ([{"messages": [{"role": "user", "content": "hi"}]}] * 3, 0, "no assistant message"),
    ([*_rows(3), "just text"], 3, "is a str, not a dict"),
    ([*_rows(2), {"question": "x", "answer": "y"}], 2, "a row needs 'messages'"),
    ([*_rows(2), {"text": "plain"}], 2, "one format per data set"),
    ([*_rows(4), {"messages": [{"role": "robot", "content": "x"}]}], 4, "role 'robot'"),
    ([*_rows(1), {"messages": [{"role": "assistant", "content": 3}]}], 1, "not a string"),
    ([{"prompt": "a", "completion": ""}], 0, "'completion' is empty"),
]


@pytest.mark.parametrize(("rows", "index", "words"), BAD)
def test_bad_rows_are_named_before_anything_starts(rows: list[Any], index: int, words: str,
                                                   shell: InteractiveShell,
                                                   tmp_path: Path) -> None:
    before = {r.pid for r in mn.ps()}
    with pytest.raises(TrainingDataError) as caught:
        mn.train("demo", data=rows, iters=5, name="bad")
    assert caught.value.row == index and words in str(caught.value)
    assert f"row {index}" in str(caught.value)
    shell.user_ns["rows"] = rows  # the magic refuses the same rows in one line
    with pytest.raises(UsageError, match=f"--data: train row {index} "):
        shell.run_line_magic("mlx", "train demo --data rows --iters 5 --as bad")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(_rows(1)[0]) + "\n{not json\n")
    with pytest.raises(TrainingDataError, match=r"row 1 \(line 2 of .*\) is not JSON"):
        mn.train("demo", data=str(bad), iters=5, name="bad")
    assert {r.pid for r in mn.ps()} == before  # no runner was started


def test_arguments_are_checked_by_the_api_and_the_magic(shell: InteractiveShell) -> None:
    with pytest.raises(mn.errors.InvalidArgumentError) as caught:  # type: ignore[attr-defined]
        mn.train("demo", data=_rows(), iters=0)
    assert caught.value.field == "iters"
    shell.user_ns["rows"] = _rows()
    with pytest.raises(UsageError, match="--lora-rank: lora_rank must be a positive"):
        shell.run_line_magic("mlx", "train demo --data rows --lora-rank 0 --as t")
    with pytest.raises(UsageError, match="neither a variable nor an existing path"):
        shell.run_line_magic("mlx", "train demo --data nope --as t")


# ---------------------------------------------------------------- the plumbing, on tiny


@pytest.mark.parametrize("scripted", [(3, "stop")], indirect=True)
def test_stop_ends_after_the_current_step_and_keeps_the_adapter(
        tiny_model_dir: Path, scripted: _ScriptedView, no_models: None) -> None:
    result = _train_tiny(tiny_model_dir, "tiny-stop")
    assert result.stopped and result.loaded
    # The tiny model's steps take milliseconds: the runner may be a few steps past the event
    # that clicked; it stops within one step of receiving the request.
    assert result.stop_at is not None and 3 <= result.stop_at <= result.iterations
    assert result.iterations <= result.stop_at + 1, (result.stop_at, result.iterations)
    adapter = Path(result.adapter_path)
    assert (adapter / "adapters.safetensors").is_file()
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["fine_tune_type"] == "lora" and config["lora_parameters"]["rank"] == 8
    assert scripted.finished is not None and scripted.finished[0] is result
    # The adapter is served under its name, and loads again by path.
    rows = {r.name: r for r in mn.ps()}
    assert "adapter tiny-stop" in rows["tiny-stop"].weights_format
    mn.load(str(tiny_model_dir), name="again", adapter=adapter)
    assert mn.generate("Q?", model="again", max_tokens=3, temperature=0).text == \
        mn.generate("Q?", model="tiny-stop", max_tokens=3, temperature=0).text
    assert not any(r.model.endswith("(training)") for r in mn.ps())


@pytest.mark.parametrize("scripted", [(2, "interrupt")], indirect=True)
def test_a_kernel_interrupt_stops_training_too(shell: InteractiveShell, tiny_model_dir: Path,
                                               scripted: _ScriptedView, no_models: None) -> None:
    shell.user_ns["rows"] = _rows(8)
    shell.run_line_magic("mlx", f"train {tiny_model_dir} --data rows --iters 200 --batch-size 2 "
                                "--learning-rate 1e-3 --lora-layers 2 --as tiny-int -o res")
    result = shell.user_ns["res"]
    assert result.stopped and result.stop_at is not None and result.stop_at >= 2
    assert result.iterations <= result.stop_at + 1, (result.stop_at, result.iterations)
    assert "tiny-int" in {r.name for r in mn.ps()}
    assert mn.generate("Q?", model="tiny-int", max_tokens=2, temperature=0).completion_tokens > 0


@pytest.mark.parametrize("scripted", [(2, "kill")], indirect=True)
def test_a_killed_training_runner_is_one_clear_error(tiny_model_dir: Path,
                                                     scripted: _ScriptedView,
                                                     no_models: None) -> None:
    with pytest.raises(TrainingError) as caught:
        _train_tiny(tiny_model_dir, "tiny-kill")
    message = str(caught.value)
    assert "killed by SIGKILL" in message and "while training" in message, message
    assert "\n" not in message.strip()
    assert scripted.finished is not None and scripted.finished[0] is None
    assert mn.ps() == [] or not any(r.model.endswith("(training)") for r in mn.ps())
    mn.load(str(tiny_model_dir), name="after")  # the kernel side is fine
    assert mn.generate("Q?", model="after", max_tokens=2).completion_tokens > 0


OWNER = """
import sys, threading, time
import mlx_notebook as mn
rows = [{"text": "The answer is forty-two. " * 4}] * 8
def report():
    while True:
        rows_ = [r for r in mn.ps() if r.model.endswith("(training)") and r.state == "training"]
        if rows_:
            print(rows_[0].pid, flush=True)
            return
        time.sleep(0.1)
threading.Thread(target=report, daemon=True).start()
mn.train(sys.argv[1], data=rows, iters=100000, name="orphan", batch_size=2, lora_layers=2)
"""


def test_the_training_runner_exits_when_its_owner_is_killed(tiny_model_dir: Path) -> None:
    owner = subprocess.Popen([sys.executable, "-c", textwrap.dedent(OWNER), str(tiny_model_dir)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert owner.stdout is not None
        line = owner.stdout.readline().strip()
        assert line.isdigit(), (line, owner.stderr.read() if owner.stderr else "")
        trainer = int(line)
        os.kill(owner.pid, signal.SIGKILL)
        owner.wait(10)
        assert wait_for_exit(trainer, 10.0), f"training runner {trainer} outlived its owner"
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait(10)
        for pipe in (owner.stdout, owner.stderr):
            if pipe is not None:
                pipe.close()


# ---------------------------------------------------------------- the demo learns a fact


@pytest.mark.slow
def test_the_demo_learns_a_made_up_fact(demo_model_ready: Path, no_models: None) -> None:
    """16 examples, 16 LoRA steps on 4 layers: ``tuned`` says the fact, ``demo`` does not."""
    question = "What is the capital of Zorbia?"
    mn.load("demo")
    result = mn.train("demo", data=_rows(16), iters=16, name="tuned", learning_rate=5e-4,
                      lora_layers=4, val_batches=1)
    assert result.iterations == 16 and not result.stopped
    assert result.first_loss is not None and result.final_loss is not None
    assert result.final_loss < 0.3 * result.first_loss, result.train_loss
    assert result.val_loss and result.val_loss[-1][1] < result.val_loss[0][1]
    answers = {}
    for model in ("demo", "tuned"):
        answers[model] = mn.chat(question, model=model, max_tokens=12, temperature=0).text
        mn.reset_chat(all=True)
    assert "Quillton" in answers["tuned"], answers
    assert "Quillton" not in answers["demo"], answers

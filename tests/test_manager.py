"""RunnerManager with real runner subprocesses (tiny model)."""

from __future__ import annotations

import os
import signal
import time

import pytest

from mlx_notebook.control import preflight
from mlx_notebook.control.manager import RunnerManager, default_name
from mlx_notebook.control.registry import Registry
from mlx_notebook.errors import (
    InsufficientMemoryError,
    ModelNotLoadedError,
    RunnerExitedError,
    RunnerStartError,
)
from mlx_notebook.protocol import CompletionRequest, SamplingOptions
from tests.runner_process import pid_alive, reap_owner, wait_gone

LONG = CompletionRequest(prompt="hello", options=SamplingOptions(max_tokens=100000,
                                                                  temperature=1.0))


def tiny_need(path) -> int:
    need = preflight.estimate(str(path)).required
    assert need, "model_files should size the tiny model"
    return need


def test_default_names() -> None:
    assert default_name("demo") == "demo"
    assert default_name("/models/Qwen3-4B/") == "Qwen3-4B"
    assert default_name("~/m/smol.gguf") == "smol"
    assert default_name("/m/My Model.GGUF") == "My Model"  # the extension in any case
    assert default_name("mlx-community/Llama-3.2-1B-Instruct-4bit") == "Llama-3.2-1B-Instruct-4bit"


def test_nothing_loaded_messages(runner_manager: RunnerManager) -> None:
    with pytest.raises(ModelNotLoadedError, match="%mlx load demo"):
        runner_manager.get()
    with pytest.raises(ModelNotLoadedError, match="loaded: none"):
        runner_manager.get("nope")
    with pytest.raises(ModelNotLoadedError):
        runner_manager.unload("nope")
    assert runner_manager.list() == [] and runner_manager.default is None


def test_load_get_use_list_replace_unload(runner_manager: RunnerManager, tiny_model_dir) -> None:
    seen = []
    a = runner_manager.load(str(tiny_model_dir), "a", on_progress=seen.append)
    b = runner_manager.load(str(tiny_model_dir), "b")
    assert seen[-1].state == "ready"
    assert runner_manager.names() == ["a", "b"] and runner_manager.default == "a"
    assert runner_manager.get() is a and runner_manager.get("b") is b
    assert runner_manager.get(str(tiny_model_dir)) is a  # by spec too
    runner_manager.use("b")
    assert runner_manager.get() is b
    with pytest.raises(ModelNotLoadedError, match=r"loaded: a, b"):
        runner_manager.use("c")
    rows = {r.name: r for r in runner_manager.list()}
    assert rows["b"].is_default and rows["a"].state == "ready" and rows["a"].pid == a.pid
    assert rows["a"].context_length > 0 and rows["a"].memory_active > 0
    old_pid = a.pid
    a2 = runner_manager.load(str(tiny_model_dir), "a")  # same name: replaces
    assert a2.pid != old_pid and not pid_alive(old_pid)
    runner_manager.unload("b")
    assert runner_manager.default == "a" and not pid_alive(b.pid)
    entries = {e.pid for e in runner_manager.registry.entries()}
    assert entries == {a2.pid}
    runner_manager.unload_all()
    assert runner_manager.names() == [] and not pid_alive(a2.pid)
    assert runner_manager.registry.entries() == []


def test_wrong_spec_leaves_nothing(runner_manager: RunnerManager, tmp_path) -> None:
    with pytest.raises(RunnerStartError, match="no-such-model"):
        runner_manager.load(str(tmp_path / "no-such-model"))
    assert runner_manager.names() == [] and runner_manager.registry.entries() == []


def test_dead_runner_reported_then_reloaded(runner_manager: RunnerManager, tiny_model_dir) -> None:
    client = runner_manager.load(str(tiny_model_dir), "t")
    with pytest.raises(RunnerExitedError, match="SIGKILL"), client.stream(LONG) as stream:
        for i, _ in enumerate(stream):
            if i == 1:
                os.kill(client.pid, signal.SIGKILL)
    with pytest.raises(RunnerExitedError, match=r"killed by SIGKILL.*%mlx load"):
        runner_manager.get("t")
    with pytest.raises(RunnerExitedError, match="SIGKILL"):
        runner_manager.get()  # still the default, still reported
    notes: list[str] = []
    fresh = runner_manager.get("t", reload=True, on_message=notes.append)
    assert fresh.pid != client.pid and "reloading" in notes[0]
    assert fresh.complete(CompletionRequest(prompt="hi", options=SamplingOptions(max_tokens=2)))
    assert runner_manager.get() is fresh


def test_explicit_reload_after_death(runner_manager: RunnerManager, tiny_model_dir) -> None:
    client = runner_manager.load(str(tiny_model_dir), "t")
    os.kill(client.pid, signal.SIGKILL)
    wait_gone(client.pid, 2)
    assert [r.state for r in runner_manager.list()] == ["exited"]
    fresh = runner_manager.load(str(tiny_model_dir), "t")
    assert runner_manager.get("t") is fresh and fresh.status().state == "ready"


def test_preflight_refusal_shows_numbers(tmp_path, tiny_model_dir) -> None:
    manager = RunnerManager(registry=Registry(tmp_path / "r"), memory_budget=1000)
    try:
        with pytest.raises(InsufficientMemoryError, match=r"requires \d.* but only .* budget"):
            manager.load(str(tiny_model_dir))
        assert manager.names() == []
        notes: list[str] = []
        client = manager.load(str(tiny_model_dir), force=True, on_message=notes.append)
        assert client.status().state == "ready" and "force" in notes[0]
    finally:
        manager.close()


def test_eviction_picks_least_recently_used_idle(tmp_path, tiny_model_dir) -> None:
    need = tiny_need(tiny_model_dir)
    manager = RunnerManager(registry=Registry(tmp_path / "r"), memory_budget=int(need * 2.5))
    notes: list[str] = []
    try:
        a = manager.load(str(tiny_model_dir), "a")
        b = manager.load(str(tiny_model_dir), "b")
        a.touch()
        time.sleep(0.01)
        b.touch()  # a is least recently used...
        with a.stream(LONG) as busy:  # ...but busy, so b goes
            next(busy)
            manager.load(str(tiny_model_dir), "c", on_message=notes.append)
        assert manager.names() == ["a", "c"] and not pid_alive(b.pid)
        assert len(notes) == 1 and "unloaded 'b'" in notes[0] and "make room" in notes[0]
        manager.touch("c")
        manager.load(str(tiny_model_dir), "d", on_message=notes.append)  # a is LRU and idle now
        assert manager.names() == ["c", "d"] and "unloaded 'a'" in notes[1]
    finally:
        manager.close()


def test_keep_alive_unloads_idle_runner(tmp_path, tiny_model_dir) -> None:
    notes: list[str] = []
    manager = RunnerManager(registry=Registry(tmp_path / "r"), keep_alive=0.5,
                            on_message=notes.append)
    try:
        client = manager.load(str(tiny_model_dir), "idle")
        deadline = time.monotonic() + 5
        while manager.names() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert manager.names() == [] and wait_gone(client.pid, 5) is not None
        deadline = time.monotonic() + 5
        while not notes and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "keep_alive" in notes[0]
    finally:
        manager.close()


KERNEL = """
import sys
from mlx_notebook.control.manager import get_manager
client = get_manager().load(sys.argv[1])
print(client.pid, flush=True)
sys.stdin.readline()
"""


def test_sigterm_to_owner_stops_its_runners(tiny_model_dir, tmp_path) -> None:
    import subprocess
    import sys

    owner = subprocess.Popen([sys.executable, "-c", KERNEL, str(tiny_model_dir)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "MLX_NOTEBOOK_CACHE": str(tmp_path)})
    runner_pid = None
    try:
        runner_pid = int(owner.stdout.readline())
        owner.terminate()
        assert owner.wait(10) == -signal.SIGTERM  # cleaned up, then died of SIGTERM as before
        assert wait_gone(runner_pid, 3) is not None
        assert Registry(tmp_path / "runners").entries() == []
    finally:
        reap_owner(owner, runner_pid)

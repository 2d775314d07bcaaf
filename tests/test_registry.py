"""The registry of live runners: private files, stale entries reaped, recycled pids spared."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys

import pytest

from mlx_notebook.control.registry import Registry, RegistryEntry, process_create_time
from tests.runner_process import pid_alive, wait_gone


@pytest.fixture
def sleeper():
    """A stand-in for a runner left behind: a real process we can reap."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                            start_new_session=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def dead_process() -> tuple[int, float]:
    """The pid and start time of a process that has exited (a SIGKILLed kernel)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    create_time = process_create_time(proc.pid)
    proc.kill()
    proc.wait()
    return proc.pid, create_time


def write_entry(registry: Registry, **fields) -> None:
    entry = RegistryEntry(**{"port": 1, "spec": "demo", **fields})
    path = registry.directory / f"runner-{entry.pid}.json"
    path.write_text(json.dumps(entry.__dict__))


def test_entry_files_are_private(tmp_path, sleeper) -> None:
    registry = Registry(tmp_path / "reg")
    entry = registry.add(sleeper.pid, port=1234, spec="demo", name="d")
    assert entry is not None and entry.kernel_pid == os.getpid()
    (path,) = registry.directory.glob("runner-*.json")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(registry.directory.stat().st_mode) == 0o700
    assert registry.entries() == [entry]
    assert registry.reap_stale() == [] and pid_alive(sleeper.pid)  # its owner (we) is alive
    registry.remove(sleeper.pid)
    assert registry.entries() == []


def test_stale_entry_is_reaped(tmp_path, sleeper) -> None:
    registry = Registry(tmp_path / "reg")
    owner_pid, owner_time = dead_process()
    write_entry(registry, pid=sleeper.pid, create_time=process_create_time(sleeper.pid),
                kernel_pid=owner_pid, kernel_create_time=owner_time)
    reaped = registry.reap_stale(grace=2.0)
    assert [e.pid for e in reaped] == [sleeper.pid]
    assert wait_gone(sleeper.pid, 3) is not None and registry.entries() == []


def test_recycled_pid_is_never_killed(tmp_path, sleeper) -> None:
    registry = Registry(tmp_path / "reg")
    owner_pid, owner_time = dead_process()
    write_entry(registry, pid=sleeper.pid, create_time=process_create_time(sleeper.pid) - 1000,
                kernel_pid=owner_pid, kernel_create_time=owner_time)
    (tmp_path / "reg" / "runner-999.json").write_text("{not json")
    assert registry.reap_stale() == []
    assert pid_alive(sleeper.pid) and registry.entries() == []


def test_first_manager_reaps_stale_runners(tmp_path, sleeper) -> None:
    cache = tmp_path / "cache"
    registry = Registry(cache / "runners")
    owner_pid, owner_time = dead_process()
    write_entry(registry, pid=sleeper.pid, create_time=process_create_time(sleeper.pid),
                kernel_pid=owner_pid, kernel_create_time=owner_time)
    code = "from mlx_notebook.control.manager import get_manager; get_manager()"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30,
                   env={**os.environ, "MLX_NOTEBOOK_CACHE": str(cache)})
    assert wait_gone(sleeper.pid, 3) is not None and registry.entries() == []


def test_an_existing_registry_folder_is_made_private(tmp_path, monkeypatch) -> None:
    from mlx_notebook.paths import registry_dir

    monkeypatch.setenv("MLX_NOTEBOOK_CACHE", str(tmp_path / "cache"))
    (tmp_path / "cache" / "runners").mkdir(parents=True, mode=0o755)
    (tmp_path / "cache" / "runners").chmod(0o755)  # made wide by an older version, or a user
    assert stat.S_IMODE(registry_dir().stat().st_mode) == 0o700
    wide = tmp_path / "wide"
    wide.mkdir(mode=0o777)
    wide.chmod(0o777)
    assert stat.S_IMODE(Registry(wide).directory.stat().st_mode) == 0o700


def test_another_hosts_entry_is_left_alone(tmp_path, sleeper) -> None:
    """A cache shared over NFS: another machine's live runner must not look stale here."""
    registry = Registry(tmp_path / "reg")
    owner_pid, owner_time = dead_process()  # its pid means nothing on the other host
    write_entry(registry, pid=sleeper.pid, create_time=process_create_time(sleeper.pid),
                kernel_pid=owner_pid, kernel_create_time=owner_time, host="another-machine")
    assert registry.reap_stale() == [] and pid_alive(sleeper.pid)
    assert [e.host for e in registry.entries()] == ["another-machine"]
    entry = registry.add(sleeper.pid, port=1, spec="demo")
    assert entry is not None and entry.host == socket.gethostname()

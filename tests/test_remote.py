"""Runners started by hand (loopback and this machine's LAN address), attached with connect.

Every behaviour goes through both roads in (``%mlx connect`` and ``mn.connect``);
the runners are real processes, killed by pid at the end.
"""

from __future__ import annotations

import re
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell

import mlx_notebook as mn
from mlx_notebook import api
from mlx_notebook.control.manager import RunnerManager
from mlx_notebook.control.registry import Registry
from mlx_notebook.control.remote import RemoteRunner, normalize_url
from mlx_notebook.errors import ProtocolError, RunnerUnavailableError
from tests import frontend_helpers
from tests.frontend_helpers import Entry
from tests.runner_process import HandStarted, pid_alive, started_by_hand, wait_gone

shell = frontend_helpers.shell  # fixtures
entry = frontend_helpers.entry
VAR = "MLX_TEST_REMOTE_TOKEN"


def lan_address() -> str | None:
    """A non-loopback IPv4 address of this machine, or None if it has none."""
    try:
        out = subprocess.run(["ip", "-4", "-o", "addr", "show", "scope", "global"],
                             capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        out = ""
    for address in re.findall(r"inet (\d+\.\d+\.\d+\.\d+)/", out):
        return address
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("192.0.2.1", 9))  # no packet is sent: this only picks a route
            address = probe.getsockname()[0]
    except OSError:
        return None
    return None if address.startswith("127.") else address


@pytest.fixture(scope="module", params=["loopback", "lan"])
def hand_runner(request: pytest.FixtureRequest, tiny_model_dir: Path) -> Iterator[HandStarted]:
    """A tiny-model runner started by hand, on 127.0.0.1 or on the LAN address with a token."""
    if request.param == "loopback":
        host, extra = "127.0.0.1", ["--no-stdin-watch"]
    else:
        host = lan_address()
        if host is None:
            pytest.skip("this machine has no non-loopback address")
        extra = ["--allow-remote", "--no-stdin-watch"]
    with started_by_hand(str(tiny_model_dir), host, *extra) as runner:
        yield runner


@pytest.fixture
def token_env(monkeypatch: pytest.MonkeyPatch, hand_runner: HandStarted) -> str:
    monkeypatch.setenv(VAR, hand_runner.token)
    return VAR


@pytest.fixture(autouse=True)
def _forget_connections() -> Iterator[None]:
    yield
    mn.unload(all=True)  # disconnects only


def still_serving(runner: HandStarted) -> bool:
    response = httpx2.get(runner.url + "/v1/status", timeout=5, trust_env=False,
                          headers={"Authorization": f"Bearer {runner.token}"})
    return runner.process.poll() is None and response.json()["state"] == "ready"


def test_connected_runner_works_like_a_loaded_one(
        entry: Entry, shell: InteractiveShell, hand_runner: HandStarted, token_env: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    entry.connect(hand_runner.url, token_env, name="far")
    assert api.default_model() == "far"
    r = entry.generate("Hello", max_tokens=4, model="far")
    assert r.completion_tokens == 4 and r.name == "far" and r.model == "tiny"
    assert mn.tokenize("hello world", model="far").tokens
    assert mn.status("far").pid == hand_runner.process.pid
    (row,) = mn.ps()
    assert (row.name, row.state, row.pid, row.url) == ("far", "ready", hand_runner.process.pid,
                                                       hand_runner.url)
    assert row.memory_active > 0 and row.model == "tiny"
    capsys.readouterr()
    shell.run_line_magic("mlx", "ps")
    shell.run_line_magic("mlx", "status")
    out = capsys.readouterr().out
    assert hand_runner.url in out and "far: " in out
    assert hand_runner.token not in out
    entry.unload("far")
    assert mn.ps() == []
    assert still_serving(hand_runner)  # unload only disconnected


def test_default_name_and_nothing_recorded_for_reaping(
        hand_runner: HandStarted, tmp_path: Path) -> None:
    registry = Registry(tmp_path / "registry")
    manager = RunnerManager(registry=registry, keep_alive=0.2)
    try:
        client = manager.connect(hand_runner.url, token=hand_runner.token)
        assert client.name == f"tiny@{hand_runner.handshake.host}" and client.remote
        assert registry.entries() == []
        time.sleep(1.0)  # several keep-alive rounds
        assert manager.names() == [client.name]
        assert manager._least_recently_used_idle() is None  # never evicted to make room
    finally:
        manager.close()
    assert still_serving(hand_runner)


def test_wrong_token_is_a_clear_error(entry: Entry, hand_runner: HandStarted,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(VAR, "not-the-token")
    with pytest.raises(ProtocolError, match=f"wrong token for {re.escape(hand_runner.url)}") as info:
        entry.connect(hand_runner.url, VAR)
    assert "\n" not in str(info.value) and f"${VAR}" in str(info.value)
    assert mn.ps() == []


@pytest.mark.parametrize("value", [None, ""])
def test_missing_token_variable_is_a_usage_error(shell: InteractiveShell,
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 value: str | None) -> None:
    if value is None:
        monkeypatch.delenv(VAR, raising=False)
    else:
        monkeypatch.setenv(VAR, value)
    with pytest.raises(UsageError, match=f"{VAR} is not set or is empty") as info:
        shell.run_line_magic("mlx", f"connect http://127.0.0.1:9 --token-env {VAR}")
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match=VAR):
        mn.connect("http://127.0.0.1:9", token_env=VAR)


@pytest.mark.parametrize(("line", "match"), [
    ("connect", "the following arguments are required: url"),
    ("connect ftp://h:1", "http:// or https://"),
    ("connect http://h", "HOST:PORT"),
    ("connect http://h:1/v1 ", "only http://HOST:PORT"),
    ("connect h:1 --token-env s3cr3t-value", "variable name"),
])
def test_bad_connect_lines(shell: InteractiveShell, monkeypatch: pytest.MonkeyPatch,
                           line: str, match: str) -> None:
    monkeypatch.setenv("MLX_REMOTE_TOKEN", "x")
    with pytest.raises(UsageError, match=match) as info:
        shell.run_line_magic("mlx", line)
    assert "\n" not in str(info.value)


def test_normalize_url() -> None:
    assert normalize_url("10.0.0.5:50123/") == "http://10.0.0.5:50123"
    assert normalize_url("http://[::1]:8/") == "http://[::1]:8"


def test_killed_remote_is_reported_and_the_kernel_stays_usable(
        entry: Entry, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with started_by_hand(str(tiny_model_dir), "127.0.0.1", "--no-stdin-watch") as doomed, \
            started_by_hand(str(tiny_model_dir), "127.0.0.1", "--no-stdin-watch") as other:
        monkeypatch.setenv(VAR, doomed.token)
        entry.connect(doomed.url, VAR, name="doomed")
        monkeypatch.setenv(VAR, other.token)
        entry.connect(other.url, VAR, name="other")
        assert entry.generate("Hi", max_tokens=2, model="doomed").completion_tokens == 2
        doomed.process.kill()
        doomed.process.wait()
        with pytest.raises(RunnerUnavailableError,
                           match=f"'doomed'.*at {re.escape(doomed.url)} is gone") as info:
            entry.generate("Hi", max_tokens=2, model="doomed")
        assert "%mlx unload doomed" in str(info.value)
        rows = {row.name: row for row in mn.ps()}
        assert rows["doomed"].state == "unavailable" and rows["other"].state == "ready"
        assert entry.generate("Hi", max_tokens=2, model="other").completion_tokens == 2
        entry.unload("doomed")
        assert [row.name for row in mn.ps()] == ["other"]


def test_killed_mid_stream_names_the_url(monkeypatch: pytest.MonkeyPatch) -> None:
    with started_by_hand("fault-model", module="tests.fault_runner",
                         env={"FAULT_STREAM": "sigkill:2"}) as runner:
        monkeypatch.setenv(VAR, runner.token)
        mn.connect(runner.url, token_env=VAR, name="fault")
        with pytest.raises(RunnerUnavailableError, match=f"{re.escape(runner.url)} is gone"):
            mn.generate("Hi", model="fault")
        assert wait_gone(runner.process.pid, 5.0) is not None


def test_protocol_version_is_checked() -> None:
    with started_by_hand("fault-model", module="tests.fault_runner",
                         env={"FAULT_PROTOCOL": "99"}) as runner, \
            pytest.raises(ProtocolError, match="speaks protocol 99, this client 1"):
        RemoteRunner.connect(runner.url, runner.token)


def test_connect_waits_for_a_loading_runner_and_shutdown_stops_it() -> None:
    seen: list[str] = []
    with started_by_hand("fault-model", module="tests.fault_runner",
                         env={"FAULT_LOAD": "slow:1"}) as runner:
        remote = RemoteRunner.connect(runner.url, runner.token,
                                      on_progress=lambda s: seen.append(s.state))
        assert seen[0] == "loading" and seen[-1] == "ready"
        assert remote.pid == runner.process.pid and not remote.has_exited
        assert "fault-model" in repr(remote) and runner.token not in repr(remote)
        remote.close()
        assert pid_alive(runner.process.pid)
        with pytest.raises(RunnerUnavailableError, match="disconnected"):
            remote.status()
        RemoteRunner.connect(runner.url, runner.token).close(shutdown=True)
        assert wait_gone(runner.process.pid, 5.0) is not None

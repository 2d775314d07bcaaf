"""Start a real runner subprocess for tests that talk to it over raw HTTP."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import httpx2

from mlx_notebook.protocol import TOKEN_ENV, Handshake


@dataclass
class RawRunner:
    process: subprocess.Popen
    handshake: Handshake
    token: str
    http: httpx2.Client = field(repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.handshake.port}"

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def get(self, path: str, **kw) -> httpx2.Response:
        return self.http.get(self.url + path, headers=kw.pop("headers", self.headers()), **kw)

    def post(self, path: str, body=None, **kw) -> httpx2.Response:
        return self.http.post(self.url + path, json=body,
                              headers=kw.pop("headers", self.headers()), **kw)

    def wait_ready(self, timeout: float = 120.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.get("/v1/status").json()
            if status["state"] != "loading":
                return status
            if self.process.poll() is not None:
                raise RuntimeError(f"runner exited with {self.process.returncode}")
            time.sleep(0.1)
        raise TimeoutError("runner did not become ready")

    def complete(self, body: dict) -> tuple[str, list[dict]]:
        """Run a completion to the end; returns the text and every event."""
        events = []
        with self.http.stream("POST", self.url + "/v1/completion", json=body,
                              headers=self.headers()) as response:
            assert response.status_code == 200, response.read()
            for line in response.iter_lines():
                if line:
                    events.append(json.loads(line))
        text = "".join(e.get("content", "") for e in events if e["type"] == "chunk")
        return text, events


def spawn_runner(model: str, *args: str, token: str | None = None,
                 env: dict[str, str] | None = None) -> tuple[subprocess.Popen, str]:
    token = token if token is not None else secrets.token_hex(16)
    full_env = dict(os.environ, **(env or {}))
    if token:
        full_env[TOKEN_ENV] = token
    else:
        full_env.pop(TOKEN_ENV, None)
    process = subprocess.Popen(
        [sys.executable, "-m", "mlx_notebook.runner", "--model", model, *args],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=full_env, start_new_session=True)
    return process, token


@contextmanager
def running(model: str, *args: str, ready: bool = True) -> Iterator[RawRunner]:
    process, token = spawn_runner(model, *args)
    try:
        line = process.stdout.readline().decode()
        handshake = Handshake.from_line(line)
        with httpx2.Client(timeout=60) as http:
            runner = RawRunner(process, handshake, token, http)
            if ready:
                assert runner.wait_ready()["state"] == "ready"
            yield runner
    finally:
        stop(process)


@dataclass
class HandStarted:
    """A runner started the way a user starts one on another machine: by hand, with a URL."""

    process: subprocess.Popen
    handshake: Handshake
    token: str

    @property
    def url(self) -> str:
        return f"http://{self.handshake.host}:{self.handshake.port}"


@contextmanager
def started_by_hand(model: str, host: str = "127.0.0.1", *args: str,
                    module: str = "mlx_notebook.runner",
                    env: dict[str, str] | None = None) -> Iterator[HandStarted]:
    """``python -m mlx_notebook.runner --host HOST --no-stdin-watch``; stopped by pid at the end."""
    token = secrets.token_hex(16)
    full_env = dict(os.environ, **(env or {}), **{TOKEN_ENV: token})
    process = subprocess.Popen(
        [sys.executable, "-m", module, "--model", model, "--host", host, "--port", "0", *args],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        env=full_env, start_new_session=True)  # stdin stays open: the fault runner watches it
    try:
        handshake = Handshake.from_line(process.stdout.readline().decode())
        yield HandStarted(process, handshake, token)
    finally:
        stop(process)


def stop(process: subprocess.Popen, grace: float = 5.0) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    for stream in (process.stdin, process.stdout, process.stderr):
        if stream:
            stream.close()


def reap_owner(owner: subprocess.Popen, runner_pid: int | None) -> None:
    """Teardown for tests where a child process owns a runner: leave neither behind."""
    if owner.poll() is None:
        owner.kill()
        owner.wait()
    if runner_pid and pid_alive(runner_pid):
        os.kill(runner_pid, signal.SIGKILL)
    for pipe in (owner.stdin, owner.stdout, owner.stderr):
        if pipe:
            pipe.close()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_gone(pid: int, timeout: float) -> float | None:
    """Seconds until ``pid`` is gone, or None if it outlived ``timeout``."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if not pid_alive(pid):
            return time.monotonic() - start
        time.sleep(0.05)
    return None


__all__: Sequence[str] = ["RawRunner", "HandStarted", "spawn_runner", "running",
                        "started_by_hand", "stop", "reap_owner", "pid_alive",
                        "wait_gone"]

"""A registry of live runners on disk, so a later kernel can reap what a dead one left.

One small JSON file per runner in :func:`mlx_notebook.paths.registry_dir` (mode
0600, in a 0700 folder): the runner's pid and start time, its owner's, and the
machine they run on (a cache shared over NFS holds other hosts' records: their
pids mean nothing here, so they are left alone). A runner normally exits
by itself when its owner dies (stdin EOF, parent-pid watch); the registry is the
last line of defence. Stale entries are only acted on when the pid still belongs
to the very process we started (pid *and* create time match), so a recycled pid
is never killed.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import psutil

# psutil reports create_time with limited precision; the same process always gives
# the same number, a recycled pid practically never does.
_CREATE_TIME_SLACK = 0.05


def process_create_time(pid: int) -> float | None:
    """The start time of a live process, or None when there is no such process."""
    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None


def is_same_process(pid: int, create_time: float) -> bool:
    """True when ``pid`` is alive and is the process that started at ``create_time``."""
    now = process_create_time(pid)
    if now is None:
        return False
    try:
        if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
            return False
    except psutil.Error:
        return False
    return abs(now - create_time) <= _CREATE_TIME_SLACK


@dataclass(frozen=True)
class RegistryEntry:
    pid: int
    create_time: float
    kernel_pid: int
    kernel_create_time: float
    port: int | None
    spec: str
    name: str = ""
    started_at: float = 0.0
    host: str = ""  # socket.gethostname() of the machine it was made on ("": made here)

    @property
    def here(self) -> bool:
        """Made on this machine, so its pids are this machine's."""
        return self.host in ("", socket.gethostname())


class Registry:
    """The folder of runner records; ``directory`` defaults to the user's cache."""

    def __init__(self, directory: Path | str | None = None) -> None:
        self._directory = Path(directory) if directory is not None else None

    @property
    def directory(self) -> Path:
        from ..paths import private_dir, registry_dir

        return registry_dir() if self._directory is None else private_dir(self._directory)

    def _path(self, pid: int) -> Path:
        # The host in the name too: two machines sharing the folder can have the same pid.
        host = re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname())
        return self.directory / f"runner-{pid}@{host}.json"

    def add(self, pid: int, *, port: int | None, spec: str, name: str = "") -> RegistryEntry | None:
        """Record a runner owned by this process; None when the runner is already gone."""
        create_time = process_create_time(pid)
        if create_time is None:
            return None
        entry = RegistryEntry(
            pid=pid, create_time=create_time, kernel_pid=os.getpid(),
            kernel_create_time=process_create_time(os.getpid()) or 0.0,
            port=port, spec=spec, name=name, started_at=time.time(),
            host=socket.gethostname(),
        )
        path = self._path(pid)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(asdict(entry), fh)
        os.replace(tmp, path)
        return entry

    def remove(self, pid: int) -> None:
        for path in (self._path(pid), self.directory / f"runner-{pid}.json"):  # and the old name
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def entries(self) -> list[RegistryEntry]:
        """All readable records; unreadable ones are dropped (they cannot be acted on)."""
        known = {f.name for f in fields(RegistryEntry)}
        result = []
        for path in sorted(self.directory.glob("runner-*.json")):
            try:
                data = json.loads(path.read_text())
                result.append(RegistryEntry(**{k: v for k, v in data.items() if k in known}))
            except (OSError, ValueError, TypeError):
                with contextlib.suppress(OSError):
                    path.unlink()
        return result

    def reap_stale(self, grace: float = 3.0) -> list[RegistryEntry]:
        """Stop runners whose owner is dead; forget records of processes that are gone.

        Returns the entries whose runner was still running and was stopped.
        """
        reaped = []
        for entry in self.entries():
            if not entry.here:
                continue  # another machine's: only a kernel there can tell if it is stale
            if is_same_process(entry.kernel_pid, entry.kernel_create_time):
                continue  # its owner is alive and responsible for it
            if is_same_process(entry.pid, entry.create_time):
                _terminate(entry.pid, grace)
                reaped.append(entry)
            self.remove(entry.pid)
        return reaped


def _gone(proc: psutil.Process, timeout: float) -> bool:
    """Wait until the process is gone or a zombie (its parent may not be us to reap it)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def _terminate(pid: int, grace: float) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds; a process already gone is fine."""
    try:
        proc = psutil.Process(pid)
        proc.terminate()
        if not _gone(proc, grace):
            proc.kill()
            _gone(proc, grace)
    except psutil.Error:
        pass

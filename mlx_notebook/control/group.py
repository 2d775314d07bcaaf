"""RunnerGroup: one model sharded over several runner processes (MLX ring backend).

A :class:`RunnerGroup` is a :class:`~mlx_notebook.control.client.RunnerClient` for rank 0
(which serves the usual protocol) plus one :class:`~mlx_notebook.control.process.RunnerProcess`
per other rank, so the manager can hold it wherever it holds a client::

    with RunnerGroup("/models/llama", ranks=2) as group:          # on this machine
        text, done = group.complete("Hello")
    with RunnerGroup("/models/llama", hosts="hosts.json") as group:  # mlx.launch's hostfile
        print([(r.host, r.address) for r in group.status().ranks])

Each rank is started with a ring hostfile and its rank (MLX's own engine, without
``mlx.launch``, which merges the ranks' output and busy-loops a core): directly on
this machine, over ssh elsewhere (:mod:`mlx_notebook.control.hosts`). Each lives in its own
session and watches its parent; the token goes by environment, or by stdin over
ssh. When any rank dies the whole group is stopped, and every later error names
that rank, its host and its own error lines.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from .. import protocol
from ..errors import MLXNotebookError, RunnerExitedError
from ..protocol import ChunkEvent, CompletionRequest, DoneEvent
from .client import RunnerClient
from .hosts import HostPlan, HostsError, read_hosts, remote_command, remote_env
from .process import POLL_INTERVAL, RunnerProcess

__all__ = ["RunnerGroup", "loopback_hostfile"]

_TEARDOWN_GRACE = 2.0


def loopback_hostfile(ranks: int) -> list[list[str]]:
    """A ring hostfile for ``ranks`` processes on this machine (free loopback ports)."""
    ports: list[int] = []
    sockets = []
    try:
        for _ in range(ranks):  # hold them all open so no port is handed out twice
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in sockets:
            s.close()
    return [[f"127.0.0.1:{p}"] for p in ports]


class RunnerGroup(RunnerClient):
    """Ranks of one model, seen through rank 0; same methods as a client.

    ``ranks=N`` starts N processes on this machine. ``hosts`` (a :class:`HostPlan`,
    a hostfile path or a comma-separated list of IPs, as ``mlx.launch`` takes them)
    puts rank ``i`` on host ``i``: started directly when that host is this machine,
    over ssh otherwise (:mod:`mlx_notebook.control.hosts`). ``ring_port`` is the first ring
    port on the hosts (default ``$MLX_NOTEBOOK_RING_PORT`` or 32323, as ``mlx.launch``).
    """

    def __init__(self, spec: str, *, ranks: int = 2, shard: str = "tensor",
                 hosts: HostPlan | str | None = None, backend: str | None = None,
                 ring_port: int | None = None, **kwargs: Any) -> None:
        if hosts is None:
            if ranks < 2:
                raise ValueError(f"a runner group needs at least 2 ranks, not {ranks}")
            if backend not in (None, "ring"):
                raise HostsError(f"backend {backend!r}: local ranks use the ring backend")
            plan = HostPlan.loopback(ranks)
        else:
            plan = (hosts if isinstance(hosts, HostPlan)
                    else read_hosts(hosts, backend, python=kwargs.get("python")))
        super().__init__(spec, **kwargs)
        self.plan, self.hosts = plan, hosts
        self.ranks, self.shard, self.backend = plan.size, shard, plan.backend
        self.ring_port = ring_port
        self.hostfile = ""
        self._ring: list[list[str]] = []
        self._followers: list[RunnerProcess] = []
        self._first_dead: tuple[int, RunnerProcess] | None = None
        self._dead_lock = threading.Lock()
        self._closing = threading.Event()

    def __repr__(self) -> str:
        return f"<RunnerGroup {self.name!r} spec={self.spec!r} ranks={self.ranks} pid={self.pid}>"

    # ------------------------------------------------------------ lifecycle

    def _rank_args(self, rank: int) -> list[str]:
        return ["--rank", str(rank), "--shard", self.shard, "--backend", self.backend]

    def command(self, rank: int = 0) -> list[str]:  # type: ignore[override]
        """A local rank's argv; rank 0 is the one that serves HTTP."""
        return super().command() + self._rank_args(rank) + ["--hostfile", self.hostfile]

    def remote_argv(self, rank: int) -> list[str]:
        """A remote rank's runner argv, without ``--hostfile`` (its ssh script adds it)."""
        cmd = [self.python, "-m", self.runner_module, "--model", self.spec, "--port", "0",
               "--token-stdin"]
        if rank == 0:  # the notebook must reach it: listen on its address, token required
            cmd += ["--host", self.plan.hosts[0].address, "--allow-remote"]
        if self.context_length:
            cmd += ["--context", str(self.context_length)]
        return cmd + list(self.extra_args) + self._rank_args(rank)

    def _new_process(self, env: dict[str, str]) -> RunnerProcess:
        return self._rank_process(0, env)

    def _rank_process(self, rank: int, env: dict[str, str]) -> RunnerProcess:
        host = self.plan.hosts[rank]
        where = "" if host.local else f" on {host.ssh}"
        label = f"rank {rank}{where} of runner {self.name!r} (pid ?, {self.spec})"
        if host.local:
            # Local ranks share this machine's cores: split the BLAS threads between them.
            local = sum(h.local for h in self.plan.hosts)
            threads = self.env.get("OPENBLAS_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // local)))
            return RunnerProcess(self.command(rank), {**env, "OPENBLAS_NUM_THREADS": threads},
                                 label=label)
        token = env[protocol.TOKEN_ENV]
        argv = remote_command(host, self.remote_argv(rank), self._ring,
                              remote_env(env, self.env, self.plan))
        ssh_env = {k: v for k, v in env.items() if k != protocol.TOKEN_ENV}
        return RunnerProcess(argv, ssh_env, label=label, first_line=token.encode())

    def start(self) -> None:
        """Write the ring hostfile, start every rank, read rank 0's handshake, watch them all."""
        if self.hosts is None:
            self._ring = loopback_hostfile(self.ranks)
        else:
            self._ring = self.plan.ring(self.ring_port)
        fd, self.hostfile = tempfile.mkstemp(prefix="mlx-notebook-ring-", suffix=".json")
        with os.fdopen(fd, "w") as f:
            json.dump(self._ring, f)
        try:
            super().start()  # rank 0, with the token, the session and the parent watch
            env = self._process.env  # type: ignore[union-attr]
            if not self.plan.hosts[0].local:
                env = {**env, protocol.TOKEN_ENV: self._token}
            for rank in range(1, self.ranks):
                proc = self._rank_process(rank, env)
                self._followers.append(proc)
                proc.spawn(self.handshake_timeout)
                if proc.pid is not None:
                    self.registry.add(proc.pid, port=None, spec=self.spec,
                                      name=f"{self.name} rank {rank}")
        except BaseException:
            self.close(grace=1.0)
            raise
        threading.Thread(target=self._watch, name=f"group-{self.pid}-watch", daemon=True).start()

    def _ranks(self) -> list[tuple[int, RunnerProcess]]:
        procs = [self._process] if self._process is not None else []
        return list(enumerate(procs + self._followers))

    def _watch(self) -> None:
        """The first rank to die takes the group down: the others cannot go on without it."""
        while not self._closing.is_set():
            dead = next(((r, p) for r, p in self._ranks() if p.has_exited), None)
            if dead is not None:
                self._note_dead(*dead)
                self._stop_ranks(_TEARDOWN_GRACE)
                return
            self._closing.wait(POLL_INTERVAL)

    def _note_dead(self, rank: int, proc: RunnerProcess) -> None:
        with self._dead_lock:
            if self._first_dead is None:
                self._first_dead = (rank, proc)

    def _stop_ranks(self, grace: float) -> None:
        """Stop every rank at once (in parallel: each waits out its own grace)."""
        threads = []
        for _, proc in self._ranks():
            t = threading.Thread(target=proc.stop, args=(grace,), daemon=True)
            t.start()
            threads.append(t)
        for t in threads:
            t.join(grace + 10.0)

    def close(self, grace: float = 5.0) -> None:
        """Stop every rank (rank 0 asked first, which tells the others), no process left behind."""
        self._closing.set()
        follower_stop = threading.Thread(target=self._close_followers, args=(grace,), daemon=True)
        follower_stop.start()
        super().close(grace)  # rank 0: shutdown request, stdin EOF, SIGTERM, SIGKILL
        follower_stop.join(grace + 10.0)
        if self.hostfile:
            with contextlib.suppress(OSError):
                os.unlink(self.hostfile)

    def _close_followers(self, grace: float) -> None:
        for proc in self._followers:
            # Rank 0's shutdown ends their loop; the ladder is for the ones that do not follow.
            proc.stop(grace)
            if proc.has_exited and proc.pid is not None:
                self.registry.remove(proc.pid)

    # ------------------------------------------------------------ state

    @property
    def pids(self) -> list[int]:
        """Every rank's pid, rank 0 first."""
        return [p.pid for _, p in self._ranks() if p.pid is not None]

    @property
    def has_exited(self) -> bool:
        """True once any rank has exited: a group with a rank missing cannot decode."""
        return any(p.has_exited for _, p in self._ranks())

    def _wait_exit(self, timeout: float) -> bool:
        ranks = self._ranks()
        left = timeout
        while not any(p.has_exited for _, p in ranks):
            if left <= 0:
                return False
            time.sleep(min(POLL_INTERVAL, left))
            left -= POLL_INTERVAL
        return True

    def _dead_rank(self) -> tuple[int, RunnerProcess] | None:
        if self._first_dead is None:
            dead = next(((r, p) for r, p in self._ranks() if p.has_exited), None)
            if dead is not None:
                self._note_dead(*dead)
        return self._first_dead

    def _exit_message(self, what: str) -> str:
        dead = self._dead_rank()
        if dead is None:
            return super()._exit_message(what)
        rank, proc = dead
        return proc.exit_message(what) + " (the runner group was stopped)"

    def error_lines(self) -> list[str]:
        dead = self._dead_rank()
        return dead[1].tail.error_lines() if dead else super().error_lines()

    def exit_description(self) -> str:
        dead = self._dead_rank()
        if dead is None:
            return super().exit_description()
        return f"rank {dead[0]} {dead[1].exit_description()}"

    # ------------------------------------------------------------ errors name the dead rank

    @contextlib.contextmanager
    def _naming_dead_rank(self, what: str) -> Iterator[None]:
        """Rank 0 only knows "a peer was lost"; we know which rank it was."""
        try:
            yield
        except MLXNotebookError as exc:
            if isinstance(exc, RunnerExitedError) or not self._wait_exit(1.5):
                raise
            raise RunnerExitedError(self._exit_message(what)) from exc

    def stream(self, request: CompletionRequest | str) -> Any:
        with self._naming_dead_rank("while starting a completion"):
            return _GroupStream(super().stream(request), self)

    def astream(self, request: CompletionRequest | str, *,
                on_done: Callable[[DoneEvent], None] | None = None) -> AsyncIterator[ChunkEvent]:
        inner = super().astream(request, on_done=on_done)

        async def events() -> AsyncIterator[ChunkEvent]:
            with self._naming_dead_rank("during the completion"):
                async for chunk in inner:
                    yield chunk

        return events()

    def status(self) -> protocol.Status:
        with self._naming_dead_rank("during status"):
            return super().status()


class _GroupStream:
    """A CompletionStream whose errors name the rank that died."""

    def __init__(self, inner: Any, group: RunnerGroup) -> None:
        self._inner, self._group = inner, group

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def __enter__(self) -> _GroupStream:
        self._inner.__enter__()
        return self

    def __exit__(self, *exc: object) -> Any:
        return self._inner.__exit__(*exc)

    def __iter__(self) -> _GroupStream:
        return self

    def __next__(self) -> ChunkEvent:
        with self._group._naming_dead_rank("during the completion"):
            return next(self._inner)

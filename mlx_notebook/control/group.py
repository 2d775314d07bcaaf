"""RunnerGroup: one model sharded over several runner processes (MLX ring backend).

A :class:`RunnerGroup` is a connection to rank 0 (which serves the usual
protocol) owned by a :class:`RankGroup`: one
:class:`~mlx_notebook.control.process.RunnerProcess` per rank, so the manager
holds it wherever it holds a client::

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
import secrets
import socket
import tempfile
import threading
import time
from collections.abc import Sequence

from .. import protocol
from ..errors import InvalidArgumentError, MLXNotebookError, RunnerExitedError
from .client import LocalProcess, RunnerLaunch
from .connection import RunnerConnection
from .hosts import HostPlan, HostsError, read_hosts, remote_command, remote_env, remote_stdin
from .process import POLL_INTERVAL, RunnerProcess
from .registry import Registry

__all__ = ["RankGroup", "RunnerGroup", "loopback_hostfile"]

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


class RankGroup(LocalProcess):
    """The owner of a runner group's ranks: rank 0 serves HTTP, any death ends them all.

    It is a :class:`~.client.LocalProcess` for rank 0 (same start, stop and
    load-failure story) that also starts, watches and stops the other ranks, and
    names the rank that died in every error.
    """

    def __init__(self, launch: RunnerLaunch, plan: HostPlan, *, shard: str,
                 ring_port: int | None = None, local_ring: bool = True) -> None:
        super().__init__(launch)
        self.plan, self.shard, self.ring_port = plan, shard, ring_port
        self.local_ring = local_ring  # every rank on loopback: pick free ports here
        self.hostfile = ""
        self.ring: list[list[str]] = []
        self.followers: list[RunnerProcess] = []
        self._first_dead: tuple[int, RunnerProcess] | None = None
        self._dead_lock = threading.Lock()
        self._closing = threading.Event()

    # ------------------------------------------------------------ starting

    def _rank_args(self, rank: int) -> list[str]:
        return ["--rank", str(rank), "--shard", self.shard, "--backend", self.plan.backend]

    def local_argv(self, rank: int) -> list[str]:
        """A local rank's argv; rank 0 is the one that serves HTTP."""
        return self.launch.argv() + self._rank_args(rank) + ["--hostfile", self.hostfile]

    def remote_argv(self, rank: int) -> list[str]:
        """A remote rank's runner argv, without ``--hostfile`` (its ssh script adds it)."""
        launch = self.launch
        cmd = [launch.python, "-m", launch.runner_module, "--model", launch.spec, "--port", "0",
               "--token-stdin"]
        if rank == 0:  # the notebook must reach it: listen on its address, token required
            cmd += ["--host", self.plan.hosts[0].address, "--allow-remote"]
        if launch.context_length:
            cmd += ["--context", str(launch.context_length)]
        return cmd + list(launch.extra_args) + self._rank_args(rank)

    def _rank_process(self, conn: RunnerConnection, rank: int, env: dict[str, str],
                      ) -> RunnerProcess:
        host = self.plan.hosts[rank]
        where = "" if host.local else f" on {host.ssh}"
        label = f"rank {rank}{where} of runner {conn.name!r} (pid ?, {conn.spec})"
        if host.local:
            # Local ranks share this machine's cores: split the BLAS threads between them.
            local = sum(h.local for h in self.plan.hosts)
            threads = self.launch.env.get("OPENBLAS_NUM_THREADS",
                                          str(max(1, (os.cpu_count() or 1) // local)))
            return RunnerProcess(self.local_argv(rank), {**env, "OPENBLAS_NUM_THREADS": threads},
                                 label=label)
        # The environment and the token go on ssh's stdin: a command line is visible to ps.
        stdin = remote_stdin(remote_env(env, self.launch.env, self.plan), env[protocol.TOKEN_ENV])
        ssh_env = {k: v for k, v in env.items() if k != protocol.TOKEN_ENV}
        return RunnerProcess(remote_command(host, self.remote_argv(rank), self.ring), ssh_env,
                             label=label, first_line=stdin)

    def start(self, conn: RunnerConnection, token: str) -> tuple[str, int]:
        """Write the ring hostfile, start every rank, read rank 0's handshake, watch them all."""
        self.ring = (loopback_hostfile(self.plan.size) if self.local_ring
                     else self.plan.ring(self.ring_port))
        fd, self.hostfile = tempfile.mkstemp(prefix="mlx-notebook-ring-", suffix=".json")
        with os.fdopen(fd, "w") as f:
            json.dump(self.ring, f)
        env = self.launch.environment(token)
        registry = self.launch.registry
        try:
            self.process = self._rank_process(conn, 0, env)
            hs = self.process.spawn(self.launch.handshake_timeout)
            if self.process.pid is not None:
                registry.add(self.process.pid, port=hs.port, spec=conn.spec, name=conn.name)
            for rank in range(1, self.plan.size):
                proc = self._rank_process(conn, rank, env)
                self.followers.append(proc)
                proc.spawn(self.launch.handshake_timeout)
                if proc.pid is not None:
                    registry.add(proc.pid, port=None, spec=conn.spec,
                                 name=f"{conn.name} rank {rank}")
        except BaseException:
            conn.close(grace=1.0)
            raise
        threading.Thread(target=self._watch, name=f"group-{self.pid}-watch", daemon=True).start()
        return hs.host, hs.port

    # ------------------------------------------------------------ watching

    def ranks(self) -> list[tuple[int, RunnerProcess]]:
        procs = [self.process] if self.process is not None else []
        return list(enumerate(procs + self.followers))

    @property
    def pids(self) -> list[int]:
        return [p.pid for _, p in self.ranks() if p.pid is not None]

    def _watch(self) -> None:
        """The first rank to die takes the group down: the others cannot go on without it."""
        while not self._closing.is_set():
            dead = next(((r, p) for r, p in self.ranks() if p.has_exited), None)
            if dead is not None:
                self._note_dead(*dead)
                self._stop_ranks(_TEARDOWN_GRACE)
                return
            self._closing.wait(POLL_INTERVAL)

    def _note_dead(self, rank: int, proc: RunnerProcess) -> None:
        with self._dead_lock:
            if self._first_dead is None:
                self._first_dead = (rank, proc)

    def _dead_rank(self) -> tuple[int, RunnerProcess] | None:
        if self._first_dead is None:
            dead = next(((r, p) for r, p in self.ranks() if p.has_exited), None)
            if dead is not None:
                self._note_dead(*dead)
        return self._first_dead

    @property
    def has_exited(self) -> bool:
        """True once any rank has exited: a group with a rank missing cannot decode."""
        return any(p.has_exited for _, p in self.ranks())

    @property
    def returncode(self) -> int | None:
        dead = self._dead_rank()
        return dead[1].returncode if dead else super().returncode

    def wait_exit(self, timeout: float) -> bool:
        ranks = self.ranks()
        left = timeout
        while not any(p.has_exited for _, p in ranks):
            if left <= 0:
                return False
            time.sleep(min(POLL_INTERVAL, left))
            left -= POLL_INTERVAL
        return True

    def exit_message(self, what: str) -> str:
        dead = self._dead_rank()
        if dead is None:
            return super().exit_message(what)
        return dead[1].exit_message(what) + " (the runner group was stopped)"

    def error_lines(self) -> list[str]:
        dead = self._dead_rank()
        return dead[1].tail.error_lines() if dead else super().error_lines()

    def exit_description(self) -> str:
        dead = self._dead_rank()
        if dead is None:
            return super().exit_description()
        return f"rank {dead[0]} {dead[1].exit_description()}"

    def explain(self, exc: MLXNotebookError, what: str) -> MLXNotebookError:
        """Rank 0 only knows "a peer was lost"; we know which rank it was."""
        if isinstance(exc, RunnerExitedError) or not self.wait_exit(1.5):
            return exc
        return RunnerExitedError(self.exit_message(what), returncode=self.returncode)

    # ------------------------------------------------------------ stopping

    def _stop_ranks(self, grace: float) -> None:
        """Stop every rank at once (in parallel: each waits out its own grace)."""
        threads = []
        for _, proc in self.ranks():
            t = threading.Thread(target=proc.stop, args=(grace,), daemon=True)
            t.start()
            threads.append(t)
        for t in threads:
            t.join(grace + 10.0)

    def stop(self, conn: RunnerConnection, grace: float, *, shutdown: bool) -> None:
        """Stop every rank (rank 0 asked first, which tells the others), no process left behind."""
        self._closing.set()
        follower_stop = threading.Thread(target=self._stop_followers, args=(grace,), daemon=True)
        follower_stop.start()
        super().stop(conn, grace, shutdown=shutdown)  # rank 0: shutdown, stdin EOF, SIGTERM, SIGKILL
        follower_stop.join(grace + 10.0)
        if self.hostfile:
            with contextlib.suppress(OSError):
                os.unlink(self.hostfile)

    def _stop_followers(self, grace: float) -> None:
        for proc in self.followers:
            # Rank 0's shutdown ends their loop; the ladder is for the ones that do not follow.
            proc.stop(grace)
            if proc.has_exited and proc.pid is not None:
                self.launch.registry.remove(proc.pid)


class RunnerGroup(RunnerConnection):
    """Ranks of one model, seen through rank 0; same methods as a client.

    ``ranks=N`` starts N processes on this machine. ``hosts`` (a :class:`HostPlan`,
    a hostfile path or a comma-separated list of IPs, as ``mlx.launch`` takes them)
    puts rank ``i`` on host ``i``: started directly when that host is this machine,
    over ssh otherwise (:mod:`mlx_notebook.control.hosts`). ``ring_port`` is the first ring
    port on the hosts (default ``$MLX_NOTEBOOK_RING_PORT`` or 32323, as ``mlx.launch``).
    """

    owner: RankGroup

    def __init__(self, spec: str, *, ranks: int = 2, shard: str = "tensor",
                 hosts: HostPlan | str | None = None, backend: str | None = None,
                 ring_port: int | None = None, name: str | None = None,
                 python: str | None = None, context_length: int | None = None,
                 env: dict[str, str] | None = None, extra_args: Sequence[str] = (),
                 runner_module: str = "mlx_notebook.runner", registry: Registry | None = None,
                 handshake_timeout: float = 60.0, stream_read_timeout: float | None = None,
                 ) -> None:
        if hosts is None:
            if ranks < 2:
                raise InvalidArgumentError(f"a runner group needs at least 2 ranks, not {ranks}",
                                           field="ranks")
            if backend not in (None, "ring"):
                raise HostsError(f"backend {backend!r}: local ranks use the ring backend")
            plan = HostPlan.loopback(ranks)
        else:
            plan = (hosts if isinstance(hosts, HostPlan)
                    else read_hosts(hosts, backend, python=python))
        launch = RunnerLaunch(spec, python=python, context_length=context_length, env=env,
                              extra_args=extra_args, runner_module=runner_module,
                              registry=registry, handshake_timeout=handshake_timeout)
        owner = RankGroup(launch, plan, shard=shard, ring_port=ring_port,
                          local_ring=hosts is None)
        super().__init__(spec, owner, name=name, token=secrets.token_urlsafe(32),
                         stream_read_timeout=stream_read_timeout)
        self.context_length = context_length

    def __repr__(self) -> str:
        return f"<RunnerGroup {self.name!r} spec={self.spec!r} ranks={self.ranks} pid={self.pid}>"

    @property
    def ranks(self) -> int:
        return self.owner.plan.size

    @property
    def plan(self) -> HostPlan:
        return self.owner.plan

    @property
    def pids(self) -> list[int]:
        """Every rank's pid, rank 0 first."""
        return self.owner.pids

    @property
    def hostfile(self) -> str:
        """The ring hostfile the local ranks read (removed when the group stops)."""
        return self.owner.hostfile

"""Where the ranks of a runner group run, and how each one is started there.

The hosts come in ``mlx.launch``'s own forms, read by MLX's own reader (in a
runner-side subprocess: the kernel never imports MLX): a hostfile
(``[{"ssh": "mac1", "ips": ["10.0.0.1"]}, ...]``, or ``{"backend": ..., "envs": [...],
"hosts": [...]}``) or a comma-separated list of IPs. Rank ``i`` runs on host ``i``.
The ring addresses are laid out as ``mlx.launch`` lays them out (one port per rank
and IP, counting up from a starting port).

A rank on this machine is started directly; a rank elsewhere through ``ssh HOST
SCRIPT``, one ssh per rank, which is what ``mlx.launch`` does too. Doing it here
rather than through ``mlx.launch`` keeps each rank's stdout (its handshake) and
stderr (its error lines) apart, and avoids the launcher's busy loop. ssh passes no
environment, and a command line is visible to ``ps`` on both machines, so the
rank's environment (which may hold an ``HF_TOKEN``) and then its token go over
ssh's stdin: the script reads the exports, the runner reads the token line. ssh's
stdin is also the remote rank's parent watch: when this side goes, the remote
runner sees EOF and exits.
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ..errors import HostsError
from ..protocol import TOKEN_ENV

__all__ = ["HostPlan", "HostsError", "RankHost", "read_hosts", "remote_command", "remote_env",
           "remote_stdin", "RING_PORT_ENV", "SSH_ENV"]

SSH_ENV = "MLX_NOTEBOOK_SSH"  # the ssh command line (default "ssh"), e.g. "ssh -F ~/.ssh/ring"
DEFAULT_RING_PORT = 32323  # mlx.launch's default starting port
RING_PORT_ENV = "MLX_NOTEBOOK_RING_PORT"  # another starting port (a firewall's, say)
LOCAL_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})
SUPPORTED_BACKENDS = ("ring",)
_ENV_END = "__mlx_notebook_env_end__"  # ends the exports a remote script reads from stdin
# Settings a remote rank needs to find the same model the same way (their values, not secrets).
PASSED_ENV = ("PYTHONPATH", "HF_HOME", "HF_HUB_CACHE", "HF_HUB_OFFLINE", "MLX_NOTEBOOK_CACHE",
              "MLX_NOTEBOOK_OPENBLAS")


@dataclass(frozen=True)
class RankHost:
    """One rank's host: where to start it (``ssh``) and the IPs its ring peers reach it on."""

    rank: int
    ssh: str
    ips: tuple[str, ...]

    @property
    def local(self) -> bool:
        """Started directly, without ssh (as ``mlx.launch`` does for 127.0.0.1)."""
        return self.ssh in LOCAL_NAMES or self.ssh == socket.gethostname()

    @property
    def address(self) -> str:
        """Where rank 0's HTTP server listens when it runs on this host (and not here)."""
        return self.ips[0] if self.ips else self.ssh


@dataclass(frozen=True)
class HostPlan:
    """Every rank's host, the MLX backend and the hostfile's extra environment."""

    hosts: tuple[RankHost, ...]
    backend: str = "ring"
    envs: tuple[str, ...] = ()  # "NAME=value" strings, as in MLX's hostfile
    source: str = ""  # what it was read from, for messages

    @property
    def size(self) -> int:
        return len(self.hosts)

    @property
    def remote(self) -> bool:
        return any(not h.local for h in self.hosts)

    def ring(self, port: int | None = None) -> list[list[str]]:
        """The ring hostfile every rank reads: one ``["ip:port", ...]`` per rank.

        Ports count up from ``port`` (default: ``$MLX_NOTEBOOK_RING_PORT`` or 32323).
        """
        port = port or int(os.environ.get(RING_PORT_ENV) or DEFAULT_RING_PORT)
        ring = []
        for host in self.hosts:
            ring.append([f"{ip}:{port + i}" for i, ip in enumerate(host.ips)])
            port += len(host.ips)
        return ring

    @classmethod
    def loopback(cls, ranks: int) -> HostPlan:
        """``ranks`` processes on this machine."""
        return cls(tuple(RankHost(r, "127.0.0.1", ("127.0.0.1",)) for r in range(ranks)))


def read_hosts(value: str, backend: str | None = None, *, python: str | None = None,
               ) -> HostPlan:
    """A :class:`HostPlan` from a hostfile path or a comma-separated list of IPs.

    MLX's own reader does the reading, in a runner-side subprocess
    (:mod:`mlx_notebook.runner.hostfile`): the kernel never imports MLX.
    """
    from .client import runner_env, runner_python

    python = runner_python(python)
    try:
        done = subprocess.run([python, "-m", "mlx_notebook.runner.hostfile", value],
                              env=runner_env(python, dict(os.environ)), capture_output=True,
                              text=True, timeout=60)
        answer = json.loads(done.stdout.strip().splitlines()[-1])
    except (OSError, subprocess.TimeoutExpired, ValueError, IndexError) as exc:
        raise HostsError(f"--hosts {value!r}: could not read it with {python!r}: {exc}") from exc
    if "error" in answer:
        raise HostsError(f"--hosts {value!r}: {answer['error']}")
    hosts = tuple(RankHost(h["rank"], h["ssh"], tuple(h["ips"])) for h in answer["hosts"])
    chosen = backend or answer["backend"] or "ring"
    if chosen not in SUPPORTED_BACKENDS:
        raise HostsError(
            f"backend {chosen!r} is not started by mlx_notebook (only {', '.join(SUPPORTED_BACKENDS)}"
            "): start the ranks with mlx.launch and attach with %mlx connect (docs/distributed.md)")
    if len(hosts) < 2:
        raise HostsError(f"--hosts {value!r} lists {len(hosts)} host; a runner group needs 2 or more")
    flags = [h.ssh for h in hosts if h.ssh.startswith("-")]
    if flags:  # ssh would take it for an option (-oProxyCommand=... runs a command here)
        raise HostsError(f"--hosts {value!r}: host {flags[0]!r} starts with '-'; "
                         "an ssh host name cannot")
    missing = [h.ssh for h in hosts if not h.ips]
    if missing:
        raise HostsError(f"the ring backend needs an IP for every host; add \"ips\" for "
                         f"{', '.join(missing)} in {value!r}")
    return HostPlan(hosts, chosen, tuple(answer["envs"]), source=value)


def remote_command(host: RankHost, runner_argv: Sequence[str], ring: list[list[str]],
                   ) -> list[str]:
    """``ssh HOST SCRIPT``: write the ring hostfile there, then run the rank and report its end.

    ``runner_argv`` is the rank's argv without ``--hostfile``; the script adds it. The
    script first reads the rank's environment from stdin (:func:`remote_stdin`). The
    rank runs as the script's child (not ``exec``), so a signal that kills it is named.
    """
    if host.ssh.startswith("-"):
        raise HostsError(f"host {host.ssh!r} starts with '-'; an ssh host name cannot")
    python = runner_argv[0]
    who = f"rank {host.rank} on {host.ssh}"
    script = (
        f"cd {shlex.quote(os.getcwd())} 2>/dev/null; "
        f"e=; while IFS= read -r l && [ \"$l\" != {_ENV_END} ]; do e=\"$e$l\n\"; done; "
        "eval \"$e\"; unset e l; "
        f"if [ ! -x {shlex.quote(python)} ]; then printf 'mlx_notebook runner: %s: no Python at %s "
        "(every host needs the same environment at the same path)\\n' "
        f"{shlex.quote(who)} {shlex.quote(python)} >&2; exit 2; fi; "
        "f=$(mktemp) || exit 2; "
        f"printf '%s' {shlex.quote(json.dumps(ring))} >\"$f\"; "
        f"{shlex.join(runner_argv)} --hostfile \"$f\"; rc=$?; rm -f \"$f\"; "
        "if [ $rc -gt 128 ]; then printf 'mlx_notebook runner: %s was killed by SIG%s\\n' "
        f"{shlex.quote(who)} \"$(kill -l $((rc - 128)))\" >&2; fi; exit $rc"
    )
    ssh = shlex.split(os.environ.get(SSH_ENV) or "ssh")
    # No prompts, no pty; a dead link ends ssh within ~15 s, which ends the group.
    options = ["-T", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10",
               "-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=3"]
    return [*ssh, *options, host.ssh, script]


def remote_env(local_env: Mapping[str, str], client_env: Mapping[str, str],
               plan: HostPlan) -> dict[str, str]:
    """What a remote rank's script exports: the settings that find the model, the client's
    own variables and the hostfile's ``envs``; never the token."""
    env = {name: local_env[name] for name in PASSED_ENV if local_env.get(name)}
    env.update(client_env)
    env.pop(TOKEN_ENV, None)  # the runner reads it from stdin itself (--token-stdin)
    env["PYTHONUNBUFFERED"] = "1"
    for item in plan.envs:
        name, _, value = item.partition("=")
        env[name] = value
    return env


def remote_stdin(env: Mapping[str, str], token: str) -> bytes:
    """What a remote rank's ssh gets on stdin first: its exports, then the token line."""
    exports = "".join(f"export {name}={shlex.quote(value)}\n" for name, value in env.items()
                      if name.isidentifier())
    return f"{exports}{_ENV_END}\n{token}".encode()

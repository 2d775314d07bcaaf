"""Test hosts for runner groups across machines: network namespaces with their own sshd.

Each host is a Linux network namespace with its own address on a bridge, and a real
OpenSSH server listening there. A rank started with ``ssh ADDRESS ...`` runs inside
that namespace: it reaches the other ranks only over the bridge, through real TCP
between distinct addresses, as on separate machines. The namespaces share this
machine's file system and pid space, so the same Python and model paths work there
(as the docs ask of real hosts), and the tests can see and signal remote ranks.

Needs root, ``ip`` (iproute2) and ``sshd`` (openssh-server): ``scripts/test``
installs them. Where any is missing the fixture skips, saying which.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

# An address block from RFC 5737's documentation ranges is taken by eth0 here; this one
# is private and unlikely to be in use on a CI machine. The subnet is checked below.
_SUBNET = "10.213.{tag}"


@dataclass
class SshHosts:
    """``count`` namespaces reachable by ssh, and this machine's address on their bridge."""

    local_address: str
    addresses: list[str]
    ssh_command: str  # what MLX_NOTEBOOK_SSH must hold for ssh to reach them
    _cleanup: list[list[str]] = field(default_factory=list, repr=False)

    def hostfile(self, path: Path, ranks: list[str]) -> Path:
        """An mlx.launch hostfile; ``ranks[i]`` is ``"local"`` or a host index as a string."""
        import json

        hosts = []
        for where in ranks:
            if where == "local":
                hosts.append({"ssh": "127.0.0.1", "ips": [self.local_address]})
            else:
                address = self.addresses[int(where)]
                hosts.append({"ssh": address, "ips": [address]})
        path.write_text(json.dumps(hosts))
        return path

    def close(self) -> None:
        for cmd in reversed(self._cleanup):
            subprocess.run(cmd, capture_output=True, check=False)


def _run(*cmd: str) -> None:
    subprocess.run(list(cmd), check=True, capture_output=True, text=True)


def missing_tools() -> str | None:
    """Why these hosts cannot be made here, or None."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool, package in (("ip", "iproute2"), ("sshd", "openssh-server"), ("ssh", "openssh-client"),
                          ("ssh-keygen", "openssh-client")):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            return f"{tool} is missing (install {package})"
    return None


def make_ssh_hosts(workdir: Path, count: int = 2) -> SshHosts:
    """Start ``count`` namespaces on a bridge, each with an sshd that accepts one test key."""
    tag = os.getpid() % 200 + 20
    net = _SUBNET.format(tag=tag)
    prefix = f"mn{os.getpid() % 100000}"
    bridge = f"{prefix}br"
    workdir.mkdir(parents=True, exist_ok=True)
    key = workdir / "client_key"
    host_key = workdir / "host_key"
    for path in (key, host_key):
        _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path))
    (workdir / "authorized_keys").write_text((workdir / "client_key.pub").read_text())
    Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege separation directory
    sshd = shutil.which("sshd") or "/usr/sbin/sshd"
    hosts = SshHosts(
        local_address=f"{net}.1", addresses=[],
        ssh_command=(f"ssh -i {key} -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null "
                     "-o LogLevel=ERROR"))
    try:
        _run("ip", "link", "add", bridge, "type", "bridge")
        hosts._cleanup.append(["ip", "link", "del", bridge])
        _run("ip", "addr", "add", f"{net}.1/24", "dev", bridge)
        _run("ip", "link", "set", bridge, "up")
        for i in range(count):
            ns, outside, inside = f"{prefix}h{i}", f"{prefix}o{i}", f"{prefix}i{i}"
            address = f"{net}.{i + 2}"
            _run("ip", "netns", "add", ns)
            hosts._cleanup.append(["ip", "netns", "del", ns])
            _run("ip", "link", "add", outside, "type", "veth", "peer", "name", inside)
            hosts._cleanup.append(["ip", "link", "del", outside])
            _run("ip", "link", "set", outside, "master", bridge)
            _run("ip", "link", "set", outside, "up")
            _run("ip", "link", "set", inside, "netns", ns)
            _run("ip", "-n", ns, "addr", "add", f"{address}/24", "dev", inside)
            _run("ip", "-n", ns, "link", "set", inside, "up")
            _run("ip", "-n", ns, "link", "set", "lo", "up")
            pidfile = workdir / f"sshd-{i}.pid"
            _run("ip", "netns", "exec", ns, sshd, "-h", str(host_key),
                 "-o", f"ListenAddress={address}", "-o", f"PidFile={pidfile}",
                 "-o", f"AuthorizedKeysFile={workdir / 'authorized_keys'}",
                 "-o", "StrictModes=no", "-o", "UsePAM=no", "-o", "PermitRootLogin=yes")
            hosts._cleanup.append(["sh", "-c", f"kill $(cat {pidfile}) 2>/dev/null"])
            hosts.addresses.append(address)
        for address in hosts.addresses:
            _wait_for_ssh(hosts.ssh_command, address)
    except BaseException:
        hosts.close()
        raise
    return hosts


def _wait_for_ssh(ssh_command: str, address: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        done = subprocess.run([*ssh_command.split(), "-o", "BatchMode=yes", address, "true"],
                              capture_output=True, text=True, check=False)
        if done.returncode == 0:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"sshd on {address} did not answer: {done.stderr.strip()}")
        time.sleep(0.2)

"""Runner groups across hosts: ranks started over real ssh into network namespaces.

Every "host" is a network namespace with its own address and sshd (tests/ssh_hosts.py),
so the ranks meet over real TCP between distinct addresses, started the way they
are started on real machines: `ssh HOST SCRIPT`, with the token on stdin.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from mlx_notebook.control.client import RunnerClient
from mlx_notebook.control.group import RunnerGroup
from mlx_notebook.control.hosts import RING_PORT_ENV, SSH_ENV, HostsError, read_hosts
from mlx_notebook.control.registry import Registry
from mlx_notebook.errors import RunnerExitedError, RunnerStartError
from mlx_notebook.protocol import CompletionRequest, SamplingOptions
from tests import frontend_helpers
from tests.runner_process import pid_alive, reap_owner, wait_gone
from tests.ssh_hosts import SshHosts, make_ssh_hosts, missing_tools
from tests.tiny_model import make_tiny_model

shell = frontend_helpers.shell  # fixture

PROMPT = "The capital of France is"


def greedy(max_tokens: int = 24) -> CompletionRequest:
    return CompletionRequest(prompt=PROMPT, options=SamplingOptions(max_tokens=max_tokens))


@pytest.fixture(scope="module")
def hosts(tmp_path_factory) -> SshHosts:
    why = missing_tools()
    if why:
        pytest.skip(f"no test hosts: {why}")
    try:
        made = make_ssh_hosts(tmp_path_factory.mktemp("ssh-hosts"), count=2)
    except subprocess.CalledProcessError as exc:  # no CAP_NET_ADMIN in this container, say
        pytest.skip(f"no test hosts: {' '.join(exc.cmd)} failed: {exc.stderr.strip()}")
    except RuntimeError as exc:  # an sshd that never answered
        pytest.skip(f"no test hosts: {exc}")
    before = os.environ.get(SSH_ENV)
    os.environ[SSH_ENV] = made.ssh_command
    yield made
    if before is None:
        os.environ.pop(SSH_ENV, None)
    else:
        os.environ[SSH_ENV] = before
    made.close()


@pytest.fixture
def registry(tmp_path) -> Registry:
    return Registry(tmp_path / "registry")


_next_ring_port = [20000 + os.getpid() % 50 * 200]


@pytest.fixture
def ring_port(hosts) -> int:
    """A base port with 4 free ports above it, new for every test.

    Below the kernel's ephemeral range (32768 and up), so no outgoing connection of an
    earlier rank, in this namespace or the others, can hold one of them.
    """
    while True:
        base = _next_ring_port[0]
        _next_ring_port[0] += 4
        if all(_free(hosts.local_address, base + i) for i in range(4)):
            return base


def _free(address: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((address, port))
        except OSError:
            return False
    return True


def single_runner(model: Path, registry: Registry) -> str:
    with RunnerClient(str(model), registry=registry) as client:
        return client.complete(greedy())[0]


def assert_all_gone(pids: list[int]) -> None:
    for pid in pids:
        assert wait_gone(pid, 10) is not None, f"pid {pid} was left behind"


def test_tensor_parallel_over_ssh_gives_the_same_text(tiny_model_dir, hosts, registry,
                                                      ring_port, tmp_path):
    hostfile = hosts.hostfile(tmp_path / "hosts.json", ["local", "0"])
    alone = single_runner(tiny_model_dir, registry)
    with RunnerGroup(str(tiny_model_dir), hosts=str(hostfile), ring_port=ring_port,
                     registry=registry) as group:
        text, done = group.complete(greedy())
        assert text == alone
        text, done = group.complete(greedy())  # a prompt-cache hit, kept alike on both hosts
        assert text == alone and done.cached_tokens > 0
        ranks = group.status().ranks
        assert [r.address for r in ranks] == [hosts.local_address, hosts.addresses[0]]
        assert all(r.active > 0 for r in ranks)
        ssh_pid = group.pids[1]
        assert "ssh" in Path(f"/proc/{ssh_pid}/cmdline").read_bytes().decode()
        remote_pid = ranks[1].pid
        assert _netns_of(remote_pid) != _netns_of(os.getpid())  # it really runs "elsewhere"
    assert_all_gone([*group.pids, remote_pid])


def _netns_of(pid: int) -> str:
    return os.readlink(f"/proc/{pid}/ns/net")


def test_four_ranks_pipeline_over_two_hosts(hosts, registry, ring_port, tmp_path):
    """mlx-lm's qwen2 has pipeline(): 4 layers over 4 ranks, 3 of them on 2 other hosts."""
    model = make_tiny_model(tmp_path / "qwen2", model_type="qwen2", layers=4)
    alone = single_runner(model, registry)
    hostfile = hosts.hostfile(tmp_path / "hosts.json", ["local", "0", "1", "0"])
    with RunnerGroup(str(model), hosts=str(hostfile), ring_port=ring_port, shard="pipeline",
                     registry=registry) as group:
        assert group.complete(greedy())[0] == alone
        ranks = group.status().ranks
        assert [r.rank for r in ranks] == [0, 1, 2, 3]
        assert [r.address for r in ranks] == [hosts.local_address, hosts.addresses[0],
                                              hosts.addresses[1], hosts.addresses[0]]
        remote = [r.pid for r in ranks[1:]]
    assert_all_gone([*group.pids, *remote])


def test_killing_a_remote_rank_mid_stream_names_it_and_leaves_nothing(
        tiny_model_dir, hosts, registry, ring_port, tmp_path):
    hostfile = hosts.hostfile(tmp_path / "hosts.json", ["local", "0"])
    group = RunnerGroup(str(tiny_model_dir), hosts=str(hostfile), ring_port=ring_port,
                        registry=registry)
    try:
        group.wait_until_ready()
        remote_pid = group.status().ranks[1].pid
        with pytest.raises(RunnerExitedError) as caught, \
                group.stream(greedy(max_tokens=100_000)) as stream:
            for n, _ in enumerate(stream):
                if n == 2:
                    os.kill(remote_pid, signal.SIGKILL)
        message = str(caught.value)
        assert f"rank 1 on {hosts.addresses[0]}" in message, message
        assert "SIGKILL" in message and "group was stopped" in message, message
    finally:
        group.close(grace=2.0)
    assert_all_gone([*group.pids, remote_pid])
    assert registry.entries() == []


def test_rank_0_on_another_host_serves_there_with_the_token_from_stdin(
        tiny_model_dir, hosts, registry, ring_port, tmp_path):
    hostfile = hosts.hostfile(tmp_path / "hosts.json", ["0", "1"])
    secret = "hf_not_for_ps_" + os.urandom(4).hex()  # a user secret the ranks need
    with RunnerGroup(str(tiny_model_dir), hosts=str(hostfile), ring_port=ring_port,
                     registry=registry, env={"HF_TOKEN": secret}) as group:
        assert group.host == hosts.addresses[0]  # the notebook talks to it over the network
        assert group.complete(greedy(4))[1].completion_tokens == 4
        ranks = group.status().ranks
        token = group._token.encode()
        for pid in [*group.pids, *(r.pid for r in ranks)]:  # never in any argv
            assert token not in Path(f"/proc/{pid}/cmdline").read_bytes()
        for proc in psutil.process_iter(["cmdline"]):  # the secret: on no command line at all
            assert secret not in " ".join(proc.info["cmdline"] or []), proc
        for rank in ranks:  # and yet the remote ranks have it
            assert f"HF_TOKEN={secret}".encode() in Path(f"/proc/{rank.pid}/environ").read_bytes()
        for pid in group.pids:  # nor in the ssh processes' environment
            assert token not in Path(f"/proc/{pid}/environ").read_bytes()
    assert_all_gone([*group.pids, *(r.pid for r in ranks)])


OWNER = """
import sys
from mlx_notebook.control.group import RunnerGroup
group = RunnerGroup(sys.argv[1], hosts=sys.argv[2], ring_port=int(sys.argv[3]))
group.wait_until_ready()
print(*[r.pid for r in group.status().ranks], flush=True)
sys.stdin.read()
"""


def test_killing_the_owner_ends_every_remote_rank(tiny_model_dir, hosts, ring_port, tmp_path):
    hostfile = hosts.hostfile(tmp_path / "hosts.json", ["local", "0"])
    env = dict(os.environ, MLX_NOTEBOOK_CACHE=str(tmp_path / "cache"))
    owner = subprocess.Popen([sys.executable, "-c", OWNER, str(tiny_model_dir), str(hostfile),
                              str(ring_port)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             env=env, text=True)
    pids: list[int] = []
    try:
        pids = [int(p) for p in owner.stdout.readline().split()]
        assert len(pids) == 2
        owner.kill()
        owner.wait()
        assert_all_gone(pids)
    finally:
        reap_owner(owner, None)
        for pid in pids:
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_an_unreachable_host_fails_fast_with_ssh_s_words(tiny_model_dir, hosts, registry,
                                                         ring_port, tmp_path):
    hostfile = tmp_path / "hosts.json"
    nobody = hosts.local_address.rsplit(".", 1)[0] + ".250"  # on the bridge, no sshd
    hostfile.write_text(json.dumps([{"ssh": "127.0.0.1", "ips": [hosts.local_address]},
                                    {"ssh": nobody, "ips": [nobody]}]))
    group = RunnerGroup(str(tiny_model_dir), hosts=str(hostfile), ring_port=ring_port,
                        registry=registry)
    with pytest.raises(RunnerStartError) as caught:
        group.wait_until_ready(timeout=30)
    message = str(caught.value)
    assert f"rank 1 on {nobody}" in message and "ssh" in message.lower(), message
    assert not any(pid_alive(pid) for pid in group.pids)


def test_a_host_without_the_same_python_is_named(tiny_model_dir, hosts, registry, ring_port,
                                                 tmp_path):
    hostfile = hosts.hostfile(tmp_path / "hosts.json", ["0", "1"])
    plan = read_hosts(str(hostfile))  # read here; the hosts are then told another Python
    group = RunnerGroup(str(tiny_model_dir), hosts=plan, ring_port=ring_port,
                        registry=registry, python="/nowhere/bin/python3")
    with pytest.raises(RunnerStartError) as caught:
        group.wait_until_ready(timeout=30)
    message = str(caught.value)
    assert f"rank 0 on {hosts.addresses[0]}" in message and "no Python at" in message, message


@pytest.mark.parametrize("content, backend, expected", [
    (None, None, "no such hostfile"),
    ('[{"ssh": "mac1"}, {"ssh": "mac2"}]', None, "needs an IP for every host"),
    ('[{"ssh": "10.0.0.1", "ips": ["10.0.0.1"]}]', None, "needs 2 or more"),
    ('[{"ssh": "a", "ips": ["10.0.0.1"]}, {"ssh": "b", "ips": ["10.0.0.2"]}]', "mpi",
     "start the ranks with mlx.launch"),
    ('{"backend": "jaccl", "hosts": [{"ssh": "a", "ips": ["10.0.0.1"]}, '
     '{"ssh": "b", "ips": ["10.0.0.2"]}]}', None, "backend 'jaccl'"),
    ("not json", None, "Expecting value"),
    ('[{"ssh": "-oProxyCommand=touch /tmp/pwned", "ips": ["10.0.0.1"]}, '
     '{"ssh": "b", "ips": ["10.0.0.2"]}]', None, "starts with '-'"),  # ssh would run it
])
def test_bad_hosts_are_refused_before_anything_starts(tmp_path, content, backend, expected):
    path = tmp_path / "hosts.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(HostsError, match=expected):
        read_hosts(str(path), backend)


def test_a_list_of_ips_is_a_hostfile_too():
    plan = read_hosts("10.0.0.1,10.0.0.2")
    assert [(h.ssh, h.ips) for h in plan.hosts] == [("10.0.0.1", ("10.0.0.1",)),
                                                   ("10.0.0.2", ("10.0.0.2",))]
    assert plan.ring(5000) == [["10.0.0.1:5000"], ["10.0.0.2:5001"]]


def test_load_with_hosts_through_the_magic(tiny_model_dir, hosts, ring_port, tmp_path, shell):
    """`%mlx load --hosts FILE`: same text as one process; the status shows ranks and hosts."""
    import mlx_notebook as mn
    from mlx_notebook.notebook.widgets import runner_statuses, status_text

    hostfile = hosts.hostfile(tmp_path / "hosts.json", ["local", "0"])
    shell.run_line_magic("mlx", f"load {tiny_model_dir} --as solo")
    try:
        solo = mn.generate("hello", model="solo", max_tokens=8).text
        os.environ[RING_PORT_ENV] = str(ring_port)
        shell.run_line_magic("mlx", f"load {tiny_model_dir} --as wide --hosts {hostfile}")
        shell.run_cell_magic("mlx", "generate -m wide --max-tokens 8 -o wide_result", "hello")
        assert shell.user_ns["wide_result"].text == solo
        text = status_text(runner_statuses())
        assert "2 ranks: #0 " in text and f"({hosts.addresses[0]})" in text, text
    finally:
        os.environ.pop(RING_PORT_ENV, None)
        shell.run_line_magic("mlx", "unload --all")


def test_hosts_group_in_a_real_kernel(tiny_model_dir, hosts, ring_port, tmp_path):
    """The notebook user's road: %mlx load --hosts in ipykernel, then generate and status."""
    pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    from nbformat.v4 import new_code_cell, new_notebook

    hostfile = hosts.hostfile(tmp_path / "hosts.json", ["local", "0"])
    cells = [
        "%load_ext mlx_notebook",
        f"%mlx load {tiny_model_dir} --as wide --hosts {hostfile}",
        "%%mlx generate --max-tokens 6 -o answer\nhello",
        "import mlx_notebook as mn\nprint([(r.rank, r.address) for r in mn.status().ranks])",
        "%mlx unload wide",
        "import sys\nprint(sorted(m for m in sys.modules if m.split('.')[0] in ('mlx', 'mlx_lm')))",
    ]
    nb = new_notebook(cells=[new_code_cell(c) for c in cells])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    os.environ[RING_PORT_ENV] = str(ring_port)  # the kernel inherits it, and MLX_NOTEBOOK_SSH
    try:
        nbclient.NotebookClient(nb, timeout=120, kernel_name="python3").execute()
    finally:
        os.environ.pop(RING_PORT_ENV, None)
    ranks = "".join(o.get("text", "") for o in nb.cells[3].outputs)
    assert "".join(o.get("text", "") for o in nb.cells[5].outputs).strip() == "[]"  # no MLX here
    assert f"(0, '{hosts.local_address}'), (1, '{hosts.addresses[0]}')" in ranks, ranks
    shown = json.dumps([o for c in nb.cells for o in c.outputs])
    assert "Traceback" not in shown and "Error" not in shown, shown

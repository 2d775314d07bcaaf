"""Runner groups: one model over 2 real processes with MLX's ring backend on loopback.

The tiny model (4 query / 2 key-value heads) splits over 2 ranks; the demo model
(9 / 3) does not, and must be refused with a message that says so.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from mlx_notebook.control.client import RunnerClient
from mlx_notebook.control.group import RunnerGroup, loopback_hostfile
from mlx_notebook.control.registry import Registry
from mlx_notebook.errors import RunnerExitedError, RunnerStartError
from mlx_notebook.protocol import CompletionRequest, SamplingOptions
from tests import frontend_helpers
from tests.runner_process import pid_alive, wait_gone

shell = frontend_helpers.shell  # fixture

PROMPT = "The capital of France is"


def greedy(max_tokens: int = 40, **options: object) -> CompletionRequest:
    return CompletionRequest(prompt=PROMPT, options=SamplingOptions(max_tokens=max_tokens,
                                                                    **options))  # type: ignore[arg-type]


@pytest.fixture
def registry(tmp_path) -> Registry:
    return Registry(tmp_path / "registry")


@pytest.fixture(scope="module")
def single_text(tiny_model_dir, tmp_path_factory) -> tuple[str, tuple[int, ...]]:
    reg = Registry(tmp_path_factory.mktemp("registry"))
    with RunnerClient(str(tiny_model_dir), registry=reg) as client:
        with client.stream(greedy()) as stream:
            tokens = tuple(t for chunk in stream for t in chunk.tokens)
        return stream.text, tokens


def test_sharded_model_gives_the_same_greedy_text(tiny_model_dir, single_text, registry):
    with RunnerGroup(str(tiny_model_dir), ranks=2, registry=registry) as group:
        pids = group.pids
        with group.stream(greedy()) as stream:
            tokens = tuple(t for chunk in stream for t in chunk.tokens)
        assert (stream.text, tokens) == single_text
        # Again: the prompt cache (kept alike on every rank) must not change the answer.
        text, done = group.complete(greedy())
        assert text == single_text[0] and done.cached_tokens > 0
        # A stop string ends the request on rank 0 and removes it on every rank.
        stop = single_text[0][5:8]
        text, done = group.complete(greedy(stop=[stop]))
        assert text == single_text[0][:single_text[0].index(stop)] and done.done_reason == "stop"
        # Freeing the caches happens on every rank at the same step: still in step after.
        freed = group.free_memory()
        assert freed.done and freed.prompt_cache_freed > 0
        text, done = group.complete(greedy())
        assert text == single_text[0] and done.cached_tokens == 0
        status = group.status()
        assert [r.rank for r in status.ranks] == [0, 1]
        assert [r.pid for r in status.ranks] == pids
        assert all(r.active > 0 and r.host for r in status.ranks)
        assert {e.pid for e in registry.entries()} == set(pids)
    for pid in pids:
        assert wait_gone(pid, 10) is not None, f"rank pid {pid} outlived close()"
    assert registry.entries() == []


def test_killing_a_rank_mid_stream_names_it_and_leaves_nothing(tiny_model_dir, registry):
    group = RunnerGroup(str(tiny_model_dir), ranks=2, registry=registry)
    try:
        group.wait_until_ready()
        pids = group.pids
        with pytest.raises(RunnerExitedError) as caught, \
                group.stream(greedy(max_tokens=100_000)) as stream:
            for n, _ in enumerate(stream):
                if n == 2:
                    os.kill(pids[1], signal.SIGKILL)
        message = str(caught.value)
        assert "rank 1" in message and f"pid {pids[1]}" in message and "SIGKILL" in message
        assert group.has_exited
        with pytest.raises(RunnerExitedError, match="rank 1"):
            group.status()
    finally:
        group.close(grace=2.0)
    for pid in pids:
        assert wait_gone(pid, 10) is not None, f"rank pid {pid} was left behind"


def test_group_closes_cleanly(tiny_model_dir, registry):
    group = RunnerGroup(str(tiny_model_dir), ranks=2, registry=registry)
    group.wait_until_ready()
    procs = [p for _, p in group.owner.ranks()]
    group.close()
    assert [p.returncode for p in procs] == [0, 0]  # asked to stop, not killed
    assert not any(pid_alive(p.pid) for p in procs)
    assert not os.path.exists(group.hostfile)


def test_demo_model_is_refused_for_tensor_parallel_over_2_ranks(demo_model_ready, registry):
    group = RunnerGroup("demo", ranks=2, registry=registry)
    with pytest.raises(RunnerStartError) as caught:
        group.wait_until_ready(timeout=60)
    message = str(caught.value)
    assert "divisible by 2" in message and "9 query heads and 3 key/value heads" in message
    assert "3 ranks" in message
    assert not any(pid_alive(pid) for pid in group.pids)


def test_pipeline_is_refused_for_llama_with_the_architecture_named(tiny_model_dir, registry):
    group = RunnerGroup(str(tiny_model_dir), ranks=2, shard="pipeline", registry=registry)
    with pytest.raises(RunnerStartError, match="model type 'llama' has no pipeline support"):
        group.wait_until_ready(timeout=60)
    assert not any(pid_alive(pid) for pid in group.pids)


def test_a_rank_needs_its_rank_and_an_existing_hostfile(tmp_path):
    hostfile = tmp_path / "ring.json"
    hostfile.write_text(str(loopback_hostfile(2)).replace("'", '"'))
    env = dict(os.environ, MLX_NOTEBOOK_TOKEN="t")
    env.pop("MLX_RANK", None)
    for args, expected in [(["--hostfile", str(hostfile)], "needs --rank"),
                           (["--hostfile", str(tmp_path / "nope"), "--rank", "0"],
                            "does not exist")]:
        done = subprocess.run([sys.executable, "-m", "mlx_notebook.runner", "--model", "x",
                               "--no-openblas", *args], env=env, capture_output=True, timeout=30)
        assert done.returncode == 64 and expected in done.stderr.decode()


def test_sharded_load_through_the_magic_matches_one_process(tiny_model_dir, shell):
    """`%mlx load --ranks 2`: same greedy text as one process; the status shows both ranks."""
    import mlx_notebook as mn

    shell.run_line_magic("mlx", f"load {tiny_model_dir} --as solo")
    shell.run_line_magic("mlx", f"load {tiny_model_dir} --as duo --ranks 2")
    try:
        solo = mn.generate("hello", model="solo", max_tokens=8).text
        shell.run_cell_magic("mlx", "generate -m duo --max-tokens 8 -o duo_result", "hello")
        assert shell.user_ns["duo_result"].text == solo
        from mlx_notebook.notebook.widgets import runner_statuses, status_text

        text = status_text(runner_statuses())
        assert "2 ranks: #0 " in text and "#1 " in text, text
    finally:
        shell.run_line_magic("mlx", "unload --all")

"""Fixtures: running runners shared per test session, always stopped at teardown.

- ``tiny_client``: a real runner serving the tiny random model (fast plumbing tests);
- ``demo_client``: a real runner serving the demo model (SmolLM2, ~10 tok/s here);
- ``runner_manager``: a fresh RunnerManager with its own registry folder;
- ``no_models``: the per-process manager (what ``mn.*`` uses) with nothing loaded; every
  test module also ends with it empty, so no module sees another's models;
- ``fault_client``: a factory of clients of ``tests/fault_runner.py``, the deliberately
  misbehaving runner, for faults the real runner cannot be made to show.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mlx_notebook.control.client import RunnerClient
from mlx_notebook.control.manager import RunnerManager, current_manager
from mlx_notebook.control.registry import Registry

REPO = Path(__file__).resolve().parent.parent


def stop_client(client: RunnerClient) -> None:
    """Close, and make sure by pid that nothing we started is left."""
    client.close(grace=2.0)
    if client.pid is not None and not client.has_exited:
        os.killpg(client.pid, signal.SIGKILL)


def running(client: RunnerClient, timeout: float = 120) -> Iterator[RunnerClient]:
    """Start ``client``, yield it once ready, and stop it (by pid if need be) at the end."""
    try:
        client.start()
        client.wait_until_ready(timeout=timeout)
        yield client
    finally:
        stop_client(client)


@pytest.fixture(scope="session")
def test_registry(tmp_path_factory: pytest.TempPathFactory) -> Registry:
    """A registry folder of the test session's own, not the user's cache."""
    return Registry(tmp_path_factory.mktemp("runner-registry"))


@pytest.fixture(scope="session")
def tiny_client(tiny_model_dir: Path, test_registry: Registry) -> Iterator[RunnerClient]:
    yield from running(RunnerClient(str(tiny_model_dir), name="tiny", registry=test_registry))


@pytest.fixture(scope="session")
def demo_client(demo_model_ready: Path, test_registry: Registry) -> Iterator[RunnerClient]:
    yield from running(RunnerClient("demo", name="demo", registry=test_registry), timeout=300)


@pytest.fixture
def runner_manager(tmp_path: Path) -> Iterator[RunnerManager]:
    manager = RunnerManager(registry=Registry(tmp_path / "registry"))
    try:
        yield manager
    finally:
        manager.close()


def serving(spec: str | Path, name: str) -> Iterator[Any]:
    """Load ``spec`` as ``name`` in the per-process manager and yield its ``mn.serve()``
    (the OpenAI endpoint's base URL and token); everything unloaded after."""
    import mlx_notebook as mn

    mn.load(str(spec), name=name)
    try:
        yield mn.serve(name)
    finally:
        mn.unload(all=True)


def _empty_process_manager() -> None:
    manager = current_manager()
    if manager is not None:
        import mlx_notebook as mn

        manager.unload_all()
        mn.reset_chat(all=True)


@pytest.fixture(autouse=True, scope="module")
def _fresh_process_manager_per_module() -> Iterator[None]:
    yield
    _empty_process_manager()


@pytest.fixture
def no_models() -> None:
    """Nothing loaded in the per-process manager when the test starts."""
    _empty_process_manager()


@pytest.fixture
def fault_client(test_registry: Registry) -> Iterator[Callable[..., RunnerClient]]:
    """``fault_client(FAULT_LOAD="stall:40", ready=False)`` -> a started fault-runner client."""
    made: list[RunnerClient] = []

    def make(*, ready: bool = True, timeout: float = 30.0, **faults: str) -> RunnerClient:
        env = {"PYTHONPATH": str(REPO), **faults}
        client = RunnerClient("fault-model", name="fault", env=env,
                              runner_module="tests.fault_runner", registry=test_registry)
        made.append(client)
        client.start()
        if ready:
            client.wait_until_ready(timeout=timeout)
        return client

    try:
        yield make
    finally:
        for client in made:
            stop_client(client)

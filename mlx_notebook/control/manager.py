"""RunnerManager: the runners of one kernel (or script), by name, that never loses one.

It loads models into runner subprocesses (:class:`~mlx_notebook.control.client.RunnerClient`),
keeps a default, makes room by unloading the least recently used idle runner when
a model would not fit, optionally unloads runners idle for longer than
``keep_alive``, reports a runner that died on its next use, and stops every runner
it owns at exit. Runners it does not own (``connect()``: a
:class:`~mlx_notebook.control.remote.RemoteRunner` started by hand) are listed and used
like the others, but never evicted, expired, recorded for reaping or stopped. A kernel that is SIGKILLed cannot clean up: the runners' own
parent watch and the registry (reaped when the next manager starts) cover that.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from types import FrameType
from typing import TYPE_CHECKING

from ..errors import (
    NO_MODEL_LOADED,
    NOT_LOADED,
    InsufficientMemoryError,
    ModelNotLoadedError,
    RunnerExitedError,
)
from ..kv_format import FULL_PRECISION, KvFormat
from ..protocol import Status
from . import preflight
from .client import RunnerClient
from .connection import RunnerConnection
from .group import RunnerGroup
from .hosts import HostPlan, read_hosts
from .preflight import MemoryEstimate, format_bytes
from .records import (
    Listener,
    Listeners,
    LoadArgs,
    ManagerEvent,
    RunnerEntry,
    RunnerInfo,
    default_name,
    info_row,
)
from .registry import Registry

if TYPE_CHECKING:
    from .remote import RemoteRunner
    from .router import Router

__all__ = ["LoadArgs", "RunnerEntry", "RunnerInfo", "RunnerManager", "current_manager",
           "default_name", "get_manager"]

KEEP_ALIVE_ENV = "MLX_NOTEBOOK_KEEP_ALIVE"  # seconds of idleness before a runner is unloaded
BUDGET_ENV = "MLX_NOTEBOOK_MEMORY_BUDGET"  # most bytes all runners of a kernel may need

Notify = Callable[[str], None]
def _quiet(_message: str) -> None:
    pass


class RunnerManager:
    """The runners of this process. Thread-safe; long loads do not block ``get``/``list``."""

    def __init__(self, *, python: str | None = None, keep_alive: float | None = None,
                 start_timeout: float = 120.0, memory_budget: int | None = None,
                 registry: Registry | None = None, runner_module: str = "mlx_notebook.runner",
                 env: dict[str, str] | None = None, on_message: Notify | None = None) -> None:
        self.python = python
        self.keep_alive = keep_alive
        self.start_timeout = start_timeout
        self.memory_budget = memory_budget
        self.registry = registry if registry is not None else Registry()
        self.runner_module = runner_module
        self.env = dict(env or {})
        self.on_message: Notify = on_message or _quiet  # notes from the keep-alive thread
        self._entries: dict[str, RunnerEntry] = {}
        self._loading: list[RunnerEntry] = []  # not yet under their name: a load may fail
        self._default: str | None = None
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._reaper: threading.Thread | None = None
        self.listeners = Listeners()
        self.router: Router | None = None  # mn.serve(port=...)'s, stopped with the manager
        if keep_alive:
            self._reaper = threading.Thread(target=self._keep_alive_loop, daemon=True,
                                            name="mlx-notebook-keep-alive")
            self._reaper.start()

    # ------------------------------------------------------------ listeners

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener(event, name)`` on each event; returns the function that unsubscribes.

        The status widget subscribes, so it redraws when a model loads or goes and
        polls while something generates.
        """
        return self.listeners.subscribe(listener)

    def notify(self, event: ManagerEvent, name: str | None = None) -> None:
        """Tell every listener; a listener that fails never fails the caller."""
        self.listeners.notify(event, name)

    # ------------------------------------------------------------ loading

    def load(self, spec: str, name: str | None = None, *, context_length: int | None = None,
             force: bool = False, on_progress: Callable[[Status], None] | None = None,
             on_message: Notify | None = None, ranks: int = 1, shard: str = "tensor",
             hosts: str | HostPlan | None = None, backend: str | None = None,
             adapter: str | None = None, draft: str | None = None,
             num_draft: int | None = None, kv: KvFormat = FULL_PRECISION) -> RunnerConnection:
        """Start a runner for ``spec`` under ``name`` (replacing one of that name) and wait for it.

        ``ranks > 1`` shards the model over that many local processes, ``hosts`` (an
        mlx.launch hostfile or a list of IPs) over those machines (MLX ring backend,
        see :mod:`mlx_notebook.control.group`). Refuses a model that would not fit here (after
        unloading idle runners, least recently used first) with
        :class:`InsufficientMemoryError`, unless ``force``. ``draft``: a draft model for
        speculative decoding, loaded by the same runner (its memory counted too).
        """
        args = LoadArgs(spec, context_length, ranks, shard, hosts, backend, adapter, draft,
                        num_draft, kv)
        return self._load(args, name or default_name(spec), force=force, on_progress=on_progress,
                          say=on_message or self.on_message)

    def _load(self, args: LoadArgs, name: str, *, force: bool,
              on_progress: Callable[[Status], None] | None, say: Notify) -> RunnerConnection:
        plan = (read_hosts(args.hosts, args.backend, python=self.python)
                if isinstance(args.hosts, str) else args.hosts)
        if name in self._entries:
            self.unload(name)
        self.notify("loading", name)
        need = preflight.estimate(args.spec, args.context_length, kv=args.kv)
        if args.draft:
            need = preflight.plus(need, preflight.estimate(args.draft, args.context_length))
        if plan is not None:  # only the ranks on this machine take memory here
            need = preflight.share(need, sum(h.local for h in plan.hosts), plan.size)
        self._make_room(need, say, force)
        runner: RunnerConnection
        if args.ranks > 1 or plan is not None:
            runner = RunnerGroup(args.spec, ranks=args.ranks, shard=args.shard, hosts=plan,
                                 backend=args.backend, name=name, python=self.python,
                                 context_length=args.context_length, env=self.env,
                                 runner_module=self.runner_module, registry=self.registry)
        else:
            runner = RunnerClient(args.spec, name=name, python=self.python,
                                  context_length=args.context_length, env=self.env,
                                  extra_args=args.runner_args(),
                                  runner_module=self.runner_module, registry=self.registry)
        entry = RunnerEntry(runner, args, need, state="loading")
        with self._lock:
            self._loading.append(entry)
        try:
            runner.wait_until_ready(timeout=self.start_timeout, on_progress=on_progress)
        finally:
            with self._lock:
                self._loading.remove(entry)
        self._register(entry)
        self.notify("loaded", name)
        return runner

    def connect(self, url: str, *, token: str, name: str | None = None,
                token_source: str | None = None,
                on_progress: Callable[[Status], None] | None = None) -> RemoteRunner:
        """Attach to a runner already running at ``url`` (``unload`` only disconnects)."""
        from .remote import RemoteRunner

        self.notify("loading", name)
        runner = RemoteRunner.connect(url, token, name=name, token_source=token_source,
                                      timeout=self.start_timeout, on_progress=on_progress)
        if runner.name in self._entries:
            self.unload(runner.name)
        self._register(RunnerEntry(runner, None))
        self.notify("loaded", runner.name)
        return runner

    def _register(self, entry: RunnerEntry) -> None:
        name = entry.runner.name
        entry.state = "live"
        with self._lock:
            old = self._entries.pop(name, None)
            self._entries[name] = entry
            if self._default is None or self._default not in self._entries:
                self._default = name
        if old is not None:  # loaded concurrently under the same name
            old.runner.close()
        entry.runner.touch()
        entry.runner.tell_names()  # OpenAI clients may name the model as the notebook does

    def _live(self) -> list[RunnerEntry]:
        with self._lock:
            return [e for e in self._entries.values() if e.state == "live"]

    def _budget_used(self) -> int:
        return sum(e.need.required or 0 for e in self._live() if e.need is not None)

    def _make_room(self, need: MemoryEstimate, say: Notify, force: bool) -> None:
        """Unload least recently used idle runners until ``need`` fits; refuse if it never does."""
        required = need.required
        if required is None:
            return
        budget = self.memory_budget
        while True:
            over_budget = budget is not None and self._budget_used() + required > budget
            if not over_budget and preflight.fits(need):
                return
            victim = self._least_recently_used_idle()
            if victim is None:
                break
            idle = time.time() - victim.last_used
            self.unload(victim.name)
            say(f"unloaded {victim.name!r} (idle {idle:.0f} s) to make room for {need.spec!r}")
        available = None
        if budget is not None and over_budget:
            available = max(budget - self._budget_used(), 0)
            message = (f"model {need.spec!r} requires {format_bytes(required)} but only "
                       f"{format_bytes(available)} of the {format_bytes(budget)} memory budget "
                       "are left")
        else:
            free, overhead = preflight.available_memory(), preflight.default_overhead()
            available = max(free - overhead, 0)
            message = preflight.refusal_message(need, free, overhead)
        busy = [e.runner.name for e in self._live() if e.runner.active_streams]
        if busy:
            message += f" (busy runners were kept: {', '.join(busy)})"
        if force:
            say(f"warning: {message}; loading anyway because of force")
            return
        raise InsufficientMemoryError(message, required=required, available=available)

    @contextlib.contextmanager
    def tracking(self, runner: RunnerConnection) -> Iterator[None]:
        """List ``runner`` (a training runner: nothing is served from it) in ``%mlx ps``
        while the block runs."""
        entry = RunnerEntry(runner, None, state="loading")
        with self._lock:
            self._loading.append(entry)
        self.notify("loading", runner.name)
        try:
            yield
        finally:
            with self._lock:
                self._loading.remove(entry)

    def _least_recently_used_idle(self) -> RunnerConnection | None:
        idle = [e.runner for e in self._live()
                if not e.runner.active_streams and not e.runner.remote]
        return min(idle, key=lambda c: (not c.has_exited, c.last_used), default=None)

    # ------------------------------------------------------------ lookup

    @property
    def default(self) -> str | None:
        return self._default

    def use(self, name: str) -> None:
        """Make ``name`` the runner that calls without a name use."""
        with self._lock:
            entry = self._entries.get(name)
            if entry is None or entry.state != "live":
                raise ModelNotLoadedError(self._not_loaded(name), name=name)
            self._default = name

    def names(self) -> list[str]:
        return [e.runner.name for e in self._live()]

    def get(self, name: str | None = None, *, reload: bool = False,
            on_message: Notify | None = None) -> RunnerConnection:
        """The runner called ``name`` (the default one when None).

        A runner that died is reported (:class:`RunnerExitedError` with its exit
        and error lines), or, with ``reload=True``, started again once, saying so.
        """
        with self._lock:
            key = name if name is not None else self._default
            if key is None:
                raise ModelNotLoadedError(NO_MODEL_LOADED)
            entry = self._entries.get(key)
            if entry is None:
                entry = next((e for e in self._live() if e.runner.spec == key), None)
            if entry is None:
                raise ModelNotLoadedError(self._not_loaded(key), name=key)
            if not entry.runner.has_exited:
                return entry.runner
            death = self._bury(entry)
        if not reload or entry.load is None:
            raise RunnerExitedError(str(death), returncode=death.returncode)
        (on_message or self.on_message)(f"{str(death).split(': ', 1)[0]}; reloading it")
        return self._load(entry.load, entry.runner.name, force=False, on_progress=None,
                          say=on_message or self.on_message)

    def _bury(self, entry: RunnerEntry) -> RunnerExitedError:
        """Mark a dead runner, keeping its story for later calls."""
        if entry.death is not None:
            return entry.death
        runner = entry.runner
        gone = runner.gone("unexpectedly", wait=False)
        returncode = gone.returncode if isinstance(gone, RunnerExitedError) else None
        entry.state = "dead"
        entry.death = RunnerExitedError(
            f"{gone or f'runner {runner.name!r} exited unexpectedly'}. "
            f"Reload it with `%mlx load {runner.spec} --name {runner.name}`.",
            returncode=returncode)
        runner.close()
        return entry.death

    def _not_loaded(self, name: str) -> str:
        return NOT_LOADED.format(name=name, loaded=", ".join(self.names()) or "none")

    def touch(self, name: str) -> None:
        """Mark ``name`` as just used (for LRU eviction and keep-alive)."""
        entry = self._entries.get(name)
        if entry is not None:
            entry.runner.touch()

    # ------------------------------------------------------------ unloading

    def unload(self, name: str) -> None:
        """Stop the runner called ``name`` and forget it."""
        with self._lock:
            entry = self._entries.pop(name, None)
            if entry is None:
                raise ModelNotLoadedError(self._not_loaded(name), name=name)
            if self._default == name:
                self._default = next((n for n, e in self._entries.items() if e.state == "live"),
                                     None)
        entry.runner.close()
        self.notify("unloaded", name)

    def unload_all(self) -> None:
        """Stop every runner this manager owns (loading ones too), in parallel."""
        with self._lock:
            runners = [e.runner for e in [*self._entries.values(), *self._loading]]
            self._entries.clear()
            self._default = None
        threads = [threading.Thread(target=c.close, daemon=True) for c in runners]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10.0)
        self.notify("unloaded", None)

    def close(self) -> None:
        """Stop the keep-alive thread, the router and every runner."""
        self._stop.set()
        router, self.router = self.router, None
        if router is not None:
            router.stop()
        self.unload_all()

    def _keep_alive_loop(self) -> None:
        assert self.keep_alive
        interval = min(max(self.keep_alive / 4, 0.1), 5.0)
        while not self._stop.wait(interval):
            now = time.time()
            stale = [e.runner for e in self._live() if not e.runner.remote
                     and not e.runner.active_streams and now - e.runner.last_used > self.keep_alive]
            for runner in stale:
                try:
                    self.unload(runner.name)
                except ModelNotLoadedError:
                    continue
                self.on_message(f"unloaded {runner.name!r} after {now - runner.last_used:.0f} s "
                                f"idle (keep_alive {self.keep_alive:g} s)")

    # ------------------------------------------------------------ listing

    def list(self) -> list[RunnerInfo]:
        """A row per runner, with live status (a runner that does not answer says so)."""
        with self._lock:
            runners = [e.runner for e in self._live()] + [e.runner for e in self._loading]
        return [info_row(c, is_default=c.name == self._default) for c in runners]


# ---------------------------------------------------------------- the per-process manager

_manager: RunnerManager | None = None
_manager_lock = threading.Lock()


def current_manager() -> RunnerManager | None:
    """The manager of this process if one was made (never makes one: nothing is reaped)."""
    return _manager


def get_manager() -> RunnerManager:
    """The manager of this process: created on first use, cleaned up at exit and on SIGTERM.

    Creating it reaps runners that a dead kernel left behind (see :mod:`.registry`).
    """
    global _manager
    with _manager_lock:
        if _manager is None:
            keep_alive = float(os.environ[KEEP_ALIVE_ENV]) if os.environ.get(KEEP_ALIVE_ENV) else None
            budget = os.environ.get(BUDGET_ENV)
            manager = RunnerManager(keep_alive=keep_alive,
                                    memory_budget=preflight.parse_bytes(budget) if budget else None)
            with contextlib.suppress(OSError):  # an unreadable cache must not stop the notebook
                manager.registry.reap_stale()
            atexit.register(manager.close)
            _install_sigterm_cleanup(manager)
            _manager = manager
        return _manager


def _install_sigterm_cleanup(manager: RunnerManager) -> None:
    """On SIGTERM stop our runners, then let the previous handler (or the default) act."""
    if threading.current_thread() is not threading.main_thread():
        return
    previous = signal.getsignal(signal.SIGTERM)

    def handler(signum: int, frame: FrameType | None) -> None:
        manager.close()
        if callable(previous):
            previous(signum, frame)
        elif previous != signal.SIG_IGN:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)

    with contextlib.suppress(ValueError):  # not the main thread of the main interpreter
        signal.signal(signal.SIGTERM, handler)

"""TrainingRun: one training runner (``mlx_notebook.runner.train``) and its event stream.

The process is started like a serving runner, by the same pieces: a
:class:`~.client.RunnerLaunch` (interpreter, token by environment, parent pid) and
a :class:`~.client.LocalProcess` owner (own session, handshake, stderr tail, stop
ladder, registry entry for reaping) behind a :class:`~.connection.RunnerConnection`
(auth, httpx errors translated at the one boundary). It trains once; ``events()``
follows its NDJSON stream (resumed with ``since`` after an interrupt), ``stop()``
asks it to end after the current step.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx2

from ..errors import InsufficientMemoryError, MLXNotebookError, TrainingError
from ..protocol import Status
from ..train_protocol import TRAIN_ENDPOINTS, TrainConfig, TrainEvent
from ..units import format_bytes
from . import preflight
from .client import LocalProcess, RunnerLaunch
from .connection import LoadWatch, RunnerConnection
from .registry import Registry

__all__ = ["TrainingMemory", "TrainingRun", "estimate_training", "TRAIN_MODULE"]

TRAIN_MODULE = "mlx_notebook.runner.train"
_EVENTS_TIMEOUT = httpx2.Timeout(30.0, connect=5.0)  # keep-alives come every 2 s
_POLL = 0.1


@dataclass(frozen=True)
class TrainingMemory:
    """The pre-flight's parts, in bytes (None: unknown)."""

    weights: int | None
    trainable: int | None  # parameters that get gradients
    optimizer: int | None  # Adam: two moments per trainable parameter, + the gradient
    activations: int | None  # batch x sequence x hidden x layers, kept for the backward pass

    @property
    def required(self) -> int | None:
        if self.weights is None:
            return None
        return self.weights + (self.optimizer or 0) + (self.activations or 0)

    def describe(self) -> str:
        parts = [f"weights {format_bytes(self.weights or 0)}"]
        if self.optimizer:
            parts.append(f"gradients + Adam state {format_bytes(self.optimizer)} "
                         f"for {self.trainable or 0:,} trainable parameters")
        if self.activations:
            parts.append(f"activations {format_bytes(self.activations)}")
        return " + ".join(parts)


def estimate_training(spec: str, config: TrainConfig, seq_tokens: int) -> TrainingMemory:
    """Weights as the runner holds them, plus what training adds (float32, rough)."""
    from .. import model_files

    weights = preflight.estimate(spec).weights
    shape = model_files._config(spec) or (
        {"num_hidden_layers": 30, "hidden_size": 576, "intermediate_size": 1536}
        if spec.strip().lower() == "demo" else None)
    if shape is None:
        return TrainingMemory(weights, None, None, None)
    shape = shape.get("text_config", shape)
    try:
        layers = int(shape["num_hidden_layers"])
        hidden = int(shape["hidden_size"])
        inter = int(shape.get("intermediate_size") or 4 * hidden)
    except (KeyError, TypeError, ValueError):
        return TrainingMemory(weights, None, None, None)
    tuned = min(config.lora_layers, layers) if config.lora_layers > 0 else layers
    if config.fine_tune_type == "full":
        trainable = tuned * (4 * hidden * hidden + 3 * hidden * inter)
    else:  # q, k, v, o (mlx-lm's default keys): rank x (in + out) each
        trainable = tuned * 4 * config.lora_rank * 2 * hidden
    optimizer = trainable * 4 * 3
    seq = min(seq_tokens, config.max_seq_length)
    per_layer = config.batch_size * seq * (hidden * 8 + inter * 3) * 4
    activations = per_layer * (1 if config.grad_checkpoint else layers)
    return TrainingMemory(weights, trainable, optimizer, activations)


def check_training_memory(spec: str, config: TrainConfig, seq_tokens: int, *,
                          force: bool = False) -> TrainingMemory:
    need = estimate_training(spec, config, seq_tokens)
    if force or need.required is None:
        return need
    available, overhead = preflight.available_memory(), preflight.default_overhead()
    if need.required > available - overhead:
        raise InsufficientMemoryError(
            f"training {spec!r} needs about {format_bytes(need.required)} ({need.describe()}) "
            f"but only {format_bytes(max(available - overhead, 0))} are available (after "
            f"{format_bytes(overhead)} overhead). Lower batch_size or lora_layers, use "
            "grad_checkpoint=True, unload a model, or pass force=True to try anyway.",
            required=need.required, available=available)
    return need


class TrainingRun:
    """One training runner: ``start()``, ``wait_loaded()``, ``events()``, ``stop()``, ``close()``."""

    def __init__(self, spec: str, *, name: str, data: Path, adapter_path: Path,
                 config: TrainConfig, python: str | None = None,
                 env: dict[str, str] | None = None, registry: Registry | None = None) -> None:
        self.config = config
        self.adapter_path = adapter_path
        launch = RunnerLaunch(spec, python=python, env=env, runner_module=TRAIN_MODULE,
                              registry=registry, extra_args=[
                                  "--data", str(data), "--adapter-path", str(adapter_path),
                                  "--config", json.dumps(config.to_json())])
        self.conn = RunnerConnection(spec, LocalProcess(launch), name=name,
                                     token=secrets.token_urlsafe(32))
        self.seen = 0  # events read so far: where a resumed stream starts

    @property
    def pid(self) -> int | None:
        return self.conn.pid

    def start(self) -> None:
        self.conn.start()

    def wait_loaded(self, on_progress: Callable[[Status], None] | None = None,
                    timeout: float = 300.0) -> Status:
        """Poll the status until the model is loaded (training has begun) or it failed."""
        watch = LoadWatch(on_progress)
        first = True
        while True:
            try:
                status = self.conn.owner.poll_status(self.conn, first)
            except MLXNotebookError as exc:
                raise self._failed(exc) from exc
            first = False
            if status is not None:
                watch.see(status)
                if status.state != "loading":
                    if status.state == "error":
                        raise TrainingError(f"training {self.conn.spec!r} failed: {status.error}",
                                            adapter_path=self._saved())
                    return status
            if watch.stalled(timeout):
                raise TrainingError(f"training runner for {self.conn.spec!r} made no progress "
                                    f"for {timeout:.0f} s (last: {watch.describe_last()})")
            self.conn.owner.wait_exit(_POLL)

    def events(self) -> Iterator[TrainEvent]:
        """The events from the last one seen on, until ``done`` (an ``error`` raises)."""
        http = self.conn.require_http()
        path = TRAIN_ENDPOINTS["events"][1]
        try:
            with self.conn.translating("while training"), http.stream(
                    "GET", path, params={"since": self.seen}, timeout=_EVENTS_TIMEOUT) as resp:
                self.conn.check_response(resp, "the event stream")
                for line in resp.iter_lines():
                    if not line.strip():
                        continue
                    event = TrainEvent.from_json(json.loads(line))
                    if event.kind == "keepalive":
                        yield event
                        continue
                    self.seen += 1
                    if event.kind == "error":
                        raise TrainingError(f"training {self.conn.spec!r} failed at iteration "
                                            f"{event.iteration}: {event.error}",
                                            adapter_path=self._saved())
                    yield event
                    if event.final:
                        return
        except TrainingError:
            raise
        except MLXNotebookError as exc:
            raise self._failed(exc) from exc
        raise self._failed(None)

    def stop(self) -> int:
        """Ask the trainer to stop after its current step (it then saves and says done);
        returns the last iteration it had finished when the request arrived."""
        http = self.conn.require_http()
        with self.conn.translating("asking training to stop"):
            response = http.post(TRAIN_ENDPOINTS["stop"][1], timeout=5.0)
            self.conn.check_response(response, "the stop request")
            return int(response.json().get("iteration", 0))

    def _saved(self) -> str | None:
        path = self.adapter_path
        ok = (path / "adapters.safetensors").is_file() and (path / "adapter_config.json").is_file()
        return str(path) if ok else None

    def _failed(self, exc: Exception | None) -> TrainingError:
        if self.conn.owner.wait_exit(1.0) or self.conn.has_exited:
            what = self.conn.owner.exit_message("while training")  # type: ignore[attr-defined]
        else:
            what = str(exc) if exc is not None else "the event stream ended early"
        saved = self._saved()
        keep = f"; the adapter saved before is at {saved}" if saved else ""
        return TrainingError(f"training {self.conn.spec!r} stopped: {what}{keep}",
                             adapter_path=saved)

    def close(self, grace: float = 5.0) -> None:
        self.conn.close(grace=grace)


def wait_for_exit(pid: int, timeout: float) -> bool:
    """True once ``pid`` is gone (tests, and the kernel-death guarantee)."""
    import psutil

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
            return True
        time.sleep(0.1)
    return False

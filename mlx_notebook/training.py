"""``mn.train`` and ``mn.fuse``: fine-tune a model in a training runner, then serve the adapter.

>>> data = [{"messages": [{"role": "user", "content": "Who made you?"},
...                       {"role": "assistant", "content": "The Notebook Lab."}]}] * 16
>>> r = mn.train("demo", data=data, iters=60, name="tuned", show=True)   # doctest: +SKIP
>>> mn.generate("Who made you?", model="tuned").text                    # doctest: +SKIP

The training runner is its own process (``mlx_notebook.runner.train``, mlx-lm's
tuner inside); when it ends, a *new* serving runner loads the base model with the
adapter under ``name``. Why not keep the training process and serve from it: it
holds the optimizer state, the gradients' buffers and MLX's cache at its training
peak, which only its exit returns at once; and serving needs the engine (batching,
prompt cache, warm-up) that a training process does not have. Reloading the base
weights costs about a second for the demo (they are cached in the runner's format).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import views
from .errors import InvalidArgumentError, MLXNotebookError, TrainingError
from .paths import cache_dir
from .train_protocol import FINE_TUNE_TYPES, TrainConfig, TrainEvent

__all__ = ["TrainResult", "fuse", "train"]


@dataclass
class TrainResult:
    """What a training run did: losses by iteration, speed, memory, where the adapter is."""

    name: str
    base: str
    adapter_path: str
    iters: int
    iterations: int = 0
    stopped: bool = False
    train_loss: list[tuple[int, float]] = field(default_factory=list)
    val_loss: list[tuple[int, float]] = field(default_factory=list)
    tokens_per_second: float = 0.0  # mean over the steps
    iterations_per_second: float = 0.0
    peak_memory: int = 0
    seconds: float = 0.0
    data_note: str = ""
    loaded: bool = False  # the adapter is served under ``name``
    stop_at: int | None = None  # the last finished step when the runner got the stop request

    @property
    def first_loss(self) -> float | None:
        return self.train_loss[0][1] if self.train_loss else None

    @property
    def final_loss(self) -> float | None:
        return self.train_loss[-1][1] if self.train_loss else None

    def summary(self) -> str:
        how = "stopped at" if self.stopped else "trained"
        loss = (f", loss {self.first_loss:.3f} -> {self.final_loss:.3f}"
                if self.train_loss else "")
        served = f"; loaded as {self.name!r}" if self.loaded else ""
        return (f"{how} {self.iterations}/{self.iters} iterations in {self.seconds:.0f} s"
                f"{loss}, {self.tokens_per_second:.0f} tok/s; adapter {self.adapter_path}{served}")

    def add(self, event: TrainEvent) -> None:
        if event.kind == "train" and event.train_loss is not None:
            self.train_loss.append((event.iteration, event.train_loss))
            self.iterations = event.iteration
            self.peak_memory = max(self.peak_memory, event.peak_memory)
            n = len(self.train_loss)
            self.tokens_per_second += ((event.tokens_per_second or 0) - self.tokens_per_second) / n
            self.iterations_per_second += (
                (event.iterations_per_second or 0) - self.iterations_per_second) / n
        elif event.kind == "val" and event.val_loss is not None:
            self.val_loss.append((event.iteration, event.val_loss))
        elif event.kind == "done":
            self.stopped = event.stopped
            self.peak_memory = max(self.peak_memory, event.peak_memory)


def _check(iters: int, batch_size: int, learning_rate: float, lora_rank: int, lora_layers: int,
           fine_tune_type: str, name: str) -> None:
    for value, field_name in ((iters, "iters"), (batch_size, "batch_size"),
                              (lora_rank, "lora_rank")):
        if not isinstance(value, int) or value < 1:
            raise InvalidArgumentError(f"{field_name} must be a positive integer, got {value!r}",
                                       field=field_name)
    if not isinstance(lora_layers, int) or lora_layers < -1 or lora_layers == 0:
        raise InvalidArgumentError(f"lora_layers must be a positive integer or -1 (all), got "
                                   f"{lora_layers!r}", field="lora_layers")
    if not learning_rate > 0:
        raise InvalidArgumentError(f"learning_rate must be > 0, got {learning_rate!r}",
                                   field="learning_rate")
    if fine_tune_type not in FINE_TUNE_TYPES:
        raise InvalidArgumentError(f"fine_tune_type must be one of {', '.join(FINE_TUNE_TYPES)}, "
                                   f"got {fine_tune_type!r}", field="fine_tune_type")
    if not name or "/" in name or name.startswith("."):
        raise InvalidArgumentError(f"name {name!r} cannot name a model and its adapter folder",
                                   field="name")


def _base_spec(model: str) -> str:
    """A loaded model's name means its spec (``-m demo``), anything else is a spec."""
    from .control.manager import current_manager

    manager = current_manager()
    if manager is not None and model in manager.names():
        return manager.get(model).spec
    return model


def train(model: str = "demo", *, data: Any, iters: int = 100, name: str | None = None,
          batch_size: int = 4, learning_rate: float = 1e-5, lora_rank: int = 8,
          lora_layers: int = 16, fine_tune_type: str = "lora", mask_prompt: bool = False,
          grad_checkpoint: bool = False, seed: int = 0, save_every: int | None = None,
          adapter_path: str | os.PathLike[str] | None = None, val_size: int | None = None,
          val_batches: int = 2, steps_per_eval: int | None = None, max_seq_length: int = 2048,
          force: bool = False, load: bool = True, show: bool = False) -> TrainResult:
    """Fine-tune ``model`` on ``data`` in a training runner; return when it ends or is stopped.

    ``data``: a list of dicts or a DataFrame in mlx-lm's formats (``messages``,
    ``prompt``/``completion``, ``text``), a ``.jsonl`` path or a folder with
    ``train.jsonl`` (and ``valid.jsonl``). Bad rows raise
    :class:`~mlx_notebook.errors.TrainingDataError` (``.row``) before anything starts.
    The adapter goes to ``adapter_path`` (default: the cache's ``adapters/NAME``) and,
    unless ``load=False``, is loaded as the model ``name`` (default ``MODEL-tuned``).
    A stop (the view's button, or interrupting the kernel) ends training after the
    current step and keeps that step's adapter; a second interrupt abandons it.
    """
    from .control.manager import default_name, get_manager
    from .control.training import TrainingRun, check_training_memory
    from .training_data import prepare_data

    name = name or f"{default_name(model)}-tuned"
    _check(iters, batch_size, learning_rate, lora_rank, lora_layers, fine_tune_type, name)
    spec = _base_spec(model)
    config = TrainConfig(
        iters=iters, batch_size=batch_size, learning_rate=float(learning_rate),
        lora_rank=lora_rank, lora_layers=lora_layers, fine_tune_type=fine_tune_type,
        mask_prompt=mask_prompt, grad_checkpoint=grad_checkpoint, seed=seed,
        save_every=save_every or max(iters, 1), max_seq_length=max_seq_length,
        val_batches=val_batches, steps_per_eval=steps_per_eval or max(iters // 4, 1))
    out = Path(adapter_path).expanduser().resolve() if adapter_path else \
        cache_dir() / "adapters" / name
    work = cache_dir() / "train-data" / f"{name}-{secrets.token_hex(4)}"
    manager = get_manager()
    view = views.current().train(name) if show else _Silent()
    try:
        prepared = prepare_data(data, work, batch_size=batch_size, seed=seed, val_size=val_size)
        memory = check_training_memory(spec, config, prepared.longest_chars // 3 + 16,
                                       force=force)
        view.note(f"{prepared.note}. Memory: about {_gb(memory.required)} "
                  f"({memory.describe()}).")
        out.mkdir(parents=True, exist_ok=True)
        for stale in ("adapters.safetensors", "adapter_config.json"):
            (out / stale).unlink(missing_ok=True)
        result = TrainResult(name=name, base=spec, adapter_path=str(out), iters=iters,
                             data_note=prepared.note)
        run = TrainingRun(spec, name=name, data=work, adapter_path=out, config=config,
                          python=manager.python, env=manager.env, registry=manager.registry)
        started = time.monotonic()
        try:
            run.start()
            with manager.tracking(run.conn):
                run.wait_loaded(on_progress=view.loading)
                _follow(run, view, result)
        finally:
            run.close()
        result.seconds = time.monotonic() - started
    except MLXNotebookError as exc:
        view.finish(None, f"{type(exc).__name__}: {exc}")
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if load:
        manager.load(spec, name, adapter=str(out))
        result.loaded = True
    view.finish(result)
    return result


class _Silent(views.TextTrainView):
    """``show=False``: nothing drawn, nothing printed (the result says it all)."""

    def note(self, text: str) -> None:
        pass

    def event(self, event: TrainEvent) -> None:
        pass

    def finish(self, result: TrainResult | None, error: str | None = None) -> None:
        pass


def _gb(n: int | None) -> str:
    from .units import format_bytes

    return "?" if n is None else format_bytes(n)


def _follow(run: Any, view: views.TrainView, result: TrainResult) -> None:
    """Read events to the end; a stop click or the first interrupt asks for a stop."""
    stop_sent = False
    while True:
        try:
            for event in run.events():
                result.add(event)
                view.event(event)
                view.pump()
                if view.stop_clicked and not stop_sent:
                    stop_sent = True
                    result.stop_at = run.stop()
                if event.final:
                    return
        except KeyboardInterrupt:
            if stop_sent:
                raise TrainingError(
                    f"training {result.name!r} abandoned by a second interrupt",
                    adapter_path=None) from None
            stop_sent = True
            view.note("stopping after the current step (interrupt again to abandon it)")
            result.stop_at = run.stop()


def fuse(model: str = "demo", *, adapter: str | os.PathLike[str],
         out: str | os.PathLike[str], timeout: float = 600.0) -> Path:
    """Write ``out``: a model folder with ``adapter`` fused into ``model``'s weights.

    Done in a runner-side subprocess (the kernel never imports MLX); the folder loads
    like any other: ``mn.load(str(out), name="fused")``.
    """
    from .control.client import runner_env, runner_python

    folder = Path(adapter).expanduser().resolve()
    if not (folder / "adapter_config.json").is_file():
        raise InvalidArgumentError(f"adapter folder {folder} has no adapter_config.json",
                                   field="adapter")
    target = Path(out).expanduser().resolve()
    python = runner_python()
    cmd = [python, "-m", "mlx_notebook.runner.fuse", "--model", _base_spec(model),
           "--adapter", str(folder), "--out", str(target)]
    try:
        done = subprocess.run(cmd, env=runner_env(python, dict(os.environ)), capture_output=True,
                              text=True, timeout=timeout, start_new_session=True, check=False)
    except subprocess.TimeoutExpired as exc:
        raise TrainingError(f"fusing {folder} took longer than {timeout:.0f} s") from exc
    if done.returncode != 0:
        last = [ln for ln in done.stderr.splitlines() if ln.strip()][-1:] or ["(no output)"]
        raise TrainingError(f"fusing {folder} into {model!r} failed: {last[0]}")
    with contextlib.suppress(OSError):
        (target / "fused_from.txt").write_text(f"{model} + {folder}\n")
    return target

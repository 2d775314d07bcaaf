"""Fine-tune one model with mlx-lm's own tuner; the events go to a list the server streams.

No training loop of our own: :func:`mlx_lm.tuner.trainer.train` runs it, set up
as ``mlx_lm.lora``'s ``train_model`` does (freeze, LoRA/DoRA layers or unfrozen
layers, Adam, ``adapter_config.json``). Two seams of mlx-lm are used:

- a :class:`TrainingCallback` turns its loss reports into :class:`TrainEvent`;
- its ``iterate_batches`` argument: ours ends the training iterator when a stop
  was asked, so ``train()`` leaves its loop after the current step and saves the
  adapter of that step (raising from a callback would skip the save).
"""

from __future__ import annotations

import json
import threading
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..train_protocol import TrainConfig, TrainEvent
from ..weight_format import resolve_dtype
from .fastblas import openblas_preloaded
from .models import LoadedModel, load_model
from .progress import one_line

__all__ = ["Trainer", "write_adapter_config"]

GB = 1e9


def write_adapter_config(path: Path, config: TrainConfig, spec: str, num_layers: int) -> None:
    """What ``mlx_lm.tuner.utils.load_adapters`` (and ``mlx_lm.fuse``) read back."""
    path.mkdir(parents=True, exist_ok=True)
    body = {
        "model": spec,
        "fine_tune_type": config.fine_tune_type,
        "num_layers": num_layers,
        "lora_parameters": {"rank": config.lora_rank, "dropout": 0.0, "scale": config.lora_scale},
        **{k: v for k, v in config.to_json().items() if k not in ("lora_rank", "lora_scale")},
    }
    (path / "adapter_config.json").write_text(json.dumps(body, indent=2) + "\n")


class Trainer:
    """Load, build the datasets and train on one thread; ``events`` grows as it goes."""

    def __init__(self, spec: str, data: Path, adapter_path: Path, config: TrainConfig,
                 dtype: str = "auto") -> None:
        self.spec, self.data, self.adapter_path, self.config = spec, data, adapter_path, config
        self.dtype = dtype
        self.state = "loading"  # loading -> training -> ready (done) | error
        self.progress, self.message = 0.0, "starting"
        self.error: str | None = None
        self.loaded: LoadedModel | None = None
        self.events: list[TrainEvent] = []
        self.changed = threading.Condition()
        self.stop_requested = threading.Event()
        self.iteration = 0
        self.last_loss: float | None = None
        self._started = time.monotonic()
        self._train_started: float | None = None

    # ------------------------------------------------------------ events

    def emit(self, event: TrainEvent) -> None:
        with self.changed:
            self.events.append(event)
            self.changed.notify_all()

    def wait_events(self, since: int, timeout: float) -> list[TrainEvent]:
        with self.changed:
            if len(self.events) <= since:
                self.changed.wait(timeout)
            return self.events[since:]

    def _elapsed(self) -> float:
        return time.monotonic() - self._started

    def _eta(self, iteration: int) -> float | None:
        if self._train_started is None or iteration <= 0:
            return None
        per_step = (time.monotonic() - self._train_started) / iteration
        return per_step * max(self.config.iters - iteration, 0)

    # ------------------------------------------------------------ the run

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # noqa: BLE001 - the one line goes to the kernel
            self.state, self.error = "error", one_line(exc)
            self.emit(TrainEvent("error", iteration=self.iteration, iters=self.config.iters,
                                 error=self.error, elapsed_seconds=self._elapsed()))

    def _run(self) -> None:
        import mlx.core as mx
        import mlx.optimizers as optim
        from mlx_lm.tuner.datasets import CacheDataset, load_local_dataset
        from mlx_lm.tuner.trainer import TrainingArgs, train
        from mlx_lm.tuner.utils import linear_to_lora_layers

        cfg = self.config
        device = mx.default_device().type.name.lower()
        dtype = resolve_dtype(self.dtype, device, openblas=openblas_preloaded())
        self.loaded = load_model(self.spec, progress=self._on_load, dtype=dtype)
        model = self.loaded.model
        self.message = "reading the data"
        names = types.SimpleNamespace(mask_prompt=cfg.mask_prompt)
        train_set, valid_set, _ = load_local_dataset(self.data, self.loaded.tokenizer, names)
        if len(train_set) < cfg.batch_size:
            raise ValueError(f"{len(train_set)} training examples, fewer than the batch size "
                             f"{cfg.batch_size}")
        mx.random.seed(cfg.seed)
        model.freeze()
        layers = min(cfg.lora_layers, len(model.layers)) if cfg.lora_layers > 0 \
            else len(model.layers)
        if cfg.fine_tune_type == "full":
            for layer in model.layers[-layers:]:
                layer.unfreeze()
        else:
            linear_to_lora_layers(model, layers, {"rank": cfg.lora_rank, "dropout": 0.0,
                                                  "scale": cfg.lora_scale},
                                  use_dora=cfg.fine_tune_type == "dora")
        write_adapter_config(self.adapter_path, cfg, self.spec, layers)
        args = TrainingArgs(
            batch_size=cfg.batch_size, iters=cfg.iters, val_batches=cfg.val_batches,
            steps_per_report=1, steps_per_eval=cfg.steps_per_eval, steps_per_save=cfg.save_every,
            adapter_file=str(self.adapter_path / "adapters.safetensors"),
            max_seq_length=cfg.max_seq_length, grad_checkpoint=cfg.grad_checkpoint)
        optimizer = optim.Adam(learning_rate=cfg.learning_rate)
        self.state, self.message = "training", "training"
        self._train_started = time.monotonic()
        train(model=model, optimizer=optimizer, train_dataset=CacheDataset(train_set),
              val_dataset=CacheDataset(valid_set) if len(valid_set) >= cfg.batch_size else None,
              args=args, iterate_batches=self._batches, training_callback=_Callback(self))
        self.state = "ready"
        self.message = "stopped" if self.stop_requested.is_set() else "done"
        self.emit(TrainEvent("done", iteration=self.iteration, iters=cfg.iters,
                             train_loss=self.last_loss, adapter_path=str(self.adapter_path),
                             stopped=self.stop_requested.is_set(),
                             peak_memory=int(mx.get_peak_memory()),
                             elapsed_seconds=self._elapsed()))

    def _on_load(self, percent: float, message: str) -> None:
        self.progress, self.message = percent, message

    def _batches(self, dataset: Any, batch_size: int, max_seq_length: int, loop: bool = False,
                 seed: int | None = None, comm_group: Any = None) -> Iterator[Any]:
        """mlx-lm's batches; the training iterator ends once a stop is asked."""
        from mlx_lm.tuner.trainer import iterate_batches

        for batch in iterate_batches(dataset, batch_size, max_seq_length, loop=loop,
                                     seed=self.config.seed if loop else seed,
                                     comm_group=comm_group):
            if loop and self.stop_requested.is_set():
                return
            yield batch


class _Callback:
    """mlx-lm's TrainingCallback (duck-typed: it has two hooks) feeding the event list."""

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer

    def on_train_loss_report(self, info: dict[str, Any]) -> None:
        t = self.trainer
        it = int(info["iteration"])
        t.iteration, t.last_loss = it, float(info["train_loss"])
        t.progress = 100.0 * it / max(t.config.iters, 1)
        t.emit(TrainEvent(
            "train", iteration=it, iters=t.config.iters, train_loss=t.last_loss,
            learning_rate=float(info["learning_rate"]),
            tokens_per_second=float(info["tokens_per_second"]),
            iterations_per_second=float(info["iterations_per_second"]),
            trained_tokens=int(info["trained_tokens"]),
            peak_memory=int(float(info["peak_memory"]) * GB),
            eta_seconds=t._eta(it), elapsed_seconds=t._elapsed()))
        if t.config.save_every and it % t.config.save_every == 0:
            t.emit(TrainEvent("saved", iteration=it, iters=t.config.iters,
                              adapter_path=str(t.adapter_path)))

    def on_val_loss_report(self, info: dict[str, Any]) -> None:
        t = self.trainer
        t.emit(TrainEvent("val", iteration=int(info["iteration"]), iters=t.config.iters,
                          val_loss=float(info["val_loss"]), elapsed_seconds=t._elapsed()))

"""Wire types of the training runner (``python -m mlx_notebook.runner.train``); no MLX, no httpx.

The training runner speaks the same loopback protocol as the serving runner
(handshake line, bearer token by environment, ``/v1/status``, ``/v1/shutdown``)
plus two endpoints of its own (docs/protocol.md, "Training"):

- ``GET /v1/train/events?since=N``: NDJSON, one :class:`TrainEvent` a line from
  event number N on, a keep-alive line when silent, closed after the last event
  (``done`` or ``error``);
- ``POST /v1/train/stop``: stop after the current step; the trainer then saves
  the adapter of that step and says ``done`` with ``stopped: true``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

__all__ = ["FINE_TUNE_TYPES", "TRAIN_ENDPOINTS", "TrainConfig", "TrainEvent", "EventKind"]

FINE_TUNE_TYPES = ("lora", "dora", "full")
TRAIN_ENDPOINTS: dict[str, tuple[str, str]] = {
    "events": ("GET", "/v1/train/events"),
    "stop": ("POST", "/v1/train/stop"),
}
# train: a step's report; val: a validation loss; saved: a checkpoint; done/error: the end.
EventKind = Literal["train", "val", "saved", "done", "error", "keepalive"]


@dataclass(frozen=True)
class TrainConfig:
    """What the trainer is asked to do; mlx-lm's ``lora`` options under our names."""

    iters: int = 100
    batch_size: int = 4
    learning_rate: float = 1e-5
    lora_rank: int = 8
    lora_layers: int = 16
    lora_scale: float = 20.0
    fine_tune_type: str = "lora"
    mask_prompt: bool = False
    grad_checkpoint: bool = False
    seed: int = 0
    save_every: int = 100
    max_seq_length: int = 2048
    val_batches: int = 2
    steps_per_eval: int = 50

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class TrainEvent:
    """One line of the event stream; fields not relevant to ``kind`` are left at their defaults."""

    kind: EventKind
    iteration: int = 0
    iters: int = 0
    train_loss: float | None = None
    val_loss: float | None = None
    learning_rate: float | None = None
    tokens_per_second: float | None = None
    iterations_per_second: float | None = None
    trained_tokens: int = 0
    peak_memory: int = 0  # bytes (mlx-lm reports GB)
    eta_seconds: float | None = None
    elapsed_seconds: float = 0.0
    adapter_path: str = ""
    stopped: bool = False  # done: ended by a stop request, not by reaching ``iters``
    error: str | None = None
    message: str = ""

    @property
    def final(self) -> bool:
        return self.kind in ("done", "error")

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v not in (None, "", False, 0, 0.0)
                or k == "kind"}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrainEvent:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

"""One model over several processes with MLX's own distributed engine (ring backend).

Every rank runs the same :class:`~mlx_notebook.runner.decode.DecodeLoop` as a
replicated state machine: at each step rank 0 decides a :class:`Plan` (requests
admitted with their prompt tokens and options, requests removed, stop) and
broadcasts it; every rank applies the same plan to its ``BatchGenerator`` and
then decodes one step together. Only rank 0 serves HTTP.

Sharding is mlx-lm's: ``model.shard(group)`` (tensor parallel; llama, qwen2/3,
deepseek, ...) or ``model.model.pipeline(group)`` (pipeline; models built on
mlx-lm's ``PipelineMixin``). Neither is reimplemented here.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass, field
from typing import Any

import mlx.core as mx

from ..protocol import SamplingOptions
from .mx_values import as_int, from_bytes, to_bytes

SHARD_MODES = ("tensor", "pipeline")
_FACTS_BYTES = 512  # one rank's facts (JSON, zero-padded) in the status gather


class ShardError(ValueError):
    """The model cannot be split this way over this many ranks; the message says why."""


@dataclass
class Admit:
    """A request every rank inserts into its generator, with everything sampling needs."""

    request_id: str
    tokens: list[int]
    options: SamplingOptions


@dataclass
class Plan:
    """What all ranks do before the next decode step; rank 0 decides it."""

    admit: list[Admit] = field(default_factory=list)
    remove: list[str] = field(default_factory=list)  # request ids: cancels and stop strings
    report: bool = False  # gather every rank's facts for the status
    stop: bool = False
    free: bool = False  # drop the reusable prompt cache and MLX's buffer cache

    @property
    def empty(self) -> bool:
        return not (self.admit or self.remove or self.report or self.stop or self.free)

    def to_bytes(self) -> bytes:
        return json.dumps({
            "admit": [{"id": a.request_id, "tokens": a.tokens, "options": a.options.to_json()}
                      for a in self.admit],
            "remove": self.remove, "report": self.report, "stop": self.stop, "free": self.free,
        }, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Plan:
        raw = json.loads(data)
        return cls(admit=[Admit(a["id"], list(a["tokens"]), SamplingOptions.from_json(a["options"]))
                          for a in raw["admit"]],
                   remove=list(raw["remove"]), report=bool(raw["report"]), stop=bool(raw["stop"]),
                   free=bool(raw.get("free")))


class Distributed:
    """This process's place in the group: connect, shard the model, share plans, gather facts."""

    def __init__(self, hostfile: str, rank: int, shard: str = "tensor",
                 backend: str = "ring") -> None:
        if shard not in SHARD_MODES:
            raise ShardError(f"--shard must be one of {', '.join(SHARD_MODES)}, not {shard!r}")
        self.hostfile, self.rank, self.shard, self.backend = hostfile, rank, shard, backend
        self.group: Any = None
        # The plan's collectives must run on the stream the model decodes on: the ring
        # pairs collectives by order, and another stream could overtake a step in flight.
        self.stream: Any = None
        self._in_flight: list[Any] = []  # rank 0's last broadcast, kept alive until it is sent

    @property
    def size(self) -> int:
        return self.group.size() if self.group is not None else 0

    def connect(self) -> None:
        """Join the ring; blocks until every rank has connected."""
        # MLX reads these two variables; the runner takes them as flags so that its
        # argv says what it is, and mlx.launch (which sets them itself) still works.
        os.environ["MLX_HOSTFILE"] = self.hostfile
        os.environ["MLX_RANK"] = str(self.rank)
        self.group = mx.distributed.init(backend=self.backend, strict=True)
        if self.group.rank() != self.rank:
            raise ShardError(f"MLX put this process at rank {self.group.rank()}, not {self.rank}")

    def prepare(self, model: Any) -> None:
        """Split ``model`` (still lazy: only this rank's part is ever read) over the group."""
        n = self.size
        kind = getattr(model, "model_type", None) or type(model).__module__.rsplit(".", 1)[-1]
        if self.shard == "pipeline":
            inner: Any = getattr(model, "model", None)
            if not hasattr(inner, "pipeline"):
                raise ShardError(
                    f"model type {kind!r} has no pipeline support in mlx-lm; use --shard tensor "
                    "(or a model built on mlx-lm's PipelineMixin, such as qwen2, qwen3, deepseek)")
            layers = len(inner.layers)
            if layers < n:
                raise ShardError(f"pipeline over {n} ranks needs at least {n} layers; "
                                 f"model type {kind!r} has {layers}")
            inner.pipeline(self.group)
            return
        if not hasattr(model, "shard"):
            raise ShardError(f"model type {kind!r} has no tensor-parallel support in mlx-lm "
                             "(no shard()); try --shard pipeline")
        args = getattr(model, "args", None)
        heads = {name: getattr(args, name) for name in ("num_attention_heads", "num_key_value_heads")
                 if isinstance(getattr(args, name, None), int)}
        odd = {name: count for name, count in heads.items() if count % n}
        if odd:
            counts = " and ".join(f"{c} {'query' if 'attention' in k else 'key/value'} heads"
                                  for k, c in heads.items())
            fits = [r for r in range(2, 17) if all(c % r == 0 for c in heads.values())]
            hint = (f"run it on {' or '.join(map(str, fits[:4]))} ranks" if fits
                    else "use a single runner")
            raise ShardError(f"tensor parallel over {n} ranks needs head counts divisible by {n}; "
                             f"model type {kind!r} has {counts}: {hint}")
        model.shard(self.group)

    # ------------------------------------------------------------ per-step collectives

    def share(self, payload: bytes | None) -> bytes | None:
        """Rank 0's bytes on every rank (None: nothing this step). One all_sum when empty.

        Rank 0 never waits here (it knows what it sent): the decode step in flight keeps
        running while its HTTP threads and the next plan are prepared. The others wait.
        """
        kw = {"group": self.group, "stream": self.stream}
        if self.rank == 0:
            mine = payload or b""
            sent = [mx.distributed.all_sum(mx.array(len(mine)), **kw)]
            if mine:
                sent.append(mx.distributed.all_sum(from_bytes(mine), **kw))
            # One async_eval each: they run in submission order on the decode stream, as the
            # other ranks run them (one eval of both could run the data collective first).
            for array in sent:
                mx.async_eval(array)
            self._in_flight = sent
            return payload
        size = as_int(mx.distributed.all_sum(mx.array(0), **kw))
        if size == 0:
            return None
        shared = mx.distributed.all_sum(mx.zeros(size, dtype=mx.uint8), **kw)
        mx.eval(shared)
        return to_bytes(shared)

    def gather(self, facts: dict[str, Any]) -> list[dict[str, Any]]:
        """Every rank's ``facts`` (small JSON), in rank order, on every rank."""
        raw = json.dumps(facts, separators=(",", ":")).encode()[:_FACTS_BYTES]
        buf = from_bytes(raw.ljust(_FACTS_BYTES, b"\0"))
        gathered = mx.distributed.all_gather(buf, group=self.group, stream=self.stream)
        mx.eval(gathered)
        everyone = to_bytes(gathered)
        out = []
        for r in range(self.size):
            chunk = everyone[r * _FACTS_BYTES:(r + 1) * _FACTS_BYTES].rstrip(b"\0")
            try:
                out.append(json.loads(chunk))
            except ValueError:
                out.append({"rank": r})
        return out

    def address(self) -> str:
        """This rank's first ring address (the IP part), as the hostfile gives it."""
        try:
            with open(self.hostfile) as f:
                return str(json.load(f)[self.rank][0]).rsplit(":", 1)[0]
        except (OSError, ValueError, LookupError, TypeError):
            return ""

    def facts(self) -> dict[str, Any]:
        """What the status shows about this rank."""
        return {"rank": self.rank, "host": socket.gethostname(), "address": self.address(),
                "pid": os.getpid(),
                "active": mx.get_active_memory(), "peak": mx.get_peak_memory()}

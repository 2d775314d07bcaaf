"""Reproducibility: what made an output (model and its hash, options, seed, versions), and a re-run.

>>> r = mn.generate("Name a colour", max_tokens=8)                 # doctest: +SKIP
>>> meta = metadata_for(r)                                          # doctest: +SKIP
>>> meta.to_json()       # store it with the output (cell metadata, a JSON file)
>>> rerun(RunMetadata.from_json(saved)).text == r.text             # doctest: +SKIP

Greedy runs and seeded sampled runs repeat exactly on the same model files and
versions; the runner gives each seeded request its own random key, so batching
with other requests does not change the answer.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import importlib.metadata
import json
import os
import subprocess
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ... import api
from ...errors import MLXNotebookError
from ...protocol import ChatMessage, CompletionRequest, SamplingOptions

if TYPE_CHECKING:
    from ...api import GenerationResult
    from ...control.connection import RunnerConnection

__all__ = ["ReproducibilityWarning", "RunMetadata", "metadata_for", "metadata_for_request",
           "output_metadata", "rerun", "runner_versions"]

METADATA_KEY = "mlx_notebook"  # key under a display output's metadata
PACKAGES = ("mlx", "mlx-lm", "mlx-notebook")


class ReproducibilityWarning(UserWarning):
    """A re-run on model files or versions other than the recorded ones."""


@dataclass(frozen=True)
class RunMetadata:
    """Everything needed to make an output again; JSON-safe through ``to_json``."""

    model: str  # the runner's name in the notebook
    spec: str  # what it was loaded from: demo, a folder, a Hugging Face id, a .gguf
    source: str
    source_hash: str
    options: dict[str, Any]
    prompt: str | None = None  # a raw prompt, sent as is
    messages: list[dict[str, str]] | None = None  # or chat messages, templated by the runner
    text: str = ""  # the output, to compare a re-run against
    versions: dict[str, str] = field(default_factory=dict)
    created: str = ""

    @property
    def seed(self) -> int | None:
        return self.options.get("seed")

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any] | str) -> RunMetadata:
        obj = json.loads(data) if isinstance(data, str) else data
        assert isinstance(obj, dict)
        obj = obj.get(METADATA_KEY, obj)  # a whole output-metadata dict works too
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in obj.items() if k in known})

    def request(self) -> CompletionRequest:
        """The completion request that made the output."""
        options = SamplingOptions.from_json(self.options)
        if self.messages is not None:
            msgs = tuple(ChatMessage(m["role"], m["content"]) for m in self.messages)
            return CompletionRequest(messages=msgs, options=options)
        return CompletionRequest(prompt=self.prompt or "", options=options)


@functools.lru_cache(maxsize=8)
def _versions_of(python: str) -> tuple[tuple[str, str], ...]:
    if os.path.realpath(python) == os.path.realpath(sys.executable):
        found = {}
        for name in PACKAGES:
            try:
                found[name] = importlib.metadata.version(name)  # metadata only: no mlx import
            except importlib.metadata.PackageNotFoundError:
                found[name] = ""
        return tuple(found.items())
    code = ("import importlib.metadata as m, json\nout = {}\n"
            f"for n in {PACKAGES!r}:\n"
            "    try: out[n] = m.version(n)\n    except m.PackageNotFoundError: out[n] = ''\n"
            "print(json.dumps(out))")
    proc = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=60,
                          check=False)
    try:
        return tuple(json.loads(proc.stdout).items())
    except ValueError:
        return tuple((n, "") for n in PACKAGES)


def runner_versions(client: RunnerConnection) -> dict[str, str]:
    """mlx, mlx-lm and mlx-notebook versions of the interpreter that runs ``client``."""
    if client.python is None:  # a remote runner: its interpreter is on another machine
        return dict.fromkeys(PACKAGES, "")
    return dict(_versions_of(client.python))


def _status_json(client: RunnerConnection) -> dict[str, Any]:
    return client.status().to_json()


def metadata_for_request(client: RunnerConnection, request: CompletionRequest | dict[str, Any],
                         text: str = "") -> RunMetadata:
    """Metadata of a request sent to ``client`` (and the ``text`` it produced)."""
    if isinstance(request, CompletionRequest):
        request = request.to_json()
    status = _status_json(client)
    return RunMetadata(
        model=client.name, spec=client.spec, source=str(status.get("source", "")),
        source_hash=str(status.get("source_hash", "")), options=dict(request["options"]),
        prompt=request.get("prompt"), messages=request.get("messages"), text=text,
        versions=runner_versions(client),
        created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))


def metadata_for(result: GenerationResult, *, system: str | None = None, raw: bool = False,
                 messages: Sequence[ChatMessage] | None = None,
                 model: str | RunnerConnection | None = None) -> RunMetadata:
    """Metadata of a :class:`GenerationResult`; give ``system``/``raw``/``messages`` as used.

    A GenerationResult keeps only the last message, so a chat turn needs ``messages``.
    """
    client = api.get_client(model if model is not None else result.name)
    request = api.completion_request(result.prompt, result.options, system=system, raw=raw,
                                     messages=messages)
    return metadata_for_request(client, request, result.text)


def output_metadata(meta: RunMetadata) -> dict[str, Any]:
    """For ``display(..., metadata=output_metadata(meta))``: saved with the output in the .ipynb."""
    return {METADATA_KEY: meta.to_json()}


def _find_or_load(meta: RunMetadata) -> RunnerConnection:
    from ...control.manager import get_manager

    manager = get_manager()
    for name in [meta.model, *manager.names()]:
        try:
            client = manager.get(name)
        except MLXNotebookError:  # not loaded under that name (or dead): look further
            continue
        if client.spec == meta.spec:
            return client
    return api.load(meta.spec, name=meta.model if meta.model not in manager.names() else None)


def rerun(meta: RunMetadata | dict[str, Any] | str, *,
          model: str | RunnerConnection | None = None) -> GenerationResult:
    """Run a recorded generation again (loading its model if needed); warns on drift."""
    from ...api import GenerationResult

    if not isinstance(meta, RunMetadata):
        meta = RunMetadata.from_json(meta)
    client = api.get_client(model) if model is not None else _find_or_load(meta)
    status = _status_json(client)
    if meta.source_hash and status.get("source_hash") != meta.source_hash:
        warnings.warn(f"re-running on {status.get('source')!r} (hash {status.get('source_hash')}),"
                      f" recorded on {meta.source!r} (hash {meta.source_hash}): the text may "
                      "differ", ReproducibilityWarning, stacklevel=2)
    now = runner_versions(client)
    drift = {k: (v, now.get(k)) for k, v in meta.versions.items() if v and now.get(k) != v}
    if drift:
        warnings.warn(f"versions differ from the recorded ones (recorded, now): {drift}",
                      ReproducibilityWarning, stacklevel=2)
    request = meta.request()
    text, done = client.complete(request)
    n = done.completion_tokens
    return GenerationResult(
        text=text, model=client.spec, finish_reason=done.done_reason,
        prompt_tokens=done.prompt_tokens, completion_tokens=n,
        cached_tokens=done.cached_tokens, time_to_first_token=done.time_to_first_token,
        tokens_per_second=(n - 1) / done.eval_duration if done.eval_duration > 0 and n > 1
        else 0.0, options=request.options, seed=request.options.seed, name=client.name,
        request_id=done.request_id,
        prompt=meta.prompt if meta.prompt is not None else (meta.messages or [{}])[-1].get(
            "content", ""))

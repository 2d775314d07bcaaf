"""docs/protocol.md and mlx_notebook/protocol.py describe the same protocol."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from mlx_notebook import inside_protocol, prompt_cache_protocol, protocol, train_protocol

DOC = (Path(__file__).parent.parent / "docs" / "protocol.md").read_text()
# Every dataclass of the protocol modules: a new wire type is checked without being listed.
WIRE_MODULES = (protocol, inside_protocol, prompt_cache_protocol, train_protocol)
WIRE_TYPES = sorted((obj for module in WIRE_MODULES for obj in vars(module).values()
                     if dataclasses.is_dataclass(obj) and obj.__module__ == module.__name__),
                    key=lambda cls: cls.__name__)


@pytest.mark.parametrize("name", sorted(protocol.ENDPOINTS))
def test_every_endpoint_is_documented(name):
    method, path = protocol.ENDPOINTS[name]
    assert re.search(rf"\| {method} \| `{re.escape(path)}` \|", DOC), (method, path)


@pytest.mark.parametrize("name", sorted(train_protocol.TRAIN_ENDPOINTS))
def test_every_training_endpoint_is_documented(name):
    method, path = train_protocol.TRAIN_ENDPOINTS[name]
    assert re.search(rf"\| {method} \| `{re.escape(path)}[?`]", DOC), (method, path)


def test_no_documented_endpoint_is_missing_from_the_code():
    documented = set(re.findall(r"\| (?:GET|POST) \| `(/v1/[a-z/]+)` \|", DOC))
    training = {path for _, path in train_protocol.TRAIN_ENDPOINTS.values()}
    assert documented - training == {path for _, path in protocol.ENDPOINTS.values()}


@pytest.mark.parametrize("cls", WIRE_TYPES, ids=lambda c: c.__name__)
def test_every_field_is_documented(cls):
    if cls is not protocol.Handshake:
        assert f"`{cls.__name__}`" in DOC
    for field in dataclasses.fields(cls):
        assert f"`{field.name}`" in DOC or f'"{field.name}"' in DOC, (cls.__name__, field.name)


def test_documented_defaults_match_the_code():
    defaults = protocol.SamplingOptions()
    rows = dict(re.findall(r"\| `(\w+)` \| ([^|]+) \|", DOC))
    for field in dataclasses.fields(protocol.SamplingOptions):
        value = getattr(defaults, field.name)
        shown = {None: "null", (): "[]"}.get(value, str(value)) if not isinstance(value, tuple) \
            else "[]"
        assert rows[field.name].strip() == shown, field.name


def test_events_round_trip_through_ndjson():
    chunk = protocol.ChunkEvent(content="é", tokens=(1, 2), logprobs=(
        protocol.TokenLogprob(1, "a", -0.5, (protocol.TopLogprob(1, "a", -0.5),)),))
    done = protocol.DoneEvent(done_reason="stop", prompt_tokens=3, cached_tokens=2)
    error = protocol.ErrorEvent(error="boom", request_id="r")
    progress = protocol.ProgressEvent(processed=512, total=2000)
    for event in (chunk, done, error, progress):
        line = protocol.encode_event(event)
        assert line.endswith(b"\n") and line.count(b"\n") == 1
        assert protocol.decode_event(line) == event

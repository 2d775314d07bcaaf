"""Structured output and mn.map, with real runners: the tiny model for plumbing, the demo where
the behaviour matters (answers that finish validate; a cut answer says so)."""

from __future__ import annotations

import concurrent.futures as cf
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from IPython.core.error import UsageError
from pydantic import BaseModel, Field

import mlx_notebook as mn
from mlx_notebook.control.client import RunnerClient
from mlx_notebook.errors import GenerationError, InvalidArgumentError
from mlx_notebook.protocol import (
    ChatMessage,
    CompletionRequest,
    Constraint,
    SamplingOptions,
    TokenLogprob,
    ValidationError,
)
from mlx_notebook.structured import output_spec, pretty_json_prefix
from tests import frontend_helpers

shell = frontend_helpers.shell  # fixture

pd = pytest.importorskip("pandas")


class Paper(BaseModel):
    topic: str = Field(max_length=12)
    year: int
    open_access: bool


def _request(prompt: str, constraint: Constraint | None, **options: Any) -> CompletionRequest:
    return CompletionRequest(messages=(ChatMessage("user", prompt),),
                             options=SamplingOptions(**{"max_tokens": 16, **options}),
                             constraint=constraint)


# ---------------------------------------------------------------- no runner


def test_constraint_round_trips_and_bad_ones_name_their_field() -> None:
    for c in (Constraint("json"), Constraint("regex", pattern="a+"),
              Constraint("choice", choices=("yes", "no")),
              Constraint("json_schema", schema={"type": "integer"})):
        req = CompletionRequest(prompt="x", constraint=c)
        assert CompletionRequest.from_json(json.loads(json.dumps(req.to_json()))) == req
    for body, field in [({"kind": "xml"}, "constraint.kind"),
                        ({"kind": "regex"}, "constraint.pattern"),
                        ({"kind": "choice", "choices": []}, "constraint.choices"),
                        ({"kind": "json_schema", "schema": 3}, "constraint.schema"),
                        ({"kind": "json", "pattern": "a"}, "constraint.pattern")]:
        with pytest.raises(ValidationError) as info:
            CompletionRequest.from_json({"prompt": "x", "constraint": body})
        assert info.value.field == field


def test_output_spec_checks_and_parses() -> None:
    with pytest.raises(InvalidArgumentError, match="not several") as info:
        output_spec(json=True, regex="a")
    assert info.value.field == "regex"
    with pytest.raises(InvalidArgumentError, match="pydantic model class"):
        output_spec(schema=Paper(topic="x", year=1, open_access=True))
    with pytest.raises(InvalidArgumentError, match="--choice needs"):
        output_spec(choices=[], names={"choices": "--choice"})
    spec = output_spec(schema=Paper)
    assert spec is not None and spec.constraint.schema["additionalProperties"] is False
    assert spec.fields == ["topic", "year", "open_access"]
    value, error = spec.parse('{"topic": "nlp", "year": 2017, "open_access": true}', "stop")
    assert value == Paper(topic="nlp", year=2017, open_access=True) and not error
    assert spec.parse('{"topic": "nlp", "ye', "length") == (None, "the answer was cut at "
                                                             "max_tokens before it was complete")
    assert output_spec(choices="yes, no").constraint.choices == ("yes", "no")  # type: ignore[union-attr]
    assert pretty_json_prefix('{"a":[1,{"b":"x, y"}],"c":{}}') == \
        '{\n  "a": [\n    1,\n    {\n      "b": "x, y"\n    }\n  ],\n  "c": {}\n}'


# ---------------------------------------------------------------- the runner (tiny model)


@pytest.mark.parametrize("constraint,needle", [
    (Constraint("regex", pattern="(?=a)b"), "look-around"),
    (Constraint("json_schema", schema={"type": "integer", "minimum": 5, "maximum": 1}),
     "Unsatisfiable"),
    (Constraint("json_schema", schema={"type": "strin"}), "strin"),
])
def test_a_constraint_that_cannot_compile_is_a_400_naming_it(
        tiny_client: RunnerClient, constraint: Constraint, needle: str) -> None:
    with pytest.raises(GenerationError, match=needle) as info:
        tiny_client.complete(_request("hi", constraint))
    assert "HTTP 400" in str(info.value) and "constraint" in str(info.value)


def test_regex_choice_and_logprobs_on_the_tiny_model(tiny_client: RunnerClient) -> None:
    for seed in range(3):
        text, done = tiny_client.complete(_request(
            "hi", Constraint("regex", pattern=r"[0-9]{3}-[a-c]{2}"), temperature=1.0, seed=seed))
        assert re.fullmatch(r"[0-9]{3}-[a-c]{2}", text) and done.done_reason == "stop"
        text, _ = tiny_client.complete(_request(
            "hi", Constraint("choice", choices=("alpha", "beta", "gamma")), temperature=1.0,
            seed=seed))
        assert text in ("alpha", "beta", "gamma")
    with tiny_client.stream(_request("hi", Constraint("choice", choices=("yes", "no")),
                                     logprobs=5)) as stream:
        chunks = list(stream)
    tops = [t for c in chunks for lp in c.logprobs for t in lp.top]
    assert tops and all(t.logprob > float("-inf") for t in tops)  # masked: left out, never -inf


def test_a_batch_of_mixed_requests_gives_each_what_it_gets_alone(
        tiny_client: RunnerClient) -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"},
                                                 "b": {"type": "string", "maxLength": 4}},
              "required": ["a", "b"]}
    constraints = [Constraint("json_schema", schema=schema), None,
                   Constraint("regex", pattern="[a-z]{2,6}"), None,
                   Constraint("choice", choices=("one", "two", "three")), None,
                   Constraint("json"), Constraint("json_schema", schema=schema)]
    requests = [_request(f"row {i}", c, max_tokens=12) for i, c in enumerate(constraints)]
    alone = [tiny_client.complete(r)[0] for r in requests]
    with cf.ThreadPoolExecutor(len(requests)) as pool:
        together = [t for t, _ in pool.map(tiny_client.complete, requests)]
    assert together == alone


# ---------------------------------------------------------------- the demo model


SCHEMAS = st.fixed_dictionaries({
    "name": st.fixed_dictionaries({"type": st.just("string"),
                                   "maxLength": st.integers(1, 8)}),
    "level": st.fixed_dictionaries({"enum": st.lists(st.sampled_from(
        ["low", "mid", "high", "none"]), min_size=1, max_size=3, unique=True)}),
    "score": st.fixed_dictionaries({"type": st.sampled_from(["integer", "number"]),
                                    "minimum": st.integers(0, 5),
                                    "maximum": st.integers(6, 99)}),
    "tags": st.fixed_dictionaries({"type": st.just("array"),
                                   "items": st.just({"type": "integer", "minimum": 0,
                                                     "maximum": 9}),
                                   "maxItems": st.integers(0, 2)}),
}).flatmap(lambda props: st.fixed_dictionaries({
    "type": st.just("object"), "properties": st.just(props), "additionalProperties": st.just(False),
    "required": st.lists(st.sampled_from(sorted(props)), unique=True).map(sorted)}))


@pytest.mark.slow
@settings(max_examples=5, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(schema=SCHEMAS, seed=st.integers(0, 2**16))
def test_demo_answers_that_finish_validate(demo_client: RunnerClient, schema: dict[str, Any],
                                           seed: int) -> None:
    text, done = demo_client.complete(_request(
        "Describe a sensor reading as JSON.", Constraint("json_schema", schema=schema),
        temperature=0.8, seed=seed, max_tokens=40))
    if done.done_reason == "stop":
        jsonschema.validate(json.loads(text), schema)
    else:
        assert done.done_reason == "length" and done.completion_tokens == 40


@pytest.mark.slow
def test_demo_cut_answer_and_value(no_models: None, shell: Any) -> None:
    mn.load("demo")
    cut = mn.generate("Describe a paper as JSON.", schema=Paper, max_tokens=3)
    assert cut.finish_reason == "length" and cut.value is None and "max_tokens" in cut.error
    answer = mn.generate("Is the sky blue? Answer yes or no.", choices=["yes", "no"])
    assert answer.value in ("yes", "no") and answer.text == answer.value
    shell.user_ns["Paper"] = Paper
    shell.run_cell_magic("mlx", "generate --schema Paper --max-tokens 48 -o p",
                         'Extract as JSON: "Attention is all you need (2017), freely on arXiv."')
    p = shell.user_ns["p"]
    assert (p.value is None) == (p.finish_reason != "stop")
    if p.value is not None:
        assert isinstance(p.value, Paper)
    with pytest.raises(UsageError, match="--schema Nope: no such variable"):
        shell.run_cell_magic("mlx", "generate --schema Nope", "x")
    with pytest.raises(UsageError, match="--json, --regex, not several"):
        shell.run_cell_magic("mlx", "generate --json --regex a", "x")


# ---------------------------------------------------------------- mn.map (tiny model)


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path) -> Iterator[str]:
    mn.load(str(tiny_model_dir), name="tiny-map")
    try:
        yield "tiny-map"
    finally:
        mn.unload(all=True)


def test_map_keeps_order_and_reports_a_failing_row(tiny: str) -> None:
    rows: list[dict[str, Any]] = [{"n": i} for i in range(40)]
    rows[17] = {"m": 17}  # no {n}: this row fails, the others go on
    seen: list[int] = []
    out = mn.map("Count {n}:", rows, model=tiny, max_tokens=3, choices=["a", "b"],
                 on_row=lambda i, _r: seen.append(i))
    assert len(out) == 40 and sorted(seen) == list(range(40))
    assert [r.prompt for i, r in enumerate(out) if i != 17] == \
        [f"Count {i}:" for i in range(40) if i != 17]
    assert out[17].finish_reason == "error" and "n" in out[17].error
    assert all(r.value in ("a", "b") for i, r in enumerate(out) if i != 17)


def test_map_stopped_midway_returns_the_finished_rows(tiny: str) -> None:
    done: list[int] = []

    def stop_after_ten(i: int, _r: Any) -> None:
        done.append(i)
        if len(done) == 10:
            raise KeyboardInterrupt  # what the notebook's stop button sends
    out = mn.map("Say {row}", [f"w{i}" for i in range(40)], model=tiny, max_tokens=24,
                 concurrency=2, on_row=stop_after_ten)
    finished = [r for r in out if r.finish_reason in ("stop", "length")]
    assert len(out) == 40 and 10 <= len(finished) < 40
    assert all(r.finish_reason == "cancel" for r in out if r not in finished)
    assert mn.generate("still fine", model=tiny, max_tokens=2).completion_tokens > 0


def test_map_over_a_dataframe_magic_and_function(tiny: str, shell: Any) -> None:
    class Row(BaseModel):
        label: Literal["x", "y"]
        n: int = Field(ge=0, le=9)

    df = pd.DataFrame({"title": ["a", "b", "c"]}, index=[10, 11, 12])
    out = mn.map("Label {title}:", df, model=tiny, schema=Row, max_tokens=16, show=False)
    assert list(out.index) == [10, 11, 12]
    assert list(out.columns) == ["text", "label", "n", "finish_reason", "error"]
    for _, row in out.iterrows():
        if row.finish_reason == "stop":
            assert row.label in ("x", "y") and 0 <= row.n <= 9
    shell.user_ns.update(df=df)
    shell.run_cell_magic("mlx", f"map --over df -m {tiny} --choice yes,no --max-tokens 8 -o got",
                         "Is {title} a letter?")
    got = shell.user_ns["got"]
    assert list(got.columns) == ["text", "value", "finish_reason", "error"]
    assert set(got.value) <= {"yes", "no"}
    with pytest.raises(UsageError, match="no \\{field\\}"):
        shell.run_cell_magic("mlx", f"map --over df -m {tiny}", "no fields here")


def _first_logprobs(client: RunnerClient, request: CompletionRequest) -> list[TokenLogprob]:
    with client.stream(request) as stream:
        return [lp for chunk in stream for lp in chunk.logprobs]


def test_the_models_own_choice_shows_where_the_constraint_overruled_it(
        tiny_client: RunnerClient) -> None:
    free = _first_logprobs(tiny_client, _request("hi", None, logprobs=1, max_tokens=1))[0]
    choice = Constraint("choice", choices=("yes", "no"))
    alone = _first_logprobs(tiny_client, _request("hi", choice, logprobs=1))
    first = alone[0]
    # the random tiny model does not start with "yes" or "no": the mask overruled it
    assert first.token != free.token and first.unconstrained is not None
    assert first.unconstrained.token == free.token
    assert abs(first.unconstrained.logprob - free.logprob) < 1e-3
    assert all(lp.unconstrained is None or lp.unconstrained.token != lp.token for lp in alone)
    # the batch path records the same, row by row
    requests = [_request("hi", choice, logprobs=1) for _ in range(3)]
    with cf.ThreadPoolExecutor(3) as pool:
        together = list(pool.map(lambda r: _first_logprobs(tiny_client, r), requests))
    for row in together:
        assert [lp.unconstrained and lp.unconstrained.token for lp in row] == \
            [lp.unconstrained and lp.unconstrained.token for lp in alone]

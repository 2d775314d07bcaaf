"""Property-based fuzzing of every runner endpoint: no crash, no dropped connection, no 500.

Every request the runner rejects must get a 4xx JSON error naming the problem; the
runner must stay usable afterwards.
"""

from __future__ import annotations

import json

import httpx2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlx_notebook.protocol import ENDPOINTS
from tests.runner_process import RawRunner, running

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=30),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=12,
)
OPTION_KEYS = ["temperature", "top_p", "min_p", "top_k", "repeat_penalty", "repeat_last_n",
               "presence_penalty", "max_tokens", "seed", "stop", "logprobs", "bogus"]
COMPLETION = st.fixed_dictionaries({}, optional={
    "prompt": st.text(max_size=20) | JSON,
    "messages": st.lists(st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "system", "assistant", "x"]),
         "content": st.text(max_size=10) | JSON}), max_size=3) | JSON,
    "options": st.dictionaries(st.sampled_from(OPTION_KEYS), JSON | st.integers(0, 3)
                               | st.floats(0, 1), max_size=4) | JSON,
    "request_id": st.text(max_size=10) | JSON,
})
BODIES = {
    "completion": COMPLETION,
    "tokenize": st.fixed_dictionaries({}, optional={"text": st.text(max_size=20) | JSON,
                                                    "messages": JSON}),
    "detokenize": st.fixed_dictionaries({}, optional={"tokens": st.lists(st.integers(-5, 400),
                                                                         max_size=8) | JSON}),
    "cancel": st.fixed_dictionaries({}, optional={"request_id": st.text(max_size=10) | JSON}),
    "status": JSON,
}


@pytest.fixture(scope="module")
def runner(tiny_model_dir) -> RawRunner:
    with running(str(tiny_model_dir)) as r:
        yield r


def check(runner: RawRunner, name: str, body: object) -> None:
    method, path = ENDPOINTS[name]
    options = body.get("options") if isinstance(body, dict) else None
    if isinstance(options, dict) and isinstance(options.get("max_tokens"), int):
        options["max_tokens"] = min(options["max_tokens"], 3)  # keep generations short
    elif isinstance(body, dict) and name == "completion":
        body.setdefault("options", {}) if not isinstance(body.get("options"), dict) else None
        if isinstance(body.get("options"), dict):
            body["options"]["max_tokens"] = 2
    try:
        response = runner.http.request(method, runner.url + path, headers=runner.headers(),
                                       content=json.dumps(body))
    except httpx2.HTTPError as exc:  # a dropped connection is a failure
        pytest.fail(f"{name} {body!r}: {exc!r}")
    assert response.status_code < 500, (name, body, response.text)
    if response.status_code >= 400:
        error = response.json()
        assert isinstance(error["error"], str) and error["error"]
    elif name == "completion":
        lines = [json.loads(line) for line in response.text.splitlines() if line]
        assert lines[-1]["type"] == "done", lines[-1]


@pytest.mark.parametrize("name", sorted(BODIES))
def test_fuzz_endpoint(runner, name):
    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck),
              derandomize=True)
    @given(body=BODIES[name])
    def run(body):
        check(runner, name, body)

    run()
    assert runner.get("/v1/status").json()["state"] == "ready"

"""Prompt caches on disk: saved by one runner process, loaded by a new one, refused when
they cannot be right; with real runners and real models (the demo where the answer
matters, the tiny model where only the plumbing does)."""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from IPython.core.interactiveshell import InteractiveShell

import mlx_notebook as mn
from mlx_notebook.control.client import RunnerClient
from mlx_notebook.control.registry import Registry
from mlx_notebook.errors import InvalidArgumentError, PromptCacheError
from mlx_notebook.prompt_cache_files import arrays_path, caches_dir, summary_path
from mlx_notebook.prompt_cache_protocol import CacheLoadRequest, CacheSaveRequest, SavedPromptCache
from mlx_notebook.protocol import ChatMessage, CompletionRequest, SamplingOptions
from tests import frontend_helpers
from tests.fixtures_runner import running
from tests.tiny_model import make_tiny_model

shell = frontend_helpers.shell  # fixture

GREEDY = SamplingOptions(max_tokens=8, temperature=0.0)
BAD_NAMES = ["../evil", "a/b", "/etc/passwd", ".hidden", "", "x" * 65, "name.", "a\\b", "é"]


def document(items: int) -> str:
    """A made-up inventory: facts a question can ask about, ~14 tokens an item."""
    colours = ["red", "blue", "green", "yellow", "white", "black", "orange"]
    return "\n".join(f"Box {i}: the {colours[i % 7]} box holds {(i * 37) % 90 + 3} apples."
                     for i in range(1, items + 1))


@pytest.fixture(autouse=True)
def no_saved_caches() -> Iterator[None]:
    """Every test starts and ends with an empty prompt-cache folder (the session's own)."""
    shutil.rmtree(caches_dir(), ignore_errors=True)
    yield
    shutil.rmtree(caches_dir(), ignore_errors=True)


def _client(spec: str | Path, name: str, registry: Registry) -> Iterator[RunnerClient]:
    return running(RunnerClient(str(spec), name=name, registry=registry), timeout=300)


# ---------------------------------------------------------------- the point of it


def test_a_new_runner_answers_from_the_saved_cache_as_without_it(
        demo_model_ready: Path, test_registry: Registry) -> None:
    doc = document(40)
    head = (ChatMessage("system", doc),)
    question = (*head, ChatMessage("user", "How many apples does box 7 hold?"))
    for first in _client("demo", "demo-save", test_registry):
        saved = first.save_prompt_cache(CacheSaveRequest(name="inventory", messages=head))
    assert saved.kind == "messages" and saved.extends and saved.model == "demo"
    assert saved.tokens > 400 and saved.bytes == arrays_path("inventory").stat().st_size
    for second in _client("demo", "demo-load", test_registry):  # a new process: nothing cached
        assert second.pid != first.pid
        loaded = second.load_prompt_cache(CacheLoadRequest(name="inventory"))
        assert loaded.tokens == saved.tokens and loaded.messages == head
        cached_text, cached = second.complete(CompletionRequest(messages=question, options=GREEDY))
        second.free_memory()  # the prompt cache is empty again: the same question, cold
        cold_text, cold = second.complete(CompletionRequest(messages=question, options=GREEDY))
    # The chat template of the demo ends a message with "<|im_end|>\n": a new user turn
    # starts exactly after the cached tokens, so all of them are reused.
    assert cached.cached_tokens == saved.tokens
    assert cold.cached_tokens == 0 and cold.prompt_tokens == cached.prompt_tokens
    assert cached_text == cold_text and cached_text


def test_a_cache_of_other_weights_is_refused_and_the_runner_stays_usable(
        tiny_model_dir: Path, test_registry: Registry, tmp_path: Path) -> None:
    other = make_tiny_model(tmp_path / "other", seed=1)  # same shapes, other weights
    for tiny in _client(tiny_model_dir, "tiny-a", test_registry):
        tiny.save_prompt_cache(CacheSaveRequest(name="doc", text=document(10)))
    for runner in _client(other, "tiny-b", test_registry):
        with pytest.raises(PromptCacheError) as refused:
            runner.load_prompt_cache(CacheLoadRequest(name="doc"))
        assert refused.value.reason == "mismatch" and refused.value.name == "doc"
        assert "save it again with this model" in str(refused.value)
        text, done = runner.complete(CompletionRequest(prompt=document(10), options=GREEDY))
        assert done.cached_tokens == 0 and done.done_reason in ("stop", "length")


def test_a_raw_text_extends_by_its_longest_common_prefix(tiny_client: RunnerClient) -> None:
    doc = document(12)
    saved = tiny_client.save_prompt_cache(CacheSaveRequest(name="raw", text=doc))
    tiny_client.free_memory()
    tiny_client.load_prompt_cache(CacheLoadRequest(name="raw"))
    _, done = tiny_client.complete(CompletionRequest(prompt=doc + "\nBox 3 holds",
                                                     options=GREEDY))
    # A raw prompt is tokenized as a whole: the document's last token may merge with what
    # follows; the rest of its tokens are reused.
    assert saved.tokens - 2 <= done.cached_tokens <= saved.tokens
    assert done.prompt_tokens > saved.tokens


# ---------------------------------------------------------------- refusals


@pytest.mark.parametrize("name", BAD_NAMES)
def test_names_that_could_be_paths_are_refused_by_the_runner(tiny_client: RunnerClient,
                                                             name: str) -> None:
    http = tiny_client.require_http()
    for path, body in (("/v1/cache/load", {"name": name}),
                       ("/v1/cache/save", {"name": name, "text": "hello"})):
        answer = http.post(path, json=body)
        assert answer.status_code == 400, (path, name)
        assert answer.json()["field"] == "name"
    assert list(caches_dir().iterdir()) == []  # nothing written, here or anywhere
    assert tiny_client.status().state == "ready"


def test_an_unknown_name_is_refused(tiny_client: RunnerClient) -> None:
    with pytest.raises(PromptCacheError) as refused:
        tiny_client.load_prompt_cache(CacheLoadRequest(name="never-saved"))
    assert refused.value.reason == "unknown" and "never-saved" in str(refused.value)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "not ours"])
def test_a_damaged_file_is_refused_and_the_runner_survives(tiny_client: RunnerClient,
                                                           damage: str) -> None:
    tiny_client.save_prompt_cache(CacheSaveRequest(name="doc", text=document(8)))
    path = arrays_path("doc")
    data = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(data[:len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(os.urandom(len(data)))
    else:  # a valid safetensors file without our key
        header = b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}'
        path.write_bytes(len(header).to_bytes(8, "little") + header + b"\0\0\0\0")
    with pytest.raises(PromptCacheError) as refused:
        tiny_client.load_prompt_cache(CacheLoadRequest(name="doc"))
    assert refused.value.reason == "corrupt" and "%mlx cache rm doc" in str(refused.value)
    text, done = tiny_client.complete(CompletionRequest(prompt="Box 1", options=GREEDY))
    assert done.done_reason in ("stop", "length")


def test_the_api_refuses_bad_names_before_any_runner(no_models: None) -> None:
    for name in BAD_NAMES:
        with pytest.raises(InvalidArgumentError) as refused:
            mn.load_prompt_cache(name)
        assert refused.value.field == "name"
        with pytest.raises(InvalidArgumentError):
            mn.remove_prompt_cache(name)
        with pytest.raises(InvalidArgumentError):
            mn.cache_prompt("text", name=name)


# ---------------------------------------------------------------- both entry points


class Caches:
    """Save / load / ls / rm through the magic or through the Python API."""

    def __init__(self, kind: str, shell: InteractiveShell) -> None:
        self.kind, self.shell = kind, shell

    def save(self, name: str, doc: str) -> SavedPromptCache:
        if self.kind == "magic":
            self.shell.run_cell_magic("mlx", f"cache save {name} -o _saved", doc)
            return self.shell.user_ns.pop("_saved")
        return mn.cache_prompt([ChatMessage("system", doc)], name=name)

    def load(self, name: str) -> object:
        if self.kind == "magic":
            self.shell.run_line_magic("mlx", f"cache load {name} -o _loaded")
            return self.shell.user_ns.pop("_loaded")
        return mn.load_prompt_cache(name)

    def ls(self) -> list:
        if self.kind == "magic":
            self.shell.run_line_magic("mlx", "cache ls -o _rows")
            return self.shell.user_ns.pop("_rows")
        return mn.prompt_caches()

    def rm(self, name: str) -> None:
        if self.kind == "magic":
            self.shell.run_line_magic("mlx", f"cache rm {name}")
        else:
            mn.remove_prompt_cache(name)


@pytest.fixture(params=["magic", "python"])
def caches(request: pytest.FixtureRequest, shell: InteractiveShell) -> Caches:
    return Caches(request.param, shell)


def test_save_restart_load_chat_ls_rm(caches: Caches, tiny_model_dir: Path, no_models: None,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    doc = document(4)  # short: the chat turn after it must not warn about the context
    mn.load(str(tiny_model_dir), name="tiny")
    saved = caches.save("inventory", doc)
    magic = caches.kind == "magic"  # the magic shows a line; the function returns quietly
    assert saved.tokens > 30
    assert ("Saved prompt cache 'inventory'" in capsys.readouterr().out) == magic
    mn.unload("tiny")
    mn.load(str(tiny_model_dir), name="tiny")  # a restart: a new runner process
    loaded = caches.load("inventory")
    assert ("%%mlx chat continues its conversation" in capsys.readouterr().out) == magic
    assert [m.role for m in mn.conversation()] == ["system"]  # the document, as its system
    answer = mn.chat("Box 3?", max_tokens=4)
    assert answer.cached_tokens == loaded.tokens == saved.tokens
    umask = os.umask(0)
    os.umask(umask)
    for path in (arrays_path("inventory"), summary_path("inventory")):  # as the models' files
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path
    rows = caches.ls()
    assert [(r.name, r.model, r.tokens, r.bytes) for r in rows] == \
        [("inventory", "tiny", saved.tokens, arrays_path("inventory").stat().st_size)]
    assert rows[0].created <= rows[0].last_used
    assert ("inventory" in capsys.readouterr().out) == magic
    caches.rm("inventory")
    assert not arrays_path("inventory").exists() and not summary_path("inventory").exists()
    assert caches.ls() == []
    with pytest.raises(PromptCacheError) as gone:
        mn.remove_prompt_cache("inventory")
    assert gone.value.reason == "unknown"
    with pytest.raises(PromptCacheError):
        mn.load_prompt_cache("inventory")


def test_the_byte_budget_evicts_the_least_recently_used(tiny_model_dir: Path, no_models: None,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    mn.load(str(tiny_model_dir), name="tiny")
    a = mn.cache_prompt(document(6), name="a")
    b = mn.cache_prompt(document(7), name="b")
    assert a.evicted == b.evicted == ()
    mn.load_prompt_cache("a")  # a use: now b is the least recently used
    monkeypatch.setenv("MLX_NOTEBOOK_PROMPT_CACHE_BYTES", str(a.bytes + 2 * b.bytes))  # a, b and c do not fit; a and c do
    c = mn.cache_prompt(document(8), name="c")
    assert c.evicted == ("b",)
    assert sorted(r.name for r in mn.prompt_caches()) == ["a", "c"]
    monkeypatch.setenv("MLX_NOTEBOOK_PROMPT_CACHE_BYTES", "1")  # only the new one stays
    d = mn.cache_prompt(document(5), name="d")
    assert sorted(d.evicted) == ["a", "c"] and [r.name for r in mn.prompt_caches()] == ["d"]


def test_the_magic_refuses_bad_input(shell: InteractiveShell) -> None:
    from IPython.core.error import UsageError

    for line, cell in (("cache save", "doc"), ("cache load", None), ("cache ls x", None),
                       ("cache load ../x", None), ("cache rm a -o 1x", None),
                       ("cache load a --raw", None), ("cache save a", "   \n")):
        with pytest.raises(UsageError):
            if cell is None:
                shell.run_line_magic("mlx", line)
            else:
                shell.run_cell_magic("mlx", line, cell)

"""%mlx / %%mlx in a fresh InteractiveShell, each behaviour also through the Python API."""

from __future__ import annotations

import _thread
import gc
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell

import mlx_notebook as mn
from mlx_notebook import api
from mlx_notebook.config import ConfigError, get_config
from mlx_notebook.errors import (
    GenerationError,
    InvalidArgumentError,
    MLXNotebookError,
    ModelNotLoadedError,
)
from mlx_notebook.notebook.interpolate import InterpolationError
from mlx_notebook.notebook.magics import SUBCOMMANDS
from tests import frontend_helpers
from tests.frontend_helpers import Entry

shell = frontend_helpers.shell  # fixtures
entry = frontend_helpers.entry

LIGHT_CHECK = r"""
import json, sys, time
from IPython.core.interactiveshell import InteractiveShell
sh = InteractiveShell.instance()
t0 = time.perf_counter()
sh.run_line_magic("load_ext", "mlx_notebook")
dt = time.perf_counter() - t0
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("mlx", "mlx_lm", "httpx2", "httpx", "ipywidgets"))
print(json.dumps({"seconds": dt, "heavy": heavy, "magics": sorted(sh.magics_manager.magics["cell"])}))
"""


def test_load_ext_is_fast_and_imports_no_mlx() -> None:
    out = subprocess.run([sys.executable, "-c", LIGHT_CHECK], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).parent.parent)
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["heavy"] == []
    assert report["seconds"] < 0.3, report
    assert "mlx" in report["magics"]


def test_all_is_complete() -> None:
    assert sorted(mn.__all__) == sorted([*api.__all__, "load_ipython_extension",
                                         "unload_ipython_extension"])
    for name in mn.__all__:
        assert callable(getattr(mn, name)), name
    assert set(dir(mn)) >= set(mn.__all__)
    with pytest.raises(AttributeError):
        mn.nope  # noqa: B018


# ---------------------------------------------------------------- help and bad input


def test_help(shell: InteractiveShell, capsys: pytest.CaptureFixture[str]) -> None:
    shell.run_line_magic("mlx", "")
    shell.run_line_magic("mlx", "help")
    overview = capsys.readouterr().out
    for sub in SUBCOMMANDS:
        assert f"  {sub}" in overview
    shell.run_line_magic("mlx", "help load")
    assert "--context N" in capsys.readouterr().out
    shell.run_line_magic("mlx", "generate -h")
    assert "--max-tokens N" in capsys.readouterr().out
    doc = shell.find_magic("mlx").__doc__
    assert all(c.parser.prog in doc for c in SUBCOMMANDS.values())


@pytest.mark.parametrize(("line", "cell", "match"), [
    ("frobnicate", None, "unknown subcommand 'frobnicate'"),
    ("load --context x", None, "invalid int value"),
    ("load --context 0", None, "positive"),
    ("unload a --all", None, "not both"),
    ("generate", None, "needs a cell"),
    ("ps", "body", "takes no cell body"),
    ("generate --temp -1", "hi", "--temp: must be between 0.0"),
    ("generate --top-p 2", "hi", "--top-p: must be between"),
    ("generate --max-tokens 0", "hi", "--max-tokens: must be between 1"),
    ("generate --format html", "hi", "invalid choice"),
    ("generate -o 1x", "hi", "variable name"),
    ("generate --raw --system S", "hi", "no effect with --raw"),
    ("generate 'unclosed", "hi", "No closing quotation"),
    ("generate", "   \n", "cell is empty"),
    ("chat", None, "write the message in a cell"),
    ("tokenize", None, "give a TEXT"),
    ("config temperature", None, "KEY=VALUE"),
])
def test_bad_input_is_a_one_line_usage_error(shell: InteractiveShell, line: str,
                                             cell: str | None, match: str) -> None:
    with pytest.raises(UsageError, match=match) as info:
        if cell is None:
            shell.run_line_magic("mlx", line)
        else:
            shell.run_cell_magic("mlx", line, cell)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(("call", "kwargs", "line", "field", "said", "magic_said"), [
    (api.load, {"ranks": 0}, "load --ranks 0", "ranks", "ranks must be 1 or more",
     "%mlx load: --ranks must be 1 or more"),
    (api.load, {"context_length": 0}, "load --context 0", "context_length",
     "context_length must be a positive number of tokens",
     "%mlx load: --context must be a positive number of tokens"),
    (api.load, {"hosts": "hosts.json", "ranks": 2}, "load --hosts hosts.json --ranks 2", "hosts",
     "give ranks or hosts, not both (the hostfile sets the number of ranks)",
     "%mlx load: give --ranks or --hosts, not both (the hostfile sets the number of ranks)"),
    (api.load, {"backend": "ring"}, "load --backend ring", "backend",
     "backend goes with hosts or ranks", "%mlx load: --backend goes with --hosts or --ranks"),
    (api.connect, {"url": "http://127.0.0.1:9", "token_env": "s3cret-token"},
     "connect http://127.0.0.1:9 --token-env s3cret-token", "token_env",
     "token_env needs a variable name, got 's3cret-token' (put the token in that variable, "
     "not here)", "%mlx connect: --token-env needs a variable name, got 's3cret-token' (put "
     "the token in that variable, not here)"),
    (api.unload, {"name": "tiny", "all": True}, "unload tiny --all", "all",
     "give a name or all=True, not both", "%mlx unload: give a NAME or --all, not both"),
])
def test_the_function_and_the_magic_refuse_the_same_arguments(
        shell: InteractiveShell, call: Any, kwargs: dict[str, Any], line: str, field: str,
        said: str, magic_said: str) -> None:
    """One check in the API: the function raises it, the magic says it with its flags."""
    with pytest.raises(InvalidArgumentError) as refused:
        call(**kwargs)
    assert refused.value.field == field and str(refused.value) == said
    assert isinstance(refused.value, ValueError)
    with pytest.raises(UsageError) as usage:
        shell.run_line_magic("mlx", line)
    assert str(usage.value) == magic_said
    assert isinstance(usage.value.__cause__, InvalidArgumentError)
    assert usage.value.__cause__.field == field


def test_usage_error_shows_without_traceback(shell: InteractiveShell,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    result = shell.run_cell("%mlx load --context x")
    assert isinstance(result.error_in_exec, UsageError)
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err


def test_our_errors_are_one_line_and_fail_the_cell(shell: InteractiveShell,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    result = shell.run_cell("%%mlx generate\nHello {nobody}")
    assert isinstance(result.error_in_exec, InterpolationError)
    out = capsys.readouterr().out
    assert "Traceback" not in out
    lines = [ln for ln in out.splitlines() if ln.strip()]
    assert len(lines) == 1 and "InterpolationError" in lines[0] and "nobody" in lines[0]


def test_a_real_bug_keeps_its_traceback(shell: InteractiveShell,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    shell.user_ns["boom"] = property(lambda self: 1 / 0)
    shell.user_ns["obj"] = type("Obj", (), {"x": property(lambda self: 1 / 0)})()
    result = shell.run_cell("%%mlx generate\n{obj.x}")
    assert isinstance(result.error_in_exec, ZeroDivisionError)
    assert "Traceback" in capsys.readouterr().out


# ---------------------------------------------------------------- config


def test_config_three_ways(entry: Entry, shell: InteractiveShell,
                           capsys: pytest.CaptureFixture[str]) -> None:
    entry.set_config(temperature=0.7, max_tokens=33)
    cfg = get_config()
    assert (cfg.temperature, cfg.max_tokens) == (0.7, 33)
    shell.run_line_magic("config", "MLXConfig.top_k = 5")
    assert cfg.top_k == 5
    assert cfg.options(max_tokens=4).max_tokens == 4  # per call wins
    shell.run_line_magic("mlx", "config")
    shown = capsys.readouterr().out
    assert "temperature" in shown and "0.7" in shown and "top_k" in shown
    shell.run_line_magic("mlx", "config --reset")
    assert (cfg.temperature, cfg.max_tokens, cfg.top_k) == (0.0, 256, 0)


def test_config_from_ipython_config() -> None:
    from traitlets.config import Config

    InteractiveShell.clear_instance()
    c = Config()
    c.HistoryManager.enabled = False
    c.MLXConfig.max_tokens = 99
    sh = InteractiveShell.instance(config=c)
    try:
        sh.run_line_magic("load_ext", "mlx_notebook")
        assert get_config().max_tokens == 99
        sh.run_line_magic("unload_ext", "mlx_notebook")
    finally:
        get_config().reset()
        InteractiveShell.clear_instance()


@pytest.mark.parametrize(("setting", "match"), [
    ("nope=1", "Unknown setting 'nope'"), ("temperature=hot", "Bad value for temperature"),
    ("format=html", "Bad value for format"), ("seed=-3", "Bad value for seed"),
])
def test_config_bad_values(shell: InteractiveShell, setting: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        shell.run_line_magic("mlx", f"config {setting}")
    get_config().set("seed", "none")
    assert get_config().seed is None


# ---------------------------------------------------------------- no model loaded


def test_no_model_loaded(entry: Entry, shell: InteractiveShell, no_models: None) -> None:
    with pytest.raises(ModelNotLoadedError, match="%mlx load demo") as info:
        entry.generate("Hello")
    assert isinstance(info.value, MLXNotebookError)


# ---------------------------------------------------------------- with a real runner (tiny model)


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path) -> Iterator[str]:
    """One tiny-model runner for the module, named ``tiny`` and made the default."""
    mn.load(str(tiny_model_dir), name="tiny")
    try:
        yield "tiny"
    finally:
        mn.unload(all=True)


def test_generate(entry: Entry, tiny: str, capsys: pytest.CaptureFixture[str]) -> None:
    r = entry.generate("Hello", max_tokens=5, model=tiny)
    assert isinstance(r, api.GenerationResult)
    assert r.name == "tiny" and r.prompt == "Hello" and r.finish_reason in ("stop", "length")
    assert 0 < r.completion_tokens <= 5 and r.prompt_tokens > 1 and r.tokens_per_second > 0
    assert r.options.max_tokens == 5 and r.seed is None and not r.stopped
    out = capsys.readouterr().out  # no kernel here: the answer is printed as it streams
    assert out.startswith(r.text + "\n") and f"{r.completion_tokens} tokens" in out
    assert "GenerationResult(text=" in repr(r) and str(r) == r.text


def test_both_roads_give_the_same_answer(shell: InteractiveShell, tiny: str) -> None:
    args = dict(max_tokens=6, temperature=0.9, seed=11, top_k=20, top_p=0.9, min_p=0.01)
    via_magic = Entry("magic", shell).generate("Once upon", **args)
    via_python = Entry("python", shell).generate("Once upon", **args)
    assert via_magic.text == via_python.text
    assert via_magic.options == via_python.options
    assert (via_magic.seed, via_magic.options.temperature, via_magic.options.top_k) == (11, 0.9, 20)


def test_sampling_without_seed_picks_one(entry: Entry, tiny: str) -> None:
    r = entry.generate("Hi", max_tokens=3, temperature=0.8)
    assert r.seed is not None and r.options.seed == r.seed


def test_raw_skips_the_chat_template(entry: Entry, tiny: str) -> None:
    templated = entry.generate("Hello", max_tokens=1)
    raw = entry.generate("Hello", max_tokens=1, raw=True)
    assert raw.prompt_tokens < templated.prompt_tokens


def test_config_defaults_apply(entry: Entry, tiny: str) -> None:
    entry.set_config(max_tokens=2)
    assert entry.generate("Hello").options.max_tokens == 2
    assert entry.generate("Hello", max_tokens=3).options.max_tokens == 3


def test_interpolation_in_the_cell(shell: InteractiveShell, tiny: str) -> None:
    shell.user_ns.update(animal="cat", xs=["a", "b"])
    shell.run_cell_magic("mlx", "generate --max-tokens 1 -o r", "Say {animal} {xs[1]} {{x}}")
    assert shell.user_ns["r"].prompt == "Say cat b {x}"
    shell.run_cell_magic("mlx", "generate --max-tokens 1 -o r --no-interpolate", "Say {animal}")
    assert shell.user_ns["r"].prompt == "Say {animal}"
    get_config().interpolate = False
    shell.run_cell_magic("mlx", "generate --max-tokens 1 -o r", "Say {animal}")
    assert shell.user_ns["r"].prompt == "Say {animal}"


def test_stop_strings_are_unescaped(shell: InteractiveShell, tiny: str) -> None:
    shell.run_cell_magic("mlx", r'generate --max-tokens 2 -o r --stop "\n\n" "User:"', "Hi")
    assert shell.user_ns["r"].options.stop == ("\n\n", "User:")


def test_chat_keeps_a_conversation(entry: Entry, tiny: str, shell: InteractiveShell,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    first = entry.chat("Hello", max_tokens=3, system="Be brief.")
    second = entry.chat("And then?", max_tokens=3)
    msgs = mn.conversation()
    assert [m.role for m in msgs] == ["system", "user", "assistant", "user", "assistant"]
    assert msgs[0].content == "Be brief." and msgs[2].content == first.text
    assert msgs[4].content == second.text
    assert second.prompt_tokens > first.prompt_tokens  # the earlier turn is in the prompt
    capsys.readouterr()
    shell.run_line_magic("mlx", "chat --history")
    assert "**user:** And then?" in capsys.readouterr().out
    entry.reset_chat()
    assert mn.conversation() == []
    shell.run_line_magic("mlx", "chat --history")
    assert "no conversation" in capsys.readouterr().out


def test_tokenize(entry: Entry, tiny: str, shell: InteractiveShell,
                  capsys: pytest.CaptureFixture[str]) -> None:
    tok = mn.tokenize("Hello world")
    assert "".join(tok.pieces) == "Hello world" and len(tok.tokens) == len(tok.pieces)
    capsys.readouterr()
    if entry.kind == "magic":
        shell.run_line_magic("mlx", "tokenize Hello world")
    else:
        shell.run_cell_magic("mlx", "tokenize -m tiny", "Hello world")
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"{len(tok.tokens)} tokens"
    assert [ln.split()[0] for ln in out[1:]] == [str(t) for t in tok.tokens]


@pytest.fixture
def short(tiny: str, tiny_model_dir: Path) -> Iterator[str]:
    """The tiny model with a 96-token context, for conversations that outgrow it."""
    mn.load(str(tiny_model_dir), name="short", context_length=96)
    try:
        mn.use(tiny)
        yield "short"
    finally:
        mn.unload("short")


def test_a_conversation_that_outgrows_the_context(entry: Entry, short: str,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """Said before the answer is cut, then refused with the way out, not a 400 (issue 15)."""
    entry.reset_chat(short)
    capsys.readouterr()
    warned = False
    with pytest.raises(GenerationError, match="no longer fits.*%mlx chat --reset.*--drop-oldest"):
        for _ in range(12):
            entry.chat("Tell me more about the sea", model=short, max_tokens=16)
            out = capsys.readouterr().out
            warned = warned or "the next turn will not fit" in out or "may be cut" in out
    assert warned, "the cell never said the context was nearly full"
    turns = len(mn.conversation(short))
    # The way out, shown as such: the oldest turns go, the turn fits, the history says so.
    r = entry.chat("Tell me more about the sea", model=short, max_tokens=16, drop_oldest=True)
    assert r.prompt_tokens < 96
    assert "[context] dropped the" in capsys.readouterr().out
    assert len(mn.conversation(short)) < turns + 2
    assert "oldest turn" in api.chat_history_markdown(short)
    entry.reset_chat(short)


CUT = "Hello world, 你好! 👋"  # CJK and an emoji: the tiny tokenizer cuts them into bytes


def test_tokenize_shows_bytes_of_cut_characters(entry: Entry, tiny: str, shell: InteractiveShell,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """Byte-level tokens shown by their bytes, grouped under their character (issue 15)."""
    from mlx_notebook.notebook.tokens import token_groups, tokens_html, tokens_text

    tok = mn.tokenize(CUT)
    assert b"".join(bytes.fromhex(h) for h in tok.token_bytes) == CUT.encode()
    groups = token_groups(tok)
    assert "".join(g.text for g in groups) == CUT
    by_text = {g.text: g for g in groups if not g.plain}
    assert {"你", "好", "👋"} <= set("".join(by_text))
    emoji = next(g for g in groups if "👋" in g.text)
    assert "".join(emoji.labels).replace("><", " ").strip("<>").split() == [
        f"{b:02X}" for b in "👋".encode()]
    capsys.readouterr()
    if entry.kind == "magic":
        shell.run_line_magic("mlx", f"tokenize {CUT}")
        out = capsys.readouterr().out
    else:
        out = tokens_text(tok)
    assert "\ufffd" not in out and "<F0" in out and ("'你'" in out or "'你好'" in out)
    assert out.splitlines()[0] == f"{len(tok.tokens)} tokens"
    assert "\ufffd" not in tokens_html(tok) and 'class="mlxnb-char"' in tokens_html(tok)
    # The dry-run preview shows the same bytes, not U+FFFD.
    shell.run_cell_magic("mlx", "generate --dry-run --raw", CUT)
    preview = capsys.readouterr().out
    assert "\ufffd" not in preview and "<E4" in preview and "👋=<F0" in preview


def test_load_use_ps_unload(entry: Entry, tiny: str, tiny_model_dir: Path,
                            shell: InteractiveShell, capsys: pytest.CaptureFixture[str]) -> None:
    entry.load(str(tiny_model_dir), name="second")
    try:
        assert api.default_model() in ("tiny", "second")
        entry.use("second")
        assert api.default_model() == "second"
        assert mn.generate("Hi", max_tokens=1).name == "second"
        capsys.readouterr()
        shell.run_line_magic("mlx", "ps")
        table = capsys.readouterr().out
        assert "*second" in table and "tiny" in table and "ready" in table
        assert {i.name for i in mn.ps()} == {"tiny", "second"}
        assert mn.status("second").state == "ready"
        shell.run_line_magic("mlx", "status")
        assert "second: " in capsys.readouterr().out
    finally:
        entry.unload("second")
        mn.use("tiny")
    assert [i.name for i in mn.ps()] == ["tiny"]


def test_unknown_model_lists_loaded_ones(entry: Entry, tiny: str) -> None:
    with pytest.raises(ModelNotLoadedError, match="tiny"):
        entry.generate("Hi", model="nope", max_tokens=1)


def test_stream_and_cancel(tiny: str) -> None:
    with mn.stream("The", raw=True, max_tokens=400) as gen:
        pieces = []
        for piece in gen:
            pieces.append(piece)
            if len(pieces) == 3:
                gen.cancel()
                break
    assert gen.result is not None and gen.result.stopped
    assert gen.result.finish_reason == "cancel" and gen.result.text == "".join(pieces)
    # What was streamed, not "0 tokens · prompt 0 · 0.0 tok/s" (issue 15).
    r = gen.result
    assert r.completion_tokens >= 3 and r.tokens_per_second > 0
    assert r.prompt_tokens == len(mn.tokenize("The").tokens)
    assert r.footer().startswith(f"[stopped] {r.completion_tokens} tokens · prompt {r.prompt_tokens}")
    assert mn.generate("Hi", max_tokens=2).finish_reason in ("stop", "length")  # still usable


def _wait_idle(name: str) -> None:
    deadline = time.monotonic() + 5
    while mn.status(name).active_requests and time.monotonic() < deadline:
        time.sleep(0.02)


@pytest.mark.parametrize("how", ["close", "drop"])
def test_unread_stream_releases_its_runner(tiny: str, how: str) -> None:
    """A stream opened and never read stops being busy when closed or dropped (issue 15)."""
    from mlx_notebook.control.manager import get_manager

    client = get_manager().get(tiny)
    gen = mn.stream("The", raw=True, max_tokens=400)
    assert client.active_streams == 1  # busy: never idle-unloaded or evicted
    if how == "close":
        gen.close()
        assert gen.result is not None and gen.result.stopped
    else:
        del gen
        gc.collect()
    assert client.active_streams == 0
    _wait_idle(tiny)
    assert mn.status(tiny).active_requests == 0  # the runner dropped the request too
    assert mn.generate("Hi", max_tokens=1).completion_tokens == 1


class Interrupter:
    """Sends the main thread one KeyboardInterrupt (a cell interrupt) while it reads a stream.

    It watches the client's count of open streams, so it can only fire while this
    test's generation is running, never later in another test.
    """

    def __init__(self, name: str) -> None:
        from mlx_notebook.control.manager import get_manager

        self.client = get_manager().get(name)
        self.stop = threading.Event()
        self.fired = False
        self.thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while not self.stop.is_set():
            if self.client.active_streams > 0:
                time.sleep(0.05)  # let a few tokens arrive first
                if self.client.active_streams > 0 and not self.stop.is_set():
                    self.fired = True
                    _thread.interrupt_main()
                return
            time.sleep(0.002)

    def __enter__(self) -> Interrupter:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


def test_interrupt_keeps_partial_text(entry: Entry, tiny: str) -> None:
    if entry.kind == "magic":  # the magic returns the partial answer, marked stopped
        with Interrupter(tiny) as interrupter:
            r = entry.generate("The", raw=True, max_tokens=480, model=tiny)
        assert interrupter.fired
        assert r.stopped and r.finish_reason == "cancel" and r.completion_tokens < 480
        assert r.completion_tokens > 0 and r.prompt_tokens > 0 and r.tokens_per_second > 0
    else:  # the function cancels on the runner, then lets the interrupt through
        with pytest.raises(KeyboardInterrupt), Interrupter(tiny):
            mn.generate("The", raw=True, max_tokens=480, model=tiny)
    deadline = time.monotonic() + 3
    while mn.status(tiny).active_requests and time.monotonic() < deadline:
        time.sleep(0.02)
    assert mn.status(tiny).active_requests == 0
    assert mn.generate("Hi", max_tokens=1).completion_tokens == 1


# ---------------------------------------------------------------- the real demo model


@pytest.fixture(scope="module")
def demo(demo_model_ready: Path) -> Iterator[str]:
    mn.load("demo")
    try:
        yield "demo"
    finally:
        mn.unload("demo")


@pytest.mark.slow
def test_demo_knows_paris(entry: Entry, demo: str) -> None:
    r = entry.generate("What is the capital of France?", model=demo, max_tokens=12)
    assert "Paris" in r.text, r.text
    assert r.finish_reason in ("stop", "length") and r.completion_tokens <= 12


def test_free_magic_drops_the_prompt_cache(shell: InteractiveShell, tiny: str,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    prompt = "a prompt to cache " * 5
    mn.generate(prompt, max_tokens=2, model=tiny)
    assert mn.generate(prompt, max_tokens=2, model=tiny).cached_tokens > 0
    capsys.readouterr()
    shell.run_line_magic("mlx", f"free {tiny}")
    out = capsys.readouterr().out
    assert out.startswith("freed ") and "of prompt cache; now " in out, out
    assert mn.generate(prompt, max_tokens=2, model=tiny).cached_tokens == 0

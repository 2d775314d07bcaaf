"""Model resolution and loading with real MLX, real files: tiny model, GGUF, HF cache, demo."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from mlx_notebook.model_files import ModelLoadError, converted_folder, parse_spec
from mlx_notebook.runner.models import LoadedModel, load_model, prefetch
from tests.tiny_model import make_hub_cache_entry, make_tiny_gguf

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def greedy(lm: LoadedModel, max_tokens: int = 8) -> str:
    """Greedy text for the chat question (mlx_lm's default sampler is argmax)."""
    from mlx_lm import generate

    prompt = lm.tokenizer.apply_chat_template(QUESTION, add_generation_prompt=True, tokenize=False)
    return generate(lm.model, lm.tokenizer, prompt, max_tokens=max_tokens)


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private mlx_notebook cache, so conversions here never touch the user's."""
    monkeypatch.setenv("MLX_NOTEBOOK_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="session")
def tiny_gguf(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_gguf(tiny_model_dir, tmp_path_factory.mktemp("gguf") / "tiny.gguf")


@pytest.fixture(scope="session")
def tiny_text(tiny_model_dir: Path) -> str:
    return greedy(load_model(str(tiny_model_dir)))


def test_tiny_folder_loads_and_generates(tiny_model_dir: Path) -> None:
    seen: list[float] = []
    lm = load_model(str(tiny_model_dir), progress=lambda pct, _msg: seen.append(pct))
    assert lm.name == tiny_model_dir.name
    assert lm.source == str(tiny_model_dir)
    assert lm.weights_format == "float32"
    assert lm.context_length == 512
    assert 390_000 < lm.weight_bytes < 400_000
    assert len(lm.source_hash) == 16
    assert seen and seen == sorted(seen) and seen[-1] == 100.0
    text = greedy(lm)
    assert text and text == greedy(load_model(str(tiny_model_dir)))  # deterministic


def test_dtype_casts_after_load(tiny_model_dir: Path, cache: Path) -> None:
    lm = load_model(str(tiny_model_dir), dtype="bfloat16")
    assert lm.weights_format == "bfloat16 (from float32)"
    assert 190_000 < lm.weight_bytes < 200_000
    with pytest.raises(ModelLoadError, match="dtype 'int8' is not one of"):
        load_model(str(tiny_model_dir), dtype="int8")


def test_cast_weights_are_cached_and_repaired(tiny_model_dir: Path, cache: Path) -> None:
    from mlx_notebook.runner import variants

    first = load_model(str(tiny_model_dir), dtype="bfloat16")
    hit = variants.find(tiny_model_dir, "bfloat16")
    assert hit is not None and hit[1] == "bfloat16 (from float32)"
    second = load_model(str(tiny_model_dir), dtype="bfloat16")  # served from the variant
    assert (second.weights_format, second.weight_bytes) == (first.weights_format,
                                                            first.weight_bytes)
    assert greedy(second) == greedy(first)
    (hit[0] / "model.safetensors").write_bytes(b"broken")
    third = load_model(str(tiny_model_dir), dtype="bfloat16")  # rebuilt, not an error
    assert greedy(third) == greedy(first)
    assert (variants.variant_dir(tiny_model_dir, "bfloat16") / "model.safetensors").stat().st_size > 100


def test_gguf_file_matches_the_folder(tiny_gguf: Path, tiny_text: str, cache: Path) -> None:
    lm = load_model(str(tiny_gguf))
    assert (lm.name, lm.source, lm.weights_format) == ("tiny.gguf", str(tiny_gguf), "float32")
    assert lm.context_length == 512
    # Same text means: Q/K rows un-permuted, config and tokenizer rebuilt correctly.
    assert greedy(lm) == tiny_text
    folder = prefetch(str(tiny_gguf))
    assert folder == converted_folder(parse_spec(str(tiny_gguf)))
    assert folder.parent == cache / "models"
    assert greedy(load_model(str(folder))) == tiny_text


def test_truncated_gguf_is_a_one_line_error(tiny_gguf: Path, tmp_path: Path, cache: Path) -> None:
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(tiny_gguf.read_bytes()[: tiny_gguf.stat().st_size // 2])
    with pytest.raises(ModelLoadError, match="extends past the end of the file") as info:
        load_model(str(broken))
    assert "\n" not in str(info.value) and str(broken) in str(info.value)
    # Nothing half-converted left behind (only the entry's lock file, empty).
    assert [p.suffix for p in (cache / "models").iterdir()] == [".lock"]


def test_folder_without_tokenizer(tiny_model_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "no-tok"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "tokenizer.json").unlink()
    with pytest.raises(ModelLoadError) as info:
        load_model(str(folder))
    assert str(info.value) == (
        f"model folder {folder} has no tokenizer (tokenizer.json or tokenizer.model)"
    )


def test_corrupt_safetensors(tiny_model_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "corrupt"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "model.safetensors").write_bytes(b"\xff" * 64)
    with pytest.raises(ModelLoadError, match=f"cannot load model {folder}: ") as info:
        load_model(str(folder))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("damage", ["truncate", "same-size-garbage", "no-marker"])
def test_corrupt_cache_entry_repairs_itself(
    damage: str, tiny_gguf: Path, tiny_text: str, cache: Path
) -> None:
    folder = prefetch(str(tiny_gguf))
    weights = folder / "model.safetensors"
    if damage == "truncate":
        weights.write_bytes(weights.read_bytes()[:1000])
    elif damage == "same-size-garbage":  # passes the size check, fails to load
        weights.write_bytes(b"\x00" * weights.stat().st_size)
    else:
        (folder / "mlx_notebook.json").unlink()
    assert greedy(load_model(str(tiny_gguf))) == tiny_text
    assert sorted(p.name for p in (cache / "models").iterdir()
                  if p.suffix != ".lock") == [folder.name]


def test_hf_offline_and_not_cached_fails_fast(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    start = time.monotonic()
    with pytest.raises(ModelLoadError) as info:
        load_model("nobody/not-a-model")
    assert time.monotonic() - start < 10
    assert str(info.value).startswith(
        "model nobody/not-a-model is not in the Hugging Face cache and the hub cannot be reached"
    )


def test_hf_repo_from_the_local_hub_cache(
    tiny_model_dir: Path, tiny_text: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    make_hub_cache_entry(tiny_model_dir, tmp_path / "hub", "tiny-org/tiny-llama", commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    lm = load_model("tiny-org/tiny-llama")
    assert (lm.name, lm.source, lm.source_hash) == (
        "tiny-org/tiny-llama",
        f"tiny-org/tiny-llama@{commit}",
        commit[:12],
    )
    assert greedy(lm) == tiny_text
    assert load_model(f"tiny-org/tiny-llama@{commit}").source_hash == commit[:12]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("not a model!", "cannot understand model 'not a model!'; accepted: 'demo', a local"),
        ("/no/such/folder", "no such file or folder: /no/such/folder"),
        ("missing.gguf", "no such file or folder: missing.gguf"),
    ],
)
def test_bad_specs(spec: str, message: str) -> None:
    with pytest.raises(ModelLoadError, match="^" + message.replace("(", r"\(")):
        load_model(spec)


def test_a_file_that_is_not_gguf(tmp_path: Path) -> None:
    text = tmp_path / "model.bin"
    text.write_text("x")
    with pytest.raises(ModelLoadError, match="is a file but not a .gguf file"):
        load_model(str(text))


@pytest.mark.slow
def test_demo_answers_paris(demo_model_ready: Path) -> None:
    start = time.monotonic()
    lm = load_model("demo")
    load_s = time.monotonic() - start
    assert lm.name == "demo"
    assert lm.weights_format.startswith("4-bit affine (group 32)")
    assert lm.context_length == 8192
    assert lm.source_hash == "b179c9523d0e6a0f"
    assert load_s < 20
    assert "Paris" in greedy(lm, max_tokens=10)


@pytest.mark.slow
def test_demo_in_float32_answers_paris(demo_model_ready: Path) -> None:
    lm = load_model("demo", dtype="float32")
    assert lm.weights_format.startswith("float32 (from 4-bit affine")
    assert lm.weight_bytes > 500_000_000
    assert "Paris" in greedy(lm, max_tokens=10)


def test_sentencepiece_tokenizer_rebuilt_from_gguf_metadata(tmp_path: Path) -> None:
    """A Llama-2-style GGUF vocabulary (tokens + scores, no merges) tokenizes as the original."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    from mlx_notebook.runner.gguf import write_tokenizer

    byte_tokens = [f"<0x{i:02X}>" for i in range(256)]
    original = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    original.normalizer = normalizers.Sequence(
        [normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")]
    )
    original.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="never")
    original.decoder = decoders.Sequence(
        [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=600, special_tokens=["<unk>", "<s>", "</s>", *byte_tokens], show_progress=False
    )
    corpus = [
        "The capital of France is Paris.",
        "Notebooks run code in cells and show the output.",
        "Small models answer simple questions quickly.",
    ]
    original.train_from_iterator(corpus * 10, trainer=trainer)
    vocab = original.get_vocab()
    tokens = sorted(vocab, key=vocab.__getitem__)
    types = [
        3 if t in ("<s>", "</s>") else 2 if t == "<unk>" else 6 if t in byte_tokens else 1
        for t in tokens
    ]
    metadata = {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.scores": np.array([-float(i) for i in range(len(tokens))]),
        "tokenizer.ggml.token_type": np.array(types),
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
        "tokenizer.ggml.unknown_token_id": 0,
        "tokenizer.ggml.add_bos_token": True,
    }
    write_tokenizer(metadata, tmp_path)
    rebuilt = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    for text in [*corpus, "Paris answers questions in notebooks", "Zoë asks: ¿qué? 🙂"]:
        ids = rebuilt.encode(text).ids
        assert ids == [1, *original.encode(text).ids], text
        assert rebuilt.decode(ids) == text


def test_gguf_llama3_rope_scaling_is_carried_over(tmp_path: Path, cache: Path) -> None:
    """llama.cpp keeps Llama 3.1 rope scaling only as per-frequency factors
    (rope_freqs.weight); the converted model must rotate exactly as the original."""
    import mlx.core as mx
    from mlx_lm.models.rope_utils import initialize_rope

    from tests.tiny_model import make_tiny_model

    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 2048}
    scaled = make_tiny_model(tmp_path / "scaled", rope_scaling=scaling)
    plain = load_model(str(make_tiny_model(tmp_path / "plain")))
    gguf = make_tiny_gguf(scaled, tmp_path / "scaled.gguf")
    from_gguf, original = load_model(str(gguf)), load_model(str(scaled))

    recovered = from_gguf.model.args.rope_scaling
    assert recovered["rope_type"] == "llama3" and recovered["factor"] == 8.0
    rope = [initialize_rope(16, 10000.0, False, s, 512)._freqs for s in (scaling, recovered)]
    assert mx.allclose(rope[0], rope[1], rtol=1e-5).item()

    tokens = mx.array([original.tokenizer.encode("The capital of France is Paris. " * 8)])
    logits = [lm.model(tokens) for lm in (original, from_gguf, plain)]
    assert mx.allclose(logits[0], logits[1], atol=1e-4).item()
    assert not mx.allclose(logits[0], logits[2], atol=1e-2).item()  # scaling changes them

"""A tiny random-weight llama in the MLX/HF folder layout, for fast plumbing tests.

It answers nonsense, but it loads with ``mlx_lm.load`` in well under a second, has a
real byte-level BPE tokenizer (built with the ``tokenizers`` library), an eos token
and a chat template, so everything between the notebook and MLX can be exercised.
Weights and tokenizer are seeded: the same folder (and the same greedy text) every time.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

# Chat template in the ChatML style SmolLM2 uses, so tiny and demo behave alike.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

CONFIG = {
    "model_type": "llama",
    "architectures": ["LlamaForCausalLM"],
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "max_position_embeddings": 512,
    "tie_word_embeddings": True,
    "torch_dtype": "float32",
    "bos_token_id": 1,
    "eos_token_id": 2,
}

_TRAINING_TEXT = """\
The capital of France is Paris. The capital of Italy is Rome.
Hello! How can I help you today? I am a small language model.
Jupyter notebooks run cells of Python code and show their output.
MLX is an array framework for machine learning on Apple silicon.
The quick brown fox jumps over the lazy dog. 0123456789
What is the answer? The answer is forty-two.
"""


def _build_tokenizer(path: Path, vocab_size: int) -> int:
    """Train a byte-level BPE on a few sentences; returns the real vocabulary size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_TRAINING_TEXT.splitlines() * 4, trainer=trainer)
    tok.save(str(path / "tokenizer.json"))
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<|im_start|>",
        "eos_token": "<|im_end|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "model_max_length": CONFIG["max_position_embeddings"],
        "clean_up_tokenization_spaces": False,
        "add_bos_token": False,
        "chat_template": CHAT_TEMPLATE,
    }
    (path / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))
    (path / "special_tokens_map.json").write_text(
        json.dumps({k: tokenizer_config[k] for k in ("bos_token", "eos_token", "unk_token")})
    )
    return tok.get_vocab_size()


def _printable_rows(path: Path, vocab_size: int) -> np.ndarray:
    """1.0 for tokens that decode to printable text, 0.0 for stray bytes and specials.

    Zeroing the other embedding rows (tied to the output head) keeps the random
    model's text readable, without invalid UTF-8 fragments.
    """
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(path / "tokenizer.json"))
    mask = np.zeros(vocab_size, np.float32)
    for token_id in range(vocab_size):
        text = tok.decode([token_id], skip_special_tokens=True)
        if text and "\ufffd" not in text and text.isprintable():
            mask[token_id] = 1.0
    return mask


def _weights(config: dict, seed: int, rows: np.ndarray) -> dict[str, np.ndarray]:
    """Random float32 llama weights with the names mlx_lm's llama expects."""
    rng = np.random.default_rng(seed)
    h, inter = config["hidden_size"], config["intermediate_size"]
    hd = config["head_dim"]
    q_out, kv_out = config["num_attention_heads"] * hd, config["num_key_value_heads"] * hd

    def mat(rows: int, cols: int) -> np.ndarray:
        return (rng.standard_normal((rows, cols)) * 0.5).astype(np.float32)

    w = {
        "model.embed_tokens.weight": mat(config["vocab_size"], h) * rows[:, None],
        "model.norm.weight": np.ones(h, np.float32),
    }
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        w[p + "self_attn.q_proj.weight"] = mat(q_out, h)
        w[p + "self_attn.k_proj.weight"] = mat(kv_out, h)
        w[p + "self_attn.v_proj.weight"] = mat(kv_out, h)
        w[p + "self_attn.o_proj.weight"] = mat(h, q_out)
        if config["model_type"] == "qwen2":  # qwen2 has biases on q, k and v
            for name, size in (("q", q_out), ("k", kv_out), ("v", kv_out)):
                w[p + f"self_attn.{name}_proj.bias"] = mat(1, size)[0] * 0.1
        w[p + "mlp.gate_proj.weight"] = mat(inter, h)
        w[p + "mlp.up_proj.weight"] = mat(inter, h)
        w[p + "mlp.down_proj.weight"] = mat(h, inter)
        w[p + "input_layernorm.weight"] = np.ones(h, np.float32)
        w[p + "post_attention_layernorm.weight"] = np.ones(h, np.float32)
    return w


def make_tiny_model(path: Path, *, seed: int = 0, vocab_size: int = 384,
                    model_type: str = "llama", layers: int | None = None,
                    kv_heads: int | None = None, rope_scaling: dict | None = None) -> Path:
    """Write the tiny model into ``path`` (created if needed) and return ``path``.

    ``model_type="qwen2"`` gives mlx-lm's qwen2 (which has pipeline support), and
    ``kv_heads=4`` a model that splits over 4 tensor-parallel ranks.
    """
    import mlx.core as mx

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    real_vocab = _build_tokenizer(path, vocab_size)
    config = dict(CONFIG, vocab_size=real_vocab, model_type=model_type)
    if layers is not None:
        config["num_hidden_layers"] = layers
    if kv_heads is not None:
        config["num_key_value_heads"] = kv_heads
    if rope_scaling is not None:
        config["rope_scaling"] = rope_scaling
    if model_type == "qwen2":
        config["architectures"] = ["Qwen2ForCausalLM"]
    ids = json.loads((path / "tokenizer.json").read_text())["model"]["vocab"]
    config["bos_token_id"] = ids["<|im_start|>"]
    config["eos_token_id"] = ids["<|im_end|>"]
    (path / "config.json").write_text(json.dumps(config, indent=2))
    arrays = {
        k: mx.array(v) for k, v in _weights(config, seed, _printable_rows(path, real_vocab)).items()
    }
    mx.save_safetensors(str(path / "model.safetensors"), arrays, metadata={"format": "mlx"})
    return path


def _llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's Q/K row order (what its HF -> GGUF converter writes)."""
    rows = w.shape[0]
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


_GGUF_NAMES = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
}


def make_tiny_gguf(model_dir: Path, path: Path) -> Path:
    """Write the tiny model folder as an F32 GGUF file the way llama.cpp would lay it out.

    Loading it through the GGUF converter must give the same greedy text as the folder:
    that checks the Q/K un-permutation, the config and the rebuilt tokenizer at once.
    """
    import mlx.core as mx

    config = json.loads((model_dir / "config.json").read_text())
    tok = json.loads((model_dir / "tokenizer.json").read_text())
    tok_config = json.loads((model_dir / "tokenizer_config.json").read_text())
    vocab = tok["model"]["vocab"]
    tokens = sorted(vocab, key=vocab.__getitem__)
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]]
    specials = {t["content"] for t in tok["added_tokens"] if t["special"]}
    types = [3 if t in specials else 1 for t in tokens]

    weights = {}
    for name, w in mx.load(str(model_dir / "model.safetensors")).items():
        arr = np.array(w)
        if name == "model.embed_tokens.weight":
            weights["token_embd.weight"] = arr
            continue
        if name == "model.norm.weight":
            weights["output_norm.weight"] = arr
            continue
        _, _, layer, rest = name.split(".", 3)
        module, _, param = rest.rpartition(".")
        if module == "self_attn.q_proj":
            arr = _llama_cpp_permute(arr, config["num_attention_heads"])
        elif module == "self_attn.k_proj":
            arr = _llama_cpp_permute(arr, config["num_key_value_heads"])
        weights[f"blk.{layer}.{_GGUF_NAMES[module]}.{param}"] = arr

    def u32(v: int) -> mx.array:
        return mx.array(v, dtype=mx.uint32)

    metadata = {
        "general.architecture": "llama",
        "general.name": "tiny",
        "general.file_type": u32(0),
        "llama.context_length": u32(config["max_position_embeddings"]),
        "llama.embedding_length": u32(config["hidden_size"]),
        "llama.feed_forward_length": u32(config["intermediate_size"]),
        "llama.block_count": u32(config["num_hidden_layers"]),
        "llama.attention.head_count": u32(config["num_attention_heads"]),
        "llama.attention.head_count_kv": u32(config["num_key_value_heads"]),
        "llama.attention.key_length": u32(config["head_dim"]),
        "llama.attention.layer_norm_rms_epsilon": mx.array(config["rms_norm_eps"]),
        "llama.rope.freq_base": mx.array(config["rope_theta"]),
        "llama.vocab_size": u32(len(tokens)),
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "gpt2",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.merges": merges,
        "tokenizer.ggml.token_type": mx.array(types, dtype=mx.int32),
        "tokenizer.ggml.bos_token_id": u32(vocab[tok_config["bos_token"]]),
        "tokenizer.ggml.eos_token_id": u32(vocab[tok_config["eos_token"]]),
        "tokenizer.chat_template": tok_config["chat_template"],
    }
    if (config.get("rope_scaling") or {}).get("rope_type") == "llama3":
        weights["rope_freqs.weight"] = _llama3_rope_factors(config)
    path.parent.mkdir(parents=True, exist_ok=True)
    mx.save_gguf(str(path), {k: mx.array(v) for k, v in weights.items()}, metadata)
    return path


def _llama3_rope_factors(config: dict) -> np.ndarray:
    """What llama.cpp's converter stores as ``rope_freqs.weight`` for llama3 rope scaling:
    one factor per frequency, by which the rotation period is stretched."""
    scaling = config["rope_scaling"]
    dims, base = config["head_dim"], config["rope_theta"]
    factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
    old = scaling["original_max_position_embeddings"]
    factors = []
    for i in range(0, dims, 2):
        wavelen = 2 * np.pi * base ** (i / dims)
        if wavelen < old / high:
            factors.append(1.0)
        elif wavelen > old / low:
            factors.append(factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(factors, dtype=np.float32)


def make_hub_cache_entry(model_dir: Path, hub: Path, repo_id: str, commit: str) -> Path:
    """Lay ``model_dir`` out as huggingface_hub's cache holds ``repo_id`` at ``commit``."""
    import shutil

    repo = hub / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    shutil.copytree(model_dir, snapshot)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return snapshot


def make_random_draft(tokenizer_dir: Path, path: Path, *, seed: int = 1) -> Path:
    """A tiny random llama with the tokenizer of ``tokenizer_dir`` (the demo's): a draft
    model whose guesses the demo almost never accepts (speculative decoding's worst case)."""
    import shutil

    import mlx.core as mx

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                 "chat_template.jinja"):
        if (tokenizer_dir / name).exists():
            shutil.copy(tokenizer_dir / name, path / name)
    theirs = json.loads((tokenizer_dir / "config.json").read_text())
    config = dict(CONFIG, vocab_size=theirs["vocab_size"], bos_token_id=theirs["bos_token_id"],
                  eos_token_id=theirs["eos_token_id"],
                  max_position_embeddings=theirs.get("max_position_embeddings", 2048))
    (path / "config.json").write_text(json.dumps(config, indent=2))
    rows = np.ones(config["vocab_size"], np.float32)
    arrays = {k: mx.array(v) for k, v in _weights(config, seed, rows).items()}
    mx.save_safetensors(str(path / "model.safetensors"), arrays, metadata={"format": "mlx"})
    return path

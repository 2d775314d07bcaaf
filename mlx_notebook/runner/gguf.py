"""Convert a llama-architecture GGUF file into an MLX model folder that ``mlx_lm.load`` reads.

``mx.load(path, return_metadata=True)`` already reads GGUF: Q4_0, Q4_1 and Q8_0
tensors come back as MLX affine-quantized triples (weight, scales, biases; group
size 32), other quantization types (K-quants ...) come back cast to float16. What
is left for us: rename tensors to the Hugging Face llama names, undo llama.cpp's
Q/K row permutation, write ``config.json`` from the metadata, and rebuild the
tokenizer from the GGUF vocabulary and merges with the ``tokenizers`` library.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mlx.core as mx

from mlx_notebook.model_files import ModelLoadError, read_gguf_summary
from mlx_notebook.runner.mx_values import as_list

Progress = Callable[[float, str], None]

# llama.cpp's LLAMA_FTYPE values (general.file_type), for human-readable formats.
FILE_TYPES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1",
    10: "Q2_K", 11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M",
    16: "Q5_K_S", 17: "Q5_K_M", 18: "Q6_K", 19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S",
    22: "IQ3_XS", 23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL", 26: "IQ3_S", 27: "IQ3_M",
    28: "IQ2_S", 29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M", 32: "BF16",
}  # fmt: skip

_NAMES = [
    (r"^token_embd\.", "model.embed_tokens."),
    (r"^output_norm\.", "model.norm."),
    (r"^output\.", "lm_head."),
    (r"^blk\.(\d+)\.attn_q\.", r"model.layers.\1.self_attn.q_proj."),
    (r"^blk\.(\d+)\.attn_k\.", r"model.layers.\1.self_attn.k_proj."),
    (r"^blk\.(\d+)\.attn_v\.", r"model.layers.\1.self_attn.v_proj."),
    (r"^blk\.(\d+)\.attn_output\.", r"model.layers.\1.self_attn.o_proj."),
    (r"^blk\.(\d+)\.ffn_gate\.", r"model.layers.\1.mlp.gate_proj."),
    (r"^blk\.(\d+)\.ffn_up\.", r"model.layers.\1.mlp.up_proj."),
    (r"^blk\.(\d+)\.ffn_down\.", r"model.layers.\1.mlp.down_proj."),
    (r"^blk\.(\d+)\.attn_norm\.", r"model.layers.\1.input_layernorm."),
    (r"^blk\.(\d+)\.ffn_norm\.", r"model.layers.\1.post_attention_layernorm."),
]

# Pre-tokenizer regexes by tokenizer.ggml.pre (as in llama.cpp's llama-vocab.cpp).
_GPT2_RE = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
_LLAMA3_RE = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_RE = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


class GGUFError(ValueError):
    """The GGUF file cannot be converted; the message is one line naming the reason."""


def _scalar(metadata: dict[str, Any], key: str, default: Any = None) -> Any:
    value = metadata.get(key, default)
    if isinstance(value, mx.array):
        return value.item()
    return value


def read_gguf(path: Path) -> tuple[dict[str, mx.array], dict[str, Any]]:
    """Weights and metadata of a GGUF file, or GGUFError with a one-line reason."""
    try:
        # format given: the extension may be .GGUF (MLX goes by the lower-case extension)
        loaded: Any = mx.load(str(path), format="gguf", return_metadata=True)  # stubs: a union
        weights, metadata = loaded
    except Exception as exc:  # mlx raises RuntimeError/ValueError with multi-line text
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise GGUFError(f"cannot read GGUF file {path}: {reason}") from exc
    return weights, metadata


def file_type_name(metadata: dict[str, Any]) -> str:
    """The GGUF quantization type name (``Q4_1``), or ``type N`` when unknown."""
    ftype = _scalar(metadata, "general.file_type")
    if ftype is None:
        return "unknown type"
    return FILE_TYPES.get(int(ftype), f"type {ftype}")


def _unpermute(w: mx.array, n_head: int) -> mx.array:
    """Undo llama.cpp's Q/K row order (interleaved rotary pairs -> HF half split).

    Rows are output features; quantization groups run along the input axis, so the
    same row permutation is valid for packed weights, scales and biases alike.
    """
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _hf_name(name: str) -> str | None:
    for pattern, repl in _NAMES:
        if re.match(pattern, name):
            return re.sub(pattern, repl, name)
    return None


def convert_weights(
    weights: dict[str, mx.array], n_head: int, n_kv_head: int
) -> dict[str, mx.array]:
    """GGUF tensor names -> mlx_lm llama names, with Q/K rows put back in HF order."""
    out: dict[str, mx.array] = {}
    for name, w in weights.items():
        if name == "rope_freqs.weight":
            continue  # llama3 rope scaling: in config.json instead (rope_scaling_config)
        new = _hf_name(name)
        if new is None:
            raise GGUFError(f"GGUF tensor {name!r} has no llama counterpart")
        if ".self_attn.q_proj." in new:
            w = _unpermute(w, n_head)
        elif ".self_attn.k_proj." in new:
            w = _unpermute(w, n_kv_head)
        out[new] = w
    return out


def _quantization(weights: dict[str, mx.array]) -> dict[str, int] | None:
    """The most common (bits, group size) among quantized tensors; mlx_lm infers the rest."""
    seen: Counter[tuple[int, int]] = Counter()
    for name, scales in weights.items():
        if not name.endswith(".scales"):
            continue
        packed = weights[name[: -len("scales")] + "weight"]
        bits = packed.shape[-1] * 32 // (scales.shape[-1] * 32)  # GGUF groups are 32 wide
        seen[(bits, 32)] += 1
    if not seen:
        return None
    bits, group = seen.most_common(1)[0][0]
    return {"group_size": group, "bits": bits}


def rope_scaling_config(metadata: dict[str, Any], weights: dict[str, mx.array], dims: int,
                        base: float) -> dict[str, Any] | None:
    """mlx_lm's ``rope_scaling`` for what the GGUF file says about stretching RoPE.

    llama.cpp stores Llama 3.1-style scaling not as its four numbers but as their result:
    ``rope_freqs.weight``, one factor per frequency (1 for the fast ones, ``factor`` for
    the slow ones, a smooth blend between). In that blend the factor depends on the
    wavelength only through two numbers, so two blended frequencies give them back, and
    any (``low_freq_factor``, ``high_freq_factor``, ``original_max_position_embeddings``)
    with those two numbers rebuilds every factor. Linear scaling has its own keys.
    """
    freqs = weights.get("rope_freqs.weight")
    if freqs is None:
        kind = _scalar(metadata, "llama.rope.scaling.type")
        factor = _scalar(metadata, "llama.rope.scaling.factor")
        if kind == "linear" and factor:
            return {"type": "linear", "factor": float(factor)}
        return None
    factors = [float(f) for f in as_list(freqs.astype(mx.float32))]
    top = max(factors)
    if top <= 1.0 + 1e-6:
        return None
    wavelengths = [2 * math.pi * base ** (2 * i / dims) for i in range(len(factors))]
    # blend s in (0, 1) where 1/f = (1 - s)/top + s, and s = a/wavelength - b
    blend = [((1 / f - 1 / top) / (1 - 1 / top), w) for f, w in zip(factors, wavelengths, strict=True)
             if 1.0 + 1e-4 < f < top * (1 - 1e-4)]
    a = b = 0.0
    if len(blend) >= 2:
        (s1, w1), (s2, w2) = blend[0], blend[-1]
        a = (s1 - s2) / (1 / w1 - 1 / w2)
        b = a / w1 - s1
    if a <= 0 or b <= 0:  # (almost) a plain step: put the edges between the samples
        fast = [w for f, w in zip(factors, wavelengths, strict=True) if f < 1.0 + 1e-4]
        slow = [w for f, w in zip(factors, wavelengths, strict=True) if f > top * (1 - 1e-4)]
        high_edge = max(fast) * 1.001 if fast else min(wavelengths) / 2  # blend = 1 there
        low_edge = min(slow) * 0.999 if slow else max(wavelengths) * 2  # blend = 0 there
        a = 1 / (1 / high_edge - 1 / low_edge)
        b = a / low_edge
    # s = a/w - b with a = O/(h - l), b = l/(h - l); take l = 1
    return {"rope_type": "llama3", "factor": top, "low_freq_factor": 1.0,
            "high_freq_factor": 1.0 + 1.0 / b, "original_max_position_embeddings": a / b}


def make_config(metadata: dict[str, Any], weights: dict[str, mx.array]) -> dict[str, Any]:
    """config.json for mlx_lm's llama model, from GGUF metadata."""
    arch = _scalar(metadata, "general.architecture")
    if arch != "llama":
        raise GGUFError(f"GGUF architecture {arch!r} is not supported (only 'llama')")

    def get(key: str, default: Any = None) -> Any:
        return _scalar(metadata, f"llama.{key}", default)

    hidden = int(get("embedding_length"))
    n_head = int(get("attention.head_count"))
    tokens = metadata.get("tokenizer.ggml.tokens") or []
    config: dict[str, Any] = {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": hidden,
        "intermediate_size": int(get("feed_forward_length")),
        "num_hidden_layers": int(get("block_count")),
        "num_attention_heads": n_head,
        "num_key_value_heads": int(get("attention.head_count_kv", n_head)),
        "head_dim": int(get("attention.key_length", hidden // n_head)),
        "rms_norm_eps": float(get("attention.layer_norm_rms_epsilon", 1e-5)),
        "rope_theta": float(get("rope.freq_base", 10000.0)),
        "max_position_embeddings": int(get("context_length", 0)),
        "vocab_size": int(get("vocab_size", len(tokens))),
        "tie_word_embeddings": "lm_head.weight" not in weights,
    }
    for ours, theirs in (("bos_token_id", "bos_token_id"), ("eos_token_id", "eos_token_id")):
        value = _scalar(metadata, f"tokenizer.ggml.{theirs}")
        if value is not None:
            config[ours] = int(value)
    scaling = rope_scaling_config(metadata, weights, config["head_dim"], config["rope_theta"])
    if scaling is not None:
        config["rope_scaling"] = scaling
    if (quant := _quantization(weights)) is not None:
        config["quantization"] = quant
        config["quantization_config"] = quant
    return config


def _pre_tokenizer(pre: str | None) -> Any:
    from tokenizers import Regex, pre_tokenizers

    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    if pre in ("llama3", "llama-bpe", "llama-v3", "smaug-bpe", "dbrx"):
        regex = _LLAMA3_RE
    elif pre in ("qwen2", "deepseek-r1-qwen"):
        regex = _QWEN2_RE
    elif pre in ("smollm", "starcoder", "refact"):
        # digits one at a time, then the GPT-2 split
        return pre_tokenizers.Sequence(
            [
                pre_tokenizers.Digits(individual_digits=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
            ]
        )
    elif pre in (None, "default", "gpt2", "gpt-2"):
        return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    else:
        raise GGUFError(f"GGUF pre-tokenizer {pre!r} is not supported")
    split = pre_tokenizers.Split(Regex(regex), behavior="isolated", invert=False)
    return pre_tokenizers.Sequence([split, byte_level])


def _gpt2_model(metadata: dict[str, Any], tokens: list[str]) -> Any:
    """Byte-level BPE (GPT-2 style): vocabulary plus the merges stored in the file."""
    from tokenizers import Tokenizer, decoders, models, processors

    merges = [tuple(m.split(" ", 1)) for m in metadata.get("tokenizer.ggml.merges", [])]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=False))
    tok.pre_tokenizer = _pre_tokenizer(_scalar(metadata, "tokenizer.ggml.pre"))
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok


def _spm_model(metadata: dict[str, Any], tokens: list[str]) -> Any:
    """SentencePiece BPE (Llama 2, Mistral): merges recovered from the token scores.

    Every split of a token into two known tokens is a merge, ranked by the score of
    the merged token, as SentencePiece would apply them; unknown bytes fall back to
    the ``<0xNN>`` tokens.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers

    scores = metadata.get("tokenizer.ggml.scores")
    scores = scores.tolist() if scores is not None else [-float(i) for i in range(len(tokens))]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    merges: list[tuple[str, str, float]] = []
    for piece, score in sorted(zip(tokens, scores, strict=False), key=lambda ts: -ts[1]):
        splits = [
            (piece[:i], piece[i:], score)
            for i in range(1, len(piece))
            if piece[:i] in vocab and piece[i:] in vocab
        ]
        merges.extend(sorted(splits, key=lambda m: (vocab[m[0]], vocab[m[1]])))
    merges.sort(key=lambda m: -m[2])
    unk = _scalar(metadata, "tokenizer.ggml.unknown_token_id", 0)
    tok = Tokenizer(
        models.BPE(
            vocab=vocab,
            merges=[(a, b) for a, b, _ in merges],
            unk_token=tokens[int(unk)],
            fuse_unk=True,
            byte_fallback=True,
        )
    )
    prefix = _scalar(metadata, "tokenizer.ggml.add_space_prefix", True)
    steps = [normalizers.Prepend("\u2581")] if prefix else []
    tok.normalizer = normalizers.Sequence([*steps, normalizers.Replace(" ", "\u2581")])
    strip = [decoders.Strip(" ", 1, 0)] if prefix else []
    tok.decoder = decoders.Sequence(
        [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(), *strip]
    )
    return tok


def write_tokenizer(metadata: dict[str, Any], folder: Path) -> None:
    """Rebuild the tokenizer (GPT-2 BPE or SentencePiece BPE) from GGUF metadata."""
    from tokenizers import AddedToken, processors

    kind = _scalar(metadata, "tokenizer.ggml.model")
    tokens: list[str] = list(metadata["tokenizer.ggml.tokens"])
    types = metadata.get("tokenizer.ggml.token_type")
    types = [int(t) for t in types.tolist()] if types is not None else [1] * len(tokens)
    if kind == "gpt2":
        tok = _gpt2_model(metadata, tokens)
    elif kind == "llama":
        tok = _spm_model(metadata, tokens)
    else:
        raise GGUFError(f"GGUF tokenizer model {kind!r} is not supported (only 'gpt2', 'llama')")
    # CONTROL (3) and USER_DEFINED (4) tokens are matched whole, before BPE.
    tok.add_tokens(
        [
            AddedToken(tokens[i], special=types[i] == 3, normalized=False)
            for i in range(len(tokens))
            if types[i] in (3, 4)
        ]
    )
    bos_id = _scalar(metadata, "tokenizer.ggml.bos_token_id")
    add_bos = bool(_scalar(metadata, "tokenizer.ggml.add_bos_token", kind == "llama"))
    if add_bos and bos_id is not None:
        bos = (tokens[int(bos_id)], int(bos_id))
        bos_step = processors.TemplateProcessing(
            single=f"{bos[0]} $A", pair=f"{bos[0]} $A {bos[0]} $B", special_tokens=[bos]
        )
        steps = [tok.post_processor] if tok.post_processor is not None else []
        tok.post_processor = processors.Sequence([*steps, bos_step])
    tok.save(str(folder / "tokenizer.json"))

    def token(key: str) -> str | None:
        idx = _scalar(metadata, f"tokenizer.ggml.{key}")
        return tokens[int(idx)] if idx is not None and int(idx) < len(tokens) else None

    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": token("bos_token_id"),
        "eos_token": token("eos_token_id"),
        "unk_token": token("unknown_token_id"),
        "pad_token": token("padding_token_id"),
        "add_bos_token": add_bos,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": int(_scalar(metadata, "llama.context_length", 0) or 2048),
    }
    if template := metadata.get("tokenizer.chat_template"):
        config["chat_template"] = template
    config = {k: v for k, v in config.items() if v is not None}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))


def convert_gguf(path: Path, folder: Path, progress: Progress | None = None) -> dict[str, Any]:
    """Write an MLX model folder for the GGUF file ``path``; returns conversion facts."""
    report = progress or (lambda _p, _m: None)
    report(0.0, f"reading {path.name}")
    weights, metadata = read_gguf(path)
    config = make_config(metadata, weights)
    report(30.0, "converting weights")
    converted = convert_weights(
        weights, config["num_attention_heads"], config["num_key_value_heads"]
    )
    try:
        cast = read_gguf_summary(path).cast_to_float16
    except ModelLoadError as exc:
        raise GGUFError(str(exc)) from exc
    folder.mkdir(parents=True, exist_ok=True)
    report(40.0, "writing tokenizer")
    write_tokenizer(metadata, folder)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    report(50.0, "writing weights")
    mx.save_safetensors(str(folder / "model.safetensors"), converted, metadata={"format": "mlx"})
    report(100.0, "converted")
    return {"gguf_type": file_type_name(metadata), "cast_to_float16": cast}

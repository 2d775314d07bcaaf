"""The baselines the benchmarks compare against: in-process mlx-lm and ``mlx_lm.server``.

Both get the same weights the runner holds (see :func:`prepare_weights`) and run in
a process with the same BLAS (see :func:`reexec_like_runner`), so that a ratio
measures our plumbing, not a different engine configuration.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx2


def reexec_like_runner() -> None:
    """Preload the same OpenBLAS the runner preloads (LD_PRELOAD is read at start-up)."""
    from mlx_notebook.runner.fastblas import find_openblas, openblas_preloaded

    library = find_openblas()
    if library and not openblas_preloaded():
        env = dict(os.environ, LD_PRELOAD=library)
        os.execve(sys.executable, [sys.executable, *sys.argv], env)


def prepare_weights(spec: str, tokenizer: Path | None = None) -> Path:
    """A folder holding the weights exactly as the runner would hold them on this device.

    ``random-demo[-FORMAT]`` and ``random-1b[-FORMAT]`` are random weights made here
    (no download; ``tokenizer`` is a folder with the demo's tokenizer files, else the
    demo is fetched for them); see :func:`random_model`. Where the runner casts weights
    (float32 on a CPU with OpenBLAS), that format replaces FORMAT.
    """
    import mlx.core as mx

    from mlx_notebook.paths import cache_dir
    from mlx_notebook.runner.fastblas import auto_dtype

    dtype = auto_dtype(mx.default_device().type.name.lower())
    if spec == "random-large":
        return _random_large(cache_dir() / "bench" / "random-large")
    if spec.startswith("random-"):  # FORMAT gives way to the runner's dtype where it casts
        name, _, fmt = spec.removeprefix("random-").partition("-")
        fmt = dtype or fmt or "bfloat16"
        return random_model(name, cache_dir() / "bench" / f"random-{name}-{fmt}", tokenizer, fmt)
    from mlx_notebook.runner.models import prefetch

    source = prefetch(spec)
    if dtype is None:
        return source
    target = cache_dir() / "bench" / f"{spec}-{dtype}"
    if not (target / "config.json").exists():
        subprocess.run([sys.executable, "-m", "mlx_lm", "convert", "--hf-path", str(source),
                        "--mlx-path", str(target), "--dequantize", "--dtype", dtype],
                       check=True, capture_output=True)
    return target


def _random_large(target: Path) -> Path:
    """A head-divisible random llama big enough that the engine, not Python, dominates."""
    if (target / "model.safetensors").exists():
        return target
    import shutil

    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.models import llama

    from mlx_notebook.runner.models import prefetch

    demo = prefetch("demo")
    target.mkdir(parents=True, exist_ok=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (demo / name).exists():
            shutil.copy(demo / name, target / name)
    config = json.loads((demo / "config.json").read_text())
    config.pop("quantization", None)
    config.pop("quantization_config", None)
    config.update(hidden_size=1024, intermediate_size=2816, num_hidden_layers=12,
                  num_attention_heads=16, num_key_value_heads=4, head_dim=64)
    mx.random.seed(0)
    model = llama.Model(llama.ModelArgs.from_dict(config))
    weights = {k: (v * 0.02).astype(mx.float32) for k, v in tree_flatten(model.parameters())}
    mx.save_safetensors(str(target / "model.safetensors"), weights, metadata={"format": "mlx"})
    (target / "config.json").write_text(json.dumps(config, indent=2))
    return target


# Shapes of random-weight llamas; "demo" is SmolLM2-135M's (the demo model's config.json).
SHAPES = {
    "demo": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                 num_attention_heads=9, num_key_value_heads=3, head_dim=64),
    "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
               num_attention_heads=32, num_key_value_heads=8, head_dim=64),
    # A draft that costs next to nothing (benchmarks/speculative_bench.py).
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, head_dim=16),
}
DEMO_CONFIG = dict(model_type="llama", architectures=["LlamaForCausalLM"],
                   rms_norm_eps=9.999999747378752e-06, rope_theta=100000.0,
                   max_position_embeddings=8192, vocab_size=49152, tie_word_embeddings=True,
                   bos_token_id=1, eos_token_id=2)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


def random_model(shape: str, target: Path, tokenizer: Path | None, fmt: str) -> Path:
    """A random-weight llama of ``SHAPES[shape]`` with the demo's tokenizer, made once.

    ``fmt``: float32, bfloat16, float16, or q4 (4-bit, group 32, float16 scales, float32
    norms: the converted demo's format, which the runner keeps off a CPU). The embedding rows of the end-of-sequence ids are zero, so
    greedy decoding never stops early and every path generates exactly max_tokens.
    """
    if (target / "config.json").exists():
        return target
    import shutil

    import mlx.core as mx
    import mlx.nn as nn
    from mlx.utils import tree_flatten
    from mlx_lm.models import llama

    if tokenizer is None:
        from mlx_notebook.runner.models import prefetch

        tokenizer = prefetch("demo")
    target.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        if (tokenizer / name).exists():
            shutil.copy(tokenizer / name, target / name)
    config = dict(DEMO_CONFIG, **SHAPES[shape])
    eos = {config["eos_token_id"]}
    stops = json.loads((tokenizer / "tokenizer_config.json").read_text()).get("eos_token")
    vocab = json.loads((tokenizer / "tokenizer.json").read_text()).get("added_tokens", [])
    eos |= {t["id"] for t in vocab if t.get("content") == stops}
    mx.random.seed(0)
    model = llama.Model(llama.ModelArgs.from_dict(config))
    dtype = mx.float32 if fmt in ("float32", "q4") else getattr(mx, fmt)
    weights = {k: (v * 0.02).astype(dtype) for k, v in tree_flatten(model.parameters())}
    embed = weights["model.embed_tokens.weight"]
    mask = mx.ones((embed.shape[0], 1), dtype=dtype)
    mask[mx.array(sorted(eos))] = 0
    weights["model.embed_tokens.weight"] = embed * mask
    if fmt == "q4":
        model.load_weights(list(weights.items()))
        nn.quantize(model, group_size=32, bits=4)
        weights = {k: v.astype(mx.float16) if k.endswith((".scales", ".biases")) else v
                   for k, v in tree_flatten(model.parameters())}  # as the converted demo
        config["quantization"] = config["quantization_config"] = {"group_size": 32, "bits": 4}
    mx.eval(weights)
    mx.save_safetensors(str(target / "model.safetensors"), weights, metadata={"format": "mlx"})
    (target / "config.json").write_text(json.dumps(config, indent=2))
    return target


class InProcess:
    """mlx-lm in this very process: ``mlx_lm.stream_generate``, greedy, no prompt cache."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def __enter__(self) -> InProcess:
        import mlx_lm

        self.model, self.tokenizer = mlx_lm.load(str(self.folder))
        return self

    def __exit__(self, *exc: object) -> None:
        del self.model, self.tokenizer

    def stream(self, messages: list[dict], max_tokens: int) -> dict:
        import mlx_lm

        start = time.perf_counter()
        prompt = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True)
        first = None
        text, tokens = "", 0
        for response in mlx_lm.stream_generate(self.model, self.tokenizer, prompt,
                                               max_tokens=max_tokens):
            if first is None:
                first = time.perf_counter()
            text += response.text
            tokens = response.generation_tokens
        end = time.perf_counter()
        return {"ttft": (first or end) - start, "tokens": tokens, "text": text, "wall": end - start,
                "decode_tps": (tokens - 1) / (end - first) if first and tokens > 1 else 0.0}


class MlxLmServer:
    """``python -m mlx_lm.server`` started here, driven through its streaming chat API."""

    def __init__(self, folder: Path, decode_concurrency: int = 8) -> None:
        self.folder = folder
        self.decode_concurrency = decode_concurrency

    def __enter__(self) -> MlxLmServer:
        self.log = tempfile.TemporaryFile()  # its stderr, shown if it fails to start
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mlx_lm.server", "--model", str(self.folder), "--port",
             str(self.port), "--log-level", "ERROR", "--decode-concurrency",
             str(self.decode_concurrency), "--prompt-concurrency", str(self.decode_concurrency)],
            stdout=subprocess.DEVNULL, stderr=self.log)
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                httpx2.get(self.url + "/v1/models", timeout=2)
                return self
            except httpx2.HTTPError:
                time.sleep(0.2)
        self.log.seek(0)
        tail = self.log.read().decode(errors="replace")[-2000:]
        self.__exit__()
        raise RuntimeError(f"mlx_lm.server did not start (exit {self.process.poll()}):\n{tail}")

    def __exit__(self, *exc: object) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()

    def stream(self, messages: list[dict], max_tokens: int) -> dict:
        body = {"messages": messages, "max_tokens": max_tokens, "temperature": 0.0,
                "stream": True, "stream_options": {"include_usage": True}}
        start = time.perf_counter()
        first = None
        text, tokens, pieces = "", 0, 0
        with httpx2.stream("POST", self.url + "/v1/chat/completions", json=body,
                           timeout=600) as response:
            for line in response.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                data = json.loads(line[6:])
                if data.get("usage"):
                    tokens = data["usage"].get("completion_tokens", tokens)
                for choice in data.get("choices", []):
                    piece = (choice.get("delta") or {}).get("content")
                    if piece:
                        pieces += 1
                        text += piece
                        if first is None:
                            first = time.perf_counter()
        end = time.perf_counter()
        tokens = tokens or pieces
        return {"ttft": (first or end) - start, "tokens": tokens, "text": text, "wall": end - start,
                "decode_tps": (tokens - 1) / (end - first) if first and tokens > 1 else 0.0}

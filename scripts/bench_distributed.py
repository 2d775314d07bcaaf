"""Decode speed of one runner vs a 2-rank tensor-parallel RunnerGroup (local, and over ssh).

    python scripts/bench_distributed.py

The model is random (a SmolLM2-135M-sized llama with 8 query / 2 key-value heads,
so it splits over 2 ranks; small vocabulary), built once under /tmp.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mlx_notebook.control.client import RunnerClient  # noqa: E402
from mlx_notebook.control.group import RunnerGroup  # noqa: E402
from mlx_notebook.protocol import CompletionRequest, SamplingOptions  # noqa: E402
from tests import tiny_model  # noqa: E402

MODEL = Path("/tmp/mlx-notebook-bench-tp-model")
PROMPT = "The capital of France is " * 20


def build() -> Path:
    if not (MODEL / "model.safetensors").exists():
        tiny_model.CONFIG.update(hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                                 num_attention_heads=8, num_key_value_heads=2, head_dim=64,
                                 max_position_embeddings=2048)
        tiny_model.make_tiny_model(MODEL)
    return MODEL


def measure(label: str, client: RunnerClient) -> None:
    options = SamplingOptions(max_tokens=128)
    with client:
        client.complete(CompletionRequest(prompt=PROMPT, options=options))  # warm
        decode, prefill = [], []
        for i in range(3):  # a new prompt each time: no prompt-cache hits
            _, done = client.complete(CompletionRequest(prompt=PROMPT + str(i) * 50,
                                                        options=options))
            decode.append((done.completion_tokens - 1) / done.eval_duration)
            prefill.append(done.prompt_tokens / done.prompt_duration)
    print(f"{label:>12}: decode {max(decode):5.1f} tok/s, prefill {max(prefill):4.0f} tok/s "
          f"(best of 3; {done.prompt_tokens} prompt tokens)", flush=True)


def measure_over_ssh(path: str) -> None:
    """Rank 1 in a network namespace, started over real ssh (needs root; tests/ssh_hosts.py)."""
    import os
    import tempfile

    from mlx_notebook.control.hosts import SSH_ENV
    from tests.ssh_hosts import make_ssh_hosts, missing_tools

    why = missing_tools()
    if why:
        print(f"{'2 ranks ssh':>12}: skipped ({why})")
        return
    workdir = Path(tempfile.mkdtemp(prefix="mlx-notebook-bench-hosts-"))
    hosts = make_ssh_hosts(workdir, count=1)
    os.environ[SSH_ENV] = hosts.ssh_command
    try:
        hostfile = hosts.hostfile(workdir / "hosts.json", ["local", "0"])
        measure("2 ranks ssh", RunnerGroup(path, hosts=str(hostfile)))
    finally:
        hosts.close()


if __name__ == "__main__":
    path = str(build())
    measure("1 process", RunnerClient(path))
    measure("2 ranks TP", RunnerGroup(path, ranks=2))
    measure_over_ssh(path)
    measure("1 process", RunnerClient(path))

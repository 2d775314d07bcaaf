"""KV-cache quantization, side by side in one run: full precision vs 8-bit vs 4-bit.

    python benchmarks/kv_bench.py [--model demo] [--context 2048] [--tokens 64] [--reps 3]

Three runners of the same model (``--kv-bits`` none / 8 / 4, our default
``--kv-start`` 256), the same greedy requests, interleaved reps:

- ``kv_bytes_per_1k_tokens``: the KV cache a request leaves in the prompt cache
  (``Status.kv.prompt_cache_bytes``, measured by the runner: MLX's own buffer sizes,
  allocation steps of 256 tokens included) per 1000 tokens of its context;
- ``decode_tps``: decode tokens/s with ``--context`` tokens of context (median of reps);
- ``agreement``: the greedy answer of each quantized cache against the full-precision
  one over ``--tokens`` tokens: the fraction of positions with the same token and
  the first position where they differ (null: none differ), at that context and for
  a short chat prompt with ``--kv-start 0`` (everything quantized from the first token).

Prints JSON; never gates CI.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mlx_notebook.control.client import RunnerClient  # noqa: E402
from mlx_notebook.protocol import (  # noqa: E402
    ChatMessage,
    CompletionRequest,
    SamplingOptions,
)

FORMATS: dict[str, list[str]] = {"fp": [], "8-bit": ["--kv-bits", "8"], "4-bit": ["--kv-bits", "4"]}
PARAGRAPH = ("The old lighthouse keeper wrote in his log every evening: the wind, the ships "
             "that passed, the colour of the sea, and the names of the birds that rested on "
             "the rail. ")
SHORT = "Explain in a few sentences why the sky is blue."


@contextmanager
def runner(spec: str, name: str, args: list[str]) -> Iterator[RunnerClient]:
    client = RunnerClient(spec, name=f"bench-kv-{name}", extra_args=args)
    try:
        client.start()
        client.wait_until_ready(timeout=600)
        yield client
    finally:
        client.close()


def document(client: RunnerClient, context: int) -> str:
    """A raw prompt of about ``context`` tokens (the paragraph repeated, then a question)."""
    per = len(client.tokenize(PARAGRAPH).tokens)
    return PARAGRAPH * max(1, context // per) + "\nSummarize the log:"


def run(client: RunnerClient, request: CompletionRequest) -> tuple[list[int], float, int]:
    """The answer's tokens, decode tok/s and the context (prompt + answer) it ended with."""
    with client.stream(request) as stream:
        tokens = [t for chunk in stream for t in chunk.tokens]
    done = stream.result
    assert done is not None
    n = done.completion_tokens
    tps = (n - 1) / done.eval_duration if n > 1 and done.eval_duration else 0.0
    return tokens, tps, done.prompt_tokens + n


def agreement(reference: list[int], other: list[int]) -> dict:
    n = max(len(reference), len(other))
    same = sum(a == b for a, b in zip(reference, other, strict=False))
    first = next((i for i, (a, b) in enumerate(zip(reference, other, strict=False)) if a != b),
                 None if len(reference) == len(other) else min(len(reference), len(other)))
    return {"same_fraction": round(same / n, 3) if n else 1.0, "first_divergence": first,
            "tokens": n}


def bench(spec: str, context: int, tokens: int, reps: int) -> dict:
    options = SamplingOptions(max_tokens=tokens, temperature=0.0)
    with ExitStack() as stack:
        clients = {name: stack.enter_context(runner(spec, name, args))
                   for name, args in FORMATS.items()}
        long = CompletionRequest(prompt=document(clients["fp"], context), options=options)
        answers: dict[str, list[int]] = {}
        tps: dict[str, list[float]] = {name: [] for name in clients}
        per_1k: dict[str, int] = {}
        held: dict[str, int] = {}
        for rep in range(reps):
            for name, client in clients.items():
                client.free_memory()  # each rep reads the document afresh
                answer, speed, held[name] = run(client, long)
                tps[name].append(speed)
                answers.setdefault(name, answer)
                if rep == 0:
                    kept = client.status().kv.prompt_cache_bytes
                    per_1k[name] = round(kept * 1000 / held[name])
        short_answers = {}
        for name, args in FORMATS.items():  # everything quantized from token 0
            start = ["--kv-start", "0"] if args else []
            with runner(spec, f"{name}-short", args + start) as client:
                chat = CompletionRequest(messages=(ChatMessage("user", SHORT),), options=options)
                short_answers[name] = run(client, chat)[0]
    decode = {name: round(statistics.median(v), 2) for name, v in tps.items()}
    fp_bytes, fp_tps = per_1k["fp"], decode["fp"]
    return {
        "model": spec, "context_tokens": held["fp"] - tokens, "answer_tokens": tokens,
        "reps": reps, "kv_start": 256,
        "kv_bytes_per_1k_tokens": per_1k,
        "kv_bytes_ratio_vs_fp": {n: round(b / fp_bytes, 3) for n, b in per_1k.items()},
        "decode_tps": decode, "decode_tps_spread": {n: [round(min(v), 2), round(max(v), 2)]
                                                    for n, v in tps.items()},
        "decode_ratio_vs_fp": {n: round(t / fp_tps, 3) for n, t in decode.items()},
        "agreement_at_context": {n: agreement(answers["fp"], answers[n])
                                 for n in FORMATS if n != "fp"},
        "agreement_short_chat_kv_start_0": {n: agreement(short_answers["fp"], short_answers[n])
                                            for n in FORMATS if n != "fp"},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo")
    parser.add_argument("--context", type=int, default=2048, help="tokens of context (prompt)")
    parser.add_argument("--tokens", type=int, default=64, help="tokens decoded per request")
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    print(json.dumps(bench(args.model, args.context, args.tokens, args.reps), indent=2))


if __name__ == "__main__":
    main()

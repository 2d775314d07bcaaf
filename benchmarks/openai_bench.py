"""Streaming chat through the ``openai`` SDK: our runner vs ``mlx_lm.server``, same weights.

Prints one JSON object: per server, a lone stream's TTFT and decode tok/s (first and
repeated prompt: the prompt cache), and the aggregate tok/s of 8 concurrent clients.
Never gates CI. ``python benchmarks/openai_bench.py [--model demo] [--tokens 48]``
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from benchmarks.baselines import MlxLmServer, prepare_weights, reexec_like_runner

SYSTEM = "You are a helpful assistant. " * 40  # a long shared prefix: the prompt cache's case


def _stream(client: Any, model: str, prompt: str, tokens: int) -> dict[str, float]:
    start = time.perf_counter()
    first = None
    count = 0
    stream = client.chat.completions.create(
        model=model, messages=[{"role": "system", "content": SYSTEM},
                               {"role": "user", "content": prompt}],
        max_tokens=tokens, temperature=0, stream=True, stream_options={"include_usage": True})
    for chunk in stream:
        if chunk.usage is not None:
            count = chunk.usage.completion_tokens
        if chunk.choices and chunk.choices[0].delta.content and first is None:
            first = time.perf_counter()
    end = time.perf_counter()
    first = first or end
    return {"ttft": first - start, "tokens": count, "wall": end - start,
            "decode_tps": (count - 1) / (end - first) if count > 1 and end > first else 0.0}


def measure(client: Any, model: str, tokens: int, clients: int) -> dict[str, Any]:
    cold = _stream(client, model, "Write a haiku about the sea.", tokens)
    warm = _stream(client, model, "Write a haiku about the sea.", tokens)  # same prefix again
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(lambda i: _stream(client, model, f"Tell me fact {i}.", tokens),
                                range(clients)))
    wall = time.perf_counter() - start
    return {"first": cold, "repeated": warm,
            "concurrent": {"clients": clients, "aggregate_tps": sum(r["tokens"] for r in results)
                           / wall, "mean_ttft": sum(r["ttft"] for r in results) / clients}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="demo")
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--clients", type=int, default=8)
    args = parser.parse_args()
    reexec_like_runner()
    import openai

    import mlx_notebook as mn

    folder = prepare_weights(args.model)
    out: dict[str, Any] = {"model": args.model, "weights": str(folder), "tokens": args.tokens}
    mn.load(str(folder), name="bench")
    try:
        out["mlx_notebook"] = measure(mn.openai_client("bench"), "bench", args.tokens,
                                      args.clients)
    finally:
        mn.unload(all=True)
    with MlxLmServer(folder, decode_concurrency=args.clients) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="none")
        out["mlx_lm.server"] = measure(client, str(folder), args.tokens, args.clients)
    ours, theirs = out["mlx_notebook"], out["mlx_lm.server"]
    out["ratios"] = {
        "decode_tps": ours["first"]["decode_tps"] / max(theirs["first"]["decode_tps"], 1e-9),
        "repeated_ttft": ours["repeated"]["ttft"] / max(theirs["repeated"]["ttft"], 1e-9),
        "aggregate_tps": ours["concurrent"]["aggregate_tps"]
        / max(theirs["concurrent"]["aggregate_tps"], 1e-9)}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()

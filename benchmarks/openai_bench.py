"""Streaming chat through the ``openai`` SDK: our runner vs ``mlx_lm.server``, same weights.

Prints one JSON object: per server, a lone stream's TTFT on a first prompt, the median
decode tok/s and TTFT of ``--reps`` lone streams of it again (the prompt cache), and the
aggregate tok/s of 8 concurrent clients: both servers up at once, both batch paths warmed
by ``--warm`` untimed rounds, then ``--reps`` rounds interleaved (ours, theirs, ours...),
the median reported. Never gates CI.
``python -m benchmarks.openai_bench [--model demo] [--tokens 48] [--reps 7] [--warm 2]``
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from benchmarks.baselines import MlxLmServer, prepare_weights, reexec_like_runner

SYSTEM = "You are a helpful assistant. " * 40  # a long shared prefix: the prompt cache's case


def _stream(client: Any, model: str, prompt: str, tokens: int,
            counts_stop_token: bool = False) -> dict[str, Any]:
    """One streamed chat; ``tokens`` counts the answer's tokens, never the one it stopped on.

    mlx_lm.server's usage counts the end-of-sequence token a stopped answer ended on (its
    ``tokens.append(gen.token)`` runs for it too); ours does not: ``counts_stop_token``
    takes it off theirs, so both sides count the same tokens of the same greedy text.
    """
    start = time.perf_counter()
    first = None
    count = 0
    reason = None
    text = []
    stream = client.chat.completions.create(
        model=model, messages=[{"role": "system", "content": SYSTEM},
                               {"role": "user", "content": prompt}],
        max_tokens=tokens, temperature=0, stream=True, stream_options={"include_usage": True})
    for chunk in stream:
        if chunk.usage is not None:
            count = chunk.usage.completion_tokens
        if chunk.choices:
            choice = chunk.choices[0]
            reason = choice.finish_reason or reason
            if choice.delta.content:
                text.append(choice.delta.content)
                if first is None:
                    first = time.perf_counter()
    end = time.perf_counter()
    first = first or end
    if counts_stop_token and reason == "stop":
        count -= 1
    return {"ttft": first - start, "tokens": count, "wall": end - start, "text": "".join(text),
            "decode_tps": (count - 1) / (end - first) if count > 1 and end > first else 0.0}


USER_TURNS = {  # the 8 clients' user turns: short answers (prefill-bound) or long ones
    "fact": "Tell me fact {tag}{i}.",
    "story": "Write a long story about the number {tag}{i}.",
}


def _concurrent(client: Any, model: str, tokens: int, clients: int, tag: str,
                counts_stop_token: bool = False, turn: str = USER_TURNS["fact"]
                ) -> dict[str, Any]:
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(lambda i: _stream(client, model, turn.format(tag=tag, i=i),
                                                  tokens, counts_stop_token), range(clients)))
    wall = time.perf_counter() - start
    return {"aggregate_tps": sum(r["tokens"] for r in results) / wall,
            "mean_ttft": sum(r["ttft"] for r in results) / clients}


def _median_of(runs: list[dict[str, Any]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="demo")
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--reps", type=int, default=7, help="interleaved concurrent rounds each")
    parser.add_argument("--warm", type=int, default=2, help="untimed concurrent rounds each first")
    parser.add_argument("--turns", choices=sorted(USER_TURNS), default="fact",
                        help="the 8 clients' user turns: fact (short answers) or story (long)")
    args = parser.parse_args()
    reexec_like_runner()
    import openai

    import mlx_notebook as mn

    folder = prepare_weights(args.model)
    out: dict[str, Any] = {"model": args.model, "weights": str(folder), "tokens": args.tokens,
                           "turns": args.turns,
                           "reps": args.reps}
    mn.load(str(folder), name="bench")
    try:
        with MlxLmServer(folder, decode_concurrency=args.clients) as server:
            sides = {"mlx_notebook": (mn.openai_client("bench"), "bench", False),
                     "mlx_lm.server": (openai.OpenAI(base_url=server.url + "/v1", api_key="none"),
                                       str(folder), True)}
            haiku = "Write a haiku about the sea."
            turn = USER_TURNS[args.turns]
            for name, (client, model, eos) in sides.items():
                out[name] = {"first": _stream(client, model, haiku, args.tokens, eos),
                             "repeated": [], "concurrent": []}
            for _ in range(args.reps):  # lone streams, interleaved: decode and a cached prefix
                for name, (client, model, eos) in sides.items():
                    out[name]["repeated"].append(_stream(client, model, haiku, args.tokens, eos))
            for client, model, eos in sides.values():
                for warm in range(args.warm):  # both batch paths warm, untimed
                    _concurrent(client, model, 8, args.clients, f"warm{warm}-", eos, turn)
            same = out["mlx_notebook"]["first"]["text"] == out["mlx_lm.server"]["first"]["text"]
            out["same_greedy_text"] = same
            for rep in range(args.reps):  # interleaved: the machine's drift hits both
                for name, (client, model, eos) in sides.items():
                    out[name]["concurrent"].append(
                        _concurrent(client, model, args.tokens, args.clients, f"r{rep}-", eos,
                                    turn))
    finally:
        mn.unload(all=True)
    for name in sides:
        lone = out[name]["repeated"]
        out[name]["lone_median"] = {"decode_tps": _median_of(lone, "decode_tps"),
                                    "repeated_ttft": _median_of(lone, "ttft")}
        runs = out[name]["concurrent"]
        out[name]["concurrent_median"] = {"clients": args.clients,
                                          "aggregate_tps": _median_of(runs, "aggregate_tps"),
                                          "mean_ttft": _median_of(runs, "mean_ttft")}
    ours, theirs = out["mlx_notebook"], out["mlx_lm.server"]
    out["ratios"] = {
        "decode_tps": ours["lone_median"]["decode_tps"]
        / max(theirs["lone_median"]["decode_tps"], 1e-9),
        "first_ttft": ours["first"]["ttft"] / max(theirs["first"]["ttft"], 1e-9),
        "repeated_ttft": ours["lone_median"]["repeated_ttft"]
        / max(theirs["lone_median"]["repeated_ttft"], 1e-9),
        "aggregate_tps": ours["concurrent_median"]["aggregate_tps"]
        / max(theirs["concurrent_median"]["aggregate_tps"], 1e-9)}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()

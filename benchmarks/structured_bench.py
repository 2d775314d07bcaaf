"""Structured output and ``mn.map``, side by side in one run (a section of benchmarks/bench.py).

    python benchmarks/structured_bench.py [--rows 64] [--max-tokens 8] [--reps 3]

- constrained decode tok/s vs unconstrained (same prompt, greedy, interleaved reps);
- ``mn.map`` over N short rows vs N sequential ``mn.generate`` calls vs the same N
  requests to ``mlx_lm.server`` from a thread pool (8 at a time, its decode concurrency).

Prints JSON; never gates CI.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.baselines import MlxLmServer  # noqa: E402
from mlx_notebook.control.client import RunnerClient  # noqa: E402
from mlx_notebook.protocol import (  # noqa: E402
    ChatMessage,
    CompletionRequest,
    Constraint,
    SamplingOptions,
)

SCHEMA = {"type": "object", "additionalProperties": False, "required": ["items"],
          "properties": {"items": {"type": "array", "items": {"type": "string"}}}}


def _tps(client: RunnerClient, constraint: Constraint | None, tokens: int, i: int) -> float:
    request = CompletionRequest(
        messages=(ChatMessage("user", f"(run {i}) List many fruits as JSON."),),
        options=SamplingOptions(max_tokens=tokens), constraint=constraint)
    _, done = client.complete(request)
    n = done.completion_tokens
    return (n - 1) / done.eval_duration if n > 1 and done.eval_duration else 0.0


def bench_constrained(spec: str, tokens: int, reps: int) -> dict:
    client = RunnerClient(spec, name="bench-structured")
    try:
        client.start()
        client.wait_until_ready(timeout=600)
        kinds = {"unconstrained": None, "json_schema": Constraint("json_schema", schema=SCHEMA),
                 "json": Constraint("json")}
        for c in kinds.values():
            _tps(client, c, 4, -1)  # warm: the grammar engine's tokenizer, the first compile
        rows: dict[str, list[float]] = {k: [] for k in kinds}
        for rep in range(reps):
            for name, c in kinds.items():
                rows[name].append(_tps(client, c, tokens, rep))
    finally:
        client.close()
    out = {k: round(statistics.median(v), 2) for k, v in rows.items()}
    base = out["unconstrained"]
    return {"decode_tps": out, "max_tokens": tokens, "reps": reps,
            "ratio_json_schema_vs_unconstrained": round(out["json_schema"] / base, 3),
            "ratio_json_vs_unconstrained": round(out["json"] / base, 3)}


def bench_map(spec: str, folder: Path, rows: int, tokens: int, reps: int = 2) -> dict:
    """``mn.map`` vs sequential ``mn.generate`` vs mlx_lm.server, on rows new to each.

    A user's first map pays for the batch path's set-up (MLX's buffers for each batch
    shape: the first 64-row map took ~1.3x the later ones); it is reported apart, and
    the speed-up is taken on ``reps`` later maps, interleaved with sequential passes.
    """
    import mlx_notebook as mn

    template = "Is {row} a fruit? Answer yes or no."

    def fresh(kind: str, rep: int) -> list[str]:  # never seen by the prompt cache
        return [f"{kind} {rep}-{i}" for i in range(rows)]

    def timed_map(words: list[str]) -> tuple[float, list[Any]]:
        start = time.perf_counter()
        out = mn.map(template, words, choices=["yes", "no"], max_tokens=tokens, show=False)
        return time.perf_counter() - start, out

    def timed_sequential(words: list[str]) -> float:
        start = time.perf_counter()
        for w in words:
            mn.generate(template.format(row=w), choices=["yes", "no"], max_tokens=tokens)
        return time.perf_counter() - start

    mn.load(spec, name="bench-map")
    try:
        # The one-time costs, paid by whichever goes first unless both are warmed: the
        # grammar engine's tokenizer (~0.5 s) and the batch path's first step.
        start = time.perf_counter()
        mn.generate("warm up", choices=["yes", "no"], max_tokens=2)
        first_constrained = time.perf_counter() - start
        start = time.perf_counter()
        mn.map(template, ["warm 1", "warm 2"], choices=["yes", "no"], max_tokens=tokens,
               show=False)
        first_map_of_2 = time.perf_counter() - start
        first_map, mapped = timed_map(fresh("first", 0))
        maps, sequential = [], []
        for rep in range(reps):
            wall, out = timed_map(fresh("item", rep))
            maps.append(wall)
            mapped += out
            sequential.append(timed_sequential(fresh("thing", rep)))
    finally:
        mn.unload(all=True)
    with MlxLmServer(folder, decode_concurrency=8) as server:
        server.stream([{"role": "user", "content": "warm up"}], 2)
        start = time.perf_counter()
        with cf.ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda w: server.stream(
                [{"role": "user", "content": template.format(row=w)}], tokens), fresh("item", 0)))
        server_wall = time.perf_counter() - start
    map_wall, seq_wall = statistics.median(maps), statistics.median(sequential)
    return {"rows": rows, "max_tokens": tokens, "reps": reps,
            "map_s": [round(w, 2) for w in maps],
            "sequential_generate_s": [round(w, 2) for w in sequential],
            "first_map_s": round(first_map, 2), "mlx_lm_server_pool_s": round(server_wall, 2),
            "speedup_vs_sequential": round(seq_wall / map_wall, 2),
            "first_map_speedup_vs_sequential": round(seq_wall / first_map, 2),
            "speedup_vs_mlx_lm_server": round(server_wall / map_wall, 2),
            "failed_rows": sum(r.finish_reason == "error" for r in mapped),
            "warm_up_s": {"first_constrained_generate": round(first_constrained, 2),
                          "first_map_of_2_rows": round(first_map_of_2, 2)},
            "note": "mlx_lm.server answers unconstrained (it has no response_format)"}


def bench_structured(spec: str, folder: Path, *, rows: int = 64, tokens: int = 8,
                     decode_tokens: int = 48, reps: int = 3) -> dict:
    return {"constrained": bench_constrained(spec, decode_tokens, reps),
            "map": bench_map(spec, folder, rows, tokens)}


def markdown_lines(r: dict) -> list[str]:
    c, m = r["constrained"], r["map"]
    d = c["decode_tps"]
    return ["## 5. Structured output and mn.map", "",
            f"Decode tok/s on the demo, greedy, {c['max_tokens']} tokens, median of {c['reps']}: "
            f"unconstrained {d['unconstrained']}, JSON schema {d['json_schema']} "
            f"(**{c['ratio_json_schema_vs_unconstrained']}x**), any JSON {d['json']} "
            f"(**{c['ratio_json_vs_unconstrained']}x**).", "",
            f"{m['rows']} short rows (`choices=['yes','no']`, max {m['max_tokens']} tokens): "
            f"`mn.map` {m['map_s']} s (a first map: {m['first_map_s']} s), {m['rows']} "
            f"sequential `mn.generate` {m['sequential_generate_s']} s "
            f"(**{m['speedup_vs_sequential']}x** on the medians), the same "
            f"requests to `mlx_lm.server` from 8 threads {m['mlx_lm_server_pool_s']} s "
            f"(**{m['speedup_vs_mlx_lm_server']}x**; unconstrained: it has no response_format).",
            ""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--decode-tokens", type=int, default=48)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    from benchmarks.baselines import prepare_weights, reexec_like_runner

    reexec_like_runner()
    folder = prepare_weights("demo")
    print(json.dumps(bench_structured("demo", folder, rows=args.rows, tokens=args.max_tokens,
                                      decode_tokens=args.decode_tokens, reps=args.reps),
                     indent=2))


if __name__ == "__main__":
    main()

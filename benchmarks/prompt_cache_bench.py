"""A question about a long document: cold, from a prompt cache saved before a restart, alone.

    python benchmarks/prompt_cache_bench.py [--model demo] [--items 150] [--rounds 2] [--repeats 3]

Each round starts a runner, asks one question about a ~2k-token document (the document
as the system message) with nothing cached (cold), saves the document's prompt cache
(``mn.cache_prompt``: it reuses the question's in-memory cache, so it writes without a
second prefill), stops the runner; starts a new runner process (a kernel restart, as far
as the runner can tell; its first request is a warm-up), loads the cache
(``mn.load_prompt_cache``) and asks the same question (from the cache), then the
question alone with nothing cached (``--repeats`` pairs, the prompt cache freed after
each question). Reports the
runner's time to first token of each, the median over rounds and the ratios (the goal:
from the cache within 1.3x of the question alone). The cache is removed at the end.
Prints JSON; never part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import mlx_notebook as mn  # noqa: E402
from mlx_notebook.protocol import ChatMessage  # noqa: E402

QUESTION = "How many apples does box 7 hold?"
NAME = f"bench-document-{os.getpid()}"


def document(items: int) -> str:
    colours = ["red", "blue", "green", "yellow", "white", "black", "orange"]
    return "\n".join(f"Box {i}: the {colours[i % 7]} box holds {(i * 37) % 90 + 3} apples."
                     for i in range(1, items + 1))


def _ask(name: str, system: str | None = None) -> mn.GenerationResult:
    return mn.chat(QUESTION, model=name, system=system, max_tokens=4, temperature=0)


def _warm(name: str) -> None:
    """A first request pays for lazy set-up: make it one that is not measured."""
    mn.generate("Hello", model=name, max_tokens=2, temperature=0)
    mn.free_memory(name)


def one_round(model: str, doc: str, repeats: int) -> dict[str, float | int]:
    mn.load(model, name="bench")
    _warm("bench")
    cold = _ask("bench", system=doc)
    mn.reset_chat("bench")
    started = time.perf_counter()  # the save reuses the cold question's cache: no prefill
    saved = mn.cache_prompt([ChatMessage("system", doc)], name=NAME, model="bench")
    save_seconds = time.perf_counter() - started
    mn.unload("bench")
    mn.load(model, name="bench")  # a new runner process
    _warm("bench")
    loads, cached, alone = [], [], []
    for _ in range(repeats):  # paired, alternating: a busy machine drifts less between them
        started = time.perf_counter()
        mn.load_prompt_cache(NAME, "bench")  # the conversation now starts with the document
        loads.append(time.perf_counter() - started)
        cached.append(_ask("bench"))
        mn.reset_chat("bench")
        mn.free_memory("bench")
        alone.append(_ask("bench"))
        mn.reset_chat("bench")
        mn.free_memory("bench")
    mn.unload("bench")

    def ttft(results: list[mn.GenerationResult]) -> float:
        return round(statistics.median(r.time_to_first_token for r in results), 4)

    return {"document_tokens": saved.tokens, "cache_bytes": saved.bytes,
            "prompt_tokens": cached[0].prompt_tokens, "cached_tokens": cached[0].cached_tokens,
            "alone_prompt_tokens": alone[0].prompt_tokens,
            "ttft_cold": round(cold.time_to_first_token, 4),
            "ttft_from_cache": ttft(cached), "ttft_question_alone": ttft(alone),
            "save_seconds": round(save_seconds, 3),
            "load_seconds": round(statistics.median(loads), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo")
    parser.add_argument("--items", type=int, default=150, help="document lines (~14 tokens each)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3,
                        help="from-cache and alone questions per round, alternating")
    args = parser.parse_args()
    doc = document(args.items)
    try:
        rounds = [one_round(args.model, doc, args.repeats) for _ in range(args.rounds)]
    finally:
        if any(c.name == NAME for c in mn.prompt_caches()):
            mn.remove_prompt_cache(NAME)
    median = {key: statistics.median(float(r[key]) for r in rounds) for key in rounds[0]}
    report = {
        "model": args.model, "rounds": rounds, "median": median,
        "ratio_from_cache_to_alone": round(median["ttft_from_cache"]
                                           / median["ttft_question_alone"], 3),
        "ratio_cold_to_from_cache": round(median["ttft_cold"] / median["ttft_from_cache"], 2),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

"""Chat KV reuse with a thinking template: time to first token of turn k.

    python benchmarks/thinking_chat.py [--turns 10] [--model FOLDER]

A template that drops earlier thinking (Qwen3-style, as the tests' tiny thinker has) makes
the prompt of turn k differ from the cached turn k-1 after the last answer: the prompt
cache can reuse only the common prefix. This measures what that costs: TTFT of turns 1,
5 and 10 of one conversation with thinking on, and the same turns when every turn is read
from scratch (the prompt cache freed before each turn). Prints JSON; never gates CI.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import mlx_notebook as mn  # noqa: E402
from tests.tiny_thinker import GREETING, build_tiny_thinker  # noqa: E402

QUESTIONS = [GREETING, "Tell me about Paris.", "And the weather?", "Why is the sky blue?",
             "Name a fruit.", "What is a prime?", "Count to three.", "Say hello again.",
             "What did I ask first?", "Thanks!"]


def conversation(name: str, turns: int, *, fresh: bool) -> dict[int, float]:
    mn.reset_chat(name)
    ttft = {}
    for turn in range(1, turns + 1):
        if fresh:
            mn.free_memory(name)  # nothing cached: every turn read from scratch
        r = mn.chat(QUESTIONS[(turn - 1) % len(QUESTIONS)], model=name, think=True,
                    max_tokens=24, temperature=0)
        if turn in (1, 5, turns):
            ttft[turn] = round(r.time_to_first_token, 4)
    return ttft


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=10)
    parser.add_argument("--model", type=Path, help="a model folder (default: the tiny thinker)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.model or build_tiny_thinker(Path(tmp) / "thinker")
        mn.load(str(folder), name="thinker")
        try:
            conversation("thinker", 2, fresh=False)  # warm-up
            reuse = conversation("thinker", args.turns, fresh=False)
            scratch = conversation("thinker", args.turns, fresh=True)
        finally:
            mn.unload(all=True)
    last = max(reuse)
    print(json.dumps({"turns": args.turns, "ttft_kv_reuse": reuse, "ttft_from_scratch": scratch,
                      "reuse_last_vs_first": round(reuse[last] / reuse[1], 3),
                      "scratch_last_vs_first": round(scratch[last] / scratch[1], 3)}, indent=2))


if __name__ == "__main__":
    main()

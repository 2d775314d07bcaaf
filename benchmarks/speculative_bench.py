"""Speculative decoding's cost and benefit on this machine: decode tok/s with and without a draft.

    python benchmarks/speculative_bench.py [--tokens 96] [--reps 5] [--num-draft 3]
                                           [--no-in-process]

Two drafts bound the mechanism: the demo drafting for itself (every guess right, but
the draft costs as much as the model: the most it can lose for a perfect guess) and
a tiny random llama with the demo's tokenizer (almost every guess wrong, almost free:
the cost of checking guesses that never pay). A real draft sits between. Three
runners (no draft, demo draft, random draft) run side by side in one process run,
one request each in turn, ``--reps`` times; the median decode tok/s of each and its
ratio to the runner without a draft are printed as JSON, with the acceptance rate.
``--no-in-process`` skips mlx-lm's own ``generate_step`` / ``speculative_generate_step``
on the same weights in this process (the same comparison without our runner).
Never part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mlx_notebook.control.client import RunnerClient  # noqa: E402
from mlx_notebook.protocol import ChatMessage, CompletionRequest, SamplingOptions  # noqa: E402

PROMPT = "Explain attention to a 12-year-old."
# Decode tok/s; the draft's guesses kept (of those checked) and its share of the tokens
# (mlx-lm reports only the share: a round of 3 right guesses and the model's token is 3/4).
Sample = tuple[float, float | None, float | None]
Run = Callable[[int], Sample]


def runner_run(client: RunnerClient) -> Run:
    def run(tokens: int) -> Sample:
        request = CompletionRequest(messages=(ChatMessage("user", PROMPT),),
                                    options=SamplingOptions(max_tokens=tokens))
        _, done = client.complete(request)
        share = done.draft_accepted / done.completion_tokens if done.draft_tokens else None
        return (done.completion_tokens - 1) / done.eval_duration, done.draft_acceptance, share

    return run


def in_process_runs(demo: Path, random_draft: Path, num_draft: int) -> dict[str, Run]:
    """mlx-lm in this process, greedy: ``generate_step`` and ``speculative_generate_step``."""
    import mlx.core as mx
    import mlx_lm
    from mlx_lm.generate import generate_step, speculative_generate_step

    model, tokenizer = mlx_lm.load(str(demo))
    draft, _ = mlx_lm.load(str(random_draft))
    prompt = mx.array(tokenizer.apply_chat_template([{"role": "user", "content": PROMPT}],
                                                    add_generation_prompt=True))

    def timed(steps: Callable[[int], Iterator[tuple]], drafted: bool) -> Run:
        def run(tokens: int) -> Sample:
            first = None
            count = accepted = 0
            for item in steps(tokens):
                if first is None:
                    first = time.perf_counter()
                count += 1
                accepted += bool(drafted and item[2])  # speculative_generate_step's from_draft
            assert first is not None
            rate = (count - 1) / (time.perf_counter() - first)
            return rate, None, accepted / count if drafted else None

        return run

    def plain(tokens: int) -> Iterator[tuple]:
        return generate_step(prompt, model, max_tokens=tokens)

    def with_self(tokens: int) -> Iterator[tuple]:
        return speculative_generate_step(prompt, model, model, num_draft_tokens=num_draft,
                                         max_tokens=tokens)

    def with_random(tokens: int) -> Iterator[tuple]:
        return speculative_generate_step(prompt, model, draft, num_draft_tokens=num_draft,
                                         max_tokens=tokens)

    return {"mlx_lm_no_draft": timed(plain, False), "mlx_lm_demo_draft": timed(with_self, True),
            "mlx_lm_random_draft": timed(with_random, True)}


def summary(samples: list[Sample], base: float | None) -> dict:
    rates = [r for r, _, _ in samples]
    accept = [a for _, a, _ in samples if a is not None]
    share = [f for _, _, f in samples if f is not None]
    row: dict = {"tok_s": round(statistics.median(rates), 2),
                 "tok_s_min": round(min(rates), 2), "tok_s_max": round(max(rates), 2)}
    if accept:
        row["acceptance"] = round(statistics.median(accept), 3)
    if share:
        row["from_draft"] = round(statistics.median(share), 3)
    if base:
        row["ratio_vs_no_draft"] = round(statistics.median(rates) / base, 3)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=96)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--num-draft", type=int, default=3)
    parser.add_argument("--no-in-process", action="store_true")
    args = parser.parse_args()
    from benchmarks.baselines import prepare_weights, random_model, reexec_like_runner

    reexec_like_runner()
    from mlx_notebook.paths import cache_dir

    random_draft = random_model("tiny", cache_dir() / "bench" / "random-tiny-float32", None,
                                "float32")
    flags = ["--num-draft", str(args.num_draft)]
    clients = {
        "no_draft": RunnerClient("demo", name="no-draft"),
        "demo_draft": RunnerClient("demo", name="demo-draft", extra_args=["--draft", "demo", *flags]),
        "random_draft": RunnerClient("demo", name="random-draft",
                                     extra_args=["--draft", str(random_draft), *flags]),
    }
    try:
        for client in clients.values():
            client.wait_until_ready(timeout=600)
        runs: dict[str, Run] = {name: runner_run(c) for name, c in clients.items()}
        if not args.no_in_process:
            runs.update(in_process_runs(prepare_weights("demo"), random_draft, args.num_draft))
        for run in runs.values():
            run(8)  # warm-up
        samples: dict[str, list[Sample]] = {name: [] for name in runs}
        for _ in range(args.reps):
            for name, run in runs.items():
                samples[name].append(run(args.tokens))
    finally:
        for client in clients.values():
            client.close()
    report: dict = {"tokens": args.tokens, "reps": args.reps, "num_draft": args.num_draft,
                    "paths": {}}
    for name, values in samples.items():
        base_name = "mlx_lm_no_draft" if name.startswith("mlx_lm") else "no_draft"
        base = None if name == base_name else statistics.median(
            r for r, _, _ in samples[base_name])
        report["paths"][name] = summary(values, base)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

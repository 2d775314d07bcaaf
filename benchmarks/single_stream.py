"""One stream, the runner's two ways: decoded alone (runner/solo.py) vs in the batch.

    python benchmarks/single_stream.py [--model demo] [--tokens 128] [--rounds 3] [--requests 6]

Alternates a runner as shipped and one started with ``--batch-only``, a round of each at
a time, and prints the median decode tok/s of each round as JSON (the first request of
each runner is left out: it warms up). Never part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mlx_notebook.control.client import RunnerClient  # noqa: E402
from mlx_notebook.protocol import ChatMessage, CompletionRequest, SamplingOptions  # noqa: E402


def decode_rates(model: str, extra: list[str], tokens: int, requests: int) -> list[float]:
    rates = []
    with RunnerClient(model, extra_args=extra) as client:
        for i in range(requests):
            request = CompletionRequest(
                messages=(ChatMessage("user", f"({i}) Explain attention to a 12-year-old."),),
                options=SamplingOptions(max_tokens=tokens))
            _, done = client.complete(request)
            rates.append((done.completion_tokens - 1) / done.eval_duration)
    return rates[1:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo")
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=6)
    args = parser.parse_args()
    report: dict[str, list[float]] = {"alone": [], "batch_only": []}
    for _ in range(args.rounds):
        for name, extra in (("alone", []), ("batch_only", ["--batch-only"])):
            rates = decode_rates(args.model, extra, args.tokens, args.requests)
            report[name].append(round(statistics.median(rates), 2))
    report["ratio_of_medians"] = [round(a / b, 3) for a, b in
                                  zip(report["alone"], report["batch_only"], strict=True)]
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

"""Per-token overhead of our path: a tiny model whose step costs about a millisecond.

    python benchmarks/plumbing.py [--tokens 400] [--reps 9] [--kernel-reps 3] [--no-markdown]

With the test suite's tiny random llama a decode step costs tens of microseconds,
so tokens per second is almost pure plumbing: whatever the runner, the protocol and
the client add per token shows here as it would on a fast GPU. Paths, same weights,
same prompt, greedy, the same number of tokens (the tiny model's greedy answer to
the prompt never reaches its end-of-sequence token):

- ``in_process``: ``mlx_lm.stream_generate`` in this process (the baseline);
- ``runner``: our ``RunnerClient.stream`` (runner subprocess, HTTP, NDJSON);
- ``mn_stream``: ``mlx_notebook.stream``, the API a script uses;
- ``mlx_lm_server``: ``python -m mlx_lm.server``, streamed over SSE;
- ``kernel``: ``%%mlx generate`` in a real kernel (nbclient), display coalescing included.

On 2 shared cores the baseline alone swings by a quarter, so the paths are run
interleaved, each round starting one path later (A B C D, B C D A, ...), with a short
pause before each run, and each reports its median and spread; the ratio and the
microseconds per token of overhead are taken on the medians.
Prints JSON; writes the "Plumbing" section of docs/benchmarks.md unless --no-markdown.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.baselines import MlxLmServer  # noqa: E402
from mlx_notebook.control.client import RunnerClient  # noqa: E402
from mlx_notebook.protocol import CompletionRequest, SamplingOptions  # noqa: E402
from tests.tiny_model import make_tiny_model  # noqa: E402

PROMPT = "hello world"
SETTLE_SECONDS = 0.3  # between two timed runs: on 2 cores, work left over would be timed too
Run = Callable[[int], float]  # one generation of n tokens -> decode tokens per second


def in_process(folder: Path) -> Run:
    import mlx_lm

    model, tokenizer = mlx_lm.load(str(folder))
    prompt = tokenizer.encode(PROMPT)

    def run(n: int) -> float:
        first = None
        count = 0
        for response in mlx_lm.stream_generate(model, tokenizer, prompt, max_tokens=n):
            if first is None:
                first = time.perf_counter()
            count = response.generation_tokens
        return (count - 1) / (time.perf_counter() - (first or 0.0))

    return run


def runner_stream(client: RunnerClient) -> Run:
    def run(n: int) -> float:
        request = CompletionRequest(prompt=PROMPT, options=SamplingOptions(max_tokens=n))
        first = None
        with client.stream(request) as stream:
            for _chunk in stream:
                if first is None:
                    first = time.perf_counter()
        end = time.perf_counter()
        assert stream.result is not None
        return (stream.result.completion_tokens - 1) / (end - (first or 0.0))

    return run


def api_stream(name: str) -> Run:
    import mlx_notebook as mn

    def run(n: int) -> float:
        first = None
        gen = mn.stream(PROMPT, model=name, raw=True, max_tokens=n, temperature=0)
        with gen:
            for _piece in gen:
                if first is None:
                    first = time.perf_counter()
        end = time.perf_counter()
        assert gen.result is not None
        return (gen.result.completion_tokens - 1) / (end - (first or 0.0))

    return run


def server_stream(server: MlxLmServer) -> Run:
    import httpx2

    def run(n: int) -> float:
        body = {"prompt": PROMPT, "max_tokens": n, "temperature": 0.0, "stream": True}
        first = None
        pieces = 0
        with httpx2.stream("POST", server.url + "/v1/completions", json=body,
                           timeout=600) as response:
            for line in response.iter_lines():
                if line.startswith("data: {"):
                    pieces += 1
                    if first is None:
                        first = time.perf_counter()
        return (pieces - 1) / (time.perf_counter() - (first or 0.0))

    return run


def kernel_path(folder: Path, n: int, reps: int) -> list[float]:
    """``%%mlx generate`` in a real kernel, ``reps`` times: decode tokens/s by the kernel's clock.

    ``duration`` is the kernel's wall time of the cell's generation (display included),
    less the time to the first token, as the other paths measure it.
    """
    import nbclient
    from nbformat.v4 import new_code_cell, new_notebook

    cells = [new_code_cell(f"%load_ext mlx_notebook\n%mlx load {folder} --as fast")]
    cells += [new_code_cell(f"%%mlx generate -m fast --raw --max-tokens {n} "
                            f"-o r{i}\n{PROMPT}") for i in range(reps + 1)]
    names = ", ".join(f"r{i}" for i in range(1, reps + 1))  # r0 warmed up the kernel
    cells += [new_code_cell("print(*[(r.completion_tokens - 1) / (r.duration - r.time_to_first_token)"
                            f" for r in ({names},)])"),
              new_code_cell("%mlx unload --all")]
    nb = new_notebook(cells=cells)
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3").execute()
    return [float(x) for x in nb.cells[-2].outputs[0]["text"].split()]


def summary(values: list[float], base: float | None) -> dict:
    median = statistics.median(values)
    row = {"tok_s_median": round(median, 1), "tok_s_min": round(min(values), 1),
           "tok_s_max": round(max(values), 1), "reps": len(values)}
    if base:
        row["ratio_vs_in_process"] = round(median / base, 3)
        row["overhead_us_per_token"] = round(1e6 * (1 / median - 1 / base), 1)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=400)
    parser.add_argument("--reps", type=int, default=9)
    parser.add_argument("--kernel-reps", type=int, default=3, help="0: skip the kernel path")
    parser.add_argument("--no-markdown", action="store_true")
    args = parser.parse_args()
    from benchmarks.baselines import reexec_like_runner

    reexec_like_runner()
    import mlx_notebook as mn

    with tempfile.TemporaryDirectory() as tmp:
        folder = make_tiny_model(Path(tmp) / "tiny")
        client = RunnerClient(str(folder), name="plumbing")
        client.wait_until_ready(timeout=300)
        mn.load(str(folder), name="plumbing-api")
        local = in_process(folder)
        paths: dict[str, Run] = {"in_process": local, "runner": runner_stream(client),
                                 "mn_stream": api_stream("plumbing-api")}
        samples: dict[str, list[float]] = {name: [] for name in paths}
        try:
            with MlxLmServer(folder) as server:
                paths["mlx_lm_server"] = server_stream(server)
                samples["mlx_lm_server"] = []
                for run in paths.values():
                    run(16)  # warm-up
                names = list(paths)
                for rep in range(args.reps):
                    # Each round starts one path later (A B C D, B C D A, ...): no path always
                    # follows the same one, whose process may still be tidying up (its
                    # prompt cache insert, freed buffers); a pause lets that end first.
                    for name in names[rep % len(names):] + names[:rep % len(names)]:
                        time.sleep(SETTLE_SECONDS)
                        samples[name].append(paths[name](args.tokens))
        finally:
            client.close()
            mn.unload(all=True)
        kernel_base: list[float] = []
        if args.kernel_reps:
            # The kernel runs in a notebook of its own: its baseline is taken right beside it.
            kernel_base = [local(args.tokens) for _ in range(args.kernel_reps)]
            samples["kernel"] = kernel_path(folder, args.tokens, args.kernel_reps)
            kernel_base += [local(args.tokens) for _ in range(args.kernel_reps)]
    base = statistics.median(samples["in_process"])
    report = {"tokens": args.tokens, "paths": {
        name: summary(values, None if name == "in_process" else base)
        for name, values in samples.items()}}
    if kernel_base:
        report["paths"]["kernel"] = summary(samples["kernel"], statistics.median(kernel_base))
        report["kernel_baseline_tok_s"] = round(statistics.median(kernel_base), 1)
    print(json.dumps(report, indent=2))
    if not args.no_markdown:
        write_section(report, ROOT / "docs" / "benchmarks.md")


def write_section(report: dict, path: Path) -> None:
    """Replace (or append) the "Plumbing" section of docs/benchmarks.md."""
    rows = ["| path | tok/s (median) | min–max | vs in-process | overhead µs/token |",
            "|---|---|---|---|---|"]
    for name, row in report["paths"].items():
        rows.append(f"| {name} | {row['tok_s_median']} | {row['tok_s_min']}–{row['tok_s_max']} | "
                    f"{row.get('ratio_vs_in_process', 1.0)}× | "
                    f"{row.get('overhead_us_per_token', 0.0)} |")
    section = ("## Plumbing: per-token overhead\n\n"
               f"`python benchmarks/plumbing.py` — the tests' tiny random llama, {report['tokens']} "
               "greedy tokens, paths interleaved, median of "
               f"{report['paths']['runner']['reps']} runs each (the kernel path: "
               f"{report['paths'].get('kernel', {}).get('reps', 0)} cells, against in-process runs "
               "taken just before and after its notebook). A step of this model "
               "is about a millisecond on this CPU, a small share of it the model, so the "
               "differences are what each path adds per token.\n\n"
               + "\n".join(rows) + "\n")
    text = path.read_text() if path.exists() else ""
    pattern = re.compile(r"## Plumbing: per-token overhead\n.*?(?=\n## |\Z)", re.S)
    text = pattern.sub(section.rstrip("\n"), text) if pattern.search(text) else (
        text.rstrip("\n") + "\n\n" + section)
    path.write_text(text)


if __name__ == "__main__":
    main()

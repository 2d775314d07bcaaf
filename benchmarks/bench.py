"""Side-by-side benchmarks: our runner path vs in-process mlx-lm vs ``mlx_lm.server``.

    python benchmarks/bench.py [--quick] [--sections decode,concurrency,chat,kernel]

Offline (e.g. on a lent GPU machine, see docs/benchmarks-gpu.md and
benchmarks/gpu_bench.sh): ``--random-demo q4 --large random-1b-bfloat16 --tokenizer DIR``
uses random weights of the demo's shape and of a ~1B llama instead of downloading.

Prints one JSON document and rewrites docs/benchmarks.md from it. Every figure is
measured in this run next to its baseline, with the same weights (the demo model
as our runner holds it on this device, saved once for the baselines), the same
prompts and greedy settings. Never part of the test suite: timings do not gate CI.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.baselines import InProcess, MlxLmServer  # noqa: E402
from benchmarks.report import write_markdown  # noqa: E402
from mlx_notebook.control.client import RunnerClient  # noqa: E402
from mlx_notebook.protocol import ChatMessage, CompletionRequest, SamplingOptions  # noqa: E402

QUESTIONS = [
    "Explain attention to a 12-year-old.", "Why is the sky blue?", "What is a prime number?",
    "Name three uses of a paperclip.", "How do bees make honey?", "What causes the seasons?",
    "Describe a cat in one sentence.", "What is the capital of France?",
]


def ours_stream(client: RunnerClient, messages: list[dict], max_tokens: int) -> dict:
    request = CompletionRequest(messages=tuple(ChatMessage(**m) for m in messages),
                                options=SamplingOptions(max_tokens=max_tokens))
    start = time.perf_counter()
    first = None
    with client.stream(request) as stream:
        for chunk in stream:
            if first is None and chunk.tokens:
                first = time.perf_counter()
    end = time.perf_counter()
    done = stream.result
    tokens = done.completion_tokens
    return {"ttft": (first or end) - start, "tokens": tokens, "text": stream.text,
            "decode_tps": (tokens - 1) / (end - first) if first and tokens > 1 else 0.0,
            "cached_tokens": done.cached_tokens, "wall": end - start}


def unique(i: int, question: str) -> list[dict]:
    """A distinct first message per run, so no prompt cache can serve it."""
    return [{"role": "user", "content": f"(run {i}) {question}"}]


def bench_decode(spec: str, folder: Path, max_tokens: int, reps: int) -> dict:
    """Greedy decode speed and time to first token, three ways, same weights and prompts."""
    result: dict = {}
    with InProcess(folder) as local:
        rows = [local.stream(unique(i, QUESTIONS[0]), max_tokens) for i in range(reps + 1)][1:]
        result["in_process"] = summarize(rows)
    client = RunnerClient(spec, name="bench")
    try:
        client.start()
        client.wait_until_ready(timeout=600)
        ours_stream(client, unique(99, QUESTIONS[1]), 4)  # warm-up, like the others
        rows = [ours_stream(client, unique(i, QUESTIONS[0]), max_tokens) for i in range(reps)]
        result["runner"] = summarize(rows)
    finally:
        client.close()
    with MlxLmServer(folder) as server:
        rows = [server.stream(unique(i, QUESTIONS[0]), max_tokens) for i in range(reps + 1)][1:]
        result["mlx_lm_server"] = summarize(rows)
    base = result["in_process"]
    result["ratio_decode_runner_vs_in_process"] = ratio(result["runner"]["decode_tps"],
                                                        base["decode_tps"])
    result["ttft_overhead_ms"] = round(1000 * (result["runner"]["ttft"] - base["ttft"]), 1)
    result["ratio_decode_runner_vs_server"] = ratio(result["runner"]["decode_tps"],
                                                    result["mlx_lm_server"]["decode_tps"])
    return result


def summarize(rows: list[dict]) -> dict:
    return {"ttft": round(statistics.median(r["ttft"] for r in rows), 4),
            "decode_tps": round(statistics.median(r["decode_tps"] for r in rows), 2),
            "tokens": rows[0]["tokens"], "runs": len(rows)}


def ratio(a: float, b: float) -> float:
    return round(a / b, 3) if b else 0.0


def concurrent(run_one, n: int, max_tokens: int, offset: int) -> dict:
    rows: list[dict] = [{}] * n

    def work(i: int) -> None:
        rows[i] = run_one(unique(offset + i, QUESTIONS[i % len(QUESTIONS)]), max_tokens)

    start = time.perf_counter()
    threads = [threading.Thread(target=work, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    total = sum(r["tokens"] for r in rows)
    return {"aggregate_tps": round(total / wall, 2), "wall": round(wall, 3),
            "ttft_mean": round(statistics.mean(r["ttft"] for r in rows), 3),
            "ttft_max": round(max(r["ttft"] for r in rows), 3), "tokens": total}


def bench_concurrency(spec: str, folder: Path, levels: list[int], max_tokens: int) -> dict:
    result: dict = {"levels": levels, "ours": {}, "sequential": {}, "mlx_lm_server": {}}
    client = RunnerClient(spec, name="bench", extra_args=["--max-batch", str(max(levels))])
    try:
        client.start()
        client.wait_until_ready(timeout=600)
        ours_stream(client, unique(999, QUESTIONS[1]), 4)
        for n in levels:
            result["ours"][n] = concurrent(lambda m, k: ours_stream(client, m, k), n, max_tokens,
                                           1000 * n)
            start = time.perf_counter()
            rows = [ours_stream(client, unique(2000 * n + i, QUESTIONS[i % 8]), max_tokens)
                    for i in range(n)]
            wall = time.perf_counter() - start
            result["sequential"][n] = {"aggregate_tps": round(sum(r["tokens"] for r in rows) / wall, 2),
                                       "wall": round(wall, 3)}
    finally:
        client.close()
    with MlxLmServer(folder, decode_concurrency=max(levels)) as server:
        server.stream(unique(3999, QUESTIONS[1]), 4)
        for n in levels:
            result["mlx_lm_server"][n] = concurrent(server.stream, n, max_tokens, 3000 * n)
    single = result["ours"][levels[0]]["aggregate_tps"]
    for n in levels:
        result["ours"][n]["vs_single"] = ratio(result["ours"][n]["aggregate_tps"], single)
        result["ours"][n]["vs_server"] = ratio(result["ours"][n]["aggregate_tps"],
                                               result["mlx_lm_server"][n]["aggregate_tps"])
    return result


def bench_chat(spec: str, folder: Path, turns: int, max_tokens: int) -> dict:
    """TTFT of turn k of a growing conversation: KV reuse vs recompute vs mlx_lm.server."""
    marks = [t for t in (1, 5, 10) if t <= turns]
    result: dict = {"turns": marks}

    def conversation(run_one) -> dict:
        messages: list[dict] = []
        ttft = {}
        for turn in range(1, turns + 1):
            messages.append({"role": "user", "content": QUESTIONS[turn % len(QUESTIONS)]})
            row = run_one(messages, max_tokens)
            messages.append({"role": "assistant", "content": row["text"]})
            if turn in marks:
                ttft[turn] = round(row["ttft"], 4)
        return ttft

    client = RunnerClient(spec, name="bench")
    try:
        client.start()
        client.wait_until_ready(timeout=600)
        ours_stream(client, unique(5000, QUESTIONS[1]), 4)
        result["ours"] = conversation(lambda m, k: ours_stream(client, m, k))
    finally:
        client.close()
    with InProcess(folder) as local:
        local.stream(unique(5001, QUESTIONS[1]), 4)
        result["recompute_in_process"] = conversation(local.stream)
    with MlxLmServer(folder) as server:
        server.stream(unique(5002, QUESTIONS[1]), 4)
        result["mlx_lm_server"] = conversation(server.stream)
    last = marks[-1]
    result["ours_last_vs_first"] = ratio(result["ours"][last], result["ours"][1])
    return result


KERNEL_PROBE = r"""
import json, os, sys, time, psutil
rss0 = psutil.Process().memory_info().rss
from IPython.core.interactiveshell import InteractiveShell
shell = InteractiveShell.instance()
rss1 = psutil.Process().memory_info().rss
t = time.perf_counter()
shell.run_line_magic("load_ext", "mlx_notebook")
load_ext = time.perf_counter() - t
rss2 = psutil.Process().memory_info().rss
import mlx_notebook
t = time.perf_counter()
mlx_notebook.load("demo")
ready = time.perf_counter() - t
t = time.perf_counter()
result = mlx_notebook.generate("Hi", max_tokens=1)
first = time.perf_counter() - t
print(json.dumps({"load_ext_s": round(load_ext, 4), "load_ext_rss_mb": round((rss2 - rss1) / 2**20, 1),
                  "mlx_imported": "mlx" in sys.modules, "load_demo_ready_s": round(ready, 3),
                  "first_token_s": round(first, 3)}))
mlx_notebook.unload("demo")
"""

IN_PROCESS_PROBE = r"""
import json, sys, time
t = time.perf_counter()
import mlx_lm
model, tok = mlx_lm.load(sys.argv[1])
loaded = time.perf_counter() - t
prompt = tok.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True)
for r in mlx_lm.stream_generate(model, tok, prompt, max_tokens=1):
    pass
print(json.dumps({"load_s": round(loaded, 3), "load_and_first_token_s": round(time.perf_counter() - t, 3)}))
"""


def bench_display_rate(tokens: int = 400) -> dict:
    """Display messages per second while a fast model streams into a real kernel (nbclient)."""
    import tempfile

    import nbclient
    from nbformat.v4 import new_code_cell, new_notebook

    from tests.tiny_model import make_tiny_model

    class Recording(nbclient.NotebookClient):
        def process_message(self, msg, cell, cell_index):  # noqa: ANN001 - nbclient's hook
            if msg["msg_type"] == "update_display_data":
                self.stamps.append((cell_index, time.perf_counter()))
            return super().process_message(msg, cell, cell_index)

    with tempfile.TemporaryDirectory() as tmp:
        model = make_tiny_model(Path(tmp) / "tiny")
        nb = new_notebook(cells=[
            new_code_cell(f"%load_ext mlx_notebook\n%mlx load {model} --as fast"),
            new_code_cell(f"%%mlx generate -m fast --max-tokens {tokens} -o r\nhello"),
            new_code_cell("print(r.completion_tokens, r.tokens_per_second, r.duration)"),
            new_code_cell("%mlx unload --all")])
        client = Recording(nb, timeout=300, kernel_name="python3")
        client.stamps = []
        client.execute()
    stamps = [t for i, t in client.stamps if i == 1]
    produced, tps, duration = nb.cells[2].outputs[0]["text"].split()
    span = max(stamps[-1] - stamps[0], 1e-9)  # from the first update to the last
    return {"display_messages": len(stamps), "stream_seconds": round(span, 3),
            "display_messages_per_s": round((len(stamps) - 1) / span, 1),
            "tokens": int(produced), "token_rate": round(float(tps), 1),
            "generation_seconds": round(float(duration), 3)}


def bench_kernel(folder: Path, reps: int = 5) -> dict:
    def probe(code: str, *args: str) -> dict:
        out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                             check=True, cwd=ROOT)
        return json.loads(out.stdout.strip().splitlines()[-1])

    # Fresh interpreters on both sides, interleaved (ours, in-process, ours...): the
    # machine's drift hits both; the ratio of the medians is the figure.
    runs: dict[str, list[dict]] = {"ours": [], "in_process": []}
    for _ in range(reps):
        runs["ours"].append(probe(KERNEL_PROBE))
        runs["in_process"].append(probe(IN_PROCESS_PROBE, str(folder)))
    ours_total = statistics.median(r["load_demo_ready_s"] + r["first_token_s"]
                                   for r in runs["ours"])
    base_total = statistics.median(r["load_and_first_token_s"] for r in runs["in_process"])
    ours = runs["ours"][-1]
    return {"ours": ours, "in_process": runs["in_process"][-1], "reps": reps,
            "ours_load_and_first_token_s": [round(r["load_demo_ready_s"] + r["first_token_s"], 3)
                                            for r in runs["ours"]],
            "in_process_load_and_first_token_s": [r["load_and_first_token_s"]
                                                  for r in runs["in_process"]],
            "display": bench_display_rate(),
            "cold_load_ratio": ratio(ours_total, base_total)}


def machine() -> dict:
    import mlx.core as mx
    import mlx_lm

    from mlx_notebook.runner.fastblas import openblas_preloaded

    info = {"date": datetime.date.today().isoformat(), "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
            "python": platform.python_version(), "mlx": mx.__version__,
            "mlx_lm": mlx_lm.__version__, "device": str(mx.default_device()),
            "openblas_preloaded": openblas_preloaded()}
    if mx.default_device() == mx.gpu:
        with contextlib.suppress(Exception):
            name = mx.device_info().get("device_name")
            info["gpu"] = name.decode() if isinstance(name, bytes) else name
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer tokens and runs")
    parser.add_argument("--sections", default="decode,concurrency,chat,kernel,structured")
    parser.add_argument("--no-markdown", action="store_true")
    parser.add_argument("--random-demo", metavar="FORMAT",
                        help="random weights of the demo's shape (q4, bfloat16, float16, "
                             "float32) instead of the demo: no download")
    parser.add_argument("--large", default="random-large",
                        help="the second decode model: random-large, random-1b[-FORMAT], "
                             "random-demo[-FORMAT] (not with --quick)")
    parser.add_argument("--tokenizer", type=Path,
                        help="folder with the demo's tokenizer.json and tokenizer_config.json "
                             "for the random models (default: fetch the demo)")
    parser.add_argument("--max-tokens", type=int)
    parser.add_argument("--reps", type=int)
    parser.add_argument("--levels", help="concurrency levels, e.g. 1,4,8")
    parser.add_argument("--chat-turns", type=int)
    parser.add_argument("--json", type=Path, help="also write the report here, after each section")
    parser.add_argument("--keep-going", action="store_true",
                        help="record a failing section's error and go on to the next")
    args = parser.parse_args()
    from benchmarks.baselines import prepare_weights, reexec_like_runner

    reexec_like_runner()  # same BLAS and weights format as the runner: a fair baseline
    sections = args.sections.split(",")
    tokens, reps = (24, 2) if args.quick else (64, 3)
    tokens, reps = args.max_tokens or tokens, args.reps or reps
    levels = [1, 2, 4] if args.quick else [1, 2, 4, 8]
    levels = [int(n) for n in args.levels.split(",")] if args.levels else levels
    turns = args.chat_turns or (5 if args.quick else 10)
    demo_spec = f"random-demo-{args.random_demo}" if args.random_demo else "demo"
    demo = prepare_weights(demo_spec, args.tokenizer)
    spec = str(demo) if args.random_demo else "demo"  # the runner loads the same folder
    report: dict = {"machine": machine(), "settings": {"max_tokens": tokens, "reps": reps,
                                                       "greedy": True}}
    if args.random_demo:
        report["settings"].update(demo=demo_spec, large=args.large)

    def section(name: str, run) -> None:  # noqa: ANN001 - a thunk
        try:
            run()
        except Exception as exc:  # noqa: BLE001 - recorded, the run goes on
            if not args.keep_going:
                raise
            report.setdefault("errors", {})[name] = f"{type(exc).__name__}: {exc}"[-3000:]
            print(f"[bench] {name} failed: {exc}", file=sys.stderr, flush=True)
        if args.json:
            args.json.write_text(json.dumps(report, indent=2))
        print(f"[bench] {name} done", file=sys.stderr, flush=True)

    def decode() -> None:
        report["decode"] = {"demo": bench_decode(spec, demo, tokens, reps)}

    def decode_large() -> None:
        large = prepare_weights(args.large, args.tokenizer)
        key = args.large.replace("-", "_")
        report["decode"][key] = bench_decode(str(large), large, tokens // 2, 2)

    if "decode" in sections:
        section("decode", decode)
        if not args.quick and "decode" in report:
            section("decode_large", decode_large)
    if "concurrency" in sections:
        section("concurrency",
                lambda: report.update(concurrency=bench_concurrency(spec, demo, levels,
                                                                    tokens // 2)))
    if "chat" in sections:
        section("chat", lambda: report.update(chat=bench_chat(spec, demo, turns, 16)))
    if "kernel" in sections:
        section("kernel", lambda: report.update(kernel=bench_kernel(demo)))
    if "structured" in sections:  # issue 17: constrained decode, mn.map vs sequential vs server
        from benchmarks.structured_bench import bench_structured

        section("structured", lambda: report.update(structured=bench_structured(
            spec, demo, rows=16 if args.quick else 64, reps=2 if args.quick else 3)))
    print(json.dumps(report, indent=2))
    if not args.no_markdown:
        write_markdown(report, ROOT / "docs" / "benchmarks.md")


if __name__ == "__main__":
    main()

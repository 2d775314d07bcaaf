"""``mn.train`` vs the ``mlx_lm lora`` command: same data, model, weights, settings, one run.

    python benchmarks/train_bench.py [--iters 12] [--layers 4]

Both train the demo (float32 weights, as the runner holds them on a Linux CPU with
OpenBLAS; both processes preload the same OpenBLAS) on the same train/valid files,
batch 4, rank 8, seed 0, one validation batch at the first and last step. Compared:
training tokens/s and iterations/s as each trainer reports them per step (mlx-lm's own
timing, which leaves out validation), and the kernel's RSS during ``mn.train`` (the
kernel never holds the model). Prints JSON; never gates CI.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.test_training import _rows  # noqa: E402 - the demo test's 16 examples

LR = 5e-4


def weights_folder() -> Path:
    """The demo's float32 variant (what the runner trains on here), made once if needed."""
    from benchmarks.baselines import prepare_weights

    return prepare_weights("demo")


def ours(data: Path, iters: int, layers: int) -> dict:
    import mlx_notebook as mn

    me = psutil.Process()
    samples: list[int] = []
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.2):
            samples.append(me.memory_info().rss)

    before = me.memory_info().rss
    threading.Thread(target=sample, daemon=True).start()
    t0 = time.perf_counter()
    r = mn.train("demo", data=data, iters=iters, name="bench", learning_rate=LR,
                 lora_layers=layers, val_batches=1, steps_per_eval=10_000, load=False)
    wall = time.perf_counter() - t0
    done.set()
    return {"iterations_per_second": r.iterations_per_second,
            "tokens_per_second": r.tokens_per_second, "wall_seconds": wall,
            "final_loss": r.final_loss, "kernel_rss_before": before,
            "kernel_rss_max_during": max(samples or [before])}


def baseline(data: Path, iters: int, layers: int, folder: Path, out: Path) -> dict:
    from mlx_notebook.runner.fastblas import find_openblas

    env = dict(os.environ)
    if (lib := find_openblas()) is not None:
        env["LD_PRELOAD"] = lib
    cmd = [sys.executable, "-m", "mlx_lm", "lora", "--model", str(folder), "--train",
           "--data", str(data), "--iters", str(iters), "--batch-size", "4",
           "--num-layers", str(layers), "--learning-rate", str(LR), "--val-batches", "1",
           "--steps-per-eval", "10000", "--steps-per-report", "1", "--seed", "0",
           "--adapter-path", str(out)]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
    wall = time.perf_counter() - t0
    # TrainUI's report lines: "  iter    loss ▼    tok/s    k-tokens"
    text = re.sub(r"\x1b\[[0-9;]*m", "", done.stdout)  # rich's colours
    tps = [float(m.group(2).replace(",", "")) for m in
           re.finditer(r"^\s+(\d+)\s+[\d.]+ [▼▲]\s+([\d,]+)\s+", text, re.M)]
    return {"tokens_per_second": statistics.fmean(tps) if tps else 0.0,
            "reports": len(tps), "wall_seconds": wall}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--iters", type=int, default=12)
    ap.add_argument("--layers", type=int, default=4)
    a = ap.parse_args()
    from benchmarks.baselines import reexec_like_runner
    from mlx_notebook.training_data import prepare_data

    reexec_like_runner()  # so prepare_weights sizes the weights as the runner holds them

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        prepared = prepare_data(_rows(16), data, batch_size=4)
        folder = weights_folder()
        base = baseline(data, a.iters, a.layers, folder, Path(tmp) / "lora")
        mine = ours(data, a.iters, a.layers)
    # Same batches (same seed and order): tokens per step are equal, so tokens/s ratios
    # are iterations/s ratios too.
    ratio = mine["tokens_per_second"] / base["tokens_per_second"] if base["tokens_per_second"] \
        else 0.0
    print(json.dumps({"data": prepared.note, "iters": a.iters, "lora_layers": a.layers,
                      "weights": str(folder), "mn_train": mine, "mlx_lm_lora": base,
                      "tokens_per_second_ratio": round(ratio, 3)}, indent=2))


if __name__ == "__main__":
    main()

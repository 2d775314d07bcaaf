#!/usr/bin/env bash
# benchmarks/bench.py on a Linux NVIDIA machine with mlx[cuda] and no network.
#
#   benchmarks/gpu_bench.sh kit          # here: build .devkit/ (wheels, mlx-cuda, tokenizer, code)
#   benchmarks/gpu_bench.sh run [full]   # there, from the repository root: install into
#                                        # $SITE, check the GPU, run the benchmarks into $OUT
#
# `kit` needs the wheels mlx, mlx-cuda-13 (cp312, x86_64) in $WHEELS (default
# /tmp/whlchk), pip and network for the pure-Python ones, and the demo's tokenizer
# in the model cache (`./scripts/quickstart` fetches it). mlx-cuda-13 is ~90 MB
# packed, more than a 64 MiB transfer allows, so `kit` writes it twice:
#   p1/pruned.tar.xz  its files, libmlx.so stripped and with every CUDA binary but the
#                     sm_90 (Hopper) one zeroed (~20 MB): for an H100/H200 only;
#   p1/full.aa + p2/full.ab  the whole (stripped) package in two parts, for two calls.
# `run` uses the pruned one unless `full` is given (then /tmp/full.aa, left by an
# earlier call, or .devkit/p1/full.aa, plus .devkit/p2/full.ab). See docs/benchmarks-gpu.md.
set -euo pipefail
KIT=${KIT:-.devkit}
SITE=${SITE:-/tmp/site}
OUT=${OUT:-/tmp/gpu-bench-out}
WHEELS=${WHEELS:-/tmp/whlchk}
BENCH_ARGS=${BENCH_ARGS:---sections decode,concurrency,chat --max-tokens 64 --reps 3 --levels 1,4,8 --chat-turns 10}

kit() {
    local root; root=$(git rev-parse --show-toplevel)
    cd "$root"
    grep -qx '/.devkit/' .git/info/exclude || echo '/.devkit/' >>.git/info/exclude
    rm -rf "$KIT/kit" && mkdir -p "$KIT/kit/whl" "$KIT/kit/tok" "$KIT/kit/src" "$KIT/p1" "$KIT/p2"
    cp "$WHEELS"/mlx-0.32.4-cp312-*.whl "$KIT/kit/whl/"
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 -d "$KIT/kit/whl" \
        mlx-lm==0.32.2 httpx2==2.16.2 httpcore2==2.16.2 truststore==0.10.5 platformdirs==4.14.8
    local demo; demo=$(ls -d "${MLX_NOTEBOOK_CACHE:-$HOME/.cache/mlx_notebook}"/models/SmolLM2-135M-Instruct.Q4_1-* | head -1)
    cp "$demo/tokenizer.json" "$demo/tokenizer_config.json" "$KIT/kit/tok/"
    # the committed package (HEAD), with this checkout's benchmarks/ on top
    git archive HEAD mlx_notebook benchmarks | tar -x -C "$KIT/kit/src"
    cp benchmarks/*.py benchmarks/*.sh "$KIT/kit/src/benchmarks/"
    [ -s "$KIT/p1/pruned.tar.xz" ] && [ -s "$KIT/p2/full.ab" ] && return
    local tmp; tmp=$(mktemp -d)
    mkdir "$tmp/x" && (cd "$tmp/x" && python3 -m zipfile -e "$WHEELS"/mlx_cuda_13-0.32.4-*.whl .)
    strip --strip-unneeded "$tmp/x/mlx/lib/libmlx.so"
    tar -C "$tmp/x" -cf - . | xz -9 -T0 >"$tmp/full.tar.xz"
    head -c 34000000 "$tmp/full.tar.xz" >"$KIT/p1/full.aa"
    tail -c +34000001 "$tmp/full.tar.xz" >"$KIT/p2/full.ab"
    python3 - "$tmp/x/mlx/lib/libmlx.so" <<'EOF'
import struct, sys
# Zero every fatbin entry but the sm_90 ELF (keeps all offsets; the driver only reads
# the entry it picks for the device, and sm_90 SASS is the only one an sm_90 GPU can run).
path = sys.argv[1]
data = bytearray(open(path, "rb").read())
magic, i, kept, zeroed = struct.pack("<I", 0xBA55ED50), 0, 0, 0
while (i := data.find(magic, i)) >= 0:
    _, header, size = struct.unpack_from("<HHQ", data, i + 4)
    off, end, entries = i + header, i + header + size, []
    while off < end:
        kind, _, ehead, payload = struct.unpack_from("<HHIQ", data, off)
        entries.append((kind, struct.unpack_from("<I", data, off + 28)[0], off + ehead, payload))
        off += ehead + payload
    assert off == end and any(k == 2 and sm == 90 for k, sm, _, _ in entries), hex(i)
    for kind, sm, start, payload in entries:
        if (kind, sm) != (2, 90):
            data[start:start + payload] = bytes(payload)
            zeroed += payload
        else:
            kept += payload
    i = end
open(path, "wb").write(data)
print(f"fatbin: kept {kept} bytes of sm_90, zeroed {zeroed}")
EOF
    tar -C "$tmp/x" -cf - . | xz -9 -T0 >"$KIT/p1/pruned.tar.xz"
    rm -rf "$tmp"
    du -sh "$KIT"/*
}

run() {
    local which=${1:-pruned}
    mkdir -p "$OUT" "$SITE"
    KIT=$(cd "$KIT" && pwd)  # absolute: the runners start elsewhere
    [ -s "$KIT/p1/full.aa" ] && cp "$KIT/p1/full.aa" /tmp/full.aa  # for a later `run full`
    local nvidia
    nvidia=$(python3 -c 'import nvidia; print(list(nvidia.__path__)[0])')
    if [ ! -e "$SITE/mlx/lib/libmlx.so" ] || [ "$which" = full ]; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target "$SITE" "$KIT"/kit/whl/*.whl
        if [ "$which" = full ]; then
            cat /tmp/full.aa "$KIT/p2/full.ab" | xz -dc | tar -x -C "$SITE"
        else
            xz -dc "$KIT/p1/pruned.tar.xz" | tar -x -C "$SITE"
        fi
        ln -sfn "$nvidia" "$SITE/nvidia"  # libmlx.so's RPATH: $ORIGIN/../../nvidia/*/lib
    fi
    export PYTHONPATH="$KIT/kit/src:$SITE" PYTHONUNBUFFERED=1 MLX_NOTEBOOK_CACHE=/tmp/mnc
    LD_LIBRARY_PATH=$(printf '%s:' "$nvidia"/*/lib)${LD_LIBRARY_PATH:-}
    export LD_LIBRARY_PATH
    for d in /usr/local/cuda /usr/local/cuda-13*; do  # headers for MLX's NVRTC kernels
        if [ -e "$d/include/cuda_runtime.h" ]; then export CUDA_HOME=$d CUDA_PATH=$d; break; fi
    done
    { nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
      python3 --version; echo "CUDA_HOME=${CUDA_HOME:-}"; } | tee "$OUT/env.txt"
    # fails fast (exit 3) when mlx cannot use the GPU; picks 4-bit for the demo shape
    # when quantized matmuls run here, else bfloat16
    local fmt
    fmt=$(timeout 180 python3 - <<'EOF'
import sys, time
import mlx.core as mx
t = time.perf_counter()
assert mx.default_device() == mx.gpu, mx.default_device()
a = mx.random.normal((512, 512)).astype(mx.bfloat16)
print(mx.device_info(), float((a @ a).astype(mx.float32).sum()), file=sys.stderr)
try:
    w, s, b = mx.quantize(mx.random.normal((576, 576)), group_size=32, bits=4)
    x = mx.random.normal((1, 576))
    y = mx.quantized_matmul(x, w, s, b, transpose=True, group_size=32, bits=4)
    ref = x @ mx.dequantize(w, s, b, group_size=32, bits=4).T
    assert mx.allclose(y, ref, atol=1e-2, rtol=1e-2).item()
    print("q4")
except Exception as e:
    print("quantized matmul failed:", e, file=sys.stderr)
    print("bfloat16")
print(f"smoke test {time.perf_counter() - t:.1f} s", file=sys.stderr)
EOF
) || { echo "SMOKE TEST FAILED"; exit 3; }
    echo "demo format: $fmt"
    # shellcheck disable=SC2086
    timeout "${BENCH_TIMEOUT:-360}" python3 "$KIT/kit/src/benchmarks/bench.py" --no-markdown \
        --keep-going --random-demo "$fmt" --large random-1b-bfloat16 --tokenizer "$KIT/kit/tok" \
        --json "$OUT/gpu-bench.json" $BENCH_ARGS >"$OUT/stdout.json" || echo "bench exit $?"
}

"$@"

"""``python -m mlx_notebook.runner --model SPEC``: serve one MLX model on loopback.

With ``--hostfile FILE --rank R`` the process is one rank of a runner group that
shards the model with MLX's distributed engine (docs/distributed.md): rank 0
serves the protocol, the other ranks serve nothing and follow rank 0; they
announce ``port`` 0 in their handshake.

The runner binds first and announces its port on stdout (one JSON line), then
loads the model in the background while ``/v1/status`` reports progress. The
token comes from ``MLX_NOTEBOOK_TOKEN`` (never argv). It exits non-zero on a
load error (one line on stderr), and by itself when its parent dies.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..errors import InvalidArgumentError
from ..kv_format import KvFormat
from ..protocol import PROTOCOL_VERSION, TOKEN_ENV, Handshake
from .fastblas import REEXEC_ENV

if TYPE_CHECKING:  # both import MLX: only once the arguments are known
    from .distributed import Distributed
    from .engine import Engine

Stop = Callable[[str, int], None]  # (reason, exit code)

EXIT_LOAD_ERROR = 2
EXIT_RANK_LOST = 3  # a runner group lost a rank (or its worker failed) after loading
EXIT_USAGE = 64
# TEST ONLY: hold this many extra descriptors open, so that a test can push the server's
# sockets past fd 1023 (where select() fails) without opening a thousand connections.
TEST_ONLY_HOLD_FDS_ENV = "MLX_NOTEBOOK_TEST_ONLY_HOLD_FDS"
_KV_FLAGS = {"kv_bits": "--kv-bits", "kv_group_size": "--kv-group-size", "kv_start": "--kv-start",
             "max_kv": "--max-kv"}
_ERROR_LINGER_SECONDS = 0.5  # lets a polling client read the "error" status before we exit


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m mlx_notebook.runner",
        description="Serve one MLX model over mlx_notebook's authenticated loopback protocol.")
    parser.add_argument("--model", required=True,
                        help="demo, a Hugging Face repo id, a local model folder or a .gguf file")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback)")
    parser.add_argument("--port", type=int, default=0, help="port (default 0: any free port)")
    parser.add_argument("--allow-remote", action="store_true",
                        help="allow binding beyond loopback (a token is then mandatory)")
    parser.add_argument("--no-auth", action="store_true",
                        help=f"serve without a token (only when {TOKEN_ENV} is unset; loopback only)")
    parser.add_argument("--context", type=int, default=None, help="cap the context length")
    parser.add_argument("--adapter", default=None, metavar="DIR",
                        help="apply a fine-tuned adapter folder (adapter_config.json + "
                             "adapters.safetensors, as mlx_lm.lora writes)")
    parser.add_argument("--dtype", default="auto",
                        help="weights: auto (float32 on a CPU with OpenBLAS, else the model's "
                             "own), native, float32, bfloat16, float16")
    parser.add_argument("--no-openblas", action="store_true",
                        help="do not preload a system OpenBLAS for the CPU backend")
    parser.add_argument("--max-batch", type=int, default=8,
                        help="concurrent generations decoded together (default 8)")
    parser.add_argument("--prefill-step", type=int, default=512, metavar="N",
                        help="prompt tokens per forward pass while reading a prompt (default "
                             "512): smaller steps report progress and notice cancels sooner")
    parser.add_argument("--batch-only", action="store_true",
                        help="decode a request that runs alone in the batch too (slower on a "
                             "GPU; for comparisons)")
    parser.add_argument("--draft", default=None, metavar="SPEC",
                        help="a small draft model of the same tokenizer: a request that runs "
                             "alone is decoded speculatively (same greedy text, maybe faster)")
    parser.add_argument("--num-draft", type=int, default=3, metavar="N",
                        help="most tokens the draft model guesses per round (default 3); after a miss it "
                             "guesses one more than it got right")
    kv = parser.add_argument_group("KV cache (mlx_notebook/kv_format.py)")
    kv.add_argument("--kv-bits", type=int, default=None, metavar="BITS",
                    help="quantize the KV cache to 4 or 8 bits (default: full precision)")
    kv.add_argument("--kv-group-size", type=int, default=None, metavar="N",
                    help="elements per quantization group: 32, 64 (default) or 128")
    kv.add_argument("--kv-start", type=int, default=None, metavar="N",
                    help="quantize once a request's cache holds N tokens (default 256)")
    kv.add_argument("--max-kv", type=int, default=None, metavar="N",
                    help="a rotating KV cache of N tokens (default: unbounded)")
    parser.add_argument("--prompt-cache-bytes", type=int, default=None,
                        help="byte budget of the reusable KV cache (default: 10%% of memory, <=1 GiB)")
    parser.add_argument("--parent-pid", type=int, default=None,
                        help="exit when this process dies (also exits on stdin EOF)")
    parser.add_argument("--no-stdin-watch", action="store_true",
                        help="do not exit on stdin EOF (for runners started by hand)")
    parser.add_argument("--token-stdin", action="store_true",
                        help=f"read the token from the first line of stdin instead of {TOKEN_ENV} "
                             "(for ranks started over ssh, which passes no environment)")
    parser.add_argument("--prefetch", action="store_true",
                        help="download/convert the model into the cache, then exit")
    limits = parser.add_argument_group("hostile clients (docs/reliability.md)")
    limits.add_argument("--max-connections", type=int, default=256, metavar="N",
                        help="open connections served at once; past it a 503 (default 256)")
    limits.add_argument("--request-timeout", type=float, default=10.0, metavar="S",
                        help="seconds for a request's headers and body to arrive (default 10)")
    limits.add_argument("--idle-timeout", type=float, default=30.0, metavar="S",
                        help="seconds a connection may wait between requests, or a client "
                             "stop reading a stream (default 30)")
    limits.add_argument("--keepalive-interval", type=float, default=2.0, metavar="S",
                        help="a stream silent this long gets a keep-alive line, if the worker "
                             "is making progress (default 2)")
    limits.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                        help="also answer requests whose Host is NAME (repeatable; '*': any). "
                             "Always answered: 127.0.0.1, localhost, [::1], the bound address")
    limits.add_argument("--allow-origin", action="append", default=[], metavar="ORIGIN",
                        help="accept requests from web pages of ORIGIN (repeatable; '*': any; "
                             "default: none)")
    group = parser.add_argument_group("runner groups (one model over several processes)")
    group.add_argument("--hostfile", default=os.environ.get("MLX_HOSTFILE") or None,
                       help="MLX ring hostfile: a JSON list with one [\"ip:port\", ...] per rank "
                            "(default: $MLX_HOSTFILE, as mlx.launch sets it)")
    group.add_argument("--rank", type=int, default=_env_int("MLX_RANK"),
                       help="this process's rank in the hostfile (default: $MLX_RANK)")
    group.add_argument("--shard", choices=("tensor", "pipeline"), default="tensor",
                       help="tensor parallel (mlx-lm's shard()) or pipeline (mlx-lm's pipeline())")
    group.add_argument("--backend", default="ring", help="MLX distributed backend (default ring)")
    return parser


def _env_int(name: str) -> int | None:
    try:
        return int(os.environ[name])
    except (KeyError, ValueError):
        return None


def _distributed(args: argparse.Namespace) -> Distributed | str | None:
    """The rank's Distributed, None for a single runner, or a usage problem as a string."""
    if args.hostfile is None:
        return None
    if args.rank is None or args.rank < 0:
        return "--hostfile needs --rank (or MLX_RANK in the environment)"
    if not os.path.isfile(args.hostfile):
        return f"hostfile {args.hostfile} does not exist"
    from .distributed import Distributed

    return Distributed(args.hostfile, args.rank, shard=args.shard, backend=args.backend)


def _draft_problem(args: argparse.Namespace) -> str | None:
    if args.num_draft < 1:
        return f"--num-draft must be 1 or more, got {args.num_draft}"
    if args.draft is not None and args.hostfile is not None:
        return "--draft does not work in a runner group (--hostfile): load the model alone"
    if args.draft is not None and (args.kv_bits is not None or args.max_kv is not None):
        return ("--draft goes with full-precision, unbounded KV caches only (its rounds rewind "
                "the caches): drop --kv-bits/--max-kv, or --draft")
    return None


def main(argv: list[str] | None = None) -> int:
    raw_argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(raw_argv)
    if args.token_stdin and not os.environ.get(REEXEC_ENV):
        # Into the environment, so that the OpenBLAS re-exec below keeps it (not in argv).
        os.environ[TOKEN_ENV] = sys.stdin.readline().strip()
    # MLX's CUDA backend compiles kernels at run time and keeps them in /tmp by default;
    # in our cache they outlive a reboot (seconds saved per new shape). Unused elsewhere.
    from ..paths import cache_dir

    os.environ.setdefault("MLX_PTX_CACHE_DIR", str(cache_dir() / "ptx"))
    if not args.prefetch and not args.no_openblas:
        from .fastblas import reexec_with_openblas

        reexec_with_openblas(raw_argv)
    if args.prefetch:
        return _prefetch(args.model)
    token = os.environ.get(TOKEN_ENV) or None
    problem = _check_bind_policy(args.host, token, args)
    if problem:
        print(f"mlx_notebook runner: {problem}", file=sys.stderr, flush=True)
        return EXIT_USAGE

    dist = _draft_problem(args) or _distributed(args)
    if isinstance(dist, str):
        print(f"mlx_notebook runner: {dist}", file=sys.stderr, flush=True)
        return EXIT_USAGE
    try:
        kv = KvFormat.build(kv_bits=args.kv_bits, kv_group_size=args.kv_group_size,
                            kv_start=args.kv_start, max_kv=args.max_kv,
                            sharded=dist is not None, names=_KV_FLAGS)
    except InvalidArgumentError as exc:
        print(f"mlx_notebook runner: {exc}", file=sys.stderr, flush=True)
        return EXIT_USAGE

    from .engine import Engine
    from .server import RunnerServer, ServerLimits
    from .watch import watch_parent

    held = _hold_fds_for_tests()

    engine = Engine(args.model, dtype=args.dtype, context_length=args.context,
                    max_batch=args.max_batch, prompt_cache_bytes=args.prompt_cache_bytes,
                    distributed=dist, batch_only=args.batch_only,
                    prefill_step=max(1, args.prefill_step), adapter=args.adapter,
                    draft=args.draft, num_draft=args.num_draft, kv=kv)
    if engine.follower:
        return _follow(engine, args)
    try:
        server = RunnerServer((args.host, args.port), engine, token, ServerLimits(
            max_connections=max(1, args.max_connections), request_timeout=args.request_timeout,
            idle_timeout=args.idle_timeout, keepalive_interval=args.keepalive_interval,
            allowed_hosts=tuple(args.allow_host),
            allowed_origins=tuple(args.allow_origin)))
    except OSError as exc:
        print(f"mlx_notebook runner: cannot listen on {args.host}:{args.port}: {exc.strerror}",
              file=sys.stderr, flush=True)
        return EXIT_USAGE
    host, port = server.server_address[:2]
    print(Handshake(port=port, pid=os.getpid(), protocol=PROTOCOL_VERSION, host=str(host))
          .to_line(), flush=True)

    exit_code = [0]

    def stop(reason: str, code: int = 0) -> None:
        exit_code[0] = exit_code[0] or code
        server.request_shutdown()
        # Never hang on the way out: a stuck MLX call must not keep an orphan alive.
        threading.Timer(3.0, lambda: os._exit(exit_code[0] or 1)).start()

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda signum, _frame: stop(signal.Signals(signum).name))
    watch_parent(lambda reason: stop(reason), parent_pid=args.parent_pid,
                 watch_stdin=not args.no_stdin_watch)
    engine.start()
    threading.Thread(target=_report_failure, args=(engine, stop), daemon=True).start()
    server.serve_forever(poll_interval=0.1)
    server.server_close()
    del held
    engine.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(exit_code[0])  # skip interpreter teardown: MLX threads may still be winding down


def _hold_fds_for_tests() -> list[int]:
    """TEST ONLY (``MLX_NOTEBOOK_TEST_ONLY_HOLD_FDS=N``): open N descriptors and keep them."""
    count = _env_int(TEST_ONLY_HOLD_FDS_ENV) or 0
    if count <= 0:
        return []
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = count + 512
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
    return [os.open(os.devnull, os.O_RDONLY) for _ in range(count)]


def _report_failure(engine: Engine, stop: Stop) -> None:
    engine.ready_event.wait()
    if engine.state == "error":
        print(f"mlx_notebook runner: {_rank_label(engine)}cannot load model {engine.spec!r}: "
              f"{engine.error}", file=sys.stderr, flush=True)
        time.sleep(_ERROR_LINGER_SECONDS)
        stop("load error", EXIT_LOAD_ERROR)
        return
    if engine.distributed is None:
        return  # a single runner keeps answering (status: error) after a worker failure
    # A group cannot go on without every rank: leave, so that the others see it too.
    engine.finished_event.wait()
    if engine.state == "error":
        print(f"mlx_notebook runner: {_rank_label(engine)}{engine.error}", file=sys.stderr,
              flush=True)
        time.sleep(_ERROR_LINGER_SECONDS)
        stop("worker failed", EXIT_RANK_LOST)


def _rank_label(engine: Engine) -> str:
    dist = engine.distributed
    return "" if dist is None else f"rank {dist.rank}: "


def _follow(engine: Engine, args: argparse.Namespace) -> int:
    """A rank > 0: no HTTP; decode in step with rank 0 until it stops, fails or the parent dies."""
    from .watch import watch_parent

    print(Handshake(port=0, pid=os.getpid(), protocol=PROTOCOL_VERSION, host=args.host).to_line(),
          flush=True)
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda _signum, _frame: done.set())
    watch_parent(lambda _reason: done.set(), parent_pid=args.parent_pid,
                 watch_stdin=not args.no_stdin_watch)
    engine.start()
    while not done.is_set() and not engine.finished_event.is_set():
        done.wait(0.1)
    code = 0
    if engine.state == "error":
        what = "cannot load model" if engine.loaded is None else "stopped"
        print(f"mlx_notebook runner: {_rank_label(engine)}{what} {engine.spec!r}: {engine.error}",
              file=sys.stderr, flush=True)
        code = EXIT_LOAD_ERROR if engine.loaded is None else EXIT_RANK_LOST
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # the worker may be blocked in a collective: do not wait for it


def _check_bind_policy(host: str, token: str | None, args: argparse.Namespace) -> str | None:
    if token is None and not args.no_auth:
        return (f"no token: set {TOKEN_ENV} in the environment, or pass --no-auth to serve "
                "without one (loopback only)")
    if token is not None and args.no_auth:
        return f"--no-auth given but {TOKEN_ENV} is set; drop one of them"
    if not _is_loopback(host):
        if not args.allow_remote:
            return f"refusing to listen on {host}: pass --allow-remote to serve beyond loopback"
        if token is None:
            return f"refusing to listen on {host} without a token ({TOKEN_ENV})"
    return None


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _prefetch(spec: str) -> int:
    from .models import ModelLoadError, load_model, prefetch

    def show(percent: float, message: str) -> None:
        print(f"\r[{percent:5.1f}%] {message[:70]:<70}", end="", file=sys.stderr, flush=True)

    try:
        path = prefetch(spec, progress=show)
        if (dtype := _auto_dtype_here()) is not None:  # cache the weights as the runner holds them
            load_model(spec, progress=show, dtype=dtype)
    except ModelLoadError as exc:
        print(f"\nmlx_notebook runner: cannot prefetch {spec!r}: {exc}", file=sys.stderr)
        return EXIT_LOAD_ERROR
    print(f"\n{path}", flush=True)
    return 0


def _auto_dtype_here() -> str | None:
    """What ``--dtype auto`` will pick once the runner has (re-)exec'd with OpenBLAS."""
    import mlx.core as mx

    from ..weight_format import find_openblas, resolve_dtype

    device = mx.default_device().type.name.lower()
    return resolve_dtype("auto", device, openblas=find_openblas() is not None)


if __name__ == "__main__":
    sys.exit(main())

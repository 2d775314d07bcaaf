"""``python -m mlx_notebook.runner.fuse --model SPEC --adapter DIR --out DIR``: mlx-lm's fuse.

The spec is resolved as the runner resolves it (the demo's converted folder, a hub
snapshot, a folder), then ``mlx_lm fuse`` writes the fused model folder.
"""

from __future__ import annotations

import argparse
import sys

from .models import ModelLoadError, prefetch


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mlx_notebook.runner.fuse")
    p.add_argument("--model", required=True)
    p.add_argument("--adapter", required=True)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    try:
        folder = prefetch(args.model)
    except ModelLoadError as exc:
        print(f"mlx_notebook fuse: {exc}", file=sys.stderr)
        return 2
    from mlx_lm import fuse

    sys.argv = ["mlx_lm.fuse", "--model", str(folder), "--adapter-path", args.adapter,
                "--save-path", args.out]
    fuse.main()
    return 0


if __name__ == "__main__":
    sys.exit(main())

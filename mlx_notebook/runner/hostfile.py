"""Read an ``mlx.launch`` hostfile with MLX's own reader, on the runner side.

The kernel never imports MLX, so it asks this module in a subprocess::

    python -m mlx_notebook.runner.hostfile HOSTFILE|IP,IP,...

which prints one JSON line: ``{"hosts": [{"rank", "ssh", "ips"}, ...], "backend", "envs"}``,
or ``{"error": "..."}`` (and exits 1) for something it cannot read.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from typing import Any


def read(value: str) -> dict[str, Any]:
    """The hosts of a hostfile path or of a comma-separated list of IPs, as plain data."""
    try:
        from mlx._distributed_utils.common import Hostfile  # mlx.launch's reader
    except ImportError as exc:
        return {"error": f"this mlx has no mlx.launch hostfile reader ({exc}); upgrade mlx"}
    path = os.path.expanduser(value)
    try:
        if os.path.isfile(path):
            with open(path) as f:
                json.load(f)  # a JSON error here, where the file is closed properly
            with warnings.catch_warnings():  # MLX's reader leaves its file to the collector
                warnings.simplefilter("ignore", ResourceWarning)
                parsed = Hostfile.from_file(path)
        elif "," in value:
            parsed = Hostfile.from_list(value)
        else:
            return {"error": "no such hostfile, and not a comma-separated list of IPs"}
    except ValueError as exc:
        return {"error": str(exc)}
    return {"hosts": [{"rank": h.rank, "ssh": h.ssh_hostname, "ips": list(h.ips)}
                      for h in parsed.hosts],
            "backend": parsed.backend, "envs": list(parsed.envs)}


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(json.dumps({"error": "usage: python -m mlx_notebook.runner.hostfile HOSTS"}))
        return 2
    answer = read(argv[0])
    print(json.dumps(answer))
    return 1 if "error" in answer else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

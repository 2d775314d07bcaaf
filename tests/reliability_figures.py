"""Figures that reliability tests record, for docs/reliability.md.

Written to the JSON file named by ``MLX_NOTEBOOK_RELIABILITY_OUT`` (one object per
line) when that is set; otherwise recording is a no-op.
"""

from __future__ import annotations

import json
import os
import time

OUT_ENV = "MLX_NOTEBOOK_RELIABILITY_OUT"


def record(name: str, *, cycles: int, failures: int, max_detect_s: float | None = None,
           extra: str = "") -> None:
    path = os.environ.get(OUT_ENV)
    if not path:
        return
    row = {"name": name, "cycles": cycles, "failures": failures,
           "max_detect_s": None if max_detect_s is None else round(max_detect_s, 3),
           "extra": extra, "at": time.strftime("%Y-%m-%d %H:%M:%S")}
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")

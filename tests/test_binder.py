"""The Binder environment (binder/) agrees with pyproject.toml's constraints."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parent.parent
BINDER = ROOT / "binder"

# mybinder.org builds a Linux x86_64 image with the Python of runtime.txt.
BINDER_PYTHON = "3.11"
BINDER_ENV = {
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "os_name": "posix",
    "python_version": BINDER_PYTHON,
    "python_full_version": BINDER_PYTHON + ".0",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
}


def _pyproject() -> dict:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)


def _pins() -> dict[str, Requirement]:
    pins: dict[str, Requirement] = {}
    for raw in (BINDER / "requirements.txt").read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        req = Requirement(line)
        name = canonicalize_name(req.name)
        assert name not in pins, f"{req.name} pinned twice in binder/requirements.txt"
        pins[name] = req
    return pins


def _pinned_version(req: Requirement) -> Version:
    specs = list(req.specifier)
    assert len(specs) == 1 and specs[0].operator == "==", (
        f"binder/requirements.txt: {req} is not an exact pin (use NAME==VERSION)"
    )
    return Version(specs[0].version)


def _needed(extras: tuple[str, ...] = ()) -> list[Requirement]:
    project = _pyproject()["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    for extra in extras:
        reqs += [Requirement(r) for r in project["optional-dependencies"][extra]]
    return [r for r in reqs if r.marker is None or r.marker.evaluate(BINDER_ENV)]


def test_every_pin_is_exact():
    pins = _pins()
    assert pins, "binder/requirements.txt pins nothing"
    for req in pins.values():
        _pinned_version(req)
        assert req.marker is None, f"{req}: Binder is Linux only, no markers needed"


@pytest.mark.parametrize("req", _needed(("lab",)), ids=str)
def test_pins_satisfy_pyproject(req: Requirement):
    pins = _pins()
    name = canonicalize_name(req.name)
    assert name in pins, f"{req.name} (pyproject: {req}) is not pinned in binder/requirements.txt"
    pin = pins[name]
    version = _pinned_version(pin)
    assert req.specifier.contains(version, prereleases=True), (
        f"binder pins {pin} but pyproject.toml asks for {req}"
    )
    missing = set(req.extras) - set(pin.extras)
    assert not missing, (
        f"binder pins {pin} without the extras {sorted(missing)} that pyproject asks for"
    )


def test_pins_cover_no_package_for_another_platform():
    """Linux Binder must get mlx's CPU build, never a macOS-only or CUDA pin."""
    pins = _pins()
    assert "cpu" in pins["mlx"].extras
    assert "cuda" not in pins["mlx"].extras


def test_runtime_python_satisfies_requires_python():
    runtime = (BINDER / "runtime.txt").read_text().strip()
    assert runtime == f"python-{BINDER_PYTHON}", runtime
    requires = SpecifierSet(_pyproject()["project"]["requires-python"])
    assert requires.contains(BINDER_PYTHON + ".0"), (runtime, str(requires))


def test_post_build_installs_package_and_prefetches_demo():
    post = BINDER / "postBuild"
    assert post.stat().st_mode & stat.S_IXUSR, "binder/postBuild must be executable"
    text = post.read_text()
    assert text.startswith("#!"), "postBuild needs a shebang"
    lines = [
        ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")
    ]
    assert any("pip install" in ln and " -e " in ln for ln in lines), (
        "postBuild must install the package"
    )
    assert any(
        "mlx_notebook.runner" in ln and "--model demo" in ln and "--prefetch" in ln for ln in lines
    )
    assert "set -e" in text, "postBuild must stop at the first failing step"


def test_scripts_are_executable():
    for rel in ("scripts/quickstart", "scripts/test", ".ci/run", "binder/postBuild"):
        assert os.access(ROOT / rel, os.X_OK), f"{rel} is not executable"

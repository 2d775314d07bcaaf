# Shared set-up for scripts/quickstart and scripts/test (sourced, not executed).
#
#   ensure_venv EXTRAS   create .venv (Python >= 3.10, 3.11 preferred) and install
#                        the package editable with the given extras ("lab", "test,lab")
#   prefetch_demo        download + convert the demo model into the cache (once)
#
# Caches reused across runs: pip's (~/.cache/pip or PIP_CACHE_DIR) and the model
# cache (~/.cache/mlx_notebook, or MLX_NOTEBOOK_CACHE). Set MLX_NOTEBOOK_REINSTALL=1
# to force the pip step even when pyproject.toml did not change.

set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${MLX_NOTEBOOK_VENV:-$ROOT/.venv}"
# A kernel started from this venv must be this venv's python, even if the user
# has a "python3" kernelspec of their own elsewhere.
export JUPYTER_PREFER_ENV_PATH=1
export PIP_DISABLE_PIP_VERSION_CHECK=1

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

is_root_or_sudo() {
    [ "$(id -u)" = 0 ] && { SUDO=""; return 0; }
    command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null && { SUDO="sudo -n"; return 0; }
    return 1
}

apt_install() {  # apt_install PKG... (Debian/Ubuntu, root or passwordless sudo only)
    command -v apt-get >/dev/null 2>&1 || return 1
    is_root_or_sudo || return 1
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get install -y -q "$@" >/dev/null 2>&1 && return 0
    $SUDO apt-get update -q >/dev/null 2>&1 || true
    $SUDO apt-get install -y -q "$@" >/dev/null
}

ensure_openblas() {  # the runner preloads it on Linux CPUs: ~9x faster prompts (runner/fastblas.py)
    [ "$(uname -s)" = Linux ] || return 0
    ls /usr/lib/*-linux-gnu/openblas-pthread/libopenblas.so.0 >/dev/null 2>&1 && return 0
    say "installing Debian's OpenBLAS (libopenblas0-pthread) for faster CPU inference"
    apt_install libopenblas0-pthread ||
        say "could not install libopenblas0-pthread (needs apt-get and root/sudo): the runner will be slower"
}

pick_python() {
    if [ -n "${PYTHON:-}" ]; then echo "$PYTHON"; return; fi
    local p
    for p in python3.11 python3.12 python3.13 python3.10 python3; do
        if command -v "$p" >/dev/null 2>&1 &&
            "$p" -c 'import sys; sys.exit(not (3, 10) <= sys.version_info[:2] < (3, 14))' 2>/dev/null; then
            echo "$p"; return
        fi
    done
    return 1
}

ensure_venv() {
    local extras="$1"
    if [ ! -x "$VENV/bin/python" ]; then
        local py
        if ! py="$(pick_python)"; then
            say "no Python 3.10-3.13 found; trying to install python3 (Debian/Ubuntu)"
            apt_install python3 python3-venv python3-pip || die "install Python 3.11 and re-run (or set PYTHON=...)"
            py="$(pick_python)" || die "install Python 3.11 and re-run (or set PYTHON=...)"
        fi
        say "creating $VENV with $("$py" --version 2>&1)"
        if ! "$py" -m venv "$VENV" 2>/dev/null; then
            rm -rf "$VENV"
            # Debian/Ubuntu ship venv's ensurepip separately.
            local ver; ver="$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
            apt_install "python$ver-venv" || apt_install python3-venv ||
                die "'$py -m venv' failed: install python3-venv (apt-get install python3-venv) and re-run"
            "$py" -m venv "$VENV"
        fi
        "$VENV/bin/python" -m pip install -q --upgrade pip
    fi
    # shellcheck disable=SC1091
    . "$VENV/bin/activate"
    local stamp="$VENV/.mlx-notebook-installed-${extras//,/-}"
    local want; want="$(python -c 'import hashlib,sys; print(hashlib.sha256(open(sys.argv[1],"rb").read()).hexdigest())' "$ROOT/pyproject.toml")"
    if [ "${MLX_NOTEBOOK_REINSTALL:-0}" != 1 ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] &&
        python -c 'import mlx_notebook' 2>/dev/null; then
        say "package already installed in $VENV (.[$extras])"
    else
        say "installing mlx-notebook with pip: -e \".[$extras]\""
        python -m pip install -q -e "$ROOT[$extras]"
        echo "$want" >"$stamp"
    fi
}

prefetch_demo() {
    say "fetching the demo model (SmolLM2-135M-Instruct, ~90 MB, once; cached)"
    python -m mlx_notebook.runner --model demo --prefetch
}

#!/usr/bin/env bash
# What `rbd-wasm build-py` needs: componentize-py, at the pinned version, in a virtualenv of
# its own under $RBD_WASM_PY_HOME (default: $XDG_DATA_HOME/rbd-wasm/py, else
# ~/.local/share/rbd-wasm/py). Idempotent: nothing is fetched when the pinned version is
# already there. After this, building a Python job needs no network.
#
# componentize-py's wheel carries everything a build uses (its own CPython for WebAssembly,
# wasi-libc, the component tools); the Python that runs this script only hosts pip and the
# launcher.
set -euo pipefail

COMPONENTIZE_PY_VERSION=0.25.1

if [[ -n "${RBD_WASM_PY_HOME:-}" ]]; then
    home="$RBD_WASM_PY_HOME"
elif [[ -n "${XDG_DATA_HOME:-}" ]]; then
    home="$XDG_DATA_HOME/rbd-wasm/py"
else
    home="$HOME/.local/share/rbd-wasm/py"
fi
venv="$home/venv"

installed_version() {
    "$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("componentize-py"))' 2>/dev/null || true
}

if [[ -x "$venv/bin/componentize-py" && "$(installed_version)" == "$COMPONENTIZE_PY_VERSION" ]]; then
    exit 0
fi

python="${PYTHON:-python3}"
if ! "$python" -c 'import venv, ensurepip' >/dev/null 2>&1; then
    # Debian splits venv and ensurepip off into python3-venv.
    if command -v apt-get >/dev/null 2>&1; then
        echo "install-py-deps: installing python3-venv" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq python3-venv >/dev/null
    else
        echo "install-py-deps: $python has no venv module; install it (Debian: python3-venv)" >&2
        exit 1
    fi
fi

echo "install-py-deps: installing componentize-py $COMPONENTIZE_PY_VERSION into $venv" >&2
mkdir -p "$home"
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "componentize-py==$COMPONENTIZE_PY_VERSION"
"$venv/bin/componentize-py" --version >&2

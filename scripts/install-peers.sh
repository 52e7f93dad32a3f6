#!/usr/bin/env bash
# Install the peers of bench/peers.sh (issue 15, item 4): restic (Debian's package) and
# Benji 0.17.0 (PyPI) in a virtual environment at /opt/rbd-wasm/benji, whose `benji` is
# /opt/rbd-wasm/benji/bin/benji. Idempotent: what is there already is left alone, and
# `apt-get update` runs only when a Debian package is missing.
#
# Usage: scripts/install-peers.sh      (as root, or with sudo available)
# Environment:
#   BENJI_VENV   where the virtual environment goes (default /opt/rbd-wasm/benji)
#
# Benji 0.17.0 (its last release, 2022) does not install with a plain `pip install benji`
# on Python 3.11: it pins ruamel.yaml <0.16, whose sources no longer build there.
# ruamel.yaml 0.16 keeps the API it uses (`ruamel.yaml.load(f, Loader=SafeLoader)`), so
# its dependencies are installed first, each at a version verified with it (ruamel.yaml
# at 0.16.13, the others within Benji's own ranges), and Benji itself with --no-deps. Its RBD source needs the
# `rados` and `rbd` modules, which are not on PyPI: Debian's (python3-rados, python3-rbd,
# built for the system's Python) are linked into the environment, which is therefore made
# with the system's /usr/bin/python3, not another Python on the PATH.
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive
venv=${BENJI_VENV:-/opt/rbd-wasm/benji}
benji_version=0.17.0

log() { echo "install-peers: $*" >&2; }

sudo_cmd=()
if ((EUID != 0)); then
    sudo_cmd=(sudo)
fi

# Debian: restic; the system Python's venv module and headers and a compiler (for any of
# Benji's dependencies without a wheel for this Python); Ceph's Python bindings.
packages=(restic python3-venv python3-dev gcc python3-rados python3-rbd ceph-common)
missing=()
for pkg in "${packages[@]}"; do
    status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
    [[ "$status" == "install ok installed" ]] || missing+=("$pkg")
done
if ((${#missing[@]} > 0)); then
    log "installing ${missing[*]}"
    "${sudo_cmd[@]}" apt-get update
    "${sudo_cmd[@]}" apt-get install -y --no-install-recommends "${missing[@]}"
fi

# Benji, unless this exact version already runs from the environment.
# What bench/peers.sh uses: the rbd source, the s3 storage, the zstd and AES transforms.
imports='import rados, rbd, benji.benji, benji.io.rbd, benji.storage.s3, benji.transform.zstd, benji.transform.aes_256_gcm'
if [[ -x "$venv/bin/benji" ]] &&
    "$venv/bin/python" -c 'import importlib.metadata as m, sys; sys.exit(m.version("benji") != sys.argv[1])' "$benji_version" 2>/dev/null &&
    "$venv/bin/python" -c "$imports" 2>/dev/null; then
    log "benji $benji_version already in $venv"
    exit 0
fi

log "making $venv (benji $benji_version)"
"${sudo_cmd[@]}" mkdir -p "$(dirname "$venv")"
"${sudo_cmd[@]}" /usr/bin/python3 -m venv "$venv"
site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
for module in rados rbd; do
    so=$(ls /usr/lib/python3/dist-packages/"$module".cpython-*.so 2>/dev/null | head -n 1)
    [[ -n "$so" ]] || { log "Debian's python3-$module has no $module.cpython-*.so"; exit 1; }
    "${sudo_cmd[@]}" ln -sf "$so" "$site/$(basename "$so")"
done

# Benji's install_requires (setup.py of 0.17.0) and its s3 and compression extras (boto3,
# zstandard), each at the version verified with it here (within Benji's ranges but
# ruamel.yaml's), so that a later release of one of them does not change the install:
# Benji imports private names (structlog._frames) and old APIs. boto3 below 1.36: from
# 1.36 on it sends CRC32 checksums with every PUT by default, which Pacific's radosgw may
# refuse.
pip=("${sudo_cmd[@]}" "$venv/bin/pip" install --quiet --disable-pip-version-check)
"${pip[@]}" wheel
"${pip[@]}" \
    'PrettyTable==0.7.2' \
    'sqlalchemy==1.4.54' \
    'setproctitle==1.3.8' \
    'python-dateutil==2.9.0.post0' \
    'alembic==1.19.2' \
    'ruamel.yaml==0.16.13' \
    'psycopg2-binary==2.9.13' \
    'argcomplete==1.12.3' \
    'sparsebitfield==0.2.5' \
    'cerberus==1.3.8' \
    'pycryptodome==3.24.1' \
    'pyparsing==2.4.7' \
    'semantic_version==2.10.0' \
    'dateparser==1.5.0' \
    'structlog==26.1.0' \
    'colorama==0.4.6' \
    'diskcache==5.6.3' \
    'attrs==21.4.0' \
    'zstandard==0.25.0' \
    'boto3==1.35.99'
"${pip[@]}" --no-deps "benji==$benji_version"

"$venv/bin/python" -c "$imports" || { log "benji in $venv does not import"; exit 1; }
"$venv/bin/benji" --help >/dev/null || { log "$venv/bin/benji does not run"; exit 1; }
log "benji $benji_version in $venv"

#!/usr/bin/env bash
# Install the Ceph Pacific packages the test cluster and the reference
# implementation (python-rbd) need. Idempotent: a package that is already
# installed is skipped, and `apt-get update` runs only when something is
# actually missing (it is the slow part and needs the network).
#
# Usage: scripts/install-ceph.sh        (as root, or with sudo available)
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive

# Daemons for the throwaway cluster, the CLI (ceph, rbd) for setup and interop
# checks, the C headers for the Rust FFI layer, and the Python bindings that
# serve as the reference implementation; Ceph's S3 gateway (radosgw) for the
# offsite jobs' tests.
packages=(
    ceph-mon
    ceph-osd
    ceph-mgr
    ceph-common
    librbd-dev
    librados-dev
    python3-rbd
    python3-rados
    radosgw
    # The S3 gateway's test certificates (ceph-cluster.sh, RBD_WASM_CEPH_RGW_TLS_PORT).
    openssl
)
# uuidgen gives each cluster a fresh fsid.
if ! command -v uuidgen >/dev/null 2>&1; then
    packages+=(uuid-runtime)
fi

# A package counts as installed only when dpkg reports "install ok installed";
# a removed-but-configured ("rc") package must be reinstalled.
missing=()
for pkg in "${packages[@]}"; do
    status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
    if [[ "$status" != "install ok installed" ]]; then
        missing+=("$pkg")
    fi
done

if ((${#missing[@]} == 0)); then
    echo "install-ceph: all packages already installed"
    exit 0
fi

# Use sudo only when not already root (CI and dev machines run as root).
sudo_cmd=()
if ((EUID != 0)); then
    sudo_cmd=(sudo)
fi

echo "install-ceph: installing ${missing[*]}"
"${sudo_cmd[@]}" apt-get update
"${sudo_cmd[@]}" apt-get install -y --no-install-recommends "${missing[@]}"

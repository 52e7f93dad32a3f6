#!/usr/bin/env bash
# The README's second command: the whole test suite, Ceph included. Installs what it needs
# (the wasm32-wasip2 target; Ceph's Debian packages; the JavaScript and Python toolchains
# from npm and PyPI),
# builds the guests, starts a throwaway single-node Ceph cluster on 127.0.0.1, runs every
# test on both backends, and stops the cluster again, however the tests end. Extra
# arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-rust-deps.sh
scripts/install-ceph.sh
scripts/install-prometheus.sh
scripts/install-js-deps.sh
scripts/install-py-deps.sh

# The guest components (wasm32-wasip2 only), and the crates the native test run leaves out.
guests=(hello snapshots conformance plain-command differential hostile read-throughput backup restore verify offsite dedup snap-rotate tick-probe)
not_native=(--exclude rbd-wasm-guest)
# snap-rotate's policy unit tests run natively (wit-bindgen stands in for the imports there).
for g in "${guests[@]}"; do [[ $g == snap-rotate ]] || not_native+=(--exclude "$g"); done

echo "==> building the guests (wasm32-wasip2, release)" >&2
cargo build --release --target wasm32-wasip2 "${guests[@]/#/-p}"

echo "==> building the host" >&2
cargo build -p rbd-wasm --bin rbd-wasm
cargo test --workspace --no-run "${not_native[@]}"

ceph_dir="${RBD_WASM_CEPH_DIR:-$(mktemp -d /tmp/rbd-wasm-ceph.XXXXXX)}"
# A monitor port nobody else uses, so a cluster someone left running does not get in the way.
if [[ -z "${RBD_WASM_CEPH_PORT:-}" ]]; then
    RBD_WASM_CEPH_PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    export RBD_WASM_CEPH_PORT
fi
# Ceph's S3 gateway beside it, on another free port (for this cluster only: the fault
# suite starts clusters of its own).
read -r rgw_port rgw_tls_port < <(python3 -c '
import socket
a, b = socket.socket(), socket.socket()
a.bind(("127.0.0.1", 0)); b.bind(("127.0.0.1", 0))
print(a.getsockname()[1], b.getsockname()[1])')
stop_cluster() { scripts/ceph-cluster.sh stop "$ceph_dir" || true; }
trap stop_cluster EXIT
echo "==> starting a throwaway Ceph cluster and its S3 gateway in $ceph_dir" >&2
RBD_WASM_CEPH_RGW_PORT=$rgw_port RBD_WASM_CEPH_RGW_TLS_PORT=$rgw_tls_port scripts/ceph-cluster.sh start "$ceph_dir" >/dev/null
export RBD_WASM_CEPH_CONF="$ceph_dir/ceph.conf"
# RBD_WASM_S3_ENDPOINT, _ACCESS_KEY, _SECRET_KEY, _BUCKET, _REGION, _TLS_ENDPOINT, _CA_FILE.
set -a
# shellcheck source=/dev/null
source "$ceph_dir/s3.env"
set +a

echo "==> running the tests" >&2
log=$(mktemp /tmp/rbd-wasm-test.XXXXXX.log)
set +e
cargo test --workspace "${not_native[@]}" "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# One closing line for the whole run (cargo prints one per test binary, the last of which
# is often an empty doc-test run).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "summary: %d passed, %d failed\n", p, f }' "$log"
rm -f "$log"
exit "$status"

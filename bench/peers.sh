#!/usr/bin/env bash
# Issue 15, item 4: the deduplicating backup job (examples/dedup, run by rbd-wasm) against
# Benji and restic, on the same images, the same Ceph cluster and the same radosgw, each
# tool in its own bucket: the time of a full backup, three incrementals (25% of the image
# changed before each) and a second image sharing 90% of the first's data, a restore of the
# last backup (checked byte-identical), and the bytes stored after the series. See
# bench/README.md, "Against Benji and restic"; the measurements are bench/peers/peers.py.
#
# Usage: bench/peers.sh
# Environment:
#   BENCH_MIB          image size in MiB (default 1024)
#   BENCH_RUNS         rounds of the whole series, each on fresh images and buckets (default 1)
#   BENCH_FRACTION     share of the image each incremental changes (default 0.25)
#   BENCH_NO_BUILD     1: use the release binaries in the target directory as they are
#   BENCH_CEPH_CONF    use this running cluster instead of starting one; it needs a
#                      gateway, described by BENCH_S3_ENV (default: s3.env beside the conf,
#                      as scripts/ceph-cluster.sh writes it with RBD_WASM_CEPH_RGW_PORT)
#   BENCH_CEPH_DIR     directory of the throwaway cluster (default /tmp/rbd-wasm-peers-ceph)
#   BENCH_CEPH_PORT    its monitor port (default 6798)
#   BENCH_RGW_PORT     its gateway's port (default 7598)
#   BENCH_OSD_STORE    its OSD's object store: bluestore (default; a sparse file of 20 times
#                      the image under BENCH_CEPH_DIR) or memstore (RAM; small sizes only)
#   BENCH_WORK         scratch directory (default: a new one under /tmp, removed at the end)
#   BENCH_RESULTS      where peers-<UTC timestamp>.jsonl goes (default bench/results)
#   BENJI_VENV         Benji's virtual environment (default /opt/rbd-wasm/benji)
#   CARGO_TARGET_DIR   the cargo target directory (default target/)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
target=${CARGO_TARGET_DIR:-$root/target}
mib=${BENCH_MIB:-1024}
runs=${BENCH_RUNS:-1}
results=${BENCH_RESULTS:-$root/bench/results}
venv=${BENJI_VENV:-/opt/rbd-wasm/benji}

log() { echo "peers: $*" >&2; }

# What the run needs, installed only when missing: Ceph (with radosgw), restic and Benji.
if ! command -v rbd >/dev/null || ! command -v radosgw >/dev/null || ! command -v ceph-osd >/dev/null; then
    scripts/install-ceph.sh
fi
BENJI_VENV=$venv scripts/install-peers.sh

if [[ "${BENCH_NO_BUILD:-}" != 1 ]]; then
    scripts/install-rust-deps.sh
    log "building (release)"
    cargo build --release --quiet --target-dir "$target" -p rbd-wasm
    cp Cargo.lock bench/Cargo.lock
    cargo build --release --quiet --target-dir "$target" --manifest-path bench/Cargo.toml -p rbd-wasm-bench --bin bench-native
    cargo build --release --quiet --target-dir "$target" --target wasm32-wasip2 -p dedup
fi
for f in "$target/release/rbd-wasm" "$target/release/bench-native" "$target/wasm32-wasip2/release/dedup.wasm"; do
    [[ -f "$f" ]] || { log "$f is missing (build it, or run without BENCH_NO_BUILD=1)"; exit 1; }
done

# shellcheck source=bench/common.sh
source bench/common.sh
bench_work_dir rbd-wasm-peers

if [[ -n "${BENCH_CEPH_CONF:-}" ]]; then
    conf=$BENCH_CEPH_CONF
    s3_env=${BENCH_S3_ENV:-$(dirname "$conf")/s3.env}
else
    ceph_dir=${BENCH_CEPH_DIR:-/tmp/rbd-wasm-peers-ceph}
    log "starting a throwaway cluster with a gateway in $ceph_dir"
    # A bluestore OSD (a sparse file under the cluster's directory) by default: the series
    # keeps two images, the copies their snapshots keep, one restored image at a time and
    # three buckets (about 8.5 GB at 1 GiB: Benji's 4 MiB blocks store 3.3 times the
    # image), and a memstore OSD holding that took 22 GB of RAM (its buffers are larger than
    # the data they keep) and was killed by the kernel on this 24 GiB machine.
    conf=$(RBD_WASM_CEPH_PORT=${BENCH_CEPH_PORT:-6798} RBD_WASM_CEPH_RGW_PORT=${BENCH_RGW_PORT:-7598} \
        RBD_WASM_CEPH_OSD_STORE=${BENCH_OSD_STORE:-bluestore} \
        RBD_WASM_CEPH_BLUESTORE_BYTES=$(((mib * 20 + 4096) << 20)) \
        RBD_WASM_CEPH_MEMSTORE_BYTES=$(((mib * 14 + 2048) << 20)) \
        scripts/ceph-cluster.sh start "$ceph_dir")
    s3_env=$ceph_dir/s3.env
    cleanup=("scripts/ceph-cluster.sh stop '$ceph_dir'" "${cleanup[@]}")
fi
[[ -f "$s3_env" ]] || { log "no gateway: $s3_env is missing"; exit 1; }

/usr/bin/python3 bench/peers/peers.py \
    --conf "$conf" --s3-env "$s3_env" --work "$work" --results "$results" --target-dir "$target" \
    --benji-venv "$venv" --mib "$mib" --runs "$runs" --fraction "${BENCH_FRACTION:-0.25}"

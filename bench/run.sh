#!/usr/bin/env bash
# The performance comparison of issue 6, in one run: rbd-wasm's backup and restore jobs
# against `rbd export-diff`/`export`/`import-diff`, a python-rbd loop and a native Rust loop
# over librbd, on a throwaway cluster; the same jobs on the embedded store; a small cached
# job, instantiation, and 100 concurrent jobs. See bench/README.md.
#
# Usage: bench/run.sh
# Environment:
#   BENCH_SIZE_MIB     image size (default 1024)
#   BENCH_RUNS         runs per measured command (default 5)
#   BENCH_FRACTION     share of the image the incremental changes (default 0.25)
#   BENCH_JOBS         concurrent jobs in the scale test (default 100)
#   BENCH_SCALE_MIB    image size of each of those jobs (default 8)
#   BENCH_ONLY         parts to run, comma-separated (default librbd,embedded,cached,startup,scale)
#   BENCH_CEPH_CONF    use this running cluster instead of starting one
#   BENCH_CEPH_DIR     directory of the throwaway cluster (default /tmp/rbd-wasm-bench-ceph)
#   BENCH_CEPH_PORT    its monitor port (default 6797)
#   BENCH_WORK         scratch directory (default: a new one under /tmp, removed at the end)
#   BENCH_RESULTS      where latest.json, latest.png and latest.md go (default bench/results)
#   CARGO_TARGET_DIR   the cargo target directory (default target/)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
target=${CARGO_TARGET_DIR:-$root/target}
size=${BENCH_SIZE_MIB:-1024}
runs=${BENCH_RUNS:-5}
results=${BENCH_RESULTS:-$root/bench/results}

log() { echo "bench: $*" >&2; }

# What the run needs beyond a Rust toolchain, installed only when missing.
scripts/install-rust-deps.sh
if ! command -v rbd >/dev/null || ! /usr/bin/python3 -c 'import rados, rbd' 2>/dev/null ||
    ! command -v ceph-osd >/dev/null; then
    scripts/install-ceph.sh
fi
if ! /usr/bin/python3 -c 'import matplotlib' 2>/dev/null; then
    log "installing python3-matplotlib (for the chart)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y --no-install-recommends python3-matplotlib >/dev/null 2>&1 || {
        apt-get update >/dev/null && apt-get install -y --no-install-recommends python3-matplotlib >/dev/null
    }
fi

# Release builds: the host, the jobs, and bench/'s own crates (a workspace of their own,
# resolved to the root lockfile's versions).
log "building (release)"
cargo build --release --quiet --target-dir "$target" -p rbd-wasm
cargo build --release --quiet --target-dir "$target" --target wasm32-wasip2 -p backup -p restore -p hello
cp Cargo.lock bench/Cargo.lock
cargo build --release --quiet --target-dir "$target" --manifest-path bench/Cargo.toml -p rbd-wasm-bench
cargo build --release --quiet --target-dir "$target" --manifest-path bench/Cargo.toml \
    --target wasm32-wasip2 -p bench-guest

# shellcheck source=bench/common.sh
source bench/common.sh
bench_work_dir rbd-wasm-bench

if [[ -n "${BENCH_CEPH_CONF:-}" ]]; then
    conf=$BENCH_CEPH_CONF
else
    ceph_dir=${BENCH_CEPH_DIR:-/tmp/rbd-wasm-bench-ceph}
    log "starting a throwaway cluster in $ceph_dir"
    # Room for the image, its snapshots' copies, a restored and an imported copy, and the
    # scale test's images, in the OSD's RAM; and about an image's worth more per restore
    # round, which the memstore OSD does not give back while the run goes on (measured:
    # 5 rounds filled 7 GiB for a 1 GiB image).
    conf=$(RBD_WASM_CEPH_PORT=${BENCH_CEPH_PORT:-6797} \
        RBD_WASM_CEPH_MEMSTORE_BYTES=$(((size * (5 + runs) + 2048) << 20)) \
        scripts/ceph-cluster.sh start "$ceph_dir")
    cleanup=("scripts/ceph-cluster.sh stop '$ceph_dir'" "${cleanup[@]}")
fi

/usr/bin/python3 bench/bench.py \
    --conf "$conf" --work "$work" --results "$results" --target-dir "$target" \
    --size-mib "$size" --runs "$runs" --fraction "${BENCH_FRACTION:-0.25}" \
    --jobs "${BENCH_JOBS:-100}" --scale-image-mib "${BENCH_SCALE_MIB:-8}" \
    --only "${BENCH_ONLY:-librbd,embedded,cached,startup,scale}"

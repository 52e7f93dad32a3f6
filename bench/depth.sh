#!/usr/bin/env bash
# Which number of backend calls in flight (`[limits] reads_in_flight`, which bounds the
# reads and the writes a job keeps in flight) is best on a cluster: a full backup and a
# restore of a 1 GiB image (filled whole) at each depth, medians of RUNS, on the release
# host. Issue 12, item 3. Needs the release builds that bench/run.sh makes.
#
# Usage: bench/depth.sh CEPH_CONF [DEPTHS...]   (default depths: 1 2 4 8 10 16 32; RUNS=3)
set -euo pipefail
cd "$(dirname "$0")/.."
conf=${1:?usage: bench/depth.sh CEPH_CONF [DEPTHS...]}
shift
depths=("$@")
[ ${#depths[@]} -gt 0 ] || depths=(1 2 4 8 10 16 32)
runs=${RUNS:-3}
host=target/release/rbd-wasm
native=target/release/bench-native
guests=target/wasm32-wasip2/release
work=$(mktemp -d /tmp/rbd-wasm-depth.XXXXXX)
image=depth-$$
cleanup() {
    "$native" -c "$conf" rm "$image" >/dev/null 2>&1 || true
    "$native" -c "$conf" rm "$image-r" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT
"$native" -c "$conf" fill "$image" --mib 1024 >/dev/null
median() { sort -n | awk '{a[NR]=$1} END {printf "%.2f", a[int((NR+1)/2)]}'; }
seconds() { # COMMAND...: its wall time in seconds
    local t0 t1
    t0=$(date +%s.%N)
    "$@" >/dev/null 2>&1
    t1=$(date +%s.%N)
    echo "$t1 - $t0" | bc
}
echo "| in flight | full backup (s) | restore (s) |"
echo "| ---: | ---: | ---: |"
for depth in "${depths[@]}"; do
    printf 'schema = 1\n[job]\nid = "depth"\n[[grants]]\npool = "rbd"\noperations = ["all"]\n[limits]\nreads_in_flight = %s\n' \
        "$depth" >"$work/job.toml"
    backups=() restores=()
    for _ in $(seq "$runs"); do
        rm -rf "$work/out" && mkdir -p "$work/out"
        "$native" -c "$conf" snap-rm "$image" backup-1 >/dev/null
        backups+=("$(seconds "$host" run --progress none -c "$conf" --manifest "$work/job.toml" \
            --output-dir "$work/out" "$guests/backup.wasm" -- rbd "$image")")
        "$native" -c "$conf" rm "$image-r" >/dev/null 2>&1 || true
        restores+=("$(seconds "$host" run --progress none -c "$conf" --manifest "$work/job.toml" \
            --output-dir "$work/out" "$guests/restore.wasm" -- rbd "$image" "$image-r")")
    done
    echo "| $depth | $(printf '%s\n' "${backups[@]}" | median) | $(printf '%s\n' "${restores[@]}" | median) |"
done

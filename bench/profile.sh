#!/usr/bin/env bash
# Profile the release host (perf record -e cpu-clock -g) on the backup job's full and
# incremental backup and the restore job, with the workload of bench/run.sh (a 1 GiB image
# filled whole, then 25% changed in scattered extents), and fold each profile with
# bench/profiles/fold.py into bench/profiles/BACKEND-{full,inc,restore}.{folded,summary}.
# Needs the release builds that bench/run.sh makes, and perf (Debian's linux-perf).
#
# Usage: bench/profile.sh librbd CEPH_CONF | bench/profile.sh embedded
set -euo pipefail
cd "$(dirname "$0")/.."
backend=${1:?usage: bench/profile.sh librbd CEPH_CONF | embedded}
host=target/release/rbd-wasm
native=target/release/bench-native
guests=target/wasm32-wasip2/release
work=$(mktemp -d /tmp/rbd-wasm-profile.XXXXXX)
trap 'rm -rf "$work"' EXIT
case $backend in
librbd) store=(-c "${2:?the ceph.conf of the cluster}") ;;
embedded) store=(--store "$work/store") ;;
*) echo "unknown backend $backend" >&2; exit 2 ;;
esac
image=prof-$$
mkdir -p "$work/out"
"$native" "${store[@]}" fill "$image" --mib 1024 >/dev/null
run() { # NAME JOB ARGS...: one profiled run of JOB
    local name=$1 job=$2
    shift 2
    local t0=$SECONDS
    perf record -q -e cpu-clock -F 999 -g -o "$work/$name.data" -- \
        "$host" run --progress none "${store[@]}" --output-dir "$work/out" "$guests/$job.wasm" -- "$@" >/dev/null
    echo "$backend-$name: $((SECONDS - t0)) s under perf" >&2
    perf script -i "$work/$name.data" 2>/dev/null |
        python3 bench/profiles/fold.py "bench/profiles/$backend-$name.folded" >"bench/profiles/$backend-$name.summary"
}
"$host" run --progress none "${store[@]}" "$guests/hello.wasm" -- rbd "$image-warm" >/dev/null 2>&1 || true
run full backup rbd "$image"
"$native" "${store[@]}" change "$image" --fraction 0.25 >/dev/null
run inc backup rbd "$image"
run restore restore rbd "$image" "$image-restored"
for name in "$image-restored" "$image"; do
    "$native" "${store[@]}" rm "$name" >/dev/null 2>&1 || true
done

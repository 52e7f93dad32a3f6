#!/usr/bin/env bash
# Run the differential test's random scripts (one client, and two) for a long time, a
# batch of seeds at a time, against a throwaway cluster of its own; stop at the first
# failure and print its seed.
#
#   scripts/differential-soak.sh [HOURS] [FIRST_SEED]      (defaults: 2 hours, seed 1000)
#
# A failure prints the command that reruns just that seed. Uses an existing cluster instead
# when RBD_WASM_CEPH_CONF is set.
set -euo pipefail
cd "$(dirname "$0")/.."
hours=${1:-2}
seed=${2:-1000}
batch=25
deadline=$(( $(date +%s) + hours * 3600 ))

if [[ -z "${RBD_WASM_CEPH_CONF:-}" ]]; then
    dir=$(mktemp -d /tmp/rbd-wasm-soak.XXXXXX)
    scripts/ceph-cluster.sh start "$dir"
    trap 'scripts/ceph-cluster.sh stop "$dir"' EXIT
    export RBD_WASM_CEPH_CONF="$dir/ceph.conf"
fi

cargo test -q -p rbd-wasm-tests --test differential --no-run
while (( $(date +%s) < deadline )); do
    echo "differential-soak: seeds $seed..$((seed + batch - 1))"
    if ! RBD_WASM_DIFF_SEED_BASE=$seed RBD_WASM_DIFF_SEEDS=$batch \
        cargo test -q -p rbd-wasm-tests --test differential random_ 2>&1 | tee /tmp/differential-soak.log | grep -q "test result: ok"; then
        grep -m1 -o "seed [0-9]* (rerun with [^)]*)" /tmp/differential-soak.log || tail -40 /tmp/differential-soak.log
        grep -A12 "differs from python-rbd" /tmp/differential-soak.log | head -20 || true
        exit 1
    fi
    seed=$((seed + batch))
done
echo "differential-soak: no difference in seeds up to $((seed - 1))"

#!/usr/bin/env bash
# Does the bandwidth cap hold? Runs examples/read-throughput on the embedded store under a
# manifest that caps the job at CAP MiB/s, and reports the measured rate and its ratio to
# the cap (the target: within 10%). A benchmark, not a test: run it by hand.
#
# Usage: bench/bandwidth.sh [CAP_MIB_PER_SEC] [IMAGE_MIB]     (default 50 and 200)
set -euo pipefail
cd "$(dirname "$0")/.."
cap=${1:-50}
mib=${2:-200}

scripts/install-rust-deps.sh
cargo build --release --quiet -p rbd-wasm
cargo build --release --quiet --target wasm32-wasip2 -p read-throughput

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp target/wasm32-wasip2/release/read_throughput.wasm "$work/"
cat >"$work/job.toml" <<TOML
schema = 1
[job]
component = "read_throughput.wasm"
args = ["rbd", "throughput", "$mib"]
[[grants]]
pool = "rbd"
operations = ["all"]
TOML
export RBD_WASM_STORE="$work/store"
# Once without a cap (this also creates and fills the image), then with it.
uncapped=$(target/release/rbd-wasm run --manifest "$work/job.toml" | sed -n 's/.*: \([0-9.]*\) MiB\/s/\1/p')
printf '[limits]\nbandwidth_mib_per_sec = %s\n' "$cap" >>"$work/job.toml"
capped=$(target/release/rbd-wasm run --manifest "$work/job.toml" | sed -n 's/.*: \([0-9.]*\) MiB\/s/\1/p')
python3 - "$cap" "$uncapped" "$capped" <<'PY'
import sys
cap, uncapped, capped = (float(x) for x in sys.argv[1:])
ratio = capped / cap
print(f"uncapped: {uncapped:.1f} MiB/s   cap: {cap:.1f} MiB/s   capped: {capped:.1f} MiB/s   ratio to cap: {ratio:.3f}")
print("within 10% of the cap" if abs(ratio - 1) <= 0.10 else "NOT within 10% of the cap")
sys.exit(0 if abs(ratio - 1) <= 0.10 else 1)
PY

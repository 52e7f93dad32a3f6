#!/usr/bin/env bash
# Issue 15: the deduplicating repository's chunk size, chosen by measurement. For each
# candidate size the same change series goes through the dedup job (examples/dedup) on an
# embedded store: a full backup of an image of MIB MiB (incompressible data), three
# incrementals each after 25% of it changed in scattered 64 KiB..4 MiB extents, and a
# second image with the first's data of which 10% changed. Reports, per size: bytes of
# chunks stored after the series, bytes of indexes, and the time of the full, the
# incrementals and the second image's backup.
#
#   bench/chunk-size.sh [MIB] [SIZES...]     (defaults: 512; 65536 262144 1048576 4194304)
set -euo pipefail
cd "$(dirname "$0")/.."
mib=${1:-512}
shift || true
sizes=("${@:-}")
[[ -n "${sizes[0]}" ]] || sizes=(65536 262144 1048576 4194304)
target=${CARGO_TARGET_DIR:-$PWD/target}
work=$(mktemp -d /tmp/rbd-wasm-chunks.XXXXXX)
trap 'rm -rf "$work"' EXIT

cargo build --release --quiet --target-dir "$target" -p rbd-wasm
cargo build --release --quiet --target-dir "$target" --manifest-path bench/Cargo.toml -p rbd-wasm-bench --bin bench-native
cargo build --release --quiet --target-dir "$target" --target wasm32-wasip2 -p dedup
host=$target/release/rbd-wasm
native=$target/release/bench-native
job=$target/wasm32-wasip2/release/dedup.wasm

printf 'a chunk-size benchmark passphrase\n' >"$work/passphrase"
out=bench/results/chunk-size-$(date -u +%Y%m%dT%H%M%SZ).jsonl
mkdir -p bench/results
for size in "${sizes[@]}"; do
    store=$work/store-$size repo=$work/repo-$size
    mkdir -p "$store" "$repo"
    cat >"$work/job-$size.toml" <<TOML
schema = 1
[job]
output_dir = "$repo"
[[grants]]
pool = "rbd"
operations = ["all"]
[secrets]
repo-passphrase = "$work/passphrase"
[limits]
host_memory_mib = 256
TOML
    dedup() { "$host" run --json --progress none --manifest "$work/job-$size.toml" --store "$store" "$job" -- "$@"; }
    secs() { python3 -c 'import json,sys; r=json.load(sys.stdin); assert r["status"]=="ok", r; print(round(r["elapsed_secs"],2))'; }
    dedup init --chunk-size "$size" >/dev/null
    "$native" --store "$store" fill img --mib "$mib" --seed 1 >/dev/null
    full=$(dedup backup rbd img | secs)
    incr=()
    for seed in 2 3 4; do
        "$native" --store "$store" change img --fraction 0.25 --seed "$seed" >/dev/null
        incr+=("$(dedup backup rbd img | secs)")
    done
    "$native" --store "$store" fill img2 --mib "$mib" --seed 1 >/dev/null
    "$native" --store "$store" change img2 --fraction 0.10 --seed 9 >/dev/null
    second=$(dedup backup rbd img2 | secs)
    chunks=$(du -sb "$repo/chunks" | cut -f1)
    files=$(find "$repo/chunks" -type f | wc -l)
    indexes=$(du -sb "$repo/indexes" | cut -f1)
    line="{\"chunk_size\":$size,\"image_mib\":$mib,\"chunk_bytes\":$chunks,\"chunk_files\":$files,\"index_bytes\":$indexes,\"full_secs\":$full,\"incremental_secs\":[${incr[0]},${incr[1]},${incr[2]}],\"second_image_secs\":$second}"
    echo "$line" | tee -a "$out"
    rm -rf "$store" "$repo"
done
echo "chunk-size.sh: $out" >&2

#!/usr/bin/env bash
# Issue 15's measurement: the chunk pipeline's candidates (compression, AEAD, keyed hash)
# timed over one sample natively and inside the sandbox, at several chunk sizes.
#
#   bench/codec.sh [SECS_PER_CANDIDATE]     (default 1)
#
# The sample (64 MiB) is what a VM disk holds, in thirds by kind: executables and
# libraries (/usr/lib, /usr/bin), text (/usr/share, /usr/include), and incompressible
# bytes (already-compressed media, encrypted files: /dev/urandom). Results go to
# bench/results/codec-DATE.jsonl, one line per (side, chunk size, candidate).
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-1}
target=${CARGO_TARGET_DIR:-$PWD/target}
work=$(mktemp -d /tmp/rbd-wasm-codec.XXXXXX)
trap 'rm -rf "$work"' EXIT

cargo build --release --quiet --target-dir "$target" -p rbd-wasm
cargo build --release --quiet --target-dir "$target" --manifest-path bench/Cargo.toml -p rbd-wasm-bench --bin codec-native
cargo build --release --quiet --target-dir "$target" --manifest-path bench/Cargo.toml --target wasm32-wasip2 -p codec-guest

third=$(( (64 << 20) / 3 ))
mkdir -p "$work/in" "$work/store"
# `head` ends each pipe early, on purpose.
(
    set +o pipefail
    find /usr/lib /usr/bin -type f -size +64k 2>/dev/null | sort | xargs cat 2>/dev/null | head -c "$third"
    find /usr/share /usr/include -type f \( -name '*.h' -o -name '*.txt' -o -name '*.html' -o -name '*.pm' -o -name '*.py' -o -name 'copyright' \) 2>/dev/null |
        sort | xargs cat 2>/dev/null | head -c "$third"
    head -c $(( (64 << 20) - 2 * third )) /dev/urandom
) >"$work/in/sample"
[[ $(stat -c %s "$work/in/sample") -eq $((64 << 20)) ]] || { echo "codec.sh: the sample is short" >&2; exit 1; }

out=bench/results/codec-$(date -u +%Y%m%dT%H%M%SZ).jsonl
mkdir -p bench/results
for chunk in 65536 1048576 4194304; do
    "$target/release/codec-native" "$work/in/sample" "$chunk" "$secs" |
        sed "s/^{/{\"side\":\"native\",\"chunk\":$chunk,/" | tee -a "$out"
    "$target/release/rbd-wasm" run --progress none --store "$work/store" --output-dir "$work/in" --output-read-only \
        --memory-mib 2048 "$target/wasm32-wasip2/release/codec_guest.wasm" -- /out/sample "$chunk" "$secs" |
        sed -e 's/^\[[^]]*\] //' -e "s/^{/{\"side\":\"sandbox\",\"chunk\":$chunk,/" | tee -a "$out"
done
echo "codec.sh: $out" >&2

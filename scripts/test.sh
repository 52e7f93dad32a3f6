#!/usr/bin/env bash
# The README's second command: the whole test suite. Installs what it needs, builds the
# guests, and runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-rust-deps.sh

echo "==> building the guests (wasm32-wasip2, release)" >&2
cargo build --release --target wasm32-wasip2 \
    -p hello -p snapshots -p conformance -p plain-command

echo "==> building the host" >&2
cargo build -p rbd-wasm --bin rbd-wasm

echo "==> running the tests" >&2
cargo test --workspace --exclude hello --exclude snapshots --exclude conformance \
    --exclude plain-command --exclude rbd-wasm-guest "$@"

#!/usr/bin/env bash
# What building rbd-wasm needs beyond the machine's Rust toolchain: the wasm32-wasip2
# target (guests are built for it). Idempotent.
set -euo pipefail

if ! rustup target list --installed | grep -qx wasm32-wasip2; then
    echo "install-rust-deps: adding the wasm32-wasip2 target" >&2
    rustup target add wasm32-wasip2
fi

#!/usr/bin/env bash
# The README's first command: install what is needed, build the host and the `hello`
# example, and run it on the embedded store (no Ceph cluster needed).
#
# The store is ./rbd-store in the working tree unless RBD_WASM_STORE says otherwise. The
# demo image `myimage` is removed first if an earlier quickstart left it, so this can be
# run again.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-rust-deps.sh

echo "==> building the host (rbd-wasm) and the hello job" >&2
cargo build --release --quiet -p rbd-wasm
cargo build --release --quiet --target wasm32-wasip2 -p hello

export RBD_WASM_STORE="${RBD_WASM_STORE:-$PWD/rbd-store}"
rbd_wasm=target/release/rbd-wasm
if "$rbd_wasm" image ls 2>/dev/null | grep -qx myimage; then
    "$rbd_wasm" image rm myimage
fi

echo "==> rbd-wasm run target/wasm32-wasip2/release/hello.wasm   (store: $RBD_WASM_STORE)" >&2
"$rbd_wasm" run target/wasm32-wasip2/release/hello.wasm

echo "==> rbd-wasm image info myimage" >&2
"$rbd_wasm" image info myimage

echo "==> rbd-wasm image read myimage --length 600" >&2
"$rbd_wasm" image read myimage --length 600
echo

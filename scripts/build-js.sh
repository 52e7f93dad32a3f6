#!/usr/bin/env bash
# Turn a JavaScript job into a component of the `ceph:rbd/job-world` world:
#   scripts/build-js.sh examples/js/hello.js target/js/hello.wasm
# The module exports `job` (see js/sdk/rbd-wasm.js: `export const job = job(fn)`); it and
# what it imports are bundled, and the componentizer (StarlingMonkey) binds the imports.
# WASI HTTP is disabled: the host gives jobs no network, so the component does not ask.
# Offline once scripts/install-js-deps.sh has run.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
if [[ $# -ne 2 ]]; then
    echo "usage: scripts/build-js.sh JOB.js OUT.wasm" >&2
    exit 2
fi
jco="$root/js/node_modules/.bin/jco"
if [[ ! -x $jco ]]; then
    echo "build-js: jco is not installed: run scripts/install-js-deps.sh" >&2
    exit 1
fi
mkdir -p "$(dirname "$2")"
"$jco" componentize "$1" --bundle --bundle-config "$root/js/bundle.config.js" \
    --wit "$root/wit" --world-name job-world --disable http fetch-event -o "$2"

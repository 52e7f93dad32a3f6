#!/usr/bin/env bash
# The toolchain of JavaScript jobs: jco and componentize-js at the versions js/package.json
# pins (with @bytecodealliance/preview2-shim held at 0.25.0, which jco 1.35 needs), from the
# npm registry, into js/node_modules. Idempotent: nothing is fetched when the installed
# tree matches the lock file.
set -euo pipefail
cd "$(dirname "$0")/../js"

if ! command -v npm >/dev/null; then
    echo "install-js-deps: npm is missing (Node.js 20 or newer is needed for JavaScript jobs)" >&2
    exit 1
fi
stamp=node_modules/.installed-from
want=$(sha256sum package.json package-lock.json)
if [[ -f $stamp && "$(cat "$stamp")" == "$want" ]]; then
    exit 0
fi
npm ci --no-audit --no-fund --loglevel=error
echo "$want" > "$stamp"

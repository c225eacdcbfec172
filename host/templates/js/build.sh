#!/usr/bin/env bash
# Build out/{{name}}.wasm, the component gateway.toml runs (made by
# `wasmgate new`; see README.md).
set -euo pipefail
cd "$(dirname "$0")"
command -v npm >/dev/null || {
    echo "build.sh: npm is missing: install Node.js 18 or later with npm (Debian: apt-get install nodejs npm)" >&2
    exit 1
}
# componentize-js and what it needs, at the versions package-lock.json pins.
[ -x node_modules/.bin/componentize-js ] ||
    npm install --prefer-offline --no-audit --no-fund --loglevel=error
mkdir -p out
# -d http fetch-event leaves out StarlingMonkey's wasi:http support: with it
# the component would import wasi:http, which this app does not use.
node_modules/.bin/componentize-js src/app.js --wit wit --world-name app \
    -d http fetch-event -o out/{{name}}.wasm

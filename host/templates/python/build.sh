#!/usr/bin/env bash
# Build out/{{name}}.wasm, the component gateway.toml runs (made by
# `wasmgate new`; see README.md).
set -euo pipefail
cd "$(dirname "$0")"
# Where the wasmgate repository's guests/install-tools puts the guest tools.
tools=${WASMGATE_GUEST_TOOLS:-$HOME/.cache/wasmgate/guest-tools}
if [ -x "$tools/venv/bin/componentize-py" ]; then
    componentize_py=$tools/venv/bin/componentize-py
elif command -v componentize-py >/dev/null; then
    componentize_py=componentize-py
else
    echo "build.sh: componentize-py is missing: run guests/install-tools python in the wasmgate" \
        "repository (it installs it into $tools/venv), or pip install componentize-py==0.25.1" >&2
    exit 1
fi
mkdir -p out
# componentize-py's CPython imports wasi:sockets; the gateway links them with
# every use refused, so the component runs with its full WASI.
"$componentize_py" -q -d wit -w app componentize -p src app -o out/{{name}}.wasm

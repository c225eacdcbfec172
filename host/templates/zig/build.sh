#!/usr/bin/env bash
# Build out/{{name}}.wasm, the component gateway.toml runs (made by
# `wasmgate new`; see README.md).
set -euo pipefail
cd "$(dirname "$0")"
# Where the wasmgate repository's guests/install-tools puts the guest tools.
tools=${WASMGATE_GUEST_TOOLS:-$HOME/.cache/wasmgate/guest-tools}
missing() {
    echo "build.sh: $1 is missing: run guests/install-tools zig in the wasmgate repository" \
        "(it installs it into $tools), or put it on PATH" >&2
    exit 1
}
guest_tool=$tools/bin/wasmgate-guest-tool
[ -x "$guest_tool" ] || guest_tool=$(command -v wasmgate-guest-tool) || missing wasmgate-guest-tool
# Zig 0.17 from PyPI (ziglang) in the guest tools' virtualenv, else zig on PATH.
if "$tools/venv/bin/python" -c "import ziglang" 2>/dev/null; then
    zig=("$tools/venv/bin/python" -m ziglang)
elif command -v zig >/dev/null; then
    zig=(zig)
else
    missing "Zig 0.17"
fi

mkdir -p out/bindings
# wit-bindgen's C bindings of the `app` world, with app.h made the Zig
# module `c` by translate-c (Zig 0.17 has no @cImport).
"$guest_tool" c-bindings wit app out/bindings
"${zig[@]}" translate-c -target wasm32-wasi -lc --cache-dir out/.zig-cache \
    -Iout/bindings out/bindings/app.h >out/bindings/app.zig
# A wasm32-wasi reactor with Zig's wasi-libc (the bindings' malloc and free)
# that calls nothing of WASI: the component needs no adapter.
(cd out && "${zig[@]}" build-exe -target wasm32-wasi -mexec-model=reactor -fno-entry -O ReleaseSmall -lc \
    --cache-dir .zig-cache --dep wasmgate -Mroot=../src/app.zig \
    --dep c -Mwasmgate=../src/wasmgate.zig \
    -Ibindings bindings/app.c bindings/app_component_type.o -Mc=bindings/app.zig \
    -femit-bin={{name}}.core.wasm)
"$guest_tool" new out/{{name}}.core.wasm -o out/{{name}}.wasm
# Fails if the component imports what the gateway does not link.
"$guest_tool" check-imports out/{{name}}.wasm

#!/usr/bin/env bash
# Build out/{{name}}.wasm, the component gateway.toml runs (made by
# `wasmgate new`; see README.md).
set -euo pipefail
cd "$(dirname "$0")"
# Where the wasmgate repository's guests/install-tools puts the guest tools.
tools=${WASMGATE_GUEST_TOOLS:-$HOME/.cache/wasmgate/guest-tools}
missing() {
    echo "build.sh: $1 is missing: run guests/install-tools c in the wasmgate repository$2" >&2
    exit 1
}
guest_tool=$tools/bin/wasmgate-guest-tool
[ -x "$guest_tool" ] || guest_tool=$(command -v wasmgate-guest-tool) ||
    missing wasmgate-guest-tool " (it installs it into $tools/bin), or put it on PATH"
command -v clang-19 >/dev/null ||
    missing clang-19 " (Debian: apt-get install clang-19 lld-19 wasi-libc libclang-rt-19-dev-wasm32)"

mkdir -p out/bindings
# wit-bindgen's C bindings of the `app` world: out/bindings/app.{h,c}.
"$guest_tool" c-bindings wit app out/bindings
# Debian's wasi-libc is WASI preview 1 only (wasm32-wasi), so the core
# module becomes a component through the preview-1 reactor adapter.
clang-19 --target=wasm32-wasi -mexec-model=reactor -O2 -Wall -Wextra -Werror -Iout/bindings -Isrc \
    src/*.c out/bindings/app.c out/bindings/app_component_type.o -o out/{{name}}.core.wasm
"$guest_tool" new out/{{name}}.core.wasm --adapter reactor -o out/{{name}}.wasm
# Fails if the component imports what the gateway does not link.
"$guest_tool" check-imports out/{{name}}.wasm

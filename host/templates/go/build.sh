#!/usr/bin/env bash
# Build out/{{name}}.wasm, the component gateway.toml runs (made by
# `wasmgate new`; see README.md).
set -euo pipefail
cd "$(dirname "$0")"
# Where the wasmgate repository's guests/install-tools puts the guest tools.
tools=${WASMGATE_GUEST_TOOLS:-$HOME/.cache/wasmgate/guest-tools}
missing() {
    echo "build.sh: $1 is missing: run guests/install-tools go in the wasmgate repository" \
        "(it installs it into $tools), or put it on PATH" >&2
    exit 1
}
guest_tool=$tools/bin/wasmgate-guest-tool
[ -x "$guest_tool" ] || guest_tool=$(command -v wasmgate-guest-tool) || missing wasmgate-guest-tool
go=$tools/venv/bin/go
[ -x "$go" ] || go=$(command -v go) || missing "Go 1.27.1 or later"

mkdir -p out
# The `app` world's bindings, by wit-bindgen-go: out/bindings is the module
# {{go_module}}/wit, out/go-pkg the package they import; go.mod replaces
# both with these folders. Go's gofmt formats them.
PATH="$("$go" env GOROOT)/bin:$PATH" "$guest_tool" go-bindings wit app {{go_module}}/wit out
# GOPROXY=off, GOTOOLCHAIN=local: nothing is downloaded; -mod=readonly: the
# build never rewrites go.mod. -checklinkname=0: the runtime package's
# cabi_realloc reaches runtime.sbrk with go:linkname.
GOOS=wasip1 GOARCH=wasm GOPROXY=off GOTOOLCHAIN=local GOFLAGS=-mod=readonly \
    "$go" build -buildmode=c-shared -trimpath -ldflags=-checklinkname=0 -o out/{{name}}.core.wasm .
"$guest_tool" embed out/{{name}}.core.wasm wit app -o out/{{name}}.embedded.wasm
# The WASI preview-1 reactor adapter makes the core module a component.
"$guest_tool" new out/{{name}}.embedded.wasm --adapter reactor -o out/{{name}}.wasm
# Fails if the component imports what the gateway does not link.
"$guest_tool" check-imports out/{{name}}.wasm

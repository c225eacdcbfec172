module {{go_module}}

go 1.27.1

// Both are generated at build time (build.sh, with wasmgate-guest-tool
// go-bindings): the `app` world's bindings by wit-bindgen-go, and the Go
// package they import, as the wit-bindgen-go crate ships it. Nothing comes
// from the Go module proxy (GOPROXY=off).
require (
	go.bytecodealliance.org/pkg v0.4.0
	{{go_module}}/wit v0.0.0
)

replace (
	go.bytecodealliance.org/pkg => ./out/go-pkg
	{{go_module}}/wit => ./out/bindings
)

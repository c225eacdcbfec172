//! `wasmgate-runtime-only`: the same program as `wasmgate`, built without
//! the compiler (cranelift). It is smaller and runs only components
//! precompiled with `wasmgate compile --target TRIPLE`.

fn main() -> std::process::ExitCode {
    wasmgate::commands::main()
}

//! The `wasmgate` binary; everything it does is in `wasmgate::commands`.

fn main() -> std::process::ExitCode {
    wasmgate::commands::main()
}

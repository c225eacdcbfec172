//! Project tasks, so that the README's commands work the same everywhere:
//!
//! - `cargo xtask demo`: build the guests and the host, run the thermostat demo.
//! - `cargo xtask test [ARGS]`: build the guests, run the whole test suite
//!   (`cargo test --workspace ARGS`).
//! - `cargo xtask guests`: build the guests only.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let result = match args.first().map(String::as_str) {
        Some("demo") => guests(&root).and_then(|()| demo(&root, &args[1..])),
        Some("test") => guests(&root).and_then(|()| test(&root, &args[1..])),
        Some("guests") => guests(&root),
        _ => Err("usage: cargo xtask demo | test [CARGO TEST ARGS] | guests".to_string()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: &mut Command) -> Result<(), String> {
    let status = command
        .status()
        .map_err(|e| format!("cannot run {command:?}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{command:?} failed ({status})"))
    }
}

fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

fn guests(root: &Path) -> Result<(), String> {
    run(Command::new(root.join("guests/build")).current_dir(root))
}

fn demo(root: &Path, extra: &[String]) -> Result<(), String> {
    let config = root.join("examples/thermostat/gateway.toml");
    eprintln!(
        "xtask: running the thermostat demo ({}); stop it with Ctrl-C",
        config.display()
    );
    run(cargo()
        .current_dir(root)
        .args([
            "run",
            "--quiet",
            "--package",
            "wasmgate",
            "--",
            "run",
            "--config",
        ])
        .arg(&config)
        .args(extra))
}

fn test(root: &Path, extra: &[String]) -> Result<(), String> {
    run(cargo()
        .current_dir(root)
        .args(["test", "--workspace"])
        .args(extra))
}

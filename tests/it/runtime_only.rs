//! The runtime-only build (`--no-default-features`: no compiler, no
//! embedded broker) runs an artifact precompiled with `wasmgate compile`,
//! and refuses a plain component, or a config that asks for the embedded
//! broker, with a message that says what to do.

use crate::common::{Gateway, guest, model, root, run_to_end, wasmgate};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The runtime-only binary. It is its own package, built on its own (by
/// `cargo xtask test`, before the tests) so that cargo does not unify the
/// compiler back in; no test runs cargo itself.
fn runtime_only() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"));
    let binary = target.join("debug/wasmgate-runtime-only");
    assert!(
        binary.exists(),
        "{} is missing: `cargo xtask test` builds it (cargo build -p wasmgate-runtime-only)",
        binary.display()
    );
    binary
}

/// `BINARY run --config CONFIG`, which must exit (it refuses the config)
/// within a minute: a binary that runs on instead is stale, built before
/// the refusal existed, and the test says so rather than hang.
fn refused_within(binary: &Path, config: &Path) -> std::process::Output {
    let mut child = Command::new(binary)
        .args(["run", "--config"])
        .arg(config)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("runs");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while child.try_wait().expect("wait").is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{} ran on for 60 s instead of refusing {}: is it stale? cargo build -p wasmgate-runtime-only",
                binary.display(),
                config.display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().expect("output")
}

#[test]
fn the_runtime_only_build_runs_a_precompiled_artifact_and_refuses_a_plain_component() {
    let gw = Gateway::new();
    let artifact = gw.dir.path().join("app.cwasm");
    let (ok, out, err) = wasmgate(&[
        "compile",
        guest("storage-roundtrip").to_str().expect("path"),
        "--output",
        artifact.to_str().expect("path"),
    ]);
    assert!(ok && out.contains("for this machine"), "{out}{err}");

    let gw = gw.app(
        "counter",
        &artifact,
        &model("counter"),
        "tick_interval_ms = 50",
    );
    gw.write_config();
    let binary = runtime_only();
    let mut run = crate::common::Running::spawn_binary(&binary, &gw.config_path(), &[]);
    let app = run.wait_running("counter", Duration::from_secs(60));
    assert_eq!(app["load"], "precompiled", "{app}");
    run.wait_for("counter=3 roundtrip=true", Duration::from_secs(30));
    assert!(run.stop().success());

    // A plain component needs a compiler.
    let plain = Gateway::new().app(
        "counter",
        &guest("storage-roundtrip"),
        &model("counter"),
        "",
    );
    plain.write_config();
    let out = refused_within(&binary, &plain.config_path());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("runtime-only") && err.contains("wasmgate compile"),
        "{err}"
    );

    // No embedded broker in it: a config that asks for one is refused,
    // saying what to do instead.
    let embedded = Gateway::new().section("[cloud]\nembedded = true").app(
        "counter",
        &artifact,
        &model("counter"),
        "",
    );
    embedded.write_config();
    let out = refused_within(&binary, &embedded.config_path());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("without the embedded broker") && err.contains("url of a broker"),
        "{err}"
    );

    // The full build loads the same artifact too.
    let (ok, _, err) = run_to_end(&["status", "--config"], &gw.config_path());
    assert!(ok, "{err}");
}

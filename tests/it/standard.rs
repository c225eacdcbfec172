//! WASI's standard interfaces inside a wasmgate app (`wit/standard.wit`):
//! `wasi:config/store` reads the app's own config, `wasi:logging` writes to
//! the app's log under the same rate limit as `log`, and `wasi:keyvalue` is
//! the app's storage, under its quota. The guests are built
//! from source against the upstream WIT in `wit/deps`: in Rust with
//! wit-bindgen, and in JavaScript with componentize-js.

use crate::common::{Gateway, guest, model, thermostat_in};
use std::path::Path;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(30);

/// The app reads its config through `wasi:config` (the versions Spin and
/// wasmCloud import) and finds exactly what `init` was given; its
/// `wasi:logging` lines reach the app's log, `critical` as an error.
fn reads_its_config_and_logs(component: &Path, keyvalue: &str) {
    let gw = Gateway::new().app(
        "standard",
        component,
        &model("counter"),
        "[app.config]\nunit = \"celsius\"\nlocation = \"hall\"\n",
    );
    let mut run = gw.start();
    run.wait_for(
        "standard: config unit=celsius keys=2 same-as-init=true absent=true",
        T,
    );
    let critical = run.wait_for("standard: a critical line", T);
    assert!(critical.contains("ERROR"), "{critical}");
    assert!(critical.contains("app=standard"), "{critical}");
    run.wait_for(keyvalue, T);
    let apps = gw.apps();
    let app = &apps[0];
    assert_eq!(app["state"], "running", "{app}");
    assert_eq!(app["traps"], 0, "{app}");
    assert!(run.stop().success());
}

#[test]
fn a_rust_component_built_against_the_upstream_wit_reads_its_config_and_logs() {
    reads_its_config_and_logs(
        &guest("standard-interfaces"),
        "keyvalue greeting=hi visits=1 visits-draft=3 own-visits=3 exists=true keys=greeting,visits \
         batch=true cas-ok=true cas-conflict=true no-such-store=true big=accepted",
    );
}

#[test]
fn a_javascript_component_built_against_the_upstream_wit_reads_its_config_and_logs() {
    let component = thermostat_in("js").with_file_name("standard.wasm");
    reads_its_config_and_logs(
        &component,
        "keyvalue greeting=hello visits=1 keys=greeting,visits",
    );
}

/// A flood through `wasi:logging` meets the app's log rate limit (a burst
/// of 1000 lines, then 200 a second) exactly as one through `log` does:
/// every line is either kept or counted as dropped.
#[test]
fn wasi_logging_is_held_to_the_apps_log_rate_limit() {
    let gw = Gateway::new().app(
        "standard",
        &guest("standard-interfaces"),
        &model("counter"),
        "[app.config]\nflood = \"5000\"\n",
    );
    let mut run = gw.start();
    let started = Instant::now();
    run.wait_running("standard", T);
    let deadline = started + T;
    let (kept, dropped) = loop {
        let kept = run.count("standard flood line") as u64;
        let dropped = gw.apps()[0]["capabilities"]["log"]["dropped"]
            .as_u64()
            .expect("the log unit reports its drops");
        if kept + dropped >= 5000 || Instant::now() > deadline {
            break (kept, dropped);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(kept + dropped, 5000, "{kept} kept, {dropped} dropped");
    let seconds = started.elapsed().as_secs() + 1;
    assert!(
        kept <= 1000 + 200 * seconds,
        "{kept} lines kept in {seconds} s"
    );
    assert!(dropped >= 3000, "{dropped} dropped");
    assert!(run.stop().success());
}

/// What `wasi:keyvalue` stores is the app's storage: it outlives a restart,
/// and the app's quota refuses through it what it refuses through
/// `storage`, with the same reason.
#[test]
fn wasi_keyvalue_is_the_apps_durable_storage_under_its_quota() {
    let gw = Gateway::new().app(
        "standard",
        &guest("standard-interfaces"),
        &model("counter"),
        "storage_quota_kib = 4\n[app.config]\nbig = \"8192\"\n",
    );
    let mut run = gw.start();
    let line = run.wait_for("keyvalue greeting=hi visits=1 visits-draft=3", T);
    assert!(
        line.contains("big=limit: storage quota of 4096 bytes would be exceeded"),
        "{line}"
    );
    assert!(run.stop().success());
    let stored = gw.count("SELECT COUNT(*) FROM kv WHERE app = 'standard' AND key = 'visits'");
    assert_eq!(stored, 1);

    let mut run = gw.start();
    run.wait_for(
        "keyvalue greeting=hi visits=4 visits-draft=6 own-visits=6",
        T,
    );
    assert!(run.stop().success());
}

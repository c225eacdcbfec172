//! `wasmgate new`: for every guest language, an app made by the real binary
//! in a temporary directory (outside this repository), built with the one
//! command its README documents, and run with the one its README gives
//! (`wasmgate dev`, with the embedded broker), until the cloud sees what it
//! reports, as the README's `wasmgate cloud twin get` shows it: its first
//! tick, a desired `setpoint` it takes, and, after a clean restart, the room
//! temperature `save` handed to the next instance.
//!
//! The builds find the guest tools where guests/install-tools puts them (CI
//! runs it first); a missing tool fails the test with build.sh's message,
//! which names it. And `new` refuses a directory that is not empty and a
//! name that is not an app name, writing nothing.

use crate::common::{Running, binary, listing, wasmgate};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The first start compiles the component: Python and JavaScript components
/// take many seconds on a busy 2-core machine.
const START: Duration = Duration::from_secs(300);
/// Waits for reports once the app runs.
const T: Duration = Duration::from_secs(30);

/// Where `wasmgate dev` puts the embedded broker when gateway.toml has no
/// `[cloud]`, and where `wasmgate cloud` looks by default.
const DEV_BROKER: &str = "mqtt://127.0.0.1:18830";

/// One `wasmgate dev` at a time: each takes the embedded broker's port.
static DEV_BROKER_PORT: Mutex<()> = Mutex::new(());

/// `wasmgate new NAME --lang LANG --dir PARENT`; the app's directory.
fn new_app(parent: &Path, name: &str, lang: &str) -> PathBuf {
    let parent_arg = parent.to_str().expect("a UTF-8 path");
    let (ok, out, err) = wasmgate(&["new", name, "--lang", lang, "--dir", parent_arg]);
    assert!(ok, "wasmgate new {name} --lang {lang} failed: {err}");
    let dir = parent.join(name);
    assert!(
        out.contains(&dir.display().to_string()),
        "wasmgate new says where the app is: {out}"
    );
    dir
}

/// The lines of the code block under `## HEADING` in the app's README.
fn readme_block(app: &Path, heading: &str) -> Vec<String> {
    let readme = std::fs::read_to_string(app.join("README.md")).expect("the app's README.md");
    let section = readme
        .split(&format!("\n## {heading}\n"))
        .nth(1)
        .unwrap_or_else(|| panic!("the README has no {heading} section:\n{readme}"));
    let block = section
        .split("```sh\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .unwrap_or_else(|| panic!("the README's {heading} section has no sh block"));
    block.lines().map(str::to_string).collect()
}

/// The README's one build command, run in the app's directory.
fn build(app: &Path, lang: &str) {
    let commands = readme_block(app, "Build");
    assert_eq!(
        commands.len(),
        1,
        "{lang}: the README documents one build command: {commands:?}"
    );
    let started = Instant::now();
    let out = Command::new("bash")
        .arg("-c")
        .arg(&commands[0])
        .current_dir(app)
        .output()
        .expect("bash runs");
    assert!(
        out.status.success(),
        "{lang}: `{}` failed (CI installs the guest tools with guests/install-tools):\n{}{}",
        commands[0],
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!(
        "{lang}: `{}` took {:.1} s",
        commands[0],
        started.elapsed().as_secs_f64()
    );
}

/// The gateway id and the component path of the app's gateway.toml.
fn gateway_toml(app: &Path) -> (String, PathBuf) {
    let text = std::fs::read_to_string(app.join("gateway.toml")).expect("the app's gateway.toml");
    let config: toml::Table = toml::from_str(&text).expect("gateway.toml is TOML");
    let id = config["gateway"]["id"].as_str().expect("gateway.id");
    let component = config["app"][0]["component"]
        .as_str()
        .expect("the app's component");
    (id.to_string(), app.join(component))
}

/// Start the README's run command in the app's directory.
fn run(app: &Path) -> Running {
    let commands = readme_block(app, "Run");
    assert_eq!(commands.len(), 1, "one run command: {commands:?}");
    let words: Vec<&str> = commands[0].split_whitespace().collect();
    assert_eq!(words[0], "wasmgate", "{commands:?}");
    let mut command = Command::new(binary());
    command.args(&words[1..]).current_dir(app);
    Running::spawn_command(command)
}

/// The attributes the device last reported, as `wasmgate cloud twin get`
/// prints them; `None` while there is no broker or no report.
fn reported(target: &str) -> Option<serde_json::Map<String, Value>> {
    let (ok, out, _) = wasmgate(&[
        "cloud",
        "--broker",
        DEV_BROKER,
        "--timeout",
        "2",
        "twin",
        "get",
        target,
    ]);
    if !ok {
        return None;
    }
    let state: Value = serde_json::from_str(&out).ok()?;
    state["attributes"].as_object().cloned()
}

/// Wait until the device reports attributes `check` accepts; return them.
fn wait_reported(
    run: &mut Running,
    target: &str,
    timeout: Duration,
    what: &str,
    check: impl Fn(&serde_json::Map<String, Value>) -> bool,
) -> serde_json::Map<String, Value> {
    let deadline = Instant::now() + timeout;
    let mut last = None;
    loop {
        if let Some(attributes) = reported(target) {
            if check(&attributes) {
                return attributes;
            }
            last = Some(attributes);
        }
        assert!(
            !run.exited(),
            "wasmgate dev exited before {target} reported {what}"
        );
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {target} to report {what}; last report: {last:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn number(attributes: &serde_json::Map<String, Value>, name: &str) -> f64 {
    attributes[name]
        .as_f64()
        .unwrap_or_else(|| panic!("{name} is not a number: {attributes:?}"))
}

/// Make, build and run an app in `lang`, as its README says.
fn new_app_builds_and_runs(lang: &str) {
    let started = Instant::now();
    let parent = tempfile::tempdir().expect("tempdir");
    // A dot and a dash: the name is not a crate, npm or Go module name as it is.
    let name = format!("{lang}.room-1");
    // The parent directory does not exist yet: `new` makes it.
    let app = new_app(&parent.path().join("apps"), &name, lang);
    build(&app, lang);
    let (gateway, component) = gateway_toml(&app);
    assert!(
        component.exists(),
        "{lang}: the build wrote no {}",
        component.display()
    );
    let target = format!("{gateway}/{name}");

    let _port = DEV_BROKER_PORT.lock().unwrap_or_else(|e| e.into_inner());
    let mut gateway_run = run(&app);
    let first = wait_reported(&mut gateway_run, &target, START, "its first tick", |a| {
        a["ticks"].as_i64() >= Some(1)
    });
    assert_eq!(first["setpoint"].as_f64(), Some(21.0), "{lang}: {first:?}");

    // The cloud changes the setpoint, as the README shows; the app takes it.
    let (ok, out, err) = wasmgate(&[
        "cloud",
        "--broker",
        DEV_BROKER,
        "twin",
        "set",
        &target,
        "setpoint=23.5",
    ]);
    assert!(ok, "{lang}: the setpoint was not accepted: {out}{err}");
    let before_stop = wait_reported(
        &mut gateway_run,
        &target,
        T,
        "setpoint 23.5 and three ticks",
        |a| a["setpoint"].as_f64() == Some(23.5) && a["ticks"].as_i64() >= Some(3),
    );
    assert!(
        gateway_run.stop().success(),
        "{lang}: the gateway did not stop cleanly"
    );

    // A clean stop called `save`; the next instance's `init` takes the room
    // temperature up instead of the config's 18 °C, from which it would
    // reach exactly 18 + 0.5 per tick while it heats.
    let mut gateway_run = run(&app);
    let ticks_before = before_stop["ticks"].as_i64().expect("ticks");
    let after = wait_reported(
        &mut gateway_run,
        &target,
        START,
        "a tick of the restarted app",
        |a| a["ticks"].as_i64().is_some_and(|t| t < ticks_before),
    );
    let ticks = after["ticks"].as_i64().expect("ticks") as f64;
    assert!(
        number(&after, "temperature") > 18.0 + 0.5 * ticks,
        "{lang}: the room temperature was not handed over: {before_stop:?} before the restart, {after:?} after"
    );
    assert!(
        gateway_run.stop().success(),
        "{lang}: the gateway did not stop cleanly"
    );
    eprintln!(
        "{lang}: made, built and run in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn new_app_in_rust_builds_and_runs() {
    new_app_builds_and_runs("rust");
}

#[test]
fn new_app_in_javascript_builds_and_runs() {
    new_app_builds_and_runs("js");
}

#[test]
fn new_app_in_python_builds_and_runs() {
    new_app_builds_and_runs("python");
}

#[test]
fn new_app_in_c_builds_and_runs() {
    new_app_builds_and_runs("c");
}

#[test]
fn new_app_in_go_builds_and_runs() {
    new_app_builds_and_runs("go");
}

#[test]
fn new_app_in_zig_builds_and_runs() {
    new_app_builds_and_runs("zig");
}

#[test]
fn new_refuses_a_directory_that_is_not_empty_and_a_name_that_is_not_an_app_name() {
    let parent = tempfile::tempdir().expect("tempdir");
    let parent_arg = parent.path().to_str().expect("a UTF-8 path");
    let occupied = parent.path().join("room");
    std::fs::create_dir(&occupied).expect("mkdir");
    std::fs::write(occupied.join("notes.txt"), "mine").expect("write");

    let (ok, _, err) = wasmgate(&["new", "room", "--lang", "rust", "--dir", parent_arg]);
    assert!(!ok, "new wrote into a directory that is not empty");
    assert!(
        err.contains(&format!("{} exists and is not empty", occupied.display())),
        "{err}"
    );
    assert_eq!(listing(&occupied), ["notes.txt"]);
    assert_eq!(
        std::fs::read_to_string(occupied.join("notes.txt")).expect("read"),
        "mine"
    );

    let too_long = "x".repeat(65);
    for name in ["my room", "../room", "a/b", "..", "température", &too_long] {
        let (ok, _, err) = wasmgate(&["new", name, "--lang", "go", "--dir", parent_arg]);
        assert!(!ok, "new took the name {name:?}");
        assert!(
            err.contains(&format!("{name:?} is not a valid name")),
            "{name:?}: {err}"
        );
    }

    // An unknown language is refused, naming the ones there are.
    let (ok, _, err) = wasmgate(&["new", "room-2", "--lang", "cobol", "--dir", parent_arg]);
    assert!(!ok);
    for lang in ["rust", "js", "python", "c", "go", "zig"] {
        assert!(err.contains(lang), "{err}");
    }

    // Nothing was written beside the directory that was there.
    assert_eq!(listing(parent.path()), ["room"]);
}

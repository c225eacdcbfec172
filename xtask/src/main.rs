//! Project tasks, so that the README's commands work the same everywhere:
//!
//! - `cargo xtask demo`: build the guests and the host, run the thermostat
//!   demo (a gateway with its embedded MQTT broker) and the server side
//!   (`wasmgate cloud serve` on a SQLite file, its API on 127.0.0.1:8640),
//!   and act as the operator next to it: watch what arrives, change the
//!   setpoint, call an action.
//! - `cargo xtask test [ARGS]`: install what the tests need and is missing
//!   (Mosquitto, PostgreSQL and RabbitMQ from apt; the guest languages' tools through
//!   `guests/install-tools`; cargo-fuzz), build the guests and the
//!   runtime-only binary, run the whole test suite (`cargo test --workspace
//!   ARGS`), then, when no ARGS narrow it, every fuzz target for a few
//!   seconds (`fuzz/run --dev 10`).
//! - `cargo xtask guests`: build the guests only.
//! - `cargo xtask deb`: build the release binary and the Debian package
//!   (`packaging/build-deb`), in target/debian.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode};
use std::time::{Duration, Instant};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // `cargo run` says at run time where xtask's manifest is. The path baked
    // in at build time may be another checkout's: with a shared
    // CARGO_TARGET_DIR, cargo does not rebuild xtask for a checkout whose
    // files are older than the build, and would run the other tree's tests.
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    let root = manifest_dir
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let result = match args.first().map(String::as_str) {
        // The demo runs Rust guests only: it needs nothing but Rust.
        Some("demo") => guests(&root, &["rust"]).and_then(|()| demo(&root)),
        Some("test") => setup(&root)
            .and_then(|()| guests(&root, &[]))
            .and_then(|()| test(&root, &args[1..]))
            .and_then(|()| {
                if args.len() > 1 {
                    Ok(())
                } else {
                    fuzz(&root, FUZZ_SECONDS)
                }
            }),
        Some("setup") => setup(&root),
        Some("guests") => guests(&root, &[]),
        Some("deb") => deb(&root),
        _ => Err(
            "usage: cargo xtask demo | test [CARGO TEST ARGS] | setup | guests | deb".to_string(),
        ),
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

/// `guests/build [LANGUAGES]` (every language if none is named).
fn guests(root: &Path, languages: &[&str]) -> Result<(), String> {
    run(Command::new(root.join("guests/build"))
        .args(languages)
        .current_dir(root))
}

fn has_mosquitto() -> bool {
    ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
        .iter()
        .any(|p| Path::new(p).exists())
        || Command::new("mosquitto").arg("-h").output().is_ok()
}

/// Whether a PostgreSQL server (initdb, postgres) is installed where
/// Debian puts it: the `serve` tests start their own from initdb.
fn has_postgres() -> bool {
    std::fs::read_dir("/usr/lib/postgresql")
        .map(|versions| {
            versions
                .filter_map(Result::ok)
                .any(|v| v.path().join("bin/initdb").exists())
        })
        .unwrap_or(false)
}

/// Install what the tests need and is missing: Mosquitto, PostgreSQL,
/// RabbitMQ, systemd-analyze and man (apt), the guest languages' tools (`guests/install-tools`, which says
/// what it does), the protocol peers (`tests/peers/install`) and the
/// browser the console's tests drive (`tests/browser/install`).
fn setup(root: &Path) -> Result<(), String> {
    let mut packages = Vec::new();
    if !has_mosquitto() {
        eprintln!("xtask: the tests need the Mosquitto MQTT broker: apt-get install mosquitto");
        packages.push("mosquitto");
    }
    // The MQTT 5 tests read message properties with mosquitto_sub and send
    // requests with response topics with mosquitto_pub.
    if Command::new("mosquitto_sub")
        .arg("--help")
        .output()
        .is_err()
    {
        eprintln!(
            "xtask: the MQTT 5 tests need mosquitto_sub and mosquitto_pub: apt-get install mosquitto-clients"
        );
        packages.push("mosquitto-clients");
    }
    if !has_postgres() {
        eprintln!("xtask: the serve tests need a PostgreSQL server: apt-get install postgresql");
        packages.push("postgresql");
    }
    // Broker failover is tested against a real three-node cluster.
    if !Path::new("/usr/lib/rabbitmq/bin/rabbitmq-server").exists() {
        eprintln!(
            "xtask: the failover test needs a RabbitMQ cluster with its MQTT plugin: apt-get install rabbitmq-server"
        );
        packages.push("rabbitmq-server");
    }
    // The service unit's test checks it with `systemd-analyze verify`,
    // which reads the man pages its Documentation= names with `man`.
    if !Path::new("/usr/bin/systemd-analyze").exists() {
        eprintln!("xtask: the service unit's test needs systemd-analyze: apt-get install systemd");
        packages.push("systemd");
    }
    if !Path::new("/usr/bin/man").exists() {
        eprintln!("xtask: the service unit's test needs man: apt-get install man-db");
        packages.push("man-db");
    }
    // cargo-deb reads the binary's library dependencies with dpkg-shlibdeps.
    if !Path::new("/usr/bin/dpkg-shlibdeps").exists() {
        eprintln!(
            "xtask: the Debian package's test needs dpkg-shlibdeps: apt-get install dpkg-dev"
        );
        packages.push("dpkg-dev");
    }
    if !packages.is_empty() {
        let root_user = Command::new("id")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
            .unwrap_or(false);
        let apt = |args: &[&str]| {
            let mut command = if root_user {
                Command::new("apt-get")
            } else {
                let mut sudo = Command::new("sudo");
                sudo.arg("apt-get");
                sudo
            };
            command.env("DEBIAN_FRONTEND", "noninteractive").args(args);
            run(&mut command)
        };
        apt(&["update", "-qq"])?;
        let mut install = vec!["install", "-y", "-qq"];
        install.extend(&packages);
        apt(&install)?;
    }
    cargo_tool("cargo-fuzz", "fuzz", CARGO_FUZZ_VERSION, "the fuzz targets")?;
    cargo_tool(
        "cargo-deb",
        "deb",
        CARGO_DEB_VERSION,
        "the Debian package and its test",
    )?;
    run(Command::new(root.join("guests/install-tools")).current_dir(root))?;
    // The protocol peers the integration tests talk to (pymodbus, ...).
    run(Command::new(root.join("tests/peers/install")).current_dir(root))?;
    // The console's browser tests: Debian's chromium and playwright-core.
    run(Command::new(root.join("tests/browser/install")).current_dir(root))
}

/// How long `cargo xtask test` runs each fuzz target: long enough to catch
/// a parser that panics on what the seeds become after a few mutations.
const FUZZ_SECONDS: u32 = 10;

/// cargo-fuzz, pinned; it runs on the stable toolchain with `-s none`.
const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// The short run: an unoptimised build (`fuzz/run --dev`), which takes
/// less than half the release build's time and checks overflow too.
fn fuzz(root: &Path, seconds: u32) -> Result<(), String> {
    run(Command::new(root.join("fuzz/run"))
        .args(["--dev", &seconds.to_string()])
        .current_dir(root))
}

/// cargo-deb, pinned: `cargo xtask deb` and the package's test use it.
const CARGO_DEB_VERSION: &str = "3.8.0";

/// Install the cargo subcommand `crate_name` at `version` (from crates.io,
/// with its own lock file) unless `cargo SUBCOMMAND --version` already
/// says that version.
fn cargo_tool(crate_name: &str, subcommand: &str, version: &str, why: &str) -> Result<(), String> {
    let installed = cargo()
        .args([subcommand, "--version"])
        .output()
        .map(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains(version))
        .unwrap_or(false);
    if installed {
        return Ok(());
    }
    eprintln!("xtask: {why} need {crate_name} {version}: cargo install");
    run(cargo().args(["install", crate_name, "--locked", "--version", version]))
}

/// The Debian package of a release build: target/debian/wasmgate_*.deb.
fn deb(root: &Path) -> Result<(), String> {
    run(cargo()
        .current_dir(root)
        .args(["build", "--release", "--package", "wasmgate"]))?;
    run(Command::new(root.join("packaging/build-deb")).current_dir(root))
}

fn test(root: &Path, extra: &[String]) -> Result<(), String> {
    // The runtime-only binary is built on its own: built with the rest of
    // the workspace, cargo would unify the compiler back into it. Its test
    // (tests/it/runtime_only.rs) runs the binary this leaves in target/debug,
    // so the test run excludes the package, which would rebuild it unified.
    run(cargo()
        .current_dir(root)
        .args(["build", "--quiet", "-p", "wasmgate-runtime-only"]))?;
    run(cargo()
        .current_dir(root)
        .args(["test", "--workspace", "--exclude", "wasmgate-runtime-only"])
        .args(extra))
}

fn demo(root: &Path) -> Result<(), String> {
    run(cargo()
        .current_dir(root)
        .args(["build", "--quiet", "--package", "wasmgate"]))?;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let wasmgate = target.join("debug/wasmgate");
    let config = root.join("examples/thermostat/gateway.toml");
    say(&format!(
        "starting the gateway: wasmgate run --config {}",
        config.display()
    ));
    let mut gateway = Command::new(&wasmgate)
        .args(["run", "--config"])
        .arg(&config)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", wasmgate.display()))?;

    let database = target.join("demo-serve.db");
    let (mut watch, mut serve) = match operate(&wasmgate, &mut gateway, &database) {
        Ok(children) => children,
        Err(e) => {
            let _ = gateway.kill();
            return Err(e);
        }
    };
    let status = gateway.wait().map_err(|e| e.to_string());
    for child in [&mut watch, &mut serve] {
        let _ = child.kill();
        let _ = child.wait();
    }
    let status = status?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("the gateway exited with {status}"))
    }
}

/// Where the demo's `wasmgate cloud serve` answers.
const DEMO_API: &str = "127.0.0.1:8640";

/// The operator's side of the demo, next to the running gateway: the
/// server side on a SQLite file, then the operator's commands. Returns the
/// `watch` and `serve` processes, which run until the gateway stops.
fn operate(
    wasmgate: &Path,
    gateway: &mut Child,
    database: &Path,
) -> Result<(Child, Child), String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect("127.0.0.1:18830").is_err() {
        if let Ok(Some(status)) = gateway.try_wait() {
            return Err(format!("the gateway stopped ({status}); see its log above"));
        }
        if Instant::now() > deadline {
            return Err("the gateway's embedded broker did not come up on 127.0.0.1:18830".into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    say(&format!(
        "server side: wasmgate cloud serve --database sqlite://{}   (keeps what the fleet sends; API on http://{DEMO_API}/api/v1)",
        database.display()
    ));
    let serve = Command::new(wasmgate)
        .args(["cloud", "serve", "--listen", DEMO_API, "--database"])
        .arg(format!("sqlite://{}", database.display()))
        .spawn()
        .map_err(|e| e.to_string())?;
    say("operator: wasmgate cloud watch demo-gateway   (what the cloud receives)");
    let watch = Command::new(wasmgate)
        .args(["cloud", "watch", "demo-gateway"])
        .spawn()
        .map_err(|e| e.to_string())?;
    std::thread::sleep(Duration::from_secs(4));
    say("operator: wasmgate cloud twin set demo-gateway/thermostat setpoint=23.5");
    let _ = Command::new(wasmgate)
        .args([
            "cloud",
            "twin",
            "set",
            "demo-gateway/thermostat",
            "setpoint=23.5",
        ])
        .status();
    std::thread::sleep(Duration::from_secs(3));
    say("operator: wasmgate cloud call demo-gateway/thermostat reset");
    let _ = Command::new(wasmgate)
        .args(["cloud", "call", "demo-gateway/thermostat", "reset"])
        .status();
    std::thread::sleep(Duration::from_secs(1));
    match http_get(DEMO_API, "/api/v1/stats") {
        Ok(stats) => say(&format!(
            "server side: GET http://{DEMO_API}/api/v1/stats -> {stats}"
        )),
        Err(e) => say(&format!("server side: the API did not answer: {e}")),
    }
    say(&format!(
        "the web console: open http://{DEMO_API}/console/ in a browser (the fleet, the thermostat's twin, chart and reset button)"
    ));
    say(&format!(
        "the gateway keeps running; try more `wasmgate cloud ...` commands in another terminal, or the API: curl http://{DEMO_API}/api/v1/gateways (docs/server.md); Ctrl-C stops it",
    ));
    Ok((watch, serve))
}

/// A plain HTTP/1.1 GET on loopback (the demo's one request needs no
/// client library): the body.
fn http_get(address: &str, path: &str) -> Result<String, String> {
    use std::io::{Read, Write};
    let mut stream = TcpStream::connect(address).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .map_err(|e| e.to_string())?;
    answer
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.trim().to_string())
        .ok_or_else(|| "no HTTP answer".to_string())
}

fn say(line: &str) {
    eprintln!("\n==> {line}\n");
}

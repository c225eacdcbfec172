//! Test harness: builds the real guests, writes a real `gateway.toml`, starts
//! the real `wasmgate` binary, and reads its log and its SQLite file.
//!
//! Each test binary includes this module; not every binary uses every helper.
#![allow(dead_code)]

pub mod browser;
pub mod mqtt;
pub mod peers;
pub mod rabbitmq;
pub mod serve;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Whether the tests run as root (then servers that refuse root, such as
/// PostgreSQL, run as their own user).
pub fn is_root() -> bool {
    wasmgate::permissions::is_root()
}

/// The repository root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("host/ has a parent")
        .to_path_buf()
}

/// The wasmgate binary cargo built for this test run.
pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_wasmgate"))
}

/// Build the guests (once per test binary; cargo serialises concurrent
/// builds) and return the path of the named component.
pub fn guest(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let status = Command::new(root().join("guests/build"))
            .arg("rust")
            .status()
            .expect("guests/build runs");
        assert!(status.success(), "guests/build failed");
    });
    let path = root()
        .join("guests/rust/target/wasm32-wasip2/release")
        .join(format!("{}.wasm", name.replace('-', "_")));
    assert!(path.exists(), "no guest component at {}", path.display());
    path
}

/// A device model used by the tests, from tests/models.
pub fn model(name: &str) -> PathBuf {
    root().join("tests/models").join(format!("{name}.json"))
}

/// A gateway under test: its own temporary directory with config and data.
pub struct Gateway {
    pub dir: tempfile::TempDir,
    /// `[gateway] id` (`test-gw` unless [`with_id`](Gateway::with_id) says).
    id: String,
    apps: Vec<String>,
    gateway_extra: String,
    sections: Vec<String>,
}

impl Gateway {
    pub fn new() -> Gateway {
        Gateway {
            dir: tempfile::tempdir().expect("tempdir"),
            id: "test-gw".into(),
            apps: Vec::new(),
            gateway_extra: String::new(),
            sections: Vec::new(),
        }
    }

    /// Add an app: `extra` is more TOML for its `[[app]]` table.
    pub fn app(mut self, name: &str, component: &Path, model: &Path, extra: &str) -> Gateway {
        self.apps.push(format!(
            "[[app]]\nname = \"{name}\"\ncomponent = \"{}\"\nmodel = \"{}\"\n{extra}\n",
            component.display(),
            model.display()
        ));
        self
    }

    /// More TOML for the `[gateway]` table.
    pub fn gateway(mut self, extra: &str) -> Gateway {
        self.gateway_extra.push_str(extra);
        self.gateway_extra.push('\n');
        self
    }

    /// The same gateway (its data directory) with a config to write anew.
    pub fn reconfigure(self) -> Gateway {
        Gateway {
            dir: self.dir,
            id: self.id,
            apps: Vec::new(),
            gateway_extra: String::new(),
            sections: Vec::new(),
        }
    }

    /// Another gateway id than `test-gw`, for tests with several.
    pub fn with_id(mut self, id: &str) -> Gateway {
        self.id = id.to_string();
        self
    }

    /// No `[gateway] id`: a gateway provisioned by claim is given one.
    pub fn without_id(mut self) -> Gateway {
        self.id.clear();
        self
    }

    /// Another table of gateway.toml, e.g. `[cloud]`.
    pub fn section(mut self, text: &str) -> Gateway {
        self.sections.push(text.to_string());
        self
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("gateway.toml")
    }

    pub fn db_path(&self) -> PathBuf {
        self.dir.path().join("data/wasmgate.db")
    }

    /// Write gateway.toml (again) from what was added.
    pub fn write_config(&self) {
        let id = if self.id.is_empty() {
            String::new()
        } else {
            format!("id = \"{}\"\n", self.id)
        };
        let text = format!(
            "[gateway]\n{id}data_dir = \"data\"\n{}\n{}\n{}",
            self.gateway_extra,
            self.sections.join("\n"),
            self.apps.join("\n")
        );
        std::fs::write(self.config_path(), text).expect("write gateway.toml");
    }

    /// Start `wasmgate run` on this gateway's config.
    pub fn start(&self) -> Running {
        self.write_config();
        Running::spawn(&self.config_path())
    }

    /// `wasmgate apps --json` against the running gateway.
    pub fn apps(&self) -> serde_json::Value {
        let config = self.config_path();
        let (ok, out, err) = wasmgate(&[
            "apps",
            "--json",
            "--gateway",
            config.to_str().expect("path"),
        ]);
        assert!(ok, "wasmgate apps failed: {err}");
        serde_json::from_str(&out).expect("apps --json prints JSON")
    }

    /// The data directory (`data/` beside gateway.toml).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Open the gateway's database (read-only use).
    pub fn db(&self) -> rusqlite::Connection {
        let conn = rusqlite::Connection::open(self.db_path()).expect("open the gateway's database");
        conn.busy_timeout(Duration::from_secs(10))
            .expect("busy timeout");
        conn
    }

    /// Every payload of `kind` in the outbox (with `name`, if given), in
    /// order, as JSON.
    pub fn outbox_rows(&self, kind: &str, name: Option<&str>) -> Vec<serde_json::Value> {
        let db = self.db();
        let mut stmt = db
            .prepare("SELECT payload FROM outbox WHERE kind = ?1 AND (?2 IS NULL OR name = ?2) ORDER BY seq")
            .expect("query the outbox");
        let payloads: Vec<Vec<u8>> = stmt
            .query_map(rusqlite::params![kind, name], |r| r.get(0))
            .expect("rows")
            .collect::<Result<_, _>>()
            .expect("payloads");
        payloads
            .iter()
            .map(|p| serde_json::from_slice(p).expect("an outbox payload is JSON"))
            .collect()
    }

    /// The state each waiting twin row stands for, in the outbox's order:
    /// `{"version", "attributes"}` as the link would publish it for that
    /// row's device (a twin row is only a mark; the state is in `twin`).
    pub fn waiting_twins(&self) -> Vec<serde_json::Value> {
        let db = self.db();
        let devices: Vec<String> = db
            .prepare("SELECT device FROM outbox WHERE kind = 'twin' ORDER BY seq")
            .expect("query the outbox")
            .query_map([], |r| r.get(0))
            .expect("rows")
            .collect::<Result<_, _>>()
            .expect("devices");
        devices
            .iter()
            .map(|device| {
                let (version, attributes) =
                    wasmgate::store::reported_state(&db, device).expect("the device's state");
                let attributes: serde_json::Map<String, serde_json::Value> = attributes
                    .into_iter()
                    .map(|(name, json)| (name, serde_json::from_str(&json).expect("stored JSON")))
                    .collect();
                serde_json::json!({"version": version, "attributes": attributes})
            })
            .collect()
    }

    /// The one integer a query over the gateway's database gives (a count).
    pub fn count(&self, sql: &str) -> i64 {
        self.db()
            .query_row(sql, [], |r| r.get(0))
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// Every telemetry point in the outbox (of `series`, if given), in order.
    pub fn outbox_points(&self, series: Option<&str>) -> Vec<serde_json::Value> {
        self.outbox_rows("telemetry", series)
            .into_iter()
            .flat_map(|batch| {
                batch
                    .as_array()
                    .expect("a batch is an array of points")
                    .clone()
            })
            .collect()
    }

    /// `wasmgate status --json` as JSON.
    pub fn status(&self) -> serde_json::Value {
        let out = Command::new(binary())
            .args(["status", "--json", "--config"])
            .arg(self.config_path())
            .output()
            .expect("wasmgate status runs");
        assert!(
            out.status.success(),
            "status failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("status prints JSON")
    }
}

/// A running `wasmgate` process and everything it has logged so far.
pub struct Running {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    /// When each line was read (just after the process wrote it).
    times: Arc<Mutex<Vec<std::time::SystemTime>>>,
    /// The gateway.toml of a `wasmgate run`, for asking it how it is.
    config: Option<PathBuf>,
}

impl Running {
    pub fn spawn(config: &Path) -> Running {
        Self::spawn_with(config, &[])
    }

    /// `wasmgate run --config CONFIG EXTRA...`.
    pub fn spawn_with(config: &Path, extra: &[&str]) -> Running {
        Self::spawn_binary(&binary(), config, extra)
    }

    /// `BINARY run --config CONFIG EXTRA...` (another build of wasmgate).
    pub fn spawn_binary(binary: &Path, config: &Path, extra: &[&str]) -> Running {
        let mut command = Command::new(binary);
        command.args(["run", "--config"]).arg(config).args(extra);
        let mut running = Self::spawn_command(command);
        running.config = Some(config.to_path_buf());
        running
    }

    /// Any `command`, its output collected line by line as the gateway's is
    /// (the operator's `wasmgate cloud ...`, say).
    pub fn spawn_command(mut command: Command) -> Running {
        let mut child = command
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start wasmgate");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let times = Arc::new(Mutex::new(Vec::new()));
        for stream in [
            Box::new(child.stdout.take().expect("stdout")) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().expect("stderr")),
        ] {
            let (lines, times) = (lines.clone(), times.clone());
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    eprintln!("  | {line}");
                    // One lock order (lines, then times) keeps the two in step.
                    let mut lines = lines.lock().expect("log lock");
                    lines.push(line);
                    times
                        .lock()
                        .expect("log lock")
                        .push(std::time::SystemTime::now());
                }
            });
        }
        Running {
            child,
            lines,
            times,
            config: None,
        }
    }

    /// Part `field` of what the running gateway reports (`wasmgate status
    /// --json`, from its admin socket); `None` until the socket answers.
    fn live(&self, field: &str) -> Option<serde_json::Value> {
        let config = self.config.as_ref().expect("a `wasmgate run` process");
        let out = Command::new(binary())
            .args(["status", "--json", "--config"])
            .arg(config)
            .output()
            .expect("wasmgate status runs");
        if !out.status.success() {
            return None;
        }
        let status: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        let part = status.get(field)?;
        (!part.is_null()).then(|| part.clone())
    }

    /// The cloud link as the running gateway reports it.
    pub fn link(&self) -> Option<serde_json::Value> {
        self.live("link")
    }

    /// The outbox as the running gateway's writer reports it.
    pub fn outbox(&self) -> Option<serde_json::Value> {
        self.live("live_outbox")
    }

    /// Wait until the gateway reports a link that `check` accepts; return it.
    pub fn wait_link(
        &mut self,
        timeout: Duration,
        what: &str,
        check: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(link) = self.link().filter(|l| check(l)) {
                return link;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("wasmgate exited ({status}) before its link was {what}");
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting for the link to be {what}: {:?}",
                self.link()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The apps as the running gateway reports them (`wasmgate apps
    /// --json`); `None` until its admin socket answers.
    pub fn apps(&self) -> Option<Vec<serde_json::Value>> {
        let config = self.config.as_ref().expect("a `wasmgate run` process");
        let out = Command::new(binary())
            .args(["apps", "--json", "--gateway"])
            .arg(config)
            .output()
            .expect("wasmgate apps runs");
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .ok()?
            .as_array()
            .cloned()
    }

    /// Wait until the gateway reports app `name` as `check` wants it;
    /// return its report.
    pub fn wait_app(
        &mut self,
        name: &str,
        timeout: Duration,
        what: &str,
        check: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + timeout;
        let find =
            |apps: Option<Vec<serde_json::Value>>| apps?.into_iter().find(|a| a["name"] == name);
        loop {
            if let Some(app) = find(self.apps()).filter(|a| check(a)) {
                return app;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("wasmgate exited ({status}) before app {name} was {what}");
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting for app {name} to be {what}: {:?}",
                find(self.apps())
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Wait until app `name` runs.
    pub fn wait_running(&mut self, name: &str, timeout: Duration) -> serde_json::Value {
        self.wait_app(name, timeout, "running", |a| a["state"] == "running")
    }

    /// Wait until app `name` runs version `version` (a hot swap done).
    pub fn wait_version(
        &mut self,
        name: &str,
        version: i64,
        timeout: Duration,
    ) -> serde_json::Value {
        self.wait_app(name, timeout, &format!("running version {version}"), |a| {
            a["state"] == "running" && a["version"] == version
        })
    }

    /// Wait until the gateway reports itself connected to the broker (at
    /// least a minute: on a loaded CI machine, with many gateways starting
    /// at once, the first connection can take a while).
    pub fn wait_connected(&mut self, timeout: Duration) -> serde_json::Value {
        self.wait_link(timeout.max(Duration::from_secs(60)), "connected", |l| {
            l["connected"] == true
        })
    }

    /// Wait until the gateway reports itself connected again, after at
    /// least `reconnects` reconnections.
    pub fn wait_reconnected(&mut self, timeout: Duration, reconnects: u64) -> serde_json::Value {
        self.wait_link(timeout, "connected again", |l| {
            l["connected"] == true && l["reconnects"].as_u64() >= Some(reconnects)
        })
    }

    /// Wait until the gateway reports its link down, with the reason;
    /// return that reason (`last_error`).
    pub fn wait_disconnected(&mut self, timeout: Duration) -> String {
        let link = self.wait_link(timeout, "down", |l| {
            l["connected"] == false && l["last_error"].is_string()
        });
        link["last_error"].as_str().expect("last_error").to_string()
    }

    /// Wait for the process to exit by itself; its status.
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                // Give the reader threads a moment to collect the last lines.
                std::thread::sleep(Duration::from_millis(100));
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the process did not finish within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The process's peak resident memory so far (VmHWM), in MiB: guests'
    /// linear memory included, since they live in the process.
    pub fn peak_rss_mib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("read /proc/PID/status");
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM in /proc/PID/status");
        kib / 1024
    }

    /// Every line logged so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().expect("log lock").clone()
    }

    /// Every line so far with the time it was read.
    pub fn timed_lines(&self) -> Vec<(std::time::SystemTime, String)> {
        let lines = self.lines.lock().expect("log lock");
        let times = self.times.lock().expect("log lock");
        times.iter().copied().zip(lines.iter().cloned()).collect()
    }

    /// How many lines so far contain `needle`.
    pub fn count(&self, needle: &str) -> usize {
        self.lines().iter().filter(|l| l.contains(needle)).count()
    }

    /// Wait until a line contains `needle`; return it.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> String {
        self.wait_until(timeout, needle, |lines| {
            lines.iter().find(|l| l.contains(needle)).cloned()
        })
    }

    /// Wait until `check` finds something in the log.
    pub fn wait_until<T>(
        &mut self,
        timeout: Duration,
        what: &str,
        check: impl Fn(&[String]) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(found) = check(&self.lines()) {
                return found;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                // Give the reader threads a moment to collect the last lines.
                std::thread::sleep(Duration::from_millis(200));
                if let Some(found) = check(&self.lines()) {
                    return found;
                }
                panic!("wasmgate exited ({status}) before the log showed {what:?}");
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting for {what:?} in the log"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(sent.success(), "kill -TERM failed");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "wasmgate did not stop within 20 s of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the process has ended (without waiting for it).
    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// SIGKILL: no chance to clean up.
    pub fn kill9(&mut self) {
        self.child.kill().expect("kill -9");
        self.child.wait().expect("wait");
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Run `wasmgate` with `args` to completion: (success, stdout, stderr).
pub fn run_to_end(args: &[&str], config: &Path) -> (bool, String, String) {
    let out = Command::new(binary())
        .args(args)
        .arg(config)
        .output()
        .expect("wasmgate runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Run `wasmgate ARGS` to completion: (success, stdout, stderr).
pub fn wasmgate(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(binary())
        .args(args)
        .output()
        .expect("wasmgate runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Run `wasmgate ARGS` for `time`, then stop it; its stdout.
pub fn wasmgate_for(args: &[&str], time: Duration) -> String {
    let mut child = Command::new(binary())
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("wasmgate runs");
    std::thread::sleep(time);
    let _ = child.kill();
    let out = child.wait_with_output().expect("output");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Everything in `dir`, by name, sorted.
pub fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read the directory")
        .map(|e| {
            e.expect("an entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    names
}

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// Parse a number that follows `key=` in a log line.
pub fn field_after(line: &str, key: &str) -> Option<i64> {
    let start = line.find(&format!("{key}="))? + key.len() + 1;
    let digits: String = line[start..]
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '-')
        .collect();
    digits.parse().ok()
}

/// The highest `counter=N` logged by the storage-roundtrip guest so far.
pub fn last_counter(lines: &[String]) -> Option<i64> {
    lines
        .iter()
        .filter(|l| l.contains("roundtrip="))
        .filter_map(|l| field_after(l, "counter"))
        .max()
}

/// Build the thermostat app of one guest language with `guests/build LANG`
/// and return its component. Builds run one at a time. A missing tool fails
/// the test with guests/build's message, which names the tool and how to
/// install it (guests/install-tools).
pub fn thermostat_in(lang: &str) -> PathBuf {
    static BUILDING: Mutex<()> = Mutex::new(());
    let output = {
        let _one_at_a_time = BUILDING.lock().unwrap_or_else(|e| e.into_inner());
        Command::new(root().join("guests/build"))
            .arg(lang)
            .output()
            .expect("guests/build runs")
    };
    assert!(
        output.status.success(),
        "guests/build {lang} failed (CI installs the guest tools with guests/install-tools):\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let path = if lang == "rust" {
        root().join("guests/rust/target/wasm32-wasip2/release/thermostat.wasm")
    } else {
        root().join("guests").join(lang).join("out/thermostat.wasm")
    };
    assert!(path.exists(), "no component at {}", path.display());
    path
}

/// A fleet member for rollouts: gateway `id` labelled `ring`, on `broker`
/// (an `mqtt://` URL), trusting `public`, running the swap counter as app
/// `counter` at one tick every `tick_ms`. Its probation is 1 s, so a
/// version that crashes later than that is kept (and a rollout must see it
/// is unhealthy).
pub fn fleet_member(broker: &str, id: &str, ring: &str, public: &str, tick_ms: u64) -> Gateway {
    Gateway::new()
        .with_id(id)
        .gateway(&format!("labels = {{ ring = \"{ring}\" }}"))
        .section(&format!(
            "[cloud]\nurl = \"{broker}\"\nbackoff_initial_ms = 100\nbackoff_max_ms = 1000\n"
        ))
        .section(&format!(
            "[deploy]\ntrusted_keys = [\"{public}\"]\nprobation_s = 1\n"
        ))
        .app(
            "counter",
            &guest("swap-counter"),
            &model("swap"),
            &format!("tick_interval_ms = {tick_ms}\n[app.config]\ngeneration = \"one\"\n"),
        )
}

/// An operator's key pair made by `wasmgate keygen` in `dir`: the private
/// key's path, the public key.
pub fn operator_key(dir: &Path) -> (PathBuf, String) {
    let key = dir.join("operator");
    let (ok, _, err) = wasmgate(&["keygen", key.to_str().expect("path")]);
    assert!(ok, "{err}");
    let public = std::fs::read_to_string(key.with_extension("pub"))
        .expect("pub")
        .trim()
        .to_string();
    (key.with_extension("key"), public)
}

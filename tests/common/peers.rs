//! Protocol peers the project did not write, as the integration tests run
//! them: pymodbus's Modbus server (`tests/peers/modbus_server.py`, from the
//! virtualenv `tests/peers/install` made), and TCP and UDP echo servers from
//! Python's standard library (`tests/peers/echo_server.py`). Each peer is a child process,
//! killed when dropped; `pause` (SIGSTOP) makes a device that stops
//! answering, `resume` brings it back.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The Python of the peers' virtualenv.
pub fn python() -> PathBuf {
    let peers = std::env::var_os("WASMGATE_PEERS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/wasmgate/peers")
        });
    let python = peers.join("venv/bin/python");
    assert!(
        python.exists(),
        "no peers' virtualenv at {}: run tests/peers/install (cargo xtask setup does)",
        python.display()
    );
    python
}

/// pymodbus's Modbus TCP server on loopback, with the given unit ids.
pub struct ModbusPeer {
    child: Child,
    pub port: u16,
}

impl ModbusPeer {
    pub fn start(units: &[u8]) -> ModbusPeer {
        Self::with_inputs(units, &serde_json::json!({}))
    }

    /// With the given input registers from address 0 on some units:
    /// `{"2": [2301, 65535]}`.
    pub fn with_inputs(units: &[u8], inputs: &serde_json::Value) -> ModbusPeer {
        Self::spawn(&["tcp", "0"], units, inputs)
    }

    /// pymodbus's Modbus RTU server on serial device `device` (9600 8N1),
    /// the same units also on a TCP port (`port`, for checking).
    pub fn rtu(device: &std::path::Path, units: &[u8]) -> ModbusPeer {
        let device = device.to_str().expect("a device path");
        Self::spawn(&["rtu", device], units, &serde_json::json!({}))
    }

    fn spawn(how: &[&str], units: &[u8], inputs: &serde_json::Value) -> ModbusPeer {
        let units: Vec<String> = units.iter().map(u8::to_string).collect();
        let mut command = Command::new(python());
        command
            .arg(super::root().join("tests/peers/modbus_server.py"))
            .args(how)
            .args([units.join(","), inputs.to_string()]);
        let (child, port) = start_ready(command, "the pymodbus server");
        let peer = ModbusPeer { child, port };
        // Ready when it takes connections.
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "the pymodbus server never listened"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        peer
    }

    /// `tcp://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("tcp://127.0.0.1:{}", self.port)
    }

    /// Stop answering (SIGSTOP): connections stay open, nothing comes back.
    pub fn pause(&self) {
        signal(&self.child, "-STOP");
    }

    /// Answer again (SIGCONT).
    pub fn resume(&self) {
        signal(&self.child, "-CONT");
    }

    /// A client of the test's own (tokio-modbus) on unit `unit`, to read
    /// and write the peer's registers directly.
    pub fn client(&self, unit: u8) -> DirectClient {
        DirectClient {
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime"),
            address: ([127, 0, 0, 1], self.port).into(),
            unit,
        }
    }
}

/// Start a peer that prints `ready PORT` once it listens; its child and
/// that port.
fn start_ready(mut command: Command, what: &str) -> (Child, u16) {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("start {what}: {e}"));
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    stdout.read_line(&mut line).expect("the peer's first line");
    // Keep reading what else it prints, so it never blocks on a full pipe.
    std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
    let port = line
        .trim()
        .strip_prefix("ready ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("{what} said {line:?}"));
    (child, port)
}

/// Send `which` (`-STOP`, `-CONT`) to a peer's process.
pub fn signal(child: &Child, which: &str) {
    let sent = Command::new("kill")
        .args([which, &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(sent.success(), "kill {which}");
}

impl Drop for ModbusPeer {
    fn drop(&mut self) {
        signal(&self.child, "-CONT");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The test's own Modbus client: how a test checks what landed in the peer.
pub struct DirectClient {
    runtime: tokio::runtime::Runtime,
    address: std::net::SocketAddr,
    unit: u8,
}

impl DirectClient {
    fn with<T>(
        &self,
        f: impl AsyncFnOnce(&mut tokio_modbus::client::Context) -> tokio_modbus::Result<T>,
    ) -> T {
        self.runtime.block_on(async {
            let mut context = tokio_modbus::client::tcp::connect_slave(
                self.address,
                tokio_modbus::Slave(self.unit),
            )
            .await
            .expect("connect to the peer");
            f(&mut context)
                .await
                .expect("transport")
                .expect("no exception")
        })
    }

    pub fn holding_registers(&self, address: u16, count: u16) -> Vec<u16> {
        use tokio_modbus::client::Reader;
        self.with(async |c| c.read_holding_registers(address, count).await)
    }

    /// Read one holding register `times` times on one connection (the
    /// benchmark's bare baseline).
    pub fn read_many(&self, address: u16, times: u32) {
        use tokio_modbus::client::Reader;
        self.with(async |c| {
            for _ in 0..times {
                if let Err(e) = c.read_holding_registers(address, 1).await? {
                    return Ok(Err(e));
                }
            }
            Ok(Ok(()))
        })
    }

    pub fn coils(&self, address: u16, count: u16) -> Vec<bool> {
        use tokio_modbus::client::Reader;
        self.with(async |c| c.read_coils(address, count).await)
    }

    pub fn write_register(&self, address: u16, value: u16) {
        use tokio_modbus::client::Writer;
        self.with(async |c| c.write_single_register(address, value).await)
    }
}

/// A TCP or UDP echo server from Python's standard library on 127.0.0.1:
/// what it receives comes back after `echo:`.
pub struct EchoPeer {
    child: Child,
    pub port: u16,
}

impl EchoPeer {
    pub fn start(protocol: &str) -> EchoPeer {
        let mut command = Command::new("python3");
        command
            .arg(super::root().join("tests/peers/echo_server.py"))
            .arg(protocol);
        let (child, port) = start_ready(command, "the echo server");
        EchoPeer { child, port }
    }

    /// `127.0.0.1:PORT`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for EchoPeer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A pair of pseudo-terminals joined by socat: what one end writes, the
/// other reads, as a serial cable would carry it.
pub struct SerialPair {
    child: Child,
    dir: tempfile::TempDir,
}

impl SerialPair {
    pub fn start() -> SerialPair {
        let dir = tempfile::tempdir().expect("tempdir");
        let end = |name: &str| format!("pty,raw,echo=0,link={}", dir.path().join(name).display());
        let child = Command::new("socat")
            .args([end("gateway"), end("device")])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start socat (tests/peers/install's apt-get install socat)");
        let pair = SerialPair { child, dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !(pair.dir.path().join("gateway").exists() && pair.dir.path().join("device").exists())
        {
            assert!(Instant::now() < deadline, "socat made no pseudo-terminals");
            std::thread::sleep(Duration::from_millis(20));
        }
        pair
    }

    /// The gateway's end, as its /dev/pts path.
    pub fn gateway_end(&self) -> PathBuf {
        std::fs::canonicalize(self.dir.path().join("gateway")).expect("the gateway's end")
    }

    /// The device's end (a link to its /dev/pts path).
    pub fn device_end(&self) -> PathBuf {
        self.dir.path().join("device")
    }
}

impl Drop for SerialPair {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A Sparkplug B host application written with pysparkplug
/// (`tests/peers/sparkplug_host.py`): it decodes every message under its
/// group with pysparkplug's own decoder, and sends commands the test asks
/// for. Each message it saw is one JSON object (see the script's
/// docstring).
pub struct SparkplugHost {
    child: Child,
    stdin: std::process::ChildStdin,
    seen: std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
}

impl SparkplugHost {
    /// A host on the broker at 127.0.0.1:`port`, for group `group`; with
    /// `host_id`, a primary host that publishes its STATE.
    pub fn start(port: u16, group: &str, host_id: Option<&str>) -> SparkplugHost {
        let mut command = Command::new(python());
        command
            .arg(super::root().join("tests/peers/sparkplug_host.py"))
            .args(["127.0.0.1", &port.to_string(), group]);
        if let Some(id) = host_id {
            command.args(["--host-id", id]);
        }
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the pysparkplug host");
        let stdin = child.stdin.take().expect("stdin");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        stdout.read_line(&mut line).expect("the host's first line");
        assert_eq!(line.trim(), "ready", "the pysparkplug host said {line:?}");
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = seen.clone();
        std::thread::spawn(move || {
            for line in stdout.lines() {
                let Ok(line) = line else { break };
                match serde_json::from_str::<serde_json::Value>(&line) {
                    Ok(message) => sink.lock().expect("the log").push(message),
                    Err(_) => eprintln!("sparkplug host: {line}"),
                }
            }
        });
        SparkplugHost { child, stdin, seen }
    }

    /// Everything it decoded so far, in arrival order.
    pub fn messages(&self) -> Vec<serde_json::Value> {
        self.seen.lock().expect("the log").clone()
    }

    /// Wait for a message `check` accepts, after the first `from`; return
    /// its index and the message.
    pub fn wait_from(
        &self,
        from: usize,
        timeout: Duration,
        what: &str,
        check: impl Fn(&serde_json::Value) -> bool,
    ) -> (usize, serde_json::Value) {
        let deadline = Instant::now() + timeout;
        loop {
            let seen = self.messages();
            if let Some((i, m)) = seen.iter().enumerate().skip(from).find(|(_, m)| check(m)) {
                return (i, m.clone());
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting for {what}; the host saw {} messages, the last: {:?}",
                seen.len(),
                seen.iter().rev().take(3).collect::<Vec<_>>()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Send a command (a JSON line of the script's protocol) and wait until
    /// the script has published it.
    pub fn command(&mut self, command: serde_json::Value) {
        use std::io::Write as _;
        let from = self.messages().len();
        let cmd = command["cmd"].clone();
        writeln!(self.stdin, "{command}").expect("write to the host");
        self.stdin.flush().expect("flush");
        self.wait_from(from, Duration::from_secs(10), "the command's DONE", |m| {
            m["type"] == "DONE" && m["cmd"] == cmd
        });
    }
}

impl Drop for SparkplugHost {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

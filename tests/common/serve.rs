//! `wasmgate cloud serve` under test, its API through a real HTTP client,
//! and a real PostgreSQL server started from `initdb` in a temporary
//! directory (as `Mosquitto` is started), for the tests that store there.

use super::Running;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The tokens `tokens_file` writes: one of each role.
pub const READER: &str = "reader-token-0123456789";
pub const OPERATOR: &str = "operator-token-0123456789";

/// A tokens file for `serve --tokens` in `dir` (private, as serve demands)
/// with a `reader` and an `operator` token.
pub fn tokens_file(dir: &Path) -> PathBuf {
    let tokens = dir.join("tokens");
    std::fs::write(&tokens, format!("reader {READER}\noperator {OPERATOR}\n")).expect("tokens");
    std::fs::set_permissions(&tokens, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("chmod");
    tokens
}

/// A running `wasmgate cloud serve` and its API's address.
pub struct Serve {
    pub running: Running,
    /// `http://127.0.0.1:PORT/api/v1`
    pub base: String,
    token: Option<String>,
}

impl Serve {
    /// `wasmgate cloud serve --broker BROKER --database DATABASE EXTRA...`,
    /// its API on a port of its choosing.
    pub fn start(broker: &str, database: &str, extra: &[&str]) -> Serve {
        Serve::start_with(&["--broker", broker], database, extra)
    }

    /// `wasmgate cloud CLOUD... serve --database DATABASE EXTRA...`: CLOUD
    /// names the broker and how to log in to it.
    pub fn start_with(cloud: &[&str], database: &str, extra: &[&str]) -> Serve {
        let mut command = Command::new(super::binary());
        command
            .arg("cloud")
            .args(cloud)
            .args(["serve", "--database", database])
            .args(["--listen", "127.0.0.1:0"])
            .args(extra);
        let mut running = Running::spawn_command(command);
        let line = running.wait_for("api: http://", Duration::from_secs(30));
        let base = line
            .split_once("api: ")
            .map(|(_, url)| url.trim().to_string())
            .expect("the API's address");
        Serve {
            running,
            base,
            token: None,
        }
    }

    /// Send this bearer token from now on.
    pub fn with_token(mut self, token: &str) -> Serve {
        self.token = Some(token.to_string());
        self
    }

    fn agent() -> ureq::Agent {
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .new_agent()
    }

    /// `METHOD path` with a JSON body (or none), with `token` (`Some("")`
    /// for none at all) or else the one given to [`with_token`]: the status
    /// and the JSON answer.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
        token: Option<&str>,
    ) -> (u16, serde_json::Value) {
        let url = format!("{}{path}", self.base);
        let token = token.or(self.token.as_deref()).filter(|t| !t.is_empty());
        let agent = Self::agent();
        let auth = token.map(|t| format!("Bearer {t}"));
        let response = match (method, body) {
            ("GET", _) => {
                let mut r = agent.get(&url);
                if let Some(a) = &auth {
                    r = r.header("Authorization", a);
                }
                r.call()
            }
            (method, body) => {
                let mut r = match method {
                    "PUT" => agent.put(&url),
                    "POST" => agent.post(&url),
                    other => panic!("no {other} here"),
                };
                if let Some(a) = &auth {
                    r = r.header("Authorization", a);
                }
                match body {
                    Some(json) => r.send_json(json),
                    None => r.send_empty(),
                }
            }
        };
        let mut response = response.unwrap_or_else(|e| panic!("{method} {url}: {e}"));
        let status = response.status().as_u16();
        let text = response
            .body_mut()
            .read_to_string()
            .unwrap_or_else(|e| panic!("{method} {url}: reading the answer: {e}"));
        let json = serde_json::from_str(&text).unwrap_or_else(|e| {
            panic!("{method} {url} answered {status} with non-JSON ({e}): {text}")
        });
        (status, json)
    }

    /// `GET path`, which must answer 200.
    pub fn get(&self, path: &str) -> serde_json::Value {
        let (status, json) = self.request("GET", path, None, None);
        assert_eq!(status, 200, "GET {path}: {json}");
        json
    }

    /// Poll `GET path` until `check` holds.
    pub fn wait_get(
        &self,
        path: &str,
        timeout: Duration,
        what: &str,
        check: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + timeout;
        loop {
            let (status, json) = self.request("GET", path, None, None);
            if status == 200 && check(&json) {
                return json;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: GET {path} still answers {status} {json}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Points stored, as `/stats` says.
    pub fn stored_points(&self) -> i64 {
        self.get("/stats")["stored_points"]
            .as_i64()
            .expect("stored_points")
    }
}

/// A PostgreSQL server of its own, from `initdb` in a temporary directory,
/// on a free port; `url()` names a fresh database on it.
pub struct Postgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    pub port: u16,
    child: Option<Child>,
    /// Whether it runs as the `postgres` user (it refuses to run as root).
    as_user: Option<(u32, u32)>,
}

impl Postgres {
    pub fn start() -> Postgres {
        let bin = postgres_bin();
        let dir = tempfile::tempdir().expect("tempdir");
        let as_user = super::is_root().then(postgres_user);
        if let Some((uid, gid)) = as_user {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).expect("chown");
        }
        let mut pg = Postgres {
            port: super::free_port(),
            dir,
            bin,
            child: None,
            as_user,
        };
        let out = pg
            .command("initdb")
            .args([
                "--auth=trust",
                "--username=wasmgate",
                "--encoding=UTF8",
                "--no-sync",
                "-D",
            ])
            .arg(pg.data())
            .output()
            .expect("initdb runs");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        pg.spawn();
        pg
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn command(&self, program: &str) -> Command {
        use std::os::unix::process::CommandExt as _;
        let mut command = Command::new(self.bin.join(program));
        if let Some((uid, gid)) = self.as_user {
            command.uid(uid).gid(gid);
        }
        command
    }

    /// A client program of this server's, pointed at it as its superuser.
    fn client(&self, program: &str) -> Command {
        let mut command = self.command(program);
        command.args([
            "-h",
            "127.0.0.1",
            "-p",
            &self.port.to_string(),
            "-U",
            "wasmgate",
        ]);
        command
    }

    fn spawn(&mut self) {
        let child = self
            .command("postgres")
            .arg("-D")
            .arg(self.data())
            .args(["-p", &self.port.to_string()])
            .args(["-c", "listen_addresses=127.0.0.1"])
            .arg("-c")
            .arg(format!(
                "unix_socket_directories={}",
                self.dir.path().display()
            ))
            // Nothing here tests PostgreSQL's own crash safety.
            .args(["-c", "fsync=off"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start postgres ({e}): apt-get install postgresql"));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = self
                .client("pg_isready")
                .arg("-q")
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                return;
            }
            assert!(Instant::now() < deadline, "postgres did not come up");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A new, empty database on this server, as a URL for serve.
    pub fn database(&self, name: &str) -> String {
        let out = self
            .client("createdb")
            .arg(name)
            .output()
            .expect("createdb runs");
        assert!(
            out.status.success(),
            "createdb {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        format!("postgres://wasmgate@127.0.0.1:{}/{name}", self.port)
    }

    /// Run SQL with psql and return its unaligned output.
    pub fn query(&self, database: &str, sql: &str) -> String {
        let out = self
            .client("psql")
            .args(["-d", database, "-At", "-c", sql])
            .output()
            .expect("psql runs");
        assert!(
            out.status.success(),
            "psql {sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGINT: PostgreSQL's fast shutdown.
            let _ = Command::new("kill")
                .args(["-INT", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }
}

/// The newest PostgreSQL's programs, as Debian installs them.
fn postgres_bin() -> PathBuf {
    let root = Path::new("/usr/lib/postgresql");
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir(root)
        .unwrap_or_else(|e| panic!("{}: {e} (apt-get install postgresql)", root.display()))
        .filter_map(|e| {
            let e = e.ok()?;
            let version: u32 = e.file_name().to_str()?.parse().ok()?;
            Some((version, e.path().join("bin")))
        })
        .filter(|(_, bin)| bin.join("initdb").exists())
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin).unwrap_or_else(|| {
        panic!(
            "no PostgreSQL server under {} (apt-get install postgresql)",
            root.display()
        )
    })
}

/// The uid and gid of Debian's `postgres` user.
fn postgres_user() -> (u32, u32) {
    let passwd = std::fs::read_to_string("/etc/passwd").expect("/etc/passwd");
    passwd
        .lines()
        .find_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            (fields.first() == Some(&"postgres")).then(|| {
                (
                    fields[2].parse().expect("uid"),
                    fields[3].parse().expect("gid"),
                )
            })
        })
        .expect("a postgres user (apt-get install postgresql makes one)")
}

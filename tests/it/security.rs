//! Issue 21: files only the gateway can read, and secrets that never leak.
//! The real binary, real Mosquitto (with a password file where a password
//! is the point), and the modes of what the gateway really created.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::time::Duration;

use crate::common::mqtt::{Consumer, Mosquitto};
use crate::common::{Gateway, guest, model, run_to_end};

const T: Duration = Duration::from_secs(30);

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .expect("metadata")
        .permissions()
        .mode()
        & 0o777
}

fn counter_gateway() -> Gateway {
    Gateway::new().app(
        "counter",
        &guest("storage-roundtrip"),
        &model("counter"),
        "tick_interval_ms = 20",
    )
}

/// Every directory and file under `dir`, recursively.
fn walk(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read_dir") {
        let path = entry.expect("entry").path();
        out.push(path.clone());
        if std::fs::symlink_metadata(&path).expect("metadata").is_dir() {
            walk(&path, out);
        }
    }
}

#[test]
fn everything_the_gateway_creates_is_its_users_alone() {
    let broker = Mosquitto::start("");
    let gw = counter_gateway().section(&format!("[cloud]\nurl = \"{}\"\n", broker.url()));
    let mut run = gw.start();
    run.wait_connected(T);
    run.wait_for("counter=5 roundtrip=true", T);

    let data = gw.data_dir();
    assert_eq!(mode(&data), 0o700, "the data directory");
    let mut paths = Vec::new();
    walk(&data, &mut paths);
    // The database and its journal, the lock, the admin socket, the
    // artifacts, the compile cache and the app's own directory.
    for name in [
        "wasmgate.db",
        "wasmgate.lock",
        "admin.sock",
        "artifacts",
        "cache",
    ] {
        assert!(
            paths
                .iter()
                .any(|p| p.file_name().is_some_and(|n| n == name)),
            "{name} among {paths:?}"
        );
    }
    for path in &paths {
        let m = mode(path);
        assert_eq!(m & 0o077, 0, "{} is mode {m:04o}", path.display());
    }
    assert!(run.stop().success());
}

#[test]
fn start_is_refused_with_a_loose_data_directory_key_password_file_or_config_holding_a_password() {
    let refused = |gw: &Gateway, needle: &str| {
        gw.write_config();
        let (ok, _, err) = run_to_end(&["run", "--config"], &gw.config_path());
        assert!(!ok, "started anyway");
        assert!(err.contains(needle), "{needle:?} not in: {err}");
        err
    };

    // A data directory other users can enter.
    let gw = counter_gateway();
    std::fs::create_dir(gw.data_dir()).expect("mkdir");
    chmod(&gw.data_dir(), 0o755);
    let err = refused(&gw, "the data directory");
    assert!(
        err.contains("(mode 0755)")
            && err.contains(&format!("chmod 700 {}", gw.data_dir().display())),
        "{err}"
    );
    // Once fixed, it starts (and a missing one is created 0700, as the
    // test above shows).
    chmod(&gw.data_dir(), 0o700);
    let mut run = gw.start();
    run.wait_running("counter", T);
    assert!(run.stop().success());

    // A TLS key other users can read.
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = crate::common::mqtt::Pki::create(dir.path());
    chmod(&pki.path("client.key"), 0o644);
    let gw = counter_gateway().section(&format!(
        "[cloud]\nurl = \"mqtts://127.0.0.1:{}\"\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
        crate::common::free_port(),
        pki.path("ca.pem").display(),
        pki.path("client.pem").display(),
        pki.path("client.key").display(),
    ));
    let err = refused(&gw, "the TLS key (cloud.key_file)");
    assert!(err.contains("chmod 600"), "{err}");

    // A password file other users can read.
    let secret = dir.path().join("broker.password");
    std::fs::write(&secret, "hunter2-from-file\n").expect("write");
    chmod(&secret, 0o644);
    let gw = counter_gateway().section(&format!(
        "[cloud]\nurl = \"mqtt://127.0.0.1:1\"\nusername = \"gw\"\npassword_file = \"{}\"\n",
        secret.display()
    ));
    let err = refused(&gw, "the password file");
    assert!(
        !err.contains("hunter2"),
        "the error shows the password: {err}"
    );

    // gateway.toml holding the password, readable by others.
    let gw = counter_gateway().section(
        "[cloud]\nurl = \"mqtt://127.0.0.1:1\"\nusername = \"gw\"\npassword = \"hunter2-inline\"\n",
    );
    gw.write_config();
    chmod(&gw.config_path(), 0o644);
    let (ok, _, err) = run_to_end(&["run", "--config"], &gw.config_path());
    assert!(!ok);
    assert!(
        err.contains("holds the broker password") && err.contains("password_file"),
        "{err}"
    );
    assert!(
        !err.contains("hunter2"),
        "the error shows the password: {err}"
    );

    // Two ways of giving one password are one too many.
    let gw = counter_gateway().section(&format!(
        "[cloud]\nurl = \"mqtt://127.0.0.1:1\"\nusername = \"gw\"\npassword_env = \"HOME\"\npassword_file = \"{}\"\n",
        secret.display()
    ));
    refused(&gw, "give the password one way");
}

#[test]
fn a_password_from_a_file_logs_in_and_never_shows_in_the_log_status_or_metrics() {
    const PASSWORD: &str = "s3cr3t-b4tt3ry-st4pl3";
    let dir = tempfile::tempdir().expect("tempdir");
    // The broker knows the gateway's and the test consumer's passwords.
    let passwd = dir.path().join("mosquitto.passwd");
    std::fs::write(&passwd, "").expect("write");
    for (user, password) in [("test-gw", PASSWORD), ("consumer", "consumer-pw")] {
        let status = std::process::Command::new("mosquitto_passwd")
            .args(["-b"])
            .arg(&passwd)
            .args([user, password])
            .status()
            .expect("mosquitto_passwd runs");
        assert!(status.success());
    }
    let broker = Mosquitto::start(&format!(
        "allow_anonymous false\npassword_file {}",
        passwd.display()
    ));
    let secret = dir.path().join("gateway.password");
    std::fs::write(&secret, format!("{PASSWORD}\n")).expect("write");
    chmod(&secret, 0o600);
    let metrics_port = crate::common::free_port();
    let gw = counter_gateway()
        .section(&format!(
            "[cloud]\nurl = \"{}\"\nusername = \"test-gw\"\npassword_file = \"{}\"\n",
            broker.url(),
            secret.display()
        ))
        .section(&format!(
            "[metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n"
        ));
    let mut settings = broker.settings("consumer");
    settings.username = Some("consumer".into());
    settings.password = Some("consumer-pw".into());
    let consumer = Consumer::connect(&settings, &["wg/v1/test-gw/#"]);

    let mut run = gw.start();
    // Connected: the password from the file was the right one.
    run.wait_connected(T);
    let status_message = consumer.wait_json("wg/v1/test-gw/test-gw/status", T, |j| {
        j["online"] == true && j["apps"][0]["state"] == "running"
    });
    let status = gw.status();
    let apps = gw.apps();
    let metrics = {
        use std::io::{Read, Write};
        let mut stream =
            std::net::TcpStream::connect(("127.0.0.1", metrics_port)).expect("connect");
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .expect("request");
        let mut body = String::new();
        stream.read_to_string(&mut body).expect("response");
        body
    };
    assert!(
        metrics.contains("wasmgate_cloud_connected{gateway=\"test-gw\"} 1"),
        "{metrics}"
    );
    assert!(run.stop().success());

    for (what, text) in [
        ("the log", run.lines().join("\n")),
        ("wasmgate status", status.to_string()),
        ("wasmgate apps", apps.to_string()),
        ("/metrics", metrics),
        ("the status message", status_message.to_string()),
    ] {
        assert!(!text.contains(PASSWORD), "{what} shows the password");
    }

    // A wrong password: refused by the broker, and the reason the gateway
    // reports does not repeat it either.
    std::fs::write(&secret, "wrong-password-XYZ\n").expect("write");
    let mut run = gw.start();
    let error = run.wait_disconnected(T);
    assert!(error.contains("cannot connect to the broker"), "{error}");
    assert!(!error.contains("wrong-password-XYZ"), "{error}");
    assert!(
        !run.lines().join("\n").contains("wrong-password-XYZ"),
        "the log shows the password"
    );
    assert!(run.stop().success());
}

#[test]
fn an_admin_request_from_another_user_is_refused_even_through_a_loosened_socket() {
    let gw = counter_gateway();
    let mut run = gw.start();
    run.wait_running("counter", T);
    // Loosen what the gateway made owner-only, as a careless admin might,
    // so that another user can reach the socket at all.
    chmod(&gw.data_dir(), 0o711);
    let socket = gw.data_dir().join("admin.sock");
    chmod(&socket, 0o666);
    // As `nobody`: ask the gateway to stop the app.
    // perl-base is on every Debian machine; Socket is in it.
    let client = r#"
use Socket;
socket(my $s, PF_UNIX, SOCK_STREAM, 0) or die "socket: $!";
connect($s, pack_sockaddr_un($ARGV[0])) or die "connect: $!";
syswrite($s, "{\"op\": \"stop\", \"app\": \"counter\"}\n");
print scalar(<$s>);
"#;
    let out = std::process::Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "/usr/bin/perl",
            "-e",
            client,
        ])
        .arg(&socket)
        .output()
        .expect("setpriv runs");
    let answer = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{answer} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answer: serde_json::Value = serde_json::from_str(&answer).expect("a JSON answer");
    assert_eq!(answer["ok"], false, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("uid 65534 may not use this gateway's admin socket")),
        "{answer}"
    );
    // The app was not stopped; the gateway's own user (root here) still
    // may.
    let app = run.wait_running("counter", T);
    assert_eq!(app["state"], "running");
    let (ok, out, err) = crate::common::wasmgate(&[
        "stop",
        "counter",
        "--gateway",
        gw.config_path().to_str().expect("path"),
    ]);
    assert!(ok, "{out}{err}");
    run.wait_app("counter", T, "stopped", |a| a["state"] == "stopped");
    assert!(run.stop().success());
}

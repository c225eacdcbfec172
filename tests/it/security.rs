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
# The gateway answers a refused peer at once and closes: a late write must
# not kill the client before it reads the answer.
$SIG{PIPE} = 'IGNORE';
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

/// A signer: a key pair `wasmgate keygen` made, loaded as the CLI loads it.
struct Signer(ring::signature::Ed25519KeyPair, String);

fn keygen(dir: &Path, name: &str) -> Signer {
    let path = dir.join(name);
    let (ok, _, err) = crate::common::wasmgate(&["keygen", path.to_str().expect("path")]);
    assert!(ok, "{err}");
    let public = std::fs::read_to_string(path.with_extension("pub"))
        .expect("pub")
        .trim()
        .to_string();
    let key = wasmgate::deploy::signing::load_key(&path.with_extension("key")).expect("key");
    Signer(key, public)
}

/// A format-2 manifest of `component` for app `counter` at `version`, with
/// `generation` as its config, signed by `signers`.
fn manifest(
    id: &str,
    version: u64,
    target: wasmgate::cloud::protocol::DeployTarget,
    expires: u64,
    component: &[u8],
    generation: &str,
    signers: &[&Signer],
) -> wasmgate::cloud::protocol::DeployManifest {
    let chunk = 64 * 1024u64;
    let mut m = wasmgate::cloud::protocol::DeployManifest {
        format: wasmgate::cloud::protocol::DEPLOY_FORMAT,
        id: id.into(),
        app: "counter".into(),
        version,
        target,
        expires,
        size: component.len() as u64,
        sha256: wasmgate::deploy::artifacts::digest(component),
        chunk_size: chunk,
        chunks: (component.len() as u64).div_ceil(chunk),
        model: None,
        config: Some(vec![("generation".into(), generation.into())]),
        grants: None,
        signatures: Vec::new(),
    };
    m.signatures = signers
        .iter()
        .map(|s| wasmgate::deploy::signing::sign(&s.0, &m))
        .collect();
    m
}

/// Publish a manifest and its chunks at once, as a replaying attacker does
/// with what they captured; the gateway's first final answer for its id.
fn publish(
    consumer: &Consumer,
    payload: &[u8],
    id: &str,
    component: &[u8],
    chunk: usize,
) -> serde_json::Value {
    let before = consumer.on(RES).len();
    consumer.publish(&format!("{BASE}/deploy/req"), payload.to_vec(), false);
    for (i, part) in component.chunks(chunk).enumerate() {
        consumer.publish(
            &format!("{BASE}/deploy/{id}/chunk/{i}"),
            part.to_vec(),
            false,
        );
    }
    // Only answers after this publish count: the same id may have been
    // answered before (a replay).
    let deadline = std::time::Instant::now() + T;
    loop {
        let answer = consumer.on(RES)[before..]
            .iter()
            .map(|m| m.json())
            .find(|j| j["id"] == id && (j["stage"] == "deployed" || j["stage"] == "failed"));
        if let Some(answer) = answer {
            return answer;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no answer for deployment {id}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

const BASE: &str = "wg/v1/test-gw/test-gw";
const RES: &str = "wg/v1/test-gw/test-gw/deploy/res";

#[test]
fn replayed_rolled_back_misdirected_expired_and_undersigned_deployments_are_refused() {
    let broker = Mosquitto::start("");
    let keys = tempfile::tempdir().expect("tempdir");
    let (a, b, stranger) = (
        keygen(keys.path(), "a"),
        keygen(keys.path(), "b"),
        keygen(keys.path(), "stranger"),
    );
    let gw = Gateway::new()
        .gateway("[gateway.labels]\nsite = \"plant-1\"\nring = \"main\"")
        .app(
            "counter",
            &guest("swap-counter"),
            &model("swap"),
            "tick_interval_ms = 50\n[app.config]\ngeneration = \"one\"",
        )
        .section(&format!("[cloud]\nurl = \"{}\"\n", broker.url()))
        .section(&format!(
            "[deploy]\ntrusted_keys = [\"{}\", \"{}\"]\nthreshold = 2\n",
            a.1, b.1
        ));
    let consumer = Consumer::connect(&broker.settings("attacker"), &[RES]);
    let mut run = gw.start();
    run.wait_connected(T);
    run.wait_running("counter", T);

    let component = std::fs::read(guest("swap-counter")).expect("read");
    let chunk = 64 * 1024;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("time")
        .as_secs();
    let later = now + 3600;
    let this = || wasmgate::cloud::protocol::DeployTarget::Gateway("test-gw".into());
    let deploy = |m: &wasmgate::cloud::protocol::DeployManifest| {
        publish(
            &consumer,
            &serde_json::to_vec(m).expect("json"),
            &m.id,
            &component,
            chunk,
        )
    };

    // Two good deployments, v10 then v20; the first one's messages are
    // captured as they went by.
    let v10 = manifest("d-10", 10, this(), later, &component, "ten", &[&a, &b]);
    let captured = serde_json::to_vec(&v10).expect("json");
    let answer = deploy(&v10);
    assert_eq!(answer["stage"], "deployed", "{answer}");
    run.wait_for("generation ten started", T);
    let v20 = manifest("d-20", 20, this(), later, &component, "twenty", &[&a, &b]);
    assert_eq!(deploy(&v20)["stage"], "deployed");
    run.wait_for("generation twenty started", T);
    let running = run.wait_app("counter", T, "on v20", |a| a["version"] == 3);

    let refused = |answer: serde_json::Value, needle: &str| {
        assert_eq!(answer["stage"], "failed", "{answer}");
        let error = answer["error"].as_str().expect("error").to_string();
        assert!(error.contains(needle), "{needle:?} not in {error:?}");
        error
    };
    // The captured v10, replayed unchanged after v20.
    refused(
        publish(&consumer, &captured, "d-10", &component, chunk),
        "deployment id d-10 was taken before (version 10 of app counter): refused as a replay",
    );
    // The captured v10 with its chunking changed (the chunking is not
    // signed): 2^26 chunks of one byte is refused before anything is
    // allocated, and the gateway's memory stays where it was.
    let mut rechunked: serde_json::Value = serde_json::from_slice(&captured).expect("json");
    rechunked["chunk_size"] = 1.into();
    rechunked["size"] = (1u64 << 26).into();
    rechunked["chunks"] = (1u64 << 26).into();
    for _ in 0..2 {
        refused(
            publish(
                &consumer,
                &serde_json::to_vec(&rechunked).expect("json"),
                "d-10",
                &[],
                1,
            ),
            "does not add up",
        );
    }
    assert!(
        run.peak_rss_mib() < 256,
        "peak RSS {} MiB",
        run.peak_rss_mib()
    );
    // A deployment id used a second time, even for a newer version.
    refused(
        deploy(&manifest(
            "d-20",
            30,
            this(),
            later,
            &component,
            "again",
            &[&a, &b],
        )),
        "deployment id d-20 was taken before",
    );
    // A version that is not higher, under a fresh id.
    refused(
        deploy(&manifest(
            "d-15",
            15,
            this(),
            later,
            &component,
            "old",
            &[&a, &b],
        )),
        "version 15 of app counter is not newer than version 20",
    );
    refused(
        deploy(&manifest(
            "d-20b",
            20,
            this(),
            later,
            &component,
            "same",
            &[&a, &b],
        )),
        "not newer than version 20",
    );
    // Signed for another gateway.
    let other = wasmgate::cloud::protocol::DeployTarget::Gateway("other-gw".into());
    refused(
        deploy(&manifest(
            "d-40",
            40,
            other,
            later,
            &component,
            "other",
            &[&a, &b],
        )),
        "the manifest is for gateway other-gw, not this one (test-gw)",
    );
    // For a fleet this gateway is not in.
    let fleet = |s: &str| wasmgate::cloud::protocol::DeployTarget::Selector(s.into());
    refused(
        deploy(&manifest(
            "d-41",
            41,
            fleet("site=plant-2"),
            later,
            &component,
            "x",
            &[&a, &b],
        )),
        "the manifest is for gateways matching site=plant-2, and this one's labels (ring=main,site=plant-1) do not",
    );
    // Expired.
    refused(
        deploy(&manifest(
            "d-50",
            50,
            this(),
            now - 60,
            &component,
            "stale",
            &[&a, &b],
        )),
        "the manifest expired at ",
    );
    // Signed by a key the gateway does not trust (with a trusted one: still
    // one short of two).
    let error = refused(
        deploy(&manifest(
            "d-60",
            60,
            this(),
            later,
            &component,
            "evil",
            &[&a, &stranger],
        )),
        "needs signatures by 2 distinct trusted keys, has 1",
    );
    assert!(error.contains("is not trusted"), "{error}");
    // One signature where two are required; the same key twice is one.
    refused(
        deploy(&manifest(
            "d-61",
            61,
            this(),
            later,
            &component,
            "half",
            &[&a],
        )),
        "needs signatures by 2 distinct trusted keys, has 1",
    );
    refused(
        deploy(&manifest(
            "d-62",
            62,
            this(),
            later,
            &component,
            "twice",
            &[&b, &b],
        )),
        "needs signatures by 2 distinct trusted keys, has 1",
    );
    // An old-format (v1) manifest: refused, saying how to re-sign.
    let mut v1 = serde_json::to_value(&v20).expect("json");
    let object = v1.as_object_mut().expect("object");
    for field in ["format", "version", "target", "expires", "signatures"] {
        object.remove(field);
    }
    object.insert("id".into(), "d-v1".into());
    object.insert("signature".into(), "00".into());
    refused(
        publish(
            &consumer,
            &serde_json::to_vec(&v1).expect("json"),
            "d-v1",
            &component,
            chunk,
        ),
        "a wasmgate-deploy-v1 manifest",
    );

    // Through all of it, v20 kept running, and no refused one became a version.
    let now_running = run.wait_running("counter", T);
    assert_eq!(now_running["version"], running["version"], "{now_running}");
    assert_eq!(now_running["component"], running["component"]);
    assert_eq!(
        now_running["versions"].as_array().expect("versions").len(),
        3,
        "{now_running}"
    );
    for generation in [
        "again", "old", "same", "other", "x", "stale", "evil", "half", "twice",
    ] {
        assert_eq!(
            run.count(&format!("generation {generation} started")),
            0,
            "{generation}"
        );
    }

    // A fleet this gateway is in takes a newer version; after a restart the
    // record of what was taken still holds.
    let fleet_deploy = manifest(
        "d-70",
        70,
        fleet("site=plant-1,ring!=canary"),
        later,
        &component,
        "seventy",
        &[&a, &b],
    );
    assert_eq!(deploy(&fleet_deploy)["stage"], "deployed");
    run.wait_for("generation seventy started", T);
    assert!(run.stop().success());
    let mut run = gw.start();
    run.wait_connected(T);
    refused(
        publish(&consumer, &captured, "d-10", &component, chunk),
        "was taken before",
    );
    refused(
        deploy(&manifest(
            "d-69",
            69,
            this(),
            later,
            &component,
            "late",
            &[&a, &b],
        )),
        "not newer than version 70",
    );
    assert!(run.stop().success());
}

#[test]
fn trusted_keys_rotate_by_a_signed_rotation_that_holds_until_gateway_toml_changes() {
    let broker = Mosquitto::start("");
    let keys = tempfile::tempdir().expect("tempdir");
    let (a, b, c) = (
        keygen(keys.path(), "a"),
        keygen(keys.path(), "b"),
        keygen(keys.path(), "c"),
    );
    let key = |name: &str| keys.path().join(format!("{name}.key"));
    let public = |name: &str| keys.path().join(format!("{name}.pub"));
    let trusting = |gw: Gateway, public: &str| {
        gw.app(
            "counter",
            &guest("swap-counter"),
            &model("swap"),
            "tick_interval_ms = 50\n[app.config]\ngeneration = \"one\"",
        )
        .section(&format!("[cloud]\nurl = \"{}\"\n", broker.url()))
        .section(&format!("[deploy]\ntrusted_keys = [\"{public}\"]\n"))
    };
    let gw = trusting(Gateway::new(), &a.1);
    let url = broker.url();
    let cloud = |args: &[&str]| {
        let mut all = vec!["cloud", "--broker", url.as_str()];
        all.extend_from_slice(args);
        crate::common::wasmgate(&all)
    };
    let component = guest("swap-counter");
    let deploy_with = |signer: &str, generation: &str| {
        let config = format!("generation={generation}");
        cloud(&[
            "deploy",
            "test-gw",
            "counter",
            component.to_str().expect("path"),
            "--key",
            key(signer).to_str().expect("path"),
            "--config",
            &config,
        ])
    };
    let rotate = |signer: &str, trust: &str, version: &str| {
        cloud(&[
            "rotate-keys",
            "test-gw",
            "--key",
            key(signer).to_str().expect("path"),
            "--trust",
            public(trust).to_str().expect("path"),
            "--version",
            version,
        ])
    };
    let mut run = gw.start();
    run.wait_connected(T);

    // Only the keys in force may rotate them.
    let (ok, out, _) = rotate("c", "b", "5");
    assert!(
        !ok && out.contains("error: no valid signature by a trusted key"),
        "{out}"
    );
    let (ok, out, err) = rotate("a", "b", "5");
    assert!(ok, "{out}{err}");
    assert!(
        out.contains(&format!(
            "rotated: trusted keys rotated to set 5: {}",
            key_id(&b)
        )),
        "{out}"
    );

    // From now on B signs; A no longer does.
    let (ok, out, _) = deploy_with("a", "by-a");
    assert!(!ok && out.contains("is not trusted"), "{out}");
    let (ok, out, err) = deploy_with("b", "by-b");
    assert!(ok, "{out}{err}");
    run.wait_for("generation by-b started", T);
    // The same rotation number again is a replay.
    let (ok, out, _) = rotate("b", "a", "5");
    assert!(!ok && out.contains("not newer than version 5"), "{out}");

    // It holds across a restart.
    assert!(run.stop().success());
    let mut run = gw.start();
    run.wait_connected(T);
    let (ok, out, _) = deploy_with("a", "by-a-again");
    assert!(!ok && out.contains("is not trusted"), "{out}");
    assert!(run.stop().success());

    // The owner edits gateway.toml's keys: the file wins, the rotation is
    // forgotten.
    let gw = trusting(gw.reconfigure(), &c.1);
    let mut run = gw.start();
    run.wait_connected(T);
    let (ok, out, _) = deploy_with("b", "by-b-again");
    assert!(!ok && out.contains("is not trusted"), "{out}");
    let (ok, out, err) = deploy_with("c", "by-c");
    assert!(ok, "{out}{err}");
    run.wait_for("generation by-c started", T);
    assert!(run.stop().success());
}

/// A key's id, as the gateway names it.
fn key_id(signer: &Signer) -> String {
    wasmgate::deploy::signing::id_of(&signer.0)
}

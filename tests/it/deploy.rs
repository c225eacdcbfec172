//! Deployments to a running gateway: a hot swap under a stream of events
//! loses none and handles none twice, a failing `init` and a crash during
//! probation roll back, bad deployments are refused while the old version
//! keeps serving, a restart runs what was deployed, and watch mode picks up
//! a rebuilt component.

use crate::common::mqtt::{Consumer, Mosquitto};
use crate::common::{Gateway, guest, model, wasmgate};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

fn swap_gateway(extra: &str) -> Gateway {
    Gateway::new().app(
        "counter",
        &guest("swap-counter"),
        &model("swap"),
        &format!("tick_interval_ms = 20\n[app.config]\ngeneration = \"one\"\n{extra}"),
    )
}

/// `wasmgate deploy counter COMPONENT ARGS --gateway CONFIG`.
pub(crate) fn deploy(gw: &Gateway, component: &std::path::Path, args: &[&str]) -> (bool, String) {
    let config = gw.config_path();
    let mut all = vec!["deploy", "counter", component.to_str().expect("path")];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--gateway", config.to_str().expect("path")]);
    let (ok, out, err) = wasmgate(&all);
    (ok, format!("{out}{err}"))
}

fn apps(gw: &Gateway) -> Value {
    gw.apps()
}

fn counter_app(apps: &Value) -> Value {
    apps.as_array()
        .expect("apps")
        .iter()
        .find(|a| a["name"] == "counter")
        .expect("counter")
        .clone()
}

#[test]
fn a_hot_swap_under_a_stream_of_events_loses_none_and_handles_none_twice() {
    let broker = Mosquitto::start("");
    let consumer = Consumer::connect(&broker.settings("consumer"), &["wg/v1/test-gw/counter/#"]);
    let gw = swap_gateway("").section(&format!("[cloud]\nurl = \"{}\"\n", broker.url()));
    let mut run = gw.start();
    run.wait_for("generation one started", T);
    run.wait_connected(T);

    let total = 300i64;
    let streamer = {
        let settings = broker.settings("streamer");
        std::thread::spawn(move || {
            let client = Consumer::connect(&settings, &["wg/v1/nothing"]);
            for i in 1..=total {
                client.publish(
                    "wg/v1/test-gw/counter/action/seq/req",
                    json!({"id": i.to_string(), "argument": i}).to_string(),
                    false,
                );
                if i % 10 == 0 {
                    client.publish(
                        "wg/v1/test-gw/counter/twin/desired",
                        json!({"version": i, "attributes": {"level": i}}).to_string(),
                        false,
                    );
                }
                std::thread::sleep(Duration::from_millis(4));
            }
            std::thread::sleep(Duration::from_millis(300));
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    let (ok, out) = deploy(&gw, &guest("swap-counter"), &["--config", "generation=two"]);
    assert!(ok && out.contains("version 2 runs"), "{out}");
    streamer.join().expect("streamer");

    // Every request answered exactly once; once "two" answers, "one" never again.
    let deadline = std::time::Instant::now() + T;
    let answers: BTreeMap<i64, String> = loop {
        let mut answers = BTreeMap::new();
        for m in consumer.on("wg/v1/test-gw/counter/action/seq/res") {
            let r = m.json();
            let id: i64 = r["id"].as_str().expect("id").parse().expect("numeric id");
            let result = r["result"]
                .as_str()
                .unwrap_or_else(|| panic!("request {id} failed: {r}"))
                .to_string();
            assert!(
                answers.insert(id, result).is_none(),
                "request {id} answered twice"
            );
        }
        if answers.len() as i64 == total || std::time::Instant::now() > deadline {
            break answers;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(answers.len() as i64, total, "every request answered");
    let generations: Vec<&str> = answers
        .values()
        .map(|r| r.split(':').next().expect("generation"))
        .collect();
    let first_two = generations
        .iter()
        .position(|g| *g == "two")
        .expect("the new version answered");
    assert!(first_two > 0, "the old version answered first");
    assert!(
        generations[first_two..].iter().all(|g| *g == "two"),
        "no answer from the old version after the swap"
    );
    let line = run.wait_for("generation two started", T);
    assert!(line.contains("handed over true"), "{line}");
    run.wait_version("counter", 2, T);
    assert!(run.stop().success());

    // The recorded events: numbered without a gap or a repeat across the
    // swap, each action once, in order.
    let mut seen = std::collections::HashSet::new();
    let mut events: Vec<(i64, Option<i64>)> = Vec::new();
    for m in consumer.on("wg/v1/test-gw/counter/telemetry/events") {
        let batch = m.json();
        if !seen.insert(batch["batch"].as_str().expect("batch").to_string()) {
            continue;
        }
        for p in batch["points"].as_array().expect("points") {
            events.push((
                p["values"]["n"].as_i64().expect("n"),
                p["values"]["i"].as_i64(),
            ));
        }
    }
    let ns: Vec<i64> = events.iter().map(|(n, _)| *n).collect();
    assert_eq!(
        ns,
        (1..=ns.len() as i64).collect::<Vec<_>>(),
        "event numbers go on without gaps or repeats"
    );
    let is: Vec<i64> = events.iter().filter_map(|(_, i)| *i).collect();
    assert_eq!(
        is,
        (1..=total).collect::<Vec<_>>(),
        "every action handled once, in order"
    );
    assert_eq!(
        ns.len() as i64,
        total + total / 10,
        "every desired change handled once too"
    );
}

#[test]
fn failing_init_and_bad_deployments_are_refused_and_a_crash_in_probation_rolls_back() {
    let gw = swap_gateway("").section("[deploy]\nprobation_s = 20\n");
    let mut run = gw.start();
    run.wait_for("generation one started", T);

    let (ok, out) = deploy(
        &gw,
        &guest("swap-counter"),
        &["--config", "generation=two", "--config", "fail_init=true"],
    );
    assert!(!ok);
    assert!(
        out.contains("init returned an error: generation two refuses to start")
            && out.contains("version 1 keeps running"),
        "{out}"
    );

    let junk = gw.dir.path().join("junk.wasm");
    std::fs::write(&junk, b"\0asm\x0d\0\x01\0 but not really").expect("write");
    let (ok, out) = deploy(&gw, &junk, &[]);
    assert!(
        !ok && out.contains("is not a valid WebAssembly component"),
        "{out}"
    );

    let (ok, out) = deploy(&gw, &guest("not-an-app"), &[]);
    assert!(
        !ok && out.contains("does not fit the wasmgate:device/app@0.1.0 world"),
        "{out}"
    );

    let bad_model = gw.dir.path().join("bad.json");
    std::fs::write(
        &bad_model,
        r#"{"attributes": {"x": {"type": "number", "range": [5, 1]}}}"#,
    )
    .expect("write");
    let (ok, out) = deploy(
        &gw,
        &guest("swap-counter"),
        &["--model", bad_model.to_str().expect("path")],
    );
    assert!(
        !ok && out.contains("the device model is invalid") && out.contains("attributes.x.range"),
        "{out}"
    );

    let app = counter_app(&apps(&gw));
    assert_eq!(
        (app["version"].as_i64(), app["state"].as_str()),
        (Some(1), Some("running")),
        "{app}"
    );
    assert_eq!(
        run.count("generation one started"),
        1,
        "the old version was never stopped"
    );

    // A version that crashes during its probation goes back to the last good one.
    let (ok, out) = deploy(
        &gw,
        &guest("swap-counter"),
        &["--config", "generation=three", "--config", "trap_after=5"],
    );
    assert!(ok, "{out}");
    // The outcome is recorded as the rollback begins: wait for version 1
    // to be running again as well.
    let app = run.wait_app("counter", T, "rolled back", |app| {
        app["state"] == "running"
            && app["version"] == 1
            && app["versions"].as_array().is_some_and(|versions| {
                versions.iter().any(|v| {
                    v["outcome"]
                        .as_str()
                        .is_some_and(|o| o.starts_with("rolled back:"))
                })
            })
    });
    assert_eq!(app["version"], 1, "{app}");
    run.wait_for("generation one started, handed over true", T);
    let outcomes: BTreeMap<i64, String> = app["versions"]
        .as_array()
        .expect("versions")
        .iter()
        .map(|v| {
            (
                v["version"].as_i64().expect("n"),
                v["outcome"].as_str().expect("outcome").to_string(),
            )
        })
        .collect();
    assert!(
        outcomes
            .values()
            .any(|o| o.starts_with("refused: init returned an error")),
        "{outcomes:?}"
    );
    assert!(
        outcomes
            .values()
            .any(|o| o.starts_with("rolled back: version") && o.contains("traps after 5 ticks")),
        "{outcomes:?}"
    );

    // A good deployment, then a restart of the gateway: it runs the deployed version.
    let (ok, out) = deploy(
        &gw,
        &guest("swap-counter"),
        &["--config", "generation=four"],
    );
    assert!(ok, "{out}");
    run.wait_for("generation four started", T);
    let four = counter_app(&apps(&gw))["version"]
        .as_i64()
        .expect("version");
    assert!(run.stop().success());
    let mut run = gw.start();
    run.wait_for("generation four started", T);
    assert_eq!(
        run.count("generation one started"),
        0,
        "the restart resumed the deployed version"
    );
    assert_eq!(counter_app(&apps(&gw))["version"], four);

    // Rollback by hand, stop, start, remove.
    let config = gw.config_path();
    let g = config.to_str().expect("path");
    let (ok, out, _) = wasmgate(&["rollback", "counter", "--gateway", g]);
    assert!(ok && out.contains("rolled back from version"), "{out}");
    run.wait_for("generation one started", T);
    let (ok, _, _) = wasmgate(&["stop", "counter", "--gateway", g]);
    assert!(ok);
    assert_eq!(counter_app(&apps(&gw))["state"], "stopped");
    let (ok, _, _) = wasmgate(&["start", "counter", "--gateway", g]);
    assert!(ok);
    let deadline = std::time::Instant::now() + T;
    while counter_app(&apps(&gw))["state"] != "running" {
        assert!(
            std::time::Instant::now() < deadline,
            "the app did not start again"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let (ok, out, _) = wasmgate(&["remove", "counter", "--gateway", g]);
    assert!(ok && out.contains("removed"), "{out}");
    assert!(apps(&gw).as_array().expect("apps").is_empty());
    assert!(run.stop().success());
}

#[test]
fn watch_mode_deploys_a_rebuilt_component() {
    let gw = Gateway::new();
    let component = gw.dir.path().join("app.wasm");
    std::fs::copy(guest("swap-counter"), &component).expect("copy");
    let gw = gw.app(
        "counter",
        &component,
        &model("swap"),
        "tick_interval_ms = 20\n[app.config]\ngeneration = \"one\"",
    );
    gw.write_config();
    let mut run = crate::common::Running::spawn_with(&gw.config_path(), &["--watch"]);
    run.wait_for("generation one started", T);

    // "Rebuild": the same code with a custom section appended, as a new build would differ.
    let bytes = with_custom_section(std::fs::read(&component).expect("read"), b"rebuilt");
    std::fs::write(&component, &bytes).expect("write");

    let app = run.wait_version("counter", 2, T);
    assert_eq!(
        app["versions"][0]["source"], "watch",
        "the newest version: {app}"
    );
    run.wait_for("handed over true", T);
    assert!(run.stop().success());
}

/// A rebuilt component keeps its app's `[app.models]`: the new version
/// registers its devices with them as the first one did.
#[test]
fn watch_mode_keeps_the_models_an_app_registers_devices_with() {
    let gw = Gateway::new();
    let component = gw.dir.path().join("bus.wasm");
    std::fs::copy(guest("busgateway"), &component).expect("copy");
    let example = crate::common::root().join("examples/busgateway");
    let gw = gw.app(
        "bus",
        &component,
        &example.join("bus.model.json"),
        &format!(
            "tick_interval_ms = 200\n[app.models]\nsensor = \"{}\"\n[app.config]\nsensors = 2",
            example.join("sensor.model.json").display()
        ),
    );
    gw.write_config();
    let mut run = crate::common::Running::spawn_with(&gw.config_path(), &["--watch"]);
    run.wait_for("bus scanned: 2 sensors, 2 registered", T);

    let bytes = with_custom_section(std::fs::read(&component).expect("read"), b"rebuilt");
    std::fs::write(&component, &bytes).expect("write");
    run.wait_version("bus", 2, T);
    run.wait_until(T, "the new version's scan", |lines| {
        let scans = lines.iter().filter(|l| l.contains("bus scanned: ")).count();
        (scans >= 2).then_some(())
    });
    let scans: Vec<String> = run
        .lines()
        .into_iter()
        .filter(|l| l.contains("bus scanned: "))
        .collect();
    assert!(
        scans.iter().all(|l| l.contains("2 sensors, 2 registered")),
        "{scans:?}"
    );
    assert_eq!(run.count("not registered"), 0);
    assert!(run.stop().success());
}

/// A component with a custom section appended: still valid, different bytes.
pub(crate) fn with_custom_section(mut bytes: Vec<u8>, payload: &[u8]) -> Vec<u8> {
    let leb = |mut n: usize, out: &mut Vec<u8>| loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            break;
        }
        out.push(byte | 0x80);
    };
    let name = b"wasmgate-test";
    let mut body = Vec::new();
    leb(name.len(), &mut body);
    body.extend_from_slice(name);
    body.extend_from_slice(payload);
    bytes.push(0);
    leb(body.len(), &mut bytes);
    bytes.extend_from_slice(&body);
    bytes
}

#[test]
fn a_signed_cloud_deployment_of_a_large_component_arrives_in_chunks_and_tampering_is_refused() {
    let broker = Mosquitto::start("");
    let keys = tempfile::tempdir().expect("tempdir");
    let key = keys.path().join("operator");
    let (ok, out, err) = wasmgate(&["keygen", key.to_str().expect("path")]);
    assert!(ok, "{err}");
    assert!(out.contains("trusted_keys"), "{out}");
    let public = std::fs::read_to_string(key.with_extension("pub"))
        .expect("pub")
        .trim()
        .to_string();
    let (ok, _, _) = wasmgate(&[
        "keygen",
        keys.path().join("stranger").to_str().expect("path"),
    ]);
    assert!(ok);

    let gw = swap_gateway("")
        .section(&format!("[cloud]\nurl = \"{}\"\n", broker.url()))
        .section(&format!("[deploy]\ntrusted_keys = [\"{public}\"]\n"));
    let mut run = gw.start();
    run.wait_connected(T);

    // Over 10 MB: the swap counter with 10.5 MB of padding in a custom section.
    let big = with_custom_section(
        std::fs::read(guest("swap-counter")).expect("read"),
        &vec![7u8; 10_500_000],
    );
    assert!(big.len() > 10_000_000);
    let big_path = keys.path().join("big.wasm");
    std::fs::write(&big_path, &big).expect("write");
    let cloud = |args: &[&str]| {
        let url = broker.url();
        let mut all = vec![
            "cloud",
            "--broker",
            url.as_str(),
            "--timeout",
            "60",
            "deploy",
            "test-gw",
            "counter",
        ];
        all.extend_from_slice(args);
        wasmgate(&all)
    };
    let key_path = key.with_extension("key");
    let (ok, out, err) = cloud(&[
        big_path.to_str().expect("path"),
        "--key",
        key_path.to_str().expect("path"),
        "--config",
        "generation=cloud",
    ]);
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("deployed: app counter: version 2 runs"),
        "{out}"
    );
    assert!(err.contains("in 41 chunks"), "{err}");
    run.wait_for("generation cloud started", T);

    // Killed while it receives (or deploys) a deployment, the gateway takes
    // it again when `cloud deploy`, having heard nothing for 5 s, offers it
    // again; then it is deployed once.
    let watcher = Consumer::connect(
        &broker.settings("watcher"),
        &["wg/v1/test-gw/test-gw/deploy/res"],
    );
    let mut command = std::process::Command::new(crate::common::binary());
    command
        .args(["cloud", "--broker", &broker.url(), "--timeout", "60"])
        .args([
            "deploy",
            "test-gw",
            "counter",
            big_path.to_str().expect("path"),
        ])
        .args(["--key", key_path.to_str().expect("path")])
        .args(["--config", "generation=resumed"]);
    let mut cli = crate::common::Running::spawn_command(command);
    watcher.wait_json("wg/v1/test-gw/test-gw/deploy/res", T, |j| {
        j["stage"] == "receiving"
    });
    run.kill9();
    let mut run = gw.start();
    let status = cli.wait_exit(Duration::from_secs(180));
    let lines = cli.lines();
    assert!(status.success(), "{lines:?}");
    let said = |needle: &str| lines.iter().any(|l| l.contains(needle));
    assert!(said("offering the deployment again"), "{lines:?}");
    assert!(said("in 41 chunks, again"), "{lines:?}");
    assert!(said("deployed: app counter: version"), "{lines:?}");
    run.wait_for("generation resumed started", T);
    assert_eq!(run.count("generation resumed started"), 1, "deployed once");
    let resumed = counter_app(&apps(&gw))["version"]
        .as_i64()
        .expect("version");

    // Signed by a key the gateway does not trust.
    let stranger = keys.path().join("stranger.key");
    let (ok, out, _) = cloud(&[
        guest("swap-counter").to_str().expect("path"),
        "--key",
        stranger.to_str().expect("path"),
    ]);
    assert!(
        !ok && out.contains("error: no valid signature by a trusted key (key ")
            && out.contains("is not trusted)"),
        "{out}"
    );

    // Signed right, but a byte of a chunk changed on the way.
    let consumer = Consumer::connect(
        &broker.settings("tamperer"),
        &["wg/v1/test-gw/test-gw/deploy/res"],
    );
    let component = std::fs::read(guest("swap-counter")).expect("read");
    let sha256 = wasmgate::deploy::artifacts::digest(&component);
    let signing_key = wasmgate::deploy::signing::load_key(&key_path).expect("key");
    let config = vec![("generation".to_string(), "tampered".to_string())];
    let chunk = 16 * 1024u64;
    let mut manifest = wasmgate::cloud::protocol::DeployManifest {
        format: wasmgate::cloud::protocol::DEPLOY_FORMAT,
        id: "tamper-1".into(),
        app: "counter".into(),
        version: i64::MAX as u64,
        target: wasmgate::cloud::protocol::DeployTarget::Gateway("test-gw".into()),
        expires: 4_000_000_000,
        size: component.len() as u64,
        sha256,
        chunk_size: chunk,
        chunks: (component.len() as u64).div_ceil(chunk),
        model: None,
        config: Some(config),
        grants: None,
        signatures: Vec::new(),
    };
    manifest
        .signatures
        .push(wasmgate::deploy::signing::sign(&signing_key, &manifest));
    consumer.publish(
        "wg/v1/test-gw/test-gw/deploy/req",
        serde_json::to_vec(&manifest).expect("json"),
        false,
    );
    consumer.wait_json("wg/v1/test-gw/test-gw/deploy/res", T, |j| {
        j["id"] == "tamper-1" && j["stage"] == "receiving"
    });
    for (i, part) in component.chunks(chunk as usize).enumerate() {
        let mut part = part.to_vec();
        if i == 3 {
            part[100] ^= 0xff;
        }
        consumer.publish(
            &format!("wg/v1/test-gw/test-gw/deploy/tamper-1/chunk/{i}"),
            part,
            false,
        );
    }
    let failed = consumer.wait_json("wg/v1/test-gw/test-gw/deploy/res", T, |j| {
        j["id"] == "tamper-1" && j["stage"] == "failed"
    });
    assert!(
        failed["error"]
            .as_str()
            .expect("error")
            .contains("refused as tampered or corrupt"),
        "{failed}"
    );

    // Through all of it the cloud version kept running.
    let app = counter_app(&apps(&gw));
    assert_eq!(
        (app["version"].as_i64(), app["state"].as_str()),
        (Some(resumed), Some("running")),
        "{app}"
    );
    assert_eq!(run.count("generation tampered"), 0);
    assert!(run.stop().success());
}

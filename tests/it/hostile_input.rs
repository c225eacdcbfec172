//! Issue 22: hostile and excessive input from the broker, against the real
//! binary and Mosquitto. Each attack runs next to a healthy app whose
//! telemetry must keep flowing.

use serde_json::json;
use std::time::Duration;

use crate::common::mqtt::{Consumer, Mosquitto};
use crate::common::{Gateway, guest, model, root};

const T: Duration = Duration::from_secs(30);

fn topic(device: &str, suffix: &str) -> String {
    format!("wg/v1/test-gw/{device}/{suffix}")
}

/// The action app, and the thermostat recording telemetry every 50 ms.
fn gateway(broker: &Mosquitto) -> Gateway {
    Gateway::new()
        .section(&format!(
            "[cloud]\nurl = \"{}\"\nbackoff_initial_ms = 100\nbackoff_max_ms = 500\n",
            broker.url()
        ))
        .app(
            "actions",
            &guest("action-behaviours"),
            &model("actions"),
            "call_timeout_ms = 300",
        )
        .app(
            "thermostat",
            &guest("thermostat"),
            &root().join("examples/thermostat/thermostat.model.json"),
            "tick_interval_ms = 50",
        )
}

/// Publish `payload` at QoS 1 from a client whose own limit allows it (the
/// test consumer's is the gateway's 16 MiB), and wait for the broker's ack.
fn publish_large(broker: &Mosquitto, topic: &str, payload: Vec<u8>, retain: bool) {
    use rumqttc::{Event, Packet, QoS};
    let mut options =
        wasmgate::cloud::mqtt_options(&broker.settings("big-sender"), true).expect("options");
    options.set_max_packet_size(64 << 20, 64 << 20);
    let (client, mut connection) = rumqttc::Client::new(options, 10);
    client
        .publish(topic, QoS::AtLeastOnce, retain, payload)
        .expect("publish");
    for event in connection.iter() {
        match event {
            Ok(Event::Incoming(Packet::PubAck(_))) => break,
            Ok(_) => {}
            Err(e) => panic!("publishing {topic}: {e}"),
        }
    }
    let _ = client.disconnect();
}

/// How many telemetry batches of the thermostat the consumer has.
fn batches(consumer: &Consumer) -> usize {
    consumer.on(&topic("thermostat", "telemetry/climate")).len()
}

/// Wait until the thermostat's telemetry has grown past `from`.
fn telemetry_flows(consumer: &Consumer, from: usize) {
    let deadline = std::time::Instant::now() + T;
    while batches(consumer) <= from {
        assert!(
            std::time::Instant::now() < deadline,
            "the healthy app's telemetry stopped"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn an_oversized_message_is_refused_and_counted_and_never_takes_the_link_down() {
    let broker = Mosquitto::start("");
    let consumer = Consumer::connect(&broker.settings("attacker"), &["wg/v1/test-gw/#"]);
    let gw = gateway(&broker);
    let mut run = gw.start();
    run.wait_connected(T);
    telemetry_flows(&consumer, 0);

    // 17 MiB on an action's request topic, QoS 1: answered with an error.
    let big = vec![b'x'; 17 << 20];
    publish_large(
        &broker,
        &topic("actions", "action/echo/req"),
        big.clone(),
        false,
    );
    let answer = consumer.wait_json(&topic("actions", "action/echo/res"), T, |j| {
        j["error"]
            .as_str()
            .is_some_and(|e| e.contains("over the limit"))
    });
    assert!(
        answer["error"]
            .as_str()
            .expect("error")
            .starts_with(&format!(
                "message of {} bytes is over the limit of",
                17 << 20
            )),
        "{answer}"
    );
    // A retained 17 MiB desired change: refused in the ack.
    publish_large(&broker, &topic("thermostat", "twin/desired"), big, true);
    consumer.wait_json(&topic("thermostat", "twin/ack"), T, |j| {
        j["error"]
            .as_str()
            .is_some_and(|e| e.contains("over the limit"))
    });

    // The link never went down, the refusals are counted, the healthy app's
    // telemetry keeps arriving and a normal request is answered.
    let link = run.link().expect("link");
    assert_eq!(
        (link["connected"].as_bool(), link["reconnects"].as_u64()),
        (Some(true), Some(0)),
        "{link}"
    );
    assert!(link["downlink_refused"].as_u64() >= Some(2), "{link}");
    telemetry_flows(&consumer, batches(&consumer));
    let echo = consumer.call(
        "wg/v1/test-gw/actions",
        "echo",
        "small",
        Some(json!("fine")),
    );
    assert_eq!(echo["result"], "fine", "{echo}");
    // One such message is one transient buffer, not a growing one.
    assert!(
        run.peak_rss_mib() < 256,
        "peak RSS {} MiB",
        run.peak_rss_mib()
    );
    assert!(run.stop().success());

    // The retained one comes again at every start: refused again, the link
    // stays up.
    let acks_before = consumer.on(&topic("thermostat", "twin/ack")).len();
    let mut run = gw.start();
    run.wait_connected(T);
    let deadline = std::time::Instant::now() + T;
    while consumer.on(&topic("thermostat", "twin/ack")).len() <= acks_before {
        assert!(
            std::time::Instant::now() < deadline,
            "no ack after the restart"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let from = batches(&consumer);
    telemetry_flows(&consumer, from);
    let link = run.link().expect("link");
    assert_eq!(link["reconnects"], 0, "{link}");
    assert!(run.stop().success());
}

/// Open file descriptors of process `pid`, from /proc.
fn open_files(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("/proc/PID/fd")
        .count()
}

/// A download manifest of `size` bytes (never sent) under transfer `id`.
fn manifest(id: &str, size: u64) -> Vec<u8> {
    let chunk = 64 << 10;
    serde_json::to_vec(&json!({
        "id": id,
        "name": format!("{id}.bin"),
        "size": size,
        "sha256": "ab".repeat(32),
        "chunk_size": chunk,
        "chunks": size.div_ceil(chunk),
    }))
    .expect("json")
}

/// The acks of the download `id` that the consumer has.
fn download_acks(consumer: &Consumer, id: &str) -> Vec<serde_json::Value> {
    consumer
        .on(&topic("thermostat", &format!("content/down/{id}/ack")))
        .iter()
        .map(|m| m.json())
        .collect()
}

#[test]
fn a_flood_of_download_manifests_is_capped_idle_downloads_expire_and_the_disk_keeps_its_reserve() {
    let broker = Mosquitto::start("");
    let consumer = Consumer::connect(&broker.settings("attacker"), &["wg/v1/test-gw/#"]);
    let gw = gateway(&broker).section("[content]\nmax_downloads = 4\ndownload_idle_s = 5\n");
    let mut run = gw.start();
    run.wait_connected(T);
    telemetry_flows(&consumer, 0);
    let files_before = open_files(run.pid());

    // 300 manifests of 64 MiB each: four are taken, every other one is
    // answered "busy", and no file is opened for them.
    let attacker = Consumer::connect(&broker.settings("flooder"), &["flooder/nothing"]);
    let ids: Vec<String> = (0..300).map(|i| format!("flood-{i}")).collect();
    for id in &ids {
        attacker.publish(
            &topic("thermostat", &format!("content/down/{id}/manifest")),
            manifest(id, 64 << 20),
            false,
        );
    }
    // A manifest the gateway had no room to take is dropped unanswered;
    // like a real sender, the attacker sends it again after a silence (1 s
    // here, well within the 5 s after which the four taken expire).
    let deadline = std::time::Instant::now() + T;
    let mut asked = std::time::Instant::now();
    loop {
        let unanswered: Vec<&String> = ids
            .iter()
            .filter(|id| download_acks(&consumer, id).is_empty())
            .collect();
        if unanswered.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} manifests never answered",
            unanswered.len()
        );
        if asked.elapsed() >= Duration::from_secs(1) {
            asked = std::time::Instant::now();
            for id in unanswered {
                attacker.publish(
                    &topic("thermostat", &format!("content/down/{id}/manifest")),
                    manifest(id, 64 << 20),
                    false,
                );
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let first: Vec<serde_json::Value> = ids
        .iter()
        .map(|id| download_acks(&consumer, id)[0].clone())
        .collect();
    let taken = first.iter().filter(|a| a["error"].is_null()).count();
    assert_eq!(taken, 4, "content.max_downloads = 4");
    for refused in first.iter().filter(|a| !a["error"].is_null()) {
        let error = refused["error"].as_str().expect("error");
        assert!(error.contains("content.max_downloads"), "{refused}");
    }
    let open = open_files(run.pid());
    assert!(
        open <= files_before + 8,
        "{open} files open, {files_before} before the flood"
    );
    // Other devices keep answering, telemetry keeps flowing.
    let echo = consumer.call("wg/v1/test-gw/actions", "echo", "e1", Some(json!("fine")));
    assert_eq!(echo["result"], "fine", "{echo}");
    telemetry_flows(&consumer, batches(&consumer));

    // No chunk comes: the four expire and their partial files go.
    let expired: Vec<String> = ids
        .iter()
        .filter(|id| download_acks(&consumer, id)[0]["error"].is_null())
        .cloned()
        .collect();
    for id in &expired {
        consumer.wait_json(
            &topic("thermostat", &format!("content/down/{id}/ack")),
            T,
            |a| {
                a["error"]
                    .as_str()
                    .is_some_and(|e| e.starts_with("expired"))
            },
        );
    }
    let store = gw.data_dir().join("content");
    let left: Vec<_> = std::fs::read_dir(&store).expect("store").collect();
    assert!(left.is_empty(), "partial files left: {left:?}");
    // Room again: a new download is taken.
    attacker.publish(
        &topic("thermostat", "content/down/after/manifest"),
        manifest("after", 1 << 20),
        false,
    );
    let ack = consumer.wait_json(&topic("thermostat", "content/down/after/ack"), T, |_| true);
    assert!(ack["error"].is_null(), "{ack}");
    assert!(run.stop().success());

    // Restarted: a stale file in the store is deleted, the download that
    // was in progress is taken up and expires, and a new one that would eat
    // into the reserve kept for the outbox is refused.
    // A stale file: no transfer owns it, and it is an hour old (a fresh one
    // may be an upload an app is queueing right now).
    std::fs::write(store.join("stale.down"), vec![0u8; 4096]).expect("stale file");
    std::fs::File::options()
        .write(true)
        .open(store.join("stale.down"))
        .and_then(|f| f.set_modified(std::time::SystemTime::now() - Duration::from_secs(3600)))
        .expect("age the stale file");
    let gw = gw
        .reconfigure()
        .section(&format!(
            "[cloud]\nurl = \"{}\"\nbackoff_initial_ms = 100\nbackoff_max_ms = 500\n",
            broker.url()
        ))
        .section("[content]\ndownload_idle_s = 2\ndisk_reserve_mib = 1073741824\n")
        .app(
            "thermostat",
            &guest("thermostat"),
            &root().join("examples/thermostat/thermostat.model.json"),
            "tick_interval_ms = 50",
        );
    let mut run = gw.start();
    run.wait_connected(T);
    consumer.wait_json(&topic("thermostat", "content/down/after/ack"), T, |a| {
        a["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("expired"))
    });
    assert!(!store.join("stale.down").exists(), "the stale file is gone");
    attacker.publish(
        &topic("thermostat", "content/down/big/manifest"),
        manifest("big", 1 << 20),
        false,
    );
    let refused = consumer.wait_json(&topic("thermostat", "content/down/big/ack"), T, |_| true);
    assert!(
        refused["error"]
            .as_str()
            .is_some_and(|e| e.contains("content.disk_reserve_mib")),
        "{refused}"
    );
    assert!(run.stop().success());
}

#[test]
fn under_a_flood_of_actions_every_request_gets_an_answer() {
    let broker = Mosquitto::start("");
    let consumer = Consumer::connect(&broker.settings("watcher"), &["wg/v1/test-gw/#"]);
    let gw = gateway(&broker);
    let mut run = gw.start();
    run.wait_connected(T);
    telemetry_flows(&consumer, 0);

    // 10,000 requests at once, far past the 64 a device queues: each is
    // answered, with its result or with "busy", and none is dropped.
    let flooder = Consumer::connect(&broker.settings("flooder"), &["flooder/nothing"]);
    let requests = 10_000;
    for i in 0..requests {
        flooder.publish(
            &topic("actions", "action/echo/req"),
            serde_json::to_vec(&json!({"id": format!("f{i}"), "argument": i.to_string()}))
                .expect("json"),
            false,
        );
    }
    let answers = |consumer: &Consumer| -> std::collections::HashMap<String, serde_json::Value> {
        consumer
            .on(&topic("actions", "action/echo/res"))
            .iter()
            .map(|m| m.json())
            .filter_map(|j| Some((j["id"].as_str()?.to_string(), j)))
            .collect()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while answers(&consumer).len() < requests {
        assert!(
            std::time::Instant::now() < deadline,
            "{} of {requests} requests answered",
            answers(&consumer).len()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let answers = answers(&consumer);
    let answered = answers.values().filter(|a| a["error"].is_null()).count();
    let busy = answers
        .values()
        .filter(|a| a["error"].as_str().is_some_and(|e| e.contains("busy")))
        .count();
    let other: Vec<&serde_json::Value> = answers
        .values()
        .filter(|a| {
            !a["error"].is_null() && !a["error"].as_str().is_some_and(|e| e.contains("busy"))
        })
        .take(3)
        .collect();
    assert_eq!(
        answered + busy,
        requests,
        "only results and 'busy': {other:?}"
    );
    assert!(answered >= 64, "{answered} answered, {busy} busy");
    for (id, answer) in answers.iter().filter(|(_, a)| a["error"].is_null()) {
        assert_eq!(
            answer["result"],
            id[1..],
            "each answer is its own request's"
        );
    }
    let link = run.link().expect("link");
    assert_eq!(link["replies_dropped"], 0, "{link}");
    telemetry_flows(&consumer, batches(&consumer));
    assert!(run.stop().success());
}

/// Publish `body` on `topic` and wait for the first answer on `answer`
/// whose `key` equals `value`.
fn ask(
    consumer: &Consumer,
    topic: &str,
    body: serde_json::Value,
    answer: &str,
    key: &str,
    value: serde_json::Value,
) -> serde_json::Value {
    consumer.publish(topic, body.to_string(), false);
    consumer.wait_json(answer, T, |a| a[key] == value)
}

#[test]
fn requests_nobody_waits_for_never_run_and_odd_versions_and_wide_integers_are_refused() {
    let broker = Mosquitto::start("");
    let consumer = Consumer::connect(&broker.settings("watcher"), &["wg/v1/test-gw/#"]);
    let gw = Gateway::new()
        .section(&format!(
            "[cloud]\nurl = \"{}\"\nbackoff_initial_ms = 100\nbackoff_max_ms = 500\nanswer_timeout_s = 1\n",
            broker.url()
        ))
        .app(
            "actions",
            &guest("action-behaviours"),
            &model("actions"),
            "call_timeout_ms = 6000",
        )
        .app(
            "thermostat",
            &guest("thermostat"),
            &root().join("examples/thermostat/thermostat.model.json"),
            "tick_interval_ms = 50",
        );
    let mut run = gw.start();
    run.wait_connected(T);
    run.wait_running("actions", T);
    telemetry_flows(&consumer, 0);
    let desired = topic("actions", "twin/desired");
    let acks = topic("actions", "twin/ack");
    let echoes = topic("actions", "action/echo/res");

    // An action that hangs until its 6 s deadline, and behind it a desired
    // change and another action. Nobody waits for either past 1 s: both are
    // answered "timed out, not begun", and neither runs after the hang.
    consumer.publish(
        &topic("actions", "action/hang/req"),
        json!({"id": "h1"}).to_string(),
        false,
    );
    let late = ask(
        &consumer,
        &desired,
        json!({"version": 1, "attributes": {"mode": "late"}}),
        &acks,
        "version",
        json!(1),
    );
    let not_begun =
        "the app did not answer within 1 s; it had not started handling the request, and will not";
    assert_eq!(late["rejected"]["mode"], not_begun, "{late}");
    let late_echo = ask(
        &consumer,
        &topic("actions", "action/echo/req"),
        json!({"id": "e1", "argument": "late"}),
        &echoes,
        "id",
        json!("e1"),
    );
    assert_eq!(late_echo["error"], not_begun, "{late_echo}");
    let hang = consumer.wait_json(&topic("actions", "action/hang/res"), T, |a| a["id"] == "h1");
    assert!(
        hang["error"]
            .as_str()
            .is_some_and(|e| e.contains("it had started handling the request")),
        "{hang}"
    );
    // The hang ends at its deadline and the app restarts; a new request
    // is answered by it, so the queue has been drained past the late ones.
    run.wait_app("actions", T, "restarted after the hang", |a| {
        a["state"] == "running" && a["restarts"].as_u64() >= Some(1)
    });
    let after = ask(
        &consumer,
        &topic("actions", "action/echo/req"),
        json!({"id": "e2", "argument": "after"}),
        &echoes,
        "id",
        json!("e2"),
    );
    assert_eq!(after["result"], "after", "{after}");
    // Version 1 was never applied, so it is still new.
    let now = ask(
        &consumer,
        &desired,
        json!({"version": 1, "attributes": {"mode": "now"}}),
        &acks,
        "accepted",
        json!(["mode"]),
    );
    assert_eq!(now["version"], 1, "{now}");
    // Reports leave in order: once "now" is reported, a report of the
    // abandoned change would have come before it.
    let reported = topic("actions", "twin/reported");
    consumer.wait_json(&reported, T, |r| r["attributes"]["mode"] == "now");
    let reported_late = consumer
        .on(&reported)
        .iter()
        .any(|m| m.json()["attributes"]["mode"] == "late");
    assert!(!reported_late, "the abandoned desired change was applied");

    // Versions outside 1 ..= 2^63 - 1 are refused, never stored wrapped.
    for version in [0u64, 1 << 63, u64::MAX] {
        let refused = ask(
            &consumer,
            &desired,
            json!({"version": version, "attributes": {"mode": "odd"}}),
            &acks,
            "version",
            json!(version),
        );
        assert_eq!(
            refused["error"],
            format!("version {version} is not between 1 and 2^63 - 1"),
            "{refused}"
        );
    }
    // A later, ordinary version is still newer than everything applied.
    let ack = ask(
        &consumer,
        &desired,
        json!({"version": 2, "attributes": {"count": 9_007_199_254_740_995_u64}}),
        &acks,
        "version",
        json!(2),
    );
    assert_eq!(
        ack["accepted"],
        json!(["count"]),
        "the top of the range: {ack}"
    );
    // One past a range's integer top is out of it, with the bound exact:
    // no float can tell 2^53 + 3 from 2^53 + 4.
    let ack = ask(
        &consumer,
        &desired,
        json!({"version": 3, "attributes": {"count": 9_007_199_254_740_996_u64}}),
        &acks,
        "version",
        json!(3),
    );
    assert_eq!(
        ack["rejected"]["count"], "9007199254740996 is out of range [0, 9007199254740995]",
        "{ack}"
    );
    // A flood of attributes (5,400 in 50 KB) gets a short error, not an
    // answer per attribute.
    let many: serde_json::Map<String, serde_json::Value> =
        (0..5_400).map(|i| (format!("u{i}"), json!(1))).collect();
    consumer.publish(
        &desired,
        json!({"version": 4, "attributes": many}).to_string(),
        false,
    );
    let flood = consumer.wait_json(&acks, T, |a| a["version"] == 4);
    assert!(
        flood["error"]
            .as_str()
            .is_some_and(|e| e.contains("over the limit of 256")),
        "{flood}"
    );
    let size = consumer
        .on(&acks)
        .iter()
        .filter(|m| m.json()["version"] == 4)
        .map(|m| m.payload.len())
        .max()
        .unwrap_or_default();
    assert!(size < 1024, "the refusal is {size} bytes");
    telemetry_flows(&consumer, batches(&consumer));
    assert!(
        run.peak_rss_mib() < 256,
        "peak RSS {} MiB",
        run.peak_rss_mib()
    );
    assert!(open_files(run.pid()) < 256, "open files");
    assert!(run.stop().success());
}

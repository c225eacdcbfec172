//! The examples under `examples/`, each run from its own gateway.toml (only
//! the data directory and the broker's port are changed, so tests can run
//! side by side) for a few seconds, checking what it produced on the wire.

use crate::common::mqtt::{Consumer, Mosquitto};
use crate::common::{Running, free_port, root};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use wasmgate::config::BrokerSettings;

const T: Duration = Duration::from_secs(30);

/// The example's gateway.toml with its data directory in `dir`, its paths
/// made absolute, and `cloud` as its `[cloud]` section; written to `dir`.
fn example_config(example: &str, dir: &Path, cloud: toml::Table) -> PathBuf {
    let home = root().join("examples").join(example);
    let text = std::fs::read_to_string(home.join("gateway.toml")).expect("the example's config");
    let mut config: toml::Table = toml::from_str(&text).expect("the example's config is TOML");
    let gateway = config["gateway"].as_table_mut().expect("[gateway]");
    gateway.insert(
        "data_dir".into(),
        dir.join("data").display().to_string().into(),
    );
    config.insert("cloud".into(), cloud.into());
    for app in config["app"].as_array_mut().expect("[[app]]") {
        let app = app.as_table_mut().expect("an app table");
        for key in ["component", "model"] {
            let relative = app[key].as_str().expect("a path").to_string();
            app.insert(key.into(), home.join(relative).display().to_string().into());
        }
        if let Some(models) = app.get_mut("models").and_then(|m| m.as_table_mut()) {
            for (_, path) in models.iter_mut() {
                let relative = path.as_str().expect("a path").to_string();
                *path = home.join(relative).display().to_string().into();
            }
        }
    }
    let path = dir.join("gateway.toml");
    std::fs::write(&path, toml::to_string(&config).expect("TOML")).expect("write the config");
    path
}

/// The example as its README runs it: with its embedded broker, here on a
/// free port, and a consumer subscribed to everything the gateway sends.
fn with_embedded_broker(example: &str, dir: &Path) -> (Running, Consumer) {
    let port = free_port();
    let mut cloud = toml::Table::new();
    cloud.insert("embedded".into(), true.into());
    cloud.insert("embedded_listen".into(), format!("127.0.0.1:{port}").into());
    let config = example_config(example, dir, cloud);
    let mut run = Running::spawn(&config);
    run.wait_connected(T);
    let settings = BrokerSettings::from_url(&format!("mqtt://127.0.0.1:{port}"), "test-consumer")
        .expect("broker settings");
    let consumer = Consumer::connect(&settings, &["wg/v1/#"]);
    (run, consumer)
}

/// Every point of `series` the consumer received, in order.
fn points(consumer: &Consumer, base: &str, series: &str) -> Vec<Value> {
    consumer
        .on(&format!("{base}/telemetry/{series}"))
        .iter()
        .flat_map(|m| m.json()["points"].as_array().cloned().unwrap_or_default())
        .collect()
}

/// `reading N: V %RH` lines of the humidity app: (N, V).
fn readings(run: &Running) -> Vec<(u64, f64)> {
    run.lines()
        .iter()
        .filter_map(|l| {
            let rest = l.split("reading ").nth(1)?;
            let (n, rest) = rest.split_once(": ")?;
            let (value, _) = rest.split_once(" %RH")?;
            Some((n.parse().ok()?, value.parse().ok()?))
        })
        .collect()
}

#[test]
fn humidity_sends_the_mean_of_every_ten_readings_and_takes_calibrate_and_reset() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut run, consumer) = with_embedded_broker("humidity", dir.path());
    let base = "wg/v1/humidity-gateway/humidity";

    // Tick every 200 ms, a window of 10: the first point after about 2 s.
    let first = consumer.wait_json(&format!("{base}/telemetry/humidity"), T, |_| true);
    let mean = first["points"][0]["values"]["humidity"]
        .as_f64()
        .expect("a mean");
    let read = readings(&run);
    let ten: Vec<f64> = (1..=10)
        .map(|n| {
            read.iter()
                .find(|(m, _)| *m == n)
                .map(|(_, v)| *v)
                .unwrap_or_else(|| panic!("reading {n} in the log"))
        })
        .collect();
    let expected = ten.iter().sum::<f64>() / 10.0;
    assert!(
        (mean - expected).abs() < 0.01,
        "the point is the mean of readings 1..=10: {mean} against {expected} of {ten:?}"
    );
    assert_eq!(
        first["points"].as_array().map(Vec::len),
        Some(1),
        "one point for ten readings"
    );

    // calibrate(2.5): the answer, and later readings say so.
    let answer = consumer.call(base, "calibrate", "c-1", Some(json!(2.5)));
    assert_eq!(answer["result"], json!(2.5), "{answer}");
    run.wait_for("(offset +2.50)", T);
    // Out of the model's range: refused by the gateway, not the app.
    let answer = consumer.call(base, "calibrate", "c-2", Some(json!(50)));
    assert!(
        answer["error"]
            .as_str()
            .unwrap_or_default()
            .contains("range"),
        "{answer}"
    );
    // reset: the count so far, and the offset back at 0.
    let answer = consumer.call(base, "reset", "r-1", None);
    let count = answer["result"].as_i64().expect("a count");
    assert!(count >= 10, "{answer}");
    run.wait_for("(offset +0.00)", T);
    let reported = consumer.wait_json(&format!("{base}/twin/reported"), T, |r| {
        r["attributes"]["offset"] == json!(0.0)
            && r["attributes"]["readings"].as_i64() < Some(count)
    });
    assert!(reported["attributes"]["humidity"].is_number(), "{reported}");
    assert!(run.stop().success());
}

#[test]
fn the_vacuum_maps_its_objects_onto_attributes_and_cleans_when_told() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut run, consumer) = with_embedded_broker("vacuum", dir.path());
    let base = "wg/v1/vacuum-gateway/vacuum";

    // Docked at first: every object's attributes, by their dotted names.
    let docked = consumer.wait_json(&format!("{base}/twin/reported"), T, |_| true);
    for name in [
        "battery.level",
        "battery.charging",
        "brushes.main.rpm",
        "brushes.side.rpm",
        "position.x",
        "position.y",
        "status.mode",
        "status.bin",
    ] {
        assert!(
            docked["attributes"].get(name).is_some(),
            "{name} in {docked}"
        );
    }
    assert_eq!(docked["attributes"]["status.mode"], "dock");

    // The cloud sets status.mode = clean: the brushes turn, the battery
    // drains, the robot moves.
    let ack = consumer.set_desired(base, 1, json!({"status.mode": "clean"}));
    assert_eq!(ack["accepted"], json!(["status.mode"]), "{ack}");
    let cleaning = consumer.wait_json(&format!("{base}/twin/reported"), T, |r| {
        r["attributes"]["status.mode"] == "clean"
            && r["attributes"]["status.bin"].as_f64() >= Some(2.0)
    });
    let attributes = &cleaning["attributes"];
    assert_eq!(attributes["brushes.main.rpm"], 1500, "{cleaning}");
    assert!(
        attributes["battery.level"].as_f64() < docked["attributes"]["battery.level"].as_f64(),
        "{cleaning}"
    );
    // A mode the app does not know: the app refuses it, the twin says why.
    let ack = consumer.set_desired(base, 2, json!({"status.mode": "dance"}));
    assert!(
        ack["rejected"]["status.mode"]
            .as_str()
            .unwrap_or_default()
            .contains("unknown mode"),
        "{ack}"
    );
    // A read-only attribute is refused by the model.
    let ack = consumer.set_desired(base, 3, json!({"battery.level": 100}));
    assert!(ack["rejected"].get("battery.level").is_some(), "{ack}");

    let answer = consumer.call(base, "locate", "l-1", None);
    let at = answer["result"].as_str().expect("a position").to_string();
    assert!(at.split(',').count() == 2 && at != "0.00,0.00", "{answer}");
    let answer = consumer.call(base, "empty-bin", "e-1", None);
    assert!(answer["result"].as_f64() >= Some(2.0), "{answer}");
    run.wait_for("bin emptied", T);
    assert!(run.stop().success());
}

#[test]
fn the_data_logger_batches_three_series_and_loses_nothing_in_a_broker_outage() {
    let mut broker = Mosquitto::start("");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cloud = toml::Table::new();
    cloud.insert("url".into(), broker.url().into());
    cloud.insert("backoff_initial_ms".into(), 100.into());
    cloud.insert("backoff_max_ms".into(), 500.into());
    let config = example_config("datalogger", dir.path(), cloud);
    let consumer = Consumer::connect(&broker.settings("consumer"), &["wg/v1/#"]);
    let base = "wg/v1/logger-gateway/logger";
    let mut run = Running::spawn(&config);
    run.wait_connected(T);
    run.wait_for("recorded vibration 1000 ", T);

    // The broker goes away for two seconds; the logger goes on recording.
    broker.stop();
    let outage = Instant::now();
    run.wait_disconnected(T);
    std::thread::sleep(Duration::from_secs(2));
    broker.restart();
    let during = outage.elapsed();
    run.wait_reconnected(T, 1);
    let recorded = run.wait_until(T, "3 s of points after the outage", |lines| {
        lines
            .iter()
            .rev()
            .find_map(|l| {
                l.split("recorded vibration ")
                    .nth(1)?
                    .split(' ')
                    .next()?
                    .parse::<i64>()
                    .ok()
            })
            .filter(|n| *n >= 6000)
    });
    // The gateway keeps sending what waited; then it stops.
    let wait_all = Instant::now();
    loop {
        let seqs: Vec<i64> = points(&consumer, base, "vibration")
            .iter()
            .filter_map(|p| p["values"]["seq"].as_i64())
            .collect();
        let max = seqs.iter().max().copied().unwrap_or(-1);
        if max + 1 >= recorded || wait_all.elapsed() > T {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(run.stop().success());

    // Everything recorded arrived: each series' sequence numbers without a
    // gap, in order (a resent batch may repeat, by its batch id).
    let mut batches = std::collections::HashSet::new();
    for series in ["vibration", "temperature", "power"] {
        let mut expected = 0;
        for message in consumer.on(&format!("{base}/telemetry/{series}")) {
            let batch = message.json();
            if !batches.insert(batch["batch"].as_str().expect("batch id").to_string()) {
                continue;
            }
            for point in batch["points"].as_array().expect("points") {
                let seq = point["values"]["seq"].as_i64().expect("seq");
                assert_eq!(
                    seq,
                    expected,
                    "{series}: point {seq} after {}",
                    expected - 1
                );
                expected += 1;
            }
        }
        assert!(expected > 0, "{series} arrived");
        if series == "vibration" {
            assert!(
                expected >= recorded,
                "{expected} of {recorded} vibration points arrived"
            );
        }
    }
    // Batching: the points of several ticks travel together (a tick makes
    // 100), most of all those that waited out the outage.
    let largest = consumer
        .on(&format!("{base}/telemetry/vibration"))
        .iter()
        .map(|m| m.json()["points"].as_array().map_or(0, Vec::len))
        .max()
        .unwrap_or(0);
    assert!(
        largest > 100 && largest <= 2000,
        "the largest vibration batch held {largest} points (outage {during:?})"
    );
}

#[test]
fn the_bus_gateway_registers_its_sensors_and_each_reports_as_its_own_device() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut run, consumer) = with_embedded_broker("busgateway", dir.path());
    run.wait_for("bus scanned: 4 sensors, 4 registered", T);
    // Each sensor's readings under its own device id.
    for n in 1..=4 {
        let batch = consumer.wait_json(
            &format!("wg/v1/bus-gateway/bus.th-0{n}/telemetry/temperature"),
            T,
            |_| true,
        );
        assert!(
            batch["points"][0]["values"]["celsius"].is_number(),
            "{batch}"
        );
    }
    // The README's commands: identify, label, unplug.
    let answer = consumer.call("wg/v1/bus-gateway/bus.th-02", "identify", "i-1", None);
    assert_eq!(answer["result"], "th-02", "{answer}");
    let answer = consumer.call(
        "wg/v1/bus-gateway/bus",
        "unplug",
        "u-1",
        Some(json!("th-04")),
    );
    assert_eq!(answer["result"], "th-04", "{answer}");
    let answer = consumer.call("wg/v1/bus-gateway/bus.th-04", "identify", "i-2", None);
    assert!(answer["error"].is_string(), "{answer}");
    let status = consumer.wait_json("wg/v1/bus-gateway/bus-gateway/status", T, |s| {
        s["apps"][0]["devices"].as_array().map(Vec::len) == Some(3)
    });
    assert_eq!(
        status["apps"][0]["devices"][0]["metadata"]["manufacturer"],
        "Acme Sensors"
    );
    assert!(run.stop().success());
}

#[test]
fn the_inventory_counts_on_the_gateway_and_takes_the_offices_reorder_points() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut run, consumer) = with_embedded_broker("inventory", dir.path());
    let base = "wg/v1/cabinet-gateway/cabinet";

    // The cabinet counts: 12 fuses, 3 taken, 9 left, at or below 10.
    let answer = consumer.call(base, "take", "t-1", Some(json!("fuse-10a:3")));
    assert_eq!(answer["result"], json!(9), "{answer}");
    let alert = consumer.wait_json(&format!("{base}/alert/low_stock"), T, |_| true);
    assert_eq!(
        alert["values"],
        json!({"part": "fuse-10a", "count": 9, "reorder_at": 10})
    );
    let changeset = consumer.wait_json(&format!("{base}/synced/parts"), T, |c| {
        c["changes"][0]["key"] == "fuse-10a"
    });
    assert_eq!(
        changeset["changes"][0]["kind"],
        json!({"update": {"count": 9}})
    );
    let answer = consumer.call(base, "take", "t-2", Some(json!("relay-24v:5")));
    assert_eq!(
        answer["error"],
        json!("only 4 of relay-24v in the cabinet"),
        "{answer}"
    );

    // The office, as serve sends it: a reorder point and a description for
    // the relay, and a count, which is the cabinet's (device-wins) and so
    // does not take.
    let rules = changeset["rules"].clone();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("time")
        .as_millis() as u64;
    let office = json!({
        "id": "office-1", "table": "parts", "rules": rules, "seq": 1,
        "changes": [{
            "key": "relay-24v", "side": "server",
            "stamp": {"wall_ms": now_ms, "counter": 0, "node": 0},
            "kind": {"update": {"reorder_at": 5, "description": "24 V DC relay", "count": 100}}
        }]
    });
    consumer.publish(
        &format!("{base}/synced/parts/down"),
        office.to_string(),
        false,
    );
    // The app learns of it on its next tick: 4 relays are at or below 5.
    let alert = consumer.wait_json(&format!("{base}/alert/low_stock"), T, |a| {
        a["values"]["part"] == "relay-24v"
    });
    assert_eq!(
        alert["values"],
        json!({"part": "relay-24v", "count": 4, "reorder_at": 5})
    );
    let answer = consumer.call(base, "list", "l-1", None);
    assert_eq!(
        answer["result"],
        json!(
            "bolt-m6: 200 in A1 (reorder at 50)\nfuse-10a: 9 in B2 (reorder at 10)\nrelay-24v: 4 in C3 (reorder at 5), 24 V DC relay"
        ),
        "{answer}"
    );
    assert!(run.stop().success());
}

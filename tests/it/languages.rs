//! The thermostat app in every guest language (guests/<lang>), run through
//! one scenario and asserted the same way: it starts, its climate points are
//! the Rust build's for the same seed and start temperature, its reports land
//! in the twin table, its tick counter is in kv storage and survives a
//! restart (with the room temperature handed over by save/init), and through
//! a real Mosquitto the `setpoint` desired change is accepted and the `reset`
//! action returns the old count.
//!
//! The guests are built with `guests/build LANG`; a missing tool fails the
//! test with a message that names it (CI runs guests/install-tools first).

use crate::common::mqtt::{Consumer, Mosquitto};
use crate::common::{Gateway, Running, root, thermostat_in};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

/// Waits for the cloud and for ticks.
const T: Duration = Duration::from_secs(30);
/// The first start compiles the component: Python and JavaScript components
/// take many seconds on a busy 2-core machine.
const START: Duration = Duration::from_secs(300);
/// Points compared with the Rust build: all of them come before the
/// setpoint changes, so they depend on nothing but the seed.
const EARLY: usize = 12;
/// A thousand ticks at 2 ms, beside the other languages' on 2 cores.
const ENDURANCE: Duration = Duration::from_secs(120);
const SEED: u64 = 42;
const START_TEMPERATURE: f64 = 19.0;
const NEW_SETPOINT: f64 = 23.5;

fn app_config(tick_interval_ms: u64) -> String {
    format!(
        "tick_interval_ms = {tick_interval_ms}\ncall_timeout_ms = 2000\n[app.config]\n\
         start_temperature = {START_TEMPERATURE:.1}\noverheat_at = 20.0\nseed = {SEED}"
    )
}

/// The thermostat app with `component` on `gw`, with a cloud link to `cloud`.
fn configure(
    gw: Gateway,
    component: &Path,
    cloud: Option<&Mosquitto>,
    tick_interval_ms: u64,
) -> Gateway {
    let gw = match cloud {
        Some(broker) => gw.section(&format!(
            "[cloud]\nurl = \"{}\"\nbackoff_initial_ms = 100\nbackoff_max_ms = 500\n",
            broker.url()
        )),
        None => gw,
    };
    gw.app(
        "thermostat",
        component,
        &root().join("examples/thermostat/thermostat.model.json"),
        &app_config(tick_interval_ms),
    )
}

fn topic(suffix: &str) -> String {
    format!("wg/v1/test-gw/thermostat/{suffix}")
}

/// `(number, temperature, heating)` of a "tick N: T °C, H % rh, heating on|off ..." log line.
fn tick_line(line: &str) -> Option<(i64, f64, bool)> {
    let rest = &line[line.find(" tick ")? + 6..];
    let (n, rest) = rest.split_once(": ")?;
    let (temperature, rest) = rest.split_once(" °C")?;
    let heating = rest.contains("heating on");
    Some((n.parse().ok()?, temperature.parse().ok()?, heating))
}

/// The climate points (temperature, humidity) in the gateway's outbox, in order.
fn outbox_points(gw: &Gateway) -> Vec<(f64, f64)> {
    gw.outbox_points(Some("climate"))
        .iter()
        .map(|p| point(&p["values"]))
        .collect()
}

fn point(values: &Value) -> (f64, f64) {
    (
        values["temperature"].as_f64().expect("temperature"),
        values["humidity"].as_f64().expect("humidity"),
    )
}

/// The climate points the cloud received, de-duplicated by batch id, in order.
fn delivered_points(consumer: &Consumer) -> Vec<(f64, f64)> {
    let mut batches = BTreeSet::new();
    let mut points = Vec::new();
    for message in consumer.on(&topic("telemetry/climate")) {
        let batch = message.json();
        if batches.insert(batch["batch"].as_str().expect("batch id").to_string()) {
            points.extend(
                batch["points"]
                    .as_array()
                    .expect("points")
                    .iter()
                    .map(|p| point(&p["values"])),
            );
        }
    }
    points
}

/// Each climate batch as it arrived: its id and how many points it held
/// (to tell a batch that came late from one that never came).
fn delivered_batches(consumer: &Consumer) -> Vec<(String, usize)> {
    consumer
        .on(&topic("telemetry/climate"))
        .iter()
        .map(|message| {
            let batch = message.json();
            let points = batch["points"].as_array().map_or(0, Vec::len);
            (batch["batch"].as_str().unwrap_or("?").to_string(), points)
        })
        .collect()
}

/// The Rust build's first points, from a run without a cloud (they stay in
/// the outbox), for the seed and start temperature every language gets.
fn rust_points() -> &'static [(f64, f64)] {
    static POINTS: OnceLock<Vec<(f64, f64)>> = OnceLock::new();
    POINTS.get_or_init(|| {
        let gw = configure(Gateway::new(), &thermostat_in("rust"), None, 50);
        let mut run = gw.start();
        run.wait_for(&format!("tick {EARLY}:"), START);
        assert!(run.stop().success());
        let points = outbox_points(&gw);
        assert!(
            points.len() >= EARLY,
            "the Rust build recorded {} points",
            points.len()
        );
        points
    })
}

/// The room the thermostat simulates, computed here: xorshift64 noise,
/// heating with half a degree of hysteresis around 21 °C.
fn model_points(n: usize) -> Vec<(f64, f64)> {
    let round = |x: f64| (x * 100.0).round() / 100.0;
    let (mut seed, mut temperature, mut heating) = (SEED, START_TEMPERATURE, false);
    (1..=n)
        .map(|step| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let noise = (seed % 1000) as f64 / 1000.0 - 0.5;
            temperature += if heating { 0.4 } else { -0.25 } + noise * 0.1;
            let humidity = 45.0 + 8.0 * (step as f64 / 10.0).sin() + noise;
            let reading = (round(temperature), round(humidity));
            if reading.0 < 20.5 {
                heating = true;
            } else if reading.0 > 21.5 {
                heating = false;
            }
            reading
        })
        .collect()
}

/// Publish a desired change and wait for its ack.
fn desire(consumer: &Consumer, body: Value) -> Value {
    let version = body["version"].clone();
    consumer.publish(&topic("twin/desired"), body.to_string(), false);
    consumer.wait_json(&topic("twin/ack"), T, |j| j["version"] == version)
}

/// Call an action and wait for its response.
fn call(consumer: &Consumer, name: &str, id: &str) -> Value {
    consumer.publish(
        &topic(&format!("action/{name}/req")),
        json!({ "id": id }).to_string(),
        false,
    );
    consumer.wait_json(&topic(&format!("action/{name}/res")), T, |j| j["id"] == id)
}

/// The last tick logged after line `from`.
fn last_tick(run: &Running, from: usize) -> (i64, f64, bool) {
    run.lines()[from..]
        .iter()
        .filter_map(|l| tick_line(l))
        .next_back()
        .expect("a tick was logged")
}

fn reported(gw: &Gateway, name: &str) -> Value {
    let text: String = gw
        .db()
        .query_row(
            "SELECT reported FROM twin WHERE device = 'thermostat' AND name = ?1",
            [name],
            |r| r.get(0),
        )
        .unwrap_or_else(|e| panic!("no reported {name} in the twin table: {e}"));
    serde_json::from_str(&text).expect("reported values are JSON")
}

fn stored_ticks(gw: &Gateway) -> u64 {
    let bytes: Vec<u8> = gw
        .db()
        .query_row(
            "SELECT value FROM kv WHERE app = 'thermostat' AND key = 'ticks'",
            [],
            |r| r.get(0),
        )
        .expect("the tick counter is in kv storage");
    u64::from_le_bytes(bytes.try_into().expect("the tick counter is 8 bytes"))
}

/// The one scenario every language's build goes through.
fn thermostat_scenario(lang: &str) {
    let component = thermostat_in(lang);
    let expected = rust_points();
    let broker = Mosquitto::start("");
    let consumer = Consumer::connect(&broker.settings("consumer"), &["wg/v1/test-gw/#"]);
    let gw = configure(Gateway::new(), &component, Some(&broker), 50);
    let mut run = gw.start();
    run.wait_running("thermostat", START);
    run.wait_for(&format!("tick {EARLY}:"), T);

    // The same readings as the Rust build, tick for tick.
    let deadline = std::time::Instant::now() + T;
    let points = loop {
        let points = delivered_points(&consumer);
        if points.len() >= EARLY || std::time::Instant::now() > deadline {
            break points;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        points.len() >= EARLY,
        "{lang}: the cloud received {} climate points",
        points.len()
    );
    assert_eq!(
        points[..EARLY],
        expected[..EARLY],
        "{lang}: climate points differ from the Rust build's; batches as they arrived (id, points): {:?}",
        delivered_batches(&consumer)
    );

    // The cloud changes the setpoint; the app takes it and reports it.
    let ack = desire(
        &consumer,
        json!({"version": 1, "attributes": {"setpoint": NEW_SETPOINT}}),
    );
    assert_eq!(ack["accepted"], json!(["setpoint"]), "{lang}: {ack}");
    assert_eq!(ack["rejected"], json!({}), "{lang}: {ack}");
    run.wait_for("setpoint changed 21.0 -> 23.5 °C", T);
    consumer.wait_json(&topic("twin/reported"), T, |j| {
        j["attributes"]["setpoint"].as_f64() == Some(NEW_SETPOINT)
    });

    // `reset` returns the count it replaced: the last tick before it.
    let response = call(&consumer, "reset", "reset-1");
    let before = response["result"]
        .as_i64()
        .unwrap_or_else(|| panic!("{lang}: reset returned no count: {response}"));
    let lines = run.lines();
    let reset_at = lines
        .iter()
        .position(|l| l.contains(&format!("reset: tick counter was {before}")))
        .unwrap_or_else(|| panic!("{lang}: no reset line for {before}"));
    assert!(before >= EARLY as i64, "{lang}: reset returned {before}");
    assert_eq!(
        lines[..reset_at]
            .iter()
            .filter_map(|l| tick_line(l))
            .next_back()
            .map(|t| t.0),
        Some(before),
        "{lang}: reset returned a count that is not the last tick's"
    );
    // Counting starts again; a few ticks warm the room towards 23.5 °C.
    run.wait_until(T, "tick 15 after the reset", |lines| {
        lines[reset_at..]
            .iter()
            .any(|l| tick_line(l).is_some_and(|t| t.0 == 15))
            .then_some(())
    });
    assert!(
        run.stop().success(),
        "{lang}: the gateway did not stop cleanly"
    );

    // The counter in storage, the twin and the log agree.
    let (last, temperature, heating) = last_tick(&run, reset_at);
    assert!(last >= 15, "{lang}: last tick {last}");
    assert_eq!(stored_ticks(&gw), last as u64, "{lang}: kv counter");
    assert_eq!(
        reported(&gw, "ticks"),
        json!(last),
        "{lang}: reported ticks"
    );
    assert_eq!(
        reported(&gw, "setpoint").as_f64(),
        Some(NEW_SETPOINT),
        "{lang}"
    );
    assert_eq!(
        reported(&gw, "temperature").as_f64(),
        Some(temperature),
        "{lang}"
    );
    assert_eq!(reported(&gw, "heating"), json!(heating), "{lang}");

    assert_eq!(run.count("app crashed"), 0, "{lang}: the app crashed");

    // A restart: the counter and the setpoint come back, and save/init hand
    // the room temperature over instead of starting again from the config.
    // This time it ticks every 2 ms, for a thousand ticks: a guest whose
    // memory goes wrong as its heap grows crashes within them.
    let gw = configure(gw.reconfigure(), &component, Some(&broker), 2);
    let mut run = gw.start();
    let started = run.wait_for("ticks so far", START);
    assert!(
        started.contains(&format!("setpoint 23.5 °C, {last} ticks so far")),
        "{lang}: {started}"
    );
    let next = run.wait_until(T, "the first tick after the restart", |lines| {
        lines.iter().filter_map(|l| tick_line(l)).next()
    });
    assert_eq!(next.0, last + 1, "{lang}: the counter went on from storage");
    assert!(
        (temperature - expected[0].0).abs() > 1.0,
        "{lang}: the room should have warmed from {} towards 23.5 °C, is {temperature}",
        expected[0].0
    );
    assert!(
        (next.1 - temperature).abs() < 0.5,
        "{lang}: the room was {temperature} °C before the restart and {} °C after: not handed over",
        next.1
    );
    assert_eq!(
        run.count("compiled component"),
        0,
        "{lang}: the restart loads the component from the compile cache"
    );
    run.wait_until(ENDURANCE, "a thousand ticks after the restart", |lines| {
        lines
            .iter()
            .filter_map(|l| tick_line(l))
            .any(|t| t.0 >= last + 1000)
            .then_some(())
    });
    assert!(run.stop().success());
    assert_eq!(run.count("app crashed"), 0, "{lang}: the app crashed");
    assert!(
        stored_ticks(&gw) > last as u64,
        "{lang}: ticks after the restart are stored"
    );
}

#[test]
fn the_rust_build_matches_the_simulated_room() {
    let model = model_points(EARLY);
    for (i, (got, want)) in rust_points()[..EARLY].iter().zip(&model).enumerate() {
        // The test's own sin() may differ from the guest's in the last bit.
        assert!(
            (got.0 - want.0).abs() < 0.011 && (got.1 - want.1).abs() < 0.011,
            "tick {}: the Rust build recorded {got:?}, the model says {want:?}",
            i + 1
        );
    }
}

#[test]
fn thermostat_in_rust() {
    thermostat_scenario("rust");
}

#[test]
fn thermostat_in_javascript() {
    thermostat_scenario("js");
}

#[test]
fn thermostat_in_python() {
    thermostat_scenario("python");
}

#[test]
fn thermostat_in_c() {
    thermostat_scenario("c");
}

#[test]
fn thermostat_in_go() {
    thermostat_scenario("go");
}

#[test]
fn thermostat_in_zig() {
    thermostat_scenario("zig");
}

/// What the thermostat does not call, from Go and Zig: `register` and
/// `unregister` (their ports of the bus-gateway example, capped by
/// `max_devices`) and `content` (an upload of bytes, received whole by
/// `wasmgate cloud receive`), on the real gateway and Mosquitto.
#[test]
fn go_and_zig_apps_register_devices_and_upload_content() {
    for lang in ["go", "zig"] {
        let out = thermostat_in(lang)
            .parent()
            .expect("the language's out/")
            .to_path_buf();
        let broker = Mosquitto::start("");
        let example = root().join("examples/busgateway");
        let gw = Gateway::new()
            .section(&format!(
                "[cloud]\nurl = \"{}\"\nbackoff_initial_ms = 100\nbackoff_max_ms = 500\n",
                broker.url()
            ))
            .app(
                "bus",
                &out.join("busgateway.wasm"),
                &example.join("bus.model.json"),
                &format!(
                    "tick_interval_ms = 200\nmax_devices = 2\n[app.models]\nsensor = \"{}\"\n\
                     [app.config]\nsensors = 3",
                    example.join("sensor.model.json").display()
                ),
            )
            .app(
                "content",
                &out.join("contenttransfer.wasm"),
                &root().join("tests/models/content.json"),
                "tick_interval_ms = 100\n[app.config]\nupload_kib = 4",
            );
        let received = tempfile::tempdir().expect("tempdir");
        let mut receive = Running::spawn_command({
            let mut command = std::process::Command::new(crate::common::binary());
            command
                .args([
                    "cloud",
                    "--broker",
                    &broker.url(),
                    "receive",
                    "test-gw/content",
                ])
                .arg("--out")
                .arg(received.path());
            command
        });
        let mut run = gw.start();
        run.wait_for("bus scanned: 3 sensors, 2 registered", START);
        let refused = run.wait_for("sensor th-03 not registered", T);
        assert!(refused.contains("max_devices = 2"), "{lang}: {refused}");
        assert_eq!(gw.count("SELECT COUNT(*) FROM registrations"), 2, "{lang}");

        let consumer = Consumer::connect(
            &broker.settings(&format!("consumer-{lang}")),
            &["wg/v1/test-gw/#"],
        );
        run.wait_connected(T);
        let answer = consumer.call("wg/v1/test-gw/bus", "unplug", "u-1", Some(json!("th-01")));
        assert_eq!(answer["result"], json!("th-01"), "{lang}: {answer}");
        assert_eq!(gw.count("SELECT COUNT(*) FROM registrations"), 1, "{lang}");

        // The content app's 4 KiB upload, whole.
        let file = received.path().join("data.bin");
        let deadline = std::time::Instant::now() + T;
        while std::fs::metadata(&file).map_or(true, |m| m.len() != 4096) {
            assert!(
                std::time::Instant::now() < deadline,
                "{lang}: data.bin did not arrive whole"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(run.stop().success(), "{lang}");
        receive.kill9();
    }
}

//! Devices an app registers (indirectly connected devices): their own
//! topics, desired changes and actions routed back to the app that
//! registered them, the same ids across a restart, the per-app cap, and
//! unregistering. The real binary, a real Mosquitto, and the bus-gateway
//! example's guest and models.

use crate::common::mqtt::{Consumer, Mosquitto};
use crate::common::{Gateway, Running, guest, root};
use serde_json::{Value, json};
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

/// A gateway with the bus app: `sensors` sensors, at most `max_devices`
/// registered.
fn bus_gateway(base: Gateway, broker: &Mosquitto, sensors: usize, max_devices: usize) -> Gateway {
    let example = root().join("examples/busgateway");
    base.section(&format!(
        "[cloud]\nurl = \"{}\"\nbackoff_initial_ms = 100\nbackoff_max_ms = 500\n",
        broker.url()
    ))
    .app(
        "bus",
        &guest("busgateway"),
        &example.join("bus.model.json"),
        &format!(
            "tick_interval_ms = 200\nmax_devices = {max_devices}\n\
                 [app.models]\nsensor = \"{}\"\n[app.config]\nsensors = {sensors}",
            example.join("sensor.model.json").display()
        ),
    )
}

/// The topic base of a device of the test gateway.
fn device(id: &str) -> String {
    format!("wg/v1/test-gw/{id}")
}

/// The devices the retained status announces for the bus app.
fn announced(status: &Value) -> Vec<Value> {
    status["apps"]
        .as_array()
        .and_then(|apps| apps.iter().find(|a| a["name"] == "bus"))
        .and_then(|bus| bus["devices"].as_array().cloned())
        .unwrap_or_default()
}

#[test]
fn registered_devices_have_their_own_topics_and_their_traffic_comes_back_to_the_app() {
    let broker = Mosquitto::start("");
    let consumer = Consumer::connect(&broker.settings("consumer"), &["wg/v1/#"]);
    let gw = bus_gateway(Gateway::new(), &broker, 3, 16);
    let mut run = gw.start();
    run.wait_for("bus scanned: 3 sensors, 3 registered", T);

    // Announced with their metadata in the retained status.
    let status = consumer.wait_json("wg/v1/test-gw/test-gw/status", T, |s| {
        announced(s).len() == 3
    });
    let devices = announced(&status);
    let first = &devices[0];
    assert_eq!(first["id"], "bus.th-01", "{status}");
    assert_eq!(first["hardware_id"], "th-01");
    assert_eq!(first["model"], "sensor");
    assert_eq!(first["metadata"]["manufacturer"], "Acme Sensors");
    assert_eq!(first["metadata"]["serial_number"], "SN-1000");

    // Each sensor's data under its own device id.
    let batch = consumer.wait_json("wg/v1/test-gw/bus.th-01/telemetry/temperature", T, |_| true);
    assert!(
        batch["points"][0]["values"]["celsius"].is_number(),
        "{batch}"
    );
    let reported = consumer.wait_json("wg/v1/test-gw/bus.th-02/twin/reported", T, |r| {
        r["attributes"]["label"] == "sensor th-02"
    });
    assert!(
        reported["attributes"]["temperature"].is_number(),
        "{reported}"
    );

    // Desired changes and actions for a sensor reach the app with that
    // sensor's id, checked against the sensor's model.
    let ack = consumer.set_desired(&device("bus.th-02"), 1, json!({"label": "kitchen"}));
    assert_eq!(ack["accepted"], json!(["label"]), "{ack}");
    run.wait_for("th-02 (bus.th-02) label: kitchen", T);
    consumer.wait_json("wg/v1/test-gw/bus.th-02/twin/reported", T, |r| {
        r["attributes"]["label"] == "kitchen"
    });
    let ack = consumer.set_desired(&device("bus.th-02"), 2, json!({"temperature": 5}));
    assert!(
        ack["rejected"].get("temperature").is_some(),
        "not writable in the sensor model: {ack}"
    );
    let answer = consumer.call(&device("bus.th-03"), "identify", "i-1", None);
    assert_eq!(answer["result"], "th-03", "{answer}");
    // `scan` is the bus's action, not a sensor's: the sensor model refuses it.
    let answer = consumer.call(&device("bus.th-03"), "scan", "s-1", None);
    assert!(answer["error"].is_string(), "{answer}");
    // And the bus's own device still has its own model.
    let answer = consumer.call(&device("bus"), "scan", "s-2", None);
    assert_eq!(
        answer["result"], 0,
        "everything is registered already: {answer}"
    );
    assert!(run.stop().success());
}

#[test]
fn a_hardware_id_keeps_its_device_across_a_restart_and_is_routed_before_the_app_registers_it() {
    let broker = Mosquitto::start("");
    let consumer = Consumer::connect(&broker.settings("consumer"), &["wg/v1/#"]);
    let gw = bus_gateway(Gateway::new(), &broker, 2, 16);
    let mut run = gw.start();
    run.wait_for("bus scanned: 2 sensors, 2 registered", T);
    assert!(run.stop().success());

    let mut run = gw.start();
    run.wait_for("bus scanned: 2 sensors, 2 registered", T);
    run.wait_for("sensor th-01 registered as bus.th-01", T);
    let rows = gw.count("SELECT COUNT(*) FROM registrations");
    assert_eq!(rows, 2, "re-registering adds nothing");
    // Registering again does not write again (nothing changed).
    assert_eq!(run.count("device registered"), 0, "{:?}", run.lines());
    assert!(run.stop().success());

    // A version of the app that registers nothing: the devices registered
    // before are still routed to it, so the app itself answers for them.
    let gw = bus_gateway(gw.reconfigure(), &broker, 0, 16);
    let mut run = gw.start();
    run.wait_for("bus scanned: 0 sensors, 0 registered", T);
    run.wait_connected(T);
    let ack = consumer.set_desired(&device("bus.th-01"), 7, json!({"label": "hall"}));
    assert!(
        ack["rejected"]["label"]
            .as_str()
            .unwrap_or_default()
            .contains("bus.th-01 is not a sensor of this bus"),
        "the app, not the gateway, answered: {ack}"
    );
    assert!(run.stop().success());
}

#[test]
fn the_cap_refuses_registrations_past_max_devices_and_unregistering_frees_a_place() {
    let broker = Mosquitto::start("");
    let consumer = Consumer::connect(&broker.settings("consumer"), &["wg/v1/#"]);
    let gw = bus_gateway(Gateway::new(), &broker, 3, 2);
    let mut run: Running = gw.start();
    let refused = run.wait_for("sensor th-03 not registered", T);
    assert!(
        refused.contains("limit: the app has registered 2 devices, its limit (max_devices = 2)"),
        "{refused}"
    );
    run.wait_connected(T);
    consumer.wait_json("wg/v1/test-gw/bus.th-01/twin/reported", T, |_| true);

    // Unplug th-01: it is no longer routed and its twin is gone.
    let answer = consumer.call(&device("bus"), "unplug", "u-1", Some(json!("th-01")));
    assert_eq!(answer["result"], "th-01", "{answer}");
    let answer = consumer.call(&device("bus.th-01"), "identify", "i-1", None);
    assert!(
        answer["error"]
            .as_str()
            .unwrap_or_default()
            .contains("no app on gateway test-gw speaks for device bus.th-01"),
        "{answer}"
    );
    let twin = gw.count("SELECT COUNT(*) FROM twin WHERE device = 'bus.th-01'");
    assert_eq!(twin, 0);
    // Each device is announced on its own retained topic, and withdrawn
    // (an empty retained message) when it is unregistered.
    let registrations = |id: &str| consumer.on(&format!("{}/registration", device(id)));
    let deadline = std::time::Instant::now() + T;
    while registrations("bus.th-01")
        .last()
        .is_none_or(|m| !m.payload.is_empty())
    {
        assert!(
            std::time::Instant::now() < deadline,
            "th-01 was not withdrawn"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let first = registrations("bus.th-01")[0].json();
    assert_eq!(
        (&first["app"], &first["hardware_id"], &first["model"]),
        (&json!("bus"), &json!("th-01"), &json!("sensor")),
        "{first}"
    );
    assert!(first["metadata"].is_object(), "{first}");
    assert_eq!(registrations("bus.th-02").len(), 1, "announced once");
    // Its model goes beside it, the app's model file as JSON (the cloud
    // checks desired values with it), and is withdrawn with it.
    let sensor_model =
        std::fs::read_to_string(root().join("examples/busgateway/sensor.model.json"))
            .expect("the sensor model");
    let models = |id: &str| consumer.on(&format!("{}/model", device(id)));
    while models("bus.th-01")
        .last()
        .is_none_or(|m| !m.payload.is_empty())
    {
        assert!(
            std::time::Instant::now() < deadline,
            "th-01's model was not withdrawn"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        models("bus.th-01")[0].json(),
        serde_json::from_str::<Value>(&sensor_model).expect("JSON")
    );
    assert!(registrations("bus.th-03").is_empty(), "never registered");
    // The place is free again: the next scan registers th-01 again, with
    // the id it had, and th-03 is still one too many.
    let answer = consumer.call(&device("bus"), "scan", "s-1", None);
    assert_eq!(answer["result"], 1, "{answer}");
    let status = consumer.wait_json("wg/v1/test-gw/test-gw/status", T, |s| {
        let ids: Vec<Value> = announced(s).iter().map(|d| d["id"].clone()).collect();
        ids == [json!("bus.th-01"), json!("bus.th-02")]
    });
    assert_eq!(announced(&status).len(), 2, "{status}");
    consumer.wait_json(&format!("{}/registration", device("bus.th-01")), T, |r| {
        r["hardware_id"] == "th-01"
    });
    // A new subscriber finds every registered device retained, and not the
    // withdrawn announcement.
    let late = Consumer::connect(&broker.settings("late"), &["wg/v1/test-gw/+/registration"]);
    let retained = late.wait_json(&format!("{}/registration", device("bus.th-02")), T, |_| {
        true
    });
    assert_eq!(retained["hardware_id"], "th-02");
    assert_eq!(run.count("sensor th-03 not registered"), 2);
    // Unplugging something that is not registered is an error to the app.
    let answer = consumer.call(&device("bus"), "unplug", "u-2", Some(json!("th-09")));
    assert!(answer["error"].is_string(), "{answer}");
    assert!(run.stop().success());
}

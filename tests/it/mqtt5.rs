//! The `wg/v1` link over MQTT 5 (`[cloud] mqtt_version = "5"`), against
//! Mosquitto, read and driven with Mosquitto's own MQTT 5 clients
//! (`mosquitto_sub -V 5`, `mosquitto_pub -V 5`): content types, telemetry
//! that expires with its series' `max_age_s`, actions answered on the
//! request's response topic with its correlation data, and a session the
//! broker keeps while the gateway is away.

use crate::common::mqtt::{Mosquitto, Mqtt5Watcher, mosquitto_pub};
use crate::common::{Gateway, guest, root};
use serde_json::Value;
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

fn thermostat(broker: &Mosquitto, max_age: &str) -> Gateway {
    Gateway::new()
        .section(&format!(
            "[cloud]\nurl = \"{}\"\nbackoff_initial_ms = 100\nbackoff_max_ms = 500\nmqtt_version = \"5\"\n\
             {max_age}",
            broker.url()
        ))
        .app(
            "thermostat",
            &guest("thermostat"),
            &root().join("examples/thermostat/thermostat.model.json"),
            "tick_interval_ms = 100",
        )
}

fn payload(message: &Value) -> Value {
    serde_json::from_str(message["payload"].as_str().expect("a text payload")).expect("JSON")
}

#[test]
fn over_mqtt_5_payloads_say_they_are_json_and_telemetry_expires_with_its_series() {
    let broker = Mosquitto::start("");
    let watcher = Mqtt5Watcher::start(&broker, &["wg/v1/test-gw/#"]);
    let gw = thermostat(&broker, "[outbox.series.climate]\nmax_age_s = 600\n");
    let mut run = gw.start();

    let batch = watcher.wait("wg/v1/test-gw/thermostat/telemetry/climate", T, |_| true);
    let properties = &batch["properties"];
    assert_eq!(properties["content-type"], "application/json", "{batch}");
    let expiry = properties["message-expiry-interval"]
        .as_u64()
        .unwrap_or_else(|| panic!("telemetry of a series with max_age_s expires: {batch}"));
    assert!(
        (500..=600).contains(&expiry),
        "what is left of the series' 600 s: {expiry}"
    );
    assert!(payload(&batch)["points"].is_array());

    let status = watcher.wait("wg/v1/test-gw/test-gw/status", T, |_| true);
    assert_eq!(status["properties"]["content-type"], "application/json");
    assert!(
        status["properties"]["message-expiry-interval"].is_null(),
        "a status does not expire: {status}"
    );
    let reported = watcher.wait("wg/v1/test-gw/thermostat/twin/reported", T, |_| true);
    assert!(reported["properties"]["message-expiry-interval"].is_null());
    assert!(run.stop().success());
}

#[test]
fn over_mqtt_5_an_action_is_answered_on_its_response_topic_with_its_correlation_data() {
    let broker = Mosquitto::start("");
    let watcher = Mqtt5Watcher::start(&broker, &["wg/v1/test-gw/#", "operator/replies/#"]);
    let gw = thermostat(&broker, "");
    let mut run = gw.start();
    run.wait_connected(T);
    // A series without its own max_age_s expires with the outbox's
    // default: a week.
    let batch = watcher.wait("wg/v1/test-gw/thermostat/telemetry/climate", T, |_| true);
    let expiry = batch["properties"]["message-expiry-interval"]
        .as_u64()
        .expect("an expiry");
    assert!(
        (604_000..=604_800).contains(&expiry),
        "the default max_age: {batch}"
    );

    mosquitto_pub(
        &broker,
        "wg/v1/test-gw/thermostat/action/reset/req",
        r#"{"id": "r-1"}"#,
        &[
            ("response-topic", "operator/replies/op-7"),
            ("correlation-data", "corr-42"),
        ],
    );
    let answer = watcher.wait("operator/replies/op-7", T, |_| true);
    assert_eq!(
        answer["properties"]["correlation-data"], "corr-42",
        "{answer}"
    );
    assert_eq!(answer["properties"]["content-type"], "application/json");
    let response = payload(&answer);
    assert_eq!(response["id"], "r-1");
    assert!(response["result"].is_i64(), "{response}");

    // A refusal (an unknown action) takes the same way back.
    mosquitto_pub(
        &broker,
        "wg/v1/test-gw/thermostat/action/explode/req",
        r#"{"id": "r-2"}"#,
        &[
            ("response-topic", "operator/replies/op-8"),
            ("correlation-data", "corr-43"),
        ],
    );
    let answer = watcher.wait("operator/replies/op-8", T, |_| true);
    assert_eq!(answer["properties"]["correlation-data"], "corr-43");
    assert!(payload(&answer)["error"].is_string(), "{answer}");

    // Without a response topic, the answer goes where 3.1.1 would send it.
    mosquitto_pub(
        &broker,
        "wg/v1/test-gw/thermostat/action/reset/req",
        r#"{"id": "r-3"}"#,
        &[],
    );
    watcher.wait("wg/v1/test-gw/thermostat/action/reset/res", T, |m| {
        payload(m)["id"] == "r-3"
    });
    assert!(run.stop().success());
}

#[test]
fn over_mqtt_5_the_broker_keeps_the_session_while_the_gateway_is_away() {
    let broker = Mosquitto::start("");
    let watcher = Mqtt5Watcher::start(&broker, &["wg/v1/test-gw/#"]);
    let gw = thermostat(&broker, "");
    let mut run = gw.start();
    run.wait_connected(T);
    watcher.wait("wg/v1/test-gw/thermostat/twin/reported", T, |_| true);
    assert!(run.stop().success());

    // Sent while the gateway is down: the broker queues it in the session
    // the gateway asked it to keep, and delivers it when the gateway is
    // back.
    mosquitto_pub(
        &broker,
        "wg/v1/test-gw/thermostat/twin/desired",
        r#"{"version": 7, "attributes": {"setpoint": 24.5}}"#,
        &[],
    );
    let mut run = gw.start();
    let ack = watcher.wait("wg/v1/test-gw/thermostat/twin/ack", T, |m| {
        payload(m)["version"] == 7
    });
    assert_eq!(
        payload(&ack)["accepted"],
        serde_json::json!(["setpoint"]),
        "{ack}"
    );
    watcher.wait("wg/v1/test-gw/thermostat/twin/reported", T, |m| {
        payload(m)["attributes"]["setpoint"] == 24.5
    });
    assert!(run.stop().success());
}

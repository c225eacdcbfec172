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

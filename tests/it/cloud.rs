//! The cloud link against a real Mosquitto: uplink payloads, the twin,
//! actions, delivery through outages and `kill -9`, TLS, ACLs, and hostile
//! downlink messages.

use crate::common::mqtt::{Consumer, Mosquitto, Pki};
use crate::common::{Gateway, guest, last_counter, model, root};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

const T: Duration = Duration::from_secs(20);

fn cloud(broker: &Mosquitto) -> String {
    format!(
        "[cloud]\nurl = \"{}\"\nbackoff_initial_ms = 100\nbackoff_max_ms = 500\n",
        broker.url()
    )
}

fn topic(device: &str, suffix: &str) -> String {
    format!("wg/v1/test-gw/{device}/{suffix}")
}

fn thermostat(broker: &Mosquitto, app_extra: &str) -> Gateway {
    Gateway::new().section(&cloud(broker)).app(
        "thermostat",
        &guest("thermostat"),
        &root().join("examples/thermostat/thermostat.model.json"),
        app_extra,
    )
}

fn actions(broker: &Mosquitto) -> Gateway {
    Gateway::new().section(&cloud(broker)).app(
        "actions",
        &guest("action-behaviours"),
        &model("actions"),
        "call_timeout_ms = 300",
    )
}

#[test]
fn telemetry_alerts_reported_state_and_status_arrive_as_documented() {
    let broker = Mosquitto::start("");
    let consumer = Consumer::connect(&broker.settings("consumer"), &["wg/v1/test-gw/#"]);
    let gw = thermostat(
        &broker,
        "tick_interval_ms = 50\n[app.config]\nstart_temperature = 19.5\noverheat_at = 20.0",
    );
    let mut run = gw.start();

    let status = consumer.wait_json(&topic("test-gw", "status"), T, |j| {
        j["apps"][0]["state"] == "running"
    });
    assert_eq!(status["online"], true);
    assert!(status["time"].as_u64().expect("time") > 1_600_000_000_000_000_000);
    let app = &status["apps"][0];
    assert_eq!(
        (app["name"].as_str(), app["device"].as_str()),
        (Some("thermostat"), Some("thermostat"))
    );
    assert_eq!(
        app["component"].as_str().map(str::len),
        Some(64),
        "sha256 of the component"
    );
    assert_eq!(app["version"], 1, "its number in the registry");
    assert_eq!(app["restarts"], 0);
    // Each capability unit reports its part: the thermostat's storage
    // holds its saved state, and no log lines were dropped.
    assert_eq!(app["capabilities"]["log"]["dropped"], 0, "{app}");
    assert!(app["capabilities"]["storage"]["keys"].is_u64(), "{app}");
    assert_eq!(app["capabilities"]["device"]["registered"], 0, "{app}");
    assert!(status["outbox"]["entries"].is_u64() && status["outbox"]["points"].is_u64());

    let batch = consumer.wait_json(&topic("thermostat", "telemetry/climate"), T, |_| true);
    assert!(
        batch["batch"]
            .as_str()
            .expect("batch id")
            .starts_with("test-gw-")
    );
    for point in batch["points"].as_array().expect("points") {
        assert!(point["time"].as_u64().expect("time in ns") > 1_600_000_000_000_000_000);
        assert!(
            point["values"]["temperature"].is_f64() && point["values"]["humidity"].is_f64(),
            "{point}"
        );
    }

    let alert = consumer.wait_json(&topic("thermostat", "alert/overheat"), T, |_| true);
    assert!(alert["id"].as_str().expect("id").starts_with("test-gw-"));
    assert_eq!(alert["severity"], "warning");
    assert!(
        alert["values"]["temperature"]
            .as_f64()
            .expect("temperature")
            > 20.0
    );
    assert!(alert["time"].is_u64());

    let reported = consumer.wait_json(&topic("thermostat", "twin/reported"), T, |j| {
        j["version"].as_u64() > Some(3)
    });
    let names: Vec<&String> = reported["attributes"]
        .as_object()
        .expect("attributes")
        .keys()
        .collect();
    assert_eq!(names, ["heating", "setpoint", "temperature", "ticks"]);
    // Retained: a client that subscribes later still gets the last state.
    let late = Consumer::connect(
        &broker.settings("late"),
        &[&topic("thermostat", "twin/reported")],
    );
    let retained = late.wait_json(&topic("thermostat", "twin/reported"), T, |_| true);
    assert!(late.on(&topic("thermostat", "twin/reported"))[0].retain);
    assert!(retained["version"].as_u64() >= reported["version"].as_u64());

    // Delivered rows leave the outbox.
    run.wait_for("tick 40:", T);
    assert!(run.stop().success());
    let left: i64 = gw
        .db()
        .query_row("SELECT COUNT(*) FROM outbox", [], |r| r.get(0))
        .expect("count");
    assert!(
        left < 10,
        "{left} rows still in the outbox after 40 ticks were delivered"
    );
    let offline = consumer.wait_json(&topic("test-gw", "status"), T, |j| j["online"] == false);
    assert_eq!(offline["reason"], "shutdown");
}

/// A report made while its device's state is out (published, not yet
/// acknowledged) is not sent then, nor lost: once the broker acknowledges the
/// state out, the newer state goes, and the retained state ends at the last
/// report, although every report was made while the broker was not answering.
#[test]
fn reports_made_while_the_state_is_out_are_sent_once_it_is_acknowledged() {
    let broker = Mosquitto::start("");
    let consumer = Consumer::connect(
        &broker.settings("consumer"),
        &[&topic("replay", "twin/reported")],
    );
    let gw = Gateway::new().section(&cloud(&broker));
    let model_path = gw.dir.path().join("level.json");
    std::fs::write(
        &model_path,
        r#"{"attributes": {"level": {"type": "number"}},
            "series": {"readings": {"fields": {"v": {"type": "number"}}}}}"#,
    )
    .expect("write the model");
    // A first value, reported while the broker answers; then 15 more. Each
    // tick also records a point, and with the state out the 15 rows of
    // points must leave room in the window (32): with it full, the link
    // would stop before the twin rows and send the newest state anyway.
    let values: Vec<String> = (1..=16).map(|n| n.to_string()).collect();
    let gw = gw.app(
        "replay",
        &guest("replay-values"),
        &model_path,
        &format!(
            "tick_interval_ms = 100\n[app.config]\nvalues = \"{}\"\nstep_ms = 1\nstart_ms = 1700000000000",
            values.join(",")
        ),
    );
    let mut run = gw.start();
    consumer.wait_json(&topic("replay", "twin/reported"), T, |j| {
        j["attributes"]["level"] == 1.0
    });
    broker.pause();
    // Every later report is made while a state is out: the last one is in
    // the outbox, and the broker has seen none of them.
    let deadline = std::time::Instant::now() + T;
    loop {
        let rows = gw.waiting_twins();
        if rows
            .last()
            .is_some_and(|r| r["attributes"]["level"] == 16.0)
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the app did not report all its values: {rows:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // A report replaces the device's waiting row: the outbox holds one,
    // the newest, not a row per report the broker has not seen.
    let rows = gw.waiting_twins();
    assert_eq!(rows.len(), 1, "one twin row for the device: {rows:?}");
    // The link's window shows what waits for the broker: the state out,
    // and rows of points, never more than `max_inflight` (32).
    let link = run.link().expect("link");
    let in_flight = link["in_flight"].as_u64().expect("in_flight");
    assert!((1..=32).contains(&in_flight), "{link}");
    broker.resume();
    let last = consumer.wait_json(&topic("replay", "twin/reported"), T, |j| {
        j["attributes"]["level"] == 16.0
    });
    assert_eq!(last["attributes"]["level"], 16.0);
    // Once the broker has everything, the window is empty again.
    run.wait_link(T, "empty of publishes", |link| link["in_flight"] == 0);
}

/// Publish a desired message and wait for a new ack of its version.
fn desire(consumer: &Consumer, device: &str, body: Value) -> Value {
    let version = body["version"].clone();
    let acks = || -> Vec<Value> {
        consumer
            .on(&topic(device, "twin/ack"))
            .iter()
            .map(|m| m.json())
            .filter(|j| j["version"] == version)
            .collect()
    };
    let before = acks().len();
    consumer.publish(&topic(device, "twin/desired"), body.to_string(), false);
    let deadline = std::time::Instant::now() + T;
    loop {
        if let Some(ack) = acks().get(before) {
            return ack.clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no ack for desired version {version}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn desired_changes_are_validated_applied_and_acknowledged() {
    let broker = Mosquitto::start("");
    let consumer = Consumer::connect(&broker.settings("consumer"), &["wg/v1/test-gw/#"]);
    let gw = actions(&broker);
    let mut run = gw.start();
    consumer.wait_json(&topic("test-gw", "status"), T, |j| {
        j["apps"][0]["state"] == "running"
    });

    let ack = desire(
        &consumer,
        "actions",
        json!({"version": 10, "attributes": {"mode": "eco", "level": 4}}),
    );
    assert_eq!(ack["accepted"], json!(["level", "mode"]));
    assert_eq!(ack["rejected"], json!({}));
    run.wait_for("desired on actions: 2 change(s) applied", T);

    // Bad values never reach the guest; each gets its reason.
    let ack = desire(
        &consumer,
        "actions",
        json!({"version": 11, "attributes": {"level": 99, "serial": "x", "colour": "red", "mode": 7}}),
    );
    assert_eq!(ack["accepted"], json!([]));
    let rejected: BTreeMap<String, String> =
        serde_json::from_value(ack["rejected"].clone()).expect("rejected");
    assert_eq!(rejected["level"], "99 is out of range [0, 10]");
    assert_eq!(rejected["serial"], "attribute `serial` is read-only");
    assert!(rejected["colour"].starts_with("unknown attribute `colour`"));
    assert_eq!(rejected["mode"], "expected text, got integer");
    assert_eq!(
        run.count("desired on actions:"),
        1,
        "nothing of version 11 reached the guest"
    );

    // The guest may refuse, and then nothing is applied.
    let ack = desire(
        &consumer,
        "actions",
        json!({"version": 12, "attributes": {"mode": "refuse"}}),
    );
    assert_eq!(
        ack["rejected"]["mode"],
        "the app refused it: mode = refuse is not allowed"
    );

    // Stale and duplicate versions.
    let ack = desire(
        &consumer,
        "actions",
        json!({"version": 5, "attributes": {"mode": "old"}}),
    );
    assert!(
        ack["rejected"]["mode"]
            .as_str()
            .expect("reason")
            .starts_with("stale: version 5")
    );
    let ack = desire(
        &consumer,
        "actions",
        json!({"version": 12, "attributes": {"mode": "again"}}),
    );
    assert_eq!(ack["duplicate"], true);

    // The applied values are in the twin, where the guest's `desired` reads them.
    let stored: String = gw
        .db()
        .query_row(
            "SELECT desired FROM twin WHERE device = 'actions' AND name = 'mode'",
            [],
            |r| r.get(0),
        )
        .expect("desired mode");
    assert_eq!(stored, "\"eco\"");
    assert!(run.stop().success());
}

/// The ack of a desired change goes through the outbox, after the reports
/// the app made while applying it: an ack made while the broker is away
/// survives a kill -9 of the gateway, and the cloud sees the new reported
/// state before it.
#[test]
fn a_twin_ack_is_durable_and_leaves_after_the_reports_it_answers() {
    let mut broker = Mosquitto::start("");
    let consumer = Consumer::connect(
        &broker.settings("consumer"),
        &["wg/v1/test-gw/actions/twin/#"],
    );
    let gw = Gateway::new().section(&cloud(&broker)).app(
        "actions",
        &guest("action-behaviours"),
        &model("actions"),
        "call_timeout_ms = 5000",
    );
    let mut run = gw.start();
    run.wait_connected(T);
    consumer.publish(
        &topic("actions", "twin/desired"),
        json!({"version": 9, "attributes": {"mode": "slow"}}).to_string(),
        false,
    );
    // The app takes a second to apply it; the broker goes away meanwhile.
    run.wait_for("applying slow", T);
    broker.stop();
    run.wait_until(T, "the ack in the outbox", |_| {
        (gw.count("SELECT COUNT(*) FROM outbox WHERE kind = 'ack'") == 1).then_some(())
    });
    run.kill9();

    broker.restart();
    let mut run = gw.start();
    let ack = consumer.wait_json(&topic("actions", "twin/ack"), T, |j| j["version"] == 9);
    assert_eq!(ack["accepted"], json!(["mode"]), "{ack}");
    let messages = consumer.messages();
    let ack_at = messages.iter().position(|m| m.topic.ends_with("/twin/ack"));
    let reported_at = messages.iter().position(|m| {
        m.topic.ends_with("/twin/reported") && m.json()["attributes"]["mode"] == "slow"
    });
    assert!(
        reported_at.is_some() && reported_at < ack_at,
        "reported at {reported_at:?}, ack at {ack_at:?}"
    );
    run.wait_until(T, "the ack left the outbox", |_| {
        (gw.count("SELECT COUNT(*) FROM outbox WHERE kind = 'ack'") == 0).then_some(())
    });
    assert!(run.stop().success());
}

#[test]
fn desired_state_sent_while_the_gateway_was_down_is_applied_when_it_returns() {
    let broker = Mosquitto::start("");
    let consumer = Consumer::connect(&broker.settings("consumer"), &["wg/v1/test-gw/+/twin/ack"]);
    let gw = actions(&broker);
    let mut run = gw.start();
    run.wait_connected(T);
    assert!(run.stop().success());

    // Retained, as the operator tools send it.
    consumer.publish(
        &topic("actions", "twin/desired"),
        json!({"version": 20, "attributes": {"mode": "away"}}).to_string(),
        true,
    );
    std::thread::sleep(Duration::from_millis(300));
    let mut run = gw.start();
    let ack = consumer.wait_json(&topic("actions", "twin/ack"), T, |j| j["version"] == 20);
    assert_eq!(ack["accepted"], json!(["mode"]));
    run.wait_for("\"away\"", T);
    assert!(run.stop().success());
}

/// Call an action and wait for its response.
fn call(consumer: &Consumer, name: &str, request: Value) -> Value {
    let id = request["id"].clone();
    consumer.publish(
        &topic("actions", &format!("action/{name}/req")),
        request.to_string(),
        false,
    );
    consumer.wait_json(&topic("actions", &format!("action/{name}/res")), T, |j| {
        j["id"] == id
    })
}

#[test]
fn actions_return_results_and_every_failure_is_answered() {
    let broker = Mosquitto::start("");
    let consumer = Consumer::connect(&broker.settings("consumer"), &["wg/v1/test-gw/#"]);
    let gw = actions(&broker);
    let mut run = gw.start();
    consumer.wait_json(&topic("test-gw", "status"), T, |j| {
        j["apps"][0]["state"] == "running"
    });

    assert_eq!(
        call(&consumer, "echo", json!({"id": "1", "argument": "hello"})),
        json!({"id": "1", "result": "hello"})
    );
    assert_eq!(
        call(&consumer, "double", json!({"id": "2", "argument": 21})),
        json!({"id": "2", "result": 42.0})
    );

    let error = |r: Value| {
        r["error"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| panic!("expected an error: {r}"))
    };
    assert_eq!(
        error(call(&consumer, "fail", json!({"id": "3"}))),
        "failed as asked"
    );
    assert!(
        error(call(&consumer, "explode", json!({"id": "4"})))
            .starts_with("unknown action `explode`")
    );
    assert_eq!(
        error(call(
            &consumer,
            "double",
            json!({"id": "5", "argument": "x"})
        )),
        "argument of action `double`: expected number, got text"
    );
    assert_eq!(
        error(call(&consumer, "double", json!({"id": "6"}))),
        "action `double` needs an argument of type number"
    );
    assert_eq!(
        error(call(&consumer, "fail", json!({"id": "7", "argument": 1}))),
        "action `fail` takes no argument"
    );

    let trapped = error(call(&consumer, "trap", json!({"id": "8"})));
    assert!(
        trapped.contains("on-action trapped") && trapped.contains("trapped as asked"),
        "{trapped}"
    );
    let hung = error(call(&consumer, "hang", json!({"id": "9"})));
    assert!(hung.contains("ran past its deadline of 300 ms"), "{hung}");

    // The app was restarted after each crash and answers again.
    assert_eq!(
        call(&consumer, "echo", json!({"id": "10", "argument": "back"}))["result"],
        "back"
    );
    assert!(run.count("app crashed:") >= 2);
    assert!(run.stop().success());
}

#[test]
fn malformed_oversized_and_misaddressed_downlink_messages_are_refused_and_the_gateway_carries_on() {
    let broker = Mosquitto::start("");
    let consumer = Consumer::connect(&broker.settings("consumer"), &["wg/v1/test-gw/#"]);
    let gw = actions(&broker);
    let mut run = gw.start();
    consumer.wait_json(&topic("test-gw", "status"), T, |j| {
        j["apps"][0]["state"] == "running"
    });

    consumer.publish(&topic("actions", "action/echo/req"), "{not json", false);
    let r = consumer.wait_json(&topic("actions", "action/echo/res"), T, |j| {
        j.get("id").is_none()
    });
    assert!(
        r["error"]
            .as_str()
            .expect("error")
            .starts_with("malformed action request"),
        "{r}"
    );

    consumer.publish(
        &topic("actions", "twin/desired"),
        json!({"version": 1, "attributes": {}, "extra": 1}).to_string(),
        false,
    );
    let r = consumer.wait_json(&topic("actions", "twin/ack"), T, |j| j["version"] == 1);
    assert!(
        r["error"]
            .as_str()
            .expect("error")
            .contains("unknown field `extra`"),
        "{r}"
    );

    let big = json!({"id": "big", "argument": "x".repeat(70 * 1024)}).to_string();
    consumer.publish(&topic("actions", "action/echo/req"), big, false);
    let r = consumer.wait_json(&topic("actions", "action/echo/res"), T, |j| {
        j["id"] == "big"
    });
    assert!(
        r["error"]
            .as_str()
            .expect("error")
            .contains("over the limit of 65536"),
        "{r}"
    );

    consumer.publish(
        &topic("nobody", "action/echo/req"),
        json!({"id": "n"}).to_string(),
        false,
    );
    let r = consumer.wait_json(&topic("nobody", "action/echo/res"), T, |j| j["id"] == "n");
    assert_eq!(
        r["error"],
        "no app on gateway test-gw speaks for device nobody"
    );

    run.wait_link(T, "counting the refusal", |l| {
        l["downlink_refused"].as_u64() >= Some(1)
    });
    // Still working.
    assert_eq!(
        call(&consumer, "echo", json!({"id": "ok", "argument": "fine"}))["result"],
        "fine"
    );
    let link = run.link().expect("link");
    assert!(
        link["connected"] == true && link["reconnects"] == 0 && link["last_error"].is_null(),
        "the link never went down: {link}"
    );
    assert!(run.stop().success());
}

/// Every `n` of the counter's telemetry the consumer received, de-duplicated
/// by batch id, in arrival order. Panics if a batch id came twice with
/// different contents.
fn delivered_counts(consumer: &Consumer) -> Vec<i64> {
    let mut seen: BTreeMap<String, Value> = BTreeMap::new();
    let mut counts = Vec::new();
    for message in consumer.on(&topic("counter", "telemetry/count")) {
        let batch = message.json();
        let id = batch["batch"].as_str().expect("batch id").to_string();
        if let Some(earlier) = seen.get(&id) {
            assert_eq!(
                earlier, &batch["points"],
                "batch {id} sent twice with different points"
            );
            continue;
        }
        for p in batch["points"].as_array().expect("points") {
            counts.push(p["values"]["n"].as_i64().expect("n"));
        }
        seen.insert(id, batch["points"].clone());
    }
    counts
}

#[test]
fn nothing_recorded_is_lost_through_a_broker_outage_and_a_kill_9_while_offline() {
    let mut broker = Mosquitto::start("");
    let consumer = Consumer::connect(
        &broker.settings("consumer"),
        &["wg/v1/test-gw/counter/telemetry/#"],
    );
    let gw = Gateway::new().section(&cloud(&broker)).app(
        "counter",
        &guest("storage-roundtrip"),
        &model("counter"),
        "tick_interval_ms = 20",
    );
    let mut run = gw.start();
    run.wait_for("counter=20 roundtrip=true", T);

    // The broker goes away for a while; the gateway keeps recording.
    broker.stop();
    run.wait_disconnected(T);
    let before = last_counter(&run.lines()).expect("counter");
    run.wait_for(&format!("counter={} roundtrip=true", before + 30), T);
    broker.restart();
    run.wait_reconnected(T, 1);
    run.wait_for(&format!("counter={} roundtrip=true", before + 60), T);

    // The broker goes away again, and the gateway is killed while offline.
    broker.stop();
    run.wait_disconnected(T);
    let recorded = last_counter(&run.lines()).expect("counter");
    run.wait_for(&format!("counter={} roundtrip=true", recorded + 20), T);
    // Everything logged at least one flush interval (50 ms) ago is durable.
    let durable = last_counter(&run.lines()).expect("counter");
    std::thread::sleep(Duration::from_millis(300));
    run.kill9();

    broker.restart();
    let mut run = gw.start();
    let started = run.wait_for("storage-roundtrip started", T);
    let resumed = crate::common::field_after(&started, "counter").expect("counter");
    run.wait_for(&format!("counter={} roundtrip=true", resumed + 20), T);
    assert!(run.stop().success());

    let deadline = std::time::Instant::now() + T;
    let counts = loop {
        let counts = delivered_counts(&consumer);
        if counts.iter().filter(|&&n| n <= durable).count() as i64 >= durable
            || std::time::Instant::now() > deadline
        {
            break counts;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    // In order, each point once, and nothing missing up to what was durable.
    assert!(
        counts.windows(2).all(|w| w[0] < w[1]),
        "out of order or duplicated: {counts:?}"
    );
    let missing: Vec<i64> = (1..=durable).filter(|n| !counts.contains(n)).collect();
    assert!(
        missing.is_empty(),
        "lost points {missing:?} (durable up to {durable})"
    );
    assert!(
        counts.last().copied() > Some(resumed),
        "points recorded after the restart arrive too"
    );
}

#[test]
fn tls_with_a_client_certificate_works_and_a_wrong_certificate_is_refused_clearly() {
    let pki_dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::create(pki_dir.path());
    let broker = Mosquitto::start(&format!(
        "cafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate true\n",
        pki.path("ca.pem").display(),
        pki.path("server.pem").display(),
        pki.path("server.key").display()
    ));
    let url = format!("mqtts://127.0.0.1:{}", broker.port);
    let tls = |ca: &str, cert: &str, key: &str| {
        format!(
            "[cloud]\nurl = \"{url}\"\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\nbackoff_initial_ms = 100\nbackoff_max_ms = 500\n",
            pki.path(ca).display(),
            pki.path(cert).display(),
            pki.path(key).display()
        )
    };
    let mut consumer_settings =
        wasmgate::config::BrokerSettings::from_url(&url, "consumer").expect("url");
    consumer_settings.ca_file = Some(pki.path("ca.pem"));
    consumer_settings.cert_file = Some(pki.path("client.pem"));
    consumer_settings.key_file = Some(pki.path("client.key"));
    let consumer = Consumer::connect(&consumer_settings, &["wg/v1/test-gw/#"]);

    let model = root().join("examples/thermostat/thermostat.model.json");
    let good = Gateway::new()
        .section(&tls("ca.pem", "client.pem", "client.key"))
        .app(
            "thermostat",
            &guest("thermostat"),
            &model,
            "tick_interval_ms = 100",
        );
    let mut run = good.start();
    consumer.wait_json(&topic("thermostat", "telemetry/climate"), T, |_| true);
    assert!(run.stop().success());

    // A client certificate from a CA the broker does not trust.
    let rogue = Gateway::new()
        .section(&tls("ca.pem", "rogue.pem", "rogue.key"))
        .app("thermostat", &guest("thermostat"), &model, "");
    let mut run = rogue.start();
    let line = run.wait_disconnected(T);
    assert!(
        line.starts_with("cannot connect to the broker mqtts://127.0.0.1")
            && line.contains("rejected the gateway's client certificate"),
        "{line}"
    );
    assert_eq!(run.link().expect("link")["reconnects"], 0);
    assert!(run.stop().success());

    // A broker certificate the gateway does not trust.
    let distrustful = Gateway::new()
        .section(&tls("other-ca.pem", "client.pem", "client.key"))
        .app("thermostat", &guest("thermostat"), &model, "");
    let mut run = distrustful.start();
    let line = run.wait_disconnected(T);
    assert!(
        line.contains("not trusted by ca_file") && line.contains("invalid peer certificate"),
        "{line}"
    );
    assert!(run.stop().success());
}

#[test]
fn an_acl_on_the_client_id_lets_the_gateway_work_and_keeps_it_in_its_subtree() {
    let acl_dir = tempfile::tempdir().expect("tempdir");
    let acl = acl_dir.path().join("acl");
    std::fs::write(
        &acl,
        "user operator\ntopic readwrite wg/v1/#\n\npattern readwrite wg/v1/%c/#\n",
    )
    .expect("acl");
    // Denied publishes are logged at debug level.
    let broker = Mosquitto::start(&format!("acl_file {}\nlog_type debug\n", acl.display()));
    let mut operator = broker.settings("operator-console");
    operator.username = Some("operator".into());
    let consumer = Consumer::connect(&operator, &["wg/v1/#"]);

    let gw = actions(&broker);
    let mut run = gw.start();
    consumer.wait_json(&topic("test-gw", "status"), T, |j| {
        j["apps"][0]["state"] == "running"
    });
    assert_eq!(
        call(
            &consumer,
            "echo",
            json!({"id": "acl", "argument": "allowed"})
        )["result"],
        "allowed"
    );
    assert!(run.stop().success());
    consumer.wait_json(&topic("test-gw", "status"), T, |j| j["online"] == false);
    let from_gateway = || {
        consumer
            .messages()
            .iter()
            .filter(|m| m.topic.starts_with("wg/v1/test-gw/") && !m.topic.contains("/action/"))
            .count()
    };
    let before = from_gateway();

    // A gateway whose id is not its client id publishes outside the subtree
    // the ACL gives it: the broker drops all of it.
    let impostor = Gateway::new()
        .section(&format!(
            "{}client_id = \"test-gw-other\"\n",
            cloud(&broker)
        ))
        .app(
            "actions",
            &guest("action-behaviours"),
            &model("actions"),
            "",
        );
    let mut run = impostor.start();
    run.wait_connected(T);
    std::thread::sleep(Duration::from_millis(1500));
    assert!(run.stop().success());
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        from_gateway(),
        before,
        "nothing from the impostor got through"
    );
    assert!(
        broker.log().contains("Denied PUBLISH from test-gw-other"),
        "{}",
        broker.log()
    );
}

#[test]
fn the_last_will_marks_a_killed_gateway_offline() {
    let broker = Mosquitto::start("");
    let consumer = Consumer::connect(&broker.settings("consumer"), &[&topic("test-gw", "status")]);
    let gw = actions(&broker);
    let mut run = gw.start();
    consumer.wait_json(&topic("test-gw", "status"), T, |j| j["online"] == true);
    run.kill9();
    let will = consumer.wait_json(&topic("test-gw", "status"), T, |j| j["online"] == false);
    assert_eq!(will["reason"], "connection lost");
    // Retained: whoever looks later sees the gateway offline.
    let late = Consumer::connect(&broker.settings("late"), &[&topic("test-gw", "status")]);
    let seen = late.wait_json(&topic("test-gw", "status"), T, |_| true);
    assert_eq!(seen["online"], false);
}

/// `[cloud] urls` lists two brokers (two nodes, as of a cluster): when the
/// one the gateway is on stops, it moves to the other and says so in its
/// link, and every point it recorded arrives, through one or the other: the
/// outbox sends to the second what the first had not acknowledged.
#[test]
fn with_two_brokers_the_gateway_moves_to_the_other_when_its_broker_stops_and_nothing_is_lost() {
    let mut a = Mosquitto::start("");
    let b = Mosquitto::start("");
    let filter = ["wg/v1/test-gw/counter/telemetry/#"];
    let on_a = Consumer::connect(&a.settings("consumer-a"), &filter);
    let on_b = Consumer::connect(&b.settings("consumer-b"), &filter);
    let gw = Gateway::new()
        .section(&format!(
            "[cloud]\nurls = [\"{}\", \"{}\"]\nbackoff_initial_ms = 100\nbackoff_max_ms = 500\n",
            a.url(),
            b.url()
        ))
        .app(
            "counter",
            &guest("storage-roundtrip"),
            &model("counter"),
            "tick_interval_ms = 20",
        );
    let mut run = gw.start();
    let (url_a, url_b) = (a.url(), b.url());
    run.wait_link(T, "on the first broker", |l| {
        l["connected"] == true && l["broker"] == url_a.as_str()
    });
    run.wait_for("counter=20 roundtrip=true", T);

    // The first broker stops while the gateway records.
    a.stop();
    let link = run.wait_link(T, "on the second broker", |l| {
        l["connected"] == true && l["broker"] == url_b.as_str()
    });
    assert!(
        link["last_error"]
            .as_str()
            .is_some_and(|e| e.contains(&url_a)),
        "{link}"
    );
    let moved = last_counter(&run.lines()).expect("counter");
    run.wait_for(&format!("counter={} roundtrip=true", moved + 30), T);
    assert!(run.stop().success());
    let recorded = last_counter(&run.lines()).expect("counter");

    // The first broker comes back with what it held for its consumer; the
    // gateway, started again, sends what its outbox still holds.
    a.restart();
    let mut run = gw.start();
    run.wait_connected(T);
    let deadline = std::time::Instant::now() + T;
    let all = loop {
        let all: BTreeSet<i64> = delivered_counts(&on_a)
            .into_iter()
            .chain(delivered_counts(&on_b))
            .collect();
        if (1..=recorded).all(|n| all.contains(&n)) || std::time::Instant::now() > deadline {
            break all;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let missing: Vec<i64> = (1..=recorded).filter(|n| !all.contains(n)).collect();
    assert!(
        missing.is_empty(),
        "lost points {missing:?} of 1..={recorded}"
    );
    assert!(
        delivered_counts(&on_b).iter().any(|&n| n > moved),
        "points recorded after the move went to the second broker"
    );
    assert!(run.stop().success());
}

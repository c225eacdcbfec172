//! The Sparkplug B profile against a host application the project did not
//! write: pysparkplug (`tests/peers/sparkplug_host.py`) decodes what the
//! gateway sends and sends it commands, through a real Mosquitto, to the
//! real gateway running guests built from source.

use crate::common::mqtt::Mosquitto;
use crate::common::peers::SparkplugHost;
use crate::common::{Gateway, guest, model, root};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

fn cloud(broker: &Mosquitto, sparkplug: &str) -> String {
    format!(
        "[cloud]\nurl = \"{}\"\nbackoff_initial_ms = 100\nbackoff_max_ms = 500\nprofile = \"sparkplug\"\n\
         [cloud.sparkplug]\ngroup_id = \"plant\"\n{sparkplug}\n",
        broker.url()
    )
}

fn of(kind: &'static str, device: Option<&'static str>) -> impl Fn(&Value) -> bool {
    move |m: &Value| {
        m["type"] == kind && m["edge_node"] == "test-gw" && device.is_none_or(|d| m["device"] == d)
    }
}

/// A birth's metric by name.
fn named<'a>(birth: &'a Value, name: &str) -> &'a Value {
    birth["metrics"]
        .as_array()
        .expect("metrics")
        .iter()
        .find(|m| m["name"] == name)
        .unwrap_or_else(|| panic!("no metric {name} in {birth}"))
}

/// A birth's aliases: alias → name.
fn aliases(birth: &Value) -> BTreeMap<u64, String> {
    birth["metrics"]
        .as_array()
        .expect("metrics")
        .iter()
        .map(|m| {
            (
                m["alias"].as_u64().expect("an alias"),
                m["name"].as_str().expect("a name").to_string(),
            )
        })
        .collect()
}

/// The metrics of a data message named `name`. Data carries aliases only:
/// pysparkplug resolves them by the device's last birth.
fn values(data: &Value, name: &str) -> Vec<Value> {
    data["metrics"]
        .as_array()
        .expect("metrics")
        .iter()
        .filter(|m| m["name"].is_null() && m["resolved_name"] == name)
        .cloned()
        .collect()
}

/// From each NBIRTH on, the node's messages count `seq` up by one, 255
/// wrapping to 0; every NBIRTH has seq 0.
fn assert_seqs(messages: &[Value]) {
    let mut expected: Option<u64> = None;
    for m in messages.iter().filter(|m| m["edge_node"] == "test-gw") {
        match m["type"].as_str() {
            Some("NBIRTH") => {
                assert_eq!(m["seq"], 0, "an NBIRTH has seq 0: {m}");
                expected = Some(1);
            }
            Some("DBIRTH" | "DDATA" | "DDEATH") => {
                let seq = m["seq"].as_u64().expect("a seq");
                if let Some(want) = expected {
                    assert_eq!(seq, want, "seq out of step at {m}");
                }
                expected = Some((seq + 1) % 256);
            }
            // A death ends the session; the next starts with its NBIRTH.
            Some("NDEATH") => expected = None,
            _ => {}
        }
    }
}

fn bd_seq(message: &Value) -> u64 {
    named(message, "bdSeq")["value"]
        .as_u64()
        .unwrap_or_else(|| panic!("a bdSeq in {message}"))
}

#[test]
fn births_data_and_commands_decode_in_pysparkplug_and_a_rebirth_is_honoured() {
    let broker = Mosquitto::start("");
    let mut host = SparkplugHost::start(broker.port, "plant", None);
    let gw = Gateway::new().section(&cloud(&broker, "")).app(
        "thermostat",
        &guest("thermostat"),
        &root().join("examples/thermostat/thermostat.model.json"),
        "tick_interval_ms = 100",
    );
    let mut run = gw.start();

    let (_, nbirth) = host.wait_from(0, T, "the NBIRTH", of("NBIRTH", None));
    assert_eq!(nbirth["seq"], 0);
    let bd = bd_seq(&nbirth);
    assert_eq!(named(&nbirth, "Node Control/Rebirth")["value"], false);
    assert_eq!(
        named(&nbirth, "Node Control/Rebirth")["datatype"],
        "BOOLEAN"
    );

    // One DBIRTH names every attribute, series field, alert and action,
    // with the model's datatypes and aliases unique across the node.
    let (_, dbirth) = host.wait_from(0, T, "the DBIRTH", of("DBIRTH", Some("thermostat")));
    let names: BTreeSet<&str> = dbirth["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().expect("a birth names its metrics"))
        .collect();
    assert_eq!(
        names,
        BTreeSet::from([
            "actions/reset",
            "alerts/overheat",
            "climate/humidity",
            "climate/temperature",
            "heating",
            "setpoint",
            "temperature",
            "ticks"
        ])
    );
    for (name, datatype) in [
        ("temperature", "DOUBLE"),
        ("heating", "BOOLEAN"),
        ("ticks", "INT64"),
        ("setpoint", "DOUBLE"),
        ("climate/humidity", "DOUBLE"),
        ("alerts/overheat", "STRING"),
        ("actions/reset", "BOOLEAN"),
    ] {
        assert_eq!(named(&dbirth, name)["datatype"], datatype, "{name}");
    }
    let aliases = aliases(&dbirth);
    assert_eq!(aliases.len(), names.len(), "aliases are unique");
    let node_aliases: BTreeSet<u64> = nbirth["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["alias"].as_u64())
        .collect();
    assert!(aliases.keys().all(|a| !node_aliases.contains(a)));

    // Points go out as data, by alias, with their own timestamps.
    // (Points recorded before the birth are historical: wait for a live
    // one.)
    let (_, data) = host.wait_from(0, T, "a DDATA with a live point", |m| {
        of("DDATA", Some("thermostat"))(m)
            && values(m, "climate/humidity")
                .iter()
                .any(|v| v["is_historical"] == false)
    });
    let point = &values(&data, "climate/humidity")[0];
    assert_eq!(point["datatype"], "DOUBLE");
    assert!(point["timestamp"].as_u64().expect("a timestamp") > 1_700_000_000_000);

    // A DCMD write becomes a desired change the app takes; the new value
    // comes back as data.
    let from = host.messages().len();
    host.command(
        json!({"cmd": "dcmd", "edge_node": "test-gw", "device": "thermostat",
        "metrics": [{"name": "setpoint", "datatype": "DOUBLE", "value": 25.5}]}),
    );
    host.wait_from(from, T, "the new setpoint as data", |m| {
        of("DDATA", Some("thermostat"))(m)
            && values(m, "setpoint").iter().any(|v| v["value"] == 25.5)
    });

    // Out of the model's range: refused, counted, and answered with the
    // setpoint's current value.
    let refused_before = run.link().expect("link")["downlink_refused"]
        .as_u64()
        .unwrap_or(0);
    let from = host.messages().len();
    host.command(
        json!({"cmd": "dcmd", "edge_node": "test-gw", "device": "thermostat",
        "metrics": [{"name": "setpoint", "datatype": "DOUBLE", "value": 99.0}]}),
    );
    host.wait_from(from, T, "the refused setpoint answered", |m| {
        of("DDATA", Some("thermostat"))(m)
            && values(m, "setpoint").iter().any(|v| v["value"] == 25.5)
    });
    run.wait_link(T, "counting the refusal", |l| {
        l["downlink_refused"].as_u64().unwrap_or(0) > refused_before
    });
    // A write to an attribute that is not writable is refused the same way.
    let from = host.messages().len();
    host.command(
        json!({"cmd": "dcmd", "edge_node": "test-gw", "device": "thermostat",
        "metrics": [{"name": "ticks", "datatype": "INT64", "value": 0}]}),
    );
    host.wait_from(from, T, "the refused write to ticks answered", |m| {
        of("DDATA", Some("thermostat"))(m) && !values(m, "ticks").is_empty()
    });

    // An action metric invokes the action: `reset` zeroes the tick counter.
    host.wait_from(0, T, "ticks past 5", |m| {
        of("DDATA", Some("thermostat"))(m)
            && values(m, "ticks")
                .iter()
                .any(|v| v["value"].as_u64() > Some(5))
    });
    let from = host.messages().len();
    host.command(
        json!({"cmd": "dcmd", "edge_node": "test-gw", "device": "thermostat",
        "metrics": [{"name": "actions/reset", "datatype": "BOOLEAN", "value": true}]}),
    );
    host.wait_from(from, T, "ticks counted again from zero", |m| {
        of("DDATA", Some("thermostat"))(m)
            && values(m, "ticks")
                .iter()
                .any(|v| v["value"].as_u64() <= Some(2))
    });

    // A rebirth request: the NBIRTH again (seq 0, the same bdSeq), then the
    // DBIRTH.
    let from = host.messages().len();
    host.command(json!({"cmd": "rebirth", "edge_node": "test-gw"}));
    let (at, again) = host.wait_from(from, T, "the NBIRTH of the rebirth", of("NBIRTH", None));
    assert_eq!(again["seq"], 0);
    assert_eq!(bd_seq(&again), bd, "a rebirth keeps the session's bdSeq");
    host.wait_from(
        at,
        T,
        "the DBIRTH of the rebirth",
        of("DBIRTH", Some("thermostat")),
    );

    // A command the node cannot read is refused and the node carries on.
    let refused_before = run.link().expect("link")["downlink_refused"]
        .as_u64()
        .unwrap_or(0);
    host.command(
        json!({"cmd": "raw", "topic": "spBv1.0/plant/DCMD/test-gw/thermostat",
        "payload_hex": "ffffffff", "qos": 0}),
    );
    run.wait_link(T, "counting the unreadable command", |l| {
        l["downlink_refused"].as_u64().unwrap_or(0) > refused_before
    });
    let from = host.messages().len();
    host.wait_from(
        from,
        T,
        "data after the garbage",
        of("DDATA", Some("thermostat")),
    );

    // A clean stop publishes the NDEATH of this session.
    assert!(run.stop().success());
    let (_, death) = host.wait_from(0, T, "the NDEATH", of("NDEATH", None));
    assert_eq!(bd_seq(&death), bd);
    let messages = host.messages();
    // (The garbage command itself comes back undecodable to its sender.)
    let undecodable: Vec<&Value> = messages
        .iter()
        .filter(|m| {
            m["type"] == "UNDECODABLE" && !m["topic"].as_str().unwrap_or("").contains("CMD")
        })
        .collect();
    assert!(
        undecodable.is_empty(),
        "pysparkplug could not decode {undecodable:?}"
    );
    assert_seqs(&messages);
}

/// The `n` values a data message carries, with their flags.
fn counts(messages: &[Value]) -> Vec<(i64, bool, u64)> {
    let mut out = Vec::new();
    for m in messages.iter().filter(|m| of("DDATA", Some("counter"))(m)) {
        for v in values(m, "count/n") {
            out.push((
                v["value"].as_i64().expect("n"),
                v["is_historical"] == true,
                v["timestamp"].as_u64().expect("timestamp"),
            ));
        }
    }
    out
}

#[test]
fn with_a_primary_host_bd_seq_and_seq_hold_across_a_kill_9_and_a_broker_restart_and_held_data_arrives_historical()
 {
    let mut broker = Mosquitto::start("");
    let host = SparkplugHost::start(broker.port, "plant", Some("scada"));
    // `sync_record`: a point is durable when `record` returns, so every
    // count the guest logged as recorded must arrive. (By default the
    // points of the last flush interval may go with a kill -9, as
    // docs/buffering.md says.)
    let gw = Gateway::new()
        .section(&cloud(&broker, "primary_host = \"scada\""))
        .section("[outbox]\nsync_record = true")
        .app(
            "counter",
            &guest("storage-roundtrip"),
            &model("counter"),
            "tick_interval_ms = 50",
        );
    let mut run = gw.start();
    let (_, first) = host.wait_from(0, T, "the first NBIRTH", of("NBIRTH", None));
    let bd0 = bd_seq(&first);
    host.wait_from(0, T, "the DBIRTH", of("DBIRTH", Some("counter")));
    host.wait_from(0, T, "data", of("DDATA", Some("counter")));

    // kill -9: the broker publishes the will, the NDEATH of that session.
    run.kill9();
    let killed = run.lines();
    let (after_death, death) = host.wait_from(0, T, "the will's NDEATH", of("NDEATH", None));
    assert_eq!(bd_seq(&death), bd0, "the will carries the session's bdSeq");
    let mut run = gw.start();
    let (_, second) = host.wait_from(
        after_death,
        T,
        "the NBIRTH after the restart",
        of("NBIRTH", None),
    );
    assert_eq!(
        bd_seq(&second),
        (bd0 + 1) % 256,
        "bdSeq counts on across a kill -9"
    );

    // Nothing accepted was lost across the kill -9: every count the app
    // recorded reached the host (a batch in flight at the kill may come
    // twice). The guest saves its counter before it records the count, so
    // a kill between the two skips that one count: the app never recorded
    // it, and no link can send it.
    run.wait_for("roundtrip=true", T);
    let later = crate::common::last_counter(&run.lines()).expect("counter") + 10;
    host.wait_from(0, T, "data after the restart", |m| {
        of("DDATA", Some("counter"))(m)
            && values(m, "count/n")
                .iter()
                .any(|v| v["value"].as_i64() >= Some(later))
    });
    let before_outage: BTreeSet<i64> = counts(&host.messages()).iter().map(|p| p.0).collect();
    let (low, high) = (
        *before_outage.first().unwrap(),
        *before_outage.last().unwrap(),
    );
    let missing: Vec<i64> = (low..=high)
        .filter(|n| !before_outage.contains(n))
        .collect();
    let recorded: BTreeSet<i64> = killed
        .iter()
        .chain(&run.lines())
        .filter(|l| l.contains("record=true"))
        .filter_map(|l| crate::common::field_after(l, "counter"))
        .collect();
    let lost: Vec<&i64> = missing.iter().filter(|n| recorded.contains(n)).collect();
    assert!(
        lost.is_empty(),
        "recorded, and lost across the kill -9: {lost:?}"
    );
    assert!(
        missing.len() <= 1,
        "only the count the kill cut off may be missing: {missing:?}"
    );

    // The primary host dies (its will: STATE offline, retained): the node
    // ends its session and holds its data. Then the broker restarts too.
    drop(host);
    run.wait_link(T, "reconnected to wait for the host", |l| {
        l["reconnects"].as_u64() >= Some(1)
    });
    broker.stop();
    run.wait_link(T, "disconnected", |l| l["connected"] == false);
    let offline_from = crate::common::last_counter(&run.lines()).expect("counter");
    run.wait_for(&format!("counter={} roundtrip=true", offline_from + 30), T);
    broker.restart();
    run.wait_link(T, "connected again", |l| l["connected"] == true);
    // Still nothing: the retained STATE says the host is offline.
    let host = SparkplugHost::start(broker.port, "plant", Some("scada"));
    let (born_at, third) =
        host.wait_from(0, T, "the NBIRTH once the host is back", of("NBIRTH", None));
    assert!(
        host.messages()[..born_at]
            .iter()
            .all(|m| m["edge_node"] != "test-gw"),
        "nothing before the NBIRTH"
    );
    assert_ne!(
        bd_seq(&third),
        bd_seq(&second),
        "a new session has a new bdSeq"
    );
    host.wait_from(
        born_at,
        T,
        "the DBIRTH once the host is back",
        of("DBIRTH", Some("counter")),
    );
    let later = crate::common::last_counter(&run.lines()).expect("counter") + 10;
    host.wait_from(0, T, "live data after the outage", |m| {
        of("DDATA", Some("counter"))(m)
            && values(m, "count/n")
                .iter()
                .any(|v| v["value"].as_i64() >= Some(later) && v["is_historical"] == false)
    });
    let points = counts(&host.messages());
    let historical: Vec<i64> = points.iter().filter(|p| p.1).map(|p| p.0).collect();
    assert!(
        historical.len() >= 30,
        "what was recorded while held arrives flagged historical: {historical:?}"
    );
    assert!(
        historical.windows(2).all(|w| w[0] < w[1]),
        "historical data in order: {historical:?}"
    );
    assert!(
        points.windows(2).all(|w| w[0].2 <= w[1].2),
        "timestamps in order: {points:?}"
    );
    let first_live = points.iter().position(|p| !p.1).expect("live data");
    assert!(
        points[first_live..].iter().all(|p| !p.1),
        "historical data comes before live data: {points:?}"
    );
    // Nor across the outage: the historical data starts where the first
    // host's view ended, and runs on into the live data.
    assert!(
        historical[0] <= high + 1,
        "lost before the outage: the first host saw up to {high}, the historical data starts at {}",
        historical[0]
    );
    let all: BTreeSet<i64> = points.iter().map(|p| p.0).collect();
    let missing: Vec<i64> = (historical[0]..=*all.last().unwrap())
        .filter(|n| !all.contains(n))
        .collect();
    assert!(missing.is_empty(), "lost across the outage: {missing:?}");
    assert!(run.stop().success());
    assert_seqs(&host.messages());
}

#[test]
fn registered_devices_are_sparkplug_devices_and_die_when_unregistered_or_their_app_stops() {
    let broker = Mosquitto::start("");
    let mut host = SparkplugHost::start(broker.port, "plant", None);
    let example = root().join("examples/busgateway");
    let gw = Gateway::new().section(&cloud(&broker, "")).app(
        "bus",
        &guest("busgateway"),
        &example.join("bus.model.json"),
        &format!(
            "tick_interval_ms = 200\nmax_devices = 8\n\
             [app.models]\nsensor = \"{}\"\n[app.config]\nsensors = 2",
            example.join("sensor.model.json").display()
        ),
    );
    let mut run = gw.start();
    for device in ["bus", "bus.th-01", "bus.th-02"] {
        host.wait_from(0, T, &format!("the DBIRTH of {device}"), |m| {
            m["type"] == "DBIRTH" && m["device"] == device
        });
    }
    let (_, sensor) = host.wait_from(0, T, "a sensor's birth", |m| {
        m["type"] == "DBIRTH" && m["device"] == "bus.th-02"
    });
    assert_eq!(
        named(&sensor, "label")["datatype"],
        "STRING",
        "a registered device is born with its own model: {sensor}"
    );
    host.wait_from(0, T, "a sensor's data", |m| {
        m["type"] == "DDATA" && m["device"] == "bus.th-01"
    });

    // An action with a text argument, by DCMD: the bus unplugs th-01, which
    // dies.
    let from = host.messages().len();
    host.command(
        json!({"cmd": "dcmd", "edge_node": "test-gw", "device": "bus",
        "metrics": [{"name": "actions/unplug", "datatype": "STRING", "value": "th-01"}]}),
    );
    host.wait_from(from, T, "th-01's DDEATH", |m| {
        m["type"] == "DDEATH" && m["device"] == "bus.th-01"
    });

    // The app stops: its device and the device it still registers die.
    let from = host.messages().len();
    let config = gw.config_path();
    let (ok, _, err) =
        crate::common::wasmgate(&["stop", "bus", "--gateway", config.to_str().unwrap()]);
    assert!(ok, "{err}");
    for device in ["bus", "bus.th-02"] {
        host.wait_from(from, T, &format!("the DDEATH of {device}"), |m| {
            m["type"] == "DDEATH" && m["device"] == device
        });
    }
    // And they are born again when it starts.
    let from = host.messages().len();
    let (ok, _, err) =
        crate::common::wasmgate(&["start", "bus", "--gateway", config.to_str().unwrap()]);
    assert!(ok, "{err}");
    host.wait_from(from, T, "the bus born again", |m| {
        m["type"] == "DBIRTH" && m["device"] == "bus"
    });
    assert!(run.stop().success());
    assert_seqs(&host.messages());
}

//! Device I/O (issue 14): guests reach real devices only through what they
//! were granted. A Modbus TCP server from pymodbus is the device; the real
//! binary, a real Mosquitto for the actions that drive the test guest, and
//! the test's own tokio-modbus client to read back what landed in the peer.

use serde_json::{Value, json};
use std::time::Duration;

use crate::common::mqtt::{Consumer, Mosquitto};
use crate::common::peers::ModbusPeer;
use crate::common::{Gateway, guest, model, run_to_end, wasmgate};

const T: Duration = Duration::from_secs(30);

/// The modbus probe app `name`, granted unit 1 of `peer`, and `[allow]`
/// for every unit there.
fn probe_gateway(broker: &Mosquitto, peer: &ModbusPeer, apps: &[(&str, &str)]) -> Gateway {
    let endpoint = peer.endpoint();
    let mut gw = Gateway::new()
        .section(&format!(
            "[cloud]\nurl = \"{}\"\nbackoff_initial_ms = 100\nbackoff_max_ms = 500\n",
            broker.url()
        ))
        .section(&format!(
            "[allow]\nmodbus = [{{ endpoint = \"{endpoint}\" }}]\n"
        ));
    for (name, config) in apps {
        gw = gw.app(
            name,
            &guest("modbus-probe"),
            &model("modbus"),
            &format!(
                "device = \"{name}\"\ntick_interval_ms = 200\ncall_timeout_ms = 200\n\
                 grants = {{ modbus = [{{ endpoint = \"{endpoint}\", units = [1] }}] }}\n\
                 [app.config]\nendpoint = \"{endpoint}\"\n{config}"
            ),
        );
    }
    gw
}

/// Run one request through the probe's `call` action; its text answer.
fn call(consumer: &Consumer, app: &str, id: &str, request: &str) -> String {
    let answer = consumer.call(
        &format!("wg/v1/test-gw/{app}"),
        "call",
        id,
        Some(json!(request)),
    );
    answer["result"]
        .as_str()
        .unwrap_or_else(|| panic!("{request}: {answer}"))
        .to_string()
}

/// The highest reported-state version of `app` seen so far.
fn last_version(consumer: &Consumer, app: &str) -> u64 {
    consumer
        .on(&format!("wg/v1/test-gw/{app}/twin/reported"))
        .iter()
        .filter_map(|m| m.json()["version"].as_u64())
        .max()
        .unwrap_or(0)
}

/// Wait for a reported state of `app` that `check` accepts.
fn reported(consumer: &Consumer, app: &str, check: impl Fn(&Value) -> bool) -> Value {
    consumer.wait_json(&format!("wg/v1/test-gw/{app}/twin/reported"), T, |r| {
        check(&r["attributes"])
    })
}

#[test]
fn modbus_requests_land_in_the_device_and_everything_not_granted_is_denied() {
    let peer = ModbusPeer::start(&[1, 2]);
    let broker = Mosquitto::start("");
    let consumer = Consumer::connect(&broker.settings("watcher"), &["wg/v1/test-gw/#"]);
    let gw = probe_gateway(&broker, &peer, &[("probe", "")]);
    let mut run = gw.start();
    run.wait_connected(T);
    let endpoint = peer.endpoint();
    let device = peer.client(1);

    // Each tick reads input register 0 of the peer (215).
    reported(&consumer, "probe", |a| a["reading"] == 215);

    // Writes land in the peer, and read back the same.
    let ask = |id: &str, request: &str| call(&consumer, "probe", id, request);
    assert_eq!(
        ask("w1", &format!("write-registers {endpoint} 1 10 7,8,9")),
        "ok"
    );
    assert_eq!(device.holding_registers(10, 3), [7, 8, 9]);
    assert_eq!(
        ask("r1", &format!("read-holding {endpoint} 1 10 3")),
        "ok 7,8,9"
    );
    assert_eq!(
        ask("w2", &format!("write-registers {endpoint} 1 20 65535")),
        "ok"
    );
    assert_eq!(device.holding_registers(20, 1), [65535]);
    assert_eq!(
        ask("w3", &format!("write-coils {endpoint} 1 5 1,0,1")),
        "ok"
    );
    assert_eq!(device.coils(5, 3), [true, false, true]);
    assert_eq!(ask("w4", &format!("write-coils {endpoint} 1 9 1")), "ok");
    assert_eq!(
        ask("r2", &format!("read-coils {endpoint} 1 5 5")),
        "ok true,false,true,false,true"
    );
    assert_eq!(
        ask("r3", &format!("read-input {endpoint} 1 0 4")),
        "ok 215,480,1,2"
    );
    assert_eq!(
        ask("r4", &format!("read-discrete {endpoint} 1 0 2")),
        "ok false,false"
    );
    // What the peer refuses comes back as its exception.
    assert_eq!(
        ask("x1", &format!("read-holding {endpoint} 1 998 10")),
        "exception 2: Illegal data address"
    );

    // Not granted: another unit on the same device, another port, the same
    // device by another name, an endpoint that is not one. Refused before
    // any I/O, each naming what was asked.
    assert_eq!(
        ask("d1", &format!("read-holding {endpoint} 2 0 1")),
        format!("denied: modbus {endpoint} unit 2 is not granted to app probe")
    );
    let other_port = format!("tcp://127.0.0.1:{}", peer.port.wrapping_add(1));
    assert!(ask("d2", &format!("write-registers {other_port} 1 0 1")).starts_with("denied: "));
    let by_name = format!("tcp://localhost:{}", peer.port);
    assert!(ask("d3", &format!("read-input {by_name} 1 0 1")).starts_with("denied: "));
    assert!(ask("d4", "read-input serial:ttyS0 1 0 1").starts_with("denied: "));
    assert_eq!(
        peer.client(2).holding_registers(0, 1),
        [0],
        "unit 2 untouched"
    );
    // Outside the protocol's limits.
    assert_eq!(
        ask("i1", &format!("read-holding {endpoint} 1 0 126")),
        "invalid: 126 holding registers: a request takes 1 to 125"
    );
    let app = run.wait_app("probe", T, "counting", |a| {
        a["capabilities"]["modbus"]["denied"] == 4
    });
    assert_eq!(app["restarts"], 0, "{app}");

    // A device that stops answering: timeouts, though each wait (500 ms, or
    // the grant's 1 s for the tick's read) is longer than the app's 200 ms
    // deadline. Waiting on a device is not a runaway guest.
    peer.pause();
    assert!(
        ask("t1", &format!("read-input {endpoint} 1 0 1 timeout=500")).starts_with("timeout: "),
    );
    reported(&consumer, "probe", |a| a["last_error"] == "timeout");
    peer.resume();
    // It recovers with no action from the app: the next requests connect
    // again.
    let before = last_version(&consumer, "probe");
    consumer.wait_json("wg/v1/test-gw/probe/twin/reported", T, |r| {
        r["attributes"]["reading"] == 215 && r["version"].as_u64() > Some(before)
    });
    assert_eq!(
        ask("r5", &format!("read-holding {endpoint} 1 10 3")),
        "ok 7,8,9"
    );
    let app = run.wait_app("probe", T, "timeouts counted", |a| {
        a["capabilities"]["modbus"]["timeouts"].as_u64() >= Some(1)
    });
    assert_eq!(
        (app["state"].as_str(), app["restarts"].as_u64()),
        (Some("running"), Some(0)),
        "{app}"
    );
    assert!(run.stop().success());
}

#[test]
fn a_grant_outside_allow_stops_the_gateway_at_start_naming_it() {
    let peer_endpoint = "tcp://127.0.0.1:5020";
    let gw = Gateway::new()
        .section(&format!(
            "[allow]\nmodbus = [{{ endpoint = \"{peer_endpoint}\", units = [1] }}]\n"
        ))
        .app(
            "probe",
            &guest("modbus-probe"),
            &model("modbus"),
            &format!(
                "grants = {{ modbus = [{{ endpoint = \"{peer_endpoint}\", units = [1, 2] }}] }}"
            ),
        );
    gw.write_config();
    let (ok, _, err) = run_to_end(&["run", "--config"], &gw.config_path());
    assert!(!ok);
    assert!(
        err.contains("app[0].grants.modbus[0]: modbus tcp://127.0.0.1:5020 unit 2 is not within the gateway's [allow]"),
        "{err}"
    );
}

#[test]
fn a_flood_of_requests_costs_only_the_flooding_app() {
    let peer = ModbusPeer::start(&[1]);
    let broker = Mosquitto::start("");
    let consumer = Consumer::connect(&broker.settings("watcher"), &["wg/v1/test-gw/#"]);
    let gw = probe_gateway(
        &broker,
        &peer,
        &[("probe", ""), ("flooder", "flood = \"true\"")],
    );
    let mut run = gw.start();
    run.wait_connected(T);
    // The flooder asks 1,000 reads a tick: past its rate it gets `limit`.
    reported(&consumer, "flooder", |a| {
        a["flood_limited"].as_i64() > Some(1000)
    });
    // Meanwhile its neighbour's reads on the same device keep being
    // answered, tick after tick.
    for _ in 0..5 {
        let seen = last_version(&consumer, "probe");
        consumer.wait_json("wg/v1/test-gw/probe/twin/reported", T, |r| {
            r["attributes"]["reading"] == 215 && r["version"].as_u64() > Some(seen)
        });
    }
    let flooder = run.wait_app("flooder", T, "running", |a| a["state"] == "running");
    assert_eq!(flooder["restarts"], 0, "{flooder}");
    assert!(run.stop().success());
}

#[test]
fn a_signed_deployment_grants_what_allow_covers_and_is_refused_past_it() {
    let peer = ModbusPeer::start(&[1, 2]);
    let broker = Mosquitto::start("");
    let consumer = Consumer::connect(&broker.settings("watcher"), &["wg/v1/test-gw/#"]);
    let keys = tempfile::tempdir().expect("tempdir");
    let key = keys.path().join("operator");
    let (ok, _, err) = wasmgate(&["keygen", key.to_str().expect("path")]);
    assert!(ok, "{err}");
    let public = std::fs::read_to_string(key.with_extension("pub")).expect("pub");
    let endpoint = peer.endpoint();
    let gw = Gateway::new()
        .section(&format!("[cloud]\nurl = \"{}\"\n", broker.url()))
        .section(&format!(
            "[deploy]\ntrusted_keys = [\"{}\"]\n",
            public.trim()
        ))
        .section(&format!(
            "[allow]\nmodbus = [{{ endpoint = \"{endpoint}\", units = [1] }}]\n"
        ))
        .app(
            "probe",
            &guest("modbus-probe"),
            &model("modbus"),
            &format!("tick_interval_ms = 200\n[app.config]\nendpoint = \"{endpoint}\""),
        );
    let mut run = gw.start();
    run.wait_connected(T);
    // Granted nothing yet: every read is denied.
    reported(&consumer, "probe", |a| a["last_error"] == "denied");

    let deploy = |grants: &str| {
        let file = keys.path().join("grants.toml");
        std::fs::write(&file, grants).expect("grants file");
        let url = broker.url();
        let probe = guest("modbus-probe");
        let key = key.with_extension("key");
        wasmgate(&[
            "cloud",
            "--broker",
            &url,
            "--timeout",
            "60",
            "deploy",
            "test-gw",
            "probe",
            probe.to_str().expect("path"),
            "--key",
            key.to_str().expect("path"),
            "--grants",
            file.to_str().expect("path"),
        ])
    };
    // Signed grants within [allow]: deployed, and the device answers.
    let (ok, out, err) = deploy(&format!(
        "modbus = [{{ endpoint = \"{endpoint}\", units = [1] }}]\n"
    ));
    assert!(
        ok && out.contains("deployed: app probe: version 2 runs"),
        "{out}{err}"
    );
    reported(&consumer, "probe", |a| a["reading"] == 215);
    // Asking for more than [allow] covers: refused, naming the grant; the
    // running version keeps its grants.
    let (ok, out, _) = deploy(&format!(
        "modbus = [{{ endpoint = \"{endpoint}\", units = [1, 2] }}]\n"
    ));
    assert!(!ok);
    assert!(
        out.contains(&format!(
            "error: grants.modbus[0]: modbus {endpoint} unit 2 is not within the gateway's [allow]"
        )),
        "{out}"
    );
    let app = run.wait_app("probe", T, "on version 2", |a| a["version"] == 2);
    assert_eq!(app["state"], "running", "{app}");
    // A grants file that names no units is refused before anything is sent.
    let (ok, _, err) = deploy(&format!("modbus = [{{ endpoint = \"{endpoint}\" }}]\n"));
    assert!(!ok && err.contains("modbus[0].units"), "{err}");
    assert!(run.stop().success());
}

#[test]
fn the_modbus_meter_example_in_rust_and_go_reads_scaled_32_bit_values_in_either_word_order() {
    // The example's config is valid as shipped.
    let example = crate::common::root().join("examples/modbus-meter");
    wasmgate::config::Config::load(&example.join("gateway.toml")).expect("the example's config");
    // Unit 1 keeps 32-bit values high word first, unit 2 low word first:
    // 230.1 V (2301 × 10^-1), -1500 W, 1,234,567 Wh.
    let peer = ModbusPeer::with_inputs(
        &[1, 2],
        &json!({
            "1": [2301, 65535, 65535, 64036, 18, 54919],
            "2": [2301, 65535, 64036, 65535, 54919, 18],
        }),
    );
    let endpoint = peer.endpoint();
    let broker = Mosquitto::start("");
    let consumer = Consumer::connect(&broker.settings("watcher"), &["wg/v1/test-gw/#"]);
    let meter = |unit: u8, order: &str| {
        format!(
            "tick_interval_ms = 200\n\
             grants = {{ modbus = [{{ endpoint = \"{endpoint}\", units = [{unit}] }}] }}\n\
             [app.config]\nendpoint = \"{endpoint}\"\nunit = {unit}\nword_order = \"{order}\""
        )
    };
    let gw = Gateway::new()
        .section(&format!("[cloud]\nurl = \"{}\"\n", broker.url()))
        .section(&format!(
            "[allow]\nmodbus = [{{ endpoint = \"{endpoint}\", units = [1, 2] }}]\n"
        ))
        .app(
            "meter-rust",
            &guest("modbus-meter"),
            &example.join("meter.model.json"),
            &meter(1, "high-first"),
        )
        .app(
            "meter-go",
            &crate::common::root().join("guests/go/out/modbusmeter.wasm"),
            &example.join("meter.model.json"),
            &meter(2, "low-first"),
        );
    let mut run = gw.start();
    run.wait_connected(T);
    for app in ["meter-rust", "meter-go"] {
        let state = reported(&consumer, app, |a| a["power"].is_i64());
        let a = &state["attributes"];
        assert!(
            (a["voltage"].as_f64().expect("voltage") - 230.1).abs() < 1e-9,
            "{app}: {a}"
        );
        assert_eq!(a["power"], -1500, "{app}: {a}");
        assert!(
            (a["energy_kwh"].as_f64().expect("energy") - 1234.567).abs() < 1e-9,
            "{app}: {a}"
        );
        let batch = consumer.wait_json(&format!("wg/v1/test-gw/{app}/telemetry/energy"), T, |_| {
            true
        });
        assert_eq!(
            batch["points"][0]["values"]["power"], -1500,
            "{app}: {batch}"
        );
    }
    // A desired power limit lands in the meter's holding register 10.
    for (app, unit, percent) in [("meter-rust", 1, 60), ("meter-go", 2, 75)] {
        consumer.publish(
            &format!("wg/v1/test-gw/{app}/twin/desired"),
            json!({"version": 1, "attributes": {"power_limit": percent}}).to_string(),
            false,
        );
        let ack = consumer.wait_json(&format!("wg/v1/test-gw/{app}/twin/ack"), T, |a| {
            a["version"] == 1
        });
        assert_eq!(ack["accepted"], json!(["power_limit"]), "{app}: {ack}");
        assert_eq!(
            peer.client(unit).holding_registers(10, 1),
            [percent],
            "{app}"
        );
    }
    assert!(run.stop().success());
}

#[test]
fn the_demo_thermostat_heats_the_simulated_room_over_modbus() {
    // The demo's setup: the Modbus room in-process, the thermostat granted
    // it and nothing else.
    let port = crate::common::free_port();
    let endpoint = format!("tcp://127.0.0.1:{port}");
    let broker = Mosquitto::start("");
    let consumer = Consumer::connect(&broker.settings("watcher"), &["wg/v1/test-gw/#"]);
    let gw = Gateway::new()
        .section(&format!("[cloud]\nurl = \"{}\"\n", broker.url()))
        .section(&format!(
            "[simulator]\nmodbus_listen = \"127.0.0.1:{port}\"\nstart_temperature = 15.0\n"
        ))
        .section(&format!(
            "[allow]\nmodbus = [{{ endpoint = \"{endpoint}\", units = [1] }}]\n"
        ))
        .app(
            "thermostat",
            &guest("thermostat"),
            &crate::common::root().join("examples/thermostat/thermostat.model.json"),
            &format!(
                "tick_interval_ms = 200\n\
                 grants = {{ modbus = [{{ endpoint = \"{endpoint}\", units = [1] }}] }}\n\
                 [app.config]\nmodbus_endpoint = \"{endpoint}\""
            ),
        );
    let mut run = gw.start();
    run.wait_connected(T);
    // The room starts at 15 °C, under the 21 °C setpoint: the app switches
    // the heating coil on, and the room warms (0.3 °C a second).
    let first = reported(&consumer, "thermostat", |a| a["heating"] == true);
    let start = first["attributes"]["temperature"]
        .as_f64()
        .expect("temperature");
    assert!((14.0..17.0).contains(&start), "{first}");
    reported(&consumer, "thermostat", |a| {
        a["temperature"].as_f64().is_some_and(|t| t >= start + 0.6)
    });
    // The coil is on in the device itself.
    let room = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(async {
            use tokio_modbus::client::Reader;
            let mut context = tokio_modbus::client::tcp::connect(([127, 0, 0, 1], port).into())
                .await
                .expect("connect");
            context
                .read_coils(0, 1)
                .await
                .expect("transport")
                .expect("no exception")
        });
    assert_eq!(room, [true]);
    assert!(run.stop().success());
}

#[test]
fn an_app_waiting_on_a_silent_device_is_stopped_and_swapped_without_waiting_it_out() {
    let peer = ModbusPeer::start(&[1]);
    let endpoint = peer.endpoint();
    let broker = Mosquitto::start("");
    let consumer = Consumer::connect(&broker.settings("watcher"), &["wg/v1/test-gw/#"]);
    // Each read may wait 20 s for the device.
    let gw = Gateway::new()
        .section(&format!("[cloud]\nurl = \"{}\"\n", broker.url()))
        .section(&format!("[allow]\nmodbus = [{{ endpoint = \"{endpoint}\" }}]\n"))
        .app(
            "probe",
            &guest("modbus-probe"),
            &model("modbus"),
            &format!(
                "tick_interval_ms = 200\nio_wait_ms = 30000\n\
                 grants = {{ modbus = [{{ endpoint = \"{endpoint}\", units = [1], timeout_ms = 20000 }}] }}\n\
                 [app.config]\nendpoint = \"{endpoint}\""
            ),
        );
    let mut run = gw.start();
    run.wait_connected(T);
    reported(&consumer, "probe", |a| a["reading"] == 215);
    let config = gw.config_path();
    let config = config.to_str().expect("path");
    let requests = |run: &mut crate::common::Running| {
        run.wait_app("probe", T, "reporting", |a| {
            a["capabilities"]["modbus"]["requests"].is_u64()
        })["capabilities"]["modbus"]["requests"]
            .as_u64()
            .unwrap_or(0)
    };
    // Wait until the app makes a request after the `before`th: to the
    // silent device, it gets no answer.
    let waiting_in = |run: &mut crate::common::Running, before: u64| {
        run.wait_app("probe", T, "in a request to the silent device", |a| {
            a["capabilities"]["modbus"]["requests"].as_u64() > Some(before)
        });
    };
    peer.pause();
    let before = requests(&mut run);
    waiting_in(&mut run, before);
    // A stop cancels the wait: the app stops (saving its state) without
    // waiting out the 20 s, and without a crash.
    let (ok, out, err) = wasmgate(&["stop", "probe", "--gateway", config]);
    assert!(ok, "{out}{err}");
    let stopped = run.wait_app("probe", T, "stopped", |a| a["state"] == "stopped");
    assert_eq!(stopped["restarts"], 0, "{stopped}");
    assert_eq!(
        stopped["capabilities"]["modbus"]["timeouts"], 0,
        "{stopped}"
    );
    // Started again, it waits again; a hot swap cancels that wait the same
    // way.
    let before = requests(&mut run);
    let (ok, out, err) = wasmgate(&["start", "probe", "--gateway", config]);
    assert!(ok, "{out}{err}");
    waiting_in(&mut run, before);
    let probe = guest("modbus-probe");
    let (ok, out, err) = wasmgate(&[
        "deploy",
        "probe",
        probe.to_str().expect("path"),
        "--config",
        &format!("endpoint={endpoint}"),
        "--config",
        "generation=2",
        "--gateway",
        config,
    ]);
    assert!(ok && out.contains("version 2 runs"), "{out}{err}");
    let swapped = run.wait_app("probe", T, "on version 2", |a| a["version"] == 2);
    assert_eq!(
        swapped["capabilities"]["modbus"]["timeouts"], 0,
        "{swapped}"
    );
    // The device answers again, and so does the new version.
    peer.resume();
    let seen = last_version(&consumer, "probe");
    consumer.wait_json("wg/v1/test-gw/probe/twin/reported", T, |r| {
        r["attributes"]["reading"] == 215 && r["version"].as_u64() > Some(seen)
    });
    assert!(run.stop().success());
}

#[test]
fn sockets_reach_granted_addresses_only_and_refusals_are_counted() {
    let tcp = crate::common::peers::EchoPeer::start("tcp");
    let other = crate::common::peers::EchoPeer::start("tcp");
    let udp = crate::common::peers::EchoPeer::start("udp");
    let other_udp = crate::common::peers::EchoPeer::start("udp");
    let broker = Mosquitto::start("");
    let consumer = Consumer::connect(&broker.settings("watcher"), &["wg/v1/test-gw/#"]);
    let (tcp_at, other_at) = (tcp.address(), other.address());
    let (udp_at, other_udp_at) = (udp.address(), other_udp.address());
    let grants = format!(
        "sockets = [{{ address = \"{tcp_at}\", protocol = \"tcp\" }}, \
         {{ address = \"{udp_at}\", protocol = \"udp\" }}]"
    );
    let gw = Gateway::new()
        .section(&format!("[cloud]\nurl = \"{}\"\n", broker.url()))
        .section(&format!("[allow]\n{grants}\n"))
        .app(
            "probe",
            &guest("modbus-probe"),
            &model("modbus"),
            &format!("tick_interval_ms = 60000\ngrants = {{ {grants} }}"),
        );
    let mut run = gw.start();
    run.wait_connected(T);
    let ask = |id: &str, request: &str| call(&consumer, "probe", id, request);
    // Granted: the peer's answer comes back.
    assert_eq!(ask("t1", &format!("tcp {tcp_at} hello")), "ok echo:hello");
    assert_eq!(ask("u1", &format!("udp {udp_at} hello")), "ok echo:hello");
    // Not granted: another port, a TCP address over UDP and a UDP one over
    // TCP, a name. Each refused before any I/O.
    for (id, request) in [
        ("d1", format!("tcp {other_at} hello")),
        ("d2", format!("udp {tcp_at} hello")),
        ("d3", format!("tcp localhost:{} hello", tcp.port)),
        ("d4", format!("udp {other_udp_at} hello")),
        ("d5", format!("tcp {udp_at} hello")),
    ] {
        let answer = ask(id, &request);
        assert!(answer.starts_with("error: "), "{request}: {answer}");
    }
    let app = run.wait_app("probe", T, "refusals counted", |a| {
        a["capabilities"]["wasi"]["sockets_denied"].as_u64() >= Some(1)
    });
    assert_eq!(app["restarts"], 0, "{app}");
    assert!(run.stop().success());
}

#[test]
fn modbus_rtu_over_a_serial_line_reaches_the_granted_line_and_unit_only() {
    let line = crate::common::peers::SerialPair::start();
    let peer = ModbusPeer::rtu(&line.device_end(), &[1, 2]);
    let serial = format!("rtu://{}?baud=9600", line.gateway_end().display());
    let broker = Mosquitto::start("");
    let consumer = Consumer::connect(&broker.settings("watcher"), &["wg/v1/test-gw/#"]);
    let gw = Gateway::new()
        .section(&format!("[cloud]\nurl = \"{}\"\n", broker.url()))
        .section(&format!(
            "[allow]\nmodbus = [{{ endpoint = \"{serial}\" }}]\n"
        ))
        .app(
            "probe",
            &guest("modbus-probe"),
            &model("modbus"),
            &format!(
                "tick_interval_ms = 60000\n\
                 grants = {{ modbus = [{{ endpoint = \"{serial}\", units = [1] }}] }}"
            ),
        );
    let mut run = gw.start();
    run.wait_connected(T);
    let ask = |id: &str, request: &str| call(&consumer, "probe", id, request);
    assert_eq!(
        ask("r1", &format!("read-input {serial} 1 0 4")),
        "ok 215,480,1,2"
    );
    assert_eq!(
        ask("w1", &format!("write-registers {serial} 1 30 11,12")),
        "ok"
    );
    // What came over the line is in the device (read back over its TCP side).
    assert_eq!(peer.client(1).holding_registers(30, 2), [11, 12]);
    // Another unit on the line, and the line at another speed: not granted.
    assert!(ask("d1", &format!("read-input {serial} 2 0 1")).starts_with("denied: "));
    let faster = serial.replace("baud=9600", "baud=19200");
    assert!(ask("d2", &format!("read-input {faster} 1 0 1")).starts_with("denied: "));
    assert_eq!(
        peer.client(2).holding_registers(30, 2),
        [0, 0],
        "unit 2 untouched"
    );
    assert!(run.stop().success());
}

#[test]
fn serial_ports_carry_bytes_both_ways_for_the_app_granted_them_one_app_at_a_time() {
    use std::io::{BufRead, Write};
    let line = crate::common::peers::SerialPair::start();
    let port = line.gateway_end().display().to_string();
    let broker = Mosquitto::start("");
    let consumer = Consumer::connect(&broker.settings("watcher"), &["wg/v1/test-gw/#"]);
    let grants = format!("serial = [{{ port = \"{port}\" }}]");
    let mut gw = Gateway::new()
        .section(&format!("[cloud]\nurl = \"{}\"\n", broker.url()))
        .section(&format!("[allow]\n{grants}\n"));
    for name in ["probe", "other"] {
        gw = gw.app(
            name,
            &guest("modbus-probe"),
            &model("modbus"),
            &format!("device = \"{name}\"\ntick_interval_ms = 60000\ngrants = {{ {grants} }}"),
        );
    }
    let mut run = gw.start();
    run.wait_connected(T);
    // The device: the other end of the line, read a line at a time.
    let device = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(line.device_end())
        .expect("the device's end");
    let mut writer = device.try_clone().expect("clone");
    let (lines, heard) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(device).lines() {
            let Ok(line) = line else { return };
            if lines.send(line).is_err() {
                return;
            }
        }
    });
    let ask = |app: &str, id: &str, request: &str| call(&consumer, app, id, request);

    assert_eq!(
        ask("probe", "o1", &format!("serial-open {port} 9600")),
        "ok"
    );
    assert_eq!(ask("probe", "w1", "serial-write MEAS?"), "ok");
    assert_eq!(heard.recv_timeout(T).expect("the device heard"), "MEAS?");
    writer.write_all(b"21.5 C\n").expect("the device answers");
    assert_eq!(ask("probe", "r1", "serial-read-line 5000"), "ok 21.5 C");
    // Nothing more comes: a timeout, and the port stays open.
    let quiet = ask("probe", "r2", "serial-read-line 100");
    assert!(quiet.starts_with("timeout: "), "{quiet}");
    writer.write_all(b"again\n").expect("write");
    assert_eq!(ask("probe", "r3", "serial-read-line 5000"), "ok again");

    // Granted to both, held by one: the other app is told it is in use.
    let busy = ask("other", "o2", &format!("serial-open {port} 9600"));
    assert!(
        busy.starts_with("closed: ") && busy.ends_with("by another app"),
        "{busy}"
    );
    // Not granted, and a bad setting: refused before the port is touched.
    let denied = ask("other", "o3", "serial-open /dev/ttyS9 9600");
    assert!(denied.starts_with("denied: "), "{denied}");
    let invalid = ask("probe", "o4", &format!("serial-open {port} 7"));
    assert!(invalid.starts_with("invalid: "), "{invalid}");
    // Dropped by its holder, the port is free for the other app.
    assert_eq!(ask("probe", "c1", "serial-close"), "ok");
    assert_eq!(
        ask("other", "o5", &format!("serial-open {port} 19200")),
        "ok"
    );
    assert_eq!(ask("other", "w2", "serial-write hello"), "ok");
    assert_eq!(heard.recv_timeout(T).expect("the device heard"), "hello");

    let probe = run.wait_app("probe", T, "counted", |a| {
        let serial = &a["capabilities"]["serial"];
        serial["timeouts"].as_u64() >= Some(1) && serial["bytes_read"].as_u64() >= Some(13)
    });
    assert_eq!(
        probe["capabilities"]["serial"]["bytes_written"], 6,
        "{probe}"
    );
    let other = run.wait_app("other", T, "counted", |a| {
        a["capabilities"]["serial"]["denied"].as_u64() >= Some(1)
    });
    assert_eq!(other["capabilities"]["serial"]["failures"], 1, "{other}");
    assert!(run.stop().success());
}

/// The bus probe app `name` with `grants` and `config` (its `[app.config]`
/// lines), and `settings` (its own lines).
fn bus_probe(gw: Gateway, name: &str, grants: &str, settings: &str, config: &str) -> Gateway {
    gw.app(
        name,
        &guest("bus-probe"),
        &model("bus"),
        &format!(
            "device = \"{name}\"\ntick_interval_ms = 100\n{settings}\n\
             grants = {{ bus = [{grants}] }}\n[app.config]\n{config}"
        ),
    )
}

#[test]
fn the_local_bus_reaches_granted_topics_only_and_a_slow_app_loses_only_its_own_messages() {
    let cloud = Mosquitto::start("");
    let bus = Mosquitto::start("");
    let consumer = Consumer::connect(&cloud.settings("watcher"), &["wg/v1/test-gw/#"]);
    // The devices' side of the bus: publishes readings, hears the valve.
    let devices = Consumer::connect(&bus.settings("devices"), &["actuators/#"]);
    let mut gw = Gateway::new()
        .section(&format!("[cloud]\nurl = \"{}\"\n", cloud.url()))
        .section(&format!("[bus]\nurl = \"{}\"\n", bus.url()))
        .section(
            "[allow]\nbus = [{ topic = \"sensors/#\", access = \"subscribe\" }, \
             { topic = \"actuators/#\", access = \"both\" }]\n",
        );
    gw = bus_probe(
        gw,
        "fast",
        "{ topic = \"sensors/#\", access = \"subscribe\" }, \
         { topic = \"actuators/valve/set\", access = \"publish\" }",
        "bus_queue = 1000",
        "subscribe = \"sensors/+/temp\"\necho_to = \"actuators/valve/set\"",
    );
    gw = bus_probe(
        gw,
        "slow",
        "{ topic = \"sensors/#\", access = \"subscribe\" }",
        "bus_queue = 4",
        "subscribe = \"sensors/#\"\nslow_ms = 50",
    );
    let mut run = gw.start();
    run.wait_connected(T);
    for app in ["fast", "slow"] {
        reported(&consumer, app, |a| a["subscribed"] == "ok");
    }
    // The gateway subscribes once it is on the bus: publish until the
    // fast app has heard something, then the real traffic.
    let mut warm_ups = 0;
    let heard = |run: &crate::common::Running| {
        run.apps()
            .and_then(|apps| apps.into_iter().find(|a| a["name"] == "fast"))
            .is_some_and(|a| a["capabilities"]["bus"]["received"].as_u64() > Some(0))
    };
    while !heard(&run) {
        assert!(warm_ups < 500, "the fast app heard nothing");
        devices.publish("sensors/warmup/temp", "0", false);
        warm_ups += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    for n in 0..200 {
        devices.publish("sensors/room1/temp", format!("{n}"), false);
    }
    devices.publish("sensors/room1/humidity", "40", false); // not the fast app's filter
    reported(&consumer, "fast", |a| a["last"] == "sensors/room1/temp 199");
    let fast = run.wait_app("fast", T, "through all 200", |a| {
        a["capabilities"]["bus"]["received"].as_u64() >= Some(200 + 1)
    });
    assert_eq!(fast["capabilities"]["bus"]["dropped"], 0, "{fast}");
    // What the fast app published reached the bus: every reading, echoed.
    let deadline = std::time::Instant::now() + T;
    while devices.on("actuators/valve/set").len() < 200 {
        assert!(std::time::Instant::now() < deadline, "echoes missing");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The slow app could not keep up: it lost messages, it alone, and it
    // is still running.
    let slow = run.wait_app("slow", T, "losing messages", |a| {
        a["capabilities"]["bus"]["dropped"].as_u64() >= Some(1)
    });
    assert_eq!(slow["restarts"], 0, "{slow}");
    assert_eq!(slow["state"], "running", "{slow}");

    // Not granted: refused before anything is sent, and counted.
    let ask = |app: &str, id: &str, request: &str| call(&consumer, app, id, request);
    for (id, request) in [
        ("d1", "publish sensors/room1/temp 99"),
        ("d2", "publish actuators/pump/set on"),
        ("d3", "subscribe plant/#"),
        ("d4", "subscribe #"),
    ] {
        let answer = ask("fast", id, request);
        assert!(answer.starts_with("denied: "), "{request}: {answer}");
    }
    assert!(ask("fast", "i1", "publish actuators/+/set on").starts_with("invalid: "));
    assert_eq!(ask("fast", "p1", "publish actuators/valve/set open"), "ok");
    let deadline = std::time::Instant::now() + T;
    while !devices
        .on("actuators/valve/set")
        .iter()
        .any(|m| m.payload == b"open")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the valve never heard"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(devices.on("actuators/pump/set").is_empty());
    run.wait_app("fast", T, "refusals counted", |a| {
        a["capabilities"]["bus"]["denied"].as_u64() >= Some(4)
    });
    assert!(run.stop().success());
}

/// `GET path` on `address` with a plain HTTP/1.0 request: the body.
fn http_get(address: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address).expect("connect");
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n").expect("request");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("answer");
    answer
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default()
}

#[test]
fn outgoing_http_reaches_granted_url_prefixes_only_and_refusals_are_counted() {
    let server = crate::common::peers::EchoPeer::start("http");
    let other = crate::common::peers::EchoPeer::start("http");
    let broker = Mosquitto::start("");
    let consumer = Consumer::connect(&broker.settings("watcher"), &["wg/v1/test-gw/#"]);
    let (at, other_at) = (server.address(), other.address());
    let gw = Gateway::new()
        .section(&format!("[cloud]\nurl = \"{}\"\n", broker.url()))
        .section(&format!("[allow]\nhttp = [{{ url = \"http://{at}/\" }}]\n"))
        .app(
            "probe",
            &guest("modbus-probe"),
            &model("modbus"),
            &format!(
                "tick_interval_ms = 60000\ncall_timeout_ms = 500\nio_requests_per_s = 2\n\
                 grants = {{ http = [{{ url = \"http://{at}/api\", timeout_ms = 2000 }}] }}"
            ),
        );
    let mut run = gw.start();
    run.wait_connected(T);
    let ask = |id: &str, request: &str| call(&consumer, "probe", id, request);
    assert_eq!(
        ask("g1", &format!("http http://{at}/api/meters/1")),
        "ok 200 echo:GET /api/meters/1 "
    );
    assert_eq!(
        ask("p1", &format!("http http://{at}/api/setpoint 21.5")),
        "ok 200 echo:POST /api/setpoint 21.5"
    );
    // A slow answer (1.5 s) is an I/O wait, not the guest running past its
    // 500 ms deadline.
    assert_eq!(
        ask("s1", &format!("http http://{at}/api/slow")),
        "ok 200 echo:GET /api/slow "
    );
    // Outside the prefix, another server, the same server by name, https:
    // refused before anything is sent.
    for (id, url) in [
        ("d1", format!("http://{at}/admin")),
        ("d2", format!("http://{at}/apix")),
        ("d3", format!("http://{other_at}/api/meters/1")),
        (
            "d4",
            format!("http://localhost:{}/api/meters/1", server.port),
        ),
        ("d5", format!("https://{at}/api/meters/1")),
    ] {
        let answer = ask(id, &format!("http {url}"));
        assert!(answer.contains("HttpRequestDenied"), "{url}: {answer}");
    }
    assert_eq!(
        http_get(&at, "/_seen"),
        "/api/meters/1\n/api/setpoint\n/api/slow\n",
        "only the granted requests reached the server"
    );
    assert_eq!(http_get(&other_at, "/_seen"), "");
    let app = run.wait_app("probe", T, "refusals counted", |a| {
        a["capabilities"]["wasi"]["http_denied"].as_u64() >= Some(5)
    });
    assert_eq!(app["capabilities"]["wasi"]["http_requests"], 3, "{app}");
    assert_eq!(app["restarts"], 0, "{app}");
    // A loop of requests is held to the app's rate (here 2 a second, a
    // burst of 4): the rest fail before they are sent, and are counted.
    let burst = ask("b1", &format!("http-burst 12 http://{at}/api/meters/2"));
    let refused: u64 = burst
        .rsplit_once("refused ")
        .and_then(|(_, n)| n.parse().ok())
        .unwrap_or_else(|| panic!("{burst}"));
    assert!(refused >= 1, "{burst}");
    let app = run.wait_app("probe", T, "limited", |a| {
        a["capabilities"]["wasi"]["http_limited"].as_u64() >= Some(refused)
    });
    assert_eq!(app["restarts"], 0, "{app}");
    assert!(run.stop().success());
}

#[test]
fn the_bus_link_comes_back_by_itself_after_the_broker_restarts_and_a_new_version_subscribes_again()
{
    let cloud = Mosquitto::start("");
    let mut bus = Mosquitto::start("");
    let consumer = Consumer::connect(&cloud.settings("watcher"), &["wg/v1/test-gw/#"]);
    let gw = bus_probe(
        Gateway::new()
            .section(&format!("[cloud]\nurl = \"{}\"\n", cloud.url()))
            .section(&format!(
                "[bus]\nurl = \"{}\"\nbackoff_initial_ms = 100\nbackoff_max_ms = 500\n",
                bus.url()
            ))
            .section(
                "[allow]\nbus = [{ topic = \"sensors/#\", access = \"subscribe\" }, \
                 { topic = \"actuators/#\", access = \"publish\" }]\n",
            ),
        "probe",
        "{ topic = \"sensors/#\", access = \"subscribe\" }, \
         { topic = \"actuators/#\", access = \"publish\" }",
        "",
        "subscribe = \"sensors/#\"",
    );
    let mut run = gw.start();
    run.wait_connected(T);
    let received = |run: &crate::common::Running| {
        run.apps()
            .and_then(|apps| apps.into_iter().find(|a| a["name"] == "probe"))
            .and_then(|a| a["capabilities"]["bus"]["received"].as_u64())
            .unwrap_or(0)
    };
    // Publish from a fresh client until the app has heard `more` than it had.
    let hear_more = |run: &crate::common::Running, bus: &Mosquitto, id: &str| {
        let before = received(run);
        let devices = Consumer::connect(&bus.settings(id), &["unused/#"]);
        let deadline = std::time::Instant::now() + T;
        while received(run) <= before {
            assert!(
                std::time::Instant::now() < deadline,
                "the app heard nothing"
            );
            devices.publish("sensors/room1/temp", "21", false);
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    hear_more(&run, &bus, "devices-1");
    assert_eq!(
        call(&consumer, "probe", "p1", "publish actuators/valve/set open"),
        "ok"
    );
    // The broker goes away: publishing says so at once, nothing waits.
    bus.stop();
    let mut attempt = 0;
    loop {
        attempt += 1;
        let answer = call(
            &consumer,
            "probe",
            &format!("c{attempt}"),
            "publish actuators/valve/set x",
        );
        if answer.starts_with("closed: ") {
            break;
        }
        assert!(
            attempt < 200,
            "publishing never said the bus is down: {answer}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // It comes back: the gateway reconnects and subscribes again, with no
    // action from the app.
    bus.restart();
    hear_more(&run, &bus, "devices-2");
    let app = run.wait_app("probe", T, "reporting", |a| a["state"] == "running");
    assert_eq!(app["restarts"], 0, "{app}");
    assert!(
        app["capabilities"]["bus"]["failures"].as_u64() >= Some(1),
        "{app}"
    );
    // A hot swap: the new version subscribes in its init and hears the bus.
    let config = gw.config_path();
    let probe = guest("bus-probe");
    let (ok, out, err) = wasmgate(&[
        "deploy",
        "probe",
        probe.to_str().expect("path"),
        "--config",
        "subscribe=sensors/#",
        "--config",
        "generation=2",
        "--gateway",
        config.to_str().expect("path"),
    ]);
    assert!(ok && out.contains("version 2 runs"), "{out}{err}");
    hear_more(&run, &bus, "devices-3");
    assert!(run.stop().success());
}

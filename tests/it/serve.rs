//! `wasmgate cloud serve` with real gateways, a real Mosquitto and a real
//! database (a SQLite file, or PostgreSQL started from `initdb`): every
//! point is stored once through a broker restart and a `kill -9` of serve,
//! queries return exactly what was recorded, desired values and actions set
//! through the API reach the app (checked against its model first), and bad
//! requests are refused without touching what is stored. Answers are
//! checked against the API's OpenAPI document.

use crate::common::mqtt::{Consumer, Mosquitto};
use crate::common::serve::{OPERATOR, Postgres, READER, Serve, tokens_file};
use crate::common::{Gateway, guest, root};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(30);

pub(crate) fn thermostat(broker: &Mosquitto, tick_ms: u64, extra: &str) -> Gateway {
    Gateway::new()
        .section(&format!(
            "[cloud]\nurl = \"{}\"\nbackoff_initial_ms = 100\nbackoff_max_ms = 500\n",
            broker.url()
        ))
        .app(
            "thermostat",
            &guest("thermostat"),
            &root().join("examples/thermostat/thermostat.model.json"),
            &format!("tick_interval_ms = {tick_ms}\n{extra}"),
        )
}

/// The climate points the broker delivered, once per batch id, in order.
pub(crate) fn delivered(consumer: &Consumer) -> Vec<Value> {
    let mut seen = BTreeSet::new();
    consumer
        .on("wg/v1/test-gw/thermostat/telemetry/climate")
        .iter()
        .map(|m| m.json())
        .filter(|b| seen.insert(b["batch"].as_str().unwrap_or("?").to_string()))
        .flat_map(|b| b["points"].as_array().cloned().unwrap_or_default())
        .collect()
}

/// The points delivered (once per batch id) once a stopped gateway's last
/// messages are in and serve has stored as many.
pub(crate) fn settled(consumer: &Consumer, serve: &Serve) -> Vec<Value> {
    let deadline = Instant::now() + T;
    let mut last = usize::MAX;
    loop {
        let points = delivered(consumer);
        let stored = serve.stored_points();
        if points.len() == last && stored == points.len() as i64 {
            return points;
        }
        assert!(
            Instant::now() < deadline,
            "serve stored {stored} points, the broker delivered {}",
            points.len()
        );
        last = points.len();
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Stop the gateway and start it again with a tick of an hour, so that it
/// records one point at once (its first tick) and then none; once that point
/// is in and serve has stored all that came, nothing more comes. The new
/// gateway, its run, and every point delivered.
fn slowed_down(
    broker: &Mosquitto,
    mut run: crate::common::Running,
    consumer: &Consumer,
    serve: &Serve,
) -> (Gateway, crate::common::Running, Vec<Value>) {
    assert!(run.stop().success());
    let restarted_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_nanos() as u64;
    let gw = thermostat(broker, 3_600_000, "");
    let mut run = gw.start();
    run.wait_connected(T);
    let deadline = Instant::now() + T;
    while !delivered(consumer)
        .iter()
        .any(|p| p["time"].as_u64().is_some_and(|t| t >= restarted_at))
    {
        assert!(
            Instant::now() < deadline,
            "the restarted gateway's first point did not arrive"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let sent = settled(consumer, serve);
    assert_eq!(
        gw.count("SELECT COUNT(*) FROM outbox WHERE kind = 'telemetry'"),
        0,
        "the outbox drained"
    );
    (gw, run, sent)
}

/// A gateway whose data directory is wiped counts its outbox from 1 again.
/// Its batches carry its new database's id, so serve stores them rather than
/// taking them for batches it has seen.
#[test]
fn a_gateway_started_again_on_a_wiped_data_directory_is_stored_not_taken_for_duplicates() {
    let broker = Mosquitto::start("");
    let consumer = Consumer::connect(
        &broker.settings("consumer"),
        &["wg/v1/test-gw/+/telemetry/+"],
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let database = format!("sqlite://{}", dir.path().join("serve.db").display());
    let serve = Serve::start(&broker.url(), &database, &[]);
    let gw = thermostat(&broker, 50, "");
    let batch_ids = || -> BTreeSet<String> {
        consumer
            .on("wg/v1/test-gw/thermostat/telemetry/climate")
            .iter()
            .map(|m| m.json()["batch"].as_str().expect("batch id").to_string())
            .collect()
    };
    let mut run = gw.start();
    serve.wait_get("/stats", T, "points stored", |s| {
        s["stored_points"].as_i64() > Some(20)
    });
    assert!(run.stop().success());
    let first = settled(&consumer, &serve).len();
    let first_ids = batch_ids();

    std::fs::remove_dir_all(gw.data_dir()).expect("wipe the data directory");
    let mut run = gw.start();
    serve.wait_get("/stats", T, "the new points stored", |s| {
        s["stored_points"].as_i64() > Some(first as i64 + 20)
    });
    assert!(run.stop().success());
    let all = settled(&consumer, &serve);
    assert!(all.len() > first + 20, "{} then {}", first, all.len());
    let stats = serve.get("/stats");
    assert_eq!(stats["duplicates"], 0, "{stats}");
    let prefix = |id: &String| {
        id.rsplit_once('-')
            .expect("gateway-database-seq")
            .0
            .to_string()
    };
    let before: BTreeSet<String> = first_ids.iter().map(prefix).collect();
    let after: BTreeSet<String> = batch_ids().difference(&first_ids).map(prefix).collect();
    assert_eq!(before.len(), 1, "{before:?}");
    assert_eq!(after.len(), 1, "{after:?}");
    assert_ne!(before, after, "the wiped gateway's ids have a new prefix");
}

const CLIMATE: &str = "/gateways/test-gw/devices/thermostat/series/climate";

/// The scenario both databases go through: the gateway records while serve
/// is killed and restarted and the broker restarts; in the end serve holds
/// exactly the points the gateway sent, once each.
fn every_point_stored_once(database: &str) {
    let mut broker = Mosquitto::start("");
    let consumer = Consumer::connect(
        &broker.settings("consumer"),
        &["wg/v1/test-gw/+/telemetry/+"],
    );
    let mut serve = Serve::start(&broker.url(), database, &["--client-id", "serve-a"]);
    let gw = thermostat(&broker, 20, "");
    let run = gw.start();
    serve.wait_get("/stats", T, "points stored", |s| {
        s["stored_points"].as_i64() > Some(20)
    });

    // Killed between a delivery and its commit: the broker keeps what
    // was not acknowledged for serve's session.
    serve.running.kill9();
    std::thread::sleep(Duration::from_millis(500));
    let serve = Serve::start(&broker.url(), database, &["--client-id", "serve-a"]);
    let before = serve.stored_points();
    broker.restart();
    serve.wait_get("/stats", T, "storing after the broker restart", |s| {
        s["stored_points"].as_i64() > Some(before + 20)
    });

    let (_slow, mut run, sent) = slowed_down(&broker, run, &consumer, &serve);
    let stored = serve.get(&format!("{CLIMATE}?limit=100000"))["points"]
        .as_array()
        .cloned()
        .expect("points");
    assert!(sent.len() > 40, "the gateway sent {} points", sent.len());
    assert_eq!(stored.len(), sent.len(), "every point once");
    assert_eq!(stored, sent, "exactly the points sent, in order");
    let stats = serve.get("/stats");
    assert_eq!(stats["stored_points"].as_i64(), Some(sent.len() as i64));
    assert_eq!(stats["refused"], 0, "{stats}");

    // A time range returns exactly the points inside it, and buckets sum
    // up to them.
    let times: Vec<i64> = sent
        .iter()
        .map(|p| p["time"].as_i64().expect("time"))
        .collect();
    let (from, to) = (times[10], times[30]);
    let range = serve.get(&format!("{CLIMATE}?from={from}&to={to}"))["points"]
        .as_array()
        .cloned()
        .expect("points");
    assert_eq!(range, sent[10..30].to_vec());
    let buckets = serve.get(&format!(
        "{CLIMATE}?from={from}&to={to}&field=temperature&bucket_ms=100"
    ));
    let buckets = buckets["buckets"].as_array().expect("buckets");
    let counted: i64 = buckets
        .iter()
        .map(|b| b["count"].as_i64().expect("count"))
        .sum();
    assert_eq!(counted, 20);
    let temperatures: Vec<f64> = sent[10..30]
        .iter()
        .map(|p| p["values"]["temperature"].as_f64().expect("temperature"))
        .collect();
    let min = temperatures.iter().cloned().fold(f64::INFINITY, f64::min);
    let max = temperatures
        .iter()
        .cloned()
        .fold(f64::NEG_INFINITY, f64::max);
    let bucket_min = buckets
        .iter()
        .filter_map(|b| b["min"].as_f64())
        .fold(f64::INFINITY, f64::min);
    let bucket_max = buckets
        .iter()
        .filter_map(|b| b["max"].as_f64())
        .fold(f64::NEG_INFINITY, f64::max);
    assert_eq!((bucket_min, bucket_max), (min, max));
    assert!(run.stop().success());
}

#[test]
fn on_sqlite_every_point_is_stored_once_through_a_broker_restart_and_a_kill_9() {
    let dir = tempfile::tempdir().expect("tempdir");
    every_point_stored_once(&format!("sqlite://{}/serve.db", dir.path().display()));
}

#[test]
fn on_postgres_every_point_is_stored_once_through_a_broker_restart_and_a_kill_9() {
    let pg = Postgres::start();
    let database = pg.database("fleet");
    every_point_stored_once(&database);
    // Other systems read the same rows with plain SQL.
    let batches: i64 = pg
        .query("fleet", "SELECT COUNT(*) FROM batches")
        .parse()
        .expect("a count");
    assert!(batches > 0);
    let duplicates: i64 = pg
        .query(
            "fleet",
            "SELECT COUNT(*) FROM (SELECT gateway, batch, point, field, COUNT(*) FROM points
             GROUP BY gateway, batch, point, field HAVING COUNT(*) > 1) AS twice",
        )
        .parse()
        .expect("a count");
    assert_eq!(duplicates, 0, "no point is stored twice");
}

#[test]
fn two_instances_on_shared_subscriptions_store_every_point_once_when_one_is_killed() {
    let broker = Mosquitto::start("");
    let pg = Postgres::start();
    let database = pg.database("fleet");
    let consumer = Consumer::connect(
        &broker.settings("consumer"),
        &["wg/v1/test-gw/+/telemetry/+"],
    );
    let start = |id: &str| {
        Serve::start(
            &broker.url(),
            &database,
            &["--share", "fleet", "--client-id", id],
        )
    };
    let mut a = start("serve-a");
    let b = start("serve-b");
    let gw = thermostat(&broker, 10, "");
    let run = gw.start();
    // Both take a share of the points.
    for serve in [&a, &b] {
        serve.wait_get("/stats", T, "a share of the points", |s| {
            s["points"].as_i64() > Some(10)
        });
    }
    // One is killed while points keep coming; its session keeps what the
    // broker gave it and it had not acknowledged.
    a.running.kill9();
    let before = b.get("/stats")["points"].as_i64().expect("points");
    b.wait_get("/stats", T, "the other instance goes on", |s| {
        s["points"].as_i64() > Some(before + 20)
    });
    let a = start("serve-a");

    let (_gw, mut run, sent) = slowed_down(&broker, run, &consumer, &b);
    let stored = a.get(&format!("{CLIMATE}?limit=100000"))["points"]
        .as_array()
        .cloned()
        .expect("points");
    assert_eq!(stored.len(), sent.len(), "every point once");
    assert_eq!(stored, sent);
    assert!(run.stop().success());
}

// ---- the API: desired values, actions, bad input, tokens ----

/// Check `answer` (of `status`) to `method path` against the OpenAPI
/// document's schema for it.
pub(crate) fn conforms(path_template: &str, method: &str, status: u16, answer: &Value) {
    let document: Value = serde_json::from_str(include_str!("../../host/src/server/openapi.json"))
        .expect("the OpenAPI document is JSON");
    let response = &document["paths"][path_template][method]["responses"][status.to_string()];
    assert!(
        !response.is_null(),
        "the OpenAPI document has no {status} for {method} {path_template}"
    );
    let response = match response["$ref"].as_str() {
        Some(r) => {
            let name = r.rsplit('/').next().expect("a reference");
            document["components"]["responses"][name].clone()
        }
        None => response.clone(),
    };
    let mut schema = response["content"]["application/json"]["schema"].clone();
    schema["components"] = document["components"].clone();
    let validator = jsonschema::validator_for(&schema)
        .unwrap_or_else(|e| panic!("the schema of {method} {path_template} {status}: {e}"));
    let errors: Vec<String> = validator
        .iter_errors(answer)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "{method} {path_template} answered {status} off its schema: {errors:?}\n{answer}"
    );
}

fn api_scenario(database: &str) {
    let broker = Mosquitto::start("");
    let dir = tempfile::tempdir().expect("tempdir");
    let tokens = tokens_file(dir.path());
    let serve = Serve::start(
        &broker.url(),
        database,
        &["--tokens", tokens.to_str().expect("utf-8")],
    )
    .with_token(READER);
    let gw =
        thermostat(&broker, 50, "").gateway(r#"labels = { site = "plant-1", ring = "canary" }"#);
    let mut run = gw.start();
    run.wait_running("thermostat", T);

    // The gateway, its app and device, as stored.
    let gateways = serve.wait_get("/gateways", T, "the gateway's status", |g| {
        g["gateways"][0]["apps"][0]["state"] == "running"
    });
    conforms("/api/v1/gateways", "get", 200, &gateways);
    assert_eq!(gateways["gateways"][0]["gateway"], "test-gw");
    assert_eq!(gateways["gateways"][0]["online"], true);
    // Its labels, and the selectors that match them or not.
    assert_eq!(
        gateways["gateways"][0]["labels"],
        json!({"site": "plant-1", "ring": "canary"})
    );
    for (selector, matched) in [
        ("site%3Dplant-1", 1),
        ("site%3Dplant-1%2Cring!%3Dcanary", 0),
        ("site%3Dplant-2", 0),
    ] {
        let found = serve.get(&format!("/gateways?selector={selector}"));
        assert_eq!(
            found["gateways"].as_array().map(Vec::len),
            Some(matched),
            "{selector}: {found}"
        );
    }
    let (got, answer) = serve.request("GET", "/gateways?selector=site%3D%3D", None, None);
    assert_eq!(got, 400, "{answer}");
    conforms("/api/v1/gateways", "get", 400, &answer);
    let devices = serve.wait_get("/gateways/test-gw/devices", T, "the device's model", |d| {
        d["devices"][0]["model_known"] == true
    });
    conforms("/api/v1/gateways/{gateway}/devices", "get", 200, &devices);
    // The model, as announced: what the console builds its forms from.
    let model = serve.get("/gateways/test-gw/devices/thermostat/model");
    conforms(
        "/api/v1/gateways/{gateway}/devices/{device}/model",
        "get",
        200,
        &model,
    );
    let file = std::fs::read_to_string(root().join("examples/thermostat/thermostat.model.json"))
        .expect("model file");
    assert_eq!(model, serde_json::from_str::<Value>(&file).expect("JSON"));
    let (got, answer) = serve.request("GET", "/gateways/test-gw/devices/nobody/model", None, None);
    assert_eq!(got, 404, "{answer}");
    let twin = serve.wait_get(
        "/gateways/test-gw/devices/thermostat/twin",
        T,
        "reported state",
        |t| t["reported"]["setpoint"].is_number(),
    );
    conforms(
        "/api/v1/gateways/{gateway}/devices/{device}/twin",
        "get",
        200,
        &twin,
    );
    let stats = serve.get("/stats");
    conforms("/api/v1/stats", "get", 200, &stats);

    // Tokens: none, an unknown one, a reader's for a change.
    let desired = "/gateways/test-gw/devices/thermostat/twin/desired";
    let change = json!({"attributes": {"setpoint": 23.5}});
    for (token, status) in [("", 401), ("not-a-token-0123456789", 401), (READER, 403)] {
        let (got, answer) = serve.request("PUT", desired, Some(&change), Some(token));
        assert_eq!(got, status, "{token:?}: {answer}");
        conforms(
            "/api/v1/gateways/{gateway}/devices/{device}/twin/desired",
            "put",
            status,
            &answer,
        );
    }

    // Bad input: refused with a reason, nothing sent or stored.
    let bad: [(&str, Value, u16, &str); 5] = [
        (
            desired,
            json!({"attributes": {"setpoint": 99}}),
            422,
            "setpoint",
        ),
        (
            desired,
            json!({"attributes": {"temperature": 20}}),
            422,
            "read-only",
        ),
        (desired, json!({"attributes": {}}), 400, "no attribute"),
        (desired, json!({"setpoint": 22}), 400, "unknown field"),
        (
            "/gateways/test-gw/devices/nobody/twin/desired",
            change.clone(),
            404,
            "nobody",
        ),
    ];
    for (path, body, status, says) in bad {
        let (got, answer) = serve.request("PUT", path, Some(&body), Some(OPERATOR));
        assert_eq!(got, status, "{path} {body}: {answer}");
        assert!(
            answer["error"].as_str().is_some_and(|e| e.contains(says)),
            "{answer}"
        );
        conforms(
            "/api/v1/gateways/{gateway}/devices/{device}/twin/desired",
            "put",
            status,
            &answer,
        );
    }
    let twin = serve.get("/gateways/test-gw/devices/thermostat/twin");
    assert_eq!(twin["desired"], Value::Null, "nothing was sent: {twin}");
    let (got, answer) = serve.request("GET", &format!("{CLIMATE}?from=5&to=1"), None, None);
    assert_eq!(got, 400, "{answer}");
    let (got, answer) = serve.request("GET", &format!("{CLIMATE}?bucket_ms=10"), None, None);
    assert_eq!(got, 400, "{answer}");
    let (got, answer) = serve.request("GET", "/gateways/elsewhere", None, None);
    assert_eq!(got, 404, "{answer}");
    conforms("/api/v1/gateways/{gateway}", "get", 404, &answer);

    // A desired value the model takes reaches the app; its ack is stored.
    let (got, answer) = serve.request("PUT", desired, Some(&change), Some(OPERATOR));
    assert_eq!(got, 202, "{answer}");
    conforms(
        "/api/v1/gateways/{gateway}/devices/{device}/twin/desired",
        "put",
        202,
        &answer,
    );
    let version = answer["version"].as_i64().expect("version");
    run.wait_for("setpoint changed 21.0 -> 23.5 °C", T);
    let twin = serve.wait_get(
        "/gateways/test-gw/devices/thermostat/twin",
        T,
        "the ack",
        |t| t["ack"]["version"].as_i64() == Some(version),
    );
    assert_eq!(twin["ack"]["accepted"], json!(["setpoint"]), "{twin}");
    assert_eq!(twin["desired"], json!({"setpoint": 23.5}), "{twin}");
    assert_eq!(twin["desired_version"].as_i64(), Some(version));

    // An action: checked, called, answered with the app's result.
    let reset = "/gateways/test-gw/devices/thermostat/actions/reset";
    let (got, answer) = serve.request("POST", reset, Some(&json!({"argument": 3})), Some(OPERATOR));
    assert_eq!(got, 422, "reset takes no argument: {answer}");
    let (got, answer) = serve.request(
        "POST",
        "/gateways/test-gw/devices/thermostat/actions/explode",
        None,
        Some(OPERATOR),
    );
    assert_eq!(got, 422, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .is_some_and(|e| e.contains("reset")),
        "{answer}"
    );
    let (got, answer) = serve.request("POST", reset, None, Some(OPERATOR));
    assert_eq!(got, 200, "{answer}");
    conforms(
        "/api/v1/gateways/{gateway}/devices/{device}/actions/{action}",
        "post",
        200,
        &answer,
    );
    let before = answer["result"].as_i64().expect("the count it replaced");
    run.wait_for(&format!("reset: tick counter was {before}"), T);

    // Reads of what is stored conform too.
    let points = serve.wait_get(&format!("{CLIMATE}?limit=5"), T, "5 points", |p| {
        p["points"].as_array().map(Vec::len) == Some(5)
    });
    conforms(
        "/api/v1/gateways/{gateway}/devices/{device}/series/{series}",
        "get",
        200,
        &points,
    );
    assert_eq!(
        points["points"].as_array().map(Vec::len),
        Some(5),
        "{points} {}",
        serve.get("/stats")
    );
    let gateway = serve.get("/gateways/test-gw");
    conforms("/api/v1/gateways/{gateway}", "get", 200, &gateway);
    assert_eq!(gateway["history"][0]["online"], true, "{gateway}");
    let deployments = serve.get("/deployments");
    conforms("/api/v1/deployments", "get", 200, &deployments);
    let alerts = serve.get("/alerts?gateway=test-gw");
    conforms("/api/v1/alerts", "get", 200, &alerts);

    // The gateway goes offline: its history says so.
    assert!(run.stop().success());
    let gateway = serve.wait_get("/gateways/test-gw", T, "offline", |g| g["online"] == false);
    assert_eq!(gateway["reason"], "shutdown");
    let history = gateway["history"].as_array().expect("history");
    assert_eq!(history.last().map(|e| &e["online"]), Some(&json!(false)));

    // Stopped by a signal, serve drains and exits cleanly; started again on
    // the same database, it holds what it held.
    let stored = serve.stored_points();
    let mut serve = serve;
    assert!(serve.running.stop().success(), "serve exits 0 on SIGTERM");
    // This time with the fleet CA: it provisions gateways by claim too.
    let pki = crate::common::mqtt::Pki::create(dir.path());
    let serve = Serve::start(
        &broker.url(),
        database,
        &[
            "--tokens",
            tokens.to_str().expect("utf-8"),
            "--fleet-ca",
            pki.path("ca.pem").to_str().expect("utf-8"),
            "--fleet-ca-key",
            pki.path("ca.key").to_str().expect("utf-8"),
        ],
    )
    .with_token(READER);
    assert_eq!(serve.stored_points(), stored);
    crate::provisioning::through_the_api(&serve, &broker);
}

#[test]
fn on_sqlite_the_api_sets_desired_values_and_calls_actions_checked_by_the_model_and_refuses_bad_requests()
 {
    let dir = tempfile::tempdir().expect("tempdir");
    api_scenario(&format!("sqlite://{}/serve.db", dir.path().display()));
}

#[test]
fn on_postgres_the_api_sets_desired_values_and_calls_actions_checked_by_the_model_and_refuses_bad_requests()
 {
    let pg = Postgres::start();
    api_scenario(&pg.database("fleet"));
}

#[test]
fn serve_refuses_to_listen_beyond_loopback_without_tokens_and_names_a_bad_database() {
    let (ok, _, err) = crate::common::wasmgate(&[
        "cloud",
        "serve",
        "--listen",
        "0.0.0.0:0",
        "--database",
        "sqlite://x.db",
    ]);
    assert!(!ok);
    assert!(err.contains("--tokens"), "{err}");
    let (ok, _, err) = crate::common::wasmgate(&[
        "cloud",
        "serve",
        "--database",
        "mysql://secret:hunter2@db/x",
    ]);
    assert!(!ok);
    assert!(err.contains("sqlite://FILE or postgres://"), "{err}");
    assert!(!err.contains("hunter2"), "the password is not shown: {err}");
}

//! Synced tables on the gateway (`docs/synced-tables.md`): a guest compiled
//! from source writes and reads its table through `wasmgate:device/tables`,
//! driven by actions over a real Mosquitto; every write leaves as a
//! changeset on `{device}/synced/{table}`; the model and the per-app limits
//! refuse what does not fit and keep what was committed; a `kill -9` loses
//! no committed change; and `serve`, on SQLite and on PostgreSQL, applies
//! every changeset once through `kill -9`s of its own.

use crate::common::browser::Browser;
use crate::common::mqtt::{Consumer, Message, Mosquitto};
use crate::common::serve::{Postgres, Serve};
use crate::common::{Gateway, guest, model};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(30);
const BASE: &str = "wg/v1/test-gw/probe";
const CHANGESETS: &str = "wg/v1/test-gw/probe/synced/recipes";

fn probe(broker_url: &str, extra: &str) -> Gateway {
    Gateway::new()
        .section(&format!(
            "[cloud]\nurl = \"{broker_url}\"\nbackoff_initial_ms = 100\nbackoff_max_ms = 300\n"
        ))
        .app(
            "probe",
            &guest("table-probe"),
            &model("tables"),
            // Debug builds merge slowly: a call of 500 writes gets time.
            &format!("device = \"probe\"\ncall_timeout_ms = 20000\n{extra}"),
        )
}

/// Call an action of the probe and return its line of text.
fn call(consumer: &Consumer, action: &str, argument: Option<Value>) -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let id = format!(
        "c{}",
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let answer = consumer.call(BASE, action, &id, argument);
    answer["result"]
        .as_str()
        .unwrap_or_else(|| panic!("{action}: no text result: {answer}"))
        .to_string()
}

fn changesets(consumer: &Consumer) -> Vec<Value> {
    consumer
        .on(CHANGESETS)
        .iter()
        .map(|m: &Message| serde_json::from_slice(&m.payload).expect("a changeset is JSON"))
        .collect()
}

/// Wait until the changesets seen hold `want` distinct ids.
fn wait_changesets(consumer: &Consumer, want: usize) -> Vec<Value> {
    let deadline = Instant::now() + T;
    loop {
        let seen = changesets(consumer);
        let ids: BTreeSet<String> = seen.iter().map(|c| c["id"].to_string()).collect();
        if ids.len() >= want {
            return seen;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {want} changesets after {T:?}",
            ids.len()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_guest_writes_and_reads_its_table_and_every_write_leaves_as_one_changeset() {
    let broker = Mosquitto::start("");
    let consumer = Consumer::connect(&broker.settings("consumer"), &["wg/v1/test-gw/#"]);
    let gw = probe(&broker.url(), "");
    let mut run = gw.start();
    run.wait_running("probe", T);
    run.wait_connected(T);

    let put = |spec: &str| call(&consumer, "put", Some(json!(spec)));
    assert_eq!(put("r1|pump|21.5"), "ok");
    assert_eq!(
        call(&consumer, "get", Some(json!("r1"))),
        "r1 name=pump setpoint=21.5"
    );
    assert_eq!(call(&consumer, "update", Some(json!("r1|uses|3"))), "ok");
    assert_eq!(
        call(&consumer, "get", Some(json!("r1"))),
        "r1 name=pump setpoint=21.5 uses=3"
    );
    // A put replaces the whole row: what it leaves out is null.
    assert_eq!(put("r2|fan|"), "ok");
    assert_eq!(call(&consumer, "get", Some(json!("r2"))), "r2 name=fan");
    assert_eq!(put("r10|valve|50"), "ok");
    assert_eq!(put("s1|other|1"), "ok");
    assert_eq!(call(&consumer, "delete", Some(json!("s1"))), "ok");
    assert_eq!(call(&consumer, "get", Some(json!("s1"))), "none");
    // Pages of two, in byte order of the keys.
    assert_eq!(call(&consumer, "scan", Some(json!("r"))), "r1,r10,r2");
    assert_eq!(call(&consumer, "scan", Some(json!(""))), "r1,r10,r2");

    // What does not fit the model, or names a missing row, is refused
    // whole, with nothing written.
    for (action, argument, expected) in [
        (
            "put",
            "r3|x|101",
            "error invalid: column of table `recipes` `setpoint`: 101 is out of range [0, 100]",
        ),
        (
            "update",
            "r1|colour|red",
            "error invalid: unknown column of table `recipes`: `colour` (the model declares: name, setpoint, uses)",
        ),
        (
            "delete",
            "nope",
            "error invalid: no row with key \"nope\": it was never put, or it was deleted",
        ),
        (
            "transact",
            "p:r4|new|1;u:gone|uses|1",
            "error invalid: no row with key \"gone\": it was never put, or it was deleted",
        ),
        (
            "put",
            "|empty|1",
            "error invalid: a row's key may not be empty",
        ),
    ] {
        assert_eq!(
            call(&consumer, action, Some(json!(argument))),
            expected,
            "{action}({argument})"
        );
    }
    assert_eq!(
        call(&consumer, "get", Some(json!("r4"))),
        "none",
        "all or none"
    );
    assert_eq!(
        call(
            &consumer,
            "transact",
            Some(json!("p:r4|new|1;u:r4|uses|7;d:r2"))
        ),
        "ok"
    );
    assert_eq!(
        call(&consumer, "get", Some(json!("r4"))),
        "r4 name=new setpoint=1 uses=7"
    );

    // Seven writes returned ok: seven changesets, each once, in order, with
    // the gateway's changes stamped by its clock.
    let seen = wait_changesets(&consumer, 7);
    assert_eq!(seen.len(), 7, "{seen:?}");
    let ids: Vec<&str> = seen.iter().map(|c| c["id"].as_str().expect("id")).collect();
    assert!(ids.iter().all(|id| id.starts_with("test-gw-")), "{ids:?}");
    assert_eq!(ids.iter().collect::<BTreeSet<_>>().len(), 7, "{ids:?}");
    let first = &seen[0];
    assert_eq!(first["table"], "recipes");
    assert_eq!(
        first["rules"],
        json!({"key_rule": "last-writer-wins", "columns": {"setpoint": "server-wins"}})
    );
    let change = &first["changes"][0];
    assert_eq!(change["key"], "r1");
    assert_eq!(change["side"], "device");
    assert_eq!(
        change["kind"],
        json!({"put": {"name": "pump", "setpoint": 21.5, "uses": null}})
    );
    let last = &seen[6];
    let keys: Vec<&str> = last["changes"]
        .as_array()
        .expect("changes")
        .iter()
        .map(|c| c["key"].as_str().expect("key"))
        .collect();
    assert_eq!(keys, ["r4", "r4", "r2"]);
    // Stamps only grow.
    let stamps: Vec<(u64, u64)> = seen
        .iter()
        .flat_map(|c| c["changes"].as_array().expect("changes").clone())
        .map(|c| {
            (
                c["stamp"]["wall_ms"].as_u64().expect("wall"),
                c["stamp"]["counter"].as_u64().expect("counter"),
            )
        })
        .collect();
    assert!(stamps.windows(2).all(|w| w[0] < w[1]), "{stamps:?}");

    // Everything reached the broker.
    let deadline = Instant::now() + T;
    loop {
        let status = call(&consumer, "status", None);
        if status == "pending=0 pushed=yes rows=3" {
            break;
        }
        assert!(Instant::now() < deadline, "{status}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let app = &gw.apps()[0];
    assert_eq!(app["capabilities"]["tables"]["rows"], 3, "{app}");
    run.stop();
}

#[test]
fn a_write_past_a_limit_is_refused_and_what_was_committed_stays() {
    let broker = Mosquitto::start("");
    let consumer = Consumer::connect(&broker.settings("consumer"), &["wg/v1/test-gw/#"]);
    let gw = probe(
        &broker.url(),
        "synced_max_rows = 1200\nsynced_max_changes = 500\nsynced_max_kib = 1024",
    );
    let mut run = gw.start();
    run.wait_running("probe", T);
    run.wait_connected(T);

    assert_eq!(call(&consumer, "fill", Some(json!(1000))), "filled 1000");
    // Replacing the first 1,000 adds no row; the next 500 would make 1,500.
    let refused = call(&consumer, "fill", Some(json!(2000)));
    assert_eq!(
        refused,
        "filled 1000, then error limit: the app's synced tables would hold 1500 rows, more than its synced_max_rows of 1200"
    );
    assert!(call(&consumer, "status", None).ends_with("rows=1000"));
    assert_eq!(
        call(&consumer, "get", Some(json!("fill-000999"))),
        "fill-000999 uses=999"
    );
    assert_eq!(call(&consumer, "get", Some(json!("fill-001000"))), "none");
    // Deleting under the limit is always taken.
    assert_eq!(call(&consumer, "delete", Some(json!("fill-000000"))), "ok");

    // One call may change at most synced_max_changes rows.
    let many = vec!["d:fill-000001"; 501].join(";");
    assert_eq!(
        call(&consumer, "transact", Some(json!(many))),
        "error limit: 501 changes in one call is more than the app's synced_max_changes of 500"
    );
    assert_eq!(
        call(&consumer, "get", Some(json!("fill-000001"))),
        "fill-000001 uses=1"
    );

    // Bytes: 600 KiB hold some 1,000 of these rows (each value is kept
    // with its version), not 2,000.
    drop(run);
    let tight = probe(&broker.url(), "synced_max_kib = 600");
    let mut run = tight.start();
    run.wait_running("probe", T);
    run.wait_connected(T);
    let answer = call(&consumer, "fill", Some(json!(2000)));
    let (filled, error) = answer.split_once(", then ").expect(&answer);
    assert!(
        error.starts_with("error limit: the app's synced tables would take ")
            && error.ends_with("bytes, more than its synced_max_kib of 600 KiB"),
        "{answer}"
    );
    let filled: u64 = filled
        .strip_prefix("filled ")
        .and_then(|n| n.parse().ok())
        .expect(&answer);
    assert!(filled > 0 && filled < 2000, "{answer}");
    assert!(
        call(&consumer, "status", None).ends_with(&format!("rows={filled}")),
        "the transactions before the refused one stay"
    );
    run.stop();
}

#[test]
fn kill_9_mid_sync_loses_no_committed_change_and_repeats_only_whole_changesets() {
    // The guest writes 5,000 rows in ten transactions at its start, while
    // the broker is away: they wait in the outbox.
    let mut broker = Mosquitto::start("");
    let url = broker.url();
    broker.stop();
    let gw = probe(&url, "[app.config]\nfill = 5000");
    let mut run = gw.start();
    run.wait_running("probe", T);
    let waiting = |gw: &Gateway| gw.count("SELECT count(*) FROM outbox WHERE kind = 'changeset'");
    assert_eq!(waiting(&gw), 10);
    assert_eq!(
        gw.count("SELECT sum(points) FROM outbox WHERE kind = 'changeset'"),
        5000
    );
    run.kill9();

    // The broker comes back; the gateway is killed again as soon as the
    // first changeset is through, in the middle of sending the rest.
    broker.restart();
    let consumer = Consumer::connect(&broker.settings("consumer"), &[CHANGESETS]);
    let mut run = gw.start();
    wait_changesets(&consumer, 1);
    run.kill9();
    let mut run = gw.start();
    let seen = wait_changesets(&consumer, 10);
    run.wait_running("probe", T);

    // Every committed change arrived; a changeset sent twice is the same
    // changeset, under the same id, so the server applies it once.
    let mut by_id: BTreeMap<String, &Value> = BTreeMap::new();
    for changeset in &seen {
        let id = changeset["id"].as_str().expect("id").to_string();
        if let Some(before) = by_id.insert(id.clone(), changeset) {
            assert_eq!(before, changeset, "{id} repeated with other contents");
        }
    }
    assert_eq!(by_id.len(), 10);
    let keys: BTreeSet<&str> = by_id
        .values()
        .flat_map(|c| c["changes"].as_array().expect("changes"))
        .map(|c| c["key"].as_str().expect("key"))
        .collect();
    assert_eq!(keys.len(), 5000);
    // And the rows were not written twice: the restarted guest found them.
    assert_eq!(
        gw.count("SELECT count(*) FROM synced_rows WHERE app = 'probe' AND visible = 1"),
        5000
    );
    let deadline = Instant::now() + T;
    while waiting(&gw) != 0 {
        assert!(Instant::now() < deadline, "changesets still waiting");
        std::thread::sleep(Duration::from_millis(20));
    }
    run.stop();
}

/// Wait until `serve` holds the probe's table as `want` (key → columns).
fn wait_table(serve: &Serve, want: &BTreeMap<String, Value>) {
    wait_table_of(serve, "recipes", want)
}

/// Wait until `serve` holds the probe's `table` as `want`.
fn wait_table_of(serve: &Serve, table: &str, want: &BTreeMap<String, Value>) {
    let path = format!("/gateways/test-gw/devices/probe/tables/{table}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut held = BTreeMap::new();
        let mut after = String::new();
        loop {
            let page = serve.get(&format!("{path}?limit=1000&after={after}"));
            let rows = page["rows"].as_array().cloned().expect("rows");
            for row in &rows {
                held.insert(
                    row["key"].as_str().expect("key").to_string(),
                    row["columns"].clone(),
                );
            }
            match rows.last() {
                Some(last) if rows.len() == 1000 => {
                    after = last["key"].as_str().expect("key").to_string();
                }
                _ => break,
            }
        }
        if &held == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "serve ({}) holds {} rows, not the {} wanted; first difference: {:?}",
            serve.base,
            held.len(),
            want.len(),
            want.iter().find(|(k, v)| held.get(*k) != Some(*v))
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn serve_applies_every_changeset_once_on_sqlite_and_postgres_through_kill_9s() {
    let broker = Mosquitto::start("");
    let consumer = Consumer::connect(&broker.settings("consumer"), &["wg/v1/test-gw/#"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let sqlite = format!("sqlite://{}", dir.path().join("serve.db").display());
    let pg = Postgres::start();
    let postgres = pg.database("fleet");
    let on_sqlite = Serve::start(&broker.url(), &sqlite, &["--client-id", "serve-s"]);
    let mut on_postgres = Serve::start(&broker.url(), &postgres, &["--client-id", "serve-p"]);

    // 3,000 rows in six changesets at the guest's start; PostgreSQL's serve
    // is killed as soon as the first is through, and comes back to the
    // rest, which the broker kept for its session.
    let gw = probe(&broker.url(), "[app.config]\nfill = 3000");
    let mut run = gw.start();
    wait_changesets(&consumer, 1);
    on_postgres.running.kill9();
    let on_postgres = Serve::start(&broker.url(), &postgres, &["--client-id", "serve-p"]);
    run.wait_running("probe", T);
    run.wait_connected(T);

    // Edits of rows that exist, a delete, and a transaction.
    for (action, argument) in [
        ("update", "fill-000001|name|first"),
        ("update", "fill-000002|setpoint|42.5"),
        ("delete", "fill-000003"),
        ("transact", "p:extra|added|7;u:extra|uses|9;d:fill-000004"),
    ] {
        assert_eq!(
            call(&consumer, action, Some(json!(argument))),
            "ok",
            "{action}"
        );
    }
    let mut want: BTreeMap<String, Value> = (0..3000)
        .filter(|i| ![3, 4].contains(i))
        .map(|i| {
            (
                format!("fill-{i:06}"),
                json!({"name": null, "setpoint": null, "uses": i}),
            )
        })
        .collect();
    want.insert(
        "fill-000001".into(),
        json!({"name": "first", "setpoint": null, "uses": 1}),
    );
    want.insert(
        "fill-000002".into(),
        json!({"name": null, "setpoint": 42.5, "uses": 2}),
    );
    want.insert(
        "extra".into(),
        json!({"name": "added", "setpoint": 7.0, "uses": 9}),
    );
    wait_table(&on_sqlite, &want);
    wait_table(&on_postgres, &want);

    // Ten changesets went out; each is applied once on each database, and
    // a repeat is counted as a duplicate, not applied again.
    let ids: BTreeSet<String> = changesets(&consumer)
        .iter()
        .map(|c| c["id"].as_str().expect("id").to_string())
        .collect();
    assert_eq!(ids.len(), 10, "{ids:?}");
    let applied: usize = pg
        .query("fleet", "SELECT count(*) FROM synced_applied")
        .parse()
        .expect("a count");
    assert_eq!(applied, 10);
    let again = changesets(&consumer)
        .into_iter()
        .find(|c| c["changes"].as_array().map(Vec::len) == Some(500))
        .expect("a fill changeset");
    let before = on_sqlite.get("/stats")["duplicates"]
        .as_u64()
        .expect("duplicates");
    consumer.publish(CHANGESETS, again.to_string(), false);
    on_sqlite.wait_get("/stats", T, "the repeat seen", |s| {
        s["duplicates"].as_u64() > Some(before)
    });
    wait_table(&on_sqlite, &want);

    // Other systems read the rows with plain SQL.
    assert_eq!(
        pg.query(
            "fleet",
            "SELECT columns FROM synced_rows WHERE key = 'fill-000002'"
        ),
        r#"{"name":null,"setpoint":42.5,"uses":2}"#
    );
    assert_eq!(
        pg.query(
            "fleet",
            "SELECT count(*) FROM synced_rows WHERE columns IS NULL"
        ),
        "2",
        "the deleted rows stay as tombstones"
    );
    run.stop();
}

/// The server's edits to the probe's table, through the API.
fn server_edits(serve: &Serve, edits: Value) -> Value {
    let (status, answer) = serve.request(
        "POST",
        "/gateways/test-gw/devices/probe/tables/recipes/edits",
        Some(&json!({ "edits": edits })),
        None,
    );
    assert_eq!(status, 202, "{answer}");
    answer
}

/// Wait until the probe's `get` of `key` answers `want`.
fn wait_get(consumer: &Consumer, key: &str, want: &str) {
    let deadline = Instant::now() + T;
    loop {
        let got = call(consumer, "get", Some(json!(key)));
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "get({key}) = {got:?}, not {want:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Both sides edit, online and then offline, and end with the same rows,
/// each conflict settled by the table's rules: `setpoint` is server-wins,
/// the rest last-writer-wins.
fn changes_on_either_side_converge(database: &str, sql: impl Fn(&str) -> String) -> Serve {
    let mut broker = Mosquitto::start("");
    let consumer = Consumer::connect(&broker.settings("consumer"), &["wg/v1/test-gw/#"]);
    let serve = Serve::start(&broker.url(), database, &["--client-id", "serve-c"]);
    let gw = probe(&broker.url(), "tick_interval_ms = 50");
    let mut run = gw.start();
    run.wait_running("probe", T);
    run.wait_connected(T);

    // The gateway writes; the server holds its rows.
    assert_eq!(call(&consumer, "put", Some(json!("r1|pump|20"))), "ok");
    assert_eq!(call(&consumer, "put", Some(json!("r2|fan|"))), "ok");
    wait_table(
        &serve,
        &BTreeMap::from([
            (
                "r1".into(),
                json!({"name": "pump", "setpoint": 20.0, "uses": null}),
            ),
            (
                "r2".into(),
                json!({"name": "fan", "setpoint": null, "uses": null}),
            ),
        ]),
    );

    // The server writes; the guest sees its rows and is told which.
    let answer = server_edits(
        &serve,
        json!([
            {"update": {"key": "r1", "columns": {"setpoint": 30}}},
            {"put": {"key": "r3", "columns": {"name": "from the server", "uses": 5}}},
            {"delete": "r2"},
        ]),
    );
    assert_eq!(
        (answer["seq"].as_u64(), answer["sent"].as_bool()),
        (Some(1), Some(true))
    );
    wait_get(&consumer, "r3", "r3 name=from the server uses=5");
    wait_get(&consumer, "r1", "r1 name=pump setpoint=30");
    assert_eq!(call(&consumer, "get", Some(json!("r2"))), "none");
    assert_eq!(call(&consumer, "changes", None), "r1,r2,r3");
    assert_eq!(call(&consumer, "changes", None), "", "taken");
    assert_eq!(call(&consumer, "pulled", None), "seq=1 last=yes");
    // A pull the app asks for goes out for what comes after changeset 1.
    assert_eq!(call(&consumer, "sync", Some(json!("push,pull"))), "ok");
    consumer.wait_json(&format!("{BASE}/synced/recipes/pull"), T, |p| {
        p == &json!({"after": 1})
    });

    // What the model refuses, or a missing row, is refused whole.
    for (edits, status, expected) in [
        (
            json!([{"update": {"key": "r1", "columns": {"setpoint": 500}}}]),
            422,
            "column of table `recipes` `setpoint`: 500 is out of range [0, 100]",
        ),
        (
            json!([{"put": {"key": "r9", "columns": {"colour": "red"}}}]),
            422,
            "unknown column of table `recipes`: `colour`",
        ),
        (
            json!([{"put": {"key": "r8", "columns": {}}}, {"delete": "nope"}]),
            409,
            "no row with key \"nope\": it was never put, or it was deleted",
        ),
    ] {
        let (got, answer) = serve.request(
            "POST",
            "/gateways/test-gw/devices/probe/tables/recipes/edits",
            Some(&json!({ "edits": edits })),
            None,
        );
        assert_eq!(
            (got, answer["error"].as_str()),
            (status, Some(expected)),
            "{edits}"
        );
    }

    // Offline on both sides: the broker goes away, and the gateway writes
    // (on its own tick, as no action can reach it); the server writes after
    // it.
    assert_eq!(
        call(
            &consumer,
            "later",
            Some(json!(
                "1500;u:r1|setpoint|40;u:r1|name|from the gateway;u:r3|uses|6;p:r4|offline|1"
            ))
        ),
        "scheduled"
    );
    broker.stop();
    run.wait_disconnected(T);
    let deadline = Instant::now() + T;
    while gw.count("SELECT count(*) FROM outbox WHERE kind = 'changeset'") == 0 {
        assert!(
            Instant::now() < deadline,
            "the offline writes were not made"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(5)); // the server's edit is later
    server_edits(
        &serve,
        json!([
            {"update": {"key": "r1", "columns": {"name": "from the server"}}},
            {"put": {"key": "r5", "columns": {"name": "server offline"}}},
        ]),
    );
    broker.restart();
    run.wait_connected(T);

    // Converged: r1's name is the later write's (the server's), its
    // setpoint stays the server's (server-wins), and each side's other
    // writes are on both.
    let want = BTreeMap::from([
        (
            "r1".to_string(),
            json!({"name": "from the server", "setpoint": 30.0, "uses": null}),
        ),
        (
            "r3".to_string(),
            json!({"name": "from the server", "setpoint": null, "uses": 6}),
        ),
        (
            "r4".to_string(),
            json!({"name": "offline", "setpoint": 1.0, "uses": null}),
        ),
        (
            "r5".to_string(),
            json!({"name": "server offline", "setpoint": null, "uses": null}),
        ),
    ]);
    wait_table(&serve, &want);
    wait_get(&consumer, "r5", "r5 name=server offline");
    assert_eq!(
        call(&consumer, "dump", Some(json!(""))),
        "r1 name=from the server setpoint=30;r3 name=from the server uses=6;r4 name=offline setpoint=1;r5 name=server offline"
    );
    // The server recorded what lost, with both versions.
    let records =
        serve.get("/gateways/test-gw/devices/probe/tables/recipes/overwritten")["overwritten"]
            .as_array()
            .cloned()
            .expect("records");
    let lost: Vec<(String, String, Value)> = records
        .iter()
        .map(|r| {
            (
                r["key"].as_str().expect("key").to_string(),
                r["column"].as_str().expect("column").to_string(),
                r["lost"]["value"].clone(),
            )
        })
        .collect();
    assert!(
        lost.contains(&("r1".into(), "setpoint".into(), json!(40.0))),
        "{records:?}"
    );
    assert!(
        lost.contains(&("r1".into(), "name".into(), json!("from the gateway"))),
        "{records:?}"
    );

    // Plain SQL on the server's table: a row edited, a row inserted, and an
    // edit the model refuses, which is undone and says why.
    let row = "gateway = 'test-gw' AND device = 'probe' AND tbl = 'recipes'";
    sql(&format!(
        "UPDATE synced_rows SET columns = '{{\"name\":\"by sql\",\"setpoint\":30.0,\"uses\":null}}', edited = 1
         WHERE {row} AND key = 'r1'"
    ));
    sql(
        "INSERT INTO synced_rows (gateway, device, tbl, key, columns, state, updated_at, edited)
         VALUES ('test-gw', 'probe', 'recipes', 'r7', '{\"name\":\"inserted\"}', '{}', 0, 1)",
    );
    sql(&format!(
        "UPDATE synced_rows SET columns = '{{\"setpoint\":500}}', edited = 1 WHERE {row} AND key = 'r5'"
    ));
    wait_get(&consumer, "r1", "r1 name=by sql setpoint=30");
    wait_get(&consumer, "r7", "r7 name=inserted");
    let deadline = Instant::now() + T;
    loop {
        let error = sql(&format!(
            "SELECT edit_error FROM synced_rows WHERE {row} AND key = 'r5'"
        ));
        if !error.is_empty() {
            assert_eq!(
                error,
                "column of table `recipes` `setpoint`: 500 is out of range [0, 100]"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the refused edit was not answered"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        sql(&format!(
            "SELECT columns FROM synced_rows WHERE {row} AND key = 'r5'"
        )),
        r#"{"name":"server offline","setpoint":null,"uses":null}"#,
        "undone"
    );
    assert_eq!(
        call(&consumer, "get", Some(json!("r5"))),
        "r5 name=server offline"
    );
    assert_eq!(
        sql(&format!(
            "SELECT count(*) FROM synced_rows WHERE {row} AND edited = 1"
        )),
        "0"
    );

    // A gateway killed and started again pulls what it missed meanwhile.
    run.kill9();
    server_edits(
        &serve,
        json!([{"update": {"key": "r4", "columns": {"uses": 44}}}]),
    );
    let mut run = gw.start();
    run.wait_running("probe", T);
    wait_get(&consumer, "r4", "r4 name=offline setpoint=1 uses=44");
    run.stop();
    serve
}

#[test]
fn changes_on_either_side_converge_on_sqlite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("serve.db");
    changes_on_either_side_converge(&format!("sqlite://{}", path.display()), |sql| {
        let conn = rusqlite::Connection::open(&path).expect("open serve's database");
        conn.busy_timeout(Duration::from_secs(10))
            .expect("busy timeout");
        let mut stmt = conn.prepare(sql).expect(sql);
        let mut rows = stmt.query([]).expect(sql);
        match rows.next().expect(sql) {
            Some(row) => match row.get_ref(0).expect("a column") {
                rusqlite::types::ValueRef::Null => String::new(),
                rusqlite::types::ValueRef::Integer(i) => i.to_string(),
                rusqlite::types::ValueRef::Text(t) => String::from_utf8_lossy(t).into_owned(),
                other => format!("{other:?}"),
            },
            None => String::new(),
        }
    });
}

#[test]
fn changes_on_either_side_converge_on_postgres() {
    let pg = Postgres::start();
    changes_on_either_side_converge(&pg.database("fleet"), |sql| pg.query("fleet", sql));
    // A plain-SQL reader sees the converged rows.
    assert_eq!(
        pg.query("fleet", "SELECT columns FROM synced_rows WHERE key = 'r1'"),
        r#"{"name":"by sql","setpoint":30.0,"uses":null}"#
    );
}

/// 1,000 changes on each side while the broker is away, to the same 500
/// rows of three tables, one per rule: the gateway writes first, the server
/// after it. Once the broker is back, both ends hold the same rows, each
/// conflict settled by its table's rule, and the server recorded every
/// version that lost.
fn offline_changes_converge_under_each_rule(database: &str) {
    let mut broker = Mosquitto::start("");
    let consumer = Consumer::connect(&broker.settings("consumer"), &["wg/v1/test-gw/#"]);
    let serve = Serve::start(&broker.url(), database, &["--client-id", "serve-r"]);
    let gw = probe(&broker.url(), "tick_interval_ms = 50");
    let mut run = gw.start();
    run.wait_running("probe", T);
    run.wait_connected(T);
    const TABLES: [&str; 3] = ["sw", "dw", "lww"];
    const ROWS: usize = 500;
    let ops = |f: &dyn Fn(usize) -> String| (0..ROWS).map(f).collect::<Vec<_>>().join(";");

    // The rows, from the gateway, on both ends.
    let seeded: BTreeMap<String, Value> = (0..ROWS)
        .map(|i| (format!("k{i:03}"), json!({"name": "seed", "uses": null})))
        .collect();
    for table in TABLES {
        let puts = ops(&|i| format!("p:k{i:03}|seed|"));
        assert_eq!(
            call(
                &consumer,
                "transact",
                Some(json!(format!("@{table};{puts}")))
            ),
            "ok"
        );
    }
    for table in TABLES {
        wait_table_of(&serve, table, &seeded);
    }

    // Offline: the gateway makes 1,000 changes to each table (two columns
    // of every row, one update each), then the server makes its 1,000.
    for table in TABLES {
        let updates = (0..ROWS)
            .flat_map(|i| {
                [
                    format!("u:k{i:03}|name|device {i}"),
                    format!("u:k{i:03}|uses|{i}"),
                ]
            })
            .collect::<Vec<_>>()
            .join(";");
        assert_eq!(
            call(
                &consumer,
                "later",
                Some(json!(format!("@{table};1500;{updates}")))
            ),
            "scheduled"
        );
    }
    broker.stop();
    run.wait_disconnected(T);
    let deadline = Instant::now() + T;
    while gw.count("SELECT count(*) FROM outbox WHERE kind = 'changeset'") < 3 {
        assert!(
            Instant::now() < deadline,
            "the offline writes were not made"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    for table in TABLES {
        let edits: Vec<Value> = (0..ROWS)
            .flat_map(|i| {
                let key = format!("k{i:03}");
                [
                    json!({"update": {"key": key, "columns": {"name": format!("server {i}")}}}),
                    json!({"update": {"key": key, "columns": {"uses": 1000 + i}}}),
                ]
            })
            .collect();
        let (status, answer) = serve.request(
            "POST",
            &format!("/gateways/test-gw/devices/probe/tables/{table}/edits"),
            Some(&json!({ "edits": edits })),
            None,
        );
        assert_eq!(status, 202, "{answer}");
    }
    broker.restart();
    run.wait_connected(T);

    // server-wins keeps the server's values; device-wins the gateway's;
    // last-writer-wins the later writer's, the server's.
    for table in TABLES {
        let want: BTreeMap<String, Value> = (0..ROWS)
            .map(|i| {
                let columns = match table {
                    "dw" => json!({"name": format!("device {i}"), "uses": i}),
                    _ => json!({"name": format!("server {i}"), "uses": 1000 + i}),
                };
                (format!("k{i:03}"), columns)
            })
            .collect();
        wait_table_of(&serve, table, &want);
        let shown: Vec<String> = want
            .iter()
            .map(|(key, c)| {
                format!(
                    "{key} name={} uses={}",
                    c["name"].as_str().expect("name"),
                    c["uses"]
                )
            })
            .collect();
        let deadline = Instant::now() + T;
        loop {
            let dump = call(&consumer, "dump", Some(json!(format!("@{table};"))));
            if dump == shown.join(";") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{table} on the gateway: {}",
                &dump[..dump.len().min(300)]
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        // Every version that lost to the other side's, once: the seed's
        // values, overwritten by the server's (not under device-wins, where
        // the server's lose to them at once), and the 1,000 that lost. The
        // gateway's changesets may still be on their way (under
        // server-wins they change no row): waited for.
        let lost = match table {
            "dw" => 2 * ROWS,
            _ => 4 * ROWS,
        };
        let deadline = Instant::now() + T;
        loop {
            let records = serve.get(&format!(
                "/gateways/test-gw/devices/probe/tables/{table}/overwritten?limit=10000"
            ))["overwritten"]
                .as_array()
                .map_or(0, Vec::len);
            if records == lost {
                break;
            }
            assert!(
                records < lost && Instant::now() < deadline,
                "{table}: {records} records, not {lost}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    run.stop();
}

#[test]
fn offline_changes_converge_under_each_rule_on_sqlite() {
    let dir = tempfile::tempdir().expect("tempdir");
    offline_changes_converge_under_each_rule(&format!(
        "sqlite://{}",
        dir.path().join("serve.db").display()
    ));
}

#[test]
fn offline_changes_converge_under_each_rule_on_postgres() {
    let pg = Postgres::start();
    offline_changes_converge_under_each_rule(&pg.database("fleet"));
}

/// The console's page of a synced table, in headless Chromium: the rows
/// the server holds, an edit the model refuses (not sent, with why), edits
/// that reach the guest (a change, a new row, a delete), and the gateway's
/// own writes showing up.
#[test]
fn the_console_browses_and_edits_a_synced_table() {
    let broker = Mosquitto::start("");
    let consumer = Consumer::connect(&broker.settings("consumer"), &["wg/v1/test-gw/#"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let database = format!("sqlite://{}", dir.path().join("serve.db").display());
    let serve = Serve::start(&broker.url(), &database, &[]);
    let gw = probe(&broker.url(), "");
    let mut run = gw.start();
    run.wait_running("probe", T);
    run.wait_connected(T);
    assert_eq!(call(&consumer, "put", Some(json!("r1|pump|20"))), "ok");
    wait_table(
        &serve,
        &BTreeMap::from([(
            "r1".into(),
            json!({"name": "pump", "setpoint": 20.0, "uses": null}),
        )]),
    );

    let mut page = Browser::start();
    page.goto(
        &serve
            .base
            .replace("/api/v1", "/console/#/gateways/test-gw/devices/probe"),
    );
    page.wait_text("#tables", "recipes", T);
    page.click("#tables a[href$=recipes]");
    let r1 = r#"#rows tr[data-key="r1"]"#;
    page.wait_text(&format!("{r1} td[data-column=name] .value"), "pump", T);

    page.fill(&format!("{r1} input[name=setpoint]"), "500");
    page.click(&format!("{r1} button.save"));
    page.wait_text("#table-status", "500 is out of range [0, 100]", T);
    page.fill(&format!("{r1} input[name=setpoint]"), "");
    page.fill(&format!("{r1} input[name=name]"), "from the console");
    page.click(&format!("{r1} button.save"));
    page.wait_text("#table-status", "sent to the gateway", T);
    wait_get(&consumer, "r1", "r1 name=from the console setpoint=20");

    page.fill("#add-row input[name=key]", "r2");
    page.fill("#add-row input[name=name]", "added");
    page.click("#add-row button");
    wait_get(&consumer, "r2", "r2 name=added");
    page.click(r#"#rows tr[data-key="r2"] button.delete"#);
    wait_get(&consumer, "r2", "none");

    assert_eq!(call(&consumer, "update", Some(json!("r1|uses|9"))), "ok");
    page.wait_text(&format!("{r1} td[data-column=uses] .value"), "9", T);
    run.stop();
}

//! S4: synced tables (issue 17) through Mosquitto and `serve` on SQLite.
//!
//! - **Push**: the gateway's app writes `rows` rows (transactions of 500)
//!   while the broker is away; the broker comes back; the time until
//!   `serve` holds every row is the convergence after the outage, and rows
//!   over it the push rate.
//! - **Pull**: the server edits the same rows through its API (requests of
//!   1,000) while the gateway is down; the gateway starts; the time until it
//!   has applied every changeset down is the pull's convergence.
//! - **Baseline**, in the same run: the same changesets' bytes published by
//!   a bare MQTT client to a bare subscriber through the same Mosquitto.

use super::common::mqtt::Mosquitto;
use super::common::serve::Serve;
use super::common::{Gateway, guest, root};
use std::time::{Duration, Instant};

pub struct SyncedPoint {
    pub push_rows_per_s: f64,
    pub push_converge_s: f64,
    pub pull_rows_per_s: f64,
    pub pull_converge_s: f64,
    /// The changesets' bytes through a bare client and subscriber.
    pub bare_rows_per_s: f64,
    pub changeset_bytes: u64,
}

const LIMIT: Duration = Duration::from_secs(600);

fn probe(broker: &str, rows: usize) -> Gateway {
    Gateway::new()
        .section(&format!(
            "[cloud]\nurl = \"{broker}\"\nbackoff_initial_ms = 100\nbackoff_max_ms = 200\n"
        ))
        .app(
            "probe",
            &guest("table-probe"),
            &root().join("tests/models/tables.json"),
            &format!(
                "device = \"probe\"\ncall_timeout_ms = 60000\nsynced_max_rows = {}\nsynced_max_kib = 1048576\n[app.config]\nfill = {rows}",
                rows * 2
            ),
        )
}

fn wait(what: &str, started: Instant, mut done: impl FnMut() -> bool) {
    while !done() {
        assert!(started.elapsed() < LIMIT, "{what} did not finish");
        std::thread::sleep(Duration::from_millis(5));
    }
}

pub fn synced(rows: usize) -> SyncedPoint {
    let mut broker = Mosquitto::start("max_inflight_messages 1000");
    let url = broker.url();
    let dir = tempfile::tempdir().expect("tempdir");
    let database = format!("sqlite://{}", dir.path().join("serve.db").display());
    // serve's session subscribes once, so that what comes while it is down
    // waits for it.
    let mut serve = Serve::start(&url, &database, &["--client-id", "serve-bench"]);
    broker.stop();

    // Push: written while the broker is away.
    let gw = probe(&url, rows);
    let mut run = gw.start();
    run.wait_running("probe", LIMIT);
    let committed = || {
        gw.db()
            .query_row(
                "SELECT coalesce(sum(points), 0), coalesce(sum(length(payload)), 0) FROM outbox WHERE kind = 'changeset'",
                [],
                |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)),
            )
            .unwrap_or((0, 0))
    };
    let (written, changeset_bytes) = committed();
    assert_eq!(
        written as usize, rows,
        "the probe's rows wait in the outbox"
    );
    broker.restart();
    let started = Instant::now();
    let changesets = rows.div_ceil(500);
    wait("the push", started, || committed().0 == 0);
    // Every row is in serve's database, not only received.
    let path = "/gateways/test-gw/devices/probe/tables/recipes";
    wait("serve's rows", started, || {
        let last = format!("fill-{:06}", rows - 1);
        serve.get(&format!("{path}?after=fill-{:06}&limit=1", rows - 2))["rows"][0]["key"]
            == last.as_str()
    });
    let push_converge_s = started.elapsed().as_secs_f64();

    // Pull: the server edits every row while the gateway is down.
    run.stop();
    let requests = rows.div_ceil(1000);
    for r in 0..requests {
        let edits: Vec<serde_json::Value> = (r * 1000..((r + 1) * 1000).min(rows))
            .map(|i| serde_json::json!({"update": {"key": format!("fill-{i:06}"), "columns": {"name": "server"}}}))
            .collect();
        let (status, answer) = serve.request(
            "POST",
            &format!("{path}/edits"),
            Some(&serde_json::json!({ "edits": edits })),
            None,
        );
        assert_eq!(status, 202, "{answer}");
    }
    let pulled = || {
        gw.db()
            .query_row(
                "SELECT coalesce(max(seq), 0) FROM synced_pulled WHERE app = 'probe' AND tbl = 'recipes'",
                [],
                |r| r.get::<_, i64>(0),
            )
            .unwrap_or(0) as usize
    };
    let mut run = gw.start();
    let started = Instant::now();
    wait("the pull", started, || pulled() >= requests);
    let pull_converge_s = started.elapsed().as_secs_f64();
    run.stop();
    assert!(serve.running.stop().success());

    // Baseline: the same bytes in the same number of messages, bare.
    let bare_s = bare_transfer(&broker, changesets, changeset_bytes as usize / changesets);
    let point = SyncedPoint {
        push_rows_per_s: rows as f64 / push_converge_s,
        push_converge_s,
        pull_rows_per_s: rows as f64 / pull_converge_s,
        pull_converge_s,
        bare_rows_per_s: rows as f64 / bare_s,
        changeset_bytes: changeset_bytes as u64,
    };
    eprintln!(
        "synced {rows}: push {:.0} rows/s ({push_converge_s:.2} s), pull {:.0} rows/s ({pull_converge_s:.2} s), bare {:.0} rows/s",
        point.push_rows_per_s, point.pull_rows_per_s, point.bare_rows_per_s
    );
    point
}

/// Seconds for `messages` QoS 1 messages of `size` bytes from a bare
/// client to a bare subscriber.
fn bare_transfer(broker: &Mosquitto, messages: usize, size: usize) -> f64 {
    let counter = super::PointCounter::start(broker, "baseline/#");
    let payload = vec![b'x'; size];
    let started = Instant::now();
    super::publish_flat_out(broker, messages as u64, &payload);
    wait("the bare transfer", started, || {
        counter.messages() >= messages as u64
    });
    started.elapsed().as_secs_f64()
}

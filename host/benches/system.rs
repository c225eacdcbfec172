//! Whole-system benchmarks: the real `wasmgate` binary, real guests, a real
//! Mosquitto, each figure next to a baseline measured in the same run.
//!
//! `cargo bench -p wasmgate --bench system` (add `-- quick` for one run of
//! each instead of the median of three: every figure is a median). The table it prints goes into
//! BENCHMARKS.md. These measure; they never fail on a number. Every figure
//! that starts a gateway runs the binary the package ships, which the bench
//! first builds with `cargo build --release --package wasmgate`
//! ([`ship_binary`]), not the one `cargo bench` built with the tests'
//! features.

#[path = "../../tests/common/mod.rs"]
mod common;
#[path = "system/scale.rs"]
mod scale;
#[path = "system/synced.rs"]
mod synced;

use common::mqtt::Mosquitto;
use common::{Gateway, guest, root};
use rusqlite::params;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn main() {
    let quick = std::env::args().any(|a| a == "quick");
    let runs = if quick { 1 } else { 3 };
    // `-- P5 P7` measures only those figures, `-- S2` only that curve.
    let only: Vec<String> = std::env::args()
        .filter(|a| a.starts_with('P') || a.starts_with('S'))
        .collect();
    let wanted = |id: &str| {
        let wanted = only.is_empty() || only.iter().any(|o| o == id);
        if wanted {
            assert_nothing_left_running(id);
        }
        wanted
    };
    ship_binary();
    let mut rows: Vec<[String; 4]> = Vec::new();

    if wanted("P1") {
        let [tick, desired, bare_tick, bare_desired] = medians(runs, || {
            let (a, b, c, d) = dispatch(20_000);
            [a, b, c, d].map(micros)
        });
        rows.push([
            "P1".into(),
            "event dispatch host → guest: `on-tick` / `on-desired` (one change) of a guest that does nothing, per event".into(),
            format!("{tick:.2} µs / {desired:.2} µs"),
            format!("bare wasmtime typed call of the same exports: {bare_tick:.2} µs / {bare_desired:.2} µs"),
        ]);
    }

    if wanted("P2") {
        let total = 2_000_000u64;
        let ingest = median(runs, || ingest(total));
        let sqlite = median(runs, || sqlite_baseline(total));
        rows.push([
            "P2".into(),
            format!("durable ingest from a guest (`record-batch` of 1000), {total} points"),
            format!("{} points/s", thousands(ingest)),
            format!(
                "plain batched SQLite insert of the same rows: {} points/s",
                thousands(sqlite)
            ),
        ]);
        let paho = paho_baseline(20_000);
        rows.push([
            "P2b".into(),
            "the device-SDK way: every point its own QoS 1 publish".into(),
            format!("{} points/s (P2 above)", thousands(ingest)),
            match paho {
                Ok(rate) => format!("Python paho-mqtt, one QoS 1 publish per point to the same Mosquitto: {} points/s ({:.0}× less)", thousands(rate), ingest / rate),
                Err(e) => format!("not measured: {e}"),
            },
        ]);
    }

    if wanted("P3") {
        let backlog = 1_000_000u64;
        let [drain, baseline, streaming, streaming_baseline] = drain(backlog, runs);
        rows.push([
            "P3".into(),
            format!("backlog drain to a local Mosquitto, {backlog} points, from the gateway's start"),
            format!("{} points/s", thousands(drain)),
            format!(
                "Mosquitto alone, QoS 1 publishes of the same size, from the client's start: {} points/s",
                thousands(baseline)
            ),
        ]);
        rows.push([
            "P3 (streaming)".into(),
            "the same drain from its first message to its last: without the gateway's start and connect".into(),
            format!("{} points/s", thousands(streaming)),
            format!(
                "the same bare client from its first message to its last: {} points/s",
                thousands(streaming_baseline)
            ),
        ]);
    }

    if wanted("P4") {
        let [
            cold,
            warm,
            started,
            instantiated,
            in_a_row,
            bare_instantiate,
            bare_cold,
        ] = medians(runs, || {
            let start = cold_start(10);
            [
                start.cold_ms,
                start.warm_ms,
                start.started_ms,
                start.instantiated_ms,
                micros(start.in_a_row),
                micros(start.bare_instantiate),
                micros(start.bare_cold),
            ]
        });
        let bare_ms = bare_instantiate / 1000.0;
        let in_a_row_ms = in_a_row / 1000.0;
        let bare_cold_ms = bare_cold / 1000.0;
        rows.push([
            "P4".into(),
            "cold start: 10 apps, process start to every app's first tick; per app: instantiation (and instantiation + the guest's init)".into(),
            format!(
                "no cache {cold:.0} ms, with the compile cache {warm:.0} ms; instantiation {instantiated:.3} ms per app ({started:.2} ms with init)"
            ),
            format!(
                "wasmtime `InstancePre` instantiation of the same component, 200 in a row: {bare_ms:.3} ms; instantiation {:.1}× (with init {:.0}×). Like for like: the gateway's instantiation 200 in a row {in_a_row_ms:.3} ms ({:.1}× the bare one); the bare one with cold caches (after 16 MiB of other memory traffic) {bare_cold_ms:.3} ms, against which an app's at the start is {:.1}×",
                instantiated / bare_ms,
                started / bare_ms,
                in_a_row_ms / bare_ms,
                instantiated / bare_cold_ms
            ),
        ]);
    }

    if wanted("P6") {
        let mut last = None;
        let [
            rss1,
            rss10,
            anon1,
            anon10,
            device1,
            device10,
            again,
            again_anon,
        ] = medians(runs, || {
            let footprint = footprint();
            let device = footprint
                .device
                .map_or([f64::NAN; 2], |(one, ten)| [one.rss, ten.rss]);
            let figures = [
                footprint.one.rss,
                footprint.ten.rss,
                footprint.one.anon,
                footprint.ten.anon,
                device[0],
                device[1],
                footprint.restarted.rss,
                footprint.restarted.anon,
            ];
            last = Some(footprint);
            figures
        });
        let footprint = last.expect("a run");
        rows.push([
            "P6".into(),
            "resident memory idle, 1 / 10 apps, on the start that compiles them (of it anonymous, the rest mostly the binary's code); 10 apps restarted from the compile cache; the runtime-only build (profile `device`) with precompiled apps; binary size (stripped: default release / runtime-only device)".into(),
            format!(
                "{rss1:.1} / {rss10:.1} MiB (anonymous {anon1:.1} / {anon10:.1}); restarted {again:.1} MiB (anonymous {again_anon:.1}); runtime-only {device1:.1} / {device10:.1} MiB; {:.1} MiB / {}; link order: {}",
                footprint.size, footprint.runtime_only, link_order_matches()
            ),
            "—".into(),
        ]);
    }

    if wanted("P7") {
        // Again with the bench, the broker and the gateway on one CPU:
        // unpinned, whether a round trip's wake-ups cross between CPUs is
        // the kernel's draw for each gateway (BENCHMARKS.md, ddf5cab).
        let unpinned = medians(runs, || round_trips(1000));
        let pinned = on_one_cpu(|| medians(runs, || round_trips(1000)));
        for (id, what, figures) in [
            (
                "P7",
                "action round trip through a local Mosquitto (request → `on-action` → response), 1000 sequential",
                unpinned,
            ),
            (
                "P7 (one CPU)",
                "the same, with the bench, Mosquitto and the gateway pinned to one CPU",
                pinned,
            ),
        ] {
            let [p50, p99, echo50, echo99, desired50, desired99] = figures;
            rows.push([
                id.into(),
                what.into(),
                // Three decimals: at 0.04 against 0.03 ms, two would make the
                // ratio a matter of rounding.
                format!("p50 {p50:.3} ms, p99 {p99:.3} ms; a desired change to its ack (through the device's worker and the outbox): p50 {desired50:.3} ms, p99 {desired99:.3} ms"),
                format!("plain MQTT request/response echo through the same broker: p50 {echo50:.3} ms, p99 {echo99:.3} ms"),
            ]);
        }
    }

    if wanted("P8") {
        let [guest_rate, bare_rate, guest_us, bare_us] = medians(runs, || {
            let (g, b) = modbus_reads(2000);
            [2000.0 / g, 2000.0 / b, g * 1e6 / 2000.0, b * 1e6 / 2000.0]
        });
        rows.push([
            "P8".into(),
            "Modbus TCP reads from a guest (one holding register, 2000 sequential in one call) against pymodbus's server".into(),
            format!(
                "{} reads/s, {guest_us:.0} µs a read ({:.2}× the bare client; {:.0} µs added a read)",
                thousands(guest_rate),
                guest_rate / bare_rate,
                guest_us - bare_us
            ),
            format!(
                "tokio-modbus client from Rust, the same reads of the same server: {} reads/s, {bare_us:.0} µs a read",
                thousands(bare_rate)
            ),
        ]);
    }

    if wanted("P9") {
        let [p50, p99, echo50, echo99] = medians(runs, || {
            let (a, b, c, d) = bus_round_trips(1000);
            [a, b, c, d]
        });
        rows.push([
            "P9".into(),
            "local-bus round trip through a guest (a message → `on-message` → `bus.publish` back), 1000 sequential".into(),
            format!("p50 {p50:.2} ms, p99 {p99:.2} ms ({:.2}× the echo at p50)", p50 / echo50),
            format!("plain MQTT echo client through the same broker: p50 {echo50:.2} ms, p99 {echo99:.2} ms"),
        ]);
    }

    if wanted("P10") {
        let points = 200_000u64;
        let [sqlite, pg, pg_two, bare] = medians(runs, || serve_drains(points));
        rows.push([
            "P10".into(),
            format!("`wasmgate cloud serve` storing a backlog of {points} points (2000 batches of 100) waiting in Mosquitto for its session"),
            format!(
                "SQLite {} points/s; PostgreSQL {} points/s; two instances sharing it on PostgreSQL {} points/s ({:.2}× one)",
                thousands(sqlite),
                thousands(pg),
                thousands(pg_two),
                pg_two / pg
            ),
            format!(
                "a bare rumqttc client draining the same backlog with the same acks, storing nothing: {} points/s",
                thousands(bare)
            ),
        ]);
    }

    if wanted("P11") {
        let fleet = median_fleet(runs);
        rows.push([
            "P11".into(),
            format!("a fleet of {} gateway processes (the swap counter, one tick a second) against Mosquitto and serve on SQLite: a rollout of a new version in one wave with no soak, from `rollout create` to `completed`; the fleet's resident memory, idle", FLEET),
            format!(
                "rollout {:.1} s ({:.0} ms a gateway); memory {:.0} MiB in all, {:.1} MiB a gateway",
                fleet.rollout_s,
                fleet.rollout_s * 1000.0 / FLEET as f64,
                fleet.rss_mib,
                fleet.rss_mib / FLEET as f64
            ),
            format!(
                "the same rollout to one gateway: {:.1} s ({:.1}× for {}× the gateways); that gateway alone: {:.1} MiB ({:.2}× a fleet member's)",
                fleet.solo_rollout_s,
                fleet.rollout_s / fleet.solo_rollout_s,
                FLEET,
                fleet.solo_rss_mib,
                fleet.solo_rss_mib / (fleet.rss_mib / FLEET as f64)
            ),
        ]);
    }

    if wanted("P12") {
        let [serve_ms, broker_ms] = medians(runs, status_cpu);
        // A gateway sends its status every 60 s (`status_interval_s`), and
        // on every change: 1,000 gateways send at least 16.7 a second.
        let share = serve_ms * (1000.0 / 60.0) / 1000.0 / 1000.0 * 100.0;
        rows.push([
            "P12".into(),
            format!("serve's CPU for gateways' statuses: {STATUS_MESSAGES} real status messages of {STATUS_GATEWAYS} gateways (retained, QoS 1), CPU time per 1,000 messages"),
            format!("{serve_ms:.0} ms per 1,000 statuses: at one status a minute, 1,000 gateways cost {share:.2} % of a core"),
            format!(
                "Mosquitto routing the same messages to serve: {broker_ms:.0} ms per 1,000 ({:.1}× for serve)",
                serve_ms / broker_ms
            ),
        ]);
    }

    if wanted("P13") {
        let [gw_rps, gw_p50, bare_rps, bare_p50] = medians(runs, || http_serving(4_000));
        rows.push([
            "P13".into(),
            format!("an app serving HTTP (a Spin SDK component, a fresh instance per request), {HTTP_CLIENTS} keep-alive clients, 4,000 requests"),
            format!("{} requests/s, p50 {gw_p50:.2} ms", thousands(gw_rps)),
            format!(
                "the same component behind a bare hyper + wasmtime-wasi-http server in the bench process (ProxyPre per request, as wasmtime's docs serve it): {} requests/s, p50 {bare_p50:.2} ms ({:.0} % of it)",
                thousands(bare_rps),
                gw_rps / bare_rps * 100.0
            ),
        ]);
    }

    // The scale curves: one run each (the largest sizes take minutes).
    if wanted("S1") {
        let points: Vec<(usize, scale::AppsPoint)> = scale::APP_COUNTS
            .iter()
            .map(|&n| (n, scale::apps(n)))
            .collect();
        let (first, base) = (points[0].0, &points[0].1);
        for (n, p) in &points {
            let per_app = if *n > first {
                format!(
                    ", {:.2} MiB an app",
                    (p.rss_mib - base.rss_mib) / (*n - first) as f64
                )
            } else {
                String::new()
            };
            rows.push([
                format!("S1 ({n})"),
                format!("{n} apps: storage-roundtrip ticking every 100 ms, 10 s watched; then bench-ingest recording 1,000,000 points among them"),
                format!(
                    "RSS {:.1} MiB; tick gap p99 {:.1} ms ({} ticks); ingest {} points/s",
                    p.rss_mib,
                    p.tick_p99_ms,
                    p.ticks,
                    thousands(p.ingest)
                ),
                format!(
                    "{first} app: RSS ×{:.2}{per_app}; tick p99 ×{:.2}; ingest ×{:.2}",
                    p.rss_mib / base.rss_mib,
                    p.tick_p99_ms / base.tick_p99_ms,
                    p.ingest / base.ingest
                ),
            ]);
        }
    }

    if wanted("S2") {
        let points: Vec<(usize, scale::DevicesPoint)> = scale::DEVICE_COUNTS
            .iter()
            .map(|&n| (n, scale::devices(n, false)))
            .collect();
        let (first, base) = (points[0].0, &points[0].1);
        for (n, p) in &points {
            rows.push(devices_row(
                format!("S2 ({n})"),
                format!("{n} registered devices (the bus-gateway example, {n} sensors, in apps of at most 1,000), each recording a point and reporting once a second, through Mosquitto; 10 s watched"),
                p,
                format!(
                    "{first} devices: CPU ×{:.1} for ×{} the devices",
                    p.gateway_cpu / base.gateway_cpu,
                    n / first
                ),
            ));
        }
        // The same against Mosquitto's own default, Nagle's algorithm on:
        // each PUBACK after the first of a burst waits for the gateway's
        // TCP acknowledgement.
        let (n, largest) = points.last().expect("S2 has sizes");
        let stock = scale::devices(*n, true);
        rows.push(devices_row(
            format!("S2 ({n}, stock broker)"),
            format!("as S2 ({n}), against a Mosquitto with Nagle's algorithm on (`set_tcp_nodelay false`, its default)"),
            &stock,
            format!(
                "S2 ({n}): {} reports/s received, CPU ×{:.2}",
                thousands(largest.reports_per_s),
                stock.gateway_cpu / largest.gateway_cpu
            ),
        ));
    }

    if wanted("S3") {
        let points: Vec<(usize, scale::SeriesPoint)> = scale::SERIES_COUNTS
            .iter()
            .map(|&n| (n, scale::series(n)))
            .collect();
        let (first, base) = (points[0].0, &points[0].1);
        for (n, p) in &points {
            rows.push([
                format!("S3 ({n})"),
                format!("one app recording 200,000 points into {n} series, batches of 100 to each in turn"),
                format!("{} points/s; RSS {:.1} MiB", thousands(p.ingest), p.rss_mib),
                format!(
                    "{first} series: ingest ×{:.2}, RSS ×{:.2}",
                    p.ingest / base.ingest,
                    p.rss_mib / base.rss_mib
                ),
            ]);
        }
    }

    if wanted("S4") {
        for n in [1_000, 10_000] {
            let p = synced::synced(n);
            rows.push([
                format!("S4 ({n})"),
                format!("synced tables: {n} rows written by the app while the broker is away, then edited by the server (API) while the gateway is down; Mosquitto and serve on SQLite"),
                format!(
                    "push {} rows/s ({:.2} s from the broker's return until serve holds every row); pull {} rows/s ({:.2} s from the gateway's start until it applied every changeset); {} KiB of changesets",
                    thousands(p.push_rows_per_s),
                    p.push_converge_s,
                    thousands(p.pull_rows_per_s),
                    p.pull_converge_s,
                    p.changeset_bytes >> 10
                ),
                format!(
                    "the same changesets' bytes, bare client to bare subscriber: {} rows/s (push ×{:.2})",
                    thousands(p.bare_rows_per_s),
                    p.push_rows_per_s / p.bare_rows_per_s
                ),
            ]);
        }
    }

    if wanted("P5") {
        let (p50, p99, gap, lost, swaps) = hot_swaps(20);
        rows.push([
            "P5".into(),
            format!("hot swap under a stream of actions (1 per ms), {swaps} swaps"),
            format!("swap pause p50 {p50:.0} µs, p99 {p99:.0} µs; longest gap between answers {gap:.1} ms; {lost} events lost"),
            "—".into(),
        ]);
    }

    println!("\n| id | what | wasmgate | baseline (same run) |\n|---|---|---|---|");
    for [id, what, figure, base] in rows {
        println!("| {id} | {what} | {figure} | {base} |");
    }
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Each figure's median over `runs` runs of `f`.
fn medians<const N: usize>(runs: usize, mut f: impl FnMut() -> [f64; N]) -> [f64; N] {
    let all: Vec<[f64; N]> = (0..runs).map(|_| f()).collect();
    std::array::from_fn(|i| {
        let mut v: Vec<f64> = all.iter().map(|r| r[i]).collect();
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    })
}

fn median(runs: usize, mut f: impl FnMut() -> f64) -> f64 {
    let mut v: Vec<f64> = (0..runs).map(|_| f()).collect();
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// An S2 row: what the gateway and the broker did, and `against`, the
/// comparison within the curve.
fn devices_row(id: String, what: String, p: &scale::DevicesPoint, against: String) -> [String; 4] {
    [
        id,
        what,
        format!(
            "first report {:.1} s after every sensor registered; then gateway CPU {:.1} % of a core; report to subscriber p50 {:.1} ms, p99 {:.1} ms; {} reports/s received, from {} devices; RSS {:.1} MiB",
            p.first_report_s,
            p.gateway_cpu,
            p.latency_p50_ms,
            p.latency_p99_ms,
            thousands(p.reports_per_s),
            thousands(p.devices_heard as f64),
            p.rss_mib
        ),
        format!(
            "Mosquitto routing the same: {:.1} % ({:.1}× for the gateway); {against}",
            p.broker_cpu,
            p.gateway_cpu / p.broker_cpu,
        ),
    ]
}

fn thousands(x: f64) -> String {
    let n = x.round() as u64;
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn ingest_gateway(total: u64) -> Gateway {
    Gateway::new().app(
        "bench",
        &guest("bench-ingest"),
        &root().join("tests/models/bench.json"),
        &format!("tick_interval_ms = 1\ncall_timeout_ms = 10000\n[app.config]\ntotal = {total}\nbatch = 1000\ncalls = 20"),
    )
}

fn committed_points(gw: &Gateway) -> u64 {
    if !gw.db_path().exists() {
        return 0;
    }
    gw.db()
        .query_row(
            "SELECT COALESCE(SUM(points), 0) FROM outbox WHERE kind = 'telemetry'",
            [],
            |r| r.get::<_, i64>(0),
        )
        .unwrap_or(0) as u64
}

/// Points per second of `run` (gateway `gw`), from its first app's start
/// until `total` points are committed to SQLite.
fn ingest_rate(run: &mut common::Running, gw: &Gateway, total: u64) -> f64 {
    run.wait_for("app started", Duration::from_secs(600));
    let started = Instant::now();
    while committed_points(gw) < total {
        std::thread::sleep(Duration::from_millis(5));
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "ingest did not finish: {} of {total} points",
            committed_points(gw)
        );
    }
    total as f64 / started.elapsed().as_secs_f64()
}

/// Points per second from the guest's first tick until every point is
/// committed to SQLite.
fn ingest(total: u64) -> f64 {
    let gw = ingest_gateway(total);
    let mut run = gw.start();
    let rate = ingest_rate(&mut run, &gw, total);
    run.stop();
    eprintln!("ingest: {rate:.0} points/s");
    rate
}

/// The same points, encoded the same way, written by a plain batched
/// SQLite insert: rows of 1000 points, one transaction per 50 rows.
fn sqlite_baseline(total: u64) -> f64 {
    let dir = tempfile::tempdir().expect("tempdir");
    let conn = rusqlite::Connection::open(dir.path().join("b.db")).expect("open");
    conn.pragma_update(None, "journal_mode", "WAL")
        .expect("wal");
    conn.pragma_update(None, "synchronous", "NORMAL")
        .expect("sync");
    conn.execute_batch("CREATE TABLE t (seq INTEGER PRIMARY KEY, points INTEGER, payload BLOB)")
        .expect("table");
    let started = Instant::now();
    let mut k = 0u64;
    while k < total {
        let tx = conn.unchecked_transaction().expect("tx");
        for _ in 0..50 {
            if k >= total {
                break;
            }
            let mut payload = Vec::with_capacity(50_000);
            payload.push(b'[');
            let n = 1000.min(total - k);
            for i in 0..n {
                if i > 0 {
                    payload.push(b',');
                }
                let x = k + i;
                payload.extend_from_slice(
                    format!(
                        r#"{{"time":{},"values":{{"v":{:?},"n":{x}}}}}"#,
                        1_795_000_000_000_000_000 + x,
                        x as f64 * 0.5
                    )
                    .as_bytes(),
                );
            }
            payload.push(b']');
            tx.execute(
                "INSERT INTO t (points, payload) VALUES (?1, ?2)",
                params![n as i64, payload],
            )
            .expect("insert");
            k += n;
        }
        tx.commit().expect("commit");
    }
    let rate = total as f64 / started.elapsed().as_secs_f64();
    eprintln!("sqlite baseline: {rate:.0} points/s");
    rate
}

/// Fill the outbox offline, then connect to Mosquitto and time until a
/// consumer has every point. The baseline publishes messages of the same
/// size straight to the same broker.
///
/// Gives the medians of the drain and its baseline, each timed from the
/// start (of the gateway, of the bare client) and from its first message.
fn drain(total: u64, runs: usize) -> [f64; 4] {
    let mut rates = Vec::new();
    let mut baselines = Vec::new();
    let mut streaming = Vec::new();
    let mut streaming_baselines = Vec::new();
    for _ in 0..runs {
        let gw = ingest_gateway(total);
        let mut run = gw.start();
        while committed_points(&gw) < total {
            std::thread::sleep(Duration::from_millis(20));
        }
        run.stop();
        let message_size = gw
            .db()
            .query_row(
                "SELECT AVG(length(payload)) FROM outbox WHERE kind = 'telemetry'",
                [],
                |r| r.get::<_, f64>(0),
            )
            .unwrap_or(40_000.0) as usize;

        let broker = Mosquitto::start("");
        let counter = PointCounter::start(&broker, "wg/v1/test-gw/bench/telemetry/#");
        let gw = gw
            .reconfigure()
            .section(&format!("[cloud]\nurl = \"{}\"\n", broker.url()))
            .app(
                "bench",
                &guest("bench-ingest"),
                &root().join("tests/models/bench.json"),
                "[app.config]\ntotal = 0",
            );
        let started = Instant::now();
        let mut run = gw.start();
        while counter.points() < total {
            std::thread::sleep(Duration::from_millis(5));
            assert!(
                started.elapsed() < Duration::from_secs(300),
                "drain did not finish"
            );
        }
        let rate = total as f64 / started.elapsed().as_secs_f64();
        run.stop();
        let (streamed, _) = counter.streaming_rates();
        eprintln!("drain: {rate:.0} points/s; from its first message {streamed:.0} points/s");
        rates.push(rate);
        streaming.push(streamed);

        // Mosquitto alone: the same number of messages of the same size.
        let messages = total / 1000;
        let baseline_counter = PointCounter::start(&broker, "baseline/#");
        let payload = vec![b'x'; message_size];
        let started = Instant::now();
        publish_flat_out(&broker, messages, &payload);
        while baseline_counter.messages() < messages {
            std::thread::sleep(Duration::from_millis(2));
        }
        let baseline = (messages * 1000) as f64 / started.elapsed().as_secs_f64();
        // Its messages carry no points: a message stands for 1,000, as the
        // gateway's rows of this backlog hold.
        let streamed = baseline_counter.streaming_rates().1 * 1000.0;
        eprintln!(
            "mosquitto baseline: {baseline:.0} points/s ({message_size} byte messages); from its first message {streamed:.0} points/s"
        );
        baselines.push(baseline);
        streaming_baselines.push(streamed);
    }
    [rates, baselines, streaming, streaming_baselines].map(|mut figures| {
        figures.sort_by(|a, b| a.total_cmp(b));
        figures[figures.len() / 2]
    })
}

/// Publish `count` messages at QoS 1 as fast as rumqttc and the broker allow.
fn publish_flat_out(broker: &Mosquitto, count: u64, payload: &[u8]) {
    let mut options = wasmgate::cloud::mqtt_options(&broker.settings("baseline-publisher"), true)
        .expect("options");
    options.set_inflight(32);
    let (client, mut connection) = rumqttc::Client::new(options, 64);
    let payload = payload.to_vec();
    let publisher = std::thread::spawn(move || {
        for _ in 0..count {
            client
                .publish(
                    "baseline/x",
                    rumqttc::QoS::AtLeastOnce,
                    false,
                    payload.clone(),
                )
                .expect("publish");
        }
        client
    });
    wait_for_acks(&mut connection, count);
    let _ = publisher.join();
}

/// Drive `connection` until the broker has acknowledged `count` publishes.
fn wait_for_acks(connection: &mut rumqttc::Connection, count: u64) {
    let mut acked = 0u64;
    for event in connection.iter() {
        if let Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))) = event {
            acked += 1;
            if acked == count {
                break;
            }
        }
    }
}

/// Before figure `id`: this process is idle, so no thread that an earlier
/// figure started is still taking CPU from the figures measured after it.
fn assert_nothing_left_running(id: &str) {
    let me = std::process::id();
    let before = cpu_ms(me);
    let window = Duration::from_millis(300);
    std::thread::sleep(window);
    let busy = (cpu_ms(me) - before) / window.as_millis() as f64;
    assert!(
        busy < 0.1,
        "before {id}, the bench itself used {:.0} % of a core while idle: a thread of an earlier figure is still running",
        busy * 100.0
    );
}

/// A client thread's events until its connection fails. rumqttc retries a
/// lost connection at once, with no pause, on every poll: a thread that
/// ignored the error would spin on `connect` to a broker that is gone, for
/// the rest of the run, and take a core from every figure measured after it.
fn until_the_broker_goes(
    events: impl Iterator<Item = Result<rumqttc::Event, rumqttc::ConnectionError>>,
) -> impl Iterator<Item = rumqttc::Event> {
    events.map_while(Result::ok)
}

/// Counts messages and points (`"time":` occurrences) on a subscription,
/// and notes when the first and the latest message came.
struct PointCounter {
    points: std::sync::Arc<std::sync::atomic::AtomicU64>,
    messages: std::sync::Arc<std::sync::atomic::AtomicU64>,
    arrivals: std::sync::Arc<std::sync::Mutex<Arrivals>>,
}

/// When the first and the latest message came, and the points the first
/// carried.
#[derive(Default, Clone, Copy)]
struct Arrivals {
    first: Option<(Instant, u64)>,
    latest: Option<Instant>,
}

impl PointCounter {
    fn start(broker: &Mosquitto, filter: &str) -> PointCounter {
        use std::sync::atomic::Ordering;
        let options = wasmgate::cloud::mqtt_options(
            &broker.settings(&format!("counter-{}", wasmgate::value::random_u64())),
            true,
        )
        .expect("options");
        let (client, mut connection) = rumqttc::Client::new(options, 64);
        client
            .subscribe(filter, rumqttc::QoS::AtLeastOnce)
            .expect("subscribe");
        let points = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let messages = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let arrivals = std::sync::Arc::<std::sync::Mutex<Arrivals>>::default();
        let (p, m, a) = (points.clone(), messages.clone(), arrivals.clone());
        let (ready_tx, ready) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _client = client;
            for event in until_the_broker_goes(connection.iter()) {
                match event {
                    rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_)) => {
                        let _ = ready_tx.send(());
                    }
                    rumqttc::Event::Incoming(rumqttc::Packet::Publish(publish)) => {
                        let n = publish
                            .payload
                            .windows(7)
                            .filter(|w| w == b"\"time\":")
                            .count() as u64;
                        {
                            // Noted before the counts grow: whoever sees the
                            // last count sees its arrival.
                            let now = Instant::now();
                            let mut arrivals = a.lock().expect("arrivals");
                            arrivals.first.get_or_insert((now, n));
                            arrivals.latest = Some(now);
                        }
                        p.fetch_add(n, Ordering::SeqCst);
                        m.fetch_add(1, Ordering::SeqCst);
                    }
                    _ => {}
                }
            }
        });
        let _ = ready.recv_timeout(Duration::from_secs(10));
        PointCounter {
            points,
            messages,
            arrivals,
        }
    }

    fn points(&self) -> u64 {
        self.points.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn messages(&self) -> u64 {
        self.messages.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Points and messages a second from the first message's arrival to
    /// the latest's, counting what came after the first message: the rate
    /// of the stream itself, without what came before its first message (a
    /// process starting, a client connecting).
    fn streaming_rates(&self) -> (f64, f64) {
        let arrivals = *self.arrivals.lock().expect("arrivals");
        let (Some((first, first_points)), Some(latest)) = (arrivals.first, arrivals.latest) else {
            return (0.0, 0.0);
        };
        let seconds = latest.duration_since(first).as_secs_f64();
        (
            (self.points() - first_points) as f64 / seconds,
            (self.messages() - 1) as f64 / seconds,
        )
    }
}

/// Swap an app `count` times while a client sends it an action every
/// millisecond: the swap pauses the actor logs, the longest gap between two
/// answers the client saw, and how many requests went unanswered.
fn hot_swaps(count: usize) -> (f64, f64, f64, u64, usize) {
    use std::sync::{Arc, Mutex};
    let broker = Mosquitto::start("");
    let gw = Gateway::new()
        .section(&format!("[cloud]\nurl = \"{}\"\n", broker.url()))
        .section("[deploy]\nprobation_s = 1\n")
        .app(
            "counter",
            &guest("swap-counter"),
            &root().join("tests/models/swap.json"),
            "tick_interval_ms = 20\n[app.config]\ngeneration = \"a\"",
        );
    let mut run = gw.start();
    run.wait_for("connected to the broker", Duration::from_secs(60));

    // Answers, with when they arrived.
    let answers: Arc<Mutex<Vec<(u64, Instant)>>> = Arc::default();
    let options =
        wasmgate::cloud::mqtt_options(&broker.settings("bench-client"), true).expect("options");
    let (client, mut connection) = rumqttc::Client::new(options, 1024);
    client
        .subscribe(
            "wg/v1/test-gw/counter/action/seq/res",
            rumqttc::QoS::AtLeastOnce,
        )
        .expect("subscribe");
    {
        let answers = answers.clone();
        std::thread::spawn(move || {
            for event in until_the_broker_goes(connection.iter()) {
                if let rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)) = event
                    && let Ok(json) = serde_json::from_slice::<serde_json::Value>(&p.payload)
                    && let Some(id) = json["id"].as_str().and_then(|i| i.parse().ok())
                {
                    answers.lock().expect("lock").push((id, Instant::now()));
                }
            }
        });
    }
    std::thread::sleep(Duration::from_millis(300));
    let running = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sender = {
        let (client, running) = (client.clone(), running.clone());
        std::thread::spawn(move || {
            let mut i = 0u64;
            while running.load(std::sync::atomic::Ordering::Relaxed) {
                i += 1;
                let body = serde_json::json!({"id": i.to_string(), "argument": i}).to_string();
                client
                    .publish(
                        "wg/v1/test-gw/counter/action/seq/req",
                        rumqttc::QoS::AtLeastOnce,
                        false,
                        body,
                    )
                    .expect("publish");
                std::thread::sleep(Duration::from_millis(1));
            }
            i
        })
    };
    let config = gw.config_path();
    for k in 0..count {
        std::thread::sleep(Duration::from_millis(300));
        let generation = format!("generation={}", if k % 2 == 0 { "b" } else { "a" });
        let (ok, out, err) = common::wasmgate(&[
            "deploy",
            "counter",
            guest("swap-counter").to_str().expect("path"),
            "--config",
            &generation,
            "--gateway",
            config.to_str().expect("path"),
        ]);
        assert!(ok, "{out}{err}");
    }
    running.store(false, std::sync::atomic::Ordering::Relaxed);
    let sent = sender.join().expect("sender");
    let deadline = Instant::now() + Duration::from_secs(30);
    while (answers.lock().expect("lock").len() as u64) < sent && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    run.stop();

    let answers = answers.lock().expect("lock").clone();
    let unique: std::collections::HashSet<u64> = answers.iter().map(|(id, _)| *id).collect();
    let lost = sent.saturating_sub(unique.len() as u64);
    let gap = answers
        .windows(2)
        .map(|w| w[1].1.duration_since(w[0].1).as_secs_f64() * 1000.0)
        .fold(0.0, f64::max);
    let mut pauses: Vec<f64> = run
        .lines()
        .iter()
        .filter_map(|l| {
            l.split("hot swap done in ")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect();
    pauses.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| {
        pauses
            .get(((pauses.len() as f64 - 1.0) * q).round() as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    eprintln!(
        "hot swap: {} swaps, pauses {pauses:?} µs, longest answer gap {gap:.1} ms, {lost} of {sent} lost",
        pauses.len()
    );
    (at(0.5), at(0.99), gap, lost, pauses.len())
}

/// A store for bare wasmtime: WASI and nothing else.
struct Bare {
    wasi: wasmtime_wasi::WasiCtx,
    table: wasmtime::component::ResourceTable,
}

impl wasmtime_wasi::WasiView for Bare {
    fn ctx(&mut self) -> wasmtime_wasi::WasiCtxView<'_> {
        wasmtime_wasi::WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

fn bare_engine() -> wasmtime::Engine {
    let mut config = wasmtime::Config::new();
    config.wasm_component_model(true);
    config.epoch_interruption(true);
    wasmtime::Engine::new(&config).expect("engine")
}

/// A bare instance of `component`: WASI linked, every wasmgate import a trap.
async fn bare_instance(
    engine: &wasmtime::Engine,
    component: &wasmtime::component::Component,
) -> (
    wasmtime::Store<Bare>,
    wasmgate::bindings::App,
    wasmtime::component::InstancePre<Bare>,
) {
    let mut linker = wasmtime::component::Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker).expect("wasi");
    linker
        .define_unknown_imports_as_traps(component)
        .expect("traps");
    let pre = linker.instantiate_pre(component).expect("pre");
    let mut store = bare_store(engine);
    let app = wasmgate::bindings::App::instantiate_async(&mut store, component, &linker)
        .await
        .expect("instantiate");
    (store, app, pre)
}

/// An app version of `guest_name` (with `tests/models/{model}`) and the
/// gateway parts its actor needs, for timing the actor's own paths
/// (`time_dispatch`, `time_instantiation`). Keep it until the timing ends:
/// it holds the temporary directory and the outbox writer.
struct ActorBench {
    _dir: tempfile::TempDir,
    /// The engine's epoch ticker runs while this lives.
    _engine: wasmgate::engine::Runtime,
    ingest: wasmgate::outbox::Ingest,
    version: wasmgate::app::AppVersion,
    shared: wasmgate::app::AppShared,
    files: std::path::PathBuf,
    wasm: std::path::PathBuf,
}

fn actor_bench(guest_name: &str, model: &str) -> ActorBench {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = wasmgate::store::Database::new(dir.path().join("b.db"), None);
    let conn = db.open().expect("db");
    wasmgate::store::migrate(&conn, &wasmgate::app::Units::schemas()).expect("migrate");
    let usage = std::sync::Arc::new(
        wasmgate::outbox::Usage::load(&conn, Default::default()).expect("usage"),
    );
    let ingest =
        wasmgate::outbox::Ingest::start(&db, usage.clone(), Default::default()).expect("ingest");
    let directory = wasmgate::app::Directory::default();
    let units = wasmgate::app::Units {
        wasi: Arc::new(wasmgate::wasi::Wasi),
        device: Arc::new(wasmgate::device::Device {
            ingest: ingest.sender(),
            usage: usage.clone(),
            outbox_signal: Default::default(),
            directory: Arc::new(directory),
            status_signal: Default::default(),
        }),
        storage: Arc::new(wasmgate::storage::Storage::default()),
        log: Arc::new(wasmgate::log::Log),
        config_store: Arc::new(wasmgate::config_store::ConfigStore),
        content: Arc::new(wasmgate::content::Content {
            data_dir: dir.path().to_path_buf(),
            config: Default::default(),
            signal: Default::default(),
            resumed: Default::default(),
        }),
        modbus: Arc::new(wasmgate::modbus::Modbus::new(Default::default())),
        serial: Arc::new(wasmgate::serial::Serial::new(Default::default())),
        bus: Arc::new(wasmgate::bus::Bus::new(None, Default::default()).expect("bus")),
        tables: Arc::new(wasmgate::tables::Tables::new(Default::default(), false)),
        http_serve: Arc::new(wasmgate::http_serve::HttpServe::new(Default::default())),
    };
    let shared = wasmgate::app::AppShared {
        metrics: wasmgate::metrics::Metrics::default(),
        pool: wasmgate::store::ConnectionPool::new(db),
        units,
        status_signal: Default::default(),
        disk_reserve_bytes: 0,
    };
    let wasm = guest(guest_name);
    let engine_runtime =
        wasmgate::engine::Runtime::new(&dir.path().join("cache")).expect("runtime");
    let loaded = engine_runtime.load(&wasm).expect("load");
    let model = std::fs::read_to_string(root().join("tests/models").join(model)).expect("model");
    let config = wasmgate::config::Config::parse(
        &dir.path().join("gateway.toml"),
        &format!("[gateway]\nid = \"b\"\n[[app]]\nname = \"{guest_name}\"\ncomponent = \"{}\"\nmodel = \"m.json\"\n", wasm.display()),
    )
    .expect("config");
    let version = wasmgate::app::AppVersion {
        config: config.apps[0].clone(),
        model: std::sync::Arc::new(wasmgate::model::DeviceModel::parse(&model).expect("model")),
        device_models: Default::default(),
        pre: loaded.pre,
        digest: loaded.digest,
        number: 1,
        load: Some(loaded.source),
    };
    let files = dir.path().join("files");
    std::fs::create_dir_all(&files).expect("files");
    ActorBench {
        _dir: dir,
        _engine: engine_runtime,
        ingest,
        version,
        shared,
        files,
        wasm,
    }
}

/// A store for a bare instance: a plain WASI context, no deadline.
fn bare_store(engine: &wasmtime::Engine) -> wasmtime::Store<Bare> {
    let mut store = wasmtime::Store::new(
        engine,
        Bare {
            wasi: wasmtime_wasi::WasiCtx::builder().build(),
            table: Default::default(),
        },
    );
    store.set_epoch_deadline(u64::MAX);
    store
}

/// One bare instance of `pre`, with its own store and WASI context, dropped.
async fn bare_instantiate(engine: &wasmtime::Engine, pre: &wasmtime::component::InstancePre<Bare>) {
    let mut store = bare_store(engine);
    pre.instantiate_async(&mut store)
        .await
        .expect("instantiate");
}

/// Makes the binary at `CARGO_BIN_EXE_wasmgate`, which every figure that
/// starts a gateway runs, the one the Debian package ships (`cargo build
/// --release --package wasmgate`, as `cargo xtask deb` builds it).
/// `cargo bench` builds the package's binary with the dev-dependencies'
/// features unified in (tokio's `test-util`): not quite the shipped code,
/// and its symbols carry other crate hashes than the ones
/// `host/link-order.txt` lists, so P6 measured a binary laid out worse than
/// the one that ships. cargo keeps each build's binary apart under `deps/`
/// and copies the one last asked for to this path, so after the first time
/// this is a second of cargo's checks, not another link.
fn ship_binary() {
    let binary = common::binary();
    assert!(
        binary.parent().and_then(|p| p.file_name()) == Some("release".as_ref()),
        "{} is not a release build: run the system bench with `cargo bench`",
        binary.display()
    );
    eprintln!("building the binary the package ships: cargo build --release --package wasmgate");
    let built = cargo()
        .args(["build", "--release", "--package", "wasmgate"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        built,
        "cargo build --release --package wasmgate failed: the bench measures the binary it builds"
    );
}

/// `cargo`, for a build from within the bench, in the environment the bench
/// was started from. cargo gives a bench its package's variables
/// (`CARGO_PKG_NAME`, `OUT_DIR`, ...), and a build script that asks to run
/// again when one of them changes (ring's asks for most) would otherwise
/// run again, and every crate built after it, on each such build and on the
/// next build from a shell.
fn cargo() -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO"));
    command.current_dir(root());
    const SET_FOR_A_BENCH: [&str; 6] = [
        "OUT_DIR",
        "CARGO_CRATE_NAME",
        "CARGO_PRIMARY_PACKAGE",
        "CARGO_TARGET_TMPDIR",
        "CARGO_BIN_NAME",
        "CARGO_RUSTC_CURRENT_DIR",
    ];
    for (name, _) in std::env::vars_os() {
        let text = name.to_string_lossy();
        if ["CARGO_PKG_", "CARGO_MANIFEST_", "CARGO_BIN_EXE_"]
            .iter()
            .any(|prefix| text.starts_with(prefix))
            || SET_FOR_A_BENCH.contains(&&*text)
        {
            command.env_remove(&name);
        }
    }
    command
}

/// How many of `host/link-order.txt`'s functions the measured binary has
/// (`host/benches/link-order --check`): a stale list names few of them, and
/// the gateway keeps more of its code resident again (P6).
fn link_order_matches() -> String {
    let out = std::process::Command::new(root().join("host/benches/link-order"))
        .arg("--check")
        .arg(common::binary())
        .output();
    match out {
        // "7678 of the 7701 functions in host/link-order.txt are in ..."
        Ok(out) if out.status.success() => {
            let text = String::from_utf8_lossy(&out.stdout);
            let words: Vec<&str> = text.split_whitespace().collect();
            match (words.first(), words.get(3)) {
                (Some(found), Some(listed)) => {
                    format!("{found} of {listed} listed functions in the binary")
                }
                _ => format!("not read ({})", text.trim()),
            }
        }
        Ok(out) => format!("not read ({})", String::from_utf8_lossy(&out.stderr).trim()),
        Err(e) => format!("not read ({e})"),
    }
}

/// P1: the actor's call path against a bare typed call, `n` events each.
fn dispatch(n: u32) -> (Duration, Duration, Duration, Duration) {
    let runtime = tokio::runtime::Runtime::new().expect("tokio");
    runtime.block_on(async {
        let bench = actor_bench("bench-noop", "noop.json");
        // Warm up, then measure.
        wasmgate::app::time_dispatch(&bench.version, &bench.shared, &bench.files, n / 10).await.expect("warm-up");
        let (tick, desired) = wasmgate::app::time_dispatch(&bench.version, &bench.shared, &bench.files, n).await.expect("dispatch");

        let engine = bare_engine();
        let component = wasmtime::component::Component::from_file(&engine, &bench.wasm).expect("component");
        let (mut store, app, _) = bare_instance(&engine, &component).await;
        app.call_init(&mut store, &[], None).await.expect("call").expect("init");
        let changes = vec![("level".to_string(), wasmgate::bindings::wasmgate::device::types::Value::Integer(1))];
        for _ in 0..n / 10 {
            app.call_on_tick(&mut store, 1).await.expect("tick");
        }
        let started = Instant::now();
        for _ in 0..n {
            app.call_on_tick(&mut store, 1).await.expect("tick");
        }
        let bare_tick = started.elapsed() / n;
        let started = Instant::now();
        for _ in 0..n {
            let _ = app.call_on_desired(&mut store, "bench", &changes).await.expect("desired");
        }
        let bare_desired = started.elapsed() / n;
        bench.ingest.shutdown();
        eprintln!("dispatch: on-tick {tick:?} (bare {bare_tick:?}), on-desired {desired:?} (bare {bare_desired:?})");
        (tick, desired, bare_tick, bare_desired)
    })
}

/// P2's baseline: a Python paho-mqtt client publishing each point at QoS 1.
fn paho_baseline(points: u64) -> Result<f64, String> {
    let venv = root().join("target/bench-venv");
    let python = venv.join("bin/python");
    if !python.exists() {
        let ok = std::process::Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .map_err(|e| e.to_string())?;
        if !ok.success() {
            return Err("python3 -m venv failed".into());
        }
    }
    let installed = std::process::Command::new(&python)
        .args(["-m", "pip", "install", "--quiet", "-r"])
        .arg(root().join("host/benches/requirements.txt"))
        .status()
        .map_err(|e| e.to_string())?;
    if !installed.success() {
        return Err("pip install paho-mqtt failed".into());
    }
    let broker = Mosquitto::start("");
    let out = std::process::Command::new(&python)
        .arg(root().join("host/benches/paho_publish.py"))
        .args(["127.0.0.1", &broker.port.to_string(), &points.to_string()])
        .output()
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out.stdout);
    let rate: f64 = text.trim().parse().map_err(|_| {
        format!(
            "paho script said {text:?} / {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    eprintln!("paho-mqtt: {rate:.0} points/s");
    Ok(rate)
}

/// `n` storage-roundtrip apps (`app0`, ...) ticking every `tick_ms`.
fn roundtrip_apps(n: usize, tick_ms: u32) -> Gateway {
    apps_of(&guest("storage-roundtrip"), n, tick_ms)
}

/// `n` counter apps of `component` (the storage-roundtrip guest, as a
/// component or precompiled).
fn apps_of(component: &std::path::Path, n: usize, tick_ms: u32) -> Gateway {
    let mut gw = Gateway::new();
    for i in 0..n {
        gw = gw.app(
            &format!("app{i}"),
            component,
            &root().join("tests/models/counter.json"),
            &format!("tick_interval_ms = {tick_ms}"),
        );
    }
    gw
}

/// P4's figures: medians of three starts each.
struct ColdStart {
    /// Process start to every app's first tick, on a fresh data directory.
    cold_ms: f64,
    /// The same with the compile cache.
    warm_ms: f64,
    /// An app's start as the gateway logs it: instantiation and `init`.
    started_ms: f64,
    /// Of it, the instantiation: wasmtime's and every unit's state.
    instantiated_ms: f64,
    /// The gateway's instantiation (every unit's state, the store,
    /// wasmtime's, the exports) timed as the baseline is: 200 in a row.
    in_a_row: Duration,
    /// The baseline: wasmtime's `InstancePre` instantiation alone, 200 in
    /// a row (each with its store and WASI context).
    bare_instantiate: Duration,
    /// The same, each after 16 MiB of other memory traffic: with caches as
    /// cold as an app's start finds them.
    bare_cold: Duration,
}

/// P4: from process start until every app has ticked, with a fresh data
/// directory and again with its compile cache; and instantiation alone.
fn cold_start(apps: usize) -> ColdStart {
    // From the process's spawn to the log's timestamp of the last app's
    // first tick: waiting polls the log every 20 ms, which would add up to
    // that much to each start.
    let first_ticks = |run: &mut common::Running, spawned: std::time::SystemTime| -> f64 {
        run.wait_until(
            Duration::from_secs(120),
            "every app's first tick",
            |lines| {
                let ticked = lines
                    .iter()
                    .filter(|l| l.contains("counter=1 roundtrip="))
                    .count();
                (ticked >= apps).then_some(())
            },
        );
        let last = run
            .lines()
            .iter()
            .filter(|l| l.contains("counter=1 roundtrip="))
            .filter_map(|l| logged_at(l))
            .max()
            .expect("the first ticks' lines carry timestamps");
        last.duration_since(spawned)
            .expect("logged after the spawn")
            .as_secs_f64()
            * 1000.0
    };
    let mut colds = Vec::new();
    let mut warms = Vec::new();
    let mut starts = Vec::new();
    let mut instantiations = Vec::new();
    for _ in 0..3 {
        let gw = roundtrip_apps(apps, 10);
        let spawned = std::time::SystemTime::now();
        let mut run = gw.start();
        colds.push(first_ticks(&mut run, spawned));
        run.stop();
        // The counters are in storage now: wipe them so "counter=1" comes again.
        gw.db().execute("DELETE FROM kv", []).expect("reset");
        let spawned = std::time::SystemTime::now();
        let mut run = gw.start();
        warms.push(first_ticks(&mut run, spawned));
        // "app started in 0.251 ms (instantiated in 0.072 ms, then init)"
        let after = |line: &str, prefix: &str| -> Option<f64> {
            line.split(prefix)
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse::<f64>()
                .ok()
        };
        for line in run.lines() {
            starts.extend(after(&line, "app started in "));
            instantiations.extend(after(&line, "(instantiated in "));
        }
        run.stop();
    }
    let med = |mut v: Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let runtime = tokio::runtime::Runtime::new().expect("tokio");
    let (in_a_row, bare_cold, bare) = runtime.block_on(async {
        let engine = bare_engine();
        let component =
            wasmtime::component::Component::from_file(&engine, guest("storage-roundtrip"))
                .expect("component");
        let (_, _, pre) = bare_instance(&engine, &component).await;
        let n = 200u32;
        // The gateway's own instantiation path, timed the same way: in a
        // row, warm, after a warm-up.
        let bench = actor_bench("storage-roundtrip", "counter.json");
        wasmgate::app::time_instantiation(&bench.version, &bench.shared, &bench.files, n / 10)
            .await
            .expect("warm-up");
        let in_a_row =
            wasmgate::app::time_instantiation(&bench.version, &bench.shared, &bench.files, n)
                .await
                .expect("instantiation");
        bench.ingest.shutdown();
        // The same, each with cold caches: after 16 MiB of other memory
        // traffic, as an app's instantiation at a start comes after the
        // other apps' loading, instantiation and init.
        let mut traffic = vec![0u8; 16 << 20];
        let cold_n = 50u32;
        let mut cold = Duration::ZERO;
        for i in 0..cold_n {
            for line in traffic.iter_mut().step_by(64) {
                *line = line.wrapping_add(i as u8);
            }
            let started = Instant::now();
            bare_instantiate(&engine, &pre).await;
            cold += started.elapsed();
        }
        let cold = cold / cold_n;
        let started = Instant::now();
        for _ in 0..n {
            bare_instantiate(&engine, &pre).await;
        }
        (in_a_row, cold, started.elapsed() / n)
    });
    let start = ColdStart {
        cold_ms: med(colds),
        warm_ms: med(warms),
        started_ms: med(starts),
        instantiated_ms: med(instantiations),
        in_a_row,
        bare_instantiate: bare,
        bare_cold,
    };
    eprintln!(
        "cold start: {:.0} ms, warm {:.0} ms, app started {:.2} ms (instantiated {:.3} ms), in a row {in_a_row:?}, bare instantiate {bare:?}, cold {bare_cold:?}",
        start.cold_ms, start.warm_ms, start.started_ms, start.instantiated_ms
    );
    start
}

/// When the gateway logged `line` (its leading RFC 3339 timestamp).
fn logged_at(line: &str) -> Option<std::time::SystemTime> {
    let stamp = line.split_whitespace().next()?;
    let at =
        time::OffsetDateTime::parse(stamp, &time::format_description::well_known::Rfc3339).ok()?;
    Some(at.into())
}

/// A field of `/proc/PID/status` in kB, as MiB (NaN when unreadable).
fn status_mib(pid: u32, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))?
                .split_whitespace()
                .nth(1)?
                .parse::<f64>()
                .ok()
        })
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

fn rss_mib(pid: u32) -> f64 {
    status_mib(pid, "VmRSS")
}

/// A process's resident memory, and how much of it is anonymous (heap,
/// stacks, guests' memories) rather than pages of its files (its code).
#[derive(Clone, Copy)]
struct Resident {
    rss: f64,
    anon: f64,
}

impl Resident {
    fn of(pid: u32) -> Resident {
        Resident {
            rss: rss_mib(pid),
            anon: status_mib(pid, "RssAnon"),
        }
    }
}

/// P6's figures.
struct Footprint {
    /// The first start, which compiles the component.
    one: Resident,
    ten: Resident,
    /// Ten apps started again, from the compile cache.
    restarted: Resident,
    /// The runtime-only build (`--profile device`) running the same apps
    /// precompiled: what a device would run. `None` if it could not be built.
    device: Option<(Resident, Resident)>,
    /// Stripped sizes, MiB: the default binary, and the runtime-only one.
    size: f64,
    runtime_only: String,
}

/// `apps` storage-roundtrip apps of `component`, run by `binary` until
/// every app has ticked and 3 s after: the process's resident memory.
fn idle_resident(binary: &std::path::Path, component: &std::path::Path, apps: usize) -> Resident {
    let gw = apps_of(component, apps, 10);
    gw.write_config();
    idle_resident_of(binary, &gw, apps)
}

/// `gw`'s `apps` counter apps run by `binary` until every app has ticked
/// (for the first time: counters in storage are wiped first) and 3 s
/// after: the process's resident memory.
fn idle_resident_of(binary: &std::path::Path, gw: &Gateway, apps: usize) -> Resident {
    if gw.db_path().exists() {
        gw.db().execute("DELETE FROM kv", []).expect("reset");
    }
    let mut run = common::Running::spawn_binary(binary, &gw.config_path(), &[]);
    run.wait_until(
        Duration::from_secs(120),
        "every app's first tick",
        |lines| {
            (lines
                .iter()
                .filter(|l| l.contains("counter=1 roundtrip="))
                .count()
                >= apps)
                .then_some(())
        },
    );
    std::thread::sleep(Duration::from_secs(3));
    let resident = Resident::of(run.pid());
    run.stop();
    resident
}

/// P6: resident memory of an idle gateway with 1 and 10 apps, for the
/// default binary and for the runtime-only one; binary sizes.
fn footprint() -> Footprint {
    let component = guest("storage-roundtrip");
    let binary = common::binary();
    let (one, ten) = (
        idle_resident(&binary, &component, 1),
        idle_resident(&binary, &component, 10),
    );
    // The same ten apps again on the same data directory: loaded from the
    // compile cache, as after any restart, instead of compiled.
    let restarted = {
        let gw = apps_of(&component, 10, 10);
        gw.write_config();
        idle_resident_of(&binary, &gw, 10);
        idle_resident_of(&binary, &gw, 10)
    };
    let stripped = |path: &std::path::Path| -> Option<f64> {
        let copy = std::env::temp_dir().join(format!("wasmgate-size-{}", std::process::id()));
        std::fs::copy(path, &copy).ok()?;
        let ok = std::process::Command::new("strip")
            .arg(&copy)
            .status()
            .ok()?
            .success();
        let size = std::fs::metadata(&copy).ok()?.len() as f64 / (1 << 20) as f64;
        let _ = std::fs::remove_file(&copy);
        ok.then_some(size)
    };
    let size = stripped(&binary).unwrap_or(f64::NAN);
    let built = cargo()
        .args([
            "build",
            "--quiet",
            "--profile",
            "device",
            "-p",
            "wasmgate-runtime-only",
        ])
        .status()
        .is_ok_and(|s| s.success());
    // In the same target directory as the default binary, wherever
    // CARGO_TARGET_DIR puts it, under the device profile's directory.
    let device_binary = binary
        .parent()
        .and_then(std::path::Path::parent)
        .expect("the binary is in a profile's directory of the target directory")
        .join("device/wasmgate-runtime-only");
    let runtime_only = if built {
        stripped(&device_binary).map_or("not measured".into(), |s| format!("{s:.1} MiB"))
    } else {
        "not built".into()
    };
    let device = built
        .then(|| {
            let dir = tempfile::tempdir().expect("tempdir");
            let artifact = dir.path().join("storage-roundtrip.cwasm");
            let compiled = std::process::Command::new(&binary)
                .arg("compile")
                .arg(&component)
                .arg("--output")
                .arg(&artifact)
                .status()
                .is_ok_and(|s| s.success());
            compiled.then(|| {
                (
                    idle_resident(&device_binary, &artifact, 1),
                    idle_resident(&device_binary, &artifact, 10),
                )
            })
        })
        .flatten();
    eprintln!(
        "footprint: {:.1} / {:.1} MiB (anonymous {:.1} / {:.1}); runtime-only {}; {size:.1} MiB / {runtime_only}",
        one.rss,
        ten.rss,
        one.anon,
        ten.anon,
        device.map_or("not measured".into(), |(a, b)| format!(
            "{:.1} / {:.1} MiB (anonymous {:.1} / {:.1})",
            a.rss, b.rss, a.anon, b.anon
        )),
    );
    eprintln!(
        "footprint: restarted from the compile cache, 10 apps: {:.1} MiB (anonymous {:.1})",
        restarted.rss, restarted.anon
    );
    Footprint {
        one,
        ten,
        restarted,
        device,
        size,
        runtime_only,
    }
}

/// `n` sequential round trips (after `n / 10` to warm up): publish on
/// `request`, wait for a message on `response`; milliseconds, sorted. The
/// first request is sent again every 100 ms until something answers, so the
/// answerer's subscription need not be known to be in place.
fn timed_round_trips(
    broker: &Mosquitto,
    request: &str,
    response: &str,
    n: usize,
    body: &dyn Fn(usize) -> String,
) -> Vec<f64> {
    let options = wasmgate::cloud::mqtt_options(
        &broker.settings(&format!("rtt-{}", wasmgate::value::random_u64())),
        true,
    )
    .expect("options");
    let (client, mut connection) = rumqttc::Client::new(options, 64);
    // Without TCP_NODELAY the requester's PUBACK and its next request wait
    // on the broker's delayed ACK: 40 ms a round trip, whoever answers.
    wasmgate::cloud::no_delay(&mut connection.eventloop);
    client
        .subscribe(response, rumqttc::QoS::AtLeastOnce)
        .expect("subscribe");
    loop {
        if let Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))) =
            connection.recv().expect("event")
        {
            break;
        }
    }
    'warm: loop {
        client
            .publish(request, rumqttc::QoS::AtLeastOnce, false, body(0))
            .expect("publish");
        let deadline = Instant::now() + Duration::from_millis(100);
        while let Ok(event) =
            connection.recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            if let Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(_))) = event {
                break 'warm;
            }
        }
    }
    // Answers to the warm-up's repeats may still come: drain them.
    while connection.recv_timeout(Duration::from_millis(200)).is_ok() {}
    let mut samples = Vec::with_capacity(n);
    for i in 0..n + n / 10 {
        let started = Instant::now();
        client
            .publish(request, rumqttc::QoS::AtLeastOnce, false, body(i))
            .expect("publish");
        loop {
            if let Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(_))) =
                connection.recv().expect("event")
            {
                break;
            }
        }
        if i >= n / 10 {
            samples.push(started.elapsed().as_secs_f64() * 1000.0);
        }
    }
    samples.sort_by(|a, b| a.total_cmp(b));
    samples
}

/// A plain MQTT client that answers every message on `bench/req` with the
/// same payload on `bench/res`: the baseline of a round trip.
fn start_echo(broker: &Mosquitto) -> rumqttc::Client {
    let options = wasmgate::cloud::mqtt_options(&broker.settings("echo"), true).expect("options");
    let (echo, mut echo_connection) = rumqttc::Client::new(options, 64);
    wasmgate::cloud::no_delay(&mut echo_connection.eventloop);
    echo.subscribe("bench/req", rumqttc::QoS::AtLeastOnce)
        .expect("subscribe");
    let answerer = echo.clone();
    std::thread::spawn(move || {
        for event in until_the_broker_goes(echo_connection.iter()) {
            if let rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)) = event {
                let _ = answerer.try_publish(
                    "bench/res",
                    rumqttc::QoS::AtLeastOnce,
                    false,
                    p.payload.to_vec(),
                );
            }
        }
    });
    echo
}

/// P9: a message on the local bus to a guest's `on-message`, which
/// publishes it back on the bus, against the plain echo on the same broker.
fn bus_round_trips(n: usize) -> (f64, f64, f64, f64) {
    let bus = Mosquitto::start("");
    let grant = "bus = [{ topic = \"bench/#\", access = \"both\" }]";
    let gw = Gateway::new()
        .section(&format!("[bus]\nurl = \"{}\"\n", bus.url()))
        .section(&format!("[allow]\n{grant}\n"))
        .app(
            "probe",
            &guest("bus-probe"),
            &root().join("tests/models/bus.json"),
            &format!(
                "tick_interval_ms = 60000\nio_requests_per_s = 100000\ngrants = {{ {grant} }}\n\
                 [app.config]\nsubscribe = \"bench/req\"\necho_to = \"bench/res\""
            ),
        );
    let mut run = gw.start();
    let body = |i: usize| i.to_string();
    let through_guest = timed_round_trips(&bus, "bench/req", "bench/res", n, &body);
    run.stop();
    let _echo = start_echo(&bus);
    let plain = timed_round_trips(&bus, "bench/req", "bench/res", n, &body);
    let at = |v: &[f64], q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    (
        at(&through_guest, 0.5),
        at(&through_guest, 0.99),
        at(&plain, 0.5),
        at(&plain, 0.99),
    )
}

/// Run `f` with this thread, and every thread and process it starts
/// (they inherit its affinity), on the first CPU it may use; then put the
/// thread's affinity back.
#[allow(unsafe_code)]
fn on_one_cpu<T>(f: impl FnOnce() -> T) -> T {
    let size = std::mem::size_of::<libc::cpu_set_t>();
    let set_affinity = |set: &libc::cpu_set_t| {
        // SAFETY: `set` is a valid `cpu_set_t` of `size` bytes, read for
        // the calling thread (pid 0) only.
        let done = unsafe { libc::sched_setaffinity(0, size, set) };
        assert_eq!(
            done,
            0,
            "sched_setaffinity: {}",
            std::io::Error::last_os_error()
        );
    };
    // SAFETY: `cpu_set_t` is plain bits, for which zeros are the empty set;
    // the calls write and read only the sets given, of `size` bytes.
    let (before, one) = unsafe {
        let mut before: libc::cpu_set_t = std::mem::zeroed();
        let got = libc::sched_getaffinity(0, size, &mut before);
        assert_eq!(
            got,
            0,
            "sched_getaffinity: {}",
            std::io::Error::last_os_error()
        );
        let first = (0..libc::CPU_SETSIZE as usize)
            .find(|&cpu| libc::CPU_ISSET(cpu, &before))
            .expect("a CPU this thread may use");
        let mut one: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(first, &mut one);
        (before, one)
    };
    set_affinity(&one);
    let result = f();
    set_affinity(&before);
    result
}

/// P7: sequential action round trips through the gateway and Mosquitto,
/// desired changes to their acks, and a plain MQTT echo through the same
/// broker, in ms: p50 and p99 of each, as [action, action,
/// echo, echo, desired, desired].
fn round_trips(n: usize) -> [f64; 6] {
    let broker = Mosquitto::start("");
    let gw = Gateway::new()
        .section(&format!("[cloud]\nurl = \"{}\"\n", broker.url()))
        .app(
            "noop",
            &guest("bench-noop"),
            &root().join("tests/models/noop.json"),
            "tick_interval_ms = 60000",
        );
    let mut run = gw.start();
    run.wait_for("connected to the broker", Duration::from_secs(60));
    std::thread::sleep(Duration::from_millis(300));
    let timed = |request: &str, response: &str, body: &dyn Fn(usize) -> String| {
        timed_round_trips(&broker, request, response, n, body)
    };
    let wasmgate_rtt = timed(
        "wg/v1/test-gw/noop/action/echo/req",
        "wg/v1/test-gw/noop/action/echo/res",
        &|i| serde_json::json!({"id": i.to_string(), "argument": i}).to_string(),
    );
    // Each change a new version, so that each is applied and acked.
    let desired_rtt = timed(
        "wg/v1/test-gw/noop/twin/desired",
        "wg/v1/test-gw/noop/twin/ack",
        &|i| serde_json::json!({"version": i + 1, "attributes": {"level": i}}).to_string(),
    );
    run.stop();

    let _echo = start_echo(&broker);
    let echo_rtt = timed("bench/req", "bench/res", &|i| {
        serde_json::json!({"id": i.to_string(), "argument": i}).to_string()
    });
    let at = |v: &[f64], q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    let out = [
        at(&wasmgate_rtt, 0.5),
        at(&wasmgate_rtt, 0.99),
        at(&echo_rtt, 0.5),
        at(&echo_rtt, 0.99),
        at(&desired_rtt, 0.5),
        at(&desired_rtt, 0.99),
    ];
    eprintln!(
        "round trips: wasmgate p50 {:.3} p99 {:.3} ms; echo p50 {:.3} p99 {:.3} ms; desired to ack p50 {:.3} p99 {:.3} ms",
        out[0], out[1], out[2], out[3], out[4], out[5]
    );
    out
}

/// P8: seconds for `n` reads of one holding register, from a guest (timed
/// inside its one call) and from a bare tokio-modbus client, against the
/// same pymodbus server.
fn modbus_reads(n: u32) -> (f64, f64) {
    let peer = common::peers::ModbusPeer::start(&[1]);
    let endpoint = peer.endpoint();
    let broker = Mosquitto::start("");
    let gw = Gateway::new()
        .section(&format!("[cloud]\nurl = \"{}\"\n", broker.url()))
        .section(&format!(
            "[allow]\nmodbus = [{{ endpoint = \"{endpoint}\" }}]\n"
        ))
        .app(
            "probe",
            &guest("modbus-probe"),
            &root().join("tests/models/modbus.json"),
            &format!(
                "tick_interval_ms = 3600000\ncall_timeout_ms = 1000\nio_wait_ms = 600000\nio_requests_per_s = 100000\n\
                 grants = {{ modbus = [{{ endpoint = \"{endpoint}\", units = [1] }}] }}"
            ),
        );
    let mut run = gw.start();
    run.wait_connected(Duration::from_secs(60));
    let consumer = common::mqtt::Consumer::connect(&broker.settings("bench"), &["wg/v1/test-gw/#"]);
    // Warm the connection, then time the loop inside the guest.
    let ask = |id: &str, count: u32| {
        let answer = consumer.call(
            "wg/v1/test-gw/probe",
            "call",
            id,
            Some(serde_json::json!(format!("bench {endpoint} 1 0 {count}"))),
        );
        let text = answer["result"].as_str().unwrap_or_default().to_string();
        text.strip_prefix("ok ")
            .and_then(|ns| ns.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("bench call: {answer}"))
            / 1e9
    };
    ask("warm", 100);
    let guest_seconds = ask("timed", n);
    run.stop();

    let client = peer.client(1);
    client.holding_registers(0, 1);
    let started = Instant::now();
    client.read_many(0, n);
    (guest_seconds, started.elapsed().as_secs_f64())
}

/// P10: points/s at which `serve` stores a backlog that waits in the broker
/// for its session (SQLite; PostgreSQL; two instances on shared
/// subscriptions over PostgreSQL), and at which a bare client that stores
/// nothing drains the same backlog from the same broker.
fn serve_drains(points: u64) -> [f64; 4] {
    use common::serve::{Postgres, Serve};
    const PER_BATCH: u64 = 100;
    let batches = points / PER_BATCH;
    // Let the broker hand out many unacknowledged messages at once, so
    // that neither side is held to Mosquitto's default of 20.
    let broker = Mosquitto::start("max_inflight_messages 1000");
    let pg = Postgres::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let sqlite = format!("sqlite://{}/serve.db", dir.path().display());
    let (one, two) = (pg.database("one"), pg.database("two"));

    // Every session subscribes once, then goes away: the backlog then
    // waits in the broker for each of them.
    let mut sessions: Vec<(String, Vec<&str>)> = vec![
        (sqlite.clone(), vec!["--client-id", "serve-sqlite"]),
        (one.clone(), vec!["--client-id", "serve-pg"]),
        (
            two.clone(),
            vec!["--client-id", "serve-a", "--share", "bench"],
        ),
        (
            two.clone(),
            vec!["--client-id", "serve-b", "--share", "bench"],
        ),
    ];
    for (database, args) in &sessions {
        let mut serve = Serve::start(&broker.url(), database, args);
        serve.get("/stats");
        assert!(serve.running.stop().success());
    }
    let bare = BareDrain::subscribe(&broker);
    publish_backlog(&broker, batches, PER_BATCH);

    let bare_rate = bare.drain(points);
    let timed = |databases: &mut Vec<(String, Vec<&str>)>| {
        let started = Instant::now();
        let serves: Vec<Serve> = databases
            .iter()
            .map(|(database, args)| Serve::start(&broker.url(), database, args))
            .collect();
        let stored = || serves[0].stored_points();
        while stored() < points as i64 {
            std::thread::sleep(Duration::from_millis(10));
            assert!(
                started.elapsed() < Duration::from_secs(600),
                "serve stored {} of {points}",
                stored()
            );
        }
        points as f64 / started.elapsed().as_secs_f64()
    };
    let two_sessions = sessions.split_off(2);
    let pg_session = sessions.split_off(1);
    let sqlite_rate = timed(&mut sessions.clone());
    let pg_rate = timed(&mut pg_session.clone());
    let two_rate = timed(&mut two_sessions.clone());
    eprintln!(
        "serve: sqlite {sqlite_rate:.0}, postgres {pg_rate:.0}, two on postgres {two_rate:.0}, bare {bare_rate:.0} points/s"
    );
    [sqlite_rate, pg_rate, two_rate, bare_rate]
}

/// `batches` telemetry batches of `per_batch` points, each with its own
/// batch id, published at QoS 1 for the sessions waiting for them.
fn publish_backlog(broker: &Mosquitto, batches: u64, per_batch: u64) {
    let mut options = wasmgate::cloud::mqtt_options(&broker.settings("backlog-publisher"), true)
        .expect("options");
    options.set_inflight(100);
    let (client, mut connection) = rumqttc::Client::new(options, 256);
    let publisher = std::thread::spawn(move || {
        let start = wasmgate::value::now_ns();
        for b in 0..batches {
            let points: Vec<serde_json::Value> = (0..per_batch)
                .map(|i| {
                    serde_json::json!({
                        "time": start + (b * per_batch + i) * 1000,
                        "values": {"v": (b * per_batch + i) as f64 / 10.0}
                    })
                })
                .collect();
            let batch = serde_json::json!({"batch": format!("bench-{b}"), "points": points});
            client
                .publish(
                    "wg/v1/bench-gw/dev/telemetry/s",
                    rumqttc::QoS::AtLeastOnce,
                    false,
                    batch.to_string(),
                )
                .expect("publish");
        }
        client
    });
    wait_for_acks(&mut connection, batches);
    let _ = publisher.join();
}

/// A persistent session that takes the backlog as serve does (manual acks,
/// the same window) and stores nothing.
struct BareDrain {
    broker: BrokerSettingsOf,
}

type BrokerSettingsOf = wasmgate::config::BrokerSettings;

impl BareDrain {
    fn options(settings: &BrokerSettingsOf) -> rumqttc::MqttOptions {
        let mut options = wasmgate::cloud::mqtt_options(settings, false).expect("options");
        options.set_manual_acks(true).set_inflight(512);
        options
    }

    fn subscribe(broker: &Mosquitto) -> BareDrain {
        let settings = broker.settings("bare-drain");
        let (client, mut connection) = rumqttc::Client::new(Self::options(&settings), 64);
        client
            .subscribe("wg/v1/+/+/telemetry/+", rumqttc::QoS::AtLeastOnce)
            .expect("subscribe");
        for event in connection.iter() {
            if let Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))) = event {
                break;
            }
        }
        let _ = client.disconnect();
        for event in connection.iter() {
            if event.is_err()
                || matches!(
                    event,
                    Ok(rumqttc::Event::Outgoing(rumqttc::Outgoing::Disconnect))
                )
            {
                break;
            }
        }
        BareDrain { broker: settings }
    }

    /// Reconnect and take `points` points: points/s.
    fn drain(self, points: u64) -> f64 {
        let started = Instant::now();
        let (client, mut connection) = rumqttc::Client::new(Self::options(&self.broker), 4096);
        let mut seen = 0u64;
        for event in connection.iter() {
            if let Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(publish))) = event {
                seen += publish
                    .payload
                    .windows(7)
                    .filter(|w| w == b"\"time\":")
                    .count() as u64;
                client.try_ack(&publish).expect("ack");
                if seen >= points {
                    break;
                }
            }
        }
        points as f64 / started.elapsed().as_secs_f64()
    }
}

// ---- P11 and P12: a fleet, and serve's cost per gateway --------------------

/// How many gateways P11 runs.
const FLEET: usize = 100;

struct Fleet {
    rollout_s: f64,
    rss_mib: f64,
    solo_rollout_s: f64,
    solo_rss_mib: f64,
}

fn median_fleet(runs: usize) -> Fleet {
    let mut all: Vec<Fleet> = (0..runs).map(|_| fleet()).collect();
    all.sort_by(|a, b| a.rollout_s.total_cmp(&b.rollout_s));
    all.swap_remove(all.len() / 2)
}

/// `wasmgate ARGS`, which must succeed: its stdout.
fn wasmgate_ok(args: &[&str]) -> String {
    let out = std::process::Command::new(common::binary())
        .args(args)
        .output()
        .expect("wasmgate runs");
    assert!(
        out.status.success(),
        "wasmgate {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A member of the bench's fleet, labelled `ring`, at one tick a second.
fn fleet_member(broker: &Mosquitto, id: &str, ring: &str, public: &str) -> Gateway {
    common::fleet_member(&broker.url(), id, ring, public, 1000)
}

/// Roll `component` out to `ring` in one wave with no soak: seconds from
/// `create` to `completed`.
fn timed_rollout(
    serve: &common::serve::Serve,
    component: &std::path::Path,
    key: &std::path::Path,
    ring: &str,
) -> f64 {
    let server = serve.base.trim_end_matches("/api/v1").to_string();
    let selector = format!("ring={ring}");
    let started = Instant::now();
    let id = wasmgate_ok(&[
        "cloud",
        "rollout",
        "--server",
        &server,
        "create",
        "counter",
        component.to_str().expect("path"),
        "--key",
        key.to_str().expect("path"),
        "--selector",
        &selector,
        "--waves",
        "100%:0:0s",
    ]);
    let id = id.trim();
    let done = serve.wait_get(
        &format!("/rollouts/{id}"),
        Duration::from_secs(600),
        "the rollout",
        |r| r["state"] == "completed",
    );
    let elapsed = started.elapsed().as_secs_f64();
    // When each gateway turned healthy, from the rollout's creation: where
    // the time goes (a wall at the end, or one gateway after another).
    let created = done["created_at"].as_i64().unwrap_or(0);
    let mut healthy: Vec<i64> = done["gateways"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|g| g["updated_at"].as_i64())
        .map(|t| t - created)
        .collect();
    healthy.sort_unstable();
    let at = |q: f64| {
        healthy
            .get(((healthy.len() as f64 - 1.0) * q) as usize)
            .copied()
            .unwrap_or(0)
    };
    eprintln!(
        "rollout to {ring}: {elapsed:.1} s; gateways healthy after (ms) p10 {} p50 {} p90 {} last {}",
        at(0.1),
        at(0.5),
        at(0.9),
        at(1.0)
    );
    elapsed
}

/// The gateways `selector` matches, all online and running, as serve has them.
fn wait_online(serve: &common::serve::Serve, ring: &str, n: usize) {
    serve.wait_get(
        &format!("/gateways?selector=ring%3D{ring}"),
        Duration::from_secs(600),
        "the gateways online",
        |g| {
            g["gateways"].as_array().is_some_and(|a| {
                a.len() == n
                    && a.iter()
                        .all(|g| g["online"] == true && g["apps"][0]["state"] == "running")
            })
        },
    );
}

/// P11: one gateway, then a fleet, each rolled out to; their memory idle.
fn fleet() -> Fleet {
    let broker = Mosquitto::start("");
    let dir = tempfile::tempdir().expect("tempdir");
    let (key, public) = common::operator_key(dir.path());
    let v2 = dir.path().join("v2.wasm");
    let mut bytes = std::fs::read(guest("swap-counter")).expect("read");
    // A custom section (id 0, name "bench"): the same app, another digest.
    bytes.extend_from_slice(&[0, 7, 5, b'b', b'e', b'n', b'c', b'h', 1]);
    std::fs::write(&v2, bytes).expect("write");
    let database = format!("sqlite://{}", dir.path().join("serve.db").display());
    let serve = common::serve::Serve::start(&broker.url(), &database, &[]);

    let solo = fleet_member(&broker, "solo", "solo", &public);
    let mut solo_run = solo.start();
    solo_run.wait_running("counter", Duration::from_secs(60));
    wait_online(&serve, "solo", 1);
    std::thread::sleep(Duration::from_secs(3));
    let solo_rss_mib = rss_mib(solo_run.pid());
    let solo_rollout_s = timed_rollout(&serve, &v2, &key, "solo");
    solo_run.stop();

    let members: Vec<Gateway> = (1..=FLEET)
        .map(|i| fleet_member(&broker, &format!("gw-{i}"), "fleet", &public))
        .collect();
    let mut runs: Vec<common::Running> = members.iter().map(Gateway::start).collect();
    for run in &mut runs {
        run.wait_running("counter", Duration::from_secs(600));
    }
    wait_online(&serve, "fleet", FLEET);
    std::thread::sleep(Duration::from_secs(3));
    let rss_mib: f64 = runs.iter().map(|r| rss_mib(r.pid())).sum();
    let rollout_s = timed_rollout(&serve, &v2, &key, "fleet");
    for run in &mut runs {
        run.stop();
    }
    eprintln!(
        "fleet: rollout {rollout_s:.1} s (solo {solo_rollout_s:.1} s), {rss_mib:.0} MiB (solo {solo_rss_mib:.1} MiB)"
    );
    Fleet {
        rollout_s,
        rss_mib,
        solo_rollout_s,
        solo_rss_mib,
    }
}

const STATUS_GATEWAYS: usize = 1000;
const STATUS_MESSAGES: usize = 20_000;

/// A process's CPU time (user + system) so far, in milliseconds.
fn cpu_ms(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    // After the command name (which may hold spaces): fields 14 and 15.
    let rest = &stat[stat.rfind(')').expect("stat") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 =
        fields[11].parse::<f64>().expect("utime") + fields[12].parse::<f64>().expect("stime");
    let per_second = rustix_clock_ticks();
    ticks * 1000.0 / per_second
}

fn rustix_clock_ticks() -> f64 {
    let out = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .expect("getconf");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(100.0)
}

/// P12: serve's CPU (and Mosquitto's, the baseline) per 1,000 status
/// messages: a real gateway's status, sent for `STATUS_GATEWAYS` gateway
/// ids in turn until `STATUS_MESSAGES` went out.
fn status_cpu() -> [f64; 2] {
    let broker = Mosquitto::start("");
    let dir = tempfile::tempdir().expect("tempdir");
    // A real status, from a real gateway.
    let consumer =
        common::mqtt::Consumer::connect(&broker.settings("status-capture"), &["wg/v1/+/+/status"]);
    let (_, public) = common::operator_key(dir.path());
    let gw = fleet_member(&broker, "model-gw", "x", &public);
    let mut run = gw.start();
    run.wait_running("counter", Duration::from_secs(60));
    let status = consumer.wait_json(
        "wg/v1/model-gw/model-gw/status",
        Duration::from_secs(60),
        |s| s["apps"][0]["state"] == "running",
    );
    run.stop();

    let database = format!("sqlite://{}", dir.path().join("serve.db").display());
    let serve = common::serve::Serve::start(&broker.url(), &database, &[]);
    serve.get("/stats");
    let before = serve.get("/stats")["messages"].as_u64().unwrap_or(0);
    let (serve_pid, broker_pid) = (serve.running.pid(), broker.pid().expect("mosquitto runs"));
    let (serve_cpu, broker_cpu) = (cpu_ms(serve_pid), cpu_ms(broker_pid));
    let mut options =
        wasmgate::cloud::mqtt_options(&broker.settings("status-publisher"), true).expect("options");
    options.set_inflight(100);
    let (client, mut connection) = rumqttc::Client::new(options, 256);
    let publisher = std::thread::spawn(move || {
        let start = wasmgate::value::now_ns();
        let mut status = status;
        for i in 0..STATUS_MESSAGES {
            let gateway = format!("gw-{:04}", i % STATUS_GATEWAYS);
            let topic = format!("wg/v1/{gateway}/{gateway}/status");
            // Each newer than the one before, as a gateway's are.
            status["time"] = serde_json::json!(start + i as u64 * 1000);
            client
                .publish(topic, rumqttc::QoS::AtLeastOnce, true, status.to_string())
                .expect("publish");
        }
        client
    });
    wait_for_acks(&mut connection, STATUS_MESSAGES as u64);
    let _ = publisher.join();
    serve.wait_get(
        "/stats",
        Duration::from_secs(600),
        "every status taken",
        |s| {
            s["messages"].as_u64().unwrap_or(0) >= before + STATUS_MESSAGES as u64
                && s["commits"].as_u64().is_some()
        },
    );
    // The last commit: nothing pending (its counter stops moving).
    let mut last = serve.get("/stats")["commits"].clone();
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let now = serve.get("/stats")["commits"].clone();
        if now == last {
            break;
        }
        last = now;
    }
    let serve_ms = (cpu_ms(serve_pid) - serve_cpu) / (STATUS_MESSAGES as f64 / 1000.0);
    let broker_ms = (cpu_ms(broker_pid) - broker_cpu) / (STATUS_MESSAGES as f64 / 1000.0);
    eprintln!("status: serve {serve_ms:.1} ms, mosquitto {broker_ms:.1} ms per 1000");
    [serve_ms, broker_ms]
}

/// Concurrent clients of P13.
const HTTP_CLIENTS: usize = 4;

/// `requests` GETs to `port`, from [`HTTP_CLIENTS`] threads each on its own
/// kept-alive connection: requests a second, and the median latency in ms.
fn http_load(port: u16, requests: usize) -> (f64, f64) {
    let started = Instant::now();
    let threads: Vec<_> = (0..HTTP_CLIENTS)
        .map(|_| {
            std::thread::spawn(move || {
                let agent: ureq::Agent = ureq::Agent::config_builder()
                    .timeout_global(Some(Duration::from_secs(10)))
                    .build()
                    .into();
                let mut latencies = Vec::with_capacity(requests / HTTP_CLIENTS);
                for _ in 0..requests / HTTP_CLIENTS {
                    let sent = Instant::now();
                    let body = agent
                        .get(&format!("http://127.0.0.1:{port}/rooms/3"))
                        .call()
                        .expect("an answer")
                        .body_mut()
                        .read_to_string()
                        .expect("a body");
                    assert!(body.starts_with("hello from spin"), "{body}");
                    latencies.push(sent.elapsed());
                }
                latencies
            })
        })
        .collect();
    let mut latencies: Vec<Duration> = threads
        .into_iter()
        .flat_map(|t| t.join().expect("client"))
        .collect();
    let elapsed = started.elapsed();
    latencies.sort();
    (
        latencies.len() as f64 / elapsed.as_secs_f64(),
        latencies[latencies.len() / 2].as_secs_f64() * 1000.0,
    )
}

/// P13: the gateway serving spin-hello, then the same component behind a
/// bare server in this process; each warmed up with 200 requests first.
fn http_serving(requests: usize) -> [f64; 4] {
    let port = common::free_port();
    let grant = format!(
        "serve_http = [{{ address = \"127.0.0.1:{port}\", max_in_flight = {HTTP_CLIENTS} }}]"
    );
    let gw = Gateway::new().section(&format!("[allow]\n{grant}\n")).app(
        "page",
        &guest("spin-hello"),
        &root().join("tests/models/counter.json"),
        &format!("[app.grants]\n{grant}\n"),
    );
    let mut run = gw.start();
    run.wait_running("page", Duration::from_secs(60));
    http_load(port, 200);
    let (gw_rps, gw_p50) = http_load(port, requests);
    run.stop();

    let port = common::free_port();
    let runtime = tokio::runtime::Runtime::new().expect("tokio");
    let stop = tokio_util::sync::CancellationToken::new();
    // Bound before the clients start.
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind(("127.0.0.1", port)))
        .expect("bind");
    let server = runtime.spawn(bare_http_server(listener, stop.clone()));
    http_load(port, 200);
    let (bare_rps, bare_p50) = http_load(port, requests);
    stop.cancel();
    runtime.block_on(server).expect("server");
    [gw_rps, gw_p50, bare_rps, bare_p50]
}

/// What a bare wasi:http server keeps per request.
struct BareHttp {
    wasi: wasmtime_wasi::WasiCtx,
    http: wasmtime_wasi_http::WasiHttpCtx,
    table: wasmtime::component::ResourceTable,
}

impl wasmtime_wasi::WasiView for BareHttp {
    fn ctx(&mut self) -> wasmtime_wasi::WasiCtxView<'_> {
        wasmtime_wasi::WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl wasmtime_wasi_http::WasiHttpView for BareHttp {
    fn http(&mut self) -> wasmtime_wasi_http::WasiHttpCtxView<'_> {
        wasmtime_wasi_http::WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: Default::default(),
        }
    }
}

/// spin-hello served as wasmtime-wasi-http's documentation serves a
/// component: hyper's HTTP/1.1 server, a `ProxyPre`, a store and an
/// instance per request, no limits, no deadline.
async fn bare_http_server(
    listener: tokio::net::TcpListener,
    stop: tokio_util::sync::CancellationToken,
) {
    use wasmtime_wasi_http::WasiHttpView as _;
    let engine = bare_engine();
    let component =
        wasmtime::component::Component::from_file(&engine, guest("spin-hello")).expect("component");
    let mut linker = wasmtime::component::Linker::new(&engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker).expect("wasi");
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker).expect("http");
    let pre = wasmtime_wasi_http::p2::bindings::ProxyPre::new(
        linker.instantiate_pre(&component).expect("pre"),
    )
    .expect("proxy");
    let connections = tokio_util::task::TaskTracker::new();
    loop {
        let (stream, _) = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => accepted.expect("accept"),
        };
        let pre = pre.clone();
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let pre = pre.clone();
                async move {
                    let mut store = wasmtime::Store::new(
                        pre.engine(),
                        BareHttp {
                            wasi: wasmtime_wasi::WasiCtx::builder().build(),
                            http: wasmtime_wasi_http::WasiHttpCtx::new(),
                            table: Default::default(),
                        },
                    );
                    store.set_epoch_deadline(u64::MAX);
                    let (sender, receiver) = tokio::sync::oneshot::channel();
                    let scheme = wasmtime_wasi_http::p2::bindings::http::types::Scheme::Http;
                    let request = store
                        .data_mut()
                        .http()
                        .new_incoming_request(scheme, request)?;
                    let out = store.data_mut().http().new_response_outparam(sender)?;
                    let task = tokio::spawn(async move {
                        let proxy = pre.instantiate_async(&mut store).await?;
                        proxy
                            .wasi_http_incoming_handler()
                            .call_handle(&mut store, request, out)
                            .await
                    });
                    // The body may still be streaming from the task.
                    match receiver.await {
                        Ok(Ok(response)) => Ok(response),
                        _ => {
                            let _ = task.await;
                            Err(wasmtime::Error::msg("no response"))
                        }
                    }
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
    connections.close();
    connections.wait().await;
}

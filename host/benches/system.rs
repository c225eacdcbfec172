//! Whole-system benchmarks: the real `wasmgate` binary, real guests, a real
//! Mosquitto, each figure next to a baseline measured in the same run.
//!
//! `cargo bench -p wasmgate --bench system` (add `-- quick` for one run of
//! each instead of the median of three). The table it prints goes into
//! BENCHMARKS.md. These measure; they never fail on a number.

#[path = "../../tests/common/mod.rs"]
mod common;

use common::mqtt::Mosquitto;
use common::{Gateway, guest, root};
use rusqlite::params;
use std::time::{Duration, Instant};

fn main() {
    let quick = std::env::args().any(|a| a == "quick");
    let runs = if quick { 1 } else { 3 };
    let mut rows: Vec<[String; 4]> = Vec::new();

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

    let backlog = 1_000_000u64;
    let (drain, baseline) = drain(backlog, runs);
    rows.push([
        "P3".into(),
        format!("backlog drain to a local Mosquitto, {backlog} points"),
        format!("{} points/s", thousands(drain)),
        format!(
            "Mosquitto alone, QoS 1 publishes of the same size: {} points/s",
            thousands(baseline)
        ),
    ]);

    let (p50, p99, gap, lost, swaps) = hot_swaps(20);
    rows.push([
        "P5".into(),
        format!("hot swap under a stream of actions (1 per ms), {swaps} swaps"),
        format!("swap pause p50 {p50:.0} µs, p99 {p99:.0} µs; longest gap between answers {gap:.1} ms; {lost} events lost"),
        "—".into(),
    ]);

    println!("\n| id | what | wasmgate | baseline (same run) |\n|---|---|---|---|");
    for [id, what, figure, base] in rows {
        println!("| {id} | {what} | {figure} | {base} |");
    }
}

fn median(runs: usize, mut f: impl FnMut() -> f64) -> f64 {
    let mut v: Vec<f64> = (0..runs).map(|_| f()).collect();
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
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

/// Points per second from the guest's first tick until every point is
/// committed to SQLite.
fn ingest(total: u64) -> f64 {
    let gw = ingest_gateway(total);
    let mut run = gw.start();
    run.wait_for("app started", Duration::from_secs(60));
    let started = Instant::now();
    while committed_points(&gw) < total {
        std::thread::sleep(Duration::from_millis(5));
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "ingest did not finish"
        );
    }
    let rate = total as f64 / started.elapsed().as_secs_f64();
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
fn drain(total: u64, runs: usize) -> (f64, f64) {
    let mut rates = Vec::new();
    let mut baselines = Vec::new();
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
        eprintln!("drain: {rate:.0} points/s");
        rates.push(rate);

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
        eprintln!("mosquitto baseline: {baseline:.0} points/s ({message_size} byte messages)");
        baselines.push(baseline);
    }
    rates.sort_by(|a, b| a.total_cmp(b));
    baselines.sort_by(|a, b| a.total_cmp(b));
    (rates[rates.len() / 2], baselines[baselines.len() / 2])
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
    let mut acked = 0u64;
    for event in connection.iter() {
        if let Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))) = event {
            acked += 1;
            if acked == count {
                break;
            }
        }
    }
    let _ = publisher.join();
}

/// Counts messages and points (`"time":` occurrences) on a subscription.
struct PointCounter {
    points: std::sync::Arc<std::sync::atomic::AtomicU64>,
    messages: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl PointCounter {
    fn start(broker: &Mosquitto, filter: &str) -> PointCounter {
        use std::sync::atomic::Ordering;
        let options = wasmgate::cloud::mqtt_options(
            &broker.settings(&format!("counter-{}", wasmgate::cloud::random_u64())),
            true,
        )
        .expect("options");
        let (client, mut connection) = rumqttc::Client::new(options, 64);
        client
            .subscribe(filter, rumqttc::QoS::AtLeastOnce)
            .expect("subscribe");
        let points = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let messages = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (p, m) = (points.clone(), messages.clone());
        let (ready_tx, ready) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _client = client;
            for event in connection.iter() {
                match event {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))) => {
                        let _ = ready_tx.send(());
                    }
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(publish))) => {
                        let n = publish
                            .payload
                            .windows(7)
                            .filter(|w| w == b"\"time\":")
                            .count() as u64;
                        p.fetch_add(n, Ordering::Relaxed);
                        m.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(_) => {}
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        });
        let _ = ready.recv_timeout(Duration::from_secs(10));
        PointCounter { points, messages }
    }

    fn points(&self) -> u64 {
        self.points.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn messages(&self) -> u64 {
        self.messages.load(std::sync::atomic::Ordering::Relaxed)
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
            for event in connection.iter() {
                if let Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) = event
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

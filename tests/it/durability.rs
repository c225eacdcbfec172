//! The crash test: a guest records a numbered sequence while the gateway is
//! killed with SIGKILL at random moments, the broker comes and goes, and a
//! consumer listens part of the time. Afterwards every point that the
//! durability promise covers (recorded at least one flush interval, plus a
//! margin, before the kill) must have been delivered, in order, with
//! duplicates only as resends of a batch with the same id.
//!
//! 30 rounds here; `tests/crash-soak ROUNDS` runs a longer one.

use crate::common::mqtt::{Consumer, Mosquitto};
use crate::common::{Gateway, guest, model};
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

/// The default flush interval plus a generous margin for scheduling.
const PROMISE: Duration = Duration::from_millis(50 + 250);

/// A small deterministic generator, seeded from the clock and printed, so a
/// failing run can be repeated with WASMGATE_CRASH_SEED.
struct Rng(u64);

impl Rng {
    fn next(&mut self, below: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % below
    }
}

/// Numbers whose "recorded through N" line was read before `cutoff`.
fn recorded_before(run: &crate::common::Running, cutoff: SystemTime) -> i64 {
    run.timed_lines()
        .iter()
        .filter(|(t, _)| *t <= cutoff)
        .filter_map(|(_, l)| {
            l.split("recorded through ")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .max()
        .unwrap_or(0)
}

#[test]
fn every_point_within_the_promise_survives_repeated_kill_9() {
    let rounds: u64 = std::env::var("WASMGATE_CRASH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(30);
    let seed: u64 = std::env::var("WASMGATE_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
                | 1
        });
    eprintln!("crash test: {rounds} rounds, seed {seed} (WASMGATE_CRASH_SEED={seed} repeats it)");
    let mut rng = Rng(seed);

    let mut broker = Mosquitto::start("");
    let consumer = Consumer::connect(
        &broker.settings("consumer"),
        &["wg/v1/test-gw/seq/telemetry/#"],
    );
    let gw = Gateway::new()
        .section(&format!(
            "[cloud]\nurl = \"{}\"\nbackoff_initial_ms = 50\nbackoff_max_ms = 200\n",
            broker.url()
        ))
        .app(
            "seq",
            &guest("sequence-recorder"),
            &model("sequence"),
            "tick_interval_ms = 5\n[app.config]\nper_tick = 20",
        );
    gw.write_config();

    // Per round: the first number it recorded and the last the promise covers.
    let mut promised: Vec<(i64, i64)> = Vec::new();
    let mut broker_up = true;
    for round in 0..rounds {
        // The broker goes away for a few rounds at a time.
        if rng.next(5) == 0 {
            if broker_up {
                broker.stop();
            } else {
                broker.restart();
            }
            broker_up = !broker_up;
        }
        let mut run = crate::common::Running::spawn(&gw.config_path());
        let started = run.wait_for("sequence-recorder starting at ", Duration::from_secs(30));
        let first: i64 = started
            .split("starting at ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next()?.parse().ok())
            .expect("first number");
        std::thread::sleep(Duration::from_millis(100 + rng.next(600)));
        let killed_at = SystemTime::now();
        run.kill9();
        // Numbers claimed after the promise's cut-off may be lost; earlier
        // ones may not.
        let covered = recorded_before(&run, killed_at - PROMISE);
        if covered >= first {
            promised.push((first, covered));
        }
        eprintln!(
            "round {round}: broker {}, promised {first}..={covered}",
            if broker_up { "up" } else { "down" }
        );
    }
    let promised_points: i64 = promised.iter().map(|(a, b)| b - a + 1).sum();
    assert!(
        promised_points > 1000,
        "the rounds recorded too little to prove anything ({promised_points})"
    );
    let last_promised = promised.iter().map(|(_, b)| *b).max().unwrap_or(0);

    // Let the last run drain everything.
    if !broker_up {
        broker.restart();
    }
    let mut run = gw.start();
    run.wait_connected(Duration::from_secs(30));
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let delivered = loop {
        let delivered = delivered(&consumer);
        let complete = promised.iter().all(|(_, b)| delivered.contains(b));
        if (complete && delivered.last().copied() >= Some(last_promised))
            || std::time::Instant::now() > deadline
        {
            break delivered;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(run.stop().success());

    assert!(
        delivered.windows(2).all(|w| w[0] < w[1]),
        "out of order or duplicated beyond batch ids"
    );
    // For the report: what is still in the outbox.
    let left: Vec<i64> = gw
        .outbox_points(None)
        .iter()
        .map(|p| p["values"]["n"].as_i64().expect("n"))
        .collect();
    eprintln!(
        "{} points still in the outbox; delivered {} distinct",
        left.len(),
        delivered.len()
    );
    let missing: Vec<i64> = promised
        .iter()
        .flat_map(|&(a, b)| a..=b)
        .filter(|n| delivered.binary_search(n).is_err())
        .collect();
    assert!(
        missing.is_empty(),
        "lost {} promised points, first {:?} ({} of them still in the outbox)",
        missing.len(),
        &missing[..missing.len().min(10)],
        missing.iter().filter(|n| left.contains(n)).count()
    );
}

/// The `n`s delivered, de-duplicated by batch id, in arrival order. A batch
/// id seen twice must carry the same points.
fn delivered(consumer: &Consumer) -> Vec<i64> {
    let mut seen: BTreeMap<String, Value> = BTreeMap::new();
    let mut out = Vec::new();
    for message in consumer.on("wg/v1/test-gw/seq/telemetry/seq") {
        let batch = message.json();
        let id = batch["batch"].as_str().expect("batch id").to_string();
        if let Some(before) = seen.get(&id) {
            assert_eq!(
                before, &batch["points"],
                "batch {id} resent with different points"
            );
            continue;
        }
        out.extend(
            batch["points"]
                .as_array()
                .expect("points")
                .iter()
                .map(|p| p["values"]["n"].as_i64().expect("n")),
        );
        seen.insert(id, batch["points"].clone());
    }
    out
}

//! How costs grow with the work (issue 20's scale curves): apps, registered
//! devices and series per app, each measured at three sizes in one run. A
//! curve's baseline is its smallest size, measured in the same run, and the
//! devices' CPU is set against Mosquitto's for the same messages.

use super::common::mqtt::Mosquitto;
use super::common::{Gateway, guest, root};
use super::{cpu_ms, ingest_rate, roundtrip_apps, rss_mib, thousands};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The sizes of each curve.
pub const APP_COUNTS: [usize; 3] = [1, 10, 100];
pub const DEVICE_COUNTS: [usize; 3] = [100, 1_000, 10_000];
pub const SERIES_COUNTS: [usize; 3] = [1, 100, 1_000];

/// Points recorded at every size of the apps curve, shared among the apps.
const APPS_INGEST_POINTS: u64 = 1_000_000;
/// Points recorded at every size of the series curve, in batches of
/// [`SERIES_BATCH`] spread over the series in turn.
const SERIES_POINTS: u64 = 200_000;
const SERIES_BATCH: u64 = 100;
/// The most sensors one bus app reads in the devices curve.
const BUS_APP_SENSORS: usize = 1_000;
/// How long each curve's steady state is watched.
const WINDOW: Duration = Duration::from_secs(10);

/// One size of the apps curve.
pub struct AppsPoint {
    /// Resident memory with every app ticking.
    pub rss_mib: f64,
    /// The 99th percentile of the time between two ticks of one app
    /// (nominal 100 ms), over every app.
    pub tick_p99_ms: f64,
    /// Ticks seen in the window, over every app.
    pub ticks: usize,
    /// Points a second recorded by all the apps together.
    pub ingest: f64,
}

/// The seconds since midnight of a log line's timestamp
/// (`2026-12-03T14:17:12.520122Z  INFO ...`).
fn log_seconds(line: &str) -> Option<f64> {
    let stamp = line.split_whitespace().find(|w| w.ends_with('Z'))?;
    let time = stamp.split('T').nth(1)?.trim_end_matches('Z');
    let mut parts = time.split(':');
    let hours: f64 = parts.next()?.parse().ok()?;
    let minutes: f64 = parts.next()?.parse().ok()?;
    let seconds: f64 = parts.next()?.parse().ok()?;
    Some(hours * 3600.0 + minutes * 60.0 + seconds)
}

/// The value of `key=` in a log line, up to the next space.
fn word_after<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let start = line.find(key)? + key.len();
    line[start..].split_whitespace().next()
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// `n` apps: first `n` storage-roundtrip apps ticking every 100 ms (each
/// tick writes storage, records a point and reports), watched for
/// [`WINDOW`]; then `n` bench-ingest apps recording
/// [`APPS_INGEST_POINTS`] among them.
pub fn apps(n: usize) -> AppsPoint {
    // (The gateway owns its data directory: kept until the run ends.)
    let gw = roundtrip_apps(n, 100);
    let mut run = gw.start();
    run.wait_until(Duration::from_secs(600), "every app ticking", |lines| {
        let ticking = lines
            .iter()
            .filter(|l| l.contains("counter=3 roundtrip="))
            .count();
        (ticking >= n).then_some(())
    });
    let from = run.lines().len();
    std::thread::sleep(WINDOW);
    let rss = rss_mib(run.pid());
    let lines = run.lines();
    run.stop();
    let mut last: HashMap<&str, f64> = HashMap::new();
    let mut gaps = Vec::new();
    for line in lines[from..].iter().filter(|l| l.contains("roundtrip=")) {
        let (Some(at), Some(app)) = (log_seconds(line), word_after(line, "app=")) else {
            continue;
        };
        // (A gap across midnight is left out.)
        if let Some(before) = last.insert(app, at).filter(|b| at >= *b) {
            gaps.push((at - before) * 1000.0);
        }
    }
    gaps.sort_by(f64::total_cmp);

    let share = APPS_INGEST_POINTS / n as u64;
    let mut gw = Gateway::new();
    for i in 0..n {
        gw = gw.app(
            &format!("ingest{i}"),
            &guest("bench-ingest"),
            &root().join("tests/models/bench.json"),
            &format!(
                "tick_interval_ms = 1\ncall_timeout_ms = 60000\n[app.config]\ntotal = {share}\nbatch = 1000\ncalls = 20"
            ),
        );
    }
    let total = share * n as u64;
    let mut run = gw.start();
    let ingest = ingest_rate(&mut run, &gw, total);
    run.stop();
    let point = AppsPoint {
        rss_mib: rss,
        tick_p99_ms: percentile(&gaps, 0.99),
        ticks: gaps.len(),
        ingest,
    };
    eprintln!(
        "apps {n}: {:.1} MiB, tick gap p99 {:.1} ms of {} ticks, ingest {:.0} points/s",
        point.rss_mib, point.tick_p99_ms, point.ticks, point.ingest
    );
    point
}

/// One size of the registered devices curve.
pub struct DevicesPoint {
    /// The gateway's CPU over the window, in % of one core.
    pub gateway_cpu: f64,
    /// Mosquitto's, routing what the gateway sent, in % of one core.
    pub broker_cpu: f64,
    /// From a report (its `time`) to the reported state reaching a
    /// subscriber, in ms.
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
    /// Reported states received in the window, a second.
    pub reports_per_s: f64,
    /// Devices whose reported state was received in the window.
    pub devices_heard: usize,
    /// From every sensor registered to the first reported state received:
    /// the backlog the start left (registrations, models) goes first.
    pub first_report_s: f64,
    pub rss_mib: f64,
}

/// The bus-gateway example with `n` sensors (in apps of at most
/// [`BUS_APP_SENSORS`]), each registered as a device, recording a point and
/// reporting once a second, against Mosquitto: once
/// every device has reported, [`WINDOW`] of the gateway's and the broker's
/// CPU, and the latency of every reported state received. The tests'
/// Mosquitto turns Nagle's algorithm off; `stock_broker` leaves it on, as a
/// Mosquitto installed with its defaults has it.
pub fn devices(n: usize, stock_broker: bool) -> DevicesPoint {
    let broker = Mosquitto::start(if stock_broker {
        "set_tcp_nodelay false"
    } else {
        ""
    });
    let example = root().join("examples/busgateway");
    // The example's bus counts at most 1,000 sensors in its model.
    let dir = tempfile::tempdir().expect("tempdir");
    let bus_model = dir.path().join("bus.model.json");
    let model = std::fs::read_to_string(example.join("bus.model.json")).expect("bus model");
    std::fs::write(&bus_model, model.replace("[0, 1000]", "[0, 1000000]")).expect("bus model");

    // Every reported state: when it arrived, its latency, its device.
    type Seen = Vec<(Instant, f64, String)>;
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let mut options = wasmgate::cloud::mqtt_options(&broker.settings("latency"), true)
        .expect("subscriber options");
    options.set_max_packet_size(1 << 20, 1 << 20);
    let (subscriber, mut connection) = rumqttc::Client::new(options, 1024);
    subscriber
        .subscribe("wg/v1/test-gw/+/twin/reported", rumqttc::QoS::AtMostOnce)
        .expect("subscribe");
    let receiver = {
        let seen = seen.clone();
        std::thread::spawn(move || {
            for event in connection.iter() {
                match event {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                        let now = wasmgate::value::now_ns();
                        let Ok(json) = serde_json::from_slice::<serde_json::Value>(&p.payload)
                        else {
                            continue;
                        };
                        let Some(time) = json["time"].as_u64() else {
                            continue;
                        };
                        let latency = now.saturating_sub(time) as f64 / 1e6;
                        let device = p.topic.split('/').nth(3).unwrap_or("").to_string();
                        seen.lock()
                            .expect("seen")
                            .push((Instant::now(), latency, device));
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
        })
    };

    // An app may report 1,000 times a second (a burst of 5,000) and
    // register 100 devices a second (a burst of 1,000): past 1,000 sensors,
    // the bus is split among several apps, as it would have to be.
    let apps = n.div_ceil(BUS_APP_SENSORS);
    let mut gw = Gateway::new().section(&format!("[cloud]\nurl = \"{}\"\n", broker.url()));
    for i in 0..apps {
        let sensors = n / apps;
        gw = gw.app(
            &format!("bus{i}"),
            &guest("busgateway"),
            &bus_model,
            &format!(
                "tick_interval_ms = 1000\ncall_timeout_ms = 300000\nmax_devices = {sensors}\n\
                 [app.models]\nsensor = \"{}\"\n[app.config]\nsensors = {sensors}",
                example.join("sensor.model.json").display()
            ),
        );
    }
    let mut run = gw.start();
    // Every sensor registered; then a few seconds to settle, and the
    // window. (Not until every device has reported: past what the gateway
    // keeps up with, that is never, and the window shows it.)
    run.wait_until(Duration::from_secs(600), "every bus scanned", |lines| {
        let scanned = lines
            .iter()
            .filter(|l| l.contains(&format!(", {} registered", n / apps)))
            .filter(|l| l.contains("bus scanned"))
            .count();
        (scanned >= apps).then_some(())
    });
    // The start's backlog (each device's registration and model) is sent
    // before the reports that came after it: the window opens once reports
    // flow, so it measures the steady state. How long that took is a
    // figure of its own.
    let scanned = Instant::now();
    while seen.lock().expect("seen").is_empty() && scanned.elapsed() < FIRST_REPORT_WITHIN {
        std::thread::sleep(Duration::from_millis(20));
    }
    let first_report_s = seen
        .lock()
        .expect("seen")
        .first()
        .map_or(f64::NAN, |(at, _, _)| {
            at.saturating_duration_since(scanned).as_secs_f64()
        });
    std::thread::sleep(Duration::from_secs(3));
    let (gateway_pid, broker_pid) = (run.pid(), broker.pid().expect("mosquitto runs"));
    let (gateway_before, broker_before) = (cpu_ms(gateway_pid), cpu_ms(broker_pid));
    let from = Instant::now();
    std::thread::sleep(WINDOW);
    let took = from.elapsed();
    let gateway_cpu = (cpu_ms(gateway_pid) - gateway_before) / took.as_secs_f64() / 1000.0 * 100.0;
    let broker_cpu = (cpu_ms(broker_pid) - broker_before) / took.as_secs_f64() / 1000.0 * 100.0;
    let rss = rss_mib(gateway_pid);
    let (mut latencies, devices): (Vec<f64>, HashSet<String>) = seen
        .lock()
        .expect("seen")
        .iter()
        .filter(|(at, _, _)| *at >= from && *at <= from + took)
        .map(|(_, latency, device)| (*latency, device.clone()))
        .unzip();
    latencies.sort_by(f64::total_cmp);
    run.stop();
    drop(subscriber);
    drop(broker);
    let _ = receiver.join();
    let point = DevicesPoint {
        gateway_cpu,
        broker_cpu,
        latency_p50_ms: percentile(&latencies, 0.5),
        latency_p99_ms: percentile(&latencies, 0.99),
        reports_per_s: latencies.len() as f64 / took.as_secs_f64(),
        devices_heard: devices.len(),
        first_report_s,
        rss_mib: rss,
    };
    eprintln!(
        "devices {n}: first report {:.1} s after the scan; gateway {:.1} % of a core, broker {:.1} %; report to subscriber p50 {:.1} ms, p99 {:.1} ms; {:.0} reports/s from {} devices; {:.1} MiB",
        point.first_report_s,
        point.gateway_cpu,
        point.broker_cpu,
        point.latency_p50_ms,
        point.latency_p99_ms,
        point.reports_per_s,
        point.devices_heard,
        point.rss_mib
    );
    point
}

/// How long S2 waits for the first report after every sensor registered.
const FIRST_REPORT_WITHIN: Duration = Duration::from_secs(120);

/// One size of the series curve.
pub struct SeriesPoint {
    pub ingest: f64,
    pub rss_mib: f64,
}

/// One app recording [`SERIES_POINTS`] into `n` series of one model, a
/// batch of [`SERIES_BATCH`] to each in turn; resident memory once every
/// point is committed.
pub fn series(n: usize) -> SeriesPoint {
    let dir = tempfile::tempdir().expect("tempdir");
    let model = dir.path().join("series.json");
    let fields = serde_json::json!({"fields": {"v": {"type": "number"}, "n": {"type": "integer"}}});
    let all: serde_json::Map<String, serde_json::Value> = (0..n)
        .map(|i| (series_name(i, n), fields.clone()))
        .collect();
    std::fs::write(
        &model,
        serde_json::json!({"name": "urn:wasmgate:bench-series", "series": all}).to_string(),
    )
    .expect("model");
    let gw = Gateway::new().app(
        "bench",
        &guest("bench-ingest"),
        &model,
        &format!(
            "tick_interval_ms = 1\ncall_timeout_ms = 60000\n[app.config]\ntotal = {SERIES_POINTS}\nbatch = {SERIES_BATCH}\ncalls = 100\nseries = {n}"
        ),
    );
    let mut run = gw.start();
    let ingest = ingest_rate(&mut run, &gw, SERIES_POINTS);
    let rss = rss_mib(run.pid());
    run.stop();
    eprintln!("series {n}: {} points/s, {rss:.1} MiB", thousands(ingest));
    SeriesPoint {
        ingest,
        rss_mib: rss,
    }
}

/// The name bench-ingest records its `i`th series under when it has `n`.
fn series_name(i: usize, n: usize) -> String {
    if n == 1 {
        "samples".to_string()
    } else {
        format!("samples{i}")
    }
}

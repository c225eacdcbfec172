//! Metrics: per app and per gateway, kept in atomics where they happen, and
//! served in the Prometheus text format on an optional loopback HTTP
//! endpoint (`[metrics] listen = "127.0.0.1:9464"`).
//!
//! Per app: events handled, export calls and their latency (a histogram),
//! traps, restarts, CPU time in the guest (wall time of its calls), linear
//! memory, log lines dropped by the rate limit. Per gateway: the outbox
//! (entries, points, bytes, oldest entry's age, dropped / rejected / expired
//! points), bytes and messages sent to the broker, reconnects.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet, prometheus_text};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

use crate::outbox::Usage;
use crate::store::Database;

/// Upper bounds of the call latency buckets, in seconds.
const BUCKETS: [f64; 8] = [
    0.000_01,
    0.000_1,
    0.001,
    0.01,
    0.1,
    1.0,
    10.0,
    f64::INFINITY,
];

/// One app's numbers.
#[derive(Debug, Default)]
pub struct AppMetrics {
    pub events: AtomicU64,
    pub calls: AtomicU64,
    pub call_nanos: AtomicU64,
    buckets: [AtomicU64; BUCKETS.len()],
    pub traps: AtomicU64,
    pub restarts: AtomicU64,
    pub memory_bytes: AtomicU64,
    pub log_dropped: AtomicU64,
}

/// One app's counters at a moment.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct AppNumbers {
    pub events: u64,
    pub calls: u64,
    pub traps: u64,
    pub memory_bytes: u64,
    pub log_dropped: u64,
    /// Time spent in the app's calls.
    pub call_seconds: f64,
}

impl AppMetrics {
    /// The counters now, for `apps`, `status` and the status message.
    pub fn read(&self) -> AppNumbers {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        AppNumbers {
            events: load(&self.events),
            calls: load(&self.calls),
            traps: load(&self.traps),
            memory_bytes: load(&self.memory_bytes),
            log_dropped: load(&self.log_dropped),
            call_seconds: load(&self.call_nanos) as f64 / 1e9,
        }
    }

    /// An export call took `took`.
    pub fn call(&self, took: Duration) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.call_nanos
            .fetch_add(took.as_nanos() as u64, Ordering::Relaxed);
        let secs = took.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The cloud link's numbers.
#[derive(Debug, Default)]
pub struct LinkMetrics {
    pub bytes_sent: AtomicU64,
    pub messages_sent: AtomicU64,
    pub reconnects: AtomicU64,
    pub connected: AtomicBool,
}

/// Every metric of the gateway.
#[derive(Clone)]
pub struct Metrics {
    gateway: String,
    apps: Arc<Mutex<BTreeMap<String, Arc<AppMetrics>>>>,
    pub link: Arc<LinkMetrics>,
    usage: Arc<Usage>,
    db: Database,
}

impl Metrics {
    pub fn new(gateway: String, usage: Arc<Usage>, db: Database) -> Metrics {
        Metrics {
            gateway,
            apps: Arc::default(),
            link: Arc::default(),
            usage,
            db,
        }
    }

    /// The numbers of `app`, kept across its restarts and versions.
    pub fn app(&self, app: &str) -> Arc<AppMetrics> {
        self.apps
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(app.to_string())
            .or_default()
            .clone()
    }

    /// Everything, in the Prometheus text format (prometheus-client's
    /// encoder over [`Scrape`], which reads the atomics at that moment).
    pub fn render(&self) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Scrape(self.clone())));
        let mut out = String::new();
        if let Err(e) = prometheus_text::encode(&mut out, &registry) {
            tracing::error!("cannot render the metrics: {e}");
        }
        out
    }
}

/// One scrape of [`Metrics`]: every family, read as it is now.
struct Scrape(Metrics);

impl std::fmt::Debug for Scrape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Scrape")
    }
}

type Labels<'a> = Vec<(&'static str, &'a str)>;

/// A family of counters or gauges: its samples, by their labels.
fn family<'a, V: Copy + Into<f64>>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    samples: impl IntoIterator<Item = (Labels<'a>, V)>,
) -> std::fmt::Result {
    let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
    for (labels, value) in samples {
        let mut sample = metric.encode_family(&labels)?;
        let value: f64 = value.into();
        match kind {
            MetricType::Counter => sample.encode_counter::<NoLabelSet, _, f64>(&value, None)?,
            _ => sample.encode_gauge(&value)?,
        }
    }
    Ok(())
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let m = &self.0;
        let g = m.gateway.as_str();
        let apps: Vec<(String, Arc<AppMetrics>)> = m
            .apps
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let per_app = |get: fn(&AppMetrics) -> u64| {
            apps.iter()
                .map(move |(app, m)| (vec![("gateway", g), ("app", app.as_str())], get(m) as f64))
        };
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        // Counters are named without `_total`: the encoder adds it.
        for (name, help, kind, get) in [
            (
                "wasmgate_app_events",
                "Events the app handled (ticks, desired changes, actions).",
                MetricType::Counter,
                (|m: &AppMetrics| m.events.load(Ordering::Relaxed)) as fn(&AppMetrics) -> u64,
            ),
            (
                "wasmgate_app_traps",
                "Calls that trapped, ran past their deadline or hit the memory limit.",
                MetricType::Counter,
                |m| m.traps.load(Ordering::Relaxed),
            ),
            (
                "wasmgate_app_restarts",
                "Restarts after a crash.",
                MetricType::Counter,
                |m| m.restarts.load(Ordering::Relaxed),
            ),
            (
                "wasmgate_app_memory_bytes",
                "The app's linear memory.",
                MetricType::Gauge,
                |m| m.memory_bytes.load(Ordering::Relaxed),
            ),
            (
                "wasmgate_app_log_dropped",
                "Log lines dropped by the rate limit.",
                MetricType::Counter,
                |m| m.log_dropped.load(Ordering::Relaxed),
            ),
        ] {
            family(&mut encoder, name, help, kind, per_app(get))?;
        }
        let mut calls = encoder.encode_descriptor(
            "wasmgate_app_call_seconds",
            "Time in the app's export calls.",
            None,
            MetricType::Histogram,
        )?;
        for (app, m) in &apps {
            let buckets: Vec<(f64, u64)> = BUCKETS
                .iter()
                .zip(&m.buckets)
                .map(|(bound, count)| (*bound, load(count)))
                .collect();
            calls
                .encode_family(&vec![("gateway", g), ("app", app.as_str())])?
                .encode_histogram::<NoLabelSet>(
                    load(&m.call_nanos) as f64 / 1e9,
                    load(&m.calls),
                    &buckets,
                    None,
                )?;
        }

        let streams = m.usage.snapshot();
        let per_stream = |get: fn(&crate::outbox::StreamStats) -> u64| {
            streams.iter().map(move |(s, st)| {
                let labels = vec![
                    ("gateway", g),
                    ("kind", s.kind),
                    ("device", s.device.as_str()),
                    ("name", s.name.as_str()),
                ];
                (labels, get(st) as f64)
            })
        };
        for (name, help, kind, get) in [
            (
                "wasmgate_outbox_points",
                "Points waiting in the outbox, per stream.",
                MetricType::Gauge,
                (|st: &crate::outbox::StreamStats| st.points)
                    as fn(&crate::outbox::StreamStats) -> u64,
            ),
            (
                "wasmgate_outbox_bytes",
                "Bytes waiting in the outbox, per stream.",
                MetricType::Gauge,
                |st| st.bytes,
            ),
            (
                "wasmgate_outbox_dropped_points",
                "Points deleted unsent to make room.",
                MetricType::Counter,
                |st| st.dropped,
            ),
            (
                "wasmgate_outbox_rejected_points",
                "Points refused because the outbox was full.",
                MetricType::Counter,
                |st| st.rejected,
            ),
            (
                "wasmgate_outbox_expired_points",
                "Points deleted unsent for age.",
                MetricType::Counter,
                |st| st.expired,
            ),
        ] {
            family(&mut encoder, name, help, kind, per_stream(get))?;
        }

        let (entries, oldest) =
            m.db.open()
                .and_then(|c| {
                    c.query_row("SELECT COUNT(*), MIN(created_at) FROM outbox", [], |r| {
                        Ok((r.get::<_, i64>(0)?, r.get::<_, Option<i64>>(1)?))
                    })
                })
                .unwrap_or((0, None));
        let age = oldest.map_or(0.0, |t| {
            (crate::value::now_ns() as i64 - t).max(0) as f64 / 1e9
        });
        let link = &m.link;
        let gateway = || vec![("gateway", g)];
        for (name, help, kind, value) in [
            (
                "wasmgate_outbox_entries",
                "Rows in the outbox.",
                MetricType::Gauge,
                entries as f64,
            ),
            (
                "wasmgate_outbox_oldest_age_seconds",
                "Age of the oldest row in the outbox.",
                MetricType::Gauge,
                age,
            ),
            (
                "wasmgate_cloud_bytes_sent",
                "Payload bytes published to the broker.",
                MetricType::Counter,
                load(&link.bytes_sent) as f64,
            ),
            (
                "wasmgate_cloud_messages_sent",
                "Messages the broker acknowledged.",
                MetricType::Counter,
                load(&link.messages_sent) as f64,
            ),
            (
                "wasmgate_cloud_reconnects",
                "Connections to the broker made after the first.",
                MetricType::Counter,
                load(&link.reconnects) as f64,
            ),
            (
                "wasmgate_cloud_connected",
                "Whether the link is connected.",
                MetricType::Gauge,
                f64::from(u8::from(link.connected.load(Ordering::Relaxed))),
            ),
        ] {
            family(&mut encoder, name, help, kind, [(gateway(), value)])?;
        }
        Ok(())
    }
}

/// Serve `GET /metrics` on `listen` (a loopback address) until `cancel`,
/// over hyper's HTTP/1.1 server; every other request gets a 404.
pub async fn serve(
    listen: SocketAddr,
    metrics: Metrics,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("the metrics endpoint cannot listen on {listen}: {e}"))?;
    tracing::info!(listen = %listen, "metrics at http://{listen}/metrics");
    let connections = tokio_util::task::TaskTracker::new();
    loop {
        let (stream, _) = tokio::select! {
            _ = cancel.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors, say: wait rather than spin on it.
                    tracing::warn!("metrics endpoint: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let metrics = metrics.clone();
        let service = hyper::service::service_fn(move |request| {
            let response = respond(&metrics, &request);
            async move { Ok::<_, std::convert::Infallible>(response) }
        });
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(Duration::from_secs(5))
            .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
        let cancel = cancel.clone();
        connections.spawn(async move {
            tokio::select! {
                _ = connection => {}
                _ = cancel.cancelled() => {}
            }
        });
    }
    connections.close();
    connections.wait().await;
    Ok(())
}

fn respond<B>(
    metrics: &Metrics,
    request: &hyper::Request<B>,
) -> hyper::Response<http_body_util::Full<bytes::Bytes>> {
    let (status, body) =
        if request.method() == hyper::Method::GET && request.uri().path() == "/metrics" {
            (hyper::StatusCode::OK, metrics.render())
        } else {
            (
                hyper::StatusCode::NOT_FOUND,
                "only GET /metrics is served here\n".to_string(),
            )
        };
    let mut response = hyper::Response::new(http_body_util::Full::new(bytes::Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    // One scrape a connection, as Prometheus makes them: the server closes
    // it after the answer rather than holding it for another request.
    response.headers_mut().insert(
        hyper::header::CONNECTION,
        hyper::header::HeaderValue::from_static("close"),
    );
    response
}

//! Metrics: per app and per gateway, kept in atomics where they happen, and
//! served in the Prometheus text format on an optional loopback HTTP
//! endpoint (`[metrics] listen = "127.0.0.1:9464"`).
//!
//! Per app: events handled, export calls and their latency (a histogram),
//! traps, restarts, CPU time in the guest (wall time of its calls), linear
//! memory, log lines dropped by the rate limit. Per gateway: the outbox
//! (entries, points, bytes, oldest entry's age, dropped / rejected / expired
//! points), bytes and messages sent to the broker, reconnects.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
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

    /// Everything, in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let g = &self.gateway;
        let apps: Vec<(String, Arc<AppMetrics>)> = self
            .apps
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let counter = |out: &mut String,
                       name: &str,
                       help: &str,
                       kind: &str,
                       get: &dyn Fn(&AppMetrics) -> u64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (app, m) in &apps {
                let _ = writeln!(out, "{name}{{gateway=\"{g}\",app=\"{app}\"}} {}", get(m));
            }
        };
        counter(
            &mut out,
            "wasmgate_app_events_total",
            "Events the app handled (ticks, desired changes, actions).",
            "counter",
            &|m| m.events.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "wasmgate_app_traps_total",
            "Calls that trapped, ran past their deadline or hit the memory limit.",
            "counter",
            &|m| m.traps.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "wasmgate_app_restarts_total",
            "Restarts after a crash.",
            "counter",
            &|m| m.restarts.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "wasmgate_app_memory_bytes",
            "The app's linear memory.",
            "gauge",
            &|m| m.memory_bytes.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "wasmgate_app_log_dropped_total",
            "Log lines dropped by the rate limit.",
            "counter",
            &|m| m.log_dropped.load(Ordering::Relaxed),
        );
        let _ = writeln!(
            out,
            "# HELP wasmgate_app_call_seconds Time in the app's export calls.\n# TYPE wasmgate_app_call_seconds histogram"
        );
        for (app, m) in &apps {
            let mut cumulative = 0;
            for (i, bound) in BUCKETS.iter().enumerate() {
                cumulative += m.buckets[i].load(Ordering::Relaxed);
                let le = if bound.is_infinite() {
                    "+Inf".to_string()
                } else {
                    bound.to_string()
                };
                let _ = writeln!(
                    out,
                    "wasmgate_app_call_seconds_bucket{{gateway=\"{g}\",app=\"{app}\",le=\"{le}\"}} {cumulative}"
                );
            }
            let _ = writeln!(
                out,
                "wasmgate_app_call_seconds_sum{{gateway=\"{g}\",app=\"{app}\"}} {}\nwasmgate_app_call_seconds_count{{gateway=\"{g}\",app=\"{app}\"}} {}",
                m.call_nanos.load(Ordering::Relaxed) as f64 / 1e9,
                m.calls.load(Ordering::Relaxed)
            );
        }

        let streams = self.usage.snapshot();
        let _ = writeln!(
            out,
            "# HELP wasmgate_outbox_points Points waiting in the outbox, per stream.\n# TYPE wasmgate_outbox_points gauge"
        );
        for (s, st) in &streams {
            let _ = writeln!(
                out,
                "wasmgate_outbox_points{{gateway=\"{g}\",kind=\"{}\",device=\"{}\",name=\"{}\"}} {}",
                s.kind, s.device, s.name, st.points
            );
        }
        for (metric, help, get) in [
            (
                "wasmgate_outbox_bytes",
                "Bytes waiting in the outbox, per stream.",
                (|st: &crate::outbox::StreamStats| st.bytes)
                    as fn(&crate::outbox::StreamStats) -> u64,
            ),
            (
                "wasmgate_outbox_dropped_points_total",
                "Points deleted unsent to make room.",
                |st| st.dropped,
            ),
            (
                "wasmgate_outbox_rejected_points_total",
                "Points refused because the outbox was full.",
                |st| st.rejected,
            ),
            (
                "wasmgate_outbox_expired_points_total",
                "Points deleted unsent for age.",
                |st| st.expired,
            ),
        ] {
            let kind = if metric.ends_with("_total") {
                "counter"
            } else {
                "gauge"
            };
            let _ = writeln!(out, "# HELP {metric} {help}\n# TYPE {metric} {kind}");
            for (s, st) in &streams {
                let _ = writeln!(
                    out,
                    "{metric}{{gateway=\"{g}\",kind=\"{}\",device=\"{}\",name=\"{}\"}} {}",
                    s.kind,
                    s.device,
                    s.name,
                    get(st)
                );
            }
        }
        let (entries, oldest) = self
            .db
            .open()
            .and_then(|c| {
                c.query_row("SELECT COUNT(*), MIN(created_at) FROM outbox", [], |r| {
                    Ok((r.get::<_, i64>(0)?, r.get::<_, Option<i64>>(1)?))
                })
            })
            .unwrap_or((0, None));
        let age = oldest.map_or(0.0, |t| {
            (crate::value::now_ns() as i64 - t).max(0) as f64 / 1e9
        });
        let link = &self.link;
        let _ = writeln!(
            out,
            "# HELP wasmgate_outbox_entries Rows in the outbox.\n# TYPE wasmgate_outbox_entries gauge\nwasmgate_outbox_entries{{gateway=\"{g}\"}} {entries}\n\
             # HELP wasmgate_outbox_oldest_age_seconds Age of the oldest row in the outbox.\n# TYPE wasmgate_outbox_oldest_age_seconds gauge\nwasmgate_outbox_oldest_age_seconds{{gateway=\"{g}\"}} {age}\n\
             # HELP wasmgate_cloud_bytes_sent_total Payload bytes published to the broker.\n# TYPE wasmgate_cloud_bytes_sent_total counter\nwasmgate_cloud_bytes_sent_total{{gateway=\"{g}\"}} {}\n\
             # HELP wasmgate_cloud_messages_sent_total Messages the broker acknowledged.\n# TYPE wasmgate_cloud_messages_sent_total counter\nwasmgate_cloud_messages_sent_total{{gateway=\"{g}\"}} {}\n\
             # HELP wasmgate_cloud_reconnects_total Connections to the broker made after the first.\n# TYPE wasmgate_cloud_reconnects_total counter\nwasmgate_cloud_reconnects_total{{gateway=\"{g}\"}} {}\n\
             # HELP wasmgate_cloud_connected Whether the link is connected.\n# TYPE wasmgate_cloud_connected gauge\nwasmgate_cloud_connected{{gateway=\"{g}\"}} {}",
            link.bytes_sent.load(Ordering::Relaxed),
            link.messages_sent.load(Ordering::Relaxed),
            link.reconnects.load(Ordering::Relaxed),
            u8::from(link.connected.load(Ordering::Relaxed)),
        );
        out
    }
}

/// Serve `GET /metrics` on `listen` (a loopback address) until `cancel`.
pub async fn serve(
    listen: SocketAddr,
    metrics: Metrics,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("the metrics endpoint cannot listen on {listen}: {e}"))?;
    tracing::info!(listen = %listen, "metrics at http://{listen}/metrics");
    loop {
        let (mut stream, _) = tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!("metrics endpoint: {e}");
                    continue;
                }
            },
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            // A request line and headers, which may come in several
            // segments; nothing past 4 KiB is read.
            let mut request = vec![0u8; 4096];
            let mut n = 0;
            let read_head = async {
                while n < request.len() && !request[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut request[n..]).await {
                        Ok(0) | Err(_) => return false,
                        Ok(read) => n += read,
                    }
                }
                true
            };
            if !matches!(
                tokio::time::timeout(Duration::from_secs(5), read_head).await,
                Ok(true)
            ) {
                return;
            }
            let head = String::from_utf8_lossy(&request[..n]);
            let (status, body) =
                if head.starts_with("GET /metrics ") || head.starts_with("GET /metrics\r") {
                    ("200 OK", metrics.render())
                } else {
                    (
                        "404 Not Found",
                        "only GET /metrics is served here\n".to_string(),
                    )
                };
            let response = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
        });
    }
}

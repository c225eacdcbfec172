//! `/metrics`: the gateway's report in the Prometheus text format
//! (prometheus-client's encoder), served by hyper on an optional loopback
//! address (`[metrics] listen = "127.0.0.1:9464"`).
//!
//! Per app: events, traps, restarts, linear memory, the call latency
//! histogram, and each capability unit's figures as
//! `wasmgate_app_{unit}_{figure}`. Per gateway: the outbox (entries,
//! points, bytes, oldest entry's age, dropped / rejected / expired points)
//! and the cloud link (bytes and messages sent, reconnects, connected).

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet, prometheus_text};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

use super::Reporter;
use crate::capability::FigureKind;
use crate::outbox::StreamStats;
use crate::wire::protocol::AppInfo;

/// The report now, in the Prometheus text format.
pub fn render(reporter: &Reporter) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Scrape(reporter.clone())));
    let mut out = String::new();
    if let Err(e) = prometheus_text::encode(&mut out, &registry) {
        tracing::error!("cannot render the metrics: {e}");
    }
    out
}

/// One scrape: every family, read as it is now.
struct Scrape(Reporter);

impl std::fmt::Debug for Scrape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Scrape")
    }
}

type Labels<'a> = Vec<(&'static str, &'a str)>;

/// One family of a unit's figure: its help, its kind, its samples.
type UnitFamily<'a> = (&'static str, FigureKind, Vec<(Labels<'a>, f64)>);

/// A family of counters or gauges: its samples, by their labels.
fn family<'a>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    samples: impl IntoIterator<Item = (Labels<'a>, f64)>,
) -> std::fmt::Result {
    let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
    for (labels, value) in samples {
        let mut sample = metric.encode_family(&labels)?;
        match kind {
            MetricType::Counter => sample.encode_counter::<NoLabelSet, _, f64>(&value, None)?,
            _ => sample.encode_gauge(&value)?,
        }
    }
    Ok(())
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let reporter = &self.0;
        let g = reporter.gateway();
        // One connection for the whole scrape.
        let conn = reporter.connection();
        // `/metrics` counts registered devices; it lists none.
        let detailed = reporter.apps_with_figures(conn.as_ref(), 0);
        let apps: Vec<&AppInfo> = detailed.iter().map(|(info, _)| info).collect();
        let per_app = |get: fn(&AppInfo) -> f64| {
            apps.iter()
                .map(move |a| (vec![("gateway", g), ("app", a.name.as_str())], get(a)))
        };
        // Counters are named without `_total`: the encoder adds it.
        for (name, help, kind, get) in [
            (
                "wasmgate_app_events",
                "Events the app handled (ticks, desired changes, actions).",
                MetricType::Counter,
                (|a: &AppInfo| a.events as f64) as fn(&AppInfo) -> f64,
            ),
            (
                "wasmgate_app_traps",
                "Calls that trapped, ran past their deadline or hit the memory limit.",
                MetricType::Counter,
                |a| a.traps as f64,
            ),
            (
                "wasmgate_app_restarts",
                "Restarts after a crash, of the version running now.",
                MetricType::Counter,
                |a| a.restarts as f64,
            ),
            (
                "wasmgate_app_memory_bytes",
                "The app's linear memory.",
                MetricType::Gauge,
                |a| a.memory_bytes as f64,
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
        for app in apps.iter() {
            let buckets = reporter.metrics().app(&app.name).buckets();
            calls
                .encode_family(&vec![("gateway", g), ("app", app.name.as_str())])?
                .encode_histogram::<NoLabelSet>(app.call_seconds, app.calls, &buckets, None)?;
        }

        // Each unit's figures: one family per unit and figure, named, helped
        // and typed by the unit.
        let mut families: BTreeMap<String, UnitFamily<'_>> = BTreeMap::new();
        for (app, units) in &detailed {
            for (unit, figures) in units {
                for figure in figures {
                    let (_, _, samples) = families
                        .entry(format!("wasmgate_app_{unit}_{}", figure.name))
                        .or_insert((figure.help, figure.kind, Vec::new()));
                    samples.push((
                        vec![("gateway", g), ("app", app.name.as_str())],
                        figure.value as f64,
                    ));
                }
            }
        }
        for (name, (help, kind, samples)) in families {
            let kind = match kind {
                FigureKind::Counter => MetricType::Counter,
                FigureKind::Gauge => MetricType::Gauge,
            };
            family(&mut encoder, &name, help, kind, samples)?;
        }

        let streams = reporter.usage().snapshot();
        let per_stream = |get: fn(&StreamStats) -> u64| {
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
                (|st: &StreamStats| st.points) as fn(&StreamStats) -> u64,
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

        let (entries, oldest) = conn
            .as_ref()
            .and_then(|c| {
                c.query_row("SELECT COUNT(*), MIN(created_at) FROM outbox", [], |r| {
                    Ok((r.get::<_, i64>(0)?, r.get::<_, Option<i64>>(1)?))
                })
                .ok()
            })
            .unwrap_or((0, None));
        let age = oldest.map_or(0.0, |t| {
            (crate::value::now_ns() as i64 - t).max(0) as f64 / 1e9
        });
        let link = reporter.link();
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
                link.bytes_sent as f64,
            ),
            (
                "wasmgate_cloud_messages_sent",
                "Messages the broker acknowledged.",
                MetricType::Counter,
                link.messages_sent as f64,
            ),
            (
                "wasmgate_cloud_downlink_refused",
                "Downlink messages refused before a worker or service took them (oversized, for no app, or the device busy).",
                MetricType::Counter,
                link.downlink_refused as f64,
            ),
            (
                "wasmgate_cloud_replies_dropped",
                "Replies dropped because too many bytes of them already waited for the broker.",
                MetricType::Counter,
                link.replies_dropped as f64,
            ),
            (
                "wasmgate_cloud_in_flight",
                "Publishes sent and not yet acknowledged by the broker (at most max_inflight); full while nothing is acknowledged is a stuck link.",
                MetricType::Gauge,
                link.in_flight as f64,
            ),
            (
                "wasmgate_cloud_waiting",
                "Replies and statuses waiting for room in the link's window.",
                MetricType::Gauge,
                link.waiting as f64,
            ),
            (
                "wasmgate_cloud_reconnects",
                "Connections to the broker made after the first.",
                MetricType::Counter,
                link.reconnects as f64,
            ),
            (
                "wasmgate_cloud_connected",
                "Whether the link is connected.",
                MetricType::Gauge,
                f64::from(u8::from(link.connected)),
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
    reporter: Reporter,
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
        let reporter = reporter.clone();
        let service = hyper::service::service_fn(move |request| {
            let response = respond(&reporter, &request);
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
    reporter: &Reporter,
    request: &hyper::Request<B>,
) -> hyper::Response<http_body_util::Full<bytes::Bytes>> {
    let (status, body) =
        if request.method() == hyper::Method::GET && request.uri().path() == "/metrics" {
            (hyper::StatusCode::OK, render(reporter))
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

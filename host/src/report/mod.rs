//! The one report model of a running gateway: what it says about its apps,
//! its outbox and its cloud link. The status message, `wasmgate apps` and
//! `wasmgate status` (through the admin socket), `/metrics` and the
//! deployer's answers all read it from here, so a figure is gathered in one
//! place and means the same thing everywhere.
//!
//! Per app, [`Reporter::apps`] joins what the actor publishes (state,
//! version, restarts), the app's counters ([`crate::metrics::AppMetrics`]),
//! each capability unit's own figures ([`crate::capability::Capability::report`])
//! and the devices the app registered.

pub mod prometheus;

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::app::{Directory, Units};
use crate::capability::ReportScope;
use crate::metrics::Metrics;
use crate::outbox::Usage;
use crate::store::Database;
use crate::wire::protocol::{AppInfo, OutboxInfo, RegisteredDevice, Status, StreamInfo};

/// The state of the cloud link, as `wasmgate status` and `/metrics` give it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct LinkInfo {
    /// Whether the gateway has a `[cloud]` section at all.
    pub configured: bool,
    /// Connected to the broker now.
    pub connected: bool,
    /// Connections made after the first.
    pub reconnects: u64,
    /// Messages the broker acknowledged.
    pub messages_sent: u64,
    /// Payload bytes published.
    pub bytes_sent: u64,
    /// Downlink messages refused before a worker or service took them.
    #[serde(default)]
    pub downlink_refused: u64,
    /// Replies dropped because too many already waited for the broker.
    #[serde(default)]
    pub replies_dropped: u64,
    /// Publishes sent and not yet acknowledged by the broker (at most
    /// `max_inflight`).
    #[serde(default)]
    pub in_flight: u64,
    /// Replies and statuses waiting for room among those.
    #[serde(default)]
    pub waiting: u64,
    /// Why the last connection failed or ended, if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// The broker the link is on or trying (`mqtt://host:port`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broker: Option<String>,
}

/// Each unit's figures for one app, by unit name.
type UnitFigures = Vec<(&'static str, Vec<crate::capability::Figure>)>;

/// Reads the report from the parts that own each figure.
#[derive(Clone)]
pub struct Reporter {
    gateway: String,
    apps: Directory,
    units: Units,
    metrics: Metrics,
    usage: Arc<Usage>,
    db: Database,
    cloud_configured: bool,
    labels: BTreeMap<String, String>,
}

impl Reporter {
    pub fn new(
        gateway: String,
        apps: Directory,
        units: Units,
        metrics: Metrics,
        usage: Arc<Usage>,
        db: Database,
        cloud_configured: bool,
    ) -> Reporter {
        Reporter {
            gateway,
            apps,
            units,
            metrics,
            usage,
            db,
            cloud_configured,
            labels: BTreeMap::new(),
        }
    }

    /// The gateway's labels, announced in its status.
    pub fn with_labels(mut self, labels: BTreeMap<String, String>) -> Reporter {
        self.labels = labels;
        self
    }

    pub fn gateway(&self) -> &str {
        &self.gateway
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn usage(&self) -> &Usage {
        &self.usage
    }

    pub fn database(&self) -> &Database {
        &self.db
    }

    /// A read connection for one report; without one, the report goes
    /// without the figures that need the database (and says so in the log).
    pub(crate) fn connection(&self) -> Option<rusqlite::Connection> {
        self.db
            .open()
            .map_err(|e| tracing::warn!("the report goes without the database's figures: {e}"))
            .ok()
    }

    /// Every running app, by name.
    pub fn apps(&self) -> Vec<AppInfo> {
        self.apps_in(self.connection().as_ref(), usize::MAX)
    }

    /// The apps, each with at most `listed` of its registered devices.
    fn apps_in(&self, conn: Option<&rusqlite::Connection>, listed: usize) -> Vec<AppInfo> {
        self.apps_with_figures(conn, listed)
            .into_iter()
            .map(|(info, _)| info)
            .collect()
    }

    /// Every running app with its units' figures as the units gave them
    /// (with their help and kind, which `/metrics` needs).
    pub(crate) fn apps_with_figures(
        &self,
        conn: Option<&rusqlite::Connection>,
        listed: usize,
    ) -> Vec<(AppInfo, UnitFigures)> {
        self.apps
            .list()
            .into_iter()
            .map(|entry| {
                let name = entry.handle.name().to_string();
                let status = entry.handle.status();
                let metrics = self.metrics.app(&name);
                let numbers = metrics.read();
                let figures = conn
                    .map(|db| {
                        self.units.report(&ReportScope {
                            app: &name,
                            metrics: &metrics,
                            db,
                        })
                    })
                    .unwrap_or_default();
                let capabilities = figures
                    .iter()
                    .map(|(unit, figures)| {
                        let figures = figures.iter().map(|f| (f.name.to_string(), f.value));
                        (unit.to_string(), figures.collect())
                    })
                    .collect();
                let (registered, total) = self.apps.registered_by(&name, listed);
                let devices: Vec<RegisteredDevice> = registered
                    .into_iter()
                    .map(|r| RegisteredDevice {
                        id: r.device,
                        hardware_id: r.hardware_id,
                        model: r.model,
                        metadata: r.metadata.into_iter().collect(),
                    })
                    .collect();
                let info = AppInfo {
                    device: entry.device.clone(),
                    state: status.state.run_state(),
                    version: status.version,
                    component: status.component.clone(),
                    load: status.load,
                    restarts: status.restarts,
                    error: status.state.error().map(str::to_string),
                    events: numbers.events,
                    traps: numbers.traps,
                    calls: numbers.calls,
                    call_seconds: numbers.call_seconds,
                    memory_bytes: numbers.memory_bytes,
                    capabilities,
                    devices_omitted: (total - devices.len()) as u64,
                    devices,
                    name,
                };
                (info, figures)
            })
            .collect()
    }

    /// What waits in the outbox, per stream.
    pub fn outbox(&self) -> OutboxInfo {
        self.outbox_in(self.connection().as_ref())
    }

    fn outbox_in(&self, conn: Option<&rusqlite::Connection>) -> OutboxInfo {
        let (entries, points) = conn
            .and_then(|conn| crate::outbox::totals(conn, &self.usage).ok())
            .unwrap_or_default();
        let streams = self
            .usage
            .snapshot()
            .into_iter()
            .map(|(s, st)| StreamInfo {
                kind: s.kind.to_string(),
                device: s.device,
                name: s.name,
                points: st.points,
                bytes: st.bytes,
                dropped: st.dropped,
                rejected: st.rejected,
                expired: st.expired,
            })
            .collect();
        OutboxInfo {
            entries,
            points,
            bytes: self.usage.total_bytes(),
            streams,
            streams_omitted: 0,
            write_error: self.usage.write_error().map(|e| e.to_string()),
        }
    }

    /// The cloud link now.
    pub fn link(&self) -> LinkInfo {
        let link = &self.metrics.link;
        LinkInfo {
            configured: self.cloud_configured,
            connected: link.connected.load(Ordering::Relaxed),
            reconnects: link.reconnects.load(Ordering::Relaxed),
            messages_sent: link.messages_sent.load(Ordering::Relaxed),
            bytes_sent: link.bytes_sent.load(Ordering::Relaxed),
            downlink_refused: link.downlink_refused.load(Ordering::Relaxed),
            replies_dropped: link.replies_dropped.load(Ordering::Relaxed),
            in_flight: link.in_flight.load(Ordering::Relaxed),
            waiting: link.waiting.load(Ordering::Relaxed),
            last_error: link.last_error(),
            broker: link.broker(),
        }
    }

    /// The status message.
    pub fn status(&self, online: bool, reason: Option<&str>, time: u64) -> Status {
        let conn = self.connection();
        let mut status = Status {
            online,
            time: Some(time),
            reason: reason.map(str::to_string),
            labels: self.labels.clone(),
            // Said only while on it: an offline status names no broker.
            broker: online.then(|| self.metrics.link.broker()).flatten(),
            apps: self.apps_in(conn.as_ref(), crate::wire::protocol::STATUS_LIST),
            outbox: self.outbox_in(conn.as_ref()),
        };
        status.fit(crate::wire::protocol::STATUS_BUDGET);
        status
    }
}

/// An app's capability figures, flattened for a table: `unit.name=value`.
pub fn figures_line(capabilities: &BTreeMap<String, BTreeMap<String, u64>>) -> String {
    capabilities
        .iter()
        .flat_map(|(unit, figures)| {
            figures
                .iter()
                .map(move |(name, value)| format!("{unit}.{name}={value}"))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

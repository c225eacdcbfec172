//! Counters kept in atomics where things happen: per app (events, export
//! calls and their latency histogram, traps, linear memory, log lines
//! dropped) and for the cloud link (bytes and messages sent, reconnects,
//! connected). `crate::report` reads them into the gateway's one report,
//! which `/metrics` and the status message serve.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Upper bounds of the call latency buckets, in seconds.
pub const BUCKETS: [f64; 8] = [
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
    pub memory_bytes: AtomicU64,
    pub log_dropped: AtomicU64,
    /// Socket uses refused: not granted (`wasi.sockets_denied`).
    pub sockets_denied: AtomicU64,
    /// Outgoing HTTP requests sent (`wasi.http_requests`).
    pub http_requests: AtomicU64,
    /// Outgoing HTTP requests refused: not granted (`wasi.http_denied`).
    pub http_denied: AtomicU64,
    /// Outgoing HTTP requests refused: over the rate (`wasi.http_limited`).
    pub http_limited: AtomicU64,
    /// HTTP requests an app serving HTTP answered (`http_serve.requests`).
    pub http_served: AtomicU64,
    /// HTTP requests answered 503: too many at once (`http_serve.busy`).
    pub http_busy: AtomicU64,
    /// HTTP requests answered 401: no or a wrong token (`http_serve.unauthorized`).
    pub http_unauthorized: AtomicU64,
    /// HTTP requests answered 500: the instance failed (`http_serve.failed`).
    pub http_failed: AtomicU64,
}

/// One app's counters at a moment.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct AppNumbers {
    pub events: u64,
    pub calls: u64,
    pub traps: u64,
    pub memory_bytes: u64,
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
            call_seconds: load(&self.call_nanos) as f64 / 1e9,
        }
    }

    /// The call latency histogram: a count per bucket of [`BUCKETS`].
    pub fn buckets(&self) -> Vec<(f64, u64)> {
        BUCKETS
            .iter()
            .zip(&self.buckets)
            .map(|(bound, count)| (*bound, count.load(Ordering::Relaxed)))
            .collect()
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
    /// Downlink messages refused before a worker or service took them
    /// (oversized, for no app, or the device's queue full).
    pub downlink_refused: AtomicU64,
    /// Replies dropped because too many bytes of them already waited for
    /// the broker.
    pub replies_dropped: AtomicU64,
    /// Publishes handed to the MQTT client and not yet acknowledged: the
    /// link's window in use (at most `max_inflight`). A window that stays
    /// full while nothing is acknowledged is a stuck link.
    pub in_flight: AtomicU64,
    /// Replies and statuses waiting for room in the window.
    pub waiting: AtomicU64,
    /// Why the last connection failed or ended, if one did.
    last_error: Mutex<Option<String>>,
    /// The broker the link is on, or trying (one of `[cloud] urls`).
    broker: Mutex<Option<String>>,
}

impl LinkMetrics {
    /// The window's occupancy now (see [`in_flight`](Self::in_flight)).
    pub fn set_window(&self, (in_flight, waiting): (usize, usize)) {
        self.in_flight.store(in_flight as u64, Ordering::Relaxed);
        self.waiting.store(waiting as u64, Ordering::Relaxed);
    }

    pub fn set_last_error(&self, error: String) {
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(error);
    }

    pub fn set_broker(&self, url: String) {
        *self.broker.lock().unwrap_or_else(|e| e.into_inner()) = Some(url);
    }

    pub fn broker(&self) -> Option<String> {
        self.broker
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// Every counter of the gateway.
#[derive(Clone, Default)]
pub struct Metrics {
    apps: Arc<Mutex<BTreeMap<String, Arc<AppMetrics>>>>,
    pub link: Arc<LinkMetrics>,
}

impl Metrics {
    /// The numbers of `app`, kept across its restarts and versions.
    pub fn app(&self, app: &str) -> Arc<AppMetrics> {
        self.apps
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(app.to_string())
            .or_default()
            .clone()
    }
}

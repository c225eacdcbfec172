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
    /// The calls the app's actor makes: it makes one at a time, so it is
    /// their only writer ([`AppMetrics::actor_call`]).
    actor_calls: CallTimes,
    /// The calls of instances serving HTTP, many at once.
    served_calls: CallTimes,
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
            calls: load(&self.actor_calls.calls) + load(&self.served_calls.calls),
            traps: load(&self.traps),
            memory_bytes: load(&self.memory_bytes),
            call_seconds: (load(&self.actor_calls.nanos) + load(&self.served_calls.nanos)) as f64
                / 1e9,
        }
    }

    /// The call latency histogram: a count per bucket of [`BUCKETS`].
    pub fn buckets(&self) -> Vec<(f64, u64)> {
        let (actor, served) = (&self.actor_calls.buckets, &self.served_calls.buckets);
        BUCKETS
            .iter()
            .zip(actor.iter().zip(served))
            .map(|(bound, (a, s))| {
                (
                    *bound,
                    a.load(Ordering::Relaxed) + s.load(Ordering::Relaxed),
                )
            })
            .collect()
    }

    /// An export call of the app's actor took `took`. Only the actor may
    /// call this: its counters are added to without a locked instruction
    /// (a load and a store), which a second writer would race. Three
    /// locked adds were a tenth of what the actor's call path adds to a
    /// bare call (P1).
    pub fn actor_call(&self, took: Duration) {
        let add = |counter: &AtomicU64, n: u64| {
            counter.store(
                counter.load(Ordering::Relaxed).wrapping_add(n),
                Ordering::Relaxed,
            );
        };
        let calls = &self.actor_calls;
        add(&calls.calls, 1);
        add(&calls.nanos, duration_nanos(took));
        add(&calls.buckets[bucket(took)], 1);
    }

    /// A call of an instance serving HTTP took `took` (from any task).
    pub fn served_call(&self, took: Duration) {
        let calls = &self.served_calls;
        calls.calls.fetch_add(1, Ordering::Relaxed);
        calls
            .nanos
            .fetch_add(duration_nanos(took), Ordering::Relaxed);
        calls.buckets[bucket(took)].fetch_add(1, Ordering::Relaxed);
    }
}

/// The shortest time between two of an actor's calls that are timed to
/// their end ([`CallSampler`]).
pub const CALL_TIMING_INTERVAL: Duration = Duration::from_millis(1);

/// Which of an actor's calls are timed to their end. Reading the clock at
/// a call's end was a third of what dispatch adds to a bare call (P1), so
/// an app that calls more often than once per [`CALL_TIMING_INTERVAL`] has
/// one call per interval timed, and each call in between counted as long
/// as the last one timed. Every call is still counted, and an app calling
/// less often (ticks, actions, desired changes) has every call timed.
/// The call's start is read in any case: its deadline counts from it.
#[derive(Debug, Default)]
pub struct CallSampler {
    /// When the next call to be timed may start.
    next_timed: Option<std::time::Instant>,
    /// Whether the call in progress is timed.
    timing: bool,
    /// What the last timed call took.
    last_took: Duration,
}

impl CallSampler {
    /// A call starts at `started`.
    pub fn start(&mut self, started: std::time::Instant) {
        self.timing = self.next_timed.is_none_or(|next| started >= next);
        if self.timing {
            self.next_timed = Some(started + CALL_TIMING_INTERVAL);
        }
    }

    /// The call that started at `started` ended: what it took, read from
    /// `now` if it is timed, else what the last timed call took.
    pub fn took(
        &mut self,
        started: std::time::Instant,
        now: impl FnOnce() -> std::time::Instant,
    ) -> Duration {
        if self.timing {
            self.last_took = now().saturating_duration_since(started);
        }
        self.last_took
    }
}

/// Export calls counted: how many, their time, and their latency histogram.
#[derive(Debug, Default)]
struct CallTimes {
    calls: AtomicU64,
    nanos: AtomicU64,
    buckets: [AtomicU64; BUCKETS.len()],
}

/// [`BUCKETS`] in nanoseconds, but for the last (infinite) one: a call is
/// placed by comparing integers, not by converting its time to seconds.
const BUCKET_NANOS: [u64; BUCKETS.len() - 1] = {
    let mut nanos = [0; BUCKETS.len() - 1];
    let mut i = 0;
    while i < nanos.len() {
        nanos[i] = (BUCKETS[i] * 1e9 + 0.5) as u64;
        i += 1;
    }
    nanos
};

/// The index in [`BUCKETS`] of the bucket that `took` falls in.
fn bucket(took: Duration) -> usize {
    let nanos = duration_nanos(took);
    BUCKET_NANOS
        .iter()
        .position(|bound| nanos <= *bound)
        .unwrap_or(BUCKET_NANOS.len())
}

fn duration_nanos(took: Duration) -> u64 {
    u64::try_from(took.as_nanos()).unwrap_or(u64::MAX)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_bounds_in_nanoseconds_are_the_published_ones() {
        for (nanos, seconds) in BUCKET_NANOS.iter().zip(BUCKETS) {
            assert_eq!(*nanos as f64 / 1e9, seconds);
        }
        assert_eq!(BUCKETS[BUCKET_NANOS.len()], f64::INFINITY);
    }

    #[test]
    fn the_actors_calls_and_the_served_calls_add_up_in_one_histogram() {
        let metrics = AppMetrics::default();
        metrics.actor_call(Duration::from_micros(10)); // on the first bound
        metrics.actor_call(Duration::from_micros(11));
        metrics.served_call(Duration::from_millis(2));
        metrics.served_call(Duration::from_secs(11));
        let numbers = metrics.read();
        assert_eq!(numbers.calls, 4);
        assert!((numbers.call_seconds - 11.002_021).abs() < 1e-9);
        let counts: Vec<u64> = metrics.buckets().iter().map(|(_, n)| *n).collect();
        assert_eq!(counts, [1, 1, 0, 1, 0, 0, 0, 1]);
    }

    #[test]
    fn an_actor_calling_less_often_than_the_interval_has_every_call_timed() {
        let mut sampler = CallSampler::default();
        let t0 = std::time::Instant::now();
        for (i, took_us) in [5u64, 40, 7].into_iter().enumerate() {
            let started = t0 + CALL_TIMING_INTERVAL * (i as u32);
            sampler.start(started);
            let took = sampler.took(started, || started + Duration::from_micros(took_us));
            assert_eq!(took, Duration::from_micros(took_us));
        }
    }

    #[test]
    fn calls_within_the_interval_of_a_timed_one_count_as_long_as_it_without_reading_the_clock() {
        let mut sampler = CallSampler::default();
        let t0 = std::time::Instant::now();
        sampler.start(t0);
        assert_eq!(
            sampler.took(t0, || t0 + Duration::from_micros(3)),
            Duration::from_micros(3)
        );
        // Every 100 µs, until the interval is over: the clock is not read.
        let mut at = t0;
        while at + Duration::from_micros(100) < t0 + CALL_TIMING_INTERVAL {
            at += Duration::from_micros(100);
            sampler.start(at);
            let took = sampler.took(at, || panic!("the clock was read for a call not timed"));
            assert_eq!(took, Duration::from_micros(3));
        }
        // The first call at the interval's end is timed again.
        let at = t0 + CALL_TIMING_INTERVAL;
        sampler.start(at);
        assert_eq!(
            sampler.took(at, || at + Duration::from_micros(9)),
            Duration::from_micros(9)
        );
    }
}

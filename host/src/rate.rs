//! Per-app rate limits on the host calls that cost the host real work, so
//! that an app calling one in a tight loop slows itself down instead of the
//! gateway: a token bucket per app and kind of call.
//!
//! | call | rate | burst | past it |
//! |---|---|---|---|
//! | `log` (and stdout/stderr lines) | 200 lines/s | 1000 | dropped, counted, one warning a second |
//! | `storage.set` / `delete` | 1000/s | 5000 | `error::limit` |
//! | `device.report` | 1000/s | 5000 | `error::limit` |
//! | `device.alert` | 100/s | 500 | `error::limit` |
//! | `device.register` | 100/s | 1000 | `error::limit` (new devices are also capped by `max_devices`) |
//!
//! `record` is not limited here: it costs microseconds and the outbox's
//! byte limits bound it. CPU time is bounded by the call deadline.

use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

type Limiter<C> = RateLimiter<NotKeyed, InMemoryState, C, NoOpMiddleware<<C as Clock>::Instant>>;

/// A token bucket (governor's GCRA): `per_second` on average, bursts of up
/// to `burst`. Clones share the bucket, so every instance of one app draws
/// from the same one. The clock is governor's, or a fake one in tests.
#[derive(Clone)]
pub struct SharedLimit<C: Clock = DefaultClock> {
    limiter: Arc<Limiter<C>>,
    per_second: u32,
}

impl std::fmt::Debug for SharedLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SharedLimit({}/s)", self.per_second)
    }
}

impl SharedLimit {
    pub fn new(per_second: u32, burst: u32) -> SharedLimit {
        SharedLimit::with_clock(per_second, burst, DefaultClock::default())
    }
}

impl<C: Clock> SharedLimit<C> {
    pub fn with_clock(per_second: u32, burst: u32, clock: C) -> SharedLimit<C> {
        let positive = |n: u32| NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::per_second(positive(per_second)).allow_burst(positive(burst));
        SharedLimit {
            limiter: Arc::new(RateLimiter::direct_with_clock(quota, clock)),
            per_second,
        }
    }

    /// Take one token if there is one.
    pub fn allow(&self) -> bool {
        self.limiter.check().is_ok()
    }

    /// Take `n` tokens at once if they are there (never, if `n` is more
    /// than the burst; always, if it is 0).
    pub fn allow_n(&self, n: u64) -> bool {
        match NonZeroU32::new(u32::try_from(n).unwrap_or(u32::MAX)) {
            None => true,
            Some(n) => matches!(self.limiter.check_n(n), Ok(Ok(_))),
        }
    }

    pub fn per_second(&self) -> u32 {
        self.per_second
    }
}

/// One app's buckets: the calls that return `error::limit`, and its log
/// lines ([`LogGate`], which also counts the drops). Made once per app, not
/// per instance.
#[derive(Clone)]
pub struct AppRates {
    pub storage_writes: SharedLimit,
    pub reports: SharedLimit,
    pub alerts: SharedLimit,
    pub registrations: SharedLimit,
    /// Requests to devices (Modbus, ...), at the rate of the version that
    /// last asked ([`AppRates::device_requests`]).
    device_requests: Arc<std::sync::Mutex<SharedLimit>>,
    pub log: LogGate,
}

impl AppRates {
    /// The buckets of one app, its log drops counted in `metrics`.
    pub fn new(metrics: Arc<crate::metrics::AppMetrics>) -> AppRates {
        AppRates {
            storage_writes: storage_writes(),
            reports: reports(),
            alerts: alerts(),
            registrations: registrations(),
            device_requests: Arc::new(std::sync::Mutex::new(device_requests(
                crate::config::DEFAULT_IO_REQUESTS_PER_S,
            ))),
            log: LogGate::new(metrics),
        }
    }

    /// The device-request bucket at `per_second`, for an instance of the
    /// version that sets that rate: the app's one bucket while the rate
    /// stays (a restart hands out no fresh burst), a new one when a version
    /// changes it.
    pub fn device_requests(&self, per_second: u32) -> SharedLimit {
        let mut bucket = self
            .device_requests
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if bucket.per_second() != per_second {
            *bucket = device_requests(per_second);
        }
        bucket.clone()
    }
}

/// The app's log rate limit, shared by `log` and its stdout and stderr:
/// lines past it are dropped and counted, with one warning a second saying
/// how many.
#[derive(Clone)]
pub struct LogGate {
    limit: SharedLimit,
    drops: Arc<Mutex<Drops>>,
    metrics: Arc<crate::metrics::AppMetrics>,
}

struct Drops {
    dropped: u64,
    warned: Instant,
}

impl LogGate {
    pub fn new(metrics: Arc<crate::metrics::AppMetrics>) -> LogGate {
        LogGate {
            limit: log_lines(),
            drops: Arc::new(Mutex::new(Drops {
                dropped: 0,
                warned: Instant::now(),
            })),
            metrics,
        }
    }

    /// Whether the app may log one more line now.
    pub fn admit(&self, app: &str) -> bool {
        if self.limit.allow() {
            return true;
        }
        self.metrics
            .log_dropped
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut drops = self.drops.lock().unwrap_or_else(|e| e.into_inner());
        drops.dropped += 1;
        if drops.warned.elapsed() >= Duration::from_secs(1) {
            tracing::warn!(
                app,
                dropped = drops.dropped,
                "log lines dropped: the app logs more than {} lines a second",
                self.limit.per_second()
            );
            drops.warned = Instant::now();
        }
        false
    }
}

impl Default for LogGate {
    fn default() -> Self {
        LogGate::new(Arc::default())
    }
}

/// The limits of the table above.
pub fn log_lines() -> SharedLimit {
    SharedLimit::new(200, 1000)
}
pub fn storage_writes() -> SharedLimit {
    SharedLimit::new(1000, 5000)
}
pub fn reports() -> SharedLimit {
    SharedLimit::new(1000, 5000)
}
pub fn alerts() -> SharedLimit {
    SharedLimit::new(100, 500)
}
pub fn registrations() -> SharedLimit {
    SharedLimit::new(100, 1000)
}
/// Device requests (Modbus, ...) at an app's `io_requests_per_s`, with a
/// burst of two seconds' worth.
pub fn device_requests(per_second: u32) -> SharedLimit {
    SharedLimit::new(per_second, per_second.saturating_mul(2))
}
/// Warnings about refused messages from the network: each refusal is
/// answered and counted, but a flood must not become a flood of log lines.
pub fn refusal_warnings() -> SharedLimit {
    SharedLimit::new(5, 20)
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let clock = FakeRelativeClock::default();
        let r = SharedLimit::with_clock(1000, 10, clock.clone());
        assert_eq!((0..100).filter(|_| r.allow()).count(), 10, "the burst");
        clock.advance(Duration::from_millis(5));
        assert_eq!((0..100).filter(|_| r.allow()).count(), 5, "5 ms of 1000/s");
        clock.advance(Duration::from_millis(50));
        assert_eq!(
            (0..100).filter(|_| r.allow()).count(),
            10,
            "50 ms of 1000/s, capped by the burst"
        );
        let shared = r.clone();
        clock.advance(Duration::from_millis(1));
        assert!(shared.allow(), "clones draw from the same bucket");
        assert!(!r.allow());
    }

    #[test]
    fn amounts_are_taken_whole_or_not_at_all() {
        let clock = FakeRelativeClock::default();
        let pace = SharedLimit::with_clock(1000, 2000, clock.clone());
        assert!(pace.allow_n(1500));
        assert!(!pace.allow_n(1000), "500 left");
        assert!(pace.allow_n(500));
        assert!(!pace.allow_n(2001), "more than the burst, ever");
        clock.advance(Duration::from_secs(1));
        assert!(pace.allow_n(1000));
        assert!(pace.allow_n(0));
    }
}

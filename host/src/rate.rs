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

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A token bucket.
#[derive(Debug, Clone)]
pub struct RateLimit {
    per_second: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl RateLimit {
    pub fn new(per_second: f64, burst: f64) -> RateLimit {
        RateLimit {
            per_second,
            burst,
            tokens: burst,
            last: Instant::now(),
        }
    }

    fn refill(&mut self) {
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.last).as_secs_f64() * self.per_second)
            .min(self.burst);
        self.last = now;
    }

    /// Take one token if there is one.
    pub fn allow(&mut self) -> bool {
        self.refill();
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Whether any tokens are left, for spending amounts (bytes) whose size
    /// is known only once they are made: see `spend`.
    pub fn available(&mut self) -> bool {
        self.refill();
        self.tokens > 0.0
    }

    /// Take `amount` tokens, going into debt if need be; `available` says
    /// no until the debt is paid off.
    pub fn spend(&mut self, amount: f64) {
        self.tokens -= amount;
    }

    pub fn per_second(&self) -> f64 {
        self.per_second
    }
}

/// A bucket shared by every instance of one app, so that a restart or a
/// hot swap does not hand a flooding app a fresh burst.
#[derive(Debug, Clone)]
pub struct SharedLimit(Arc<Mutex<RateLimit>>);

impl SharedLimit {
    pub fn new(limit: RateLimit) -> SharedLimit {
        SharedLimit(Arc::new(Mutex::new(limit)))
    }

    /// Take one token if there is one.
    pub fn allow(&self) -> bool {
        match self.0.lock() {
            Ok(mut limit) => limit.allow(),
            // A panic while holding this lock cannot leave the bucket in a
            // state worth refusing over.
            Err(poisoned) => poisoned.into_inner().allow(),
        }
    }

    pub fn per_second(&self) -> f64 {
        match self.0.lock() {
            Ok(limit) => limit.per_second(),
            Err(poisoned) => poisoned.into_inner().per_second(),
        }
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
    pub log: LogGate,
}

impl AppRates {
    /// The buckets of one app, its log drops counted in `metrics`.
    pub fn new(metrics: Arc<crate::metrics::AppMetrics>) -> AppRates {
        AppRates {
            storage_writes: SharedLimit::new(storage_writes()),
            reports: SharedLimit::new(reports()),
            alerts: SharedLimit::new(alerts()),
            registrations: SharedLimit::new(registrations()),
            log: LogGate::new(metrics),
        }
    }
}

/// The app's log rate limit, shared by `log` and its stdout and stderr
/// (see `rate`): lines past it are dropped and counted, with one warning a
/// second saying how many.
#[derive(Clone)]
pub struct LogGate(Arc<Mutex<Gate>>);

struct Gate {
    limit: RateLimit,
    dropped: u64,
    warned: Instant,
    metrics: Arc<crate::metrics::AppMetrics>,
}

impl LogGate {
    pub fn new(metrics: Arc<crate::metrics::AppMetrics>) -> LogGate {
        LogGate(Arc::new(Mutex::new(Gate {
            limit: crate::rate::log_lines(),
            dropped: 0,
            warned: Instant::now(),
            metrics,
        })))
    }

    /// Whether the app may log one more line now.
    pub fn admit(&self, app: &str) -> bool {
        let Ok(mut gate) = self.0.lock() else {
            return true;
        };
        if gate.limit.allow() {
            return true;
        }
        gate.dropped += 1;
        gate.metrics
            .log_dropped
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if gate.warned.elapsed() >= Duration::from_secs(1) {
            tracing::warn!(
                app,
                dropped = gate.dropped,
                "log lines dropped: the app logs more than {} lines a second",
                gate.limit.per_second()
            );
            gate.warned = Instant::now();
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
pub fn log_lines() -> RateLimit {
    RateLimit::new(200.0, 1000.0)
}
pub fn storage_writes() -> RateLimit {
    RateLimit::new(1000.0, 5000.0)
}
pub fn reports() -> RateLimit {
    RateLimit::new(1000.0, 5000.0)
}
pub fn alerts() -> RateLimit {
    RateLimit::new(100.0, 500.0)
}
pub fn registrations() -> RateLimit {
    RateLimit::new(100.0, 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let mut r = RateLimit::new(1000.0, 10.0);
        let allowed = (0..100).filter(|_| r.allow()).count();
        assert!((10..=12).contains(&allowed), "{allowed}");
        std::thread::sleep(std::time::Duration::from_millis(20));
        let later = (0..100).filter(|_| r.allow()).count();
        assert!(
            (9..=12).contains(&later),
            "about 20 ms of 1000/s, capped by the burst: {later}"
        );
    }
}

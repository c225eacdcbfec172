//! The time an export call spends waiting on device I/O.
//!
//! A slow meter is not a runaway guest: time an app waits for a device
//! does not count against its call deadline. Each instance has one
//! [`IoClock`], shared by its store data (whose epoch check moves the
//! deadline by what was waited) and by its I/O capability units (which
//! time every wait). The wait a call may add is capped by the app's
//! `io_wait_ms`: past it, an I/O call is refused with `limit` rather than
//! started, so a call's wall time stays bounded by its deadline, the
//! grace and that budget.
//!
//! The clock can also be **cancelled**: when the app is to stop or be
//! replaced while it waits on a device, the actor cancels the wait, the
//! guest's call gets an error at once and returns, and the stop goes on
//! with the app's `save` as usual.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crate::bindings::IoError;
use crate::rate::SharedLimit;

/// Whether the app's device-request rate lets one more request through.
pub fn admit_rate(rate: &SharedLimit) -> Result<(), IoError> {
    if rate.allow() {
        return Ok(());
    }
    Err(IoError::Limit(format!(
        "over {} device requests a second (io_requests_per_s)",
        rate.per_second()
    )))
}

/// Whether a request that waits may start: the rate, and I/O time left in
/// this call.
pub fn admit(rate: &SharedLimit, io: &IoClock) -> Result<(), IoError> {
    admit_rate(rate)?;
    if io.remaining().is_zero() {
        return Err(IoError::Limit(format!(
            "this call has used its {} ms of I/O time (io_wait_ms)",
            io.budget().as_millis()
        )));
    }
    Ok(())
}

/// How long one request may wait: what the call asked for (`None`: the
/// grant's `granted_ms`), checked against the range every grant obeys.
pub fn request_limit(asked_ms: Option<u32>, granted_ms: u32) -> Result<Duration, IoError> {
    let ms = asked_ms.unwrap_or(granted_ms);
    if !(1..=crate::grants::MAX_TIMEOUT_MS).contains(&ms) {
        return Err(IoError::Invalid(format!(
            "a timeout of {ms} ms is not between 1 and {}",
            crate::grants::MAX_TIMEOUT_MS
        )));
    }
    Ok(Duration::from_millis(u64::from(ms)))
}

/// What one app's calls to an I/O unit came to, by outcome, since the
/// gateway started (each unit reports them under its own names).
#[derive(Debug, Default)]
pub struct IoCounters {
    pub calls: AtomicU64,
    pub denied: AtomicU64,
    pub timeouts: AtomicU64,
    pub failures: AtomicU64,
}

impl IoCounters {
    /// A call begins: counted now, so that a call still waiting on its
    /// device shows (a stop can then be seen to cut it short).
    pub fn begin(&self) {
        self.calls.fetch_add(1, Ordering::Relaxed);
    }

    /// Count how a begun call ended; hand the outcome on.
    pub fn ended<T>(&self, outcome: Result<T, IoError>) -> Result<T, IoError> {
        let counter = match &outcome {
            Err(IoError::Denied(_)) => Some(&self.denied),
            Err(IoError::Timeout(_)) => Some(&self.timeouts),
            Err(IoError::Closed(_)) => Some(&self.failures),
            _ => None,
        };
        if let Some(counter) = counter {
            counter.fetch_add(1, Ordering::Relaxed);
        }
        outcome
    }
}

/// One instance's I/O time in the export call in progress.
#[derive(Debug, Default)]
pub struct IoClock {
    waited_ns: AtomicU64,
    budget_ns: u64,
    cancelled: AtomicBool,
    wake: tokio::sync::Notify,
}

/// Why a wait ended without its I/O's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interrupted {
    /// The time allowed ran out.
    TimedOut,
    /// The app is stopping or being replaced.
    Cancelled,
}

impl Interrupted {
    /// The guest's error for a wait on `what` cut off after at most `limit`.
    pub fn io_error(self, what: &str, limit: Duration) -> IoError {
        match self {
            Interrupted::TimedOut => {
                IoError::Timeout(format!("{what}: no answer within {} ms", limit.as_millis()))
            }
            Interrupted::Cancelled => IoError::Closed(format!(
                "{what}: cancelled, the app is stopping or being replaced"
            )),
        }
    }
}

impl IoClock {
    /// A clock that lets a call wait `budget` on I/O at most.
    pub fn new(budget: Duration) -> IoClock {
        IoClock {
            budget_ns: u64::try_from(budget.as_nanos()).unwrap_or(u64::MAX),
            ..IoClock::default()
        }
    }

    /// A new export call starts.
    pub fn reset(&self) {
        self.waited_ns.store(0, Ordering::Relaxed);
        self.cancelled.store(false, Ordering::Relaxed);
    }

    /// End the wait in progress, and every wait until the next call.
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::Relaxed);
        self.wake.notify_waiters();
    }

    /// What the call in progress has waited on I/O so far.
    pub fn waited(&self) -> Duration {
        Duration::from_nanos(self.waited_ns.load(Ordering::Relaxed))
    }

    /// What it may still wait.
    pub fn remaining(&self) -> Duration {
        Duration::from_nanos(
            self.budget_ns
                .saturating_sub(self.waited_ns.load(Ordering::Relaxed)),
        )
    }

    /// The most a call may wait in all.
    pub fn budget(&self) -> Duration {
        Duration::from_nanos(self.budget_ns)
    }

    /// Run `io` (a wait in `wasi:io`: a socket, an HTTP answer) to its end,
    /// counting the time it took as waited: the limits on it are the
    /// stream's own and the call's wall-time bound. An app with no I/O
    /// budget (granted nothing) counts nothing, so its waits stay against
    /// its deadline.
    pub async fn time<F: std::future::Future>(&self, io: F) -> F::Output {
        if self.budget_ns == 0 {
            return io.await;
        }
        let started = tokio::time::Instant::now();
        let outcome = io.await;
        let took = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.waited_ns.fetch_add(took, Ordering::Relaxed);
        outcome
    }

    /// Run `io` for at most `limit` (and never past the budget), counting
    /// the time it took, unless the clock is cancelled first.
    pub async fn wait<F: std::future::Future>(
        &self,
        limit: Duration,
        io: F,
    ) -> Result<F::Output, Interrupted> {
        // Registered before the flag is read, so a cancel in between is
        // not missed.
        let cancelled = self.wake.notified();
        tokio::pin!(cancelled);
        cancelled.as_mut().enable();
        if self.cancelled.load(Ordering::Relaxed) {
            return Err(Interrupted::Cancelled);
        }
        let limit = limit.min(self.remaining());
        let started = tokio::time::Instant::now();
        let outcome = tokio::select! {
            done = tokio::time::timeout(limit, io) => done.map_err(|_| Interrupted::TimedOut),
            () = cancelled => Err(Interrupted::Cancelled),
        };
        let took = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.waited_ns.fetch_add(took, Ordering::Relaxed);
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn waits_are_counted_and_capped_by_the_budget() {
        let clock = IoClock::new(Duration::from_secs(3));
        let quick = clock
            .wait(
                Duration::from_secs(10),
                tokio::time::sleep(Duration::from_secs(1)),
            )
            .await;
        assert!(quick.is_ok());
        assert_eq!(clock.waited(), Duration::from_secs(1));
        // A device that never answers: cut at what the budget leaves (2 s),
        // not at the 10 s the call allowed.
        let stuck = clock
            .wait(Duration::from_secs(10), std::future::pending::<()>())
            .await;
        assert_eq!(stuck, Err(Interrupted::TimedOut));
        assert_eq!(clock.waited(), Duration::from_secs(3));
        assert_eq!(clock.remaining(), Duration::ZERO);
        clock.reset();
        assert_eq!(clock.remaining(), Duration::from_secs(3));
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancel_ends_the_wait_at_once_and_every_wait_until_the_next_call() {
        let clock = std::sync::Arc::new(IoClock::new(Duration::from_secs(30)));
        let waiting = {
            let clock = clock.clone();
            tokio::spawn(async move {
                clock
                    .wait(Duration::from_secs(20), std::future::pending::<()>())
                    .await
            })
        };
        tokio::time::sleep(Duration::from_secs(1)).await;
        clock.cancel();
        assert_eq!(waiting.await.expect("task"), Err(Interrupted::Cancelled));
        assert_eq!(clock.waited(), Duration::from_secs(1), "cut at the cancel");
        let later = clock.wait(Duration::from_secs(1), async {}).await;
        assert_eq!(later, Err(Interrupted::Cancelled), "until the next call");
        clock.reset();
        assert_eq!(clock.wait(Duration::from_secs(1), async { 7 }).await, Ok(7));
    }

    #[tokio::test(start_paused = true)]
    async fn a_timed_wait_counts_as_waited_only_with_a_budget() {
        let granted = IoClock::new(Duration::from_secs(10));
        granted
            .time(tokio::time::sleep(Duration::from_secs(3)))
            .await;
        assert_eq!(granted.waited(), Duration::from_secs(3));
        let ungranted = IoClock::new(Duration::ZERO);
        ungranted
            .time(tokio::time::sleep(Duration::from_secs(3)))
            .await;
        assert_eq!(
            ungranted.waited(),
            Duration::ZERO,
            "still against its deadline"
        );
    }

    #[test]
    fn a_requests_timeout_is_the_calls_or_the_grants_within_range() {
        let granted = 1000;
        assert_eq!(
            request_limit(None, granted).ok(),
            Some(Duration::from_secs(1))
        );
        assert_eq!(
            request_limit(Some(250), granted).ok(),
            Some(Duration::from_millis(250))
        );
        assert!(request_limit(Some(0), granted).is_err());
        assert!(request_limit(Some(crate::grants::MAX_TIMEOUT_MS + 1), granted).is_err());
    }

    #[test]
    fn calls_are_counted_by_how_they_ended() {
        let counters = IoCounters::default();
        let read = |c: &AtomicU64| c.load(Ordering::Relaxed);
        counters.begin();
        assert_eq!(read(&counters.calls), 1, "counted as it begins");
        let _ = counters.ended(Ok::<(), IoError>(()));
        for error in [
            IoError::Denied("x".into()),
            IoError::Timeout("x".into()),
            IoError::Closed("x".into()),
            IoError::Invalid("x".into()),
        ] {
            counters.begin();
            let _ = counters.ended::<()>(Err(error));
        }
        assert_eq!(read(&counters.calls), 5);
        assert_eq!(
            [
                read(&counters.denied),
                read(&counters.timeouts),
                read(&counters.failures)
            ],
            [1, 1, 1]
        );
    }
}

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

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// One instance's I/O time in the export call in progress.
#[derive(Debug, Default)]
pub struct IoClock {
    waited_ns: AtomicU64,
    budget_ns: u64,
}

impl IoClock {
    /// A clock that lets a call wait `budget` on I/O at most.
    pub fn new(budget: Duration) -> IoClock {
        IoClock {
            waited_ns: AtomicU64::new(0),
            budget_ns: u64::try_from(budget.as_nanos()).unwrap_or(u64::MAX),
        }
    }

    /// A new export call starts.
    pub fn reset(&self) {
        self.waited_ns.store(0, Ordering::Relaxed);
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

    /// Run `io` for at most `limit` (and never past the budget), counting
    /// the time it took. `None` if the time ran out first.
    pub async fn wait<F: std::future::Future>(&self, limit: Duration, io: F) -> Option<F::Output> {
        let limit = limit.min(self.remaining());
        let started = tokio::time::Instant::now();
        let outcome = tokio::time::timeout(limit, io).await.ok();
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
        assert!(quick.is_some());
        assert_eq!(clock.waited(), Duration::from_secs(1));
        // A device that never answers: cut at what the budget leaves (2 s),
        // not at the 10 s the call allowed.
        let stuck = clock
            .wait(Duration::from_secs(10), std::future::pending::<()>())
            .await;
        assert!(stuck.is_none());
        assert_eq!(clock.waited(), Duration::from_secs(3));
        assert_eq!(clock.remaining(), Duration::ZERO);
        clock.reset();
        assert_eq!(clock.remaining(), Duration::from_secs(3));
    }
}

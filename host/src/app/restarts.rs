//! When a crashed app starts again: the crashes within the restart window,
//! the backoff before the next start (doubling from `backoff_initial_ms` up
//! to `backoff_max_ms`), and quarantine after `max_crashes` within
//! `window_s`. Pure: the actor gives the time of each crash, so the tests
//! drive it.

use std::collections::VecDeque;
use std::time::Duration;
use tokio::time::Instant;

use crate::config::RestartPolicy;

/// What to do after a crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Start again after `after`; this was crash `count` within the window.
    Restart { after: Duration, count: u32 },
    /// Too many crashes within the window: leave the app stopped.
    Quarantine { count: u32 },
}

/// The recent crashes of one app.
#[derive(Debug, Default)]
pub struct Crashes(VecDeque<Instant>);

impl Crashes {
    /// Count a crash at `now`, forget those older than the window, and say
    /// what comes next.
    pub fn record(&mut self, now: Instant, policy: &RestartPolicy) -> Verdict {
        let window = Duration::from_secs(policy.window_s);
        self.0.push_back(now);
        while self
            .0
            .front()
            .is_some_and(|t| now.duration_since(*t) > window)
        {
            self.0.pop_front();
        }
        let count = self.0.len() as u32;
        if count >= policy.max_crashes {
            return Verdict::Quarantine { count };
        }
        let factor = 1u64 << (count - 1).min(20);
        let after = Duration::from_millis(
            policy
                .backoff_initial_ms
                .saturating_mul(factor)
                .min(policy.backoff_max_ms),
        );
        Verdict::Restart { after, count }
    }

    /// A fresh start (a new version, or an operator's start): old crashes
    /// no longer count.
    pub fn clear(&mut self) {
        self.0.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RestartPolicy {
        RestartPolicy {
            backoff_initial_ms: 500,
            backoff_max_ms: 4_000,
            max_crashes: 6,
            window_s: 60,
        }
    }

    fn restart_after(verdict: Verdict) -> Duration {
        match verdict {
            Verdict::Restart { after, .. } => after,
            other => panic!("expected a restart, got {other:?}"),
        }
    }

    #[test]
    fn the_backoff_doubles_up_to_its_cap_then_the_app_is_quarantined() {
        let (mut crashes, policy, t0) = (Crashes::default(), policy(), Instant::now());
        let waits: Vec<u64> = (0..5)
            .map(|i| {
                let now = t0 + Duration::from_secs(i);
                restart_after(crashes.record(now, &policy)).as_millis() as u64
            })
            .collect();
        assert_eq!(waits, [500, 1000, 2000, 4000, 4000]);
        assert_eq!(
            crashes.record(t0 + Duration::from_secs(5), &policy),
            Verdict::Quarantine { count: 6 }
        );
    }

    #[test]
    fn crashes_older_than_the_window_are_forgotten() {
        let (mut crashes, policy, t0) = (Crashes::default(), policy(), Instant::now());
        for i in 0..5 {
            crashes.record(t0 + Duration::from_secs(i), &policy);
        }
        // 61 s after the first five: they are out of the window, so this
        // crash is the first again.
        let later = t0 + Duration::from_secs(4 + 61);
        assert_eq!(
            crashes.record(later, &policy),
            Verdict::Restart {
                after: Duration::from_millis(500),
                count: 1
            }
        );
    }

    #[test]
    fn a_cleared_history_starts_over() {
        let (mut crashes, policy, t0) = (Crashes::default(), policy(), Instant::now());
        for i in 0..5 {
            crashes.record(t0 + Duration::from_millis(i), &policy);
        }
        crashes.clear();
        assert_eq!(
            restart_after(crashes.record(t0 + Duration::from_millis(9), &policy)),
            Duration::from_millis(500)
        );
    }

    #[test]
    fn one_crash_allowed_quarantines_at_once() {
        let policy = RestartPolicy {
            max_crashes: 1,
            ..policy()
        };
        assert_eq!(
            Crashes::default().record(Instant::now(), &policy),
            Verdict::Quarantine { count: 1 }
        );
    }
}

//! A hybrid logical clock (HLC, Kulkarni et al. 2014) that stamps the changes
//! of synced tables.
//!
//! Wall time alone cannot order changes: a gateway may boot without a
//! real-time clock, or before NTP has synced, and its clock can jump
//! backwards. A pure logical (Lamport) clock orders them but says nothing a
//! person can read, and "last writer wins" would then mean "the busiest
//! writer wins". An HLC stays within the drift bound of real time, never goes
//! backwards on one node, and puts every change a node makes after seeing
//! another one after that one.
//!
//! The time is passed in by the caller: this module never reads a clock, so
//! it stays pure and tests drive it.

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// How far ahead of our own clock a remote stamp may be before it is refused
/// (five minutes): more than ordinary clock skew, far less than a gateway
/// whose clock is years off.
pub const MAX_DRIFT_MS: u64 = 5 * 60 * 1000;

/// One point in HLC time.
///
/// The fields are in comparison order (the derived `Ord` compares them in
/// declaration order): wall time, then the counter that orders events within
/// one millisecond, then the node, so that two nodes never make equal stamps
/// and the order is total.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Stamp {
    /// Milliseconds since the Unix epoch, as far as this node's clock and the
    /// stamps it has seen tell.
    pub wall_ms: u64,
    pub counter: u32,
    pub node: u64,
}

impl Stamp {
    pub const fn new(wall_ms: u64, counter: u32, node: u64) -> Self {
        Self {
            wall_ms,
            counter,
            node,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ClockError {
    /// Taking the stamp would drag our clock into the future, and every stamp
    /// we make after it would beat honest writers until real time caught up.
    #[error(
        "remote stamp at {remote_wall_ms} ms is more than {max_drift_ms} ms ahead of the local clock ({now_ms} ms)"
    )]
    TooFarAhead {
        remote_wall_ms: u64,
        now_ms: u64,
        max_drift_ms: u64,
    },
    /// Over four billion events in one millisecond: only a wall time stuck
    /// far ahead gets here. Wrapping would break monotonicity.
    #[error("clock counter exhausted at wall time {wall_ms} ms")]
    CounterOverflow { wall_ms: u64 },
}

/// One node's HLC. Persist [`Clock::last`] and restart with
/// [`Clock::resume`], so that stamps stay monotonic across restarts even if
/// the wall clock went backwards meanwhile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Clock {
    last: Stamp,
    max_drift_ms: u64,
}

impl Clock {
    pub fn new(node: u64) -> Self {
        Self::resume(Stamp::new(0, 0, node))
    }

    /// Continues from a stamp this node made before (its node id included).
    pub fn resume(last: Stamp) -> Self {
        Self {
            last,
            max_drift_ms: MAX_DRIFT_MS,
        }
    }

    /// Replaces the default [`MAX_DRIFT_MS`].
    pub fn with_max_drift(mut self, max_drift_ms: u64) -> Self {
        self.max_drift_ms = max_drift_ms;
        self
    }

    pub fn last(&self) -> Stamp {
        self.last
    }

    pub fn node(&self) -> u64 {
        self.last.node
    }

    pub fn max_drift_ms(&self) -> u64 {
        self.max_drift_ms
    }

    /// Stamps a local event (or a send). On error the clock is unchanged.
    pub fn tick(&mut self, now_ms: u64) -> Result<Stamp, ClockError> {
        let last = self.last;
        let wall_ms = last.wall_ms.max(now_ms);
        let counter = if wall_ms == last.wall_ms {
            bump(last.counter, wall_ms)?
        } else {
            0
        };
        Ok(self.set(wall_ms, counter))
    }

    /// Takes in a stamp from another node (a receive); the stamp returned is
    /// after both it and everything this clock made before. On error the
    /// clock is unchanged.
    pub fn observe(&mut self, remote: Stamp, now_ms: u64) -> Result<Stamp, ClockError> {
        if remote.wall_ms > now_ms.saturating_add(self.max_drift_ms) {
            return Err(ClockError::TooFarAhead {
                remote_wall_ms: remote.wall_ms,
                now_ms,
                max_drift_ms: self.max_drift_ms,
            });
        }
        let last = self.last;
        let wall_ms = last.wall_ms.max(remote.wall_ms).max(now_ms);
        // The counter only carries over from the stamps whose wall time is
        // the new one: a later wall time already orders it after the others.
        let counter = match (wall_ms == last.wall_ms, wall_ms == remote.wall_ms) {
            (true, true) => bump(last.counter.max(remote.counter), wall_ms)?,
            (true, false) => bump(last.counter, wall_ms)?,
            (false, true) => bump(remote.counter, wall_ms)?,
            (false, false) => 0,
        };
        Ok(self.set(wall_ms, counter))
    }

    fn set(&mut self, wall_ms: u64, counter: u32) -> Stamp {
        self.last = Stamp::new(wall_ms, counter, self.last.node);
        self.last
    }
}

fn bump(counter: u32, wall_ms: u64) -> Result<u32, ClockError> {
    counter
        .checked_add(1)
        .ok_or(ClockError::CounterOverflow { wall_ms })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_stay_monotonic_when_the_wall_clock_goes_backwards() {
        let mut clock = Clock::new(1);
        let a = clock.tick(1_000).unwrap();
        let b = clock.tick(400).unwrap();
        let c = clock.tick(400).unwrap();
        let d = clock.tick(1_001).unwrap();
        assert!(a < b && b < c && c < d, "{a:?} {b:?} {c:?} {d:?}");
        assert_eq!(a, Stamp::new(1_000, 0, 1));
        assert_eq!(b, Stamp::new(1_000, 1, 1));
        assert_eq!(c, Stamp::new(1_000, 2, 1));
        // Real time caught up: the counter starts again.
        assert_eq!(d, Stamp::new(1_001, 0, 1));
        assert_eq!(clock.last(), d);
    }

    #[test]
    fn a_resumed_clock_continues_after_its_persisted_stamp() {
        let mut clock = Clock::resume(Stamp::new(5_000, 3, 7));
        assert_eq!(clock.node(), 7);
        assert_eq!(clock.tick(10).unwrap(), Stamp::new(5_000, 4, 7));
    }

    #[test]
    fn observe_moves_past_the_remote_stamp_and_our_own() {
        let mut clock = Clock::new(1);
        clock.tick(1_000).unwrap();
        // Remote ahead of us (within the drift bound): we take its wall time.
        let remote = Stamp::new(2_000, 7, 9);
        let seen = clock.observe(remote, 1_500).unwrap();
        assert_eq!(seen, Stamp::new(2_000, 8, 1));
        assert!(seen > remote);
        // A later local event is after it, though our wall clock is behind.
        let next = clock.tick(1_600).unwrap();
        assert!(next > seen && next > remote);
        assert_eq!(next, Stamp::new(2_000, 9, 1));
        // Same wall time on both sides: past the larger counter.
        let tie = clock.observe(Stamp::new(2_000, 40, 9), 1_700).unwrap();
        assert_eq!(tie, Stamp::new(2_000, 41, 1));
        // Remote behind: our own counter moves on.
        let behind = clock.observe(Stamp::new(10, 99, 9), 1_800).unwrap();
        assert_eq!(behind, Stamp::new(2_000, 42, 1));
        // Real time past both: counter restarts.
        let fresh = clock.observe(Stamp::new(2_500, 3, 9), 3_000).unwrap();
        assert_eq!(fresh, Stamp::new(3_000, 0, 1));
    }

    #[test]
    fn a_remote_stamp_too_far_ahead_is_refused_and_leaves_the_clock_unchanged() {
        let mut clock = Clock::new(1);
        clock.tick(1_000).unwrap();
        let before = clock.clone();
        let wild = Stamp::new(1_000 + MAX_DRIFT_MS + 1, 0, 9);
        assert_eq!(
            clock.observe(wild, 1_000),
            Err(ClockError::TooFarAhead {
                remote_wall_ms: wild.wall_ms,
                now_ms: 1_000,
                max_drift_ms: MAX_DRIFT_MS,
            })
        );
        assert_eq!(clock, before);
        // Exactly at the bound is accepted.
        let edge = Stamp::new(1_000 + MAX_DRIFT_MS, 0, 9);
        assert!(clock.observe(edge, 1_000).is_ok());

        let mut strict = Clock::new(2).with_max_drift(10);
        assert_eq!(strict.max_drift_ms(), 10);
        assert!(strict.observe(Stamp::new(111, 0, 9), 100).is_err());
        assert_eq!(strict.last(), Stamp::new(0, 0, 2));
        assert!(strict.observe(Stamp::new(110, 0, 9), 100).is_ok());
    }

    #[test]
    fn counter_overflow_is_an_error_not_a_wrap() {
        let full = Stamp::new(1_000, u32::MAX, 1);
        let mut clock = Clock::resume(full);
        assert_eq!(
            clock.tick(1_000),
            Err(ClockError::CounterOverflow { wall_ms: 1_000 })
        );
        assert_eq!(clock.last(), full);
        assert_eq!(
            clock.observe(Stamp::new(1_000, 5, 9), 900),
            Err(ClockError::CounterOverflow { wall_ms: 1_000 })
        );
        assert_eq!(
            clock.observe(Stamp::new(1_000, u32::MAX, 9), 900),
            Err(ClockError::CounterOverflow { wall_ms: 1_000 })
        );
        assert_eq!(clock.last(), full);
        // Once real time moves on, the clock works again.
        assert_eq!(clock.tick(1_001).unwrap(), Stamp::new(1_001, 0, 1));
        // A remote stamp at its limit overflows a fresh clock too.
        let mut other = Clock::new(2);
        assert!(matches!(
            other.observe(Stamp::new(50, u32::MAX, 9), 10),
            Err(ClockError::CounterOverflow { wall_ms: 50 })
        ));
        assert_eq!(other.last(), Stamp::new(0, 0, 2));
    }

    #[test]
    fn stamps_order_by_wall_then_counter_then_node() {
        let a = Stamp::new(1, 5, 9);
        let b = Stamp::new(2, 0, 0);
        let c = Stamp::new(2, 1, 0);
        let d = Stamp::new(2, 1, 1);
        assert!(a < b && b < c && c < d);

        // Two nodes ticking at the same instant make distinct stamps, and a
        // node that has seen the other's stamp orders its next one after it.
        let mut device = Clock::new(1);
        let mut server = Clock::new(2);
        let x = device.tick(1_000).unwrap();
        let y = server.tick(1_000).unwrap();
        assert_ne!(x, y);
        assert!(x < y, "equal wall and counter: the node decides");
        server.observe(x, 1_000).unwrap();
        let z = server.tick(1_000).unwrap();
        assert!(z > x);
        device.observe(z, 990).unwrap();
        assert!(device.tick(990).unwrap() > z);
    }

    #[test]
    fn errors_say_what_happened_and_stamps_serialize() {
        let e = ClockError::TooFarAhead {
            remote_wall_ms: 400_001,
            now_ms: 100_000,
            max_drift_ms: MAX_DRIFT_MS,
        };
        assert_eq!(
            e.to_string(),
            "remote stamp at 400001 ms is more than 300000 ms ahead of the local clock (100000 ms)"
        );
        let s = Stamp::new(3, 2, 1);
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(json, r#"{"wall_ms":3,"counter":2,"node":1}"#);
        assert_eq!(serde_json::from_str::<Stamp>(&json).unwrap(), s);
    }
}

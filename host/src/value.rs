//! Typed values: conversions between the WIT `value` and JSON, and time.
//!
//! JSON is the form values take in the SQLite store and on the wire. It is
//! typed by the device model, so the JSON itself stays plain: numbers,
//! strings, booleans, and bytes as base64 text.

use base64::Engine as _;
/// How bytes are written as JSON text (and read back): standard base64.
pub(crate) use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// A random-enough token (ids, jitter) without a crate for it: the standard
/// library's randomly keyed hasher over the clock and a counter.
pub fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::AtomicU64;
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(now_ns());
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.finish()
}

use crate::bindings::{Time, Value};

/// The kind of a value, as a device model declares it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ValueKind {
    Boolean,
    Integer,
    Number,
    Text,
    Bytes,
}

impl fmt::Display for ValueKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ValueKind::Boolean => "boolean",
            ValueKind::Integer => "integer",
            ValueKind::Number => "number",
            ValueKind::Text => "text",
            ValueKind::Bytes => "bytes",
        })
    }
}

/// The kind of a value a guest passed.
pub fn kind_of(value: &Value) -> ValueKind {
    match value {
        Value::Boolean(_) => ValueKind::Boolean,
        Value::Integer(_) => ValueKind::Integer,
        Value::Number(_) => ValueKind::Number,
        Value::Text(_) => ValueKind::Text,
        Value::Bytes(_) => ValueKind::Bytes,
    }
}

/// A value as JSON. Numbers are finite by the time they get here (the model
/// check refuses NaN and infinities), so nothing is lost.
pub fn to_json(value: &Value) -> serde_json::Value {
    match value {
        Value::Boolean(b) => serde_json::Value::Bool(*b),
        Value::Integer(i) => serde_json::Value::from(*i),
        Value::Number(n) => serde_json::Number::from_f64(*n)
            .map(serde_json::Value::Number)
            .unwrap_or(serde_json::Value::Null),
        Value::Text(s) => serde_json::Value::String(s.clone()),
        Value::Bytes(b) => serde_json::Value::String(BASE64.encode(b)),
    }
}

/// A JSON value read as `kind`. Integers are accepted where a number is
/// expected; nothing else is converted.
pub fn from_json(json: &serde_json::Value, kind: ValueKind) -> Result<Value, String> {
    let wrong = || format!("expected {kind}, got {}", json_kind(json));
    match kind {
        ValueKind::Boolean => json.as_bool().map(Value::Boolean).ok_or_else(wrong),
        ValueKind::Integer => json.as_i64().map(Value::Integer).ok_or_else(wrong),
        ValueKind::Number => json.as_f64().map(Value::Number).ok_or_else(wrong),
        ValueKind::Text => json
            .as_str()
            .map(|s| Value::Text(s.to_string()))
            .ok_or_else(wrong),
        ValueKind::Bytes => {
            let text = json.as_str().ok_or_else(wrong)?;
            BASE64
                .decode(text)
                .map(Value::Bytes)
                .map_err(|e| format!("expected base64 bytes: {e}"))
        }
    }
}

fn json_kind(json: &serde_json::Value) -> &'static str {
    match json {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "boolean",
        serde_json::Value::Number(n) if n.is_f64() => "number",
        serde_json::Value::Number(_) => "integer",
        serde_json::Value::String(_) => "text",
        serde_json::Value::Array(_) => "array",
        serde_json::Value::Object(_) => "object",
    }
}

/// Named values as one JSON object, in the order given.
pub fn fields_to_json(fields: &[(String, Value)]) -> serde_json::Value {
    serde_json::Value::Object(
        fields
            .iter()
            .map(|(name, value)| (name.clone(), to_json(value)))
            .collect(),
    )
}

/// Nanoseconds since the Unix epoch, now.
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The wall clock minus the monotonic clock (nanoseconds since
/// [`MONOTONIC_ORIGIN`]), in nanoseconds; `i64::MIN` until first measured.
static WALL_OFFSET_NS: AtomicI64 = AtomicI64::new(i64::MIN);

/// Where the monotonic readings of [`wall_ns_at`] count from.
static MONOTONIC_ORIGIN: LazyLock<Instant> = LazyLock::new(Instant::now);

/// Measure again how far the wall clock is from the monotonic one. The
/// epoch ticker does, every tick (`engine::EPOCH_TICK`), so a step of the
/// wall clock (NTP setting it after boot, say) shows in [`wall_ns_at`]
/// within a tick; between two, the clocks part by at most NTP's slew
/// (0.05 %: 5 µs in 10 ms).
pub fn refresh_wall_offset() {
    let monotonic = Instant::now().duration_since(*MONOTONIC_ORIGIN);
    let offset = i128::from(now_ns()) - monotonic.as_nanos() as i128;
    let offset = i64::try_from(offset).unwrap_or(i64::MIN + 1);
    WALL_OFFSET_NS.store(offset, Ordering::Relaxed);
}

/// The wall-clock time, in nanoseconds since the Unix epoch, of the
/// monotonic reading `at`: a call that reads the monotonic clock for its
/// deadline gets its wall time without a second clock read (a third of
/// what the tick's call path added to a bare call, P1). Before the first
/// [`refresh_wall_offset`] it reads the wall clock.
pub fn wall_ns_at(at: Instant) -> u64 {
    let offset = WALL_OFFSET_NS.load(Ordering::Relaxed);
    if offset == i64::MIN {
        return now_ns();
    }
    let origin = *MONOTONIC_ORIGIN;
    // `at` may have been read before the origin was first set.
    let monotonic = match at.checked_duration_since(origin) {
        Some(after) => after.as_nanos() as i128,
        None => -(origin.duration_since(at).as_nanos() as i128),
    };
    u64::try_from(monotonic + i128::from(offset)).unwrap_or(0)
}

/// A guest's time in nanoseconds since the epoch, or an error if it does not
/// fit in 64 bits (after the year 2554).
pub fn time_to_ns(time: Time) -> Result<u64, String> {
    let (n, scale, unit) = match time {
        Time::Seconds(n) => (n, 1_000_000_000, "s"),
        Time::Milliseconds(n) => (n, 1_000_000, "ms"),
        Time::Microseconds(n) => (n, 1_000, "us"),
        Time::Nanoseconds(n) => (n, 1, "ns"),
    };
    n.checked_mul(scale)
        .ok_or_else(|| format!("time {n} {unit} is out of range (after the year 2554)"))
}

/// The earliest time a point may carry: 2000-01-01T00:00:00Z, in ns.
pub const EARLIEST_NS: u64 = 946_684_800 * 1_000_000_000;

/// How far past the gateway's clock a point's time may be: clocks of
/// devices drift, but a point from next year is a wrong unit or a bug.
pub const MAX_AHEAD_NS: u64 = 24 * 3600 * 1_000_000_000;

/// A point's time if it is plausible: from 2000 on, and at most a day past
/// `now_ns`. Anything else is almost always a wrong unit (seconds given as
/// nanoseconds, say) and would sort the series wrongly for good.
pub fn plausible_time(ns: u64, now_ns: u64) -> Result<u64, String> {
    if ns < EARLIEST_NS {
        return Err(format!(
            "time {ns} ns is before 2000-01-01 (is its unit right?)"
        ));
    }
    if ns > now_ns.saturating_add(MAX_AHEAD_NS) {
        return Err(format!(
            "time {ns} ns is more than a day past the gateway's clock ({now_ns} ns; is its unit right?)"
        ));
    }
    Ok(ns)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_monotonic_reading_gives_its_own_wall_time() {
        let earlier = std::time::Instant::now();
        std::thread::sleep(std::time::Duration::from_millis(30));
        refresh_wall_offset();
        let (at, wall) = (std::time::Instant::now(), now_ns());
        let near = |a: u64, b: u64| a.abs_diff(b) < 2_000_000;
        assert!(
            near(wall_ns_at(at), wall),
            "{} against {wall}",
            wall_ns_at(at)
        );
        // Read before the offset was measured (and perhaps before the
        // origin was set): still its own time, not the wall clock's now.
        let then = wall_ns_at(earlier);
        let waited = u64::try_from(at.duration_since(earlier).as_nanos()).unwrap();
        assert!(
            near(then, wall - waited),
            "{then} against {}",
            wall - waited
        );
    }

    #[test]
    fn only_plausible_times_are_taken() {
        let now = 1_763_766_000 * 1_000_000_000;
        assert_eq!(plausible_time(now, now), Ok(now));
        assert!(plausible_time(EARLIEST_NS, now).is_ok());
        assert!(plausible_time(now + MAX_AHEAD_NS, now).is_ok());
        for wrong in [0, EARLIEST_NS - 1, now + MAX_AHEAD_NS + 1, u64::MAX] {
            let refused = plausible_time(wrong, now).expect_err("implausible");
            assert!(refused.contains("is its unit right?"), "{refused}");
        }
        // Seconds given where nanoseconds are meant: 1970.
        assert!(plausible_time(1_763_766_000, now).is_err());
    }

    #[test]
    fn json_round_trip_keeps_each_kind() {
        let cases = [
            (Value::Boolean(true), ValueKind::Boolean),
            (Value::Integer(-7), ValueKind::Integer),
            (Value::Number(21.5), ValueKind::Number),
            (Value::Text("hé".into()), ValueKind::Text),
            (Value::Bytes(vec![0, 1, 255]), ValueKind::Bytes),
        ];
        for (value, kind) in cases {
            let back = from_json(&to_json(&value), kind).expect("round trip");
            assert_eq!(format!("{back:?}"), format!("{value:?}"));
        }
    }

    #[test]
    fn integers_are_numbers_but_not_the_reverse() {
        assert!(matches!(
            from_json(&serde_json::json!(3), ValueKind::Number),
            Ok(Value::Number(n)) if n == 3.0
        ));
        assert_eq!(
            from_json(&serde_json::json!(3.5), ValueKind::Integer).unwrap_err(),
            "expected integer, got number"
        );
        assert_eq!(
            from_json(&serde_json::json!("x"), ValueKind::Boolean).unwrap_err(),
            "expected boolean, got text"
        );
    }

    #[test]
    fn times_convert_to_nanoseconds_and_overflow_is_refused() {
        assert_eq!(time_to_ns(Time::Seconds(2)), Ok(2_000_000_000));
        assert_eq!(time_to_ns(Time::Milliseconds(3)), Ok(3_000_000));
        assert_eq!(time_to_ns(Time::Microseconds(4)), Ok(4_000));
        assert_eq!(time_to_ns(Time::Nanoseconds(5)), Ok(5));
        assert!(time_to_ns(Time::Seconds(u64::MAX / 10)).is_err());
    }
}

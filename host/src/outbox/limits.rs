//! Bounds on the outbox: how many bytes each stream and the whole gateway
//! may hold, how old a point may get, and what happens at the limit.
//!
//! [`Usage`] keeps the running totals in memory (loaded from the database at
//! start) and the counters of what was dropped, refused and expired, which
//! `wasmgate status` and the `status` message show. The writer thread
//! enforces the limits after every commit and once a second; a stream whose
//! series is `reject-newest` is checked before a guest's `record` is
//! accepted instead.

use rusqlite::{Connection, Transaction, params};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use crate::config::{OutboxConfig, WhenFull};
use crate::value::now_ns;

/// A stream of the outbox: telemetry of one series, or one alert, of one device.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Stream {
    pub kind: &'static str,
    pub device: String,
    pub name: String,
}

impl Stream {
    pub fn telemetry(device: &str, series: &str) -> Stream {
        Stream {
            kind: "telemetry",
            device: device.to_string(),
            name: series.to_string(),
        }
    }

    pub fn alert(device: &str, name: &str) -> Stream {
        Stream {
            kind: "alert",
            device: device.to_string(),
            name: name.to_string(),
        }
    }

    fn of(kind: &str, device: String, name: String) -> Option<Stream> {
        let kind = match kind {
            "telemetry" => "telemetry",
            "alert" => "alert",
            _ => return None,
        };
        Some(Stream { kind, device, name })
    }
}

/// What one stream holds and what became of the points it lost.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct StreamStats {
    pub bytes: u64,
    pub points: u64,
    /// Deleted unsent to make room (`drop-oldest`).
    pub dropped: u64,
    /// Refused at `record` because the outbox was full (`reject-newest`).
    pub rejected: u64,
    /// Deleted unsent because they grew older than `max_age_s`.
    pub expired: u64,
    /// Accepted by `record` but not committed yet (only counted for
    /// `reject-newest` series): a guest recording in a tight loop would
    /// otherwise overshoot its limit by everything it recorded before the
    /// next group commit.
    #[serde(skip)]
    pub in_flight_points: u64,
    #[serde(skip)]
    pub in_flight_bytes: u64,
}

impl StreamStats {
    /// `points` of the in-flight ones were committed or given up; their share
    /// of the in-flight bytes goes with them.
    fn settle(&mut self, points: u64) {
        if points >= self.in_flight_points {
            self.in_flight_points = 0;
            self.in_flight_bytes = 0;
        } else {
            let share = u128::from(self.in_flight_bytes) * u128::from(points)
                / u128::from(self.in_flight_points);
            self.in_flight_bytes -= share as u64;
            self.in_flight_points -= points;
        }
    }
}

#[derive(Default)]
struct Inner {
    total_bytes: u64,
    streams: HashMap<Stream, StreamStats>,
    /// Set while the database refuses writes; guests get `unavailable`.
    write_error: Option<String>,
    /// Counters changed since they were last saved.
    dirty: bool,
}

/// Each stream's bytes and points, summed over its rows.
const STREAM_SUMS: &str =
    "SELECT kind, device, name, COALESCE(SUM(length(payload)), 0), COALESCE(SUM(points), 0)
     FROM outbox WHERE kind IN ('telemetry', 'alert') GROUP BY kind, device, name";

/// The outbox's running totals and counters, shared by the writer, the
/// apps and the cloud link.
pub struct Usage {
    config: OutboxConfig,
    inner: Mutex<Inner>,
}

impl Usage {
    /// Totals from the rows in the database, counters from `outbox_counters`.
    /// The sums read only the index `outbox_by_stream`, which holds each
    /// row's points and payload length (see `store`), not the rows: the
    /// start of a gateway with a backlog would otherwise read all of it.
    pub fn load(conn: &Connection, config: OutboxConfig) -> rusqlite::Result<Usage> {
        let mut inner = Inner::default();
        let mut stmt = conn.prepare(STREAM_SUMS)?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, i64>(4)?,
            ))
        })?;
        for row in rows {
            let (kind, device, name, bytes, points) = row?;
            if let Some(stream) = Stream::of(&kind, device, name) {
                let stats = inner.streams.entry(stream).or_default();
                stats.bytes = bytes.max(0) as u64;
                stats.points = points.max(0) as u64;
                inner.total_bytes += stats.bytes;
            }
        }
        let mut stmt = conn.prepare(
            "SELECT kind, device, name, dropped, rejected, expired FROM outbox_counters",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, i64>(4)?,
                r.get::<_, i64>(5)?,
            ))
        })?;
        for row in rows {
            let (kind, device, name, dropped, rejected, expired) = row?;
            if let Some(stream) = Stream::of(&kind, device, name) {
                let stats = inner.streams.entry(stream).or_default();
                stats.dropped = dropped.max(0) as u64;
                stats.rejected = rejected.max(0) as u64;
                stats.expired = expired.max(0) as u64;
            }
        }
        Ok(Usage {
            config,
            inner: Mutex::new(inner),
        })
    }

    pub fn config(&self) -> &OutboxConfig {
        &self.config
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A poisoned lock means a panic elsewhere already; the counters are
        // still usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a guest may record more points of `series` for `device`:
    /// only `reject-newest` series are ever refused here.
    pub(super) fn admit(
        &self,
        device: &str,
        series: &str,
        points: u64,
    ) -> Result<(), super::OutboxError> {
        let config = self.config.series(series);
        if config.when_full != WhenFull::RejectNewest {
            return Ok(());
        }
        let mut inner = self.lock();
        let total = inner.total_bytes;
        let stream = Stream::telemetry(device, series);
        let stats = inner.streams.entry(stream).or_default();
        let full = if total >= self.config.max_bytes {
            Some(format!("the outbox holds {} KiB, its limit", total >> 10))
        } else {
            let held = stats.bytes + stats.in_flight_bytes;
            config.max_bytes.filter(|max| held >= *max).map(|max| {
                format!(
                    "series `{series}` holds {} KiB, its limit of {} KiB",
                    held >> 10,
                    max >> 10
                )
            })
        };
        match full {
            None => Ok(()),
            Some(why) => {
                stats.rejected += points;
                inner.dirty = true;
                Err(super::OutboxError::Full { why })
            }
        }
    }

    /// A guest's points of a `reject-newest` series are on their way to the
    /// outbox writer: count them against the series' limit already.
    pub(super) fn reserve(&self, device: &str, series: &str, bytes: u64, points: u64) {
        if self.config.series(series).when_full != WhenFull::RejectNewest {
            return;
        }
        let mut inner = self.lock();
        let stats = inner
            .streams
            .entry(Stream::telemetry(device, series))
            .or_default();
        stats.in_flight_points += points;
        stats.in_flight_bytes += bytes;
    }

    /// Points on their way were given up before they were written.
    pub(super) fn unreserve(&self, stream: &Stream, points: u64) {
        if let Some(stats) = self.lock().streams.get_mut(stream) {
            stats.settle(points);
        }
    }

    /// Rows were written; whether their stream is now over the byte limit
    /// its series keeps by dropping (see [`enforce`]).
    pub(super) fn added(&self, stream: Stream, bytes: u64, points: u64) -> bool {
        let limit = match stream.kind {
            "telemetry" => self.config.series(&stream.name).drop_oldest_limit(),
            _ => None,
        };
        let mut inner = self.lock();
        inner.total_bytes += bytes;
        let stats = inner.streams.entry(stream).or_default();
        stats.bytes += bytes;
        stats.points += points;
        stats.settle(points);
        limit.is_some_and(|max| stats.bytes > max)
    }

    /// Rows were delivered.
    pub(super) fn removed(&self, stream: &Stream, bytes: u64, points: u64) {
        let mut inner = self.lock();
        inner.total_bytes = inner.total_bytes.saturating_sub(bytes);
        if let Some(stats) = inner.streams.get_mut(stream) {
            stats.bytes = stats.bytes.saturating_sub(bytes);
            stats.points = stats.points.saturating_sub(points);
        }
    }

    fn lost(&self, stream: &Stream, bytes: u64, points: u64, why: Loss) {
        self.removed(stream, bytes, points);
        let mut inner = self.lock();
        inner.dirty = true;
        if let Some(stats) = inner.streams.get_mut(stream) {
            match why {
                Loss::Dropped => stats.dropped += points,
                Loss::Expired => stats.expired += points,
            }
        }
    }

    pub fn total_bytes(&self) -> u64 {
        self.lock().total_bytes
    }

    /// The points of every stream.
    pub fn total_points(&self) -> u64 {
        self.lock().streams.values().map(|stats| stats.points).sum()
    }

    /// Why the writer cannot commit now, if it cannot.
    pub fn write_error(&self) -> Option<super::OutboxError> {
        self.lock()
            .write_error
            .clone()
            .map(super::OutboxError::Unavailable)
    }

    pub(super) fn set_write_error(&self, error: Option<String>) {
        self.lock().write_error = error;
    }

    /// Every stream's totals and counters, in order.
    pub fn snapshot(&self) -> Vec<(Stream, StreamStats)> {
        let mut out: Vec<_> = self
            .lock()
            .streams
            .iter()
            .map(|(s, st)| (s.clone(), st.clone()))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Write changed counters (in the caller's transaction).
    pub(super) fn save_counters(&self, tx: &Transaction<'_>) -> rusqlite::Result<()> {
        let mut inner = self.lock();
        if !inner.dirty {
            return Ok(());
        }
        let mut stmt = tx.prepare_cached(
            "INSERT INTO outbox_counters (kind, device, name, dropped, rejected, expired) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (kind, device, name) DO UPDATE
             SET dropped = excluded.dropped, rejected = excluded.rejected, expired = excluded.expired",
        )?;
        for (s, st) in &inner.streams {
            if st.dropped + st.rejected + st.expired > 0 {
                stmt.execute(params![
                    s.kind,
                    s.device,
                    s.name,
                    st.dropped as i64,
                    st.rejected as i64,
                    st.expired as i64
                ])?;
            }
        }
        inner.dirty = false;
        Ok(())
    }
}

#[derive(Clone, Copy)]
enum Loss {
    Dropped,
    Expired,
}

/// Bring every stream and the gateway under their byte limits, deleting the
/// oldest rows of `drop-oldest` streams: telemetry first, alerts last.
pub fn enforce(tx: &Transaction<'_>, usage: &Usage) -> rusqlite::Result<()> {
    let config = usage.config();
    // Per-stream limits, if any series has one: copying every stream's
    // figures each second is not free at 20,000 streams.
    let stream_limits = config
        .all_series()
        .any(|series| series.drop_oldest_limit().is_some());
    for (stream, stats) in stream_limits
        .then(|| usage.snapshot())
        .into_iter()
        .flatten()
    {
        if stream.kind != "telemetry" {
            continue;
        }
        let Some(max) = config.series(&stream.name).drop_oldest_limit() else {
            continue;
        };
        let mut over = stats.bytes.saturating_sub(max);
        while over > 0 {
            let victims = oldest(tx, Some(&stream), "telemetry", 0, 64)?;
            if victims.is_empty() {
                break;
            }
            for victim in victims {
                if over == 0 {
                    break;
                }
                delete(tx, victim.seq)?;
                usage.lost(&victim.stream, victim.bytes, victim.points, Loss::Dropped);
                over = over.saturating_sub(victim.bytes);
            }
        }
    }
    // The gateway's limit: telemetry of drop-oldest series, then alerts.
    for kind in ["telemetry", "alert"] {
        let mut after = 0i64;
        while usage.total_bytes() > config.max_bytes {
            let victims = oldest(tx, None, kind, after, 64)?;
            let Some(last) = victims.last() else {
                break;
            };
            after = last.seq;
            for victim in victims {
                let evictable = kind == "alert"
                    || config.series(&victim.stream.name).when_full == WhenFull::DropOldest;
                if !evictable {
                    continue;
                }
                if usage.total_bytes() <= config.max_bytes {
                    break;
                }
                delete(tx, victim.seq)?;
                usage.lost(&victim.stream, victim.bytes, victim.points, Loss::Dropped);
            }
        }
    }
    Ok(())
}

/// Delete unsent rows older than their stream's `max_age_s`.
///
/// This runs every second inside the writer's transaction, so its cost must
/// not grow with the backlog: it once ran one `DELETE` per stream, and each
/// walked every row of its stream to compare `created_at`. At 10,000
/// devices with a backlog of 900,000 rows that held the write lock for most
/// of every second, the apps' reports and the link waited on it, and the
/// backlog grew faster still (BENCHMARKS.md, S2).
///
/// Rows are written in the order of their time, so the first row of a kind
/// (by `seq`) is its oldest, and so is the first row of a stream. When the
/// first row of each kind is newer than the newest cutoff any series has,
/// nothing can have expired: two index lookups. Otherwise each stream with
/// rows deletes its expired rows from its first on, and stops at the first
/// row that is not expired. (Should the clock step back, a row written
/// after it with an older time waits until the rows before it expire.)
pub fn expire(tx: &Transaction<'_>, usage: &Usage) -> rusqlite::Result<()> {
    let now = now_ns();
    let config = usage.config();
    let cutoff = |max_age: Duration| -> i64 {
        let age = u64::try_from(max_age.as_nanos()).unwrap_or(u64::MAX);
        i64::try_from(now.saturating_sub(age)).unwrap_or(i64::MAX)
    };
    let Some(shortest) = config
        .all_series()
        .filter_map(|series| series.max_age)
        .min()
    else {
        return Ok(());
    };
    let newest_cutoff = cutoff(shortest);
    let mut due = false;
    for kind in ["telemetry", "alert"] {
        let first = oldest(tx, None, kind, 0, 1)?;
        due |= first
            .first()
            .is_some_and(|row| row.created_at < newest_cutoff);
    }
    if !due {
        return Ok(());
    }
    for (stream, stats) in usage.snapshot() {
        if stats.points == 0 {
            continue;
        }
        let max_age = match stream.kind {
            "telemetry" => config.series(&stream.name).max_age,
            _ => config.defaults.max_age,
        };
        if let Some(max_age) = max_age {
            expire_stream(tx, usage, &stream, cutoff(max_age))?;
        }
    }
    Ok(())
}

/// Delete `stream`'s rows written before `cutoff`, oldest first, up to the
/// first that was not.
fn expire_stream(
    tx: &Transaction<'_>,
    usage: &Usage,
    stream: &Stream,
    cutoff: i64,
) -> rusqlite::Result<()> {
    const STEP: usize = 64;
    loop {
        let rows = oldest(tx, Some(stream), stream.kind, 0, STEP)?;
        for row in &rows {
            if row.created_at >= cutoff {
                return Ok(());
            }
            delete(tx, row.seq)?;
            usage.lost(stream, row.bytes, row.points, Loss::Expired);
        }
        if rows.len() < STEP {
            return Ok(());
        }
    }
}

/// A row that limits or ages may delete, with what it counts.
struct Victim {
    seq: i64,
    stream: Stream,
    bytes: u64,
    points: u64,
    created_at: i64,
}

/// The oldest rows of a stream, or of a kind, after sequence `after`.
fn oldest(
    tx: &Transaction<'_>,
    stream: Option<&Stream>,
    kind: &str,
    after: i64,
    limit: usize,
) -> rusqlite::Result<Vec<Victim>> {
    type Read = (i64, String, String, String, i64, i64, i64);
    let map = |r: &rusqlite::Row<'_>| -> rusqlite::Result<Read> {
        Ok((
            r.get(0)?,
            r.get(1)?,
            r.get(2)?,
            r.get(3)?,
            r.get(4)?,
            r.get(5)?,
            r.get(6)?,
        ))
    };
    let rows = match stream {
        Some(s) => tx
            .prepare_cached(
                "SELECT seq, kind, device, name, length(payload), points, created_at FROM outbox
                 WHERE kind = ?1 AND device = ?2 AND name = ?3 AND seq > ?4 ORDER BY seq LIMIT ?5",
            )?
            .query_map(params![s.kind, s.device, s.name, after, limit as i64], map)?
            .collect::<rusqlite::Result<Vec<_>>>()?,
        None => tx
            .prepare_cached(
                "SELECT seq, kind, device, name, length(payload), points, created_at FROM outbox
                 WHERE kind = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
            )?
            .query_map(params![kind, after, limit as i64], map)?
            .collect::<rusqlite::Result<Vec<_>>>()?,
    };
    Ok(rows
        .into_iter()
        .filter_map(|(seq, kind, device, name, bytes, points, created_at)| {
            Some(Victim {
                seq,
                stream: Stream::of(&kind, device, name)?,
                bytes: bytes.max(0) as u64,
                points: points.max(0) as u64,
                created_at,
            })
        })
        .collect())
}

fn delete(tx: &Transaction<'_>, seq: i64) -> rusqlite::Result<()> {
    tx.execute("DELETE FROM outbox WHERE seq = ?1", [seq])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{OutboxConfig, SeriesConfig, WhenFull};

    fn usage_with_rejecting_series(max_bytes: u64) -> Usage {
        let mut config = OutboxConfig::default();
        let series = SeriesConfig {
            max_bytes: Some(max_bytes),
            when_full: WhenFull::RejectNewest,
            ..config.defaults.clone()
        };
        config.series.insert("s".into(), series);
        Usage {
            config,
            inner: Mutex::default(),
        }
    }

    #[test]
    fn points_on_their_way_count_against_a_reject_newest_limit() {
        let usage = usage_with_rejecting_series(1000);
        usage.admit("d", "s", 10).expect("room at first");
        usage.reserve("d", "s", 600, 10);
        usage.admit("d", "s", 10).expect("600 of 1000 bytes");
        usage.reserve("d", "s", 600, 10);
        // Nothing is committed yet, but 1200 bytes are on their way.
        let refused = usage.admit("d", "s", 10).expect_err("over the limit");
        assert!(
            matches!(&refused, super::super::OutboxError::Full { why } if why.contains("holds 1 KiB")),
            "{refused}"
        );
        assert!(
            refused.to_string().starts_with("outbox full: "),
            "{refused}"
        );
    }

    #[test]
    fn committing_settles_the_reservation_in_proportion() {
        let usage = usage_with_rejecting_series(1 << 20);
        usage.reserve("d", "s", 1000, 10);
        usage.added(Stream::telemetry("d", "s"), 500, 4);
        let stats = usage.lock().streams[&Stream::telemetry("d", "s")].clone();
        assert_eq!((stats.in_flight_points, stats.in_flight_bytes), (6, 600));
        assert_eq!((stats.points, stats.bytes), (4, 500));
        usage.unreserve(&Stream::telemetry("d", "s"), 6);
        let stats = usage.lock().streams[&Stream::telemetry("d", "s")].clone();
        assert_eq!((stats.in_flight_points, stats.in_flight_bytes), (0, 0));
    }

    #[test]
    fn drop_oldest_series_reserve_nothing() {
        let usage = usage_with_rejecting_series(1000);
        usage.reserve("d", "other", 5000, 10);
        assert!(usage.lock().streams.is_empty());
    }

    #[test]
    fn only_a_stream_over_a_limit_kept_by_dropping_calls_for_enforce() {
        // Reject-newest: over by what one flush brought, nothing to drop.
        let usage = usage_with_rejecting_series(1000);
        assert!(!usage.added(Stream::telemetry("d", "s"), 1500, 10));
        let mut config = OutboxConfig::default();
        config.series.insert(
            "s".into(),
            SeriesConfig {
                max_bytes: Some(1000),
                ..config.defaults.clone()
            },
        );
        let usage = Usage {
            config,
            inner: Mutex::default(),
        };
        assert!(!usage.added(Stream::telemetry("d", "s"), 600, 5));
        assert!(
            usage.added(Stream::telemetry("d", "s"), 600, 5),
            "1200 of 1000"
        );
        assert!(
            !usage.added(Stream::telemetry("d", "other"), 5000, 5),
            "no limit"
        );
    }

    /// A database with the outbox's schema, `rows` of `(stream, device,
    /// seconds ago)` written in that order, and its usage under `config`.
    fn outbox_with(
        rows: &[(&str, &str, u64)],
        config: OutboxConfig,
    ) -> (tempfile::TempDir, Connection, Usage) {
        let (dir, db) = crate::store::temporary_database();
        let conn = db.open().expect("open");
        let mut insert = conn
            .prepare(
                "INSERT INTO outbox (kind, device, name, created_at, points, payload)
                 VALUES ('telemetry', ?1, ?2, ?3, 2, x'00112233')",
            )
            .expect("prepare");
        for (series, device, ago) in rows {
            let at = now_ns() - ago * 1_000_000_000;
            insert
                .execute(params![device, series, at as i64])
                .expect("insert");
        }
        drop(insert);
        let usage = Usage::load(&conn, config).expect("usage");
        (dir, conn, usage)
    }

    fn expire_now(conn: &mut Connection, usage: &Usage) {
        let tx = conn.transaction().expect("tx");
        expire(&tx, usage).expect("expire");
        tx.commit().expect("commit");
    }

    #[test]
    fn rows_past_their_series_age_expire_and_are_counted_and_younger_ones_stay() {
        let mut config = OutboxConfig::default();
        let short = SeriesConfig {
            max_age: Some(Duration::from_secs(60)),
            ..config.defaults.clone()
        };
        config.series.insert("short".into(), short);
        let (_dir, mut conn, usage) = outbox_with(
            &[
                ("short", "d", 300),
                ("long", "d", 300),
                ("short", "d", 120),
                ("short", "e", 90),
                ("short", "d", 10),
                ("short", "e", 5),
            ],
            config,
        );
        expire_now(&mut conn, &usage);
        let left: Vec<(String, String)> = conn
            .prepare("SELECT name, device FROM outbox ORDER BY seq")
            .expect("prepare")
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .expect("query")
            .collect::<rusqlite::Result<_>>()
            .expect("rows");
        let pair = |n: &str, d: &str| (n.to_string(), d.to_string());
        // The default series keeps seven days; "short" keeps a minute.
        assert_eq!(
            left,
            [pair("long", "d"), pair("short", "d"), pair("short", "e")]
        );
        let stats =
            |device: &str| usage.lock().streams[&Stream::telemetry(device, "short")].clone();
        assert_eq!(
            (stats("d").expired, stats("d").points, stats("d").bytes),
            (4, 2, 4)
        );
        assert_eq!((stats("e").expired, stats("e").points), (2, 2));
    }

    #[test]
    fn a_start_sums_the_streams_from_an_index_without_reading_the_rows() {
        let rows = [("s", "d", 30), ("s", "e", 20), ("s", "d", 10)];
        let (_dir, conn, usage) = outbox_with(&rows, OutboxConfig::default());
        assert_eq!(
            crate::outbox::tests::query_plan(&conn, STREAM_SUMS, []),
            ["SEARCH outbox USING COVERING INDEX outbox_by_stream (kind=?)"]
        );
        let stats = |device: &str| usage.lock().streams[&Stream::telemetry(device, "s")].clone();
        assert_eq!((stats("d").bytes, stats("d").points), (8, 4));
        assert_eq!((stats("e").bytes, stats("e").points), (4, 2));
    }

    #[test]
    fn a_backlog_with_nothing_expired_costs_expiry_two_lookups_however_long_it_is() {
        // Each run, SQLite's program steps while expiry looks.
        let steps = |rows: usize| -> u64 {
            let backlog: Vec<(String, String)> = (0..rows)
                .map(|i| (format!("s{}", i % 7), format!("d{}", i % 100)))
                .collect();
            let rows: Vec<(&str, &str, u64)> = backlog
                .iter()
                .map(|(series, device)| (series.as_str(), device.as_str(), 30))
                .collect();
            let (_dir, mut conn, usage) = outbox_with(&rows, OutboxConfig::default());
            let counted = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
            let counter = counted.clone();
            conn.progress_handler(
                1,
                Some(move || {
                    counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    false
                }),
            )
            .expect("progress handler");
            expire_now(&mut conn, &usage);
            counted.load(std::sync::atomic::Ordering::Relaxed)
        };
        let (small, large) = (steps(10), steps(5_000));
        // Walking every stream's rows, as expiry once did, took steps in
        // proportion to the rows: hundreds of thousands here.
        assert!(
            large <= small + 8,
            "{small} steps for 10 rows, {large} for 5,000"
        );
    }
}

//! The outbox: everything waiting to go to the cloud, in SQLite, until the
//! cloud link has it acknowledged. `docs/buffering.md` is the promise this
//! module keeps.
//!
//! Its kinds of rows: `telemetry` (a batch of points of one series),
//! `alert`, `twin` (a report of attributes), `ack` (the answer to a
//! desired change, durable and in order after the reports it answers),
//! `registration` and `model` (a registered device's), and `changeset` (a
//! write to a synced table) and `pull` (a request for the server's changes
//! to one). Twin reports and alerts are
//! written by the reporting call itself, in its own transaction, so they are
//! durable when the guest's call returns. Telemetry goes through [`ingest`]:
//! a writer thread that group-commits points. [`limits`] keeps the outbox
//! within its byte and age limits.

pub mod ingest;
pub mod limits;
pub mod points;

pub use ingest::{Batch, Ingest, IngestSender};
pub use points::Points;

/// Why the outbox did not take points (the outbox layer's one error type).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OutboxError {
    /// A `reject-newest` series (or the whole outbox) is full: the points
    /// are refused, and counted.
    #[error(
        "outbox full: {why}; new points are refused until it drains (when_full = reject-newest)"
    )]
    Full { why: String },
    /// The database refuses writes (a full disk, say); what was taken waits
    /// in memory and is written when it can be.
    #[error("the gateway cannot store points right now: {0}")]
    Unavailable(String),
    #[error("the gateway is shutting down")]
    ShuttingDown,
    #[error("the writer stopped")]
    WriterStopped,
}
pub use limits::{Stream, StreamStats, Usage};

use rusqlite::{Connection, params};

use crate::value::now_ns;

/// What an outbox row carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Telemetry,
    Alert,
    Twin,
    /// The answer to a desired change, after the reports the app made while
    /// it applied it (`twin/ack`).
    Ack,
    /// A registered device's announcement, or its withdrawal (an empty
    /// payload), retained on `{device}/registration`.
    Registration,
    /// A device's model, retained on `{device}/model` (empty once the
    /// device is gone), for the cloud to check desired values and actions.
    Model,
    /// The changes of one write to an app's synced table (`name` is the
    /// table), sent on `{device}/synced/{table}`. Never dropped by the
    /// outbox's limits: the synced tables' own limits bound them.
    Changeset,
    /// A request for the server's changesets of a synced table (`name`)
    /// after the last applied, sent on `{device}/synced/{table}/pull`.
    Pull,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Telemetry => "telemetry",
            Kind::Alert => "alert",
            Kind::Twin => "twin",
            Kind::Ack => "ack",
            Kind::Registration => "registration",
            Kind::Model => "model",
            Kind::Changeset => "changeset",
            Kind::Pull => "pull",
        }
    }
}

/// A row to append.
#[derive(Debug, Clone)]
pub struct Entry {
    pub kind: Kind,
    pub device: String,
    /// Series name, alert name, or "" for a twin report.
    pub name: String,
    pub points: u32,
    /// JSON.
    pub payload: Vec<u8>,
}

/// Append rows; the caller owns the transaction.
pub fn insert(conn: &Connection, entries: &[Entry]) -> rusqlite::Result<()> {
    let mut stmt = conn.prepare_cached(
        "INSERT INTO outbox (kind, device, name, created_at, points, payload)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?;
    let now = now_ns() as i64;
    for e in entries {
        stmt.execute(params![
            e.kind.as_str(),
            e.device,
            e.name,
            now,
            e.points,
            e.payload
        ])?;
    }
    Ok(())
}

/// Queue a device's model (its JSON text; empty to withdraw it) for its
/// retained `model` topic. Only the newest matters: an older one not yet
/// sent is replaced.
pub fn announce_model(conn: &Connection, device: &str, model: &str) -> rusqlite::Result<()> {
    conn.prepare_cached("DELETE FROM outbox WHERE kind = 'model' AND device = ?1")?
        .execute([device])?;
    insert(
        conn,
        &[Entry {
            kind: Kind::Model,
            device: device.to_string(),
            name: String::new(),
            points: 0,
            payload: model.as_bytes().to_vec(),
        }],
    )
}

/// A row as the cloud link plans with it: everything but the payload,
/// which [`payload`] reads once the row is sent.
#[derive(Debug, Clone)]
pub struct Row {
    pub seq: i64,
    pub kind: String,
    pub device: String,
    pub name: String,
    pub points: u32,
    pub created_at: i64,
    /// Length of the payload.
    pub bytes: u64,
}

/// A row as [`next_rows`] selects it (the payload's length, not the payload).
fn row_of(r: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
    Ok(Row {
        seq: r.get(0)?,
        kind: r.get(1)?,
        device: r.get(2)?,
        name: r.get(3)?,
        points: r.get(4)?,
        created_at: r.get(5)?,
        bytes: r.get::<_, i64>(6)?.max(0) as u64,
    })
}

/// The outbox's two lanes. The link reads the first before the later one:
/// alerts, registered devices' announcements and models, reported states
/// and acks go ahead of telemetry and synced tables' changes, so that after
/// an outage the cloud learns the devices and their states first instead of
/// after the whole backlog of points. Within a lane, rows go in order, so a
/// device's registration comes before its state, and an ack after the
/// state reported while applying the change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    First,
    Later,
}

/// The kinds of the first lane, as SQL: the later lane is every other.
/// [`FIRST_PAST`] reads each of them apart, in the same order.
macro_rules! first_lane_kinds {
    () => {
        "'alert', 'registration', 'model', 'twin', 'ack'"
    };
}

/// The first lane's rows past `?2`: each kind's rows in order through
/// `outbox_by_kind`, merged by seq. SQLite merges the five ordered streams
/// and stops at the limit, sorting nothing. `kind IN (...)` instead was
/// read through the same index and sorted whole for each read (every
/// device's twin row at 10,000 devices), and a partial index of the lane
/// cost every report's commit a page: S2's gateway took a tenth more CPU
/// with it (BENCHMARKS.md).
const FIRST_PAST: &str = "
    SELECT seq, kind, device, name, points, created_at, length(payload)
        FROM outbox WHERE kind = 'alert' AND seq > ?2
    UNION ALL SELECT seq, kind, device, name, points, created_at, length(payload)
        FROM outbox WHERE kind = 'registration' AND seq > ?2
    UNION ALL SELECT seq, kind, device, name, points, created_at, length(payload)
        FROM outbox WHERE kind = 'model' AND seq > ?2
    UNION ALL SELECT seq, kind, device, name, points, created_at, length(payload)
        FROM outbox WHERE kind = 'twin' AND seq > ?2
    UNION ALL SELECT seq, kind, device, name, points, created_at, length(payload)
        FROM outbox WHERE kind = 'ack' AND seq > ?2
    ORDER BY seq LIMIT ?1";

/// The later lane's sealed rows past `?2`, in the table's own order. Not
/// `kind IN ('telemetry', ...)`: SQLite would read those through
/// `outbox_by_kind` and sort the whole backlog for each read.
const LATER_PAST: &str = concat!(
    "SELECT seq, kind, device, name, points, created_at, length(payload) FROM outbox
     WHERE seq > ?2 AND kind NOT IN (",
    first_lane_kinds!(),
    ") AND sealed = 1 ORDER BY seq LIMIT ?1"
);

/// The next rows to send, from the first: up to `limit` of the first lane,
/// then up to `limit` of the later one (a telemetry row the writer may
/// still add to waits). Payloads are not read: a backlog of large batches
/// would otherwise be read again on every acknowledgement.
pub fn next_rows(conn: &Connection, limit: usize) -> rusqlite::Result<Vec<Row>> {
    let mut rows = unsent_in(conn, Lane::First, limit, 0)?.rows;
    rows.extend(unsent_in(conn, Lane::Later, limit, 0)?.rows);
    Ok(rows)
}

/// What a reader that goes on from where it left off reads of one lane:
/// up to `limit` rows past a seq, the oldest row the writer may still add
/// to ([`oldest_open`]), which the reader must not read on past, and, for
/// the later lane, the outbox's last seq. Seqs are never reused
/// (`AUTOINCREMENT`), and a row committed after the read has a larger one,
/// so a read that found fewer rows than it asked for and handled them all
/// may go on past `last` (short of `open`): the later lane's scan walks
/// the first lane's rows between, and would walk them on every read. The
/// first lane's scans skip the other kinds through the index, so it has no
/// `last`.
pub struct Unsent {
    pub rows: Vec<Row>,
    pub open: Option<i64>,
    pub last: Option<i64>,
}

/// One lane's rows past `past`, with [`oldest_open`] and the last seq, all
/// from one snapshot of the outbox. Read apart, a commit between them that
/// opens a batch and adds a sealed row after it (a tick's climate point
/// and its twin report) showed the sealed row with no open row before it:
/// the reader passed it, and the batch, once sealed, lay behind its cursor
/// and was never sent.
pub fn unsent_in(
    conn: &Connection,
    lane: Lane,
    limit: usize,
    past: i64,
) -> rusqlite::Result<Unsent> {
    // A deferred transaction that only reads: one WAL snapshot, no lock
    // that keeps the writer out. Dropping it ends it. A caller already in a
    // transaction (the link's pump reads in one) has its snapshot already,
    // and SQLite's transactions do not nest.
    let snapshot = conn
        .is_autocommit()
        .then(|| conn.unchecked_transaction())
        .transpose()?;
    let rows = |query: &str| -> rusqlite::Result<Vec<Row>> {
        conn.prepare_cached(query)?
            .query_map(params![limit as i64, past], row_of)?
            .collect()
    };
    let read = match lane {
        Lane::First => Unsent {
            rows: rows(FIRST_PAST)?,
            open: None,
            last: None,
        },
        Lane::Later => Unsent {
            open: oldest_open(conn)?,
            rows: rows(LATER_PAST)?,
            last: Some(
                conn.prepare_cached("SELECT COALESCE(MAX(seq), 0) FROM outbox")?
                    .query_row([], |r| r.get(0))?,
            ),
        },
    };
    drop(snapshot);
    Ok(read)
}

/// The oldest row the telemetry writer may still add to (`None` when every
/// row is sealed). A reader that goes on from where it left off must not go
/// past it: it is sent once it is sealed, behind rows sent before it.
fn oldest_open(conn: &Connection) -> rusqlite::Result<Option<i64>> {
    conn.prepare_cached("SELECT MIN(seq) FROM outbox WHERE sealed = 0")?
        .query_row([], |r| r.get(0))
}

/// [`next_rows`] without the rows of the devices in `held`: the Sparkplug
/// link holds a device's data while the device is dead, and its backlog
/// must not keep other devices' rows from being read.
pub fn next_rows_except(
    conn: &Connection,
    limit: usize,
    held: &[&str],
) -> rusqlite::Result<Vec<Row>> {
    if held.is_empty() {
        return next_rows(conn, limit);
    }
    let held = serde_json::to_string(held).unwrap_or_else(|_| "[]".into());
    // Model rows are never held: they are how a device becomes known.
    conn.prepare_cached(concat!(
        "SELECT seq, kind, device, name, points, created_at, length(payload) FROM outbox
         WHERE sealed = 1
           AND (kind = 'model' OR device NOT IN (SELECT value FROM json_each(?2)))
         ORDER BY kind NOT IN (",
        first_lane_kinds!(),
        "), seq LIMIT ?1"
    ))?
    .query_map(params![limit as i64, held], row_of)?
    .collect()
}

/// A row's payload (`None` if the row is gone).
pub fn payload(conn: &Connection, seq: i64) -> rusqlite::Result<Option<Vec<u8>>> {
    use rusqlite::OptionalExtension as _;
    conn.prepare_cached("SELECT payload FROM outbox WHERE seq = ?1")?
        .query_row([seq], |r| r.get(0))
        .optional()
}

/// Remove a delivered row; whether it was still there (a row can be evicted
/// or expired while it is in flight).
pub fn delete(conn: &Connection, seq: i64) -> rusqlite::Result<bool> {
    // Cached: the link deletes every row it delivers (compiling the delete
    // each time was 4 % of the gateway's CPU at 10,000 devices).
    Ok(conn
        .prepare_cached("DELETE FROM outbox WHERE seq = ?1")?
        .execute([seq])?
        > 0)
}

/// What a telemetry or alert row counts in the outbox's totals: its
/// stream, bytes and points.
pub type Counted = (Stream, u64, u64);

/// Delete delivered rows in one transaction: each `(seq, counted)` row, and
/// each device's twin rows up to a seq. What the deleted rows counted comes
/// off the totals once the deletes are committed (a row can be evicted or
/// expire while it is in flight, and then counts nothing).
pub fn delete_delivered_all(
    conn: &Connection,
    usage: &Usage,
    rows: &[(i64, Option<Counted>)],
    twins: &[(String, i64)],
) -> rusqlite::Result<()> {
    // Immediate: the deletes must not wait behind a read lock they took.
    let tx = rusqlite::Transaction::new_unchecked(conn, rusqlite::TransactionBehavior::Immediate)?;
    let mut gone = Vec::new();
    for (seq, counted) in rows {
        if delete(&tx, *seq)?
            && let Some(counted) = counted
        {
            gone.push(counted);
        }
    }
    for (device, seq) in twins {
        delete_twin_upto(&tx, device, *seq)?;
    }
    tx.commit()?;
    for (stream, bytes, points) in gone {
        usage.removed(stream, *bytes, *points);
    }
    Ok(())
}

/// Write an alert's row (one alert, one row) and count it.
pub fn insert_alert(conn: &Connection, usage: &Usage, entry: Entry) -> rusqlite::Result<()> {
    let (bytes, points) = (entry.payload.len() as u64, u64::from(entry.points));
    let stream = Stream::alert(&entry.device, &entry.name);
    insert(conn, std::slice::from_ref(&entry))?;
    usage.added(stream, bytes, points);
    Ok(())
}

/// The newest twin row of a device (0 if none).
pub fn last_twin_seq(conn: &Connection, device: &str) -> rusqlite::Result<i64> {
    // `name = ''` (a twin row's) lets SQLite find the maximum in
    // `outbox_by_stream` at once; without it, it walked every twin row of
    // every device in `outbox_by_kind`.
    conn.prepare_cached(
        "SELECT COALESCE(MAX(seq), 0) FROM outbox WHERE kind = 'twin' AND device = ?1 AND name = ''",
    )?
    .query_row([device], |r| r.get(0))
}

/// Make way for a device's new twin row: delete its waiting ones. A twin
/// row only says that the device's state changed since it was last sent
/// (the link sends the whole state from `twin`), so a new report replaces
/// the waiting row rather than queueing behind it, and a link that falls
/// behind holds one row per device, not one per report. If the replaced
/// row is out, its acknowledgement deletes nothing and the new row is sent.
///
/// Rows before the device's last `ack` row stay: an ack leaves after the
/// state the app reported while applying the change (docs/protocol.md), so
/// that state must not move behind it.
pub fn replace_waiting_twin(conn: &Connection, device: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "DELETE FROM outbox WHERE kind = 'twin' AND device = ?1 AND name = ''
           AND seq > (SELECT COALESCE(MAX(seq), 0) FROM outbox
                      WHERE kind = 'ack' AND device = ?1 AND name = '')",
    )?
    .execute([device])?;
    Ok(())
}

/// Remove a device's twin rows up to `seq`: the retained state that was
/// delivered covers them all.
pub fn delete_twin_upto(conn: &Connection, device: &str, seq: i64) -> rusqlite::Result<()> {
    // `name = ''` (a twin row's) keeps the delete to the device's own rows in
    // `outbox_by_stream`, as in `last_twin_seq`.
    conn.prepare_cached(
        "DELETE FROM outbox WHERE kind = 'twin' AND device = ?1 AND name = '' AND seq <= ?2",
    )?
    .execute(params![device, seq])?;
    Ok(())
}

/// Rows and points in the whole outbox. The telemetry's and alerts' points
/// are `usage`'s: summing them over the rows read the whole outbox for
/// every status message (80 ms at 123,000 rows, on the link's task);
/// counting the rows and summing the other kinds' points reads an index
/// and those few rows.
pub fn totals(conn: &Connection, usage: &Usage) -> rusqlite::Result<(u64, u64)> {
    let (rows, others) = conn.query_row(
        "SELECT (SELECT COUNT(*) FROM outbox),
                (SELECT COALESCE(SUM(points), 0) FROM outbox WHERE kind NOT IN ('telemetry', 'alert'))",
        [],
        |r| {
            Ok((
                r.get::<_, i64>(0)?.max(0) as u64,
                r.get::<_, i64>(1)?.max(0) as u64,
            ))
        },
    )?;
    Ok((rows, others + usage.total_points()))
}

/// How much is waiting in the outbox for one stream, and what it lost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Depth {
    pub kind: String,
    pub device: String,
    pub name: String,
    pub entries: i64,
    pub points: i64,
    pub bytes: i64,
    pub oldest_ns: Option<i64>,
    pub dropped: i64,
    pub rejected: i64,
    pub expired: i64,
}

/// The per-stream sums [`depth`] reads: every row's count, points and
/// size from `outbox_by_stream` alone (it holds each row's points and
/// payload length), and each stream's first row, whose time dates the
/// stream. Summing over the table, with `MIN(created_at)`, read every row
/// of the backlog, as the start's sums once did (BENCHMARKS.md).
const STREAM_DEPTHS: &str = "
    SELECT kind, device, name, COUNT(*) AS entries, SUM(points) AS points,
           SUM(length(payload)) AS bytes, MIN(seq) AS first
    FROM outbox GROUP BY kind, device, name";

/// Outbox depth and loss counters per stream (kind, device, name). A
/// stream's `oldest_ns` is when its first waiting row was written.
pub fn depth(conn: &Connection) -> rusqlite::Result<Vec<Depth>> {
    let mut stmt = conn.prepare(&format!(
        "WITH sums AS ({STREAM_DEPTHS}),
         streams AS (
             SELECT kind, device, name FROM sums
             UNION SELECT kind, device, name FROM outbox_counters
         )
         SELECT s.kind, s.device, s.name,
                COALESCE(m.entries, 0), COALESCE(m.points, 0), COALESCE(m.bytes, 0),
                (SELECT created_at FROM outbox WHERE seq = m.first),
                COALESCE(c.dropped, 0), COALESCE(c.rejected, 0), COALESCE(c.expired, 0)
         FROM streams s
         LEFT JOIN sums m ON m.kind = s.kind AND m.device = s.device AND m.name = s.name
         LEFT JOIN outbox_counters c ON c.kind = s.kind AND c.device = s.device AND c.name = s.name
         ORDER BY s.kind, s.device, s.name"
    ))?;
    stmt.query_map([], |r| {
        Ok(Depth {
            kind: r.get(0)?,
            device: r.get(1)?,
            name: r.get(2)?,
            entries: r.get(3)?,
            points: r.get(4)?,
            bytes: r.get(5)?,
            oldest_ns: r.get(6)?,
            dropped: r.get(7)?,
            rejected: r.get(8)?,
            expired: r.get(9)?,
        })
    })?
    .collect()
}

#[cfg(test)]
mod tests {
    use super::ingest::tests::batch;
    use super::*;
    use crate::config::OutboxConfig;
    use std::sync::Arc;

    /// A row of one point to append.
    fn entry(kind: Kind, device: &str, name: &str, payload: &[u8]) -> Entry {
        Entry {
            kind,
            device: device.into(),
            name: name.into(),
            points: 1,
            payload: payload.to_vec(),
        }
    }

    fn database() -> (tempfile::TempDir, crate::store::Database) {
        crate::store::temporary_database()
    }

    /// What SQLite plans to do for `query`, one line a step.
    pub(in crate::outbox) fn query_plan(
        conn: &Connection,
        query: &str,
        params: impl rusqlite::Params,
    ) -> Vec<String> {
        conn.prepare(&format!("EXPLAIN QUERY PLAN {query}"))
            .expect("plan")
            .query_map(params, |r| r.get(3))
            .expect("plan")
            .collect::<rusqlite::Result<_>>()
            .expect("plan")
    }

    #[test]
    fn the_links_read_is_compiled_once_whatever_limit_and_start_it_is_given() {
        let (_dir, db) = database();
        let conn = db.open().expect("open");
        let twin = |device: &str| entry(Kind::Twin, device, "", b"{}");
        insert(&conn, &[twin("a"), twin("b"), twin("c")]).expect("insert");
        // The link's limit follows its window, and its start each row sent.
        for n in 1..20 {
            for lane in [Lane::First, Lane::Later] {
                unsent_in(&conn, lane, n, (n % 4) as i64).expect("read");
            }
        }
        for query in [FIRST_PAST, LATER_PAST] {
            let read = conn.prepare_cached(query).expect("the cached read");
            assert_eq!(
                read.get_status(rusqlite::StatementStatus::RePrepare),
                0,
                "compiled again for new values"
            );
        }
    }

    #[test]
    fn depth_sums_each_stream_from_the_index_and_dates_it_by_its_first_row() {
        let (_dir, db) = database();
        let conn = db.open().expect("open");
        insert(
            &conn,
            &[
                entry(Kind::Telemetry, "d", "s", b"[1,2,3]"),
                entry(Kind::Alert, "d", "hot", b"{}"),
                entry(Kind::Telemetry, "d", "s", b"[4]"),
                entry(Kind::Telemetry, "e", "s", b"[5,6]"),
            ],
        )
        .expect("insert");
        // Times out of seq order: the stream's first row dates it.
        conn.execute_batch(
            "UPDATE outbox SET created_at = 200 WHERE seq = 1;
             UPDATE outbox SET created_at = 100 WHERE seq = 3;
             INSERT INTO outbox_counters (kind, device, name, dropped) VALUES ('telemetry', 'f', 's', 4);",
        )
        .expect("times and a counter");
        // kind, device, entries, points, bytes, oldest, dropped
        type Seen = (String, String, i64, i64, i64, Option<i64>, i64);
        let depths: Vec<Seen> = depth(&conn)
            .expect("depth")
            .into_iter()
            .map(|d| {
                (
                    d.kind,
                    d.device,
                    d.entries,
                    d.points,
                    d.bytes,
                    d.oldest_ns,
                    d.dropped,
                )
            })
            .collect();
        let created = |seq: i64| -> i64 {
            conn.query_row("SELECT created_at FROM outbox WHERE seq = ?1", [seq], |r| {
                r.get(0)
            })
            .expect("created_at")
        };
        assert_eq!(
            depths,
            vec![
                ("alert".into(), "d".into(), 1, 1, 2, Some(created(2)), 0),
                ("telemetry".into(), "d".into(), 2, 2, 10, Some(200), 0),
                ("telemetry".into(), "e".into(), 1, 1, 5, Some(created(4)), 0),
                ("telemetry".into(), "f".into(), 0, 0, 0, None, 4),
            ]
        );
        assert_eq!(
            query_plan(&conn, STREAM_DEPTHS, []),
            ["SCAN outbox USING COVERING INDEX outbox_by_stream"]
        );
    }

    #[test]
    fn a_devices_last_twin_row_is_found_among_other_devices_rows_and_deleted_up_to() {
        let (_dir, db) = database();
        let conn = db.open().expect("open");
        let twin = |device: &str| entry(Kind::Twin, device, "", b"{}");
        assert_eq!(last_twin_seq(&conn, "a").expect("seq"), 0, "none yet");
        insert(&conn, &[twin("a"), twin("b"), twin("a"), twin("b")]).expect("insert");
        let seqs = |device: &str| -> Vec<i64> {
            next_rows(&conn, 10)
                .expect("rows")
                .into_iter()
                .filter(|r| r.device == device)
                .map(|r| r.seq)
                .collect()
        };
        let (a, b) = (seqs("a"), seqs("b"));
        assert_eq!(last_twin_seq(&conn, "a").expect("seq"), a[1]);
        assert_eq!(last_twin_seq(&conn, "b").expect("seq"), b[1]);
        delete_twin_upto(&conn, "a", a[1]).expect("delete");
        assert_eq!(last_twin_seq(&conn, "a").expect("seq"), 0);
        assert_eq!(seqs("b"), b, "another device's rows stay");
    }

    #[test]
    fn a_new_twin_row_replaces_the_waiting_ones_but_not_those_before_an_ack() {
        let (_dir, db) = database();
        let conn = db.open().expect("open");
        let twin = |device: &str| entry(Kind::Twin, device, "", b"{}");
        let kinds = || -> Vec<(String, String)> {
            next_rows(&conn, 20)
                .expect("rows")
                .into_iter()
                .map(|r| (r.kind, r.device))
                .collect()
        };
        let row = |kind: &str, device: &str| (kind.to_string(), device.to_string());
        // Reports of `a` and `b`: each replaces its own device's waiting row.
        for _ in 0..3 {
            for device in ["a", "b"] {
                replace_waiting_twin(&conn, device).expect("replace");
                insert(&conn, &[twin(device)]).expect("insert");
            }
        }
        assert_eq!(kinds(), vec![row("twin", "a"), row("twin", "b")]);
        // `a` answers a desired change after its report: that report stays
        // before the ack, and later reports replace only what follows it.
        insert(&conn, &[entry(Kind::Ack, "a", "", b"{}")]).expect("ack");
        for _ in 0..2 {
            replace_waiting_twin(&conn, "a").expect("replace");
            insert(&conn, &[twin("a")]).expect("insert");
        }
        assert_eq!(
            kinds(),
            vec![
                row("twin", "a"),
                row("twin", "b"),
                row("ack", "a"),
                row("twin", "a")
            ]
        );
    }

    #[test]
    fn delivered_rows_go_in_one_transaction_and_only_those_still_there_are_counted_out() {
        let (_dir, db) = database();
        let conn = db.open().expect("open");
        let usage = Usage::load(&conn, OutboxConfig::default()).expect("usage");
        let alert = |name: &str| entry(Kind::Alert, "d", name, b"{\"x\":1}");
        insert_alert(&conn, &usage, alert("a")).expect("alert");
        insert_alert(&conn, &usage, alert("b")).expect("alert");
        insert_alert(&conn, &usage, alert("c")).expect("alert");
        let twin = entry(Kind::Twin, "d", "", b"{}");
        insert(&conn, &[twin.clone(), twin]).expect("twins");
        assert_eq!(usage.total_bytes(), 21);
        // Five rows, of a point each: the alerts' from the totals, the
        // twin reports' from their rows.
        assert_eq!(totals(&conn, &usage).expect("totals"), (5, 5));
        let rows = next_rows(&conn, 10).expect("rows");
        let counted = |r: &Row| Some((Stream::alert(&r.device, &r.name), r.bytes, 1));
        let (a, b) = (&rows[0], &rows[1]);
        // `b` was evicted while in flight: it counts nothing twice.
        assert!(delete(&conn, b.seq).expect("delete"));
        usage.removed(&Stream::alert("d", "b"), 7, 1);
        let last_twin = last_twin_seq(&conn, "d").expect("seq");
        delete_delivered_all(
            &conn,
            &usage,
            &[(a.seq, counted(a)), (b.seq, counted(b))],
            &[("d".into(), last_twin)],
        )
        .expect("settle");
        // Only `c`, never sent, is left, and still counted.
        assert_eq!(totals(&conn, &usage).expect("totals"), (1, 1));
        assert_eq!(usage.total_bytes(), 7);
    }

    #[test]
    fn states_acks_alerts_and_announcements_are_read_before_telemetry_each_lane_on_past_a_seq() {
        let (_dir, db) = database();
        let conn = db.open().expect("open");
        let entry = |kind: Kind, name: &str| entry(kind, "d", name, b"{}");
        insert(
            &conn,
            &[
                entry(Kind::Telemetry, "climate"),
                entry(Kind::Registration, ""),
                entry(Kind::Telemetry, "climate"),
                entry(Kind::Model, ""),
                entry(Kind::Twin, ""),
                entry(Kind::Changeset, "setpoints"),
                entry(Kind::Alert, "hot"),
                entry(Kind::Ack, ""),
                entry(Kind::Pull, "setpoints"),
            ],
        )
        .expect("insert");
        let kinds: Vec<String> = next_rows(&conn, 20)
            .expect("rows")
            .into_iter()
            .map(|r| r.kind)
            .collect();
        assert_eq!(
            kinds,
            [
                "registration",
                "model",
                "twin",
                "alert",
                "ack",
                "telemetry",
                "telemetry",
                "changeset",
                "pull"
            ],
            "each lane in order, the first lane first"
        );
        let seqs = |lane: Lane, past: i64| -> Vec<i64> {
            unsent_in(&conn, lane, 20, past)
                .expect("rows")
                .rows
                .iter()
                .map(|r| r.seq)
                .collect()
        };
        let first = seqs(Lane::First, 0);
        let later = seqs(Lane::Later, 0);
        assert_eq!(seqs(Lane::First, first[2]), first[3..]);
        assert_eq!(seqs(Lane::Later, later[1]), later[2..]);
        let read = unsent_in(&conn, Lane::Later, 2, 0).expect("rows");
        assert_eq!(read.rows.len(), 2, "up to the limit");
        assert_eq!(read.last, later.last().copied(), "the outbox's last seq");
        assert_eq!(read.open, None, "nothing open");
    }

    #[test]
    fn each_lane_is_read_through_an_index_not_by_sorting_the_outbox() {
        let (_dir, db) = database();
        let conn = db.open().expect("open");
        let plan = |query: &str| -> String { query_plan(&conn, query, params![10, 0]).join("; ") };
        let first = plan(FIRST_PAST);
        assert!(
            first
                .matches("USING INDEX outbox_by_kind (kind=? AND seq>?)")
                .count()
                == 5
                && !first.contains("TEMP B-TREE"),
            "{first}"
        );
        let later = plan(LATER_PAST);
        assert!(
            later.contains("INTEGER PRIMARY KEY") && !later.contains("TEMP B-TREE"),
            "{later}"
        );
    }

    /// One read of [`unsent_in`]'s later lane during which another connection
    /// commits what a tick commits (a new open batch, and a sealed twin
    /// row after it) at the read's `at`-th SQLite progress step: what the
    /// read let the reader pass, the batch's seq, and whether the commit
    /// came before the read ended.
    fn read_while_a_tick_commits(at: usize) -> (Vec<i64>, i64, bool) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let (_dir, db) = database();
        let reader = db.open().expect("open");
        insert(&reader, &[entry(Kind::Telemetry, "d", "power", b"[]")]).expect("insert");
        let past = next_rows(&reader, 10).expect("rows")[0].seq;
        let writer = db.open().expect("open");
        let steps = Arc::new(AtomicUsize::new(0));
        let counted = steps.clone();
        reader
            .progress_handler(
                1,
                Some(move || {
                    if counted.fetch_add(1, Ordering::SeqCst) + 1 == at {
                        writer
                            .execute_batch(
                                "INSERT INTO outbox (kind, device, name, created_at, points, payload, sealed)
                                 VALUES ('telemetry', 'd', 'climate', 0, 1, X'5B5D', 0),
                                        ('telemetry', 'd', 'power', 0, 1, X'5B5D', 1)",
                            )
                            .expect("the writer commits");
                    }
                    false
                }),
            )
            .expect("progress handler");
        let read = unsent_in(&reader, Lane::Later, 10, past).expect("read");
        reader
            .progress_handler(0, None::<fn() -> bool>)
            .expect("progress handler");
        let committed = steps.load(Ordering::SeqCst) >= at;
        // Each row it found, and the last seq once it found fewer than it
        // asked for, each only short of the open row (`Ledger::pass`).
        let short_of_open = |seq: i64| read.open.map_or(seq, |open| seq.min(open - 1));
        let passed = read
            .rows
            .iter()
            .map(|row| row.seq)
            .chain(read.last.filter(|_| read.rows.len() < 10))
            .map(short_of_open)
            .collect();
        (passed, past + 1, committed)
    }

    #[test]
    fn a_batch_opened_while_the_link_reads_is_never_read_past() {
        // The commit lands at each step of the read in turn, so at least
        // one lands between its statements, wherever SQLite takes them.
        let mut landed = 0;
        for at in 1.. {
            let (passed, batch, committed) = read_while_a_tick_commits(at);
            if !committed {
                break;
            }
            landed += 1;
            assert!(
                passed.iter().all(|&seq| seq < batch),
                "a commit at step {at}: the reader may pass {passed:?} while batch {batch} is open"
            );
        }
        assert!(landed > 2, "the read took {landed} steps");
    }

    #[test]
    fn a_read_inside_the_callers_transaction_uses_its_snapshot() {
        // The link's pump reads the rows, then their payloads and states, in
        // one read transaction of its own: `unsent_in` must read in it,
        // not fail to open a second one, and see what the pump's other reads
        // see.
        let (_dir, db) = database();
        let reader = db.open().expect("open");
        insert(&reader, &[entry(Kind::Telemetry, "d", "power", b"[]")]).expect("insert");
        reader.execute_batch("BEGIN DEFERRED").expect("begin");
        let first =
            unsent_in(&reader, Lane::Later, 10, 0).expect("read in the caller's transaction");
        assert_eq!(first.rows.len(), 1);
        let writer = db.open().expect("open");
        insert(&writer, &[entry(Kind::Telemetry, "d", "power", b"[]")])
            .expect("a commit meanwhile");
        let again = unsent_in(&reader, Lane::Later, 10, 0).expect("read again");
        assert_eq!(
            again.rows.len(),
            1,
            "the same snapshot: the new row is not seen yet"
        );
        assert!(
            !reader.is_autocommit(),
            "the caller's transaction is still open"
        );
        reader.execute_batch("COMMIT").expect("commit");
        let after = unsent_in(&reader, Lane::Later, 10, 0).expect("read on its own");
        assert_eq!(after.rows.len(), 2, "a new snapshot once the caller's ends");
        assert!(reader.is_autocommit(), "its own transaction ended");
    }

    #[test]
    fn the_writer_adds_to_an_open_batch_and_the_link_sees_it_only_once_sealed() {
        let (_dir, db) = database();
        let conn = db.open().expect("open");
        let mut config = OutboxConfig::default();
        config.defaults.batching.max_delay = std::time::Duration::from_secs(600);
        let usage = Arc::new(Usage::load(&conn, config).expect("usage"));
        let ingest = Ingest::start(&db, usage.clone(), Arc::default()).expect("start");
        let sender = ingest.sender();
        sender.append(batch("s", 0..2)).expect("append");
        sender.append(batch("other", 9..10)).expect("append");
        sender.flush().expect("flush");
        sender.append(batch("s", 2..3)).expect("append");
        sender.flush().expect("flush");
        // Committed (durable) but open: nothing for the link yet, and a
        // link reading on from where it left off stops before it.
        assert!(next_rows(&conn, 10).expect("rows").is_empty());
        let open = oldest_open(&conn).expect("read").expect("an open row");
        assert!(open > 0);
        let (rows, points) = totals(&conn, &usage).expect("totals");
        assert_eq!((rows, points), (2, 4), "one row per stream");
        // Stopping seals what is open.
        ingest.shutdown();
        assert_eq!(oldest_open(&conn).expect("read"), None);

        let rows: Vec<Row> = next_rows(&conn, 10).expect("rows");
        let s: Vec<&Row> = rows.iter().filter(|r| r.name == "s").collect();
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].points, 3);
        let bytes = payload(&conn, s[0].seq).expect("read").expect("row");
        assert_eq!(bytes.len() as u64, s[0].bytes);
        let json: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
        let ns: Vec<i64> = json
            .as_array()
            .expect("array")
            .iter()
            .map(|p| p["values"]["n"].as_i64().expect("n"))
            .collect();
        assert_eq!(ns, vec![0, 1, 2]);
        // The totals count what is stored, byte for byte.
        let stored: u64 = rows.iter().map(|r| r.bytes).sum();
        assert_eq!(usage.total_bytes(), stored);
        assert_eq!(
            usage
                .snapshot()
                .iter()
                .map(|(_, st)| st.points)
                .sum::<u64>(),
            4
        );
    }

    #[test]
    fn held_devices_rows_are_left_out_but_not_their_models() {
        let (_dir, db) = database();
        let conn = db.open().expect("open");
        let entry = |kind: Kind, device: &str| entry(kind, device, "s", b"[]");
        insert(
            &conn,
            &[
                entry(Kind::Telemetry, "dead"),
                entry(Kind::Telemetry, "dead"),
                entry(Kind::Telemetry, "alive"),
                entry(Kind::Model, "dead"),
                entry(Kind::Alert, "alive"),
            ],
        )
        .expect("insert");
        let read = |held: &[&str]| -> Vec<(String, String)> {
            next_rows_except(&conn, 10, held)
                .expect("rows")
                .into_iter()
                .map(|r| (r.kind, r.device))
                .collect()
        };
        let pair = |k: &str, d: &str| (k.to_string(), d.to_string());
        assert_eq!(
            read(&["dead"]),
            [
                pair("model", "dead"),
                pair("alert", "alive"),
                pair("telemetry", "alive")
            ]
        );
        assert_eq!(read(&[]).len(), 5);
    }

    #[test]
    fn without_a_batch_delay_each_commit_is_sealed_at_once() {
        let (_dir, db) = database();
        let conn = db.open().expect("open");
        let usage = Arc::new(Usage::load(&conn, OutboxConfig::default()).expect("usage"));
        let ingest = Ingest::start(&db, usage, Arc::default()).expect("start");
        let sender = ingest.sender();
        sender.append(batch("s", 0..2)).expect("append");
        sender.flush().expect("flush");
        sender.append(batch("s", 2..3)).expect("append");
        sender.flush().expect("flush");
        let rows = next_rows(&conn, 10).expect("rows");
        assert_eq!(
            rows.iter().map(|r| r.points).collect::<Vec<_>>(),
            vec![2, 1],
            "sent as committed, in order"
        );
        ingest.shutdown();
    }

    #[test]
    fn a_database_of_schema_4_gets_the_sealed_column_and_its_rows_go() {
        let (_dir, db) = database();
        let conn = db.open().expect("open");
        conn.execute_batch(
            "DROP TABLE outbox;
             CREATE TABLE outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL,
                 device TEXT NOT NULL, name TEXT NOT NULL, created_at INTEGER NOT NULL,
                 points INTEGER NOT NULL, payload BLOB NOT NULL);
             INSERT INTO outbox (kind, device, name, created_at, points, payload)
                 VALUES ('telemetry', 'd', 's', 1, 1, X'5B5D');
             PRAGMA user_version = 4;",
        )
        .expect("an old outbox");
        crate::store::migrate(&conn, &[]).expect("migrate");
        assert_eq!(next_rows(&conn, 10).expect("rows").len(), 1);
    }

    #[test]
    fn a_database_of_schema_5_keeps_its_unsealed_batch_and_takes_registrations() {
        let (_dir, db) = database();
        let conn = db.open().expect("open");
        conn.execute_batch(
            "DROP TABLE outbox;
             CREATE TABLE outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT,
                 kind TEXT NOT NULL CHECK (kind IN ('telemetry', 'alert', 'twin', 'ack')),
                 device TEXT NOT NULL, name TEXT NOT NULL, created_at INTEGER NOT NULL,
                 points INTEGER NOT NULL, payload BLOB NOT NULL, sealed INTEGER NOT NULL DEFAULT 1);
             INSERT INTO outbox (kind, device, name, created_at, points, payload, sealed)
                 VALUES ('telemetry', 'd', 's', 1, 1, X'5B5D', 0);
             PRAGMA user_version = 5;",
        )
        .expect("a schema-5 outbox");
        crate::store::migrate(&conn, &[]).expect("migrate");
        let sealed: i64 = conn
            .query_row("SELECT sealed FROM outbox", [], |r| r.get(0))
            .expect("row");
        assert_eq!(sealed, 0, "the writer's open batch stays open");
        insert(
            &conn,
            &[Entry {
                kind: Kind::Registration,
                device: "d-1".into(),
                name: String::new(),
                points: 0,
                payload: Vec::new(),
            }],
        )
        .expect("a registration row");
        insert(&conn, &[entry(Kind::Changeset, "d-1", "recipes", b"[]")])
            .expect("a changeset row (schema 9)");
    }
}

//! The outbox: everything waiting to go to the cloud, in SQLite, until the
//! cloud link has it acknowledged.
//!
//! Three kinds of entries: `telemetry` (a batch of points of one series),
//! `alert` and `twin` (a report of attributes). Twin reports and alerts are
//! written by the reporting call itself, in its own transaction, so they are
//! durable when the guest's call returns. Telemetry goes through [`Ingest`]:
//! a writer thread that collects points for at most the flush interval and
//! commits them as one row per series per flush, which is what makes
//! recording cheap for the guest.

use rusqlite::{Connection, params};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::value::now_ns;

/// What an outbox entry carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Telemetry,
    Alert,
    Twin,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Telemetry => "telemetry",
            Kind::Alert => "alert",
            Kind::Twin => "twin",
        }
    }
}

/// One row of the outbox.
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

/// Append entries; the caller owns the transaction.
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

/// One recorded point: nanoseconds since the epoch and its fields as JSON.
#[derive(Debug, Clone)]
pub struct Point {
    pub time: u64,
    pub values: serde_json::Map<String, serde_json::Value>,
}

/// Points of one series, handed from an app to the writer thread.
#[derive(Debug)]
pub struct Batch {
    pub device: String,
    pub series: String,
    pub points: Vec<Point>,
}

enum Command {
    Append(Batch),
    Flush(mpsc::Sender<Result<(), String>>),
    Shutdown,
}

/// The telemetry writer thread's handle. Clone the [`IngestSender`] for each
/// app; call [`Ingest::shutdown`] once the apps have stopped.
pub struct Ingest {
    sender: IngestSender,
    thread: Option<JoinHandle<()>>,
}

/// Where apps send their recorded points.
#[derive(Clone)]
pub struct IngestSender {
    tx: SyncSender<Command>,
}

/// Points held in memory when commits keep failing (disk full, I/O error);
/// past this the oldest are dropped and counted in the log.
const MAX_PENDING_POINTS: usize = 1_000_000;

impl Ingest {
    /// Start the writer thread on its own connection to `db_path`.
    /// `committed` is signalled after each commit (the cloud link waits on it).
    pub fn start(
        db_path: &Path,
        flush_interval: Duration,
        committed: Arc<tokio::sync::Notify>,
    ) -> anyhow::Result<Ingest> {
        let conn = crate::store::open(db_path)?;
        // Bounded: an app that records faster than the disk can take is slowed
        // down here rather than growing the host's memory without end.
        let (tx, rx) = mpsc::sync_channel::<Command>(1024);
        let thread = std::thread::Builder::new()
            .name("wasmgate-ingest".into())
            .spawn(move || writer(conn, rx, flush_interval, committed))?;
        Ok(Ingest {
            sender: IngestSender { tx },
            thread: Some(thread),
        })
    }

    pub fn sender(&self) -> IngestSender {
        self.sender.clone()
    }

    /// Commit what is pending and stop the thread.
    pub fn shutdown(mut self) {
        let _ = self.sender.tx.send(Command::Shutdown);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl IngestSender {
    /// Hand a batch to the writer. Blocks while the writer is behind.
    pub fn append(&self, batch: Batch) -> Result<(), String> {
        self.tx
            .send(Command::Append(batch))
            .map_err(|_| "the gateway is shutting down".to_string())
    }

    /// Wait until everything handed over so far is committed.
    pub fn flush(&self) -> Result<(), String> {
        let (tx, rx) = mpsc::channel();
        self.tx
            .send(Command::Flush(tx))
            .map_err(|_| "the gateway is shutting down".to_string())?;
        rx.recv().map_err(|_| "the writer stopped".to_string())?
    }
}

fn writer(
    mut conn: Connection,
    rx: mpsc::Receiver<Command>,
    interval: Duration,
    committed: Arc<tokio::sync::Notify>,
) {
    let mut pending: Vec<Batch> = Vec::new();
    let mut pending_points = 0usize;
    let mut oldest: Option<Instant> = None;
    let mut failing = false;
    loop {
        let wait = oldest.map_or(Duration::from_secs(3600), |t| {
            interval.saturating_sub(t.elapsed())
        });
        let command = match rx.recv_timeout(wait) {
            Ok(c) => Some(c),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => Some(Command::Shutdown),
        };
        let mut reply = None;
        let mut stop = false;
        match command {
            Some(Command::Append(batch)) => {
                pending_points += batch.points.len();
                pending.push(batch);
                oldest.get_or_insert_with(Instant::now);
                while pending_points > MAX_PENDING_POINTS && pending.len() > 1 {
                    let dropped = pending.remove(0);
                    pending_points -= dropped.points.len();
                    tracing::error!(
                        device = %dropped.device, series = %dropped.series, points = dropped.points.len(),
                        "outbox: dropped uncommitted points: the database has refused writes for too long"
                    );
                }
                if oldest.is_some_and(|t| t.elapsed() < interval) {
                    continue;
                }
            }
            Some(Command::Flush(tx)) => reply = Some(tx),
            Some(Command::Shutdown) => stop = true,
            None => {}
        }
        let result = commit(&mut conn, &pending);
        match &result {
            Ok(()) => {
                if failing {
                    tracing::info!("outbox: writes work again");
                    failing = false;
                }
                if !pending.is_empty() {
                    committed.notify_one();
                }
                pending.clear();
                pending_points = 0;
                oldest = None;
            }
            Err(e) => {
                if !failing {
                    tracing::error!(error = %e, points = pending_points, "outbox: commit failed; keeping the points in memory and retrying");
                    failing = true;
                }
                // Retry after another interval.
                oldest = Some(Instant::now());
            }
        }
        if let Some(tx) = reply {
            let _ = tx.send(result.map_err(|e| e.to_string()));
        }
        if stop {
            if failing {
                tracing::error!(
                    points = pending_points,
                    "outbox: stopping with uncommitted points"
                );
            }
            return;
        }
    }
}

/// Commit pending batches, one row per (device, series), points in order.
fn commit(conn: &mut Connection, pending: &[Batch]) -> rusqlite::Result<()> {
    if pending.is_empty() {
        return Ok(());
    }
    let mut rows: Vec<((&str, &str), Vec<&Point>)> = Vec::new();
    let mut index: HashMap<(&str, &str), usize> = HashMap::new();
    for batch in pending {
        let key = (batch.device.as_str(), batch.series.as_str());
        let i = *index.entry(key).or_insert_with(|| {
            rows.push((key, Vec::new()));
            rows.len() - 1
        });
        rows[i].1.extend(batch.points.iter());
    }
    let entries: Vec<Entry> = rows
        .into_iter()
        .map(|((device, series), points)| Entry {
            kind: Kind::Telemetry,
            device: device.to_string(),
            name: series.to_string(),
            points: u32::try_from(points.len()).unwrap_or(u32::MAX),
            payload: encode_points(&points),
        })
        .collect();
    let tx = conn.transaction()?;
    insert(&tx, &entries)?;
    tx.commit()
}

/// `[{"time": ns, "values": {...}}, ...]`
fn encode_points(points: &[&Point]) -> Vec<u8> {
    let list: Vec<serde_json::Value> = points
        .iter()
        .map(|p| serde_json::json!({ "time": p.time, "values": p.values }))
        .collect();
    serde_json::to_vec(&list).unwrap_or_default()
}

/// A row as the cloud link reads it.
#[derive(Debug, Clone)]
pub struct Row {
    pub seq: i64,
    pub kind: String,
    pub device: String,
    pub name: String,
    pub payload: Vec<u8>,
}

/// The next `limit` rows to send: alerts first, then everything in order.
pub fn next_rows(conn: &Connection, limit: usize) -> rusqlite::Result<Vec<Row>> {
    let mut stmt = conn.prepare_cached(
        "SELECT seq, kind, device, name, payload FROM outbox
         ORDER BY CASE kind WHEN 'alert' THEN 0 ELSE 1 END, seq LIMIT ?1",
    )?;
    stmt.query_map([limit as i64], |r| {
        Ok(Row {
            seq: r.get(0)?,
            kind: r.get(1)?,
            device: r.get(2)?,
            name: r.get(3)?,
            payload: r.get(4)?,
        })
    })?
    .collect()
}

/// Remove a delivered row.
pub fn delete(conn: &Connection, seq: i64) -> rusqlite::Result<()> {
    conn.execute("DELETE FROM outbox WHERE seq = ?1", [seq])?;
    Ok(())
}

/// The newest twin row of a device (0 if none).
pub fn last_twin_seq(conn: &Connection, device: &str) -> rusqlite::Result<i64> {
    conn.query_row(
        "SELECT COALESCE(MAX(seq), 0) FROM outbox WHERE kind = 'twin' AND device = ?1",
        [device],
        |r| r.get(0),
    )
}

/// Remove a device's twin rows up to `seq`: the retained state that was
/// delivered covers them all.
pub fn delete_twin_upto(conn: &Connection, device: &str, seq: i64) -> rusqlite::Result<()> {
    conn.execute(
        "DELETE FROM outbox WHERE kind = 'twin' AND device = ?1 AND seq <= ?2",
        params![device, seq],
    )?;
    Ok(())
}

/// Entries and points in the whole outbox.
pub fn totals(conn: &Connection) -> rusqlite::Result<(u64, u64)> {
    conn.query_row(
        "SELECT COUNT(*), COALESCE(SUM(points), 0) FROM outbox",
        [],
        |r| {
            Ok((
                r.get::<_, i64>(0)?.max(0) as u64,
                r.get::<_, i64>(1)?.max(0) as u64,
            ))
        },
    )
}

/// How much is waiting in the outbox for one stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Depth {
    pub kind: String,
    pub device: String,
    pub name: String,
    pub entries: i64,
    pub points: i64,
    pub oldest_ns: i64,
}

/// Outbox depth per stream (kind, device, name).
pub fn depth(conn: &Connection) -> rusqlite::Result<Vec<Depth>> {
    let mut stmt = conn.prepare(
        "SELECT kind, device, name, COUNT(*), SUM(points), MIN(created_at)
         FROM outbox GROUP BY kind, device, name ORDER BY kind, device, name",
    )?;
    stmt.query_map([], |r| {
        Ok(Depth {
            kind: r.get(0)?,
            device: r.get(1)?,
            name: r.get(2)?,
            entries: r.get(3)?,
            points: r.get(4)?,
            oldest_ns: r.get(5)?,
        })
    })?
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(time: u64, n: i64) -> Point {
        let mut values = serde_json::Map::new();
        values.insert("n".into(), n.into());
        Point { time, values }
    }

    #[test]
    fn batches_of_one_series_are_committed_as_one_row_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("t.db");
        crate::store::migrate(&crate::store::open(&path).expect("open")).expect("migrate");
        let ingest = Ingest::start(&path, Duration::from_secs(60), Arc::default()).expect("start");
        let sender = ingest.sender();
        for i in 0..3 {
            sender
                .append(Batch {
                    device: "d".into(),
                    series: "s".into(),
                    points: vec![point(i, i as i64)],
                })
                .expect("append");
        }
        sender
            .append(Batch {
                device: "d".into(),
                series: "other".into(),
                points: vec![point(9, 9)],
            })
            .expect("append");
        sender.flush().expect("flush");
        let conn = crate::store::open(&path).expect("open");
        let rows = depth(&conn).expect("depth");
        assert_eq!(rows.len(), 2);
        let s = rows.iter().find(|d| d.name == "s").expect("series s");
        assert_eq!((s.entries, s.points), (1, 3));
        let payload: Vec<u8> = conn
            .query_row("SELECT payload FROM outbox WHERE name = 's'", [], |r| {
                r.get(0)
            })
            .expect("row");
        let json: serde_json::Value = serde_json::from_slice(&payload).expect("json");
        let ns: Vec<i64> = json
            .as_array()
            .expect("array")
            .iter()
            .map(|p| p["values"]["n"].as_i64().expect("n"))
            .collect();
        assert_eq!(ns, vec![0, 1, 2]);
        ingest.shutdown();
    }
}

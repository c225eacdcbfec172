//! The telemetry writer: one thread that collects recorded points for at
//! most the flush interval and commits them in one transaction, one row per
//! stream per batch, and keeps the outbox within its limits.
//!
//! Points arrive already encoded as JSON (the apps encode on their own
//! threads), so the writer only concatenates bytes and writes rows. A row
//! holds at most the series' `batch_max_points` points and about
//! `batch_max_kib` bytes, so the link can publish a row as one message.
//!
//! When a commit fails (disk full, an I/O error), the points stay in memory,
//! the failure is logged once and shown to guests as `unavailable` on their
//! next `record`, and the commit is retried every flush interval until the
//! database takes writes again.

use rusqlite::Connection;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::Notify;

use super::limits::{self, Stream, Usage};
use super::{Entry, Kind, insert};
use crate::store::Database;

/// Points of one series of one device, encoded: `json` holds the points'
/// JSON objects back to back, `ends[i]` is where point `i` ends.
#[derive(Debug, Default)]
pub struct Batch {
    pub device: String,
    pub series: String,
    pub json: Vec<u8>,
    pub ends: Vec<u32>,
}

impl Batch {
    pub fn points(&self) -> usize {
        self.ends.len()
    }
}

enum Command {
    Append(Batch),
    Flush(mpsc::Sender<Result<(), String>>),
    Shutdown,
}

/// The writer thread's handle. Clone the [`IngestSender`] for each app;
/// call [`Ingest::shutdown`] once the apps have stopped.
pub struct Ingest {
    sender: IngestSender,
    thread: Option<JoinHandle<()>>,
}

/// Where apps send their recorded points.
#[derive(Clone)]
pub struct IngestSender {
    tx: SyncSender<Command>,
}

/// Points held in memory while commits keep failing; past this the oldest
/// are dropped and counted.
const MAX_PENDING_POINTS: usize = 4_000_000;

/// How often limits and ages are enforced when nothing else happens.
const MAINTENANCE: Duration = Duration::from_secs(1);

impl Ingest {
    /// Start the writer on its own connection. `committed` is signalled
    /// after each commit (the cloud link waits on it).
    pub fn start(
        db: &Database,
        usage: Arc<Usage>,
        committed: Arc<Notify>,
    ) -> anyhow::Result<Ingest> {
        let conn = db.open()?;
        // Bounded: an app that records faster than the disk can take is
        // slowed down here rather than growing the host's memory without end.
        let (tx, rx) = mpsc::sync_channel::<Command>(256);
        let thread = std::thread::Builder::new()
            .name("wasmgate-ingest".into())
            .spawn(move || Writer::new(conn, usage, committed).run(rx))?;
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

struct Writer {
    conn: Connection,
    usage: Arc<Usage>,
    committed: Arc<Notify>,
    pending: Vec<Batch>,
    pending_points: usize,
    /// When the oldest uncommitted point arrived.
    oldest: Option<Instant>,
    last_maintenance: Instant,
    failing: bool,
}

impl Writer {
    fn new(conn: Connection, usage: Arc<Usage>, committed: Arc<Notify>) -> Writer {
        Writer {
            conn,
            usage,
            committed,
            pending: Vec::new(),
            pending_points: 0,
            oldest: None,
            last_maintenance: Instant::now(),
            failing: false,
        }
    }

    fn run(mut self, rx: mpsc::Receiver<Command>) {
        let interval = self.usage.config().flush_interval;
        loop {
            let until_flush = self
                .oldest
                .map_or(MAINTENANCE, |t| interval.saturating_sub(t.elapsed()));
            let until_maintenance = MAINTENANCE.saturating_sub(self.last_maintenance.elapsed());
            let command = match rx.recv_timeout(until_flush.min(until_maintenance)) {
                Ok(c) => Some(c),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => Some(Command::Shutdown),
            };
            let mut reply = None;
            let mut stop = false;
            match command {
                Some(Command::Append(batch)) => {
                    self.hold(batch);
                    if self.oldest.is_some_and(|t| t.elapsed() < interval) {
                        continue;
                    }
                }
                Some(Command::Flush(tx)) => reply = Some(tx),
                Some(Command::Shutdown) => stop = true,
                None => {}
            }
            let maintain = self.last_maintenance.elapsed() >= MAINTENANCE;
            let result = self.commit(maintain);
            if let Some(tx) = reply {
                let _ = tx.send(result.map_err(|e| e.to_string()));
            }
            if stop {
                if self.failing {
                    tracing::error!(
                        points = self.pending_points,
                        "outbox: stopping with uncommitted points"
                    );
                }
                return;
            }
        }
    }

    fn hold(&mut self, batch: Batch) {
        self.pending_points += batch.points();
        self.pending.push(batch);
        self.oldest.get_or_insert_with(Instant::now);
        while self.pending_points > MAX_PENDING_POINTS && self.pending.len() > 1 {
            let dropped = self.pending.remove(0);
            self.pending_points -= dropped.points();
            self.usage.unreserve(
                &Stream::telemetry(&dropped.device, &dropped.series),
                dropped.points() as u64,
            );
            tracing::error!(
                device = %dropped.device, series = %dropped.series, points = dropped.points(),
                "outbox: dropped uncommitted points: the database has refused writes for too long"
            );
        }
    }

    /// Commit pending points (and, if due, enforce limits and ages).
    fn commit(&mut self, maintain: bool) -> rusqlite::Result<()> {
        let rows = rows(&self.pending, self.usage.config());
        let result = (|| {
            let tx = self.conn.transaction()?;
            insert(&tx, &rows)?;
            if maintain {
                limits::enforce(&tx, &self.usage)?;
                limits::expire(&tx, &self.usage)?;
            }
            self.usage.save_counters(&tx)?;
            tx.commit()
        })();
        if maintain {
            self.last_maintenance = Instant::now();
        }
        match &result {
            Ok(()) => {
                for row in &rows {
                    self.usage.added(
                        Stream::telemetry(&row.device, &row.name),
                        row.payload.len() as u64,
                        u64::from(row.points),
                    );
                }
                if self.failing {
                    tracing::info!("outbox: the database takes writes again");
                    self.failing = false;
                    self.usage.set_write_error(None);
                }
                if !rows.is_empty() {
                    self.committed.notify_one();
                }
                self.pending.clear();
                self.pending_points = 0;
                self.oldest = None;
            }
            Err(e) => {
                if !self.failing {
                    tracing::error!(error = %e, points = self.pending_points, "outbox: commit failed; keeping the points in memory and retrying");
                    self.failing = true;
                }
                self.usage.set_write_error(Some(format!(
                    "the gateway cannot store points right now: {e}"
                )));
                // Retry after another interval.
                if self.oldest.is_some() {
                    self.oldest = Some(Instant::now());
                }
            }
        }
        // Limits are enforced after the new rows are counted.
        if result.is_ok() && !rows.is_empty() && self.over_limits() {
            let tx = self.conn.transaction()?;
            limits::enforce(&tx, &self.usage)?;
            self.usage.save_counters(&tx)?;
            tx.commit()?;
        }
        result
    }

    fn over_limits(&self) -> bool {
        let config = self.usage.config();
        self.usage.total_bytes() > config.max_bytes
            || self.usage.snapshot().iter().any(|(s, st)| {
                s.kind == "telemetry"
                    && config
                        .series(&s.name)
                        .max_bytes
                        .is_some_and(|max| st.bytes > max)
            })
    }
}

/// Pending batches as rows: per stream, in order, cut at the series'
/// batch limits.
fn rows(pending: &[Batch], config: &crate::config::OutboxConfig) -> Vec<Entry> {
    let mut order: Vec<(&str, &str)> = Vec::new();
    let mut by_stream: HashMap<(&str, &str), Vec<&Batch>> = HashMap::new();
    for batch in pending {
        let key = (batch.device.as_str(), batch.series.as_str());
        by_stream
            .entry(key)
            .or_insert_with(|| {
                order.push(key);
                Vec::new()
            })
            .push(batch);
    }
    let mut entries = Vec::new();
    for key in order {
        let batching = config.series(key.1).batching;
        let mut payload = vec![b'['];
        let mut points = 0u32;
        let mut flush = |payload: &mut Vec<u8>, points: &mut u32| {
            if *points > 0 {
                payload.push(b']');
                entries.push(Entry {
                    kind: Kind::Telemetry,
                    device: key.0.to_string(),
                    name: key.1.to_string(),
                    points: *points,
                    payload: std::mem::replace(payload, vec![b'[']),
                });
                *points = 0;
            }
        };
        for batch in &by_stream[&key] {
            let mut start = 0usize;
            for &end in &batch.ends {
                let point = &batch.json[start..end as usize];
                start = end as usize;
                if points > 0
                    && (points >= batching.max_points
                        || (payload.len() + point.len()) as u64 > batching.max_bytes)
                {
                    flush(&mut payload, &mut points);
                }
                if points > 0 {
                    payload.push(b',');
                }
                payload.extend_from_slice(point);
                points += 1;
            }
        }
        flush(&mut payload, &mut points);
    }
    entries
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::OutboxConfig;

    fn batch(series: &str, ns: &[i64]) -> Batch {
        let mut b = Batch {
            device: "d".into(),
            series: series.into(),
            ..Batch::default()
        };
        for n in ns {
            b.json
                .extend_from_slice(format!(r#"{{"time":{n},"values":{{"n":{n}}}}}"#).as_bytes());
            b.ends.push(b.json.len() as u32);
        }
        b
    }

    fn ns(entry: &Entry) -> Vec<i64> {
        let points: serde_json::Value =
            serde_json::from_slice(&entry.payload).expect("a row is a JSON array");
        points
            .as_array()
            .expect("array")
            .iter()
            .map(|p| p["values"]["n"].as_i64().expect("n"))
            .collect()
    }

    #[test]
    fn pending_batches_become_rows_per_stream_in_order_cut_at_the_batch_limit() {
        let mut config = OutboxConfig::default();
        config.defaults.batching.max_points = 3;
        let pending = [
            batch("s", &[1, 2]),
            batch("t", &[9]),
            batch("s", &[3, 4, 5, 6, 7]),
        ];
        let rows = rows(&pending, &config);
        let got: Vec<(String, Vec<i64>)> = rows.iter().map(|r| (r.name.clone(), ns(r))).collect();
        assert_eq!(
            got,
            vec![
                ("s".to_string(), vec![1, 2, 3]),
                ("s".to_string(), vec![4, 5, 6]),
                ("s".to_string(), vec![7]),
                ("t".to_string(), vec![9]),
            ]
        );
        assert_eq!(rows[0].points, 3);
    }
}

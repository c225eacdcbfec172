//! The telemetry writer: one thread that collects recorded points for at
//! most the flush interval and commits them in one transaction, one row per
//! stream per batch, and keeps the outbox within its limits.
//!
//! Points arrive checked, in the compact form of [`Points`]: the writer
//! encodes them to JSON as it takes each batch ([`Held::of`]), off the
//! apps' threads, and concatenates their bytes into rows. A row
//! is one message on the wire, cut here and nowhere else ([`cut`]): at most
//! the series' `batch_max_points` points and about `batch_max_kib` bytes.
//! With `batch_max_delay_ms` the last row of a series stays open for later
//! commits until it is full or that old; the link sends only sealed rows,
//! unchanged.
//!
//! When a commit fails (disk full, an I/O error), the points stay in memory,
//! the failure is logged once and shown to guests as `unavailable` on their
//! next `record`, and the commit is retried every flush interval until the
//! database takes writes again.

use rusqlite::{Connection, TransactionBehavior};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TrySendError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::Notify;

use super::Kind;
use super::OutboxError;
use super::Points;
use super::limits::{self, Stream, Usage};
use crate::store::Database;

/// Points of one series of one device, as an app hands them over.
#[derive(Debug, Default)]
pub struct Batch {
    pub device: String,
    pub series: String,
    pub points: Points,
}

/// A batch the writer holds until its commit, encoded: `json` holds the
/// points' JSON objects back to back, `ends[i]` is where point `i` ends.
#[derive(Debug)]
struct Held {
    device: String,
    series: String,
    json: Vec<u8>,
    ends: Vec<u32>,
}

impl Held {
    /// Encode a batch as the writer takes it.
    fn of(batch: Batch) -> Held {
        let mut held = Held {
            device: batch.device,
            series: batch.series,
            json: Vec::with_capacity(batch.points.json_estimate() as usize),
            ends: Vec::with_capacity(batch.points.len()),
        };
        batch.points.encode_json(&mut held.json, &mut held.ends);
        held
    }

    fn points(&self) -> usize {
        self.ends.len()
    }
}

enum Command {
    Append(Batch),
    Flush(mpsc::Sender<Result<(), OutboxError>>),
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
    /// The outbox's totals: the record path asks them for room and reserves
    /// it here, so that only the outbox module changes them.
    usage: Arc<Usage>,
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
            .spawn({
                let usage = usage.clone();
                move || Writer::new(conn, usage, committed).run(rx)
            })?;
        Ok(Ingest {
            sender: IngestSender { tx, usage },
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
    /// Whether a guest may record `points` more points of `series` for
    /// `device` (see [`Usage::admit`]); a refusal is counted.
    pub fn admit(&self, device: &str, series: &str, points: u64) -> Result<(), OutboxError> {
        self.usage.admit(device, series, points)
    }

    /// Points of `series` are on their way (buffered in the app's call):
    /// count them against the series' limit already.
    pub fn reserve(&self, device: &str, series: &str, bytes: u64, points: u64) {
        self.usage.reserve(device, series, bytes, points)
    }

    /// Hand a batch to the writer. Blocks while the writer is behind (off
    /// the runtime, see [`off_the_runtime`]). If it cannot be handed over,
    /// its reservation is given back.
    pub fn append(&self, batch: Batch) -> Result<(), OutboxError> {
        let refused = match self.tx.try_send(Command::Append(batch)) {
            Ok(()) => return Ok(()),
            Err(TrySendError::Full(command)) => match off_the_runtime(|| self.tx.send(command)) {
                Ok(()) => return Ok(()),
                Err(refused) => refused.0,
            },
            Err(TrySendError::Disconnected(command)) => command,
        };
        if let Command::Append(batch) = refused {
            let stream = Stream::telemetry(&batch.device, &batch.series);
            self.usage.unreserve(&stream, batch.points.len() as u64);
        }
        Err(OutboxError::ShuttingDown)
    }

    /// Wait until everything handed over so far is committed (off the
    /// runtime: a commit may wait on the disk).
    pub fn flush(&self) -> Result<(), OutboxError> {
        off_the_runtime(|| {
            let (tx, rx) = mpsc::channel();
            self.tx
                .send(Command::Flush(tx))
                .map_err(|_| OutboxError::ShuttingDown)?;
            rx.recv().map_err(|_| OutboxError::WriterStopped)?
        })
    }
}

/// Run `wait`, which blocks its thread, without holding up the runtime: on
/// a worker of the multi-thread runtime, the worker's other tasks move to
/// another thread first (`block_in_place`). Apps record on the runtime's
/// workers, and the gateway has as many workers as cores: two apps waiting
/// on a writer that is behind once stopped every task of a 2-core gateway,
/// the cloud link and the admin socket included.
fn off_the_runtime<R>(wait: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(wait)
        }
        // No runtime (the writer's own thread, a test), or one that cannot
        // move its tasks: waiting here holds up nothing else.
        _ => wait(),
    }
}

struct Writer {
    conn: Connection,
    usage: Arc<Usage>,
    committed: Arc<Notify>,
    pending: Vec<Held>,
    pending_points: usize,
    /// When the oldest uncommitted point arrived.
    oldest: Option<Instant>,
    last_maintenance: Instant,
    failing: bool,
    /// Each stream's open row (see [`OpenRow`]).
    open: HashMap<StreamKey, OpenRow>,
}

impl Writer {
    fn new(conn: Connection, usage: Arc<Usage>, committed: Arc<Notify>) -> Writer {
        // Rows left open by a gateway that stopped are complete now: no
        // one holds their streams' batches any more.
        if let Err(e) = conn.execute("UPDATE outbox SET sealed = 1 WHERE sealed = 0", []) {
            tracing::error!("outbox: cannot seal the rows left open: {e}");
        }
        Writer {
            conn,
            usage,
            committed,
            pending: Vec::new(),
            pending_points: 0,
            oldest: None,
            last_maintenance: Instant::now(),
            failing: false,
            open: HashMap::new(),
        }
    }

    /// When the next open row is due to be sealed.
    fn next_seal(&self) -> Option<Instant> {
        let config = self.usage.config();
        self.open
            .iter()
            .map(|((_, series), row)| row.opened + config.series(series).batching.max_delay)
            .min()
    }

    /// Seal the open rows whose batch delay is over (all of them with
    /// `all`), so the link sends them.
    fn seal_due(&mut self, all: bool) {
        let now = Instant::now();
        let config = self.usage.config();
        let due: Vec<StreamKey> = self
            .open
            .iter()
            .filter(|((_, series), row)| {
                all || now.duration_since(row.opened) >= config.series(series).batching.max_delay
            })
            .map(|(key, _)| key.clone())
            .collect();
        if due.is_empty() {
            return;
        }
        // Immediate, as every transaction of the writer: one that reads
        // before it writes (the limits do) could otherwise be refused at once
        // ("database is locked") when the link deleted rows since it began.
        let sealed = (|| {
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)?;
            for key in &due {
                tx.execute(
                    "UPDATE outbox SET sealed = 1 WHERE seq = ?1",
                    [self.open[key].seq],
                )?;
            }
            tx.commit()
        })();
        match sealed {
            Ok(()) => {
                for key in &due {
                    self.open.remove(key);
                }
                self.committed.notify_one();
            }
            // Tried again on the next wake-up; the rows stay durable.
            Err(e) => tracing::error!("outbox: cannot seal batches: {e}"),
        }
    }

    fn run(mut self, rx: mpsc::Receiver<Command>) {
        let interval = self.usage.config().flush_interval;
        loop {
            let until_flush = self
                .oldest
                .map_or(MAINTENANCE, |t| interval.saturating_sub(t.elapsed()));
            let until_maintenance = MAINTENANCE.saturating_sub(self.last_maintenance.elapsed());
            let until_seal = self
                .next_seal()
                .map_or(MAINTENANCE, |t| t.saturating_duration_since(Instant::now()));
            let command = match rx.recv_timeout(until_flush.min(until_maintenance).min(until_seal))
            {
                Ok(c) => Some(c),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => Some(Command::Shutdown),
            };
            self.seal_due(false);
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
                let _ = tx.send(result.map_err(|e| OutboxError::Unavailable(e.to_string())));
            }
            if stop {
                self.seal_due(true);
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
        let batch = Held::of(batch);
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
        let pieces = cut(
            &self.pending,
            &self.open,
            self.usage.config(),
            Instant::now(),
        );
        let result = (|| {
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)?;
            let mut written = Vec::with_capacity(pieces.len());
            for piece in &pieces {
                written.push(write(&tx, piece)?);
            }
            if maintain {
                limits::enforce(&tx, &self.usage)?;
                limits::expire(&tx, &self.usage)?;
            }
            self.usage.save_counters(&tx)?;
            tx.commit()?;
            Ok(written)
        })();
        if maintain {
            self.last_maintenance = Instant::now();
        }
        // Only a stream written now can have gone over its series' limit.
        let mut stream_over = false;
        let result = match result {
            Ok(written) => {
                let now = Instant::now();
                for (piece, row) in pieces.iter().zip(written) {
                    stream_over |= self.usage.added(
                        Stream::telemetry(&piece.device, &piece.series),
                        row.added_bytes,
                        u64::from(piece.points),
                    );
                    let key = (piece.device.clone(), piece.series.clone());
                    if piece.sealed {
                        self.open.remove(&key);
                    } else {
                        let (points, bytes) = row.size;
                        let opened = piece.onto.filter(|_| row.kept).map_or(now, |o| o.opened);
                        self.open.insert(
                            key,
                            OpenRow {
                                seq: row.seq,
                                points,
                                bytes,
                                opened,
                            },
                        );
                    }
                }
                if self.failing {
                    tracing::info!("outbox: the database takes writes again");
                    self.failing = false;
                    self.usage.set_write_error(None);
                }
                if !pieces.is_empty() {
                    self.committed.notify_one();
                }
                self.pending.clear();
                self.pending_points = 0;
                self.oldest = None;
                Ok(())
            }
            Err(e) => {
                if !self.failing {
                    tracing::error!(error = %e, points = self.pending_points, "outbox: commit failed; keeping the points in memory and retrying");
                    self.failing = true;
                }
                let error: &rusqlite::Error = &e;
                self.usage.set_write_error(Some(error.to_string()));
                // Retry after another interval.
                if self.oldest.is_some() {
                    self.oldest = Some(Instant::now());
                }
                Err(e)
            }
        };
        // Limits are enforced after the new rows are counted.
        let gateway_over = self.usage.total_bytes() > self.usage.config().max_bytes;
        if result.is_ok() && !pieces.is_empty() && (stream_over || gateway_over) {
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)?;
            limits::enforce(&tx, &self.usage)?;
            self.usage.save_counters(&tx)?;
            tx.commit()?;
        }
        result
    }
}

/// A stream: (device, series).
type StreamKey = (String, String);

/// The last row of a stream, committed but not sealed: later commits add
/// their points to it until it is full or `batch_max_delay_ms` old. The
/// link sends only sealed rows, so nothing is added to a row in flight.
#[derive(Debug, Clone, Copy, PartialEq)]
struct OpenRow {
    seq: i64,
    points: u32,
    /// Length of its payload (a JSON array).
    bytes: u64,
    opened: Instant,
}

/// A piece of one commit: points of one stream, added to its open row or
/// written as a new row.
#[derive(Debug, Clone, PartialEq)]
struct Piece {
    device: String,
    series: String,
    /// Add to this open row (`payload` then starts with a comma and ends
    /// with the closing bracket that replaces the row's own); otherwise a
    /// new row (`payload` is a whole JSON array).
    onto: Option<OpenRow>,
    payload: Vec<u8>,
    points: u32,
    /// Whether the row is complete after this piece: full, or the series
    /// holds no batch open (`batch_max_delay_ms` 0), or it is old enough.
    sealed: bool,
}

impl Piece {
    /// Points and payload bytes of the row once this piece is in it.
    fn row_size(&self) -> (u32, u64) {
        match self.onto {
            Some(open) => (
                open.points + self.points,
                open.bytes - 1 + self.payload.len() as u64,
            ),
            None => (self.points, self.payload.len() as u64),
        }
    }
}

/// Cut the pending batches into the pieces one commit writes: per stream,
/// in order, first onto the stream's open row while it has room, then into
/// new rows of at most the series' `batch_max_points` points and about
/// `batch_max_kib` bytes. This is the one place a wire batch is cut: the
/// link sends each sealed row as it is.
fn cut(
    pending: &[Held],
    open: &HashMap<StreamKey, OpenRow>,
    config: &crate::config::OutboxConfig,
    now: Instant,
) -> Vec<Piece> {
    let mut order: Vec<(&str, &str)> = Vec::new();
    let mut by_stream: HashMap<(&str, &str), Vec<&Held>> = HashMap::new();
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
    let mut pieces = Vec::new();
    for key in order {
        let batching = config.series(key.1).batching;
        let open_row = open.get(&(key.0.to_string(), key.1.to_string())).copied();
        let young = |row: &OpenRow| now.duration_since(row.opened) < batching.max_delay;
        let full = |piece: &Piece| {
            let (points, bytes) = piece.row_size();
            points >= batching.max_points || bytes >= batching.max_bytes
        };
        let new_piece = |onto: Option<OpenRow>| Piece {
            device: key.0.to_string(),
            series: key.1.to_string(),
            onto,
            payload: if onto.is_some() {
                Vec::new()
            } else {
                vec![b'[']
            },
            points: 0,
            sealed: false,
        };
        // An open row only needs sealing: nothing of this commit goes in.
        let seal_only = |open: OpenRow| Piece {
            payload: vec![b']'],
            sealed: true,
            ..new_piece(Some(open))
        };
        let mut piece = match open_row {
            Some(row) if young(&row) => new_piece(Some(row)),
            // Past its delay, and its timer has not come yet.
            Some(row) => {
                pieces.push(seal_only(row));
                new_piece(None)
            }
            None => new_piece(None),
        };
        for batch in &by_stream[&key] {
            let mut start = 0usize;
            for &end in &batch.ends {
                let point = &batch.json[start..end as usize];
                start = end as usize;
                let (points, bytes) = piece.row_size();
                if points > 0
                    && (points >= batching.max_points
                        || bytes + 1 + point.len() as u64 > batching.max_bytes)
                {
                    match piece.onto {
                        Some(open) if piece.points == 0 => pieces.push(seal_only(open)),
                        _ => {
                            piece.payload.push(b']');
                            piece.sealed = true;
                            pieces.push(piece);
                        }
                    }
                    piece = new_piece(None);
                }
                if piece.onto.is_some() || piece.points > 0 {
                    piece.payload.push(b',');
                }
                piece.payload.extend_from_slice(point);
                piece.points += 1;
            }
        }
        if piece.points > 0 {
            piece.payload.push(b']');
            piece.sealed = batching.max_delay.is_zero() || full(&piece);
            pieces.push(piece);
        }
    }
    pieces
}

/// What writing a piece did: the row it is in, that row's size after it,
/// and how many bytes the outbox grew by.
struct Written {
    seq: i64,
    size: (u32, u64),
    added_bytes: u64,
    /// The piece went onto its open row (not into a new one because the
    /// limits had removed the open row meanwhile).
    kept: bool,
}

/// Write one piece in the commit's transaction.
fn write(tx: &Connection, piece: &Piece) -> rusqlite::Result<Written> {
    use rusqlite::{OptionalExtension as _, params};
    if let Some(open) = piece.onto {
        let current: Option<Vec<u8>> = tx
            .prepare_cached("SELECT payload FROM outbox WHERE seq = ?1 AND sealed = 0")?
            .query_row([open.seq], |r| r.get(0))
            .optional()?;
        if let Some(mut payload) = current {
            let before = payload.len() as u64;
            // `[...]` + `,a,b]`: the piece's closing bracket replaces the row's.
            payload.pop();
            payload.extend_from_slice(&piece.payload);
            let points = open.points + piece.points;
            tx.prepare_cached(
                "UPDATE outbox SET payload = ?2, points = ?3, sealed = ?4 WHERE seq = ?1",
            )?
            .execute(params![open.seq, payload, points, piece.sealed])?;
            return Ok(Written {
                seq: open.seq,
                size: (points, payload.len() as u64),
                added_bytes: (payload.len() as u64).saturating_sub(before),
                kept: true,
            });
        }
        // The limits evicted or expired the open row since: what this
        // piece adds becomes a row of its own.
        if piece.points == 0 {
            return Ok(Written {
                seq: open.seq,
                size: (0, 0),
                added_bytes: 0,
                kept: false,
            });
        }
        let mut payload = piece.payload.clone();
        payload[0] = b'[';
        return insert_row(tx, piece, &payload);
    }
    insert_row(tx, piece, &piece.payload)
}

fn insert_row(tx: &Connection, piece: &Piece, payload: &[u8]) -> rusqlite::Result<Written> {
    tx.prepare_cached(
        "INSERT INTO outbox (kind, device, name, created_at, points, payload, sealed)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(rusqlite::params![
        Kind::Telemetry.as_str(),
        piece.device,
        piece.series,
        crate::value::now_ns() as i64,
        piece.points,
        payload,
        piece.sealed
    ])?;
    Ok(Written {
        seq: tx.last_insert_rowid(),
        size: (piece.points, payload.len() as u64),
        added_bytes: payload.len() as u64,
        kept: false,
    })
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::config::OutboxConfig;

    /// A batch of device `d`'s points `{"time":n,"values":{"n":n}}`, one for
    /// each `n` of `ns`.
    pub(in crate::outbox) fn batch(series: &str, ns: impl IntoIterator<Item = i64>) -> Batch {
        let mut points = Points::default();
        for n in ns {
            points.begin(n as u64);
            points.field("n", &crate::bindings::Value::Integer(n));
        }
        Batch {
            device: "d".into(),
            series: series.into(),
            points,
        }
    }

    /// The same batch, as the writer holds it.
    fn held(series: &str, ns: &[i64]) -> Held {
        Held::of(batch(series, ns.iter().copied()))
    }

    #[test]
    fn the_writer_holds_a_batch_encoded_as_the_protocol_has_points() {
        let held = held("s", &[1, 22]);
        assert_eq!((held.device.as_str(), held.series.as_str()), ("d", "s"));
        let first = r#"{"time":1,"values":{"n":1}}"#;
        let second = r#"{"time":22,"values":{"n":22}}"#;
        assert_eq!(held.json, format!("{first}{second}").as_bytes());
        assert_eq!(
            held.ends,
            [first.len() as u32, (first.len() + second.len()) as u32]
        );
    }

    fn ns(payload: &[u8]) -> Vec<i64> {
        let points: serde_json::Value =
            serde_json::from_slice(payload).expect("a row is a JSON array");
        points
            .as_array()
            .expect("array")
            .iter()
            .map(|p| p["values"]["n"].as_i64().expect("n"))
            .collect()
    }

    /// What the pieces say: series, the points a new row holds (or, onto
    /// an open row, what it adds), and whether the row is sealed.
    fn summary(pieces: &[Piece]) -> Vec<(String, Option<i64>, Vec<i64>, bool)> {
        pieces
            .iter()
            .map(|p| {
                let mut payload = p.payload.clone();
                if p.onto.is_some() {
                    // `,a,b]` as a whole array.
                    payload.insert(0, b'[');
                    payload.remove(1);
                }
                let points = if p.points == 0 {
                    Vec::new()
                } else {
                    ns(&payload)
                };
                (p.series.clone(), p.onto.map(|o| o.seq), points, p.sealed)
            })
            .collect()
    }

    fn config(max_points: u32, max_delay_ms: u64) -> OutboxConfig {
        let mut config = OutboxConfig::default();
        config.defaults.batching.max_points = max_points;
        config.defaults.batching.max_delay = Duration::from_millis(max_delay_ms);
        config
    }

    #[test]
    fn pending_batches_become_rows_per_stream_in_order_cut_at_the_batch_limit() {
        let pending = [
            held("s", &[1, 2]),
            held("t", &[9]),
            held("s", &[3, 4, 5, 6, 7]),
        ];
        let pieces = cut(&pending, &HashMap::new(), &config(3, 0), Instant::now());
        let s = |n: &[i64]| ("s".to_string(), None, n.to_vec(), true);
        assert_eq!(
            summary(&pieces),
            vec![
                s(&[1, 2, 3]),
                s(&[4, 5, 6]),
                s(&[7]),
                ("t".to_string(), None, vec![9], true)
            ]
        );
        assert_eq!(pieces[0].row_size().0, 3);
    }

    #[test]
    fn with_a_batch_delay_points_fill_the_open_row_and_the_last_row_stays_open() {
        let now = Instant::now();
        let open = OpenRow {
            seq: 7,
            points: 2,
            bytes: ns_row(&[1, 2]).len() as u64,
            opened: now,
        };
        let streams = HashMap::from([(("d".to_string(), "s".to_string()), open)]);
        let pieces = cut(&[held("s", &[3, 4, 5, 6])], &streams, &config(3, 1000), now);
        assert_eq!(
            summary(&pieces),
            vec![
                // The open row takes one point and is full.
                ("s".to_string(), Some(7), vec![3], true),
                ("s".to_string(), None, vec![4, 5, 6], true),
            ]
        );
        let pieces = cut(&[held("s", &[3])], &streams, &config(4, 1000), now);
        assert_eq!(
            summary(&pieces),
            vec![("s".to_string(), Some(7), vec![3], false)],
            "not full and young: it stays open"
        );
        assert_eq!(pieces[0].row_size(), (3, ns_row(&[1, 2, 3]).len() as u64));
        let pieces = cut(&[held("s", &[8])], &HashMap::new(), &config(3, 1000), now);
        assert_eq!(
            summary(&pieces),
            vec![("s".to_string(), None, vec![8], false)]
        );
    }

    #[test]
    fn an_open_row_past_its_delay_is_sealed_and_not_added_to() {
        let opened = Instant::now();
        let open = OpenRow {
            seq: 7,
            points: 1,
            bytes: ns_row(&[1]).len() as u64,
            opened,
        };
        let streams = HashMap::from([(("d".to_string(), "s".to_string()), open)]);
        let later = opened + Duration::from_millis(1000);
        let pieces = cut(&[held("s", &[2])], &streams, &config(3, 1000), later);
        assert_eq!(
            summary(&pieces),
            vec![
                ("s".to_string(), Some(7), vec![], true),
                ("s".to_string(), None, vec![2], false),
            ]
        );
    }

    /// A whole row's payload, as the writer stores it.
    fn ns_row(n: &[i64]) -> Vec<u8> {
        let b = held("s", n);
        let mut out = vec![b'['];
        let mut start = 0;
        for (i, &end) in b.ends.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(&b.json[start..end as usize]);
            start = end as usize;
        }
        out.push(b']');
        out
    }

    #[test]
    fn an_app_waiting_on_a_writer_that_is_behind_holds_up_no_other_task() {
        let (_dir, db) = crate::store::temporary_database();
        let conn = db.open().expect("open");
        let usage = Arc::new(Usage::load(&conn, OutboxConfig::default()).expect("usage"));
        let ingest = Ingest::start(&db, usage, Arc::default()).expect("start");
        let sender = ingest.sender();
        // Another connection holds the write lock, and the writer is made
        // to commit: it waits for the lock, and takes nothing more from its
        // channel (256 commands) meanwhile.
        conn.execute_batch("BEGIN IMMEDIATE")
            .expect("hold the lock");
        sender.append(batch("s", [0])).expect("append");
        let (committed, commit) = mpsc::channel();
        sender.tx.send(Command::Flush(committed)).expect("flush");
        // One worker: without moving its tasks, the recorder's wait would
        // hold it until the writer gave up on the lock.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .build()
            .expect("runtime");
        let finished = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let recorder = runtime.spawn({
            let finished = finished.clone();
            async move {
                for n in 1..1_000 {
                    sender.append(batch("s", [n])).expect("append");
                }
                finished.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        });
        let (ran, other) = mpsc::channel();
        runtime.spawn({
            let finished = finished.clone();
            async move {
                let _ = ran.send(finished.load(std::sync::atomic::Ordering::SeqCst));
            }
        });
        let recorder_had_finished = other
            .recv_timeout(Duration::from_secs(60))
            .expect("the other task ran");
        assert!(
            !recorder_had_finished,
            "the other task ran only once the recorder was done"
        );
        conn.execute_batch("COMMIT").expect("let go of the lock");
        commit
            .recv_timeout(Duration::from_secs(60))
            .expect("committed")
            .expect("commit");
        runtime.block_on(recorder).expect("the recorder finished");
        assert!(finished.load(std::sync::atomic::Ordering::SeqCst));
        ingest.shutdown();
    }
}

//! Host side of the `wasmgate:device/tables` interface: the synced tables
//! an app's model declares (`docs/synced-tables.md`).
//!
//! A write is one SQLite transaction that checks the edits against the
//! model, merges them into the rows (`synced::store`), checks the app's
//! limits on the result, and queues the changes as one `changeset` row of
//! the outbox, which the cloud link sends on `{device}/synced/{table}`. A
//! write that is refused, at any of these steps, leaves nothing behind; one
//! that returns is durable and on its way.
//!
//! The model is checked first and the database touched after, as every unit
//! does (permission and shape before I/O). The connection is opened at the
//! first call, so that an app that declares no tables pays nothing for the
//! unit at instantiation.

use rusqlite::{OptionalExtension, params};
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;
use wasmtime::component::{HasData, Linker};

use crate::bindings::GuestError;
use crate::bindings::wasmgate::device::tables::{
    self as generated, Edit as GuestEdit, Host, KeyRange as GuestRange, Row as GuestRow,
    SyncDirections, SyncStatus,
};
use crate::bindings::wasmgate::device::types::Fields;
use crate::capability::{AppSetup, Capability, Figure, FigureKind, HasCtx, PerApp, ReportScope};
use crate::config::SyncedLimits;
use crate::model::{DeviceModel, TableSpec};
use crate::outbox::{self, Kind};
use crate::rate::SharedLimit;
use crate::store::{ConnectionGuard, SharedConnection};
use crate::synced::merge::Side;
use crate::synced::store::{self, Edit, KeyRange, StoreError, Table};

/// The longest key, in bytes (as storage's).
pub const MAX_KEY_BYTES: usize = 512;

/// The most rows one `scan` returns.
pub const MAX_SCAN: u32 = 1_000;

/// The largest changeset, in bytes of its JSON: one MQTT message, well
/// under what brokers take by default.
pub const MAX_CHANGESET_BYTES: usize = 1 << 20;

/// The synced-tables capability: the gateway's wake-up for the cloud link,
/// and each app's counts against its limits.
pub struct Tables {
    outbox_signal: Arc<Notify>,
    /// The cloud link speaks Sparkplug B, which has no form for a
    /// changeset: writes are refused rather than kept where nothing reads
    /// them.
    sparkplug: bool,
    tallies: PerApp<Mutex<Tally>>,
}

impl Tables {
    pub fn new(outbox_signal: Arc<Notify>, sparkplug: bool) -> Tables {
        Tables {
            outbox_signal,
            sparkplug,
            tallies: PerApp::default(),
        }
    }
}

/// What an app's tables count against its limits, all tables together.
#[derive(Debug, Default)]
pub struct Tally {
    /// Counted from the database (once, at the app's first write).
    counted: bool,
    rows: u64,
    bytes: u64,
}

/// The SQL of the synced tables: the store's, and when the broker last took
/// a changeset of each table (kept by a trigger on the outbox, so the
/// cloud link needs to know nothing of tables).
const SCHEMA: &str = concat!(
    crate::synced::store::schema!(),
    r#"
CREATE TABLE IF NOT EXISTS synced_pushes (
    device  TEXT NOT NULL,
    tbl     TEXT NOT NULL,
    -- Nanoseconds since the epoch (millisecond precision).
    last_ns INTEGER NOT NULL,
    PRIMARY KEY (device, tbl)
) WITHOUT ROWID;
CREATE TRIGGER IF NOT EXISTS synced_pushed AFTER DELETE ON outbox
WHEN old.kind = 'changeset'
BEGIN
    INSERT OR REPLACE INTO synced_pushes (device, tbl, last_ns)
    VALUES (old.device, old.name,
            CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER) * 1000000);
END;

-- Every table an app has declared, with the device it speaks for: the
-- server's changesets come numbered per table (`seq`), and this is the last
-- one applied with every one before it. A pull asks for those after it.
CREATE TABLE IF NOT EXISTS synced_pulled (
    app     TEXT NOT NULL,
    tbl     TEXT NOT NULL,
    device  TEXT NOT NULL,
    seq     INTEGER NOT NULL,
    -- When a changeset from the server was last applied (ns), or null.
    last_ns INTEGER,
    PRIMARY KEY (app, tbl)
) WITHOUT ROWID;

-- The keys whose rows the server changed, until the app takes them
-- (`server-changes`): kept here, so the app learns of them even if it was
-- not running when they came.
CREATE TABLE IF NOT EXISTS synced_changed (
    app TEXT NOT NULL,
    tbl TEXT NOT NULL,
    key TEXT NOT NULL,
    PRIMARY KEY (app, tbl, key)
) WITHOUT ROWID;
"#
);

/// The number of the last changeset from the server applied to the app's
/// `table` with every one before it (0 before the first).
fn pulled_seq(conn: &rusqlite::Connection, app: &str, table: &str) -> rusqlite::Result<i64> {
    Ok(conn
        .prepare_cached("SELECT seq FROM synced_pulled WHERE app = ?1 AND tbl = ?2")?
        .query_row(params![app, table], |r| r.get(0))
        .optional()?
        .unwrap_or(0))
}

/// Queue a pull of `table` for the app: a request, sent through the
/// outbox on `{device}/synced/{table}/pull`, for the server's changesets
/// after the last one applied. Only the newest waiting pull of a table is
/// kept.
pub fn queue_pull(
    conn: &rusqlite::Connection,
    app: &str,
    device: &str,
    table: &str,
) -> rusqlite::Result<()> {
    let after = pulled_seq(conn, app, table)?;
    conn.execute(
        "DELETE FROM outbox WHERE kind = 'pull' AND device = ?1 AND name = ?2",
        params![device, table],
    )?;
    outbox::insert(
        conn,
        &[outbox::Entry {
            kind: Kind::Pull,
            device: device.to_string(),
            name: table.to_string(),
            points: 0,
            payload: serde_json::json!({ "after": after })
                .to_string()
                .into_bytes(),
        }],
    )
}

/// Queue a pull of every table the app's model declares, and remember the
/// tables for [`queue_all_pulls`]: done at each start of the app, so that
/// what the server changed while the gateway or the app was away comes
/// down.
pub fn queue_pulls(
    conn: &rusqlite::Connection,
    app: &str,
    device: &str,
    model: &DeviceModel,
) -> rusqlite::Result<()> {
    for table in model.tables.keys() {
        conn.execute(
            "INSERT INTO synced_pulled (app, tbl, device, seq) VALUES (?1, ?2, ?3, 0)
             ON CONFLICT (app, tbl) DO UPDATE SET device = excluded.device",
            params![app, table, device],
        )?;
        queue_pull(conn, app, device, table)?;
    }
    Ok(())
}

/// Queue a pull of every table any app has declared: done by the cloud
/// link at each connection, since a changeset sent down while the link was
/// away may never have reached the gateway (a broker that restarted forgets
/// what it held for it).
pub fn queue_all_pulls(conn: &rusqlite::Connection) -> rusqlite::Result<usize> {
    let tables: Vec<(String, String, String)> = conn
        .prepare_cached("SELECT app, device, tbl FROM synced_pulled")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<rusqlite::Result<_>>()?;
    for (app, device, table) in &tables {
        queue_pull(conn, app, device, table)?;
    }
    Ok(tables.len())
}

/// What applying one of the server's changesets did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pulled {
    /// Applied before (by its id): nothing changed.
    pub duplicate: bool,
    /// Keys whose rows the app sees differently now.
    pub changed_keys: Vec<String>,
    /// Changesets before this one are missing: a pull was queued for them.
    pub gap: bool,
    /// What it added to the app's rows and bytes (negative: took away), for
    /// the app's tally.
    pub rows_delta: i64,
    pub bytes_delta: i64,
}

impl Tables {
    /// [`apply_pulled`], counted into the app's tally, so that its limits
    /// see the server's changes. They are applied whatever the limits
    /// (refusing them would leave the two ends apart); the app's own next
    /// write that adds rows past a limit is refused. The tally is held
    /// across the commit, as a write holds it, so that a count made
    /// meanwhile neither misses the change nor counts it twice.
    pub fn apply_pulled(
        &self,
        conn: &mut rusqlite::Connection,
        app: &str,
        device: &str,
        changeset: &crate::synced::Changeset,
        seq: u64,
    ) -> Result<Pulled, StoreError> {
        let tally = self.tallies.get(app);
        let mut held = tally.lock().unwrap_or_else(|e| e.into_inner());
        let pulled = apply_pulled(conn, app, device, changeset, seq)?;
        if held.counted {
            held.rows = held.rows.saturating_add_signed(pulled.rows_delta);
            held.bytes = held.bytes.saturating_add_signed(pulled.bytes_delta);
        }
        Ok(pulled)
    }
}

/// Apply a changeset the server sent down for the app's `table`, with its
/// number `seq`, in one transaction: the merge (once, by id), the keys the
/// app is to be told of, the last number applied without a gap, and a pull
/// if there is one. Called through [`Tables::apply_pulled`].
fn apply_pulled(
    conn: &mut rusqlite::Connection,
    app: &str,
    device: &str,
    changeset: &crate::synced::Changeset,
    seq: u64,
) -> Result<Pulled, StoreError> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let table = Table {
        app,
        name: &changeset.table,
        rules: &changeset.rules,
    };
    let mut keys: Vec<&str> = changeset.changes.iter().map(|c| c.key.as_str()).collect();
    keys.sort_unstable();
    keys.dedup();
    let before = store::key_counts(&tx, &table, &keys)?;
    let remote = store::apply_remote(&tx, &table, &changeset.id, &changeset.changes, now_ms())?;
    let after = store::key_counts(&tx, &table, &keys)?;
    {
        let mut told = tx.prepare_cached(
            "INSERT OR IGNORE INTO synced_changed (app, tbl, key) VALUES (?1, ?2, ?3)",
        )?;
        for key in &remote.changed_keys {
            told.execute(params![app, table.name, key])?;
        }
    }
    let last = pulled_seq(&tx, app, table.name)?;
    let seq = i64::try_from(seq).unwrap_or(i64::MAX);
    let gap = seq > last + 1;
    // The last number moves on only without a gap; the time, always.
    let contiguous = if seq == last + 1 { seq } else { last };
    tx.execute(
        "INSERT INTO synced_pulled (app, tbl, device, seq, last_ns) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (app, tbl) DO UPDATE SET seq = excluded.seq, last_ns = excluded.last_ns",
        params![
            app,
            table.name,
            device,
            contiguous,
            crate::value::now_ns() as i64
        ],
    )?;
    if gap {
        queue_pull(&tx, app, device, table.name)?;
    }
    tx.commit()?;
    Ok(Pulled {
        duplicate: remote.duplicate,
        changed_keys: remote.changed_keys,
        gap,
        rows_delta: after.0 as i64 - before.0 as i64,
        bytes_delta: after.1 as i64 - before.1 as i64,
    })
}

impl Capability for Tables {
    type Ctx = TablesCtx;
    const NAME: &'static str = "tables";
    const SCHEMA: &'static str = SCHEMA;

    fn instance(&self, app: &AppSetup<'_>) -> anyhow::Result<TablesCtx> {
        Ok(TablesCtx {
            app: app.app.clone(),
            device: app.device.clone(),
            model: app.model.clone(),
            limits: app.config.synced,
            conn: app.conn.clone(),
            node: None,
            tally: self.tallies.get(app.app),
            writes: app.rates.storage_writes.clone(),
            outbox_signal: self.outbox_signal.clone(),
            sparkplug: self.sparkplug,
        })
    }

    fn report(&self, app: &ReportScope<'_>) -> Vec<Figure> {
        let tally = self.tallies.get(app.app);
        let mut held = tally.lock().unwrap_or_else(|e| e.into_inner());
        // Counted once, here or at the app's first write, and kept up to
        // date after: a report comes every few seconds, and counting reads
        // every row. An error is the app's next write's to report.
        if !held.counted
            && let Ok((rows, bytes)) = store::app_counts(app.db, app.app)
        {
            *held = Tally {
                counted: true,
                rows,
                bytes,
            };
        }
        let (rows, bytes) = (held.rows, held.bytes);
        drop(held);
        if rows == 0 && bytes == 0 {
            return Vec::new();
        }
        vec![
            Figure {
                name: "rows",
                help: "Rows the app's synced tables hold.",
                kind: FigureKind::Gauge,
                value: rows,
            },
            Figure {
                name: "bytes",
                help: "Bytes the app's synced rows count against its synced_max_kib.",
                kind: FigureKind::Gauge,
                value: bytes,
            },
        ]
    }

    fn add_to_linker<T: HasCtx<Tables>>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
        generated::add_to_linker::<T, TablesData>(linker, T::ctx)
    }
}

/// Per-app state of the tables interface.
pub struct TablesCtx {
    app: Arc<str>,
    /// The device the app speaks for: its changesets go on its topics.
    device: Arc<str>,
    model: Arc<DeviceModel>,
    limits: SyncedLimits,
    /// The instance's connection, opened at the first call that needs it.
    conn: SharedConnection,
    /// This end's node id for the clock, read at the first write.
    node: Option<u64>,
    tally: Arc<Mutex<Tally>>,
    /// Writes are transactions, limited as storage writes are (`rate`).
    writes: SharedLimit,
    outbox_signal: Arc<Notify>,
    sparkplug: bool,
}

struct TablesData;

impl HasData for TablesData {
    type Data<'a> = &'a mut TablesCtx;
}

/// Why a call failed, before it becomes the guest's error.
fn invalid(message: impl Into<String>) -> GuestError {
    GuestError::Invalid(message.into())
}

impl TablesCtx {
    fn db(&self) -> Result<ConnectionGuard<'_>, GuestError> {
        self.conn.lock().map_err(|e| self.failed("open", e.into()))
    }

    fn failed(&self, what: &str, e: StoreError) -> GuestError {
        match e {
            StoreError::NoSuchRow { .. } => invalid(e.to_string()),
            e => {
                tracing::error!(app = %self.app, "synced tables {what} failed: {e}");
                GuestError::Unavailable(format!("synced tables {what} failed: {e}"))
            }
        }
    }

    fn check_key(key: &str) -> Result<(), GuestError> {
        if key.is_empty() {
            return Err(invalid("a row's key may not be empty"));
        }
        if key.len() > MAX_KEY_BYTES {
            return Err(invalid(format!(
                "key of {} bytes is over the limit of {MAX_KEY_BYTES}",
                key.len()
            )));
        }
        Ok(())
    }

    /// A guest's edit checked against the table's declaration.
    fn edit_of(spec: &TableSpec, table: &str, edit: GuestEdit) -> Result<Edit, GuestError> {
        Ok(match edit {
            GuestEdit::Put(GuestRow { key, columns }) => {
                Self::check_key(&key)?;
                Edit::Put {
                    columns: spec.check_columns(table, columns, true).map_err(invalid)?,
                    key,
                }
            }
            GuestEdit::Update(GuestRow { key, columns }) => {
                Self::check_key(&key)?;
                Edit::Update {
                    columns: spec.check_columns(table, columns, false).map_err(invalid)?,
                    key,
                }
            }
            GuestEdit::Delete(key) => {
                Self::check_key(&key)?;
                Edit::Delete { key }
            }
        })
    }

    /// Apply a guest's edits to `table` as one transaction (see the module
    /// header).
    fn write(&mut self, table: String, edits: Vec<GuestEdit>) -> Result<(), GuestError> {
        if self.sparkplug {
            return Err(invalid(
                "synced tables need the wg/v1 cloud profile: this gateway speaks Sparkplug B, which has no form for their changes",
            ));
        }
        let model = self.model.clone();
        let spec = model.table(&table).map_err(invalid)?;
        if edits.len() > self.limits.max_changes as usize {
            return Err(GuestError::Limit(format!(
                "{} changes in one call is more than the app's synced_max_changes of {}",
                edits.len(),
                self.limits.max_changes
            )));
        }
        if edits.is_empty() {
            return Ok(());
        }
        let edits = edits
            .into_iter()
            .map(|e| Self::edit_of(spec, &table, e))
            .collect::<Result<Vec<_>, _>>()?;
        if !self.writes.allow() {
            return Err(GuestError::Limit(format!(
                "more than {} storage and table writes a second",
                self.writes.per_second()
            )));
        }
        let tally = self.tally.clone();
        let mut tally = tally.lock().unwrap_or_else(|e| e.into_inner());
        let (app, device, limits) = (self.app.clone(), self.device.clone(), self.limits);
        let node = self.node;
        let mut held = self.db()?;
        let conn: &mut rusqlite::Connection = &mut held;
        let outcome = (|| {
            if !tally.counted {
                let (rows, bytes) = store::app_counts(conn, &app)?;
                *tally = Tally {
                    counted: true,
                    rows,
                    bytes,
                };
            }
            let node = match node {
                Some(node) => node,
                None => node_id(conn, &device)?,
            };
            let at = Table {
                app: &app,
                name: &table,
                rules: spec.rules(),
            };
            // Each key once: a transaction may write one row several times.
            let mut keys: Vec<&str> = edits.iter().map(Edit::key).collect();
            keys.sort_unstable();
            keys.dedup();
            // Immediate: the write lock is taken (and waited for) at the
            // start; a deferred transaction that reads first cannot wait
            // for a writer that commits meanwhile, and fails as busy.
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let before = store::key_counts(&tx, &at, &keys)?;
            let changes = store::edit(&tx, &at, Side::Device, node, now_ms(), &edits)?;
            let after = store::key_counts(&tx, &at, &keys)?;
            let rows = (tally.rows + after.0).saturating_sub(before.0);
            let bytes = (tally.bytes + after.1).saturating_sub(before.1);
            // A write that shrinks the rows is always taken, even past a
            // limit lowered since they were written.
            if rows > limits.max_rows && after.0 > before.0 {
                return Ok(Err(GuestError::Limit(format!(
                    "the app's synced tables would hold {rows} rows, more than its synced_max_rows of {}",
                    limits.max_rows
                ))));
            }
            if bytes > limits.max_bytes && after.1 > before.1 {
                return Ok(Err(GuestError::Limit(format!(
                    "the app's synced tables would take {bytes} bytes, more than its synced_max_kib of {} KiB",
                    limits.max_bytes >> 10
                ))));
            }
            // The table's rules travel with its changes, so that the server
            // merges by the rules this version of the app declares, whether
            // or not the device's model has reached it yet.
            let payload = serde_json::to_vec(&serde_json::json!({
                "rules": spec.rules(),
                "changes": changes,
            }))
            .expect("changes are JSON");
            if payload.len() > MAX_CHANGESET_BYTES {
                return Ok(Err(GuestError::Limit(format!(
                    "the call's changeset is {} bytes, more than the limit of {MAX_CHANGESET_BYTES}: write in smaller transactions",
                    payload.len()
                ))));
            }
            outbox::insert(
                &tx,
                &[outbox::Entry {
                    kind: Kind::Changeset,
                    device: device.to_string(),
                    name: table.clone(),
                    points: changes.len() as u32,
                    payload,
                }],
            )?;
            tx.commit()?;
            tally.rows = rows;
            tally.bytes = bytes;
            Ok::<_, StoreError>(Ok(node))
        })();
        drop(held);
        match outcome {
            Ok(Ok(node)) => {
                self.node = Some(node);
                self.outbox_signal.notify_one();
                Ok(())
            }
            // Refused: the transaction was dropped, so rolled back.
            Ok(Err(refused)) => Err(refused),
            Err(e) => Err(self.failed("write", e)),
        }
    }

    /// Run `read` on a table the model declares, with its declaration.
    fn read<T>(
        &mut self,
        table: &str,
        what: &str,
        read: impl FnOnce(&rusqlite::Connection, &Table<'_>, &TableSpec) -> Result<T, StoreError>,
    ) -> Result<T, GuestError> {
        let model = self.model.clone();
        let spec = model.table(table).map_err(invalid)?;
        let app = self.app.clone();
        let conn = self.db()?;
        let at = Table {
            app: &app,
            name: table,
            rules: spec.rules(),
        };
        read(&conn, &at, spec).map_err(|e| self.failed(what, e))
    }
}

/// This end's node id: the database's identity and the device, hashed
/// (FNV-1a), so that two gateways, and two apps of one, never stamp alike.
/// 0 is the server's.
fn node_id(conn: &rusqlite::Connection, device: &str) -> Result<u64, StoreError> {
    let id: String = conn
        .query_row("SELECT id FROM store_identity LIMIT 1", [], |r| r.get(0))
        .optional()?
        .unwrap_or_default();
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in id.bytes().chain([b'/']).chain(device.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    Ok(hash.max(1))
}

fn now_ms() -> u64 {
    crate::value::now_ns() / 1_000_000
}

impl Host for TablesCtx {
    fn put(
        &mut self,
        table: String,
        key: String,
        columns: Fields,
    ) -> wasmtime::Result<Result<(), GuestError>> {
        Ok(self.write(table, vec![GuestEdit::Put(GuestRow { key, columns })]))
    }

    fn update(
        &mut self,
        table: String,
        key: String,
        columns: Fields,
    ) -> wasmtime::Result<Result<(), GuestError>> {
        Ok(self.write(table, vec![GuestEdit::Update(GuestRow { key, columns })]))
    }

    fn delete(&mut self, table: String, key: String) -> wasmtime::Result<Result<(), GuestError>> {
        Ok(self.write(table, vec![GuestEdit::Delete(key)]))
    }

    fn transact(
        &mut self,
        table: String,
        edits: Vec<GuestEdit>,
    ) -> wasmtime::Result<Result<(), GuestError>> {
        Ok(self.write(table, edits))
    }

    fn get(
        &mut self,
        table: String,
        key: String,
    ) -> wasmtime::Result<Result<Option<Fields>, GuestError>> {
        if let Err(e) = Self::check_key(&key) {
            return Ok(Err(e));
        }
        Ok(self.read(&table, "get", |conn, at, spec| {
            Ok(store::get(conn, at, &key)?.map(|columns| spec.read_columns(&columns)))
        }))
    }

    fn scan(
        &mut self,
        table: String,
        range: GuestRange,
        after: Option<String>,
        limit: u32,
    ) -> wasmtime::Result<Result<Vec<GuestRow>, GuestError>> {
        let range = match range {
            GuestRange::Prefix(prefix) => KeyRange::Prefix(prefix),
            GuestRange::Between((from, to)) => KeyRange::Between { from, to },
        };
        let range = match &after {
            Some(after) => range.after(after),
            None => range,
        };
        let limit = limit.min(MAX_SCAN) as usize;
        Ok(self.read(&table, "scan", |conn, at, spec| {
            Ok(store::scan(conn, at, &range, limit)?
                .into_iter()
                .map(|(key, columns)| GuestRow {
                    key,
                    columns: spec.read_columns(&columns),
                })
                .collect())
        }))
    }

    fn server_changes(
        &mut self,
        table: String,
        limit: u32,
    ) -> wasmtime::Result<Result<Vec<String>, GuestError>> {
        let limit = i64::from(limit.min(MAX_SCAN));
        Ok(self.read(&table, "server-changes", |conn, at, _| {
            let keys: Vec<String> = conn
                .prepare_cached(
                    "SELECT key FROM synced_changed WHERE app = ?1 AND tbl = ?2
                     ORDER BY key LIMIT ?3",
                )?
                .query_map(params![at.app, at.name, limit], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            let mut taken = conn.prepare_cached(
                "DELETE FROM synced_changed WHERE app = ?1 AND tbl = ?2 AND key = ?3",
            )?;
            for key in &keys {
                taken.execute(params![at.app, at.name, key])?;
            }
            Ok(keys)
        }))
    }

    fn sync(
        &mut self,
        table: String,
        directions: SyncDirections,
    ) -> wasmtime::Result<Result<(), GuestError>> {
        let (app, device) = (self.app.clone(), self.device.clone());
        let pulled = self.read(&table, "sync", |conn, at, _| {
            if directions & SyncDirections::PULL == SyncDirections::PULL {
                queue_pull(conn, &app, &device, at.name)?;
            }
            Ok(())
        });
        if pulled.is_ok() && directions != SyncDirections::empty() {
            self.outbox_signal.notify_one();
        }
        Ok(pulled)
    }

    fn status(&mut self, table: String) -> wasmtime::Result<Result<SyncStatus, GuestError>> {
        let device = self.device.clone();
        Ok(self.read(&table, "status", |conn, at, _| {
            let (rows, bytes) = store::counts(conn, at)?;
            let pending: i64 = conn
                .prepare_cached(
                    "SELECT coalesce(sum(points), 0) FROM outbox
                     WHERE kind = 'changeset' AND device = ?1 AND name = ?2",
                )?
                .query_row(params![&*device, at.name], |r| r.get(0))?;
            let last_push: Option<i64> = conn
                .prepare_cached("SELECT last_ns FROM synced_pushes WHERE device = ?1 AND tbl = ?2")?
                .query_row(params![&*device, at.name], |r| r.get(0))
                .optional()?;
            let (pulled_seq, last_pull): (i64, Option<i64>) = conn
                .prepare_cached(
                    "SELECT seq, last_ns FROM synced_pulled WHERE app = ?1 AND tbl = ?2",
                )?
                .query_row(params![at.app, at.name], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?
                .unwrap_or((0, None));
            Ok(SyncStatus {
                pending_changes: pending.max(0) as u64,
                last_push: last_push.map(|ns| ns.max(0) as u64),
                last_pull: last_pull.map(|ns| ns.max(0) as u64),
                pulled_seq: pulled_seq.max(0) as u64,
                rows,
                bytes,
            })
        }))
    }
}

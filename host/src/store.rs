//! The gateway's SQLite database: one file in the data directory, WAL mode,
//! so an operator can read it with the `sqlite3` shell while the gateway runs.
//!
//! It holds per-app key-value data (`kv`), the device twins (`twin`,
//! `devices`), the outbox (see `outbox`), app states (`apps`) and the state
//! apps hand over across a clean restart (`saved_state`). An app instance
//! takes a connection from the apps' [`ConnectionPool`] for each host call
//! (a [`SharedConnection`], shared by its units) and hands it back after
//! it; the pool opens another rather than make anyone wait, so no app waits
//! on a lock held by another app's Rust code. SQLite serialises the writes.

use rusqlite::config::DbConfig;
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::value::now_ns;

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = 9;

/// The tables the store itself keeps (devices, the twin, the outbox, the
/// apps' states); the capability units and the deployer own theirs.
const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS devices (
    device           TEXT PRIMARY KEY,
    app              TEXT NOT NULL,
    reported_version INTEGER NOT NULL DEFAULT 0,
    desired_version  INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE IF NOT EXISTS twin (
    device          TEXT NOT NULL,
    name            TEXT NOT NULL,
    reported        TEXT,
    reported_at     INTEGER,
    desired         TEXT,
    desired_version INTEGER,
    PRIMARY KEY (device, name)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS outbox_counters (
    kind     TEXT NOT NULL,
    device   TEXT NOT NULL,
    name     TEXT NOT NULL,
    dropped  INTEGER NOT NULL DEFAULT 0,
    rejected INTEGER NOT NULL DEFAULT 0,
    expired  INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (kind, device, name)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS apps (
    name       TEXT PRIMARY KEY,
    state      TEXT NOT NULL,
    detail     TEXT,
    restarts   INTEGER NOT NULL DEFAULT 0,
    updated_at INTEGER NOT NULL,
    component  TEXT
);

-- This database's own id (one row), made when the database is: it goes into
-- batch and alert ids, so that a gateway whose data directory was wiped,
-- and whose outbox counts from 1 again, never repeats an id a consumer has
-- already seen (and would drop as a duplicate). Empty for a database made
-- before version 8, whose ids keep their old form.
CREATE TABLE IF NOT EXISTS store_identity (
    id TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS saved_state (
    app      TEXT PRIMARY KEY,
    state    BLOB NOT NULL,
    saved_at INTEGER NOT NULL
);
"#;

/// The outbox table (see `outbox`), apart from the rest so that a migration
/// can create it anew, and its indexes.
const OUTBOX_TABLE: &str = r#"
CREATE TABLE IF NOT EXISTS outbox (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    kind       TEXT NOT NULL CHECK (kind IN ('telemetry', 'alert', 'twin', 'ack', 'registration', 'model', 'changeset', 'pull')),
    device     TEXT NOT NULL,
    name       TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    points     INTEGER NOT NULL,
    payload    BLOB NOT NULL,
    -- 0 while the writer may still add points to this batch (see outbox::ingest).
    sealed     INTEGER NOT NULL DEFAULT 1
);
"#;
/// `outbox_by_stream` also holds each row's points and payload length, so
/// the start's sums per stream (`outbox::Usage::load`) read only this index,
/// not the rows: 17 ms instead of 185 ms for 123,000 rows (58 MB), for about
/// two bytes a row. A start with a backlog is when a gateway comes back
/// from a long outage.
const OUTBOX_INDEXES: &str = r#"
CREATE INDEX IF NOT EXISTS outbox_by_stream ON outbox (kind, device, name, seq, points, length(payload));
CREATE INDEX IF NOT EXISTS outbox_by_kind ON outbox (kind, seq);
"#;
/// The rows the telemetry writer may still add to: a handful, so the link
/// finds the oldest at once (`outbox::oldest_open`). Created after the
/// migration below, which gives an old outbox its `sealed` column.
const OUTBOX_OPEN_INDEX: &str =
    "CREATE INDEX IF NOT EXISTS outbox_open ON outbox (seq) WHERE sealed = 0;";

/// The gateway's database: where it is and how large it may grow. Every
/// connection is opened through this, so the size cap holds on all of them.
#[derive(Debug, Clone)]
pub struct Database {
    path: PathBuf,
    max_bytes: Option<u64>,
}

impl Database {
    pub fn new(path: PathBuf, max_bytes: Option<u64>) -> Database {
        Database { path, max_bytes }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A read-write connection. With a cap, writes past it fail with
    /// SQLITE_FULL, as on a full disk.
    pub fn open(&self) -> rusqlite::Result<Connection> {
        let conn = open(&self.path)?;
        if let Some(max) = self.max_bytes {
            let page: i64 = conn.pragma_query_value(None, "page_size", |r| r.get(0))?;
            conn.pragma_update(None, "max_page_count", (max as i64 / page.max(512)).max(1))?;
        }
        Ok(conn)
    }
}

/// A few open connections to the gateway's database, handed in turn to
/// whoever needs one for a moment: the apps' instances share one pool, each
/// holding a connection for one host call. Opening a connection (the file,
/// the WAL and the pragmas) costs more than making a whole instance
/// otherwise does, and its first statements parse the schema and compile
/// each query; a pooled connection has done both already. At a start, ten
/// apps took one connection each, and opening them (with the schema parsed
/// and the queries compiled on each) was the largest part of the start's
/// CPU (BENCHMARKS.md, P4).
///
/// A connection comes back to the pool when its holder drops it, unless it
/// is inside a transaction (a holder that panicked mid-way): that one is
/// closed, which rolls the transaction back.
#[derive(Debug)]
pub struct ConnectionPool {
    db: Database,
    idle: std::sync::Mutex<Vec<Connection>>,
    /// Connections it has opened, ever.
    opened: std::sync::atomic::AtomicU64,
    /// How many it keeps open while nobody holds them ([`keep_idle`]).
    keep_idle: usize,
}

/// Connections a pool keeps open while nobody holds them: one for each host
/// call that may run at once. Guests run on the runtime's worker threads,
/// one a core, and a few more hold one across an await now and then (an
/// actor reading its saved state, a hot swap's second instance). Past it, a
/// connection is opened again rather than waited for.
fn keep_idle() -> usize {
    std::thread::available_parallelism().map_or(4, |cores| (2 * cores.get()).max(4))
}

impl ConnectionPool {
    pub fn new(db: Database) -> Arc<ConnectionPool> {
        Arc::new(ConnectionPool {
            db,
            idle: std::sync::Mutex::new(Vec::new()),
            opened: Default::default(),
            keep_idle: keep_idle(),
        })
    }

    /// A connection: an idle one, or a new one.
    pub fn open(self: &Arc<Self>) -> rusqlite::Result<Pooled> {
        let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let conn = match idle {
            Some(conn) => conn,
            None => {
                let conn = self.db.open()?;
                self.opened
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                conn
            }
        };
        Ok(Pooled {
            conn: Some(conn),
            pool: self.clone(),
        })
    }

    /// The database it opens connections to.
    pub fn database(&self) -> &Database {
        &self.db
    }

    /// Connections open and idle now.
    pub fn idle(&self) -> usize {
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Connections opened since the pool was made: what its holders could
    /// not find idle.
    pub fn opened(&self) -> u64 {
        self.opened.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// A connection from a [`ConnectionPool`], back to it when dropped.
#[derive(Debug)]
pub struct Pooled {
    conn: Option<Connection>,
    pool: Arc<ConnectionPool>,
}

impl std::ops::Deref for Pooled {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        self.conn
            .as_ref()
            .expect("a pooled connection until dropped")
    }
}

impl std::ops::DerefMut for Pooled {
    fn deref_mut(&mut self) -> &mut Connection {
        self.conn
            .as_mut()
            .expect("a pooled connection until dropped")
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else {
            return;
        };
        if !conn.is_autocommit() {
            return;
        }
        let mut idle = self.pool.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < self.pool.keep_idle {
            idle.push(conn);
        }
    }
}

/// One instance's connection to the gateway's database, shared by the
/// units that use one (storage, device, tables). It is taken from the
/// apps' pool for each host call and handed back after it, so the apps
/// keep a few open connections between them, not one per holder: each
/// costs about 100 KiB of heap (SQLite's lookaside, page cache and parsed
/// schema). With two per app, SQLite held three quarters of the heap of an
/// idle gateway running ten apps (BENCHMARKS.md, P6). Taking an idle one is
/// a pop from a list; an instance that never touches the database opens
/// none.
///
/// An instance makes one call at a time, so units never wait on each other
/// for it; each holds it for one host call, and ends its transactions
/// within that call (a connection handed back inside one is closed, which
/// rolls it back).
#[derive(Debug, Clone)]
pub struct SharedConnection(Source);

#[derive(Debug, Clone)]
enum Source {
    /// Taken from the pool for each use, handed back after it.
    Pool(Arc<ConnectionPool>),
    /// Opened by the caller, kept for the holders' lifetime.
    Opened(Arc<std::sync::Mutex<Connection>>),
}

/// The connection of a [`SharedConnection`], held for one host call.
pub struct ConnectionGuard<'a>(Held<'a>);

enum Held<'a> {
    Pooled(Pooled),
    Opened(std::sync::MutexGuard<'a, Connection>),
}

impl SharedConnection {
    /// A connection taken from `pool` for each use.
    pub fn pooled(pool: Arc<ConnectionPool>) -> SharedConnection {
        SharedConnection(Source::Pool(pool))
    }

    /// An open connection of no pool (a unit test's in-memory database,
    /// say).
    pub fn opened(conn: Connection) -> SharedConnection {
        SharedConnection(Source::Opened(Arc::new(std::sync::Mutex::new(conn))))
    }

    /// The connection: the pool's idle one, or a new one. Dropping the
    /// guard hands it back (or closes it, if inside a transaction).
    pub fn lock(&self) -> rusqlite::Result<ConnectionGuard<'_>> {
        Ok(ConnectionGuard(match &self.0 {
            Source::Pool(pool) => Held::Pooled(pool.open()?),
            Source::Opened(conn) => Held::Opened(conn.lock().unwrap_or_else(|e| e.into_inner())),
        }))
    }
}

impl std::ops::Deref for ConnectionGuard<'_> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        match &self.0 {
            Held::Pooled(conn) => conn,
            Held::Opened(conn) => conn,
        }
    }
}

impl std::ops::DerefMut for ConnectionGuard<'_> {
    fn deref_mut(&mut self) -> &mut Connection {
        match &mut self.0 {
            Held::Pooled(conn) => conn,
            Held::Opened(conn) => conn,
        }
    }
}

/// Open (creating if needed) the database for reading and writing.
pub fn open(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    // WAL lets `wasmgate status` and the sqlite3 shell read while the gateway
    // writes; synchronous=NORMAL in WAL mode keeps every commit across a
    // process crash and loses at most the last commits on power loss.
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.busy_handler(Some(wait_for_the_lock))?;
    // The query planner's stability guarantee: a cached statement keeps its
    // plan whatever values are bound. Without it, SQLite (built with STAT4)
    // compiles a statement again whenever the value bound to its `LIMIT ?`
    // changes: the link's read of the outbox, with a limit that follows the
    // window, was compiled again on almost every read (5 % of the gateway's
    // CPU at 10,000 devices, BENCHMARKS.md, S2). The plans do not depend on
    // the values: the gateway runs no ANALYZE.
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)?;
    Ok(conn)
}

/// Run `write` on `conn` so that, should another writer hold the database,
/// it fails at once (SQLITE_BUSY) instead of waiting up to [`LOCK_WAIT`];
/// `conn` waits again afterwards.
pub fn without_waiting<R>(conn: &Connection, write: impl FnOnce() -> R) -> R {
    // Setting a busy handler cannot fail on an open connection.
    let _ = conn.busy_handler(None);
    let result = write();
    let _ = conn.busy_handler(Some(wait_for_the_lock));
    result
}

/// How long a writer waits for SQLite's write lock before its statement
/// fails with "database is locked".
pub const LOCK_WAIT: Duration = Duration::from_secs(10);
/// How long a waiting writer sleeps between tries. SQLite's own
/// `busy_timeout` backs off to sleeps of 100 ms, so under contention the
/// lock sat free while every writer slept: at 10,000 registered devices the
/// gateway used half a core and sent nothing (BENCHMARKS.md, S2). Short,
/// even sleeps hand the lock on within a fraction of a millisecond.
pub const LOCK_RETRY: Duration = Duration::from_micros(500);

/// SQLite's busy handler for the gateway's connections: called with the
/// number of times it was called for this wait; `false` gives up.
fn wait_for_the_lock(tries: i32) -> bool {
    if !keeps_waiting(tries) {
        return false;
    }
    std::thread::sleep(LOCK_RETRY);
    true
}

/// Whether a writer that has tried `tries` times waits once more: until its
/// sleeps add up to [`LOCK_WAIT`] (the tries themselves make the real wait
/// a little longer, never shorter).
fn keeps_waiting(tries: i32) -> bool {
    LOCK_RETRY.saturating_mul(u32::try_from(tries).unwrap_or(u32::MAX)) < LOCK_WAIT
}

/// Open an existing database read-only (for `wasmgate status`).
pub fn open_read_only(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    Ok(conn)
}

/// Create the tables this build needs: the store's own and each of
/// `schemas` (the SQL of the parts that own their tables); refuse a
/// database from a newer build.
pub fn migrate(conn: &Connection, schemas: &[&str]) -> anyhow::Result<()> {
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version > SCHEMA_VERSION {
        anyhow::bail!(
            "the database has schema version {version}, newer than this wasmgate's {SCHEMA_VERSION}; \
             use a newer wasmgate or another data directory"
        );
    }
    conn.execute_batch(SCHEMA)?;
    conn.execute_batch(OUTBOX_TABLE)?;
    conn.execute_batch(OUTBOX_INDEXES)?;
    // Version 5 added `outbox.sealed` (every row written before was
    // complete) and the `ack` kind, version 6 the `registration` kind,
    // version 7 the `model` kind, version 9 the `changeset` and `pull`
    // kinds (synced tables).
    // SQLite cannot change a CHECK, so an older outbox is copied into the
    // new shape.
    let sql: String = conn.query_row(
        "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'outbox'",
        [],
        |r| r.get(0),
    )?;
    if !sql.contains("'pull'") {
        let sealed = if sql.contains("sealed") {
            "sealed"
        } else {
            "1"
        };
        let tx = conn.unchecked_transaction()?;
        tx.execute_batch(&format!(
            "ALTER TABLE outbox RENAME TO outbox_old;
             DROP INDEX IF EXISTS outbox_by_stream;
             DROP INDEX IF EXISTS outbox_by_kind;
             {OUTBOX_TABLE}
             INSERT INTO outbox (seq, kind, device, name, created_at, points, payload, sealed)
                 SELECT seq, kind, device, name, created_at, points, payload, {sealed} FROM outbox_old;
             DROP TABLE outbox_old;
             {OUTBOX_INDEXES}"
        ))?;
        tx.commit()?;
    }
    conn.execute_batch(OUTBOX_OPEN_INDEX)?;
    // An older database's `outbox_by_stream` stops at `seq`: it is built
    // again, once, with the sizes (an older build uses the wider index as
    // it used the narrow one, so this needs no new schema version).
    let by_stream: String = conn.query_row(
        "SELECT sql FROM sqlite_master WHERE type = 'index' AND name = 'outbox_by_stream'",
        [],
        |r| r.get(0),
    )?;
    if !by_stream.contains("length(payload)") {
        let tx = conn.unchecked_transaction()?;
        tx.execute_batch(&format!("DROP INDEX outbox_by_stream; {OUTBOX_INDEXES}"))?;
        tx.commit()?;
    }
    // baea322 (main's head for under an hour) made a partial index that no
    // query reads since 4b3004c; left in place it would cost each report's
    // commit a page.
    conn.execute_batch("DROP INDEX IF EXISTS outbox_first;")?;
    // A database new here (version 0) gets a random id; one from an older
    // build keeps the ids it may already have sent.
    let id = if version == 0 {
        format!("{:012x}", crate::value::random_u64() & 0xffff_ffff_ffff)
    } else {
        String::new()
    };
    conn.execute(
        "INSERT INTO store_identity (id) SELECT ?1 WHERE NOT EXISTS (SELECT 1 FROM store_identity)",
        params![id],
    )?;
    for schema in schemas {
        conn.execute_batch(schema)?;
    }
    conn.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    Ok(())
}

/// The prefix of this database's batch and alert ids: `{gateway}-{id}`, or
/// `{gateway}` for a database made before ids had one.
pub fn id_prefix(conn: &Connection, gateway: &str) -> rusqlite::Result<String> {
    let id: String = conn.query_row("SELECT id FROM store_identity LIMIT 1", [], |r| r.get(0))?;
    Ok(if id.is_empty() {
        gateway.to_string()
    } else {
        format!("{gateway}-{id}")
    })
}

/// Record which app owns a device (so cloud traffic for it can be routed).
pub fn claim_device(conn: &Connection, device: &str, app: &str) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO devices (device, app) VALUES (?1, ?2)
         ON CONFLICT (device) DO UPDATE SET app = excluded.app",
        params![device, app],
    )?;
    Ok(())
}

/// The last desired version applied to a device (0 if none).
pub fn desired_version(conn: &Connection, device: &str) -> rusqlite::Result<u64> {
    conn.prepare_cached("SELECT desired_version FROM devices WHERE device = ?1")?
        .query_row(params![device], |r| r.get::<_, i64>(0))
        .optional()
        .map(|v| v.unwrap_or(0).max(0) as u64)
}

/// Record an applied desired change: the accepted values (JSON) and the
/// version, in the caller's transaction (which queues the change's ack
/// too, so both are kept or neither).
pub fn apply_desired(
    tx: &rusqlite::Transaction<'_>,
    device: &str,
    version: u64,
    accepted: &[(String, String)],
) -> rusqlite::Result<()> {
    // Cached: parsing the statements again was much of a change's cost.
    let mut upsert = tx.prepare_cached(
        "INSERT INTO twin (device, name, desired, desired_version) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (device, name) DO UPDATE
         SET desired = excluded.desired, desired_version = excluded.desired_version",
    )?;
    for (name, json) in accepted {
        upsert.execute(params![device, name, json, version as i64])?;
    }
    tx.prepare_cached("UPDATE devices SET desired_version = ?2 WHERE device = ?1")?
        .execute(params![device, version as i64])?;
    Ok(())
}

/// A device's reported attributes (name, JSON text) and report version.
pub fn reported_state(
    conn: &Connection,
    device: &str,
) -> rusqlite::Result<(u64, Vec<(String, String)>)> {
    // Cached: the link reads it for every twin it sends.
    let version = conn
        .prepare_cached("SELECT reported_version FROM devices WHERE device = ?1")?
        .query_row(params![device], |r| r.get::<_, i64>(0))
        .optional()?
        .unwrap_or(0);
    let mut stmt = conn.prepare_cached(
        "SELECT name, reported FROM twin WHERE device = ?1 AND reported IS NOT NULL ORDER BY name",
    )?;
    let attributes = stmt
        .query_map(params![device], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok((version.max(0) as u64, attributes))
}

/// A device's reported attributes: name, JSON and when each was reported
/// (ns; 0 if unknown).
pub fn reported_attributes(
    conn: &Connection,
    device: &str,
) -> rusqlite::Result<Vec<(String, String, u64)>> {
    let mut stmt = conn.prepare_cached(
        "SELECT name, reported, COALESCE(reported_at, 0) FROM twin
         WHERE device = ?1 AND reported IS NOT NULL ORDER BY name",
    )?;
    stmt.query_map(params![device], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)?.max(0) as u64))
    })?
    .collect()
}

/// An app's state as the gateway last wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppRow {
    pub name: String,
    pub state: String,
    pub detail: Option<String>,
    pub restarts: i64,
    pub updated_at: i64,
    pub component: Option<String>,
}

/// Write an app's state (`running`, `restarting`, `quarantined`, `stopped`).
pub fn set_app_state(
    conn: &Connection,
    name: &str,
    state: &str,
    detail: Option<&str>,
    restarts: u64,
    component: &str,
) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO apps (name, state, detail, restarts, updated_at, component)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (name) DO UPDATE SET state = excluded.state, detail = excluded.detail,
             restarts = excluded.restarts, updated_at = excluded.updated_at,
             component = excluded.component",
        params![
            name,
            state,
            detail,
            restarts as i64,
            now_ns() as i64,
            component
        ],
    )?;
    Ok(())
}

/// Every app's last written state, by name.
pub fn app_rows(conn: &Connection) -> rusqlite::Result<Vec<AppRow>> {
    let mut stmt = conn.prepare(
        "SELECT name, state, detail, restarts, updated_at, component FROM apps ORDER BY name",
    )?;
    stmt.query_map([], |r| {
        Ok(AppRow {
            name: r.get(0)?,
            state: r.get(1)?,
            detail: r.get(2)?,
            restarts: r.get(3)?,
            updated_at: r.get(4)?,
            component: r.get(5)?,
        })
    })?
    .collect()
}

/// Keep what an app's `save` returned, for its next `init`.
pub fn put_saved_state(conn: &Connection, app: &str, state: &[u8]) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO saved_state (app, state, saved_at) VALUES (?1, ?2, ?3)
         ON CONFLICT (app) DO UPDATE SET state = excluded.state, saved_at = excluded.saved_at",
        params![app, state, now_ns() as i64],
    )?;
    Ok(())
}

/// The state an app saved at the last clean stop, if any.
pub fn saved_state(conn: &Connection, app: &str) -> rusqlite::Result<Option<Vec<u8>>> {
    conn.query_row(
        "SELECT state FROM saved_state WHERE app = ?1",
        params![app],
        |r| r.get(0),
    )
    .optional()
}

/// Forget an app's saved state once a new instance has taken it.
pub fn clear_saved_state(conn: &Connection, app: &str) -> rusqlite::Result<()> {
    conn.execute("DELETE FROM saved_state WHERE app = ?1", params![app])?;
    Ok(())
}

/// A new database with the store's schema in a temporary directory, for
/// unit tests (the directory goes when dropped).
#[cfg(test)]
pub(crate) fn temporary_database() -> (tempfile::TempDir, Database) {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Database::new(dir.path().join("t.db"), None);
    migrate(&db.open().expect("open"), &[]).expect("migrate");
    (dir, db)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_writer_waits_for_the_lock_up_to_its_bound_then_gives_up() {
        let limit = (LOCK_WAIT.as_micros() / LOCK_RETRY.as_micros()) as i32;
        assert!(keeps_waiting(0) && keeps_waiting(limit - 1));
        assert!(!keeps_waiting(limit) && !keeps_waiting(i32::MAX));
    }

    #[test]
    fn a_writer_gets_the_lock_once_the_holder_commits() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("t.db");
        let holder = open(&path).expect("open");
        holder
            .execute_batch("CREATE TABLE t (n INTEGER); BEGIN IMMEDIATE; INSERT INTO t VALUES (1);")
            .expect("hold the write lock");
        let writer = std::thread::spawn({
            let path = path.clone();
            move || {
                let conn = open(&path).expect("open");
                // Waits in the busy handler while the holder has the lock.
                conn.execute("INSERT INTO t VALUES (2)", [])
            }
        });
        std::thread::sleep(Duration::from_millis(50));
        holder.execute_batch("COMMIT").expect("commit");
        assert_eq!(writer.join().expect("writer").expect("insert"), 1);
        let rows: i64 = holder
            .query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0))
            .expect("count");
        assert_eq!(rows, 2);
    }

    #[test]
    fn schema_is_created_once_and_newer_schemas_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("t.db");
        let conn = open(&path).expect("open");
        migrate(&conn, &[]).expect("first migrate");
        migrate(&conn, &[]).expect("second migrate is a no-op");
        set_app_state(&conn, "a", "running", None, 0, "sha").expect("write");
        set_app_state(&conn, "a", "quarantined", Some("trap"), 3, "sha").expect("update");
        let rows = app_rows(&conn).expect("rows");
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].state, "quarantined");
        assert_eq!(rows[0].restarts, 3);

        conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .expect("bump");
        let err = migrate(&conn, &[]).unwrap_err().to_string();
        assert!(err.contains("newer than this wasmgate"), "{err}");
    }

    #[test]
    fn an_index_no_query_reads_any_more_is_dropped_at_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let conn = open(&dir.path().join("t.db")).expect("open");
        migrate(&conn, &[]).expect("migrate");
        // As baea322 made it.
        conn.execute_batch(
            "CREATE INDEX outbox_first ON outbox (seq)
                 WHERE kind IN ('alert', 'registration', 'model', 'twin', 'ack');",
        )
        .expect("the old index");
        let indexes = |conn: &Connection| -> Vec<String> {
            let mut read = conn
                .prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'outbox' AND sql IS NOT NULL ORDER BY name")
                .expect("prepare");
            read.query_map([], |r| r.get(0))
                .expect("query")
                .collect::<rusqlite::Result<_>>()
                .expect("names")
        };
        assert!(indexes(&conn).contains(&"outbox_first".to_string()));
        migrate(&conn, &[]).expect("migrate again");
        assert_eq!(
            indexes(&conn),
            ["outbox_by_kind", "outbox_by_stream", "outbox_open"]
        );
    }

    #[test]
    fn an_older_outbox_index_is_built_again_once_with_the_rows_sizes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let conn = open(&dir.path().join("old.db")).expect("open");
        migrate(&conn, &[]).expect("migrate");
        conn.execute_batch(
            "DROP INDEX outbox_by_stream;
             CREATE INDEX outbox_by_stream ON outbox (kind, device, name, seq);
             INSERT INTO outbox (kind, device, name, created_at, points, payload)
                 VALUES ('telemetry', 'd', 's', 1, 2, X'5B5D');",
        )
        .expect("an older database");
        let definition = |conn: &Connection| -> String {
            conn.query_row(
                "SELECT sql FROM sqlite_master WHERE name = 'outbox_by_stream'",
                [],
                |r| r.get(0),
            )
            .expect("the index")
        };
        migrate(&conn, &[]).expect("migrate");
        let wide = definition(&conn);
        assert!(
            wide.ends_with("(kind, device, name, seq, points, length(payload))"),
            "{wide}"
        );
        // Built once: a start after it changes no part of the schema.
        let schema_version = |conn: &Connection| -> i64 {
            conn.pragma_query_value(None, "schema_version", |r| r.get(0))
                .expect("schema version")
        };
        let before = schema_version(&conn);
        migrate(&conn, &[]).expect("migrate again");
        assert_eq!(schema_version(&conn), before);
        assert_eq!(definition(&conn), wide);
    }

    #[test]
    fn a_new_database_gets_its_own_id_prefix_and_an_older_one_keeps_the_old_form() {
        let dir = tempfile::tempdir().expect("tempdir");
        let prefix_of = |name: &str, before: Option<i64>| {
            let conn = open(&dir.path().join(name)).expect("open");
            if let Some(version) = before {
                // A database an older build made and used.
                conn.execute_batch(SCHEMA).expect("older tables");
                conn.execute_batch(OUTBOX_TABLE).expect("older outbox");
                conn.pragma_update(None, "user_version", version)
                    .expect("version");
            }
            migrate(&conn, &[]).expect("migrate");
            let first = id_prefix(&conn, "gw").expect("prefix");
            migrate(&conn, &[]).expect("migrate again");
            assert_eq!(id_prefix(&conn, "gw").expect("prefix"), first, "stable");
            first
        };
        let a = prefix_of("a.db", None);
        let b = prefix_of("b.db", None);
        assert!(a.starts_with("gw-") && a.len() == "gw-".len() + 12, "{a}");
        assert_ne!(a, b, "a wiped and remade database gets another id");
        assert_eq!(prefix_of("old.db", Some(7)), "gw");
    }

    #[test]
    fn saved_state_round_trips_and_clears() {
        let dir = tempfile::tempdir().expect("tempdir");
        let conn = open(&dir.path().join("t.db")).expect("open");
        migrate(&conn, &[]).expect("migrate");
        assert_eq!(saved_state(&conn, "a").expect("read"), None);
        put_saved_state(&conn, "a", b"hello").expect("put");
        assert_eq!(
            saved_state(&conn, "a").expect("read"),
            Some(b"hello".to_vec())
        );
        clear_saved_state(&conn, "a").expect("clear");
        assert_eq!(saved_state(&conn, "a").expect("read"), None);
    }

    #[test]
    fn a_pool_hands_back_its_connections_but_not_one_left_in_a_transaction() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pool = ConnectionPool::new(Database::new(dir.path().join("p.db"), None));
        {
            let first = pool.open().expect("open");
            let _second = pool.open().expect("open");
            first
                .execute_batch("CREATE TABLE t (x INTEGER)")
                .expect("create");
        }
        assert_eq!(pool.idle(), 2, "both came back");
        let conn = pool.open().expect("open");
        assert_eq!(pool.idle(), 1, "one was reused");
        conn.execute("INSERT INTO t VALUES (1)", [])
            .expect("insert");
        drop(conn);
        let mut conn = pool.open().expect("open");
        let tx = conn.transaction().expect("begin");
        tx.execute("INSERT INTO t VALUES (2)", []).expect("insert");
        std::mem::forget(tx);
        drop(conn);
        assert_eq!(pool.idle(), 1, "the one inside a transaction was closed");
        let count: i64 = pool
            .open()
            .expect("open")
            .query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0))
            .expect("count");
        assert_eq!(count, 1, "and its transaction rolled back");
        let many: Vec<Pooled> = (0..pool.keep_idle + 3)
            .map(|_| pool.open().expect("open"))
            .collect();
        drop(many);
        assert_eq!(pool.idle(), pool.keep_idle, "at most keep_idle stay open");
    }

    #[test]
    fn a_shared_connection_is_taken_for_each_use_and_handed_back_after_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Database::new(dir.path().join("s.db"), None);
        let pool = ConnectionPool::new(db.clone());
        let shared = SharedConnection::pooled(pool.clone());
        let unit = shared.clone();
        assert!(!db.path().exists(), "nothing opened before it is used");
        {
            let conn = shared.lock().expect("open");
            conn.execute_batch("CREATE TABLE t (x INTEGER)")
                .expect("create");
            assert_eq!(pool.idle(), 0, "held while in use");
        }
        assert_eq!(pool.idle(), 1, "handed back after the use");
        // Another holder of the app (its actor, another unit) takes the
        // same connection rather than opening one.
        let other = pool.open().expect("open");
        assert_eq!(pool.idle(), 0, "the idle one was taken");
        drop(other);
        unit.lock()
            .expect("open")
            .execute("INSERT INTO t VALUES (1)", [])
            .expect("insert");
        assert_eq!(pool.idle(), 1, "still one connection for them all");
        // A use that leaves a transaction open loses it: the connection is
        // closed, which rolls the transaction back.
        shared
            .lock()
            .expect("open")
            .execute_batch("BEGIN; INSERT INTO t VALUES (2)")
            .expect("begin");
        assert_eq!(pool.idle(), 0, "the one left in a transaction was closed");
        let count: i64 = unit
            .lock()
            .expect("open")
            .query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0))
            .expect("count");
        assert_eq!(count, 1, "and its transaction rolled back");
    }
}

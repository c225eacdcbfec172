//! Host side of the `wasmgate:device/storage` interface: durable key-value
//! data private to each app, in the `kv` table of the gateway's database.
//!
//! Every key is stored with the app's name, and every query is bound to it,
//! so no app can name another's keys. Sizes are checked before any I/O.
//!
//! The standard `wasi:keyvalue` reaches the same storage through
//! [`keyvalue`], with the same checks.

use rusqlite::{Connection, OptionalExtension, params};
use std::sync::{Arc, Mutex, MutexGuard};
use wasmtime::component::{HasData, Linker};

use crate::bindings::GuestError;
use crate::bindings::wasmgate::device::storage::{self as generated, Host};
use crate::capability::{AppSetup, Capability, Figure, FigureKind, HasCtx, PerApp, ReportScope};
use crate::rate::SharedLimit;
use crate::store::{ConnectionGuard, SharedConnection};

pub mod keyvalue;

/// The storage capability: no gateway state of its own; the `kv` table.
#[derive(Default)]
pub struct Storage {
    /// Each app's tally, shared by all its instances (an app serving HTTP
    /// has one per request in flight): its quota holds across them, and it
    /// is counted once, not at every instantiation.
    tallies: PerApp<Mutex<Tally>>,
}

/// What an app's keys count against its quota.
#[derive(Debug, Default)]
pub struct Tally {
    /// Counted from the database (once, at the app's first write or its
    /// first report).
    counted: bool,
    /// Bytes of keys and values, with each key's overhead.
    used: u64,
    keys: u64,
}

impl Tally {
    /// Count what `app` holds from the database, unless already counted.
    fn count(&mut self, db: &Connection, app: &str) -> rusqlite::Result<()> {
        if !self.counted {
            let (keys, used) = usage(db, app)?;
            *self = Tally {
                counted: true,
                used,
                keys,
            };
        }
        Ok(())
    }
}

impl Capability for Storage {
    type Ctx = StorageCtx;
    const NAME: &'static str = "storage";
    const SCHEMA: &'static str = r#"
CREATE TABLE IF NOT EXISTS kv (
    app   TEXT NOT NULL,
    key   TEXT NOT NULL,
    value BLOB NOT NULL,
    PRIMARY KEY (app, key)
) WITHOUT ROWID;
"#;

    fn report(&self, app: &ReportScope<'_>) -> Vec<Figure> {
        // The app's tally, counted from the database the first time (an
        // app that has not run, or not written yet) and kept: only the
        // app's writes change it, and they keep the tally up to date.
        let tally = self.tallies.get(app.app);
        let mut held = tally.lock().unwrap_or_else(|e| e.into_inner());
        let (keys, bytes) = match held.count(app.db, app.app) {
            Ok(()) => (held.keys, held.used),
            Err(e) => {
                tracing::warn!(app = app.app, "cannot count the app's storage: {e}");
                (0, 0)
            }
        };
        drop(held);
        vec![
            Figure {
                name: "keys",
                help: "Keys the app holds in its storage.",
                kind: FigureKind::Gauge,
                value: keys,
            },
            Figure {
                name: "bytes",
                help: "Bytes the app's storage counts against its quota: keys and values, and 64 bytes a key.",
                kind: FigureKind::Gauge,
                value: bytes,
            },
        ]
    }

    fn instance(&self, app: &AppSetup<'_>) -> anyhow::Result<StorageCtx> {
        Ok(StorageCtx::new(
            app.app.clone(),
            app.conn.clone(),
            app.config.storage_quota_bytes,
            app.rates.storage_writes.clone(),
            self.tallies.get(app.app),
        ))
    }

    fn add_to_linker<T: HasCtx<Storage>>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
        generated::add_to_linker::<T, StorageData>(linker, T::ctx)?;
        keyvalue::add_to_linker(linker)
    }
}

/// How many keys `app` holds, and what they count against its quota (and
/// its disk quota).
pub fn usage(db: &Connection, app: &str) -> rusqlite::Result<(u64, u64)> {
    db.query_row(
        "SELECT COUNT(*), COALESCE(SUM(length(CAST(key AS BLOB)) + length(value) + ?2), 0) FROM kv WHERE app = ?1",
        params![app, KEY_OVERHEAD_BYTES as i64],
        |r| Ok((r.get::<_, i64>(0)?.max(0) as u64, r.get::<_, i64>(1)?.max(0) as u64)),
    )
}

/// What a key counts against the quota beyond its own bytes and its
/// value's: the app's name stored beside it and SQLite's per-row cost.
/// Without it, millions of tiny keys would take several times their quota
/// on disk (2.6 million one-byte keys took some 22 bytes each).
pub const KEY_OVERHEAD_BYTES: u64 = 64;

/// The most keys an app may hold: this also bounds what one `keys("")`
/// returns.
pub const MAX_KEYS: u64 = 100_000;

/// What `key` with a value of `value_len` bytes counts against the quota.
fn cost(key: &str, value_len: usize) -> u64 {
    (key.len() + value_len) as u64 + KEY_OVERHEAD_BYTES
}

/// The longest key, in bytes.
pub const MAX_KEY_BYTES: usize = 512;
/// The largest value, in bytes.
pub const MAX_VALUE_BYTES: usize = 1 << 20;

/// Per-app state of the storage interface.
pub struct StorageCtx {
    app: Arc<str>,
    /// The instance's connection, opened at the first call that needs it.
    db: SharedConnection,
    quota: u64,
    /// What the app's keys and values count against its quota now, shared
    /// with its other instances. Held across a write's check and the write,
    /// so that two instances cannot both take the last of the quota.
    tally: Arc<Mutex<Tally>>,
    /// Writes are transactions: an app may not make them without end (see `rate`).
    writes: SharedLimit,
    /// The `wasi:keyvalue` bucket and CAS handles it holds.
    handles: keyvalue::Handles,
}

impl StorageCtx {
    /// The app's storage, on the instance's connection. What it holds is
    /// counted at its first write, not here: an instance that only reads
    /// (or never touches storage) opens no connection for it.
    pub fn new(
        app: Arc<str>,
        db: SharedConnection,
        quota: u64,
        writes: SharedLimit,
        tally: Arc<Mutex<Tally>>,
    ) -> Self {
        StorageCtx {
            app,
            db,
            quota,
            tally,
            writes,
            handles: Default::default(),
        }
    }

    /// The app's tally and the connection, for a write: the tally is held
    /// across the write's check and the write, and counted from the
    /// database the first time.
    fn for_write(&self) -> rusqlite::Result<(MutexGuard<'_, Tally>, ConnectionGuard<'_>)> {
        let mut tally = self.tally.lock().unwrap_or_else(|e| e.into_inner());
        let conn = self.db.lock()?;
        tally.count(&conn, &self.app)?;
        Ok((tally, conn))
    }

    fn failed(&self, what: &str, e: rusqlite::Error) -> GuestError {
        tracing::error!(app = %self.app, "storage {what} failed: {e}");
        GuestError::Unavailable(format!("storage {what} failed: {e}"))
    }

    fn write_allowed(&mut self) -> Result<(), GuestError> {
        if self.writes.allow() {
            Ok(())
        } else {
            Err(GuestError::Limit(format!(
                "more than {} storage writes a second",
                self.writes.per_second()
            )))
        }
    }

    fn check_key(key: &str) -> Result<(), GuestError> {
        if key.len() > MAX_KEY_BYTES {
            return Err(GuestError::Invalid(format!(
                "key of {} bytes is over the limit of {MAX_KEY_BYTES}",
                key.len()
            )));
        }
        Ok(())
    }

    fn stored_size(&self, conn: &Connection, key: &str) -> rusqlite::Result<Option<u64>> {
        conn.query_row(
            "SELECT length(value) FROM kv WHERE app = ?1 AND key = ?2",
            params![&*self.app, key],
            |r| r.get::<_, i64>(0),
        )
        .optional()
        .map(|size| size.map(|s| cost(key, s.max(0) as usize)))
    }
}

struct StorageData;

impl HasData for StorageData {
    type Data<'a> = &'a mut StorageCtx;
}

impl Host for StorageCtx {
    fn get(&mut self, key: String) -> wasmtime::Result<Result<Option<Vec<u8>>, GuestError>> {
        if let Err(e) = Self::check_key(&key) {
            return Ok(Err(e));
        }
        let value = self.db.lock().and_then(|conn| {
            conn.query_row(
                "SELECT value FROM kv WHERE app = ?1 AND key = ?2",
                params![&*self.app, key],
                |r| r.get(0),
            )
            .optional()
        });
        Ok(value.map_err(|e| self.failed("get", e)))
    }

    fn set(&mut self, key: String, value: Vec<u8>) -> wasmtime::Result<Result<(), GuestError>> {
        if let Err(e) = Self::check_key(&key).and_then(|()| self.write_allowed()) {
            return Ok(Err(e));
        }
        if value.len() > MAX_VALUE_BYTES {
            return Ok(Err(GuestError::Invalid(format!(
                "value of {} bytes is over the limit of {MAX_VALUE_BYTES}",
                value.len()
            ))));
        }
        let (mut tally, conn) = match self.for_write() {
            Ok(held) => held,
            Err(e) => return Ok(Err(self.failed("set", e))),
        };
        let old = match self.stored_size(&conn, &key) {
            Ok(old) => old,
            Err(e) => return Ok(Err(self.failed("set", e))),
        };
        if old.is_none() && tally.keys >= MAX_KEYS {
            return Ok(Err(GuestError::Limit(format!(
                "the app holds {} keys, the most it may",
                tally.keys
            ))));
        }
        let new = cost(&key, value.len());
        let used = tally.used - old.unwrap_or(0).min(tally.used) + new;
        if used > self.quota {
            return Ok(Err(GuestError::Limit(format!(
                "storage quota of {} bytes would be exceeded ({used} bytes)",
                self.quota
            ))));
        }
        let result = conn.execute(
            "INSERT INTO kv (app, key, value) VALUES (?1, ?2, ?3)
             ON CONFLICT (app, key) DO UPDATE SET value = excluded.value",
            params![&*self.app, key, value],
        );
        Ok(match result {
            Ok(_) => {
                tally.used = used;
                tally.keys += u64::from(old.is_none());
                Ok(())
            }
            Err(e) => Err(self.failed("set", e)),
        })
    }

    fn delete(&mut self, key: String) -> wasmtime::Result<Result<(), GuestError>> {
        if let Err(e) = Self::check_key(&key).and_then(|()| self.write_allowed()) {
            return Ok(Err(e));
        }
        let (mut tally, conn) = match self.for_write() {
            Ok(held) => held,
            Err(e) => return Ok(Err(self.failed("delete", e))),
        };
        let old = match self.stored_size(&conn, &key) {
            Ok(old) => old,
            Err(e) => return Ok(Err(self.failed("delete", e))),
        };
        Ok(
            match conn.execute(
                "DELETE FROM kv WHERE app = ?1 AND key = ?2",
                params![&*self.app, key],
            ) {
                Ok(_) => {
                    tally.used = tally.used.saturating_sub(old.unwrap_or(0));
                    tally.keys -= u64::from(old.is_some() && tally.keys > 0);
                    Ok(())
                }
                Err(e) => Err(self.failed("delete", e)),
            },
        )
    }

    fn keys(&mut self, prefix: String) -> wasmtime::Result<Result<Vec<String>, GuestError>> {
        if let Err(e) = Self::check_key(&prefix) {
            return Ok(Err(e));
        }
        // Compare bytes, not characters, so any UTF-8 prefix matches exactly.
        let result = (|| {
            let conn = self.db.lock()?;
            let mut stmt = conn.prepare_cached(
                "SELECT key FROM kv WHERE app = ?1
                 AND substr(CAST(key AS BLOB), 1, length(CAST(?2 AS BLOB))) = CAST(?2 AS BLOB)
                 ORDER BY CAST(key AS BLOB)",
            )?;
            stmt.query_map(params![&*self.app, prefix], |r| r.get(0))?
                .collect::<rusqlite::Result<Vec<String>>>()
        })();
        Ok(result.map_err(|e| self.failed("keys", e)))
    }

    fn keys_page(
        &mut self,
        prefix: String,
        after: String,
        limit: u32,
    ) -> wasmtime::Result<Result<Vec<String>, GuestError>> {
        for key in [&prefix, &after] {
            if let Err(e) = Self::check_key(key) {
                return Ok(Err(e));
            }
        }
        let limit = limit.min(MAX_PAGE);
        // `key > after` and `key >= prefix` walk the primary key's index in
        // its (binary, so byte) order; the prefix test ends the match.
        let result = (|| {
            let conn = self.db.lock()?;
            let mut stmt = conn.prepare_cached(
                "SELECT key FROM kv WHERE app = ?1 AND key >= ?2 AND key > ?3
                 AND substr(CAST(key AS BLOB), 1, length(CAST(?2 AS BLOB))) = CAST(?2 AS BLOB)
                 ORDER BY key LIMIT ?4",
            )?;
            stmt.query_map(params![&*self.app, prefix, after, limit], |r| r.get(0))?
                .collect::<rusqlite::Result<Vec<String>>>()
        })();
        Ok(result.map_err(|e| self.failed("keys-page", e)))
    }
}

impl StorageCtx {
    /// A page of the app's keys in byte order, after the first `skip` of
    /// them: the paging of `wasi:keyvalue` `0.2.0-draft`, whose cursor is
    /// an offset. SQLite skips the rows itself, in one query.
    pub(crate) fn keys_at_offset(
        &mut self,
        skip: u64,
        limit: u32,
    ) -> Result<Vec<String>, GuestError> {
        let skip = i64::try_from(skip).unwrap_or(i64::MAX);
        let result = (|| {
            let conn = self.db.lock()?;
            let mut stmt = conn.prepare_cached(
                "SELECT key FROM kv WHERE app = ?1 ORDER BY key LIMIT ?2 OFFSET ?3",
            )?;
            stmt.query_map(params![&*self.app, limit.min(MAX_PAGE), skip], |r| r.get(0))?
                .collect::<rusqlite::Result<Vec<String>>>()
        })();
        result.map_err(|e| self.failed("keys-page", e))
    }
}

/// The most keys one `keys-page` returns.
pub const MAX_PAGE: u32 = 1000;

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn ctx(quota: u64) -> StorageCtx {
        let db = Connection::open_in_memory().expect("sqlite");
        db.execute_batch(Storage::SCHEMA).expect("schema");
        StorageCtx::new(
            "app".into(),
            SharedConnection::opened(db),
            quota,
            SharedLimit::new(1_000_000, 1_000_000),
            Arc::default(),
        )
    }

    #[test]
    fn each_key_counts_its_overhead_against_the_quota() {
        // Room for two one-byte keys with one-byte values, not three.
        let mut storage = ctx(2 * (2 + KEY_OVERHEAD_BYTES));
        assert!(
            storage
                .set("a".into(), b"1".to_vec())
                .expect("call")
                .is_ok()
        );
        assert!(
            storage
                .set("b".into(), b"2".to_vec())
                .expect("call")
                .is_ok()
        );
        let refused = storage.set("c".into(), b"3".to_vec()).expect("call");
        assert!(
            matches!(&refused, Err(GuestError::Limit(m)) if m.contains("storage quota")),
            "{refused:?}"
        );
        // Overwriting costs only the difference; deleting frees the key's
        // whole cost.
        assert!(
            storage
                .set("a".into(), b"9".to_vec())
                .expect("call")
                .is_ok()
        );
        assert!(storage.delete("b".into()).expect("call").is_ok());
        assert!(
            storage
                .set("c".into(), b"3".to_vec())
                .expect("call")
                .is_ok()
        );
        // What is held is counted the same way after a restart.
        let tally = storage.tally.lock().expect("tally");
        let conn = storage.db.lock().expect("open");
        assert_eq!(usage(&conn, "app").expect("usage"), (2, tally.used));
        assert_eq!(tally.keys, 2);
    }

    #[test]
    fn keys_page_walks_a_prefix_in_byte_order_a_page_at_a_time() {
        let mut storage = ctx(u64::MAX);
        for key in ["a", "b/3", "b/1", "b/é", "b/2", "b0", "c"] {
            storage
                .set(key.into(), b"v".to_vec())
                .expect("call")
                .expect("set");
        }
        let mut page = |after: &str, limit| {
            storage
                .keys_page("b/".into(), after.into(), limit)
                .expect("call")
                .expect("page")
        };
        assert_eq!(page("", 2), ["b/1", "b/2"]);
        assert_eq!(page("b/2", 2), ["b/3", "b/é"]);
        assert_eq!(page("b/é", 2), Vec::<String>::new());
        // An `after` before the prefix starts at the prefix.
        assert_eq!(page("a", 1), ["b/1"]);
        // A page is at most MAX_PAGE keys, whatever the app asks.
        for i in 0..MAX_PAGE + 5 {
            storage
                .set(format!("many/{i:05}"), b"v".to_vec())
                .expect("call")
                .expect("set");
        }
        let all = storage
            .keys_page("many/".into(), String::new(), u32::MAX)
            .expect("call")
            .expect("page");
        assert_eq!(all.len(), MAX_PAGE as usize);
        assert_eq!(all[0], "many/00000");
    }

    /// A pool on a file database in `dir` with the `kv` table.
    fn kv_pool(dir: &tempfile::TempDir) -> Arc<crate::store::ConnectionPool> {
        let pool = crate::store::ConnectionPool::new(crate::store::Database::new(
            dir.path().join("kv.db"),
            None,
        ));
        pool.open()
            .expect("open")
            .execute_batch(Storage::SCHEMA)
            .expect("schema");
        pool
    }

    /// An instance of `unit`'s app "app", on a connection of `pool`.
    fn instance_of(
        unit: &Storage,
        pool: &Arc<crate::store::ConnectionPool>,
        quota: u64,
    ) -> StorageCtx {
        StorageCtx::new(
            "app".into(),
            SharedConnection::pooled(pool.clone()),
            quota,
            SharedLimit::new(1_000_000, 1_000_000),
            unit.tallies.get("app"),
        )
    }

    #[test]
    fn two_instances_of_an_app_share_its_quota() {
        // As an app serving HTTP has, one per request in flight: on one
        // database, with one tally.
        let dir = tempfile::tempdir().expect("tempdir");
        let pool = kv_pool(&dir);
        let quota = 2 * (2 + KEY_OVERHEAD_BYTES);
        let unit = Storage::default();
        let instance = || instance_of(&unit, &pool, quota);
        let (mut first, mut second) = (instance(), instance());
        assert!(first.set("a".into(), b"1".to_vec()).expect("call").is_ok());
        assert!(second.set("b".into(), b"2".to_vec()).expect("call").is_ok());
        let refused = first.set("c".into(), b"3".to_vec()).expect("call");
        assert!(
            matches!(refused, Err(GuestError::Limit(_))),
            "the second instance's key counts for the first: {refused:?}"
        );
        assert!(second.delete("a".into()).expect("call").is_ok());
        assert!(first.set("c".into(), b"3".to_vec()).expect("call").is_ok());
    }

    #[test]
    fn a_report_counts_an_apps_storage_once_and_its_writes_keep_the_count() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pool = kv_pool(&dir);
        let reader = pool.open().expect("open");
        // A key from an earlier run.
        reader
            .execute(
                "INSERT INTO kv (app, key, value) VALUES ('app', 'a', x'01')",
                [],
            )
            .expect("insert");
        let unit = Storage::default();
        let metrics = crate::metrics::AppMetrics::default();
        let keys = || {
            let scope = ReportScope {
                app: "app",
                metrics: &metrics,
                db: &reader,
            };
            unit.report(&scope)[0].value
        };
        assert_eq!(keys(), 1, "counted from the database");
        // Counted once: a row the app's writes did not make is not seen.
        reader
            .execute(
                "INSERT INTO kv (app, key, value) VALUES ('app', 'b', x'01')",
                [],
            )
            .expect("insert");
        assert_eq!(keys(), 1, "the tally is kept, not counted again");
        // The app's own writes keep it up to date.
        let mut storage = instance_of(&unit, &pool, u64::MAX);
        assert!(
            storage
                .set("c".into(), b"3".to_vec())
                .expect("call")
                .is_ok()
        );
        assert_eq!(keys(), 2);
    }

    #[test]
    fn an_app_holds_at_most_max_keys() {
        let mut storage = ctx(u64::MAX);
        {
            let mut tally = storage.tally.lock().expect("tally");
            tally.counted = true;
            tally.keys = MAX_KEYS - 1;
        }
        assert!(
            storage
                .set("last".into(), Vec::new())
                .expect("call")
                .is_ok()
        );
        let refused = storage.set("one-more".into(), Vec::new()).expect("call");
        assert!(
            matches!(&refused, Err(GuestError::Limit(m)) if m.contains("100000 keys")),
            "{refused:?}"
        );
        // A key it holds can still change, and a freed one is taken again.
        assert!(
            storage
                .set("last".into(), b"x".to_vec())
                .expect("call")
                .is_ok()
        );
        assert!(storage.delete("last".into()).expect("call").is_ok());
        assert!(
            storage
                .set("one-more".into(), Vec::new())
                .expect("call")
                .is_ok()
        );
    }
}

//! Host side of the `wasmgate:device/storage` interface: durable key-value
//! data private to each app, in the `kv` table of the gateway's database.
//!
//! Every key is stored with the app's name, and every query is bound to it,
//! so no app can name another's keys. Sizes are checked before any I/O.

use rusqlite::{Connection, OptionalExtension, params};
use std::sync::Arc;
use wasmtime::component::{HasData, Linker};

use crate::bindings::GuestError;
use crate::bindings::wasmgate::device::storage::{self as generated, Host};
use crate::capability::{AppSetup, Capability, Figure, FigureKind, HasCtx, ReportScope};
use crate::rate::SharedLimit;

/// The storage capability: no gateway state of its own; the `kv` table.
pub struct Storage;

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
        let (keys, bytes) = held(app.db, app.app).unwrap_or_else(|e| {
            tracing::warn!(app = app.app, "cannot count the app's storage: {e}");
            (0, 0)
        });
        vec![
            Figure {
                name: "keys",
                help: "Keys the app holds in its storage.",
                kind: FigureKind::Gauge,
                value: keys,
            },
            Figure {
                name: "bytes",
                help: "Bytes of keys and values the app holds (what its quota counts).",
                kind: FigureKind::Gauge,
                value: bytes,
            },
        ]
    }

    fn instance(&self, app: &AppSetup<'_>) -> anyhow::Result<StorageCtx> {
        Ok(StorageCtx::new(
            app.app.clone(),
            app.db.open()?,
            app.config.storage_quota_bytes,
            app.rates.storage_writes.clone(),
        )?)
    }

    fn add_to_linker<T: HasCtx<Storage>>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
        generated::add_to_linker::<T, StorageData>(linker, T::ctx)
    }
}

/// How many keys `app` holds, and their bytes with their values' (what its
/// quota counts).
fn held(db: &Connection, app: &str) -> rusqlite::Result<(u64, u64)> {
    db.query_row(
        "SELECT COUNT(*), COALESCE(SUM(length(CAST(key AS BLOB)) + length(value)), 0) FROM kv WHERE app = ?1",
        params![app],
        |r| Ok((r.get::<_, i64>(0)?.max(0) as u64, r.get::<_, i64>(1)?.max(0) as u64)),
    )
}

/// The longest key, in bytes.
pub const MAX_KEY_BYTES: usize = 512;
/// The largest value, in bytes.
pub const MAX_VALUE_BYTES: usize = 1 << 20;

/// Per-app state of the storage interface.
pub struct StorageCtx {
    app: Arc<str>,
    db: Connection,
    quota: u64,
    /// Bytes of keys and values the app holds now.
    used: u64,
    /// Writes are transactions: an app may not make them without end (see `rate`).
    writes: SharedLimit,
}

impl StorageCtx {
    /// Open the app's storage, counting what it already holds.
    pub fn new(
        app: Arc<str>,
        db: Connection,
        quota: u64,
        writes: SharedLimit,
    ) -> rusqlite::Result<Self> {
        let (_, used) = held(&db, &app)?;
        Ok(StorageCtx {
            app,
            db,
            quota,
            used,
            writes,
        })
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

    fn stored_size(&self, key: &str) -> rusqlite::Result<Option<u64>> {
        self.db
            .query_row(
                "SELECT length(value) FROM kv WHERE app = ?1 AND key = ?2",
                params![&*self.app, key],
                |r| r.get::<_, i64>(0),
            )
            .optional()
            .map(|size| size.map(|s| s.max(0) as u64 + key.len() as u64))
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
        Ok(self
            .db
            .query_row(
                "SELECT value FROM kv WHERE app = ?1 AND key = ?2",
                params![&*self.app, key],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.failed("get", e)))
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
        let old = match self.stored_size(&key) {
            Ok(old) => old.unwrap_or(0),
            Err(e) => return Ok(Err(self.failed("set", e))),
        };
        let new = (key.len() + value.len()) as u64;
        let used = self.used - old.min(self.used) + new;
        if used > self.quota {
            return Ok(Err(GuestError::Limit(format!(
                "storage quota of {} bytes would be exceeded ({used} bytes)",
                self.quota
            ))));
        }
        let result = self.db.execute(
            "INSERT INTO kv (app, key, value) VALUES (?1, ?2, ?3)
             ON CONFLICT (app, key) DO UPDATE SET value = excluded.value",
            params![&*self.app, key, value],
        );
        Ok(match result {
            Ok(_) => {
                self.used = used;
                Ok(())
            }
            Err(e) => Err(self.failed("set", e)),
        })
    }

    fn delete(&mut self, key: String) -> wasmtime::Result<Result<(), GuestError>> {
        if let Err(e) = Self::check_key(&key).and_then(|()| self.write_allowed()) {
            return Ok(Err(e));
        }
        let old = match self.stored_size(&key) {
            Ok(old) => old.unwrap_or(0),
            Err(e) => return Ok(Err(self.failed("delete", e))),
        };
        Ok(
            match self.db.execute(
                "DELETE FROM kv WHERE app = ?1 AND key = ?2",
                params![&*self.app, key],
            ) {
                Ok(_) => {
                    self.used = self.used.saturating_sub(old);
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
            let mut stmt = self.db.prepare_cached(
                "SELECT key FROM kv WHERE app = ?1
                 AND substr(CAST(key AS BLOB), 1, length(CAST(?2 AS BLOB))) = CAST(?2 AS BLOB)
                 ORDER BY CAST(key AS BLOB)",
            )?;
            stmt.query_map(params![&*self.app, prefix], |r| r.get(0))?
                .collect::<rusqlite::Result<Vec<String>>>()
        })();
        Ok(result.map_err(|e| self.failed("keys", e)))
    }
}

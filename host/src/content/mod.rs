//! Large content (the Oracle `StorageObject` pattern): host side of the
//! `wasmgate:device/content` interface, and the record of every transfer.
//!
//! An app uploads a file of its directory (or bytes): the host takes a copy
//! into `<data dir>/content/`, records the transfer in SQLite (`transfers`)
//! and the [`service`] sends it when the link is up, resuming where the
//! receiver is after any interruption. The cloud downloads a file to one of
//! an app's devices: the service receives it into `<data dir>/content/`,
//! checks its sha256 and moves it into the app's directory as
//! `downloads/{name}`. The protocol is [`transfer`]'s; sizes and pace are
//! `[content]` in gateway.toml.

pub mod app_dir;
pub mod service;
pub mod transfer;

use rusqlite::{Connection, OptionalExtension, params};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::Notify;
use wasmtime::component::{HasData, Linker};

use crate::bindings::GuestError;
use crate::bindings::wasmgate::device::content::{
    self as generated, Direction, Host, State, Transfer,
};
use crate::capability::{AppSetup, Capability, Figure, FigureKind, HasCtx, ReportScope};
use crate::config::ContentConfig;
use transfer::Manifest;

/// How many transfers `transfers()` returns at most.
pub const MAX_LISTED: usize = 100;

/// Where the gateway keeps content in transit.
pub fn store_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("content")
}

/// The file of a transfer in the store.
pub fn store_path(data_dir: &Path, id: &str, way: Way) -> PathBuf {
    store_dir(data_dir).join(format!("{id}.{}", way.as_str()))
}

/// Which way a transfer goes: from the gateway to the cloud, or back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Way {
    Up,
    Down,
}

impl Way {
    /// As the `transfers` table, the store's file names and the topics say it.
    pub fn as_str(self) -> &'static str {
        match self {
            Way::Up => "up",
            Way::Down => "down",
        }
    }
}

impl rusqlite::ToSql for Way {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        Ok(self.as_str().into())
    }
}

impl rusqlite::types::FromSql for Way {
    fn column_result(value: rusqlite::types::ValueRef<'_>) -> rusqlite::types::FromSqlResult<Self> {
        match value.as_str()? {
            "up" => Ok(Way::Up),
            "down" => Ok(Way::Down),
            other => Err(rusqlite::types::FromSqlError::Other(
                format!("{other:?} is not a transfer direction").into(),
            )),
        }
    }
}

/// Where a transfer is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    Running,
    Done,
    /// It ended without arriving whole, for this reason.
    Failed(String),
}

/// One transfer as the `transfers` table keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransferRow {
    pub manifest: Manifest,
    pub app: String,
    pub device: String,
    pub way: Way,
    /// Chunks confirmed.
    pub have: u64,
    pub progress: Progress,
}

/// The columns [`row`] reads, in its order: spelled once, and put into each
/// statement at compile time (`concat!`), so no SQL is made at run time.
macro_rules! columns {
    () => {
        "id, app, device, direction, name, size, sha256, chunk_size, chunks, have, state, error"
    };
}

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<TransferRow> {
    let get = |i| r.get::<_, i64>(i).map(|v| v.max(0) as u64);
    Ok(TransferRow {
        manifest: Manifest {
            id: r.get(0)?,
            name: r.get(4)?,
            size: get(5)?,
            sha256: r.get(6)?,
            chunk_size: get(7)?,
            chunks: get(8)?,
        },
        app: r.get(1)?,
        device: r.get(2)?,
        way: r.get(3)?,
        have: get(9)?,
        progress: match r.get_ref(10)?.as_str()? {
            "done" => Progress::Done,
            "failed" => Progress::Failed(r.get::<_, Option<String>>(11)?.unwrap_or_default()),
            _ => Progress::Running,
        },
    })
}

pub fn insert(conn: &Connection, t: &TransferRow) -> rusqlite::Result<()> {
    let m = &t.manifest;
    conn.execute(
        concat!(
            "INSERT INTO transfers (",
            columns!(),
            ", created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)"
        ),
        params![
            m.id,
            t.app,
            t.device,
            t.way,
            m.name,
            m.size as i64,
            m.sha256,
            m.chunk_size as i64,
            m.chunks as i64,
            t.have as i64,
            match t.progress {
                Progress::Running => "running",
                Progress::Done => "done",
                Progress::Failed(_) => "failed",
            },
            match &t.progress {
                Progress::Failed(error) => Some(error.as_str()),
                _ => None,
            },
            crate::value::now_ns() as i64
        ],
    )?;
    Ok(())
}

pub fn get(conn: &Connection, id: &str, way: Way) -> rusqlite::Result<Option<TransferRow>> {
    conn.query_row(
        concat!(
            "SELECT ",
            columns!(),
            " FROM transfers WHERE id = ?1 AND direction = ?2"
        ),
        params![id, way],
        row,
    )
    .optional()
}

/// Transfers still running in one direction.
pub fn running(conn: &Connection, way: Way) -> rusqlite::Result<Vec<TransferRow>> {
    let mut stmt = conn.prepare_cached(concat!(
        "SELECT ",
        columns!(),
        " FROM transfers WHERE direction = ?1 AND state = 'running' ORDER BY created_at"
    ))?;
    stmt.query_map(params![way], row)?.collect()
}

/// How many uploads `app` has waiting to be sent, and their bytes: what its
/// upload caps and its disk quota count.
pub fn waiting_uploads(conn: &Connection, app: &str) -> rusqlite::Result<(u64, u64)> {
    conn.query_row(
        "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM transfers
         WHERE app = ?1 AND direction = 'up' AND state = 'running'",
        params![app],
        |r| {
            Ok((
                r.get::<_, i64>(0)?.max(0) as u64,
                r.get::<_, i64>(1)?.max(0) as u64,
            ))
        },
    )
}

/// An app's transfers, newest first.
pub fn of_app(conn: &Connection, app: &str) -> rusqlite::Result<Vec<TransferRow>> {
    let mut stmt = conn.prepare_cached(concat!(
        "SELECT ",
        columns!(),
        " FROM transfers WHERE app = ?1 ORDER BY created_at DESC LIMIT ?2"
    ))?;
    stmt.query_map(params![app, MAX_LISTED as i64], row)?
        .collect()
}

pub fn set_have(conn: &Connection, id: &str, way: Way, have: u64) -> rusqlite::Result<()> {
    conn.execute(
        "UPDATE transfers SET have = ?3 WHERE id = ?1 AND direction = ?2",
        params![id, way, have as i64],
    )?;
    Ok(())
}

pub fn finish(
    conn: &Connection,
    id: &str,
    way: Way,
    outcome: Result<u64, &str>,
) -> rusqlite::Result<()> {
    match outcome {
        Ok(have) => conn.execute(
            "UPDATE transfers SET state = 'done', have = ?3, error = NULL WHERE id = ?1 AND direction = ?2",
            params![id, way, have as i64],
        )?,
        Err(error) => conn.execute(
            "UPDATE transfers SET state = 'failed', error = ?3 WHERE id = ?1 AND direction = ?2",
            params![id, way, error],
        )?,
    };
    Ok(())
}

/// Per-app state of the content interface.
pub struct ContentCtx {
    app: Arc<str>,
    /// Uploads come from the app's own device.
    device: String,
    files_dir: PathBuf,
    data_dir: PathBuf,
    database: crate::store::Database,
    /// Opened on first use: most apps never transfer content, and every
    /// connection opened at instantiation lengthens a hot swap's pause.
    db: Option<Connection>,
    config: ContentConfig,
    /// Wakes the content service when an upload is waiting.
    signal: Arc<Notify>,
}

impl ContentCtx {
    fn db(&mut self) -> Result<&Connection, String> {
        if self.db.is_none() {
            let conn = self
                .database
                .open()
                .map_err(|e| format!("the gateway's database: {e}"))?;
            self.db = Some(conn);
        }
        self.db
            .as_ref()
            .ok_or_else(|| "the gateway's database is not open".to_string())
    }

    /// Record an upload whose content is already at its store path.
    fn start_upload(&mut self, name: &str, id: String, size: u64) -> Result<String, GuestError> {
        let path = store_path(&self.data_dir, &id, Way::Up);
        let cleanup = |e: String| {
            let _ = std::fs::remove_file(&path);
            GuestError::Unavailable(e)
        };
        let sha256 = transfer::sha256_of(&path).map_err(|e| cleanup(e.to_string()))?;
        let manifest = Manifest::new(
            id.clone(),
            name.to_string(),
            size,
            sha256,
            self.config.chunk_bytes,
        );
        let row = TransferRow {
            manifest,
            app: self.app.to_string(),
            device: self.device.clone(),
            way: Way::Up,
            have: 0,
            progress: Progress::Running,
        };
        let recorded = self.db().map(|db| insert(db, &row));
        match recorded {
            Err(e) => return Err(cleanup(e)),
            Ok(Err(e)) => {
                return Err(cleanup(format!(
                    "the gateway could not record the upload: {e}"
                )));
            }
            Ok(Ok(())) => {}
        }
        tracing::info!(app = %self.app, device = %self.device, transfer = %id, name, bytes = size, "upload queued");
        self.signal.notify_one();
        Ok(id)
    }

    fn check_upload(&mut self, name: &str, size: u64) -> Result<String, GuestError> {
        crate::model::check_name(name).map_err(|m| GuestError::Invalid(format!("name: {m}")))?;
        if size > self.config.max_upload_bytes {
            return Err(GuestError::Limit(format!(
                "{size} bytes is over the upload limit of {} ([content] max_upload_mib)",
                self.config.max_upload_bytes
            )));
        }
        // Uploads wait in the store until the link sends them: bounded per
        // app in number and bytes, and never into the disk's reserve.
        let app = self.app.clone();
        let (waiting, waiting_bytes) =
            waiting_uploads(self.db().map_err(GuestError::Unavailable)?, &app)
                .map_err(|e| GuestError::Unavailable(format!("reading the app's uploads: {e}")))?;
        if waiting >= self.config.max_pending_uploads {
            return Err(GuestError::Limit(format!(
                "the app has {waiting} uploads waiting to be sent, its most ([content] max_pending_uploads)"
            )));
        }
        if waiting_bytes.saturating_add(size) > self.config.pending_uploads_max_bytes {
            return Err(GuestError::Limit(format!(
                "{size} more bytes would put the app's waiting uploads ({waiting_bytes} bytes) over {} ([content] pending_uploads_max_mib)",
                self.config.pending_uploads_max_bytes
            )));
        }
        std::fs::create_dir_all(store_dir(&self.data_dir))
            .map_err(|e| GuestError::Unavailable(format!("the content store: {e}")))?;
        if let Some(free) = transfer::free_bytes(&store_dir(&self.data_dir))
            && free < size.saturating_add(self.config.disk_reserve_bytes)
        {
            return Err(GuestError::Unavailable(format!(
                "not enough disk: {size} bytes would leave less than the {} bytes kept free for the outbox ([content] disk_reserve_mib); {free} bytes are free",
                self.config.disk_reserve_bytes
            )));
        }
        // 64 random bits: an id nobody can guess without reading the
        // manifest.
        Ok(format!(
            "up-{}-{:016x}",
            crate::value::now_ns() / 1_000_000,
            crate::value::random_u64()
        ))
    }
}

struct ContentData;

impl HasData for ContentData {
    type Data<'a> = &'a mut ContentCtx;
}

/// The content capability. Its gateway state: where content in transit
/// is kept, the `[content]` limits, and the content service's wake-up.
pub struct Content {
    pub data_dir: PathBuf,
    pub config: ContentConfig,
    /// Wakes the content service when an app queues an upload.
    pub signal: Arc<Notify>,
    /// What the content service resumed since the gateway started.
    pub resumed: Arc<Resumed>,
}

/// Chunks that transfers already had when the content service took them
/// up again after a restart of the gateway: work not done twice. Counted
/// per app and direction, for the app's report.
#[derive(Default)]
pub struct Resumed(std::sync::Mutex<std::collections::HashMap<(String, Way), u64>>);

impl Resumed {
    pub fn add(&self, app: &str, way: Way, chunks: u64) {
        let mut counts = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *counts.entry((app.to_string(), way)).or_default() += chunks;
    }

    fn get(&self, app: &str, way: Way) -> u64 {
        let counts = self.0.lock().unwrap_or_else(|e| e.into_inner());
        counts.get(&(app.to_string(), way)).copied().unwrap_or(0)
    }
}

impl Capability for Content {
    type Ctx = ContentCtx;
    const NAME: &'static str = "content";
    const SCHEMA: &'static str = r#"
CREATE TABLE IF NOT EXISTS transfers (
    id         TEXT NOT NULL,
    direction  TEXT NOT NULL,
    app        TEXT NOT NULL,
    device     TEXT NOT NULL,
    name       TEXT NOT NULL,
    size       INTEGER NOT NULL,
    sha256     TEXT NOT NULL,
    chunk_size INTEGER NOT NULL,
    chunks     INTEGER NOT NULL,
    have       INTEGER NOT NULL,
    state      TEXT NOT NULL,
    error      TEXT,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (id, direction)
);
"#;

    fn report(&self, app: &ReportScope<'_>) -> Vec<Figure> {
        let running = |way: Way| {
            app.db
                .query_row(
                    "SELECT COUNT(*) FROM transfers WHERE app = ?1 AND direction = ?2 AND state = 'running'",
                    params![app.app, way],
                    |r| r.get::<_, i64>(0),
                )
                .unwrap_or_else(|e| {
                    tracing::warn!(app = app.app, "cannot count the app's transfers: {e}");
                    0
                })
                .max(0) as u64
        };
        vec![
            Figure {
                name: "uploads",
                help: "Uploads of the app in progress.",
                kind: FigureKind::Gauge,
                value: running(Way::Up),
            },
            Figure {
                name: "downloads",
                help: "Downloads to the app in progress.",
                kind: FigureKind::Gauge,
                value: running(Way::Down),
            },
            Figure {
                name: "upload_chunks_resumed",
                help: "Chunks uploads of the app did not send again after a restart of the gateway.",
                kind: FigureKind::Counter,
                value: self.resumed.get(app.app, Way::Up),
            },
            Figure {
                name: "download_chunks_resumed",
                help: "Chunks downloads to the app kept across a restart of the gateway.",
                kind: FigureKind::Counter,
                value: self.resumed.get(app.app, Way::Down),
            },
        ]
    }

    fn instance(&self, app: &AppSetup<'_>) -> anyhow::Result<ContentCtx> {
        Ok(ContentCtx {
            app: app.app.clone(),
            device: app.device.to_string(),
            files_dir: app.files_dir.to_path_buf(),
            data_dir: self.data_dir.clone(),
            database: app.db.clone(),
            db: None,
            config: self.config.clone(),
            signal: self.signal.clone(),
        })
    }

    fn add_to_linker<T: HasCtx<Content>>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
        generated::add_to_linker::<T, ContentData>(linker, T::ctx)
    }
}

impl Host for ContentCtx {
    fn upload_file(
        &mut self,
        name: String,
        path: String,
    ) -> wasmtime::Result<Result<String, GuestError>> {
        let result = (|| {
            // Opened through a handle confined to the app's directory: no
            // `..`, no absolute path, no symlink that leads out.
            let mut source = app_dir::open_file(&self.files_dir, &path).map_err(|e| {
                GuestError::Invalid(format!("{path:?} in the app's directory: {e}"))
            })?;
            let size = source
                .metadata()
                .map_err(|e| GuestError::Invalid(format!("{path}: {e}")))?
                .len();
            let id = self.check_upload(&name, size)?;
            let copy = store_path(&self.data_dir, &id, Way::Up);
            if let Err(e) =
                std::fs::File::create(&copy).and_then(|mut to| std::io::copy(&mut source, &mut to))
            {
                // No partial copy is left behind in the store.
                let _ = std::fs::remove_file(&copy);
                return Err(GuestError::Unavailable(format!("copying {path}: {e}")));
            }
            self.start_upload(&name, id, size)
        })();
        Ok(result)
    }

    fn upload_bytes(
        &mut self,
        name: String,
        bytes: Vec<u8>,
    ) -> wasmtime::Result<Result<String, GuestError>> {
        let result = (|| {
            let id = self.check_upload(&name, bytes.len() as u64)?;
            std::fs::write(store_path(&self.data_dir, &id, Way::Up), &bytes)
                .map_err(|e| GuestError::Unavailable(format!("storing the upload: {e}")))?;
            self.start_upload(&name, id, bytes.len() as u64)
        })();
        Ok(result)
    }

    fn transfers(&mut self) -> wasmtime::Result<Vec<Transfer>> {
        let app = self.app.clone();
        let rows = match self.db() {
            Ok(db) => of_app(db, &app).unwrap_or_else(|e| {
                tracing::error!(app = %app, "cannot read the app's transfers: {e}");
                Vec::new()
            }),
            Err(e) => {
                tracing::error!(app = %app, "cannot read the app's transfers: {e}");
                Vec::new()
            }
        };
        Ok(rows
            .into_iter()
            .map(|t| Transfer {
                transferred: t.manifest.bytes_in(t.have),
                size: t.manifest.size,
                direction: match t.way {
                    Way::Up => Direction::Upload,
                    Way::Down => Direction::Download,
                },
                state: match t.progress {
                    Progress::Running => State::Running,
                    Progress::Done => State::Done,
                    Progress::Failed(why) => State::Failed(why),
                },
                id: t.manifest.id,
                name: t.manifest.name,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_transfer_row_keeps_its_way_and_its_progress() {
        let conn = Connection::open_in_memory().expect("db");
        conn.execute_batch(<Content as Capability>::SCHEMA)
            .expect("schema");
        let row = |id: &str, way| TransferRow {
            manifest: Manifest::new(id.into(), "a.bin".into(), 10, "00".into(), 4),
            app: "app".into(),
            device: "dev".into(),
            way,
            have: 0,
            progress: Progress::Running,
        };
        // One id may go both ways: they are two transfers.
        insert(&conn, &row("t1", Way::Up)).expect("insert");
        insert(&conn, &row("t1", Way::Down)).expect("insert");
        finish(&conn, "t1", Way::Down, Err("refused as corrupt")).expect("finish");
        finish(&conn, "t1", Way::Up, Ok(3)).expect("finish");
        let down = get(&conn, "t1", Way::Down).expect("get").expect("row");
        assert_eq!(down.progress, Progress::Failed("refused as corrupt".into()));
        let up = get(&conn, "t1", Way::Up).expect("get").expect("row");
        assert_eq!((up.way, up.have, up.progress), (Way::Up, 3, Progress::Done));
        assert!(running(&conn, Way::Up).expect("running").is_empty());
        conn.execute(
            "UPDATE transfers SET direction = 'sideways' WHERE direction = 'up'",
            [],
        )
        .expect("update");
        assert!(get(&conn, "t1", Way::Up).is_ok_and(|r| r.is_none()));
        assert!(
            of_app(&conn, "app").is_err(),
            "an unknown direction is an error"
        );
    }
}

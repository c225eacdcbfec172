//! `wasmgate status`: what a gateway's data directory says about it, whether
//! the gateway is running or not (SQLite in WAL mode lets us read while it
//! writes).

use anyhow::Context as _;
use serde::Serialize;
use std::fmt::Write as _;

use crate::config::Config;
use crate::gateway::LOCK_FILE;
use crate::value::now_ns;

/// The status of one gateway.
#[derive(Debug, Serialize)]
pub struct Status {
    pub gateway: String,
    pub store: String,
    /// The pid of the running gateway, if one holds the data directory.
    pub running_pid: Option<u32>,
    pub apps: Vec<AppStatus>,
    pub outbox: Vec<OutboxStatus>,
    /// From a running gateway: its apps' live numbers (events, traps, call
    /// time, memory, versions).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub live: Option<Vec<crate::deploy::AppReport>>,
    /// From a running gateway: its cloud link now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub link: Option<crate::report::LinkInfo>,
    /// From a running gateway: its outbox now, with the writer's error if
    /// the database takes no writes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub live_outbox: Option<crate::wire::protocol::OutboxInfo>,
}

#[derive(Debug, Serialize)]
pub struct AppStatus {
    pub name: String,
    pub state: String,
    pub restarts: i64,
    pub error: Option<String>,
    pub component: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct OutboxStatus {
    pub kind: String,
    pub device: String,
    pub name: String,
    pub entries: i64,
    pub points: i64,
    pub bytes: i64,
    /// Age of the oldest waiting entry, if any waits.
    pub oldest_age_s: Option<f64>,
    /// Points deleted unsent to make room (`drop-oldest`).
    pub dropped: i64,
    /// Points refused at `record` (`reject-newest`).
    pub rejected: i64,
    /// Points deleted unsent for age (`max_age_s`).
    pub expired: i64,
}

/// Read the status from the config's data directory.
pub fn read(config: &Config) -> anyhow::Result<Status> {
    let db_path = config.database_path();
    if !db_path.exists() {
        anyhow::bail!(
            "no database at {}: this gateway has not run yet (start it with `wasmgate run --config {}`)",
            db_path.display(),
            config.path.display()
        );
    }
    let conn = crate::store::open_read_only(&db_path)
        .with_context(|| format!("opening {}", db_path.display()))?;
    let now = now_ns() as i64;
    let apps = crate::store::app_rows(&conn)?
        .into_iter()
        .map(|row| AppStatus {
            name: row.name,
            state: row.state,
            restarts: row.restarts,
            error: row.detail,
            component: row.component,
        })
        .collect();
    let outbox = crate::outbox::depth(&conn)?
        .into_iter()
        .map(|d| OutboxStatus {
            kind: d.kind,
            device: d.device,
            name: d.name,
            entries: d.entries,
            points: d.points,
            bytes: d.bytes,
            oldest_age_s: d.oldest_ns.map(|t| (now - t).max(0) as f64 / 1e9),
            dropped: d.dropped,
            rejected: d.rejected,
            expired: d.expired,
        })
        .collect();
    Ok(Status {
        gateway: config.gateway_id.clone(),
        store: db_path.display().to_string(),
        running_pid: running_pid(config),
        apps,
        outbox,
        live: None,
        link: None,
        live_outbox: None,
    })
}

/// The pid in the lock file, if a live process holds the lock.
fn running_pid(config: &Config) -> Option<u32> {
    let path = config.data_dir.join(LOCK_FILE);
    let file = std::fs::File::open(&path).ok()?;
    if file.try_lock_shared().is_ok() {
        return None;
    }
    std::fs::read_to_string(&path).ok()?.trim().parse().ok()
}

impl Status {
    /// The human-readable form.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let running = match self.running_pid {
            Some(pid) => format!("running (pid {pid})"),
            None => "not running".to_string(),
        };
        let _ = writeln!(out, "gateway {}: {running}", self.gateway);
        let _ = writeln!(out, "store   {}", self.store);
        let _ = writeln!(out);
        if self.apps.is_empty() {
            let _ = writeln!(out, "no apps have run yet");
        } else {
            let _ = writeln!(
                out,
                "{:<20} {:<12} {:>8}  {:<14} LAST ERROR",
                "APP", "STATE", "RESTARTS", "COMPONENT"
            );
            for app in &self.apps {
                let component = app
                    .component
                    .as_deref()
                    .map(|c| &c[..c.len().min(12)])
                    .unwrap_or("-");
                let _ = writeln!(
                    out,
                    "{:<20} {:<12} {:>8}  {:<14} {}",
                    app.name,
                    app.state,
                    app.restarts,
                    component,
                    app.error.as_deref().unwrap_or("")
                );
            }
        }
        let _ = writeln!(out);
        if self.outbox.is_empty() {
            let _ = writeln!(out, "outbox: empty");
        } else {
            let _ = writeln!(
                out,
                "{:<10} {:<16} {:<14} {:>7} {:>9} {:>10} {:>8} {:>8} {:>8} {:>8}",
                "OUTBOX",
                "DEVICE",
                "NAME",
                "ENTRIES",
                "POINTS",
                "BYTES",
                "OLDEST",
                "DROPPED",
                "REJECTED",
                "EXPIRED"
            );
            for o in &self.outbox {
                let oldest = o
                    .oldest_age_s
                    .map(|s| format!("{s:.1}s"))
                    .unwrap_or_else(|| "-".into());
                let _ = writeln!(
                    out,
                    "{:<10} {:<16} {:<14} {:>7} {:>9} {:>10} {:>8} {:>8} {:>8} {:>8}",
                    o.kind,
                    o.device,
                    if o.name.is_empty() { "-" } else { &o.name },
                    o.entries,
                    o.points,
                    o.bytes,
                    oldest,
                    o.dropped,
                    o.rejected,
                    o.expired
                );
            }
        }
        out
    }
}

//! The deployment registry, in SQLite: every version of every app (its
//! component digest and everything else it needs to run), which version
//! each app runs, whether the operator stopped it, and what became of each
//! deployment. A restart of the gateway resumes exactly what ran.

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

use crate::config::{AppConfig, RestartPolicy};
use crate::value::now_ns;
use std::collections::BTreeMap;

/// Everything an app version needs besides its component: kept with the
/// version so that a rollback restores all of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Spec {
    pub device: String,
    pub tick_interval_ms: u64,
    pub call_timeout_ms: u64,
    pub memory_limit_bytes: usize,
    pub storage_quota_bytes: u64,
    #[serde(default = "default_disk_quota_bytes")]
    pub disk_quota_bytes: u64,
    pub config: Vec<(String, String)>,
    pub restart: RestartPolicy,
    /// The device model document.
    pub model: serde_json::Value,
    /// The models the app may `register` devices with, by name (documents).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub device_models: BTreeMap<String, serde_json::Value>,
    #[serde(default = "default_max_devices")]
    pub max_devices: usize,
    /// What the app may reach outside its sandbox.
    #[serde(default, skip_serializing_if = "crate::grants::Grants::is_empty")]
    pub grants: crate::grants::Grants,
    #[serde(default = "default_io_wait_ms")]
    pub io_wait_ms: u64,
    #[serde(default = "default_io_requests_per_s")]
    pub io_requests_per_s: u32,
    #[serde(default = "default_bus_queue")]
    pub bus_queue: usize,
    #[serde(default)]
    pub synced: crate::config::SyncedLimits,
}

fn default_bus_queue() -> usize {
    crate::config::DEFAULT_BUS_QUEUE
}

fn default_io_requests_per_s() -> u32 {
    crate::config::DEFAULT_IO_REQUESTS_PER_S
}

fn default_io_wait_ms() -> u64 {
    crate::config::DEFAULT_IO_WAIT.as_millis() as u64
}

fn default_disk_quota_bytes() -> u64 {
    crate::config::DEFAULT_DISK_QUOTA_BYTES
}

fn default_max_devices() -> usize {
    crate::registration::DEFAULT_MAX_DEVICES
}

impl Spec {
    pub fn from_config(app: &AppConfig, model: serde_json::Value) -> Spec {
        Spec {
            device_models: BTreeMap::new(),
            max_devices: app.max_devices,
            device: app.device.clone(),
            tick_interval_ms: app.tick_interval.as_millis() as u64,
            call_timeout_ms: app.call_timeout.as_millis() as u64,
            memory_limit_bytes: app.memory_limit_bytes,
            storage_quota_bytes: app.storage_quota_bytes,
            disk_quota_bytes: app.disk_quota_bytes,
            config: app.config.clone(),
            restart: app.restart.clone(),
            model,
            grants: app.grants.clone(),
            io_wait_ms: app.io_wait.as_millis() as u64,
            io_requests_per_s: app.io_requests_per_s,
            bus_queue: app.bus_queue,
            synced: app.synced,
        }
    }

    /// The app's settings as the actor runs them (`component` and `model`
    /// paths are not used once an app is in the registry).
    pub fn to_config(&self, name: &str) -> AppConfig {
        AppConfig {
            name: name.to_string(),
            component: Default::default(),
            model: Default::default(),
            device: self.device.clone(),
            tick_interval: std::time::Duration::from_millis(self.tick_interval_ms),
            call_timeout: std::time::Duration::from_millis(self.call_timeout_ms),
            memory_limit_bytes: self.memory_limit_bytes,
            storage_quota_bytes: self.storage_quota_bytes,
            disk_quota_bytes: self.disk_quota_bytes,
            config: self.config.clone(),
            restart: self.restart.clone(),
            device_models: Vec::new(),
            max_devices: self.max_devices,
            grants: self.grants.clone(),
            io_wait: std::time::Duration::from_millis(self.io_wait_ms),
            io_requests_per_s: self.io_requests_per_s,
            bus_queue: self.bus_queue,
            synced: self.synced,
        }
    }

    /// The registration models, checked.
    pub fn parse_device_models(
        &self,
    ) -> Result<BTreeMap<String, std::sync::Arc<crate::model::DeviceModel>>, String> {
        self.device_models
            .iter()
            .map(|(name, doc)| {
                crate::model::DeviceModel::parse(&doc.to_string())
                    .map(|m| (name.clone(), std::sync::Arc::new(m)))
                    .map_err(|e| format!("device model {name}: {e}"))
            })
            .collect()
    }
}

/// One registered version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Version {
    pub app: String,
    pub version: i64,
    pub digest: String,
    pub spec: Spec,
    /// `config`, `cli`, `cloud`, `watch` or `rollback`.
    pub source: String,
    pub deployed_at: i64,
    pub outcome: Outcome,
}

/// What became of a version. Kept in `app_versions.outcome` as the text
/// `wasmgate apps` shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Registered; not started yet.
    Deploying,
    /// Started, within its probation.
    OnProbation,
    Running,
    /// A newer version took its place.
    Replaced,
    /// It crashed during its probation and the previous version runs again.
    RolledBack(String),
    /// `wasmgate rollback` put an earlier version back.
    RolledBackByOperator,
    /// It did not start (the reason); the running version stayed.
    Refused(String),
}

impl Outcome {
    /// Whether the version ran: a version a rollback can go back to.
    pub fn ran(&self) -> bool {
        matches!(self, Outcome::Running | Outcome::Replaced)
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Deploying => f.write_str("deploying"),
            Outcome::OnProbation => f.write_str("on probation"),
            Outcome::Running => f.write_str("running"),
            Outcome::Replaced => f.write_str("replaced"),
            Outcome::RolledBack(reason) => write!(f, "rolled back: {reason}"),
            Outcome::RolledBackByOperator => f.write_str("rolled back by the operator"),
            Outcome::Refused(reason) => write!(f, "refused: {reason}"),
        }
    }
}

impl std::str::FromStr for Outcome {
    type Err = String;

    fn from_str(text: &str) -> Result<Outcome, String> {
        Ok(match text {
            "deploying" => Outcome::Deploying,
            "on probation" => Outcome::OnProbation,
            "running" => Outcome::Running,
            "replaced" => Outcome::Replaced,
            "rolled back by the operator" => Outcome::RolledBackByOperator,
            _ => {
                if let Some(reason) = text.strip_prefix("rolled back: ") {
                    Outcome::RolledBack(reason.to_string())
                } else if let Some(reason) = text.strip_prefix("refused: ") {
                    Outcome::Refused(reason.to_string())
                } else {
                    return Err(format!("{text:?} is not a version's outcome"));
                }
            }
        })
    }
}

impl Serialize for Outcome {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Outcome {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Outcome, D::Error> {
        String::deserialize(deserializer)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// Which version an app runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Current {
    pub app: String,
    pub version: i64,
    pub stopped: bool,
    /// What gateway.toml said when it last deployed this app (see `gateway`).
    pub config_digest: Option<String>,
}

pub const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS app_versions (
    app         TEXT NOT NULL,
    version     INTEGER NOT NULL,
    digest      TEXT NOT NULL,
    spec        TEXT NOT NULL,
    source      TEXT NOT NULL,
    deployed_at INTEGER NOT NULL,
    outcome     TEXT NOT NULL,
    PRIMARY KEY (app, version)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS app_deployments (
    app           TEXT PRIMARY KEY,
    version       INTEGER NOT NULL,
    stopped       INTEGER NOT NULL DEFAULT 0,
    config_digest TEXT
);

-- Signed cloud deployments taken: the highest version per app (and of the
-- trusted keys' rotations, as "(trusted keys)"), and every
-- id, so that neither an older manifest nor the same one is taken again.
-- Kept when an app is removed: removing it must not reopen old versions.
CREATE TABLE IF NOT EXISTS deploy_highest (
    app     TEXT PRIMARY KEY,
    version INTEGER NOT NULL
);
-- The trusted keys a signed rotation put in place of gateway.toml's (whose
-- digest is `base`: if the file's keys change, the file wins again).
CREATE TABLE IF NOT EXISTS deploy_keyset (
    singleton INTEGER PRIMARY KEY CHECK (singleton = 1),
    version   INTEGER NOT NULL,
    base      TEXT NOT NULL,
    keys      TEXT NOT NULL,
    threshold INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS deploy_ids (
    id          TEXT PRIMARY KEY,
    app         TEXT NOT NULL,
    version     INTEGER NOT NULL,
    accepted_at INTEGER NOT NULL
);
-- The signed deployments that came to an end (deployed or failed). One
-- taken but not ended (the gateway stopped while receiving it) may be
-- offered again, as long as nothing newer was taken since.
CREATE TABLE IF NOT EXISTS deploy_ended (
    id       TEXT PRIMARY KEY,
    outcome  TEXT NOT NULL,
    ended_at INTEGER NOT NULL
);
"#;

/// A key set a signed rotation put in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySet {
    pub version: u64,
    /// The digest of gateway.toml's trusted keys it replaced.
    pub base: String,
    pub keys: Vec<crate::wire::protocol::RotatedKey>,
    pub threshold: usize,
}

/// The key set in force from a rotation, if any.
pub fn key_set(conn: &Connection) -> rusqlite::Result<Option<KeySet>> {
    conn.query_row(
        "SELECT version, base, keys, threshold FROM deploy_keyset WHERE singleton = 1",
        [],
        |r| {
            let keys: String = r.get(2)?;
            Ok(KeySet {
                version: r.get::<_, i64>(0)?.max(0) as u64,
                base: r.get(1)?,
                keys: serde_json::from_str(&keys).map_err(|e| {
                    rusqlite::Error::FromSqlConversionFailure(
                        2,
                        rusqlite::types::Type::Text,
                        Box::new(e),
                    )
                })?,
                threshold: r.get::<_, i64>(3)?.max(1) as usize,
            })
        },
    )
    .optional()
}

/// Forget a rotation (gateway.toml's keys changed: the file wins).
pub fn drop_key_set(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute("DELETE FROM deploy_keyset", []).map(|_| ())
}

/// Put a rotated key set in force, durably, if its id is new and its
/// version is above the one in force.
pub fn rotate_keys(conn: &mut Connection, id: &str, set: &KeySet) -> Result<(), Replay> {
    let registry = |e: rusqlite::Error| Replay::Registry(e.to_string());
    // Immediate: it reads before it writes, and a deferred transaction
    // whose snapshot another connection wrote past cannot take the write
    // lock ("database is locked", at once, whatever the busy timeout).
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(registry)?;
    let version = take(&tx, id, KEYS, set.version)?;
    let keys = serde_json::to_string(&set.keys).map_err(|e| Replay::Registry(e.to_string()))?;
    tx.execute(
        "INSERT INTO deploy_keyset (singleton, version, base, keys, threshold) VALUES (1, ?1, ?2, ?3, ?4)
         ON CONFLICT (singleton) DO UPDATE SET version = excluded.version, base = excluded.base,
         keys = excluded.keys, threshold = excluded.threshold",
        params![version, set.base, keys, set.threshold as i64],
    )
    .map_err(registry)?;
    tx.commit().map_err(registry)
}

/// Within `tx`: record signed message `id` of `scope` (an app, or
/// [`KEYS`]) at `version`, if neither the id nor a version as high was
/// taken before. The version as stored.
fn take(
    tx: &rusqlite::Transaction<'_>,
    id: &str,
    scope: &str,
    version: u64,
) -> Result<i64, Replay> {
    let registry = |e: rusqlite::Error| Replay::Registry(e.to_string());
    if let Some((app, version)) = tx
        .query_row(
            "SELECT app, version FROM deploy_ids WHERE id = ?1",
            params![id],
            |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)),
        )
        .optional()
        .map_err(registry)?
    {
        return Err(Replay::SeenId {
            id: id.to_string(),
            app,
            version,
        });
    }
    let not_newer = |highest| Replay::NotNewer {
        app: scope.to_string(),
        version,
        highest,
    };
    let stored = i64::try_from(version).map_err(|_| not_newer(i64::MAX))?;
    let highest: Option<i64> = tx
        .query_row(
            "SELECT version FROM deploy_highest WHERE app = ?1",
            params![scope],
            |r| r.get(0),
        )
        .optional()
        .map_err(registry)?;
    if let Some(highest) = highest
        && stored <= highest
    {
        return Err(not_newer(highest));
    }
    tx.execute(
        "INSERT INTO deploy_ids (id, app, version, accepted_at) VALUES (?1, ?2, ?3, ?4)",
        params![id, scope, stored, now_ns() as i64],
    )
    .map_err(registry)?;
    tx.execute(
        "INSERT INTO deploy_highest (app, version) VALUES (?1, ?2)
         ON CONFLICT (app) DO UPDATE SET version = excluded.version",
        params![scope, stored],
    )
    .map_err(registry)?;
    Ok(stored)
}

/// How the key sets are named where an app's name would be.
pub const KEYS: &str = "(trusted keys)";

/// Why a signed deployment is refused by what the gateway took before.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Replay {
    #[error(
        "deployment id {id} was taken before (version {version} of app {app}): refused as a replay"
    )]
    SeenId {
        id: String,
        app: String,
        version: i64,
    },
    #[error(
        "version {version} of app {app} is not newer than version {highest}, the highest this gateway took: refused as a replay or a rollback (to go back to an older component, deploy it again with a higher version)"
    )]
    NotNewer {
        app: String,
        version: u64,
        highest: i64,
    },
    #[error("the deployment registry failed: {0}")]
    Registry(String),
}

/// Whether a signed deployment is taken for the first time, or offered
/// again after the gateway stopped while receiving it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Taken {
    New,
    Resumed,
}

/// Take signed deployment `id` of `app` at `version`, durably, if neither
/// the id nor a version as high was taken before. One transaction: two
/// manifests racing cannot both pass. The same id is taken again only to
/// resume it: it never ended, and it is still the newest of its app.
pub fn accept_deployment(
    conn: &mut Connection,
    id: &str,
    app: &str,
    version: u64,
) -> Result<Taken, Replay> {
    let registry = |e: rusqlite::Error| Replay::Registry(e.to_string());
    // Immediate: it reads before it writes, and a deferred transaction
    // whose snapshot another connection wrote past cannot take the write
    // lock ("database is locked", at once, whatever the busy timeout).
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(registry)?;
    if resumable(&tx, id, app, version).map_err(registry)? {
        return Ok(Taken::Resumed);
    }
    take(&tx, id, app, version)?;
    tx.commit().map_err(registry)?;
    Ok(Taken::New)
}

fn resumable(
    tx: &rusqlite::Transaction<'_>,
    id: &str,
    app: &str,
    version: u64,
) -> rusqlite::Result<bool> {
    let Ok(version) = i64::try_from(version) else {
        return Ok(false);
    };
    tx.query_row(
        "SELECT 1 FROM deploy_ids i JOIN deploy_highest h ON h.app = i.app
         WHERE i.id = ?1 AND i.app = ?2 AND i.version = ?3 AND h.version = ?3
           AND NOT EXISTS (SELECT 1 FROM deploy_ended e WHERE e.id = i.id)",
        params![id, app, version],
        |_| Ok(()),
    )
    .optional()
    .map(|found| found.is_some())
}

/// Record that signed deployment `id` came to an end (`deployed` or
/// `failed`): it is never taken again.
pub fn end_deployment(conn: &Connection, id: &str, outcome: &str) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO deploy_ended (id, outcome, ended_at) VALUES (?1, ?2, ?3)
         ON CONFLICT (id) DO NOTHING",
        params![id, outcome, now_ns() as i64],
    )
    .map(|_| ())
}

/// Register a new version; returns its number.
pub fn add(
    conn: &Connection,
    app: &str,
    digest: &str,
    spec: &Spec,
    source: &str,
) -> rusqlite::Result<i64> {
    let next: i64 = conn.query_row(
        "SELECT COALESCE(MAX(version), 0) + 1 FROM app_versions WHERE app = ?1",
        params![app],
        |r| r.get(0),
    )?;
    let spec = serde_json::to_string(spec)
        .map_err(|e| rusqlite::Error::ToSqlConversionFailure(e.into()))?;
    conn.execute(
        "INSERT INTO app_versions (app, version, digest, spec, source, deployed_at, outcome)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'deploying')",
        params![app, next, digest, spec, source, now_ns() as i64],
    )?;
    Ok(next)
}

fn version_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Version> {
    let spec: String = r.get(3)?;
    Ok(Version {
        app: r.get(0)?,
        version: r.get(1)?,
        digest: r.get(2)?,
        spec: serde_json::from_str(&spec).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(3, rusqlite::types::Type::Text, e.into())
        })?,
        source: r.get(4)?,
        deployed_at: r.get(5)?,
        outcome: r.get::<_, String>(6)?.parse().map_err(|e: String| {
            rusqlite::Error::FromSqlConversionFailure(6, rusqlite::types::Type::Text, e.into())
        })?,
    })
}

pub fn get(conn: &Connection, app: &str, version: i64) -> rusqlite::Result<Option<Version>> {
    conn.query_row(
        "SELECT app, version, digest, spec, source, deployed_at, outcome FROM app_versions WHERE app = ?1 AND version = ?2",
        params![app, version],
        version_from_row,
    )
    .optional()
}

/// Every version of an app, newest first.
pub fn versions(conn: &Connection, app: &str) -> rusqlite::Result<Vec<Version>> {
    conn.prepare("SELECT app, version, digest, spec, source, deployed_at, outcome FROM app_versions WHERE app = ?1 ORDER BY version DESC")?
        .query_map(params![app], version_from_row)?
        .collect()
}

pub fn set_outcome(
    conn: &Connection,
    app: &str,
    version: i64,
    outcome: &Outcome,
) -> rusqlite::Result<()> {
    conn.execute(
        "UPDATE app_versions SET outcome = ?3 WHERE app = ?1 AND version = ?2",
        params![app, version, outcome.to_string()],
    )?;
    Ok(())
}

pub fn current(conn: &Connection, app: &str) -> rusqlite::Result<Option<Current>> {
    conn.query_row(
        "SELECT app, version, stopped, config_digest FROM app_deployments WHERE app = ?1",
        params![app],
        |r| {
            Ok(Current {
                app: r.get(0)?,
                version: r.get(1)?,
                stopped: r.get::<_, i64>(2)? != 0,
                config_digest: r.get(3)?,
            })
        },
    )
    .optional()
}

/// Every app with a deployment, by name.
pub fn all(conn: &Connection) -> rusqlite::Result<Vec<Current>> {
    conn.prepare("SELECT app, version, stopped, config_digest FROM app_deployments ORDER BY app")?
        .query_map([], |r| {
            Ok(Current {
                app: r.get(0)?,
                version: r.get(1)?,
                stopped: r.get::<_, i64>(2)? != 0,
                config_digest: r.get(3)?,
            })
        })?
        .collect()
}

/// Make `version` the one the app runs.
pub fn set_current(conn: &Connection, app: &str, version: i64) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO app_deployments (app, version) VALUES (?1, ?2)
         ON CONFLICT (app) DO UPDATE SET version = excluded.version",
        params![app, version],
    )?;
    Ok(())
}

pub fn set_config_digest(conn: &Connection, app: &str, digest: &str) -> rusqlite::Result<()> {
    conn.execute(
        "UPDATE app_deployments SET config_digest = ?2 WHERE app = ?1",
        params![app, digest],
    )?;
    Ok(())
}

pub fn set_stopped(conn: &Connection, app: &str, stopped: bool) -> rusqlite::Result<()> {
    conn.execute(
        "UPDATE app_deployments SET stopped = ?2 WHERE app = ?1",
        params![app, stopped as i64],
    )?;
    Ok(())
}

/// Forget an app and its versions.
pub fn remove(conn: &Connection, app: &str) -> rusqlite::Result<()> {
    conn.execute("DELETE FROM app_versions WHERE app = ?1", params![app])?;
    conn.execute("DELETE FROM app_deployments WHERE app = ?1", params![app])?;
    Ok(())
}

/// Keep the current version and the `keep` newest others; forget the rest.
pub fn prune(conn: &Connection, app: &str, keep: usize) -> rusqlite::Result<()> {
    let Some(current) = current(conn, app)? else {
        return Ok(());
    };
    let older: Vec<i64> = versions(conn, app)?
        .into_iter()
        .map(|v| v.version)
        .filter(|v| *v != current.version)
        .skip(keep)
        .collect();
    for v in older {
        conn.execute(
            "DELETE FROM app_versions WHERE app = ?1 AND version = ?2",
            params![app, v],
        )?;
    }
    Ok(())
}

/// Make `version` the app's current one, with `outcome`, in one
/// transaction: neither a reader nor a crash sees it current without it.
pub fn make_current(
    conn: &Connection,
    app: &str,
    version: i64,
    outcome: &Outcome,
) -> rusqlite::Result<()> {
    let tx = rusqlite::Transaction::new_unchecked(conn, rusqlite::TransactionBehavior::Immediate)?;
    set_current(&tx, app, version)?;
    set_outcome(&tx, app, version, outcome)?;
    tx.commit()
}

/// Record how a probation ended: a version kept runs and the one before it
/// is replaced; a version rolled back is marked so, with its reason, and the
/// previous one is current and running again. Returns the version rolled
/// back to, whose spec routes the app's device again.
pub fn settle(
    conn: &Connection,
    app: &str,
    version: i64,
    previous: i64,
    outcome: &crate::app::Outcome,
) -> rusqlite::Result<Option<Version>> {
    match outcome {
        crate::app::Outcome::Kept => {
            set_outcome(conn, app, version, &Outcome::Running)?;
            set_outcome(conn, app, previous, &Outcome::Replaced)?;
            Ok(None)
        }
        crate::app::Outcome::RolledBack(reason) => {
            // One transaction: neither a reader nor a crash may see the
            // version rolled back while it is still the current one.
            let tx = rusqlite::Transaction::new_unchecked(
                conn,
                rusqlite::TransactionBehavior::Immediate,
            )?;
            set_outcome(&tx, app, version, &Outcome::RolledBack(reason.clone()))?;
            set_current(&tx, app, previous)?;
            set_outcome(&tx, app, previous, &Outcome::Running)?;
            let record = get(&tx, app, previous)?;
            tx.commit()?;
            Ok(record)
        }
        // The gateway stopped during the probation: the version stays on
        // probation in the registry, and starts as current next time.
        crate::app::Outcome::Interrupted => Ok(None),
    }
}

/// The version an operator's rollback goes to: the newest one before
/// `current` that ran (neither refused nor rolled back). `versions` is
/// newest first, as [`versions`] gives them.
pub fn rollback_target(versions: &[Version], current: i64) -> Option<&Version> {
    versions
        .iter()
        .find(|v| v.version < current && v.outcome.ran())
}

/// Every component digest some version still uses.
pub fn digests_in_use(conn: &Connection) -> rusqlite::Result<std::collections::HashSet<String>> {
    conn.prepare("SELECT DISTINCT digest FROM app_versions")?
        .query_map([], |r| r.get(0))?
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn outcomes_read_back_as_they_were_written() {
        for outcome in [
            Outcome::Deploying,
            Outcome::OnProbation,
            Outcome::Running,
            Outcome::Replaced,
            Outcome::RolledBack("trap in on-tick".into()),
            Outcome::RolledBackByOperator,
            Outcome::Refused("init returned an error: no".into()),
        ] {
            let text = outcome.to_string();
            assert_eq!(text.parse::<Outcome>(), Ok(outcome.clone()), "{text}");
            let json = serde_json::to_string(&outcome).expect("json");
            assert_eq!(
                serde_json::from_str::<Outcome>(&json).expect("back"),
                outcome
            );
        }
        assert!("gone fishing".parse::<Outcome>().is_err());
        assert!(Outcome::Replaced.ran() && !Outcome::Refused(String::new()).ran());
    }

    use super::*;

    fn spec() -> Spec {
        Spec {
            device: "d".into(),
            tick_interval_ms: 1000,
            call_timeout_ms: 500,
            memory_limit_bytes: 1 << 20,
            storage_quota_bytes: 1024,
            disk_quota_bytes: 1 << 20,
            config: vec![("k".into(), "v".into())],
            restart: RestartPolicy::default(),
            model: serde_json::json!({}),
            device_models: BTreeMap::from([("s".into(), serde_json::json!({}))]),
            max_devices: 7,
            grants: Default::default(),
            io_wait_ms: 10_000,
            io_requests_per_s: 200,
            bus_queue: 256,
            synced: Default::default(),
        }
    }

    #[test]
    fn a_spec_written_before_registrations_existed_still_reads() {
        let mut old = serde_json::to_value(spec()).expect("json");
        let object = old.as_object_mut().expect("object");
        object.remove("device_models");
        object.remove("max_devices");
        let read: Spec = serde_json::from_value(old).expect("an older spec reads");
        assert!(read.device_models.is_empty());
        assert_eq!(read.max_devices, crate::registration::DEFAULT_MAX_DEVICES);
    }

    #[test]
    fn versions_are_numbered_kept_current_and_pruned() {
        let conn = Connection::open_in_memory().expect("db");
        conn.execute_batch(SCHEMA).expect("schema");
        for i in 1..=5 {
            let v = add(&conn, "a", &format!("digest{i}"), &spec(), "cli").expect("add");
            assert_eq!(v, i);
        }
        set_current(&conn, "a", 2).expect("current");
        set_stopped(&conn, "a", true).expect("stop");
        let cur = current(&conn, "a").expect("read").expect("current");
        assert_eq!((cur.version, cur.stopped), (2, true));
        prune(&conn, "a", 2).expect("prune");
        let left: Vec<i64> = versions(&conn, "a")
            .expect("versions")
            .iter()
            .map(|v| v.version)
            .collect();
        assert_eq!(
            left,
            vec![5, 4, 2],
            "the current one and the two newest others"
        );
        assert_eq!(get(&conn, "a", 2).expect("get").expect("v2").spec, spec());
        assert!(digests_in_use(&conn).expect("digests").contains("digest4"));
        remove(&conn, "a").expect("remove");
        assert!(all(&conn).expect("all").is_empty());
    }

    #[test]
    fn a_version_made_current_has_its_outcome_or_is_not_current() {
        let conn = Connection::open_in_memory().expect("db");
        conn.execute_batch(SCHEMA).expect("schema");
        let v = add(&conn, "a", "digest", &spec(), "cli").expect("add");
        make_current(&conn, "a", v, &Outcome::OnProbation).expect("current");
        assert_eq!(
            current(&conn, "a").expect("read").expect("current").version,
            v
        );
        assert_eq!(
            versions(&conn, "a").expect("versions")[0].outcome,
            Outcome::OnProbation
        );
        // Should recording the next version's outcome fail, it does not
        // become current either.
        let w = add(&conn, "a", "digest2", &spec(), "cli").expect("add");
        conn.execute_batch(&format!(
            "CREATE TRIGGER refuse BEFORE UPDATE OF outcome ON app_versions WHEN new.version = {w}
             BEGIN SELECT RAISE(ABORT, 'refused'); END;"
        ))
        .expect("trigger");
        assert!(make_current(&conn, "a", w, &Outcome::Running).is_err());
        assert_eq!(
            current(&conn, "a").expect("read").expect("current").version,
            v
        );
    }

    #[test]
    fn a_deployment_id_is_taken_once_and_versions_only_grow() {
        let mut conn = Connection::open_in_memory().expect("db");
        conn.execute_batch(SCHEMA).expect("schema");
        accept_deployment(&mut conn, "d1", "a", 5).expect("first");
        assert!(matches!(
            accept_deployment(&mut conn, "d1", "a", 9),
            Err(Replay::SeenId { version: 5, .. })
        ));
        for older in [5, 4] {
            assert_eq!(
                accept_deployment(&mut conn, "d2", "a", older),
                Err(Replay::NotNewer {
                    app: "a".into(),
                    version: older,
                    highest: 5
                })
            );
        }
        // Another app has its own numbers.
        accept_deployment(&mut conn, "d3", "b", 1).expect("other app");
        accept_deployment(&mut conn, "d2", "a", 6).expect("newer");
        // A refused one left nothing behind: d4 is still free.
        accept_deployment(&mut conn, "d4", "a", 7).expect("d4");
        assert!(accept_deployment(&mut conn, "d5", "a", u64::MAX).is_err());
    }

    #[test]
    fn a_deployment_that_never_ended_resumes_until_it_ends_or_a_newer_one_is_taken() {
        let mut conn = Connection::open_in_memory().expect("db");
        conn.execute_batch(SCHEMA).expect("schema");
        assert_eq!(accept_deployment(&mut conn, "d1", "a", 5), Ok(Taken::New));
        // The gateway stopped while receiving d1: offered again, it resumes.
        assert_eq!(
            accept_deployment(&mut conn, "d1", "a", 5),
            Ok(Taken::Resumed)
        );
        end_deployment(&conn, "d1", "deployed").expect("end");
        assert!(matches!(
            accept_deployment(&mut conn, "d1", "a", 5),
            Err(Replay::SeenId { .. })
        ));
        // One left unended is no longer resumable once a newer one is taken.
        assert_eq!(accept_deployment(&mut conn, "d2", "a", 6), Ok(Taken::New));
        assert_eq!(accept_deployment(&mut conn, "d3", "a", 7), Ok(Taken::New));
        assert!(matches!(
            accept_deployment(&mut conn, "d2", "a", 6),
            Err(Replay::SeenId { .. })
        ));
    }

    fn outcome_of(conn: &Connection, version: i64) -> Outcome {
        get(conn, "a", version)
            .expect("get")
            .expect("version")
            .outcome
    }

    #[test]
    fn a_probation_kept_replaces_the_previous_version_and_one_rolled_back_restores_it() {
        let conn = Connection::open_in_memory().expect("db");
        conn.execute_batch(SCHEMA).expect("schema");
        for i in 1..=3 {
            add(&conn, "a", &format!("digest{i}"), &spec(), "cli").expect("add");
        }
        set_current(&conn, "a", 2).expect("current");
        set_outcome(&conn, "a", 1, &Outcome::Running).expect("v1");
        set_outcome(&conn, "a", 2, &Outcome::OnProbation).expect("v2");

        let kept = settle(&conn, "a", 2, 1, &crate::app::Outcome::Kept).expect("settle");
        assert!(kept.is_none());
        assert_eq!(outcome_of(&conn, 2), Outcome::Running);
        assert_eq!(outcome_of(&conn, 1), Outcome::Replaced);

        set_current(&conn, "a", 3).expect("current");
        set_outcome(&conn, "a", 3, &Outcome::OnProbation).expect("v3");
        let back = settle(
            &conn,
            "a",
            3,
            2,
            &crate::app::Outcome::RolledBack("trap in on-tick".into()),
        )
        .expect("settle")
        .expect("the version rolled back to");
        assert_eq!(back.version, 2);
        assert_eq!(current(&conn, "a").expect("read").expect("cur").version, 2);
        assert_eq!(outcome_of(&conn, 2), Outcome::Running);
        assert_eq!(
            outcome_of(&conn, 3),
            Outcome::RolledBack("trap in on-tick".into())
        );

        // The operator's rollback from 2 skips nothing that ran: it is 1
        // (replaced, but it ran); from 1 there is none.
        let all = versions(&conn, "a").expect("versions");
        assert_eq!(rollback_target(&all, 2).map(|v| v.version), Some(1));
        assert!(rollback_target(&all, 1).is_none());
        // A version that was refused or rolled back is never a target.
        set_outcome(&conn, "a", 1, &Outcome::Refused("bad".into())).expect("v1");
        let all = versions(&conn, "a").expect("versions");
        assert!(rollback_target(&all, 3).map(|v| v.version) == Some(2));
        assert!(rollback_target(&all, 2).is_none());
    }
}

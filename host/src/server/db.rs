//! `serve`'s database: SQLite (the default, one file) or PostgreSQL, through
//! one code path (sqlx's Any driver), with versioned migrations embedded in
//! the binary. Every write of a batch of records is one transaction, so the
//! broker is acknowledged only for what is committed.
//!
//! The SQL is what both databases take: `$N` placeholders, `ON CONFLICT`
//! upserts, BIGINT times in nanoseconds and JSON as TEXT. Booleans are read
//! through `CASE WHEN ... THEN 1 ELSE 0 END`: the Any driver cannot decode
//! SQLite's BOOLEAN columns.

use serde_json::Value;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::{AnyPool, AssertSqlSafe, Row, SqlSafeStr};

use super::record::Record;

/// The migrations, in order; a new one is appended, never edited.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "initial", include_str!("schema/0001_initial.sql")),
    (2, "labels", include_str!("schema/0002_labels.sql")),
    (3, "rollouts", include_str!("schema/0003_rollouts.sql")),
    (
        4,
        "provisioning",
        include_str!("schema/0004_provisioning.sql"),
    ),
    (5, "synced", include_str!("schema/0005_synced.sql")),
];

/// Which database a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn of(url: &str) -> Result<Backend, String> {
        if url.starts_with("sqlite:") {
            Ok(Backend::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Backend::Postgres)
        } else {
            Err(format!(
                "{:?} is not a database URL: use sqlite://FILE or postgres://USER@HOST/DB",
                redact(url)
            ))
        }
    }
}

/// A URL without its password, for errors and logs.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        _ => url.to_string(),
    }
}

/// What one write stored.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Stored {
    pub points: u64,
    /// Batches and alerts already stored, skipped.
    pub duplicates: u64,
    /// The changesets down the commit made (of plain-SQL edits that were
    /// waiting in a table a gateway's changeset came for), to send once
    /// committed, as the pulls that send them.
    pub down: Vec<super::tables::Pull>,
}

#[derive(Clone)]
pub struct Db {
    pool: AnyPool,
    pub backend: Backend,
}

impl Db {
    /// Connect, creating a SQLite file if there is none, and bring the
    /// schema up to date.
    pub async fn open(url: &str) -> anyhow::Result<Db> {
        sqlx::any::install_default_drivers();
        let backend = Backend::of(url).map_err(anyhow::Error::msg)?;
        let url = match backend {
            // Create the file (and say so in the URL only if the user did
            // not choose a mode).
            Backend::Sqlite if !url.contains("mode=") => {
                let sep = if url.contains('?') { '&' } else { '?' };
                format!("{url}{sep}mode=rwc")
            }
            _ => url.to_string(),
        };
        let pool = AnyPoolOptions::new()
            // SQLite takes one writer at a time; readers go beside it.
            .max_connections(match backend {
                Backend::Sqlite => 4,
                Backend::Postgres => 8,
            })
            .connect(&url)
            .await
            .map_err(|e| anyhow::anyhow!("cannot open the database {}: {e}", redact(&url)))?;
        if backend == Backend::Sqlite {
            // Readers (the API, the rollout driver's reads) beside the one
            // writer, rather than blocking it; kept in the file.
            sqlx::query("PRAGMA journal_mode = WAL")
                .execute(&pool)
                .await
                .map_err(|e| anyhow::anyhow!("cannot use WAL on {}: {e}", redact(&url)))?;
        }
        let db = Db { pool, backend };
        db.migrate().await?;
        Ok(db)
    }

    /// A transaction that writes. On SQLite it takes the write lock at
    /// once (`BEGIN IMMEDIATE`), so it waits its turn (the busy timeout)
    /// instead of failing when another writer went first after it read.
    pub async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>, sqlx::Error> {
        match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await,
            Backend::Postgres => self.pool.begin().await,
        }
    }

    async fn migrate(&self) -> anyhow::Result<()> {
        let migrations = MIGRATIONS
            .iter()
            .map(|(version, name, sql)| {
                Migration::new(
                    *version,
                    (*name).into(),
                    MigrationType::Simple,
                    sql.into_sql_str(),
                    false,
                )
            })
            .collect();
        Migrator::with_migrations(migrations)
            .run(&self.pool)
            .await
            .map_err(|e| anyhow::anyhow!("cannot bring the database schema up to date: {e}"))
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Store `records` in one transaction, at `now` (ns).
    pub async fn store(&self, records: &[Record], now: i64) -> Result<Stored, sqlx::Error> {
        let mut tx = self.begin_write().await?;
        let mut stored = Stored::default();
        for record in records {
            store_one(&mut tx, self.backend, record, now, &mut stored).await?;
        }
        tx.commit().await?;
        Ok(stored)
    }
}

pub(super) type Tx<'a> = sqlx::Transaction<'a, sqlx::Any>;

/// Now in milliseconds since the epoch, as the rollout and provisioning
/// tables keep times.
pub fn now_ms() -> i64 {
    (crate::value::now_ns() / 1_000_000) as i64
}

/// An error that a moment may clear: SQLite busy or locked (a writer
/// waited past the busy timeout), a PostgreSQL serialization failure or
/// deadlock. Tried again, never taken as the database refusing a record.
pub fn is_transient(error: &sqlx::Error) -> bool {
    let sqlx::Error::Database(e) = error else {
        return false;
    };
    let code = e.code().unwrap_or_default();
    // SQLite's primary code is the low byte of an extended one (517 is
    // SQLITE_BUSY_SNAPSHOT, a kind of 5).
    let sqlite = code.parse::<i32>().map(|c| c & 0xff);
    matches!(sqlite, Ok(5 | 6)) || matches!(code.as_ref(), "40001" | "40P01")
}

pub(super) fn json_text(value: &impl serde::Serialize) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

/// Times and versions are unsigned on the wire and BIGINT here: past
/// 2^63 - 1 they are kept at that.
fn int(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

async fn store_one(
    tx: &mut Tx<'_>,
    backend: Backend,
    record: &Record,
    now: i64,
    stored: &mut Stored,
) -> Result<(), sqlx::Error> {
    match record {
        Record::Telemetry {
            gateway,
            device,
            series,
            batch,
        } => {
            let fresh = sqlx::query(
                "INSERT INTO batches (gateway, batch, device, series, points, stored_at)
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
            )
            .bind(gateway)
            .bind(&batch.batch)
            .bind(device)
            .bind(series)
            .bind(batch.points.len() as i64)
            .bind(now)
            .execute(&mut **tx)
            .await?
            .rows_affected()
                > 0;
            if !fresh {
                stored.duplicates += 1;
                return Ok(());
            }
            insert_points(tx, gateway, device, series, batch).await?;
            stored.points += batch.points.len() as u64;
        }
        Record::Alert {
            gateway,
            device,
            name,
            alert,
        } => {
            let fresh = sqlx::query(
                "INSERT INTO alerts (id, gateway, device, name, time, severity, values_json)
                 VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
            )
            .bind(&alert.id)
            .bind(gateway)
            .bind(device)
            .bind(name)
            .bind(int(alert.time))
            .bind(&alert.severity)
            .bind(json_text(&alert.values))
            .execute(&mut **tx)
            .await?
            .rows_affected()
                > 0;
            if !fresh {
                stored.duplicates += 1;
            }
        }
        Record::Reported {
            gateway,
            device,
            reported,
        } => {
            // Only a newer report replaces the one stored (a retained one
            // seen again after a reconnect is older or the same).
            sqlx::query(
                "INSERT INTO twins (gateway, device, reported, reported_version, reported_time)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (gateway, device) DO UPDATE SET
                     reported = excluded.reported,
                     reported_version = excluded.reported_version,
                     reported_time = excluded.reported_time
                 WHERE twins.reported_version IS NULL
                    OR twins.reported_version <= excluded.reported_version",
            )
            .bind(gateway)
            .bind(device)
            .bind(json_text(&reported.attributes))
            .bind(int(reported.version))
            .bind(int(reported.time))
            .execute(&mut **tx)
            .await?;
        }
        Record::Desired {
            gateway,
            device,
            desired,
        } => {
            let version = desired
                .as_ref()
                .and_then(|d| d["version"].as_u64())
                .map(int);
            let attributes = desired.as_ref().map(|d| json_text(&d["attributes"]));
            sqlx::query(
                "INSERT INTO twins (gateway, device, desired, desired_version)
                 VALUES ($1, $2, $3, $4)
                 ON CONFLICT (gateway, device) DO UPDATE SET
                     desired = excluded.desired, desired_version = excluded.desired_version",
            )
            .bind(gateway)
            .bind(device)
            .bind(attributes)
            .bind(version)
            .execute(&mut **tx)
            .await?;
        }
        Record::Ack {
            gateway,
            device,
            ack,
            json,
        } => {
            sqlx::query(
                "INSERT INTO twins (gateway, device, ack, ack_version)
                 VALUES ($1, $2, $3, $4)
                 ON CONFLICT (gateway, device) DO UPDATE SET
                     ack = excluded.ack, ack_version = excluded.ack_version",
            )
            .bind(gateway)
            .bind(device)
            .bind(json)
            .bind(ack.version.map(int))
            .execute(&mut **tx)
            .await?;
        }
        Record::Status {
            gateway,
            status,
            json,
        } => store_status(tx, gateway, status, json, now).await?,
        Record::Registration {
            gateway,
            device,
            json,
        } => {
            let app = json
                .as_deref()
                .and_then(|j| serde_json::from_str::<Value>(j).ok())
                .and_then(|v| v["app"].as_str().map(str::to_string));
            sqlx::query(
                "INSERT INTO devices (gateway, device, app, registration) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (gateway, device) DO UPDATE SET
                     app = COALESCE(excluded.app, devices.app),
                     registration = excluded.registration",
            )
            .bind(gateway)
            .bind(device)
            .bind(app)
            .bind(json.as_deref())
            .execute(&mut **tx)
            .await?;
        }
        Record::Model {
            gateway,
            device,
            json,
        } => {
            sqlx::query(
                "INSERT INTO devices (gateway, device, model) VALUES ($1, $2, $3)
                 ON CONFLICT (gateway, device) DO UPDATE SET model = excluded.model",
            )
            .bind(gateway)
            .bind(device)
            .bind(json.as_deref())
            .execute(&mut **tx)
            .await?;
        }
        Record::Deployment { gateway, progress } => {
            // A progress without an id (a manifest that could not be read)
            // belongs to no deployment.
            let Some(id) = &progress.id else {
                return Ok(());
            };
            sqlx::query(
                "INSERT INTO deployments (gateway, id, stage, received, chunks, message, error, updated_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                 ON CONFLICT (gateway, id) DO UPDATE SET
                     stage = excluded.stage, received = excluded.received,
                     chunks = excluded.chunks, message = excluded.message,
                     error = excluded.error, updated_at = excluded.updated_at
                 WHERE deployments.stage NOT IN ('deployed', 'failed')",
            )
            .bind(gateway)
            .bind(id)
            .bind(&progress.stage)
            .bind(int(progress.received))
            .bind(int(progress.chunks))
            .bind(progress.message.as_deref())
            .bind(progress.error.as_deref())
            .bind(now)
            .execute(&mut **tx)
            .await?;
        }
        // Answers go to whoever asked (the API), not to the database; a
        // pull is answered once the commit it came with is done.
        Record::ActionResponse { .. } | Record::Pull(_) => {}
        Record::Changeset {
            gateway,
            device,
            changeset,
        } => {
            match super::tables::apply_changeset(tx, backend, gateway, device, changeset, now)
                .await?
            {
                super::tables::Applied::Duplicate => stored.duplicates += 1,
                super::tables::Applied::Fresh { down: None } => {}
                super::tables::Applied::Fresh { down: Some(down) } => {
                    stored.down.push(super::tables::Pull {
                        gateway: gateway.clone(),
                        device: device.clone(),
                        after: down.seq.unwrap_or(1).saturating_sub(1),
                        table: down.table,
                    });
                }
            }
        }
    }
    Ok(())
}

/// Rows per INSERT of points: 9 parameters each, well within both
/// databases' limits on parameters per statement.
const POINT_ROWS_PER_INSERT: usize = 400;

async fn insert_points(
    tx: &mut Tx<'_>,
    gateway: &str,
    device: &str,
    series: &str,
    batch: &crate::wire::protocol::TelemetryBatch,
) -> Result<(), sqlx::Error> {
    let rows: Vec<(i64, &str, &Value, i64)> = batch
        .points
        .iter()
        .enumerate()
        .flat_map(|(i, p)| {
            p.values
                .iter()
                .map(move |(field, value)| (int(p.time), field.as_str(), value, i as i64))
        })
        .collect();
    for chunk in rows.chunks(POINT_ROWS_PER_INSERT) {
        let mut sql = String::from(
            "INSERT INTO points (gateway, device, series, field, time, value, value_json, batch, point) VALUES ",
        );
        for i in 0..chunk.len() {
            let n = i * 9;
            if i > 0 {
                sql.push(',');
            }
            sql.push_str(&format!(
                "(${}, ${}, ${}, ${}, ${}, ${}, ${}, ${}, ${})",
                n + 1,
                n + 2,
                n + 3,
                n + 4,
                n + 5,
                n + 6,
                n + 7,
                n + 8,
                n + 9
            ));
        }
        // Only placeholders are formatted into the statement; every value
        // is bound.
        let mut query = sqlx::query(AssertSqlSafe(sql));
        for (time, field, value, point) in chunk {
            query = query
                .bind(gateway)
                .bind(device)
                .bind(series)
                .bind(*field)
                .bind(*time)
                .bind(numeric(value))
                .bind(value.to_string())
                .bind(&batch.batch)
                .bind(*point);
        }
        query.execute(&mut **tx).await?;
    }
    Ok(())
}

/// A value as a number, for aggregates: numbers, and booleans as 0 or 1.
fn numeric(value: &Value) -> Option<f64> {
    match value {
        Value::Number(n) => n.as_f64(),
        Value::Bool(b) => Some(f64::from(u8::from(*b))),
        _ => None,
    }
}

async fn store_status(
    tx: &mut Tx<'_>,
    gateway: &str,
    status: &crate::wire::protocol::Status,
    json: &str,
    now: i64,
) -> Result<(), sqlx::Error> {
    let was_online: Option<bool> =
        sqlx::query("SELECT CASE WHEN online THEN 1 ELSE 0 END FROM gateways WHERE gateway = $1")
            .bind(gateway)
            .fetch_optional(&mut **tx)
            .await?
            .map(|row| row.try_get::<i64, _>(0).map(|n| n != 0))
            .transpose()?;
    sqlx::query(
        "INSERT INTO gateways (gateway, online, reason, status_time, stored_at, status, labels)
         VALUES ($1, $2, $3, $4, $5, $6, COALESCE($7, '{}'))
         ON CONFLICT (gateway) DO UPDATE SET
             online = excluded.online, reason = excluded.reason,
             status_time = excluded.status_time, stored_at = excluded.stored_at,
             status = excluded.status,
             labels = COALESCE($7, gateways.labels)",
    )
    .bind(gateway)
    .bind(status.online)
    .bind(status.reason.as_deref())
    .bind(status.time.map(int))
    .bind(now)
    .bind(json)
    // A last will (no time) says nothing of the labels.
    .bind(status.time.map(|_| json_text(&status.labels)))
    .execute(&mut **tx)
    .await?;
    if was_online != Some(status.online) {
        sqlx::query(
            "INSERT INTO gateway_events (gateway, time, online, reason) VALUES ($1, $2, $3, $4)",
        )
        .bind(gateway)
        .bind(status.time.map_or(now, int))
        .bind(status.online)
        .bind(status.reason.as_deref())
        .execute(&mut **tx)
        .await?;
    }
    // A last will lists no apps: the apps stay as last reported.
    if status.apps.is_empty() && !status.online {
        return Ok(());
    }
    sqlx::query("DELETE FROM apps WHERE gateway = $1")
        .bind(gateway)
        .execute(&mut **tx)
        .await?;
    for app in &status.apps {
        sqlx::query(
            "INSERT INTO apps (gateway, name, device, state, version, component, restarts, error)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(gateway)
        .bind(&app.name)
        .bind(&app.device)
        .bind(json_text(&app.state).trim_matches('"').to_string())
        .bind(app.version)
        .bind(&app.component)
        .bind(int(app.restarts))
        .bind(app.error.as_deref())
        .execute(&mut **tx)
        .await?;
        sqlx::query(
            "INSERT INTO devices (gateway, device, app) VALUES ($1, $2, $3)
             ON CONFLICT (gateway, device) DO UPDATE SET app = excluded.app",
        )
        .bind(gateway)
        .bind(&app.device)
        .bind(&app.name)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

// ---- reads, for the API ----

fn text_json(text: Option<String>) -> Value {
    text.and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(Value::Null)
}

/// How a column is read into the API's JSON.
#[derive(Debug, Clone, Copy)]
pub(super) enum Col {
    Text,
    OptText,
    Int,
    OptInt,
    /// A boolean, selected as `CASE WHEN ... THEN 1 ELSE 0 END`.
    Flag,
    /// JSON kept as TEXT (null when absent).
    Json,
}

/// A row as a JSON object: column `i` under `columns[i]`'s name.
pub(super) fn row_json(row: &AnyRow, columns: &[(&str, Col)]) -> Result<Value, sqlx::Error> {
    let mut object = serde_json::Map::new();
    for (i, (name, col)) in columns.iter().enumerate() {
        let value = match col {
            Col::Text => Value::from(row.try_get::<String, _>(i)?),
            Col::OptText => Value::from(row.try_get::<Option<String>, _>(i)?),
            Col::Int => Value::from(row.try_get::<i64, _>(i)?),
            Col::OptInt => Value::from(row.try_get::<Option<i64>, _>(i)?),
            Col::Flag => Value::from(row.try_get::<i64, _>(i)? != 0),
            Col::Json => text_json(row.try_get(i)?),
        };
        object.insert((*name).to_string(), value);
    }
    Ok(Value::Object(object))
}

pub(super) fn rows_json(
    rows: &[AnyRow],
    columns: &[(&str, Col)],
) -> Result<Vec<Value>, sqlx::Error> {
    rows.iter().map(|r| row_json(r, columns)).collect()
}

impl Db {
    /// Every gateway: id, online, reason, when its status was stored, its
    /// apps and its outbox.
    pub async fn gateways(&self) -> Result<Vec<Value>, sqlx::Error> {
        self.gateways_where(None).await
    }

    pub async fn gateway(&self, gateway: &str) -> Result<Option<Value>, sqlx::Error> {
        Ok(self.gateways_where(Some(gateway)).await?.pop())
    }

    /// The gateways (all, or the one named) with their apps: two queries,
    /// however many gateways there are.
    async fn gateways_where(&self, gateway: Option<&str>) -> Result<Vec<Value>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT gateway, CASE WHEN online THEN 1 ELSE 0 END, reason, status_time, stored_at, labels, status
             FROM gateways WHERE ($1 IS NULL OR gateway = $1) ORDER BY gateway",
        )
        .bind(gateway)
        .fetch_all(&self.pool)
        .await?;
        let app_rows = sqlx::query(
            "SELECT gateway, name, device, state, version, component, restarts, error FROM apps
             WHERE ($1 IS NULL OR gateway = $1) ORDER BY gateway, name",
        )
        .bind(gateway)
        .fetch_all(&self.pool)
        .await?;
        let mut apps: std::collections::HashMap<String, Vec<Value>> = Default::default();
        for mut app in rows_json(
            &app_rows,
            &[
                ("gateway", Col::Text),
                ("name", Col::Text),
                ("device", Col::Text),
                ("state", Col::Text),
                ("version", Col::Int),
                ("component", Col::Text),
                ("restarts", Col::Int),
                ("error", Col::OptText),
            ],
        )? {
            let owner = app
                .as_object_mut()
                .and_then(|a| a.remove("gateway"))
                .and_then(|g| g.as_str().map(str::to_string))
                .unwrap_or_default();
            apps.entry(owner).or_default().push(app);
        }
        rows.iter()
            .map(|row| {
                let mut gateway = row_json(
                    row,
                    &[
                        ("gateway", Col::Text),
                        ("online", Col::Flag),
                        ("reason", Col::OptText),
                        ("status_time", Col::OptInt),
                        ("stored_at", Col::Int),
                        ("labels", Col::Json),
                        ("status", Col::Json),
                    ],
                )?;
                // Of the whole status only the broker it is on and the
                // outbox are served here.
                let status = gateway
                    .as_object_mut()
                    .and_then(|g| g.remove("status"))
                    .unwrap_or_default();
                let id = gateway["gateway"].as_str().unwrap_or_default().to_string();
                gateway["apps"] = Value::Array(apps.remove(&id).unwrap_or_default());
                gateway["broker"] = status["broker"].clone();
                gateway["outbox"] = status["outbox"].clone();
                Ok(gateway)
            })
            .collect()
    }

    /// A gateway's online/offline history, oldest first.
    pub async fn history(&self, gateway: &str) -> Result<Vec<Value>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT time, CASE WHEN online THEN 1 ELSE 0 END, reason FROM gateway_events
             WHERE gateway = $1 ORDER BY time",
        )
        .bind(gateway)
        .fetch_all(&self.pool)
        .await?;
        rows_json(
            &rows,
            &[
                ("time", Col::Int),
                ("online", Col::Flag),
                ("reason", Col::OptText),
            ],
        )
    }

    /// A gateway's devices: id, app, registration and whether a model is
    /// known.
    pub async fn devices(&self, gateway: &str) -> Result<Vec<Value>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT device, app, registration, CASE WHEN model IS NULL THEN 0 ELSE 1 END FROM devices
             WHERE gateway = $1 ORDER BY device",
        )
        .bind(gateway)
        .fetch_all(&self.pool)
        .await?;
        rows_json(
            &rows,
            &[
                ("device", Col::Text),
                ("app", Col::OptText),
                ("registration", Col::Json),
                ("model_known", Col::Flag),
            ],
        )
    }

    /// A synced table's rows as readers see them, in key order: at most
    /// `limit` after key `after` (deleted rows are left out).
    pub async fn synced_rows(
        &self,
        gateway: &str,
        device: &str,
        table: &str,
        after: &str,
        limit: i64,
    ) -> Result<Vec<Value>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT key, columns, updated_at FROM synced_rows
             WHERE gateway = $1 AND device = $2 AND tbl = $3 AND key > $4
               AND columns IS NOT NULL
             ORDER BY key LIMIT $5",
        )
        .bind(gateway)
        .bind(device)
        .bind(table)
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows_json(
            &rows,
            &[
                ("key", Col::Text),
                ("columns", Col::Json),
                ("updated_at", Col::Int),
            ],
        )
    }

    /// What the merge overwrote in a synced table, newest first: each
    /// version that lost, with the one kept.
    pub async fn synced_overwritten(
        &self,
        gateway: &str,
        device: &str,
        table: &str,
        limit: i64,
    ) -> Result<Vec<Value>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT key, col, kept, lost, recorded_at FROM synced_overwritten
             WHERE gateway = $1 AND device = $2 AND tbl = $3
             ORDER BY recorded_at DESC, key, col, lost_stamp LIMIT $4",
        )
        .bind(gateway)
        .bind(device)
        .bind(table)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows_json(
            &rows,
            &[
                ("key", Col::Text),
                ("column", Col::Text),
                ("kept", Col::Json),
                ("lost", Col::Json),
                ("recorded_at", Col::Int),
            ],
        )
    }

    /// The device's model (JSON text): `None` if its gateway announced no
    /// such device (in its status or a registration), `Some(None)` if it
    /// announced the device but not its model.
    pub async fn model(
        &self,
        gateway: &str,
        device: &str,
    ) -> Result<Option<Option<String>>, sqlx::Error> {
        sqlx::query("SELECT model FROM devices WHERE gateway = $1 AND device = $2")
            .bind(gateway)
            .bind(device)
            .fetch_optional(&self.pool)
            .await?
            .map(|r| r.try_get::<Option<String>, _>(0))
            .transpose()
    }

    pub async fn twin(&self, gateway: &str, device: &str) -> Result<Option<Value>, sqlx::Error> {
        let row = sqlx::query(
            "SELECT reported, reported_version, reported_time, desired, desired_version, ack
             FROM twins WHERE gateway = $1 AND device = $2",
        )
        .bind(gateway)
        .bind(device)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            row_json(
                &r,
                &[
                    ("reported", Col::Json),
                    ("reported_version", Col::OptInt),
                    ("reported_time", Col::OptInt),
                    ("desired", Col::Json),
                    ("desired_version", Col::OptInt),
                    ("ack", Col::Json),
                ],
            )
        })
        .transpose()
    }

    /// Points of a series in `[from, to)`, in order: `{time, values}`.
    pub async fn points(
        &self,
        gateway: &str,
        device: &str,
        series: &str,
        from: i64,
        to: i64,
        limit: i64,
    ) -> Result<Vec<Value>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT time, batch, point, field, value_json FROM points
             WHERE gateway = $1 AND device = $2 AND series = $3 AND time >= $4 AND time < $5
             ORDER BY time, batch, point, field",
        )
        .bind(gateway)
        .bind(device)
        .bind(series)
        .bind(from)
        .bind(to)
        .fetch_all(&self.pool)
        .await?;
        let mut points: Vec<Value> = Vec::new();
        let mut last: Option<(i64, String, i64)> = None;
        for r in rows {
            let key = (
                r.try_get::<i64, _>(0)?,
                r.try_get::<String, _>(1)?,
                r.try_get::<i64, _>(2)?,
            );
            let field: String = r.try_get(3)?;
            let value = text_json(r.try_get(4)?);
            if last.as_ref() != Some(&key) {
                if points.len() as i64 >= limit {
                    break;
                }
                points.push(serde_json::json!({"time": key.0, "values": {}}));
                last = Some(key);
            }
            if let Some(values) = points.last_mut().and_then(|p| p["values"].as_object_mut()) {
                values.insert(field, value);
            }
        }
        Ok(points)
    }

    /// One field of a series in `[from, to)`, in buckets of `bucket` ns:
    /// `{start, count, min, max, mean}` for each bucket that has points.
    #[allow(clippy::too_many_arguments)]
    pub async fn buckets(
        &self,
        gateway: &str,
        device: &str,
        series: &str,
        field: &str,
        from: i64,
        to: i64,
        bucket: i64,
    ) -> Result<Vec<Value>, sqlx::Error> {
        sqlx::query(
            "SELECT (time - $5) / $7 AS slot, COUNT(*), MIN(value), MAX(value), AVG(value)
             FROM points
             WHERE gateway = $1 AND device = $2 AND series = $3 AND field = $4
               AND time >= $5 AND time < $6
             GROUP BY slot ORDER BY slot",
        )
        .bind(gateway)
        .bind(device)
        .bind(series)
        .bind(field)
        .bind(from)
        .bind(to)
        .bind(bucket)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| {
            Ok(serde_json::json!({
                "start": from + r.try_get::<i64, _>(0)? * bucket,
                "count": r.try_get::<i64, _>(1)?,
                "min": r.try_get::<Option<f64>, _>(2)?,
                "max": r.try_get::<Option<f64>, _>(3)?,
                "mean": r.try_get::<Option<f64>, _>(4)?,
            }))
        })
        .collect()
    }

    /// Alerts, newest first, of a gateway (and device) if given.
    pub async fn alerts(
        &self,
        gateway: Option<&str>,
        device: Option<&str>,
        limit: i64,
    ) -> Result<Vec<Value>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT id, gateway, device, name, time, severity, values_json FROM alerts
             WHERE ($1 IS NULL OR gateway = $1) AND ($2 IS NULL OR device = $2)
             ORDER BY time DESC LIMIT $3",
        )
        .bind(gateway)
        .bind(device)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows_json(
            &rows,
            &[
                ("id", Col::Text),
                ("gateway", Col::Text),
                ("device", Col::Text),
                ("name", Col::Text),
                ("time", Col::Int),
                ("severity", Col::Text),
                ("values", Col::Json),
            ],
        )
    }

    /// Deployments, newest first, of a gateway if given.
    pub async fn deployments(&self, gateway: Option<&str>) -> Result<Vec<Value>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT gateway, id, stage, received, chunks, message, error, updated_at FROM deployments
             WHERE ($1 IS NULL OR gateway = $1) ORDER BY updated_at DESC",
        )
        .bind(gateway)
        .fetch_all(&self.pool)
        .await?;
        rows_json(
            &rows,
            &[
                ("gateway", Col::Text),
                ("id", Col::Text),
                ("stage", Col::Text),
                ("received", Col::Int),
                ("chunks", Col::Int),
                ("message", Col::OptText),
                ("error", Col::OptText),
                ("updated_at", Col::Int),
            ],
        )
    }

    /// Points and batches stored, in all.
    pub async fn totals(&self) -> Result<(i64, i64), sqlx::Error> {
        let row = sqlx::query(
            "SELECT (SELECT COUNT(*) FROM batches),
                    CAST((SELECT COALESCE(SUM(points), 0) FROM batches) AS BIGINT)",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok((row.try_get(0)?, row.try_get(1)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlx::Connection as _;

    #[tokio::test]
    async fn a_busy_database_is_transient_and_a_refused_record_is_not() {
        sqlx::any::install_default_drivers();
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/t.db?mode=rwc", dir.path().display());
        let connect = || async {
            let mut c = sqlx::AnyConnection::connect(&url).await.unwrap();
            sqlx::query("PRAGMA busy_timeout = 0")
                .execute(&mut c)
                .await
                .unwrap();
            c
        };
        let (mut holder, mut other) = (connect().await, connect().await);
        sqlx::query("CREATE TABLE t (k TEXT PRIMARY KEY)")
            .execute(&mut holder)
            .await
            .unwrap();
        sqlx::query("BEGIN IMMEDIATE")
            .execute(&mut holder)
            .await
            .unwrap();
        let busy = sqlx::query("BEGIN IMMEDIATE")
            .execute(&mut other)
            .await
            .unwrap_err();
        assert!(is_transient(&busy), "{busy}");
        sqlx::query("INSERT INTO t (k) VALUES ('a')")
            .execute(&mut holder)
            .await
            .unwrap();
        let refused = sqlx::query("INSERT INTO t (k) VALUES ('a')")
            .execute(&mut holder)
            .await
            .unwrap_err();
        assert!(!is_transient(&refused), "{refused}");
        assert!(!is_transient(&sqlx::Error::RowNotFound));
    }
}

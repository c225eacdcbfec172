//! Synced tables on `serve` (`docs/synced-tables.md`): the gateways'
//! changesets applied once with the merge both ends share, the server's own
//! edits stamped by its clock and kept as numbered changesets to send down,
//! and the answers to gateways' pulls.
//!
//! A table is its gateway's and device's (the device its app speaks for).
//! Every write takes the table's row in `synced_tables` first: an upsert
//! that PostgreSQL holds locked until the commit, so that two instances never
//! merge into one table at once; SQLite has one writer anyway. That row also
//! keeps the table's clock and the number of its last changeset down.

use rumqttc::{AsyncClient, QoS};
use serde_json::Value;
use sqlx::Row as _;
use std::collections::BTreeMap;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::db::{Backend, Db, Tx, json_text};
use crate::model::{DeviceModel, TableSpec};
use crate::synced::Changeset;
use crate::synced::clock::{Clock, Stamp};
use crate::synced::merge::{self, Change, ChangeKind, Row, Side, TableRules};
use crate::synced::store::{Edit, stamp_text};
use crate::wire::topics;

/// The server's node id in every stamp it makes.
pub const SERVER_NODE: u64 = 0;

/// Rows read or written by one statement: at 9 values a row, well within
/// both databases' limits on parameters.
const PRELOAD: usize = 400;

/// `($1, ..., $n), (...), ...`: `rows` rows of `per_row` parameters.
fn placeholders(rows: usize, per_row: usize) -> String {
    (0..rows)
        .map(|r| {
            let row: Vec<String> = (1..=per_row)
                .map(|c| format!("${}", r * per_row + c))
                .collect();
            format!("({})", row.join(", "))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// `FOR UPDATE` where the database takes it (SQLite's one writer needs
/// none).
fn row_lock(backend: Backend) -> &'static str {
    match backend {
        Backend::Postgres => " FOR UPDATE",
        Backend::Sqlite => "",
    }
}

/// The table's row, taken (and locked) for this transaction: its clock and
/// the number of its last changeset down.
async fn take_table(
    tx: &mut Tx<'_>,
    gateway: &str,
    device: &str,
    table: &str,
    rules: &TableRules,
    now: i64,
) -> Result<(Clock, i64), sqlx::Error> {
    sqlx::query(
        "INSERT INTO synced_tables (gateway, device, tbl, rules, updated_at)
         VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (gateway, device, tbl) DO UPDATE SET
             rules = excluded.rules, updated_at = excluded.updated_at",
    )
    .bind(gateway)
    .bind(device)
    .bind(table)
    .bind(json_text(rules))
    .bind(now)
    .execute(&mut **tx)
    .await?;
    let row = sqlx::query(
        "SELECT clock_wall, clock_counter, down_seq FROM synced_tables
         WHERE gateway = $1 AND device = $2 AND tbl = $3",
    )
    .bind(gateway)
    .bind(device)
    .bind(table)
    .fetch_one(&mut **tx)
    .await?;
    let wall: i64 = row.try_get(0)?;
    let counter: i64 = row.try_get(1)?;
    let clock = Clock::resume(Stamp::new(
        wall.max(0) as u64,
        u32::try_from(counter.max(0)).unwrap_or(u32::MAX),
        SERVER_NODE,
    ));
    Ok((clock, row.try_get(2)?))
}

async fn save_table(
    tx: &mut Tx<'_>,
    gateway: &str,
    device: &str,
    table: &str,
    clock: &Clock,
    down_seq: i64,
) -> Result<(), sqlx::Error> {
    let last = clock.last();
    sqlx::query(
        "UPDATE synced_tables SET clock_wall = $4, clock_counter = $5, down_seq = $6
         WHERE gateway = $1 AND device = $2 AND tbl = $3",
    )
    .bind(gateway)
    .bind(device)
    .bind(table)
    .bind(i64::try_from(last.wall_ms).unwrap_or(i64::MAX))
    .bind(i64::from(last.counter))
    .bind(down_seq)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The rows one write touches: read once, merged in memory, written once.
struct Touched<'a> {
    gateway: &'a str,
    device: &'a str,
    table: &'a str,
    /// What a read of a row adds to take its lock until the commit
    /// (PostgreSQL), so that a plain-SQL edit made meanwhile waits rather
    /// than being written over.
    lock: &'static str,
    rows: BTreeMap<String, (Option<Row<Value>>, bool)>,
    /// (key, column, kept, lost, lost stamp)
    overwritten: Vec<(String, String, String, String, String)>,
}

impl<'a> Touched<'a> {
    fn new(gateway: &'a str, device: &'a str, table: &'a str, backend: Backend) -> Self {
        Touched {
            gateway,
            device,
            table,
            lock: row_lock(backend),
            rows: BTreeMap::new(),
            overwritten: Vec::new(),
        }
    }

    /// A stored state as the merge reads it: `None` for none, for a row
    /// plain SQL inserted ('{}'), or for one this server cannot read (it is
    /// rebuilt from the changes that come: refusing them would lose them,
    /// and keeping the row would stop every later one).
    fn parse(&self, key: &str, state: Option<String>) -> Option<Row<Value>> {
        let state = state.filter(|s| !matches!(s.trim(), "" | "{}"))?;
        match serde_json::from_str::<Row<Value>>(&state) {
            Ok(row) => Some(row),
            Err(e) => {
                tracing::error!(
                    gateway = self.gateway,
                    device = self.device,
                    table = self.table,
                    key,
                    "a synced row's stored state is corrupt ({e}): merged as new"
                );
                None
            }
        }
    }

    /// Read the rows of `keys` not read yet, [`PRELOAD`] to a statement:
    /// a changeset of 1,000 changes is a few statements, not 1,000.
    async fn preload(&mut self, tx: &mut Tx<'_>, keys: &[&str]) -> Result<(), sqlx::Error> {
        let mut wanted: Vec<&str> = keys
            .iter()
            .copied()
            .filter(|k| !self.rows.contains_key(*k))
            .collect();
        wanted.sort_unstable();
        wanted.dedup();
        for chunk in wanted.chunks(PRELOAD) {
            let marks: Vec<String> = (0..chunk.len()).map(|i| format!("${}", i + 4)).collect();
            let sql = format!(
                "SELECT key, state FROM synced_rows
                 WHERE gateway = $1 AND device = $2 AND tbl = $3 AND key IN ({}){}",
                marks.join(", "),
                self.lock
            );
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(self.gateway)
                .bind(self.device)
                .bind(self.table);
            for key in chunk {
                query = query.bind(*key);
            }
            let found = query.fetch_all(&mut **tx).await?;
            let mut states = BTreeMap::new();
            for row in &found {
                states.insert(row.try_get::<String, _>(0)?, row.try_get::<String, _>(1)?);
            }
            for key in chunk {
                let row = self.parse(key, states.remove(*key));
                self.rows.insert(key.to_string(), (row, false));
            }
        }
        Ok(())
    }

    async fn row(
        &mut self,
        tx: &mut Tx<'_>,
        key: &str,
    ) -> Result<Option<&Row<Value>>, sqlx::Error> {
        if !self.rows.contains_key(key) {
            self.preload(tx, &[key]).await?;
        }
        Ok(self.rows[key].0.as_ref())
    }

    async fn apply(
        &mut self,
        tx: &mut Tx<'_>,
        change: &Change<Value>,
        rules: &TableRules,
    ) -> Result<(), sqlx::Error> {
        let current = self.row(tx, &change.key).await?;
        let applied = merge::apply(current, change, rules);
        let key = &change.key;
        for o in &applied.overwritten {
            self.overwritten.push((
                key.clone(),
                o.column.clone(),
                json_text(&o.kept),
                json_text(&o.lost),
                stamp_text(&o.lost.stamp),
            ));
        }
        if let Some(o) = &applied.presence_overwritten {
            self.overwritten.push((
                key.clone(),
                String::new(),
                json_text(&o.kept),
                json_text(&o.lost),
                stamp_text(&o.lost.stamp),
            ));
        }
        if applied.changed {
            self.rows.insert(key.clone(), (Some(applied.row), true));
        }
        Ok(())
    }

    fn visible(&self, key: &str) -> bool {
        self.rows
            .get(key)
            .and_then(|(row, _)| row.as_ref())
            .and_then(merge::visible)
            .is_some()
    }

    async fn write(self, tx: &mut Tx<'_>, now: i64) -> Result<(), sqlx::Error> {
        let changed: Vec<(&String, &Row<Value>)> = self
            .rows
            .iter()
            .filter_map(|(key, (row, changed))| row.as_ref().filter(|_| *changed).map(|r| (key, r)))
            .collect();
        // Many rows to a statement.
        for chunk in changed.chunks(PRELOAD) {
            let mut sql = format!(
                "INSERT INTO synced_rows (gateway, device, tbl, key, columns, state, updated_at) VALUES {}",
                placeholders(chunk.len(), 7)
            );
            sql.push_str(
                " ON CONFLICT (gateway, device, tbl, key) DO UPDATE SET
                     columns = excluded.columns, state = excluded.state,
                     updated_at = excluded.updated_at",
            );
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
            for (key, row) in chunk {
                query = query
                    .bind(self.gateway)
                    .bind(self.device)
                    .bind(self.table)
                    .bind(key.as_str())
                    .bind(merge::visible(row).map(|c| json_text(&c)))
                    .bind(json_text(*row))
                    .bind(now);
            }
            query.execute(&mut **tx).await?;
        }
        // A lost version applied again (a repeat under another id) records
        // its loss again: the first record stands.
        for chunk in self.overwritten.chunks(PRELOAD) {
            let sql = format!(
                "INSERT INTO synced_overwritten
                 (gateway, device, tbl, key, col, kept, lost, lost_stamp, recorded_at)
                 VALUES {} ON CONFLICT DO NOTHING",
                placeholders(chunk.len(), 9)
            );
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
            for (key, col, kept, lost, lost_stamp) in chunk {
                query = query
                    .bind(self.gateway)
                    .bind(self.device)
                    .bind(self.table)
                    .bind(key.as_str())
                    .bind(col.as_str())
                    .bind(kept.as_str())
                    .bind(lost.as_str())
                    .bind(lost_stamp.as_str())
                    .bind(now);
            }
            query.execute(&mut **tx).await?;
        }
        Ok(())
    }
}

/// Apply a gateway's changeset to its device's table, once:
/// [`Applied::Duplicate`] if its id was applied before. Every change goes
/// through the merge the gateways use, under the rules the changeset
/// carries, and what it overwrote is recorded. The table's clock observes
/// the changes' stamps, so that the server's later edits are stamped after
/// them.
pub(super) async fn apply_changeset(
    tx: &mut Tx<'_>,
    backend: Backend,
    gateway: &str,
    device: &str,
    changeset: &Changeset,
    now: i64,
) -> Result<Applied, sqlx::Error> {
    let fresh = sqlx::query(
        "INSERT INTO synced_applied (gateway, device, changeset, changes, applied_at)
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
    )
    .bind(gateway)
    .bind(device)
    .bind(&changeset.id)
    .bind(changeset.changes.len() as i64)
    .bind(now)
    .execute(&mut **tx)
    .await?
    .rows_affected()
        > 0;
    if !fresh {
        return Ok(Applied::Duplicate);
    }
    let table = changeset.table.as_str();
    let rules = &changeset.rules;
    let mut write = TableWrite::open(tx, backend, [gateway, device, table], rules, now)
        .await
        .map_err(|e| match e {
            EditError::Database(e) => e,
            other => sqlx::Error::Protocol(other.to_string()),
        })?;
    let keys: Vec<&str> = changeset.changes.iter().map(|c| c.key.as_str()).collect();
    write.touched.preload(tx, &keys).await?;
    for change in &changeset.changes {
        write.touched.apply(tx, change, rules).await?;
        // A stamp too far ahead of this server's clock is merged all the
        // same (the gateway has committed it), but not taken into the
        // server's clock, which must not jump to a wild gateway's time.
        if let Err(e) = write.clock.observe(change.stamp, write.now_ms) {
            tracing::warn!(
                gateway,
                device,
                table,
                "a change's stamp is not taken into the table's clock: {e}"
            );
        }
    }
    let down = write.finish(tx).await?;
    Ok(Applied::Fresh { down })
}

/// One write to a table on serve, from [`TableWrite::open`] to
/// [`TableWrite::finish`] in one transaction: the table taken, its clock,
/// the rows touched, and the server's own changes, which become the table's
/// next changeset down. Every write begins by making the plain-SQL edits
/// waiting in the table the server's: merging anything into those rows
/// first would write over them.
struct TableWrite<'a> {
    touched: Touched<'a>,
    rules: &'a TableRules,
    clock: Clock,
    /// The number of the table's last changeset down.
    down_seq: i64,
    /// The server's changes made in this write.
    changes: Vec<Change<Value>>,
    now: i64,
    now_ms: u64,
}

impl<'a> TableWrite<'a> {
    /// Take the table (gateway, device, table) for the transaction, and
    /// make the plain-SQL edits waiting in it.
    async fn open(
        tx: &mut Tx<'_>,
        backend: Backend,
        [gateway, device, table]: [&'a str; 3],
        rules: &'a TableRules,
        now: i64,
    ) -> Result<TableWrite<'a>, EditError> {
        let (clock, down_seq) = take_table(tx, gateway, device, table, rules, now).await?;
        let mut write = TableWrite {
            touched: Touched::new(gateway, device, table, backend),
            rules,
            clock,
            down_seq,
            changes: Vec::new(),
            now,
            now_ms: (now / 1_000_000).max(0) as u64,
        };
        write.take_plain_edits(tx).await?;
        Ok(write)
    }

    /// A change the server makes now: stamped by the table's clock, merged,
    /// and kept for the changeset down.
    async fn server_change(
        &mut self,
        tx: &mut Tx<'_>,
        key: &str,
        kind: ChangeKind<Value>,
    ) -> Result<(), EditError> {
        let change = Change {
            key: key.to_string(),
            side: Side::Server,
            stamp: self.clock.tick(self.now_ms)?,
            kind,
        };
        self.touched.apply(tx, &change, self.rules).await?;
        self.changes.push(change);
        Ok(())
    }

    /// Write the rows and what was overwritten, the changeset down of the
    /// server's changes (returned, for sending once committed; none for
    /// none) and the table's clock.
    async fn finish(self, tx: &mut Tx<'_>) -> Result<Option<Changeset>, sqlx::Error> {
        let (gateway, device, table) = (
            self.touched.gateway,
            self.touched.device,
            self.touched.table,
        );
        self.touched.write(tx, self.now).await?;
        let down = record_down(
            tx,
            [gateway, device, table],
            self.rules,
            self.changes,
            self.down_seq,
            self.now,
        )
        .await?;
        let seq = down
            .as_ref()
            .and_then(|c| c.seq)
            .map_or(self.down_seq, |s| s as i64);
        save_table(tx, gateway, device, table, &self.clock, seq).await?;
        Ok(down)
    }
    /// Turn the plain-SQL edits waiting in the table (`edited = 1`) into
    /// the server's changes; an edit the model refuses is undone (`columns`
    /// as the merge has them) with `edit_error` saying why.
    async fn take_plain_edits(&mut self, tx: &mut Tx<'_>) -> Result<(), EditError> {
        let (gateway, device, table) = (
            self.touched.gateway,
            self.touched.device,
            self.touched.table,
        );
        let sql = format!(
            "SELECT key, columns FROM synced_rows
             WHERE gateway = $1 AND device = $2 AND tbl = $3 AND edited = 1 ORDER BY key{}",
            self.touched.lock
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(gateway)
            .bind(device)
            .bind(table)
            .fetch_all(&mut **tx)
            .await?;
        if rows.is_empty() {
            return Ok(());
        }
        let spec = declared(tx, gateway, device, table).await;
        for row in rows {
            let key: String = row.try_get(0)?;
            let written: Option<String> = row.try_get(1)?;
            let current = self.touched.row(tx, &key).await?.and_then(merge::visible);
            let edit = spec.as_ref().map_err(Clone::clone).and_then(|spec| {
                plain_edit(spec, table, &key, written.as_deref(), current.as_ref())
            });
            let error = match edit {
                Ok(Some(edit)) => {
                    self.server_change(tx, &key, edit.change_kind()).await?;
                    None
                }
                Ok(None) => None,
                Err(reason) => {
                    tracing::warn!(
                        gateway,
                        device,
                        table,
                        key,
                        "a plain-SQL edit of a synced row is refused: {reason}"
                    );
                    Some(reason)
                }
            };
            // The row's columns are the merge's again (the edit's, or as they
            // were if it was refused), and the flag is down.
            let columns = self
                .touched
                .rows
                .get(&key)
                .and_then(|(row, _)| row.as_ref())
                .and_then(merge::visible)
                .map(|c| json_text(&c));
            sqlx::query(
                "UPDATE synced_rows SET edited = 0, edit_error = $5, columns = $6
                 WHERE gateway = $1 AND device = $2 AND tbl = $3 AND key = $4",
            )
            .bind(gateway)
            .bind(device)
            .bind(table)
            .bind(&key)
            .bind(error)
            .bind(columns)
            .execute(&mut **tx)
            .await?;
        }
        Ok(())
    }
}

/// What [`apply_changeset`] did.
#[derive(Debug)]
pub enum Applied {
    /// Its id was applied before: nothing was done.
    Duplicate,
    /// Applied; `down` is the changeset made of plain-SQL edits that were
    /// waiting in the table, for sending once committed.
    Fresh { down: Option<Changeset> },
}

/// Keep the server's `changes` to a table as its next changeset down
/// (none for no changes).
async fn record_down(
    tx: &mut Tx<'_>,
    [gateway, device, table]: [&str; 3],
    rules: &TableRules,
    changes: Vec<Change<Value>>,
    down_seq: i64,
    now: i64,
) -> Result<Option<Changeset>, sqlx::Error> {
    if changes.is_empty() {
        return Ok(None);
    }
    let seq = down_seq + 1;
    let now_ms = now / 1_000_000;
    let changeset = Changeset {
        // Unique even if this database is made anew and its numbers start
        // again: a gateway skips an id it has applied.
        id: format!("serve-{table}-{seq}-{now_ms}"),
        table: table.to_string(),
        rules: rules.clone(),
        changes,
        seq: Some(seq as u64),
    };
    sqlx::query(
        "INSERT INTO synced_down (gateway, device, tbl, seq, changeset, created_at)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(gateway)
    .bind(device)
    .bind(table)
    .bind(seq)
    .bind(json_text(&changeset))
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(Some(changeset))
}

/// The table's declaration in the device's model as its gateway announced
/// it, or why there is none.
async fn declared(
    tx: &mut Tx<'_>,
    gateway: &str,
    device: &str,
    table: &str,
) -> Result<TableSpec, String> {
    let model: Option<Option<String>> =
        sqlx::query_scalar("SELECT model FROM devices WHERE gateway = $1 AND device = $2")
            .bind(gateway)
            .bind(device)
            .fetch_optional(&mut **tx)
            .await
            .map_err(|e| e.to_string())?;
    let text = model
        .flatten()
        .ok_or_else(|| format!("gateway {gateway:?} has announced no model of {device:?}"))?;
    let model = DeviceModel::parse(&text).map_err(|e| e.to_string())?;
    model.table(table).cloned()
}

/// A row's columns as plain SQL wrote them, checked against the table's
/// declaration: what the edit writes (the columns that differ from the
/// row's, all of them for a row that was not there), or why it cannot.
fn plain_edit(
    spec: &TableSpec,
    table: &str,
    key: &str,
    written: Option<&str>,
    current: Option<&BTreeMap<String, Option<Value>>>,
) -> Result<Option<Edit>, String> {
    let Some(written) = written else {
        return Ok(current.map(|_| Edit::Delete {
            key: key.to_string(),
        }));
    };
    let object: serde_json::Map<String, Value> =
        serde_json::from_str(written).map_err(|e| format!("columns is not a JSON object: {e}"))?;
    let mut columns = spec.columns_from_json(table, &object, current.is_none())?;
    Ok(match current {
        None => Some(Edit::Put {
            key: key.to_string(),
            columns,
        }),
        Some(current) => {
            columns.retain(|name, value| current.get(name).unwrap_or(&None) != value);
            (!columns.is_empty()).then(|| Edit::Update {
                key: key.to_string(),
                columns,
            })
        }
    })
}

/// Make the plain-SQL edits waiting in one table the server's: the
/// changeset down they make, if any, for sending.
pub async fn apply_plain_edits(
    db: &Db,
    gateway: &str,
    device: &str,
    table: &str,
) -> Result<Option<Changeset>, EditError> {
    let now = crate::value::now_ns() as i64;
    let mut tx = db.begin_write().await?;
    let rules: Option<String> = sqlx::query_scalar(
        "SELECT rules FROM synced_tables WHERE gateway = $1 AND device = $2 AND tbl = $3",
    )
    .bind(gateway)
    .bind(device)
    .bind(table)
    .fetch_optional(&mut *tx)
    .await?;
    // A table serve has never seen has no rules here: the model's.
    let rules = match rules.and_then(|r| serde_json::from_str::<TableRules>(&r).ok()) {
        Some(rules) => rules,
        None => match declared(&mut tx, gateway, device, table).await {
            Ok(spec) => spec.rules().clone(),
            Err(reason) => {
                sqlx::query(
                    "UPDATE synced_rows SET edited = 0, edit_error = $4
                     WHERE gateway = $1 AND device = $2 AND tbl = $3 AND edited = 1",
                )
                .bind(gateway)
                .bind(device)
                .bind(table)
                .bind(&reason)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                tracing::warn!(
                    gateway,
                    device,
                    table,
                    "plain-SQL edits of a synced table are refused: {reason}"
                );
                return Ok(None);
            }
        },
    };
    let write =
        TableWrite::open(&mut tx, db.backend, [gateway, device, table], &rules, now).await?;
    let down = write.finish(&mut tx).await?;
    tx.commit().await?;
    Ok(down)
}

/// The tables with plain-SQL edits waiting, at most `limit`.
pub async fn tables_edited(
    db: &Db,
    limit: i64,
) -> Result<Vec<(String, String, String)>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT DISTINCT gateway, device, tbl FROM synced_rows WHERE edited = 1 LIMIT $1",
    )
    .bind(limit)
    .fetch_all(db.pool())
    .await?;
    rows.iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
        .collect()
}

/// How often serve looks for plain-SQL edits.
pub const PLAIN_EDITS_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Makes the plain-SQL edits of synced rows the server's, and sends them
/// down, every [`PLAIN_EDITS_EVERY`].
pub struct PlainEdits {
    pub db: Db,
    pub client: AsyncClient,
}

impl PlainEdits {
    pub async fn run(self, cancel: CancellationToken) {
        let mut every = tokio::time::interval(PLAIN_EDITS_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = every.tick() => {}
            }
            let tables = match tables_edited(&self.db, 100).await {
                Ok(tables) => tables,
                Err(e) => {
                    tracing::warn!("cannot look for plain-SQL edits of synced tables: {e}");
                    continue;
                }
            };
            for (gateway, device, table) in tables {
                match apply_plain_edits(&self.db, &gateway, &device, &table).await {
                    Ok(Some(changeset)) => {
                        if let Err(e) = send_down(&self.client, &gateway, &device, &changeset).await
                        {
                            tracing::warn!(
                                gateway,
                                device,
                                table,
                                "a changeset down was not sent now (the gateway pulls it): {e}"
                            );
                        }
                    }
                    Ok(None) => {}
                    Err(e) => tracing::warn!(
                        gateway,
                        device,
                        table,
                        "plain-SQL edits were not applied: {e}"
                    ),
                }
            }
        }
    }
}

/// Why an edit from the API was not made.
#[derive(Debug, thiserror::Error)]
pub enum EditError {
    #[error("no row with key {0:?}: it was never put, or it was deleted")]
    NoSuchRow(String),
    #[error("the server's clock for the table: {0}")]
    Clock(#[from] crate::synced::clock::ClockError),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Make the server's `edits` to a table, all or none: stamped by the
/// table's clock, merged as the server's side, and kept as the table's next
/// changeset down, which is returned for sending.
pub async fn edit(
    db: &Db,
    gateway: &str,
    device: &str,
    table: &str,
    rules: &TableRules,
    edits: &[Edit],
) -> Result<Changeset, EditError> {
    let now = crate::value::now_ns() as i64;
    let mut tx = db.begin_write().await?;
    // Plain-SQL edits waiting in the table are made first, as they were
    // made first.
    let mut write =
        TableWrite::open(&mut tx, db.backend, [gateway, device, table], rules, now).await?;
    let keys: Vec<&str> = edits.iter().map(Edit::key).collect();
    write.touched.preload(&mut tx, &keys).await?;
    for edit in edits {
        let key = edit.key();
        write.touched.row(&mut tx, key).await?;
        if !matches!(edit, Edit::Put { .. }) && !write.touched.visible(key) {
            return Err(EditError::NoSuchRow(key.to_string()));
        }
        write
            .server_change(&mut tx, key, edit.change_kind())
            .await?;
    }
    let changeset = write
        .finish(&mut tx)
        .await?
        .expect("an edit makes at least one change");
    tx.commit().await?;
    Ok(changeset)
}

/// The table's changesets down after number `after`, in order, at most
/// `limit`.
pub async fn down_after(
    db: &Db,
    gateway: &str,
    device: &str,
    table: &str,
    after: i64,
    limit: i64,
) -> Result<Vec<Changeset>, sqlx::Error> {
    let texts: Vec<String> = sqlx::query_scalar(
        "SELECT changeset FROM synced_down
         WHERE gateway = $1 AND device = $2 AND tbl = $3 AND seq > $4
         ORDER BY seq LIMIT $5",
    )
    .bind(gateway)
    .bind(device)
    .bind(table)
    .bind(after)
    .bind(limit)
    .fetch_all(db.pool())
    .await?;
    Ok(texts
        .iter()
        .filter_map(|t| match serde_json::from_str(t) {
            Ok(changeset) => Some(changeset),
            Err(e) => {
                tracing::error!(
                    gateway,
                    device,
                    table,
                    "a stored changeset down is corrupt: {e}"
                );
                None
            }
        })
        .collect())
}

/// Send a changeset down to the gateway, at least once.
pub async fn send_down(
    client: &AsyncClient,
    gateway: &str,
    device: &str,
    changeset: &Changeset,
) -> Result<(), rumqttc::ClientError> {
    let topic = topics::topic(gateway, device, &format!("synced/{}/down", changeset.table));
    client
        .publish(topic, QoS::AtLeastOnce, false, json_text(changeset))
        .await
}

/// Changesets read from the database at a time to answer a pull.
const PULL_PAGE: i64 = 1_000;

/// Answer a gateway's pull: send its table's changesets down after
/// `after`, every one of them, in order; returns how many.
pub async fn answer_pull(
    db: &Db,
    client: &AsyncClient,
    gateway: &str,
    device: &str,
    table: &str,
    after: u64,
) -> Result<usize, String> {
    let mut after = i64::try_from(after).unwrap_or(i64::MAX);
    let mut sent = 0;
    loop {
        let page = down_after(db, gateway, device, table, after, PULL_PAGE)
            .await
            .map_err(|e| e.to_string())?;
        for changeset in &page {
            send_down(client, gateway, device, changeset)
                .await
                .map_err(|e| e.to_string())?;
            after = changeset.seq.map_or(after, |s| s as i64);
        }
        sent += page.len();
        if (page.len() as i64) < PULL_PAGE {
            return Ok(sent);
        }
    }
}

/// A gateway's pull, waiting for its answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pull {
    pub gateway: String,
    pub device: String,
    pub table: String,
    pub after: u64,
}

/// Pulls that may wait for the answerer; past that, one is dropped with a
/// warning (its gateway pulls again at the app's next start or gap).
pub const PULL_QUEUE: usize = 1024;

/// Answers pulls in a task of its own: sending may wait for room in the
/// MQTT client's queue, which the ingest task, which owns the event loop,
/// must never do.
pub struct Answerer {
    pub db: Db,
    pub client: AsyncClient,
}

impl Answerer {
    pub async fn run(self, mut pulls: mpsc::Receiver<Pull>, cancel: CancellationToken) {
        loop {
            let pull = tokio::select! {
                _ = cancel.cancelled() => return,
                pull = pulls.recv() => match pull {
                    Some(pull) => pull,
                    None => return,
                },
            };
            match answer_pull(
                &self.db,
                &self.client,
                &pull.gateway,
                &pull.device,
                &pull.table,
                pull.after,
            )
            .await
            {
                Ok(sent) => {
                    tracing::debug!(gateway = %pull.gateway, device = %pull.device, table = %pull.table, sent, "answered a pull")
                }
                Err(e) => {
                    tracing::warn!(gateway = %pull.gateway, device = %pull.device, table = %pull.table, "a pull was not answered: {e}")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_number_every_value_of_every_row() {
        assert_eq!(placeholders(2, 3), "($1, $2, $3), ($4, $5, $6)");
        assert_eq!(placeholders(1, 1), "($1)");
        let many = placeholders(PRELOAD, 9);
        assert!(many.ends_with(&format!("${})", PRELOAD * 9)), "{many}");
    }
}

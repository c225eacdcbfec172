//! The storage of synced tables in SQLite: the rows, the clock that stamps
//! their changes, the changesets already applied and what the merge
//! overwrote. The gateway and the server keep the same tables, so both ends
//! store rows and apply each other's changes through this one module.
//!
//! A row is stored as the JSON of its whole merge state ([`merge::Row`]),
//! not as its visible columns. The merge decides every incoming change
//! against the versions it finds (value, stamp, side per column, and the
//! row's existence), and a change can arrive long after the ones that
//! followed it (a gateway offline for a week). So the versions must outlive
//! the edit that made them, and a delete must leave a tombstone carrying
//! them: a late update of a deleted row must still meet the versions it
//! loses or wins against, and the delete itself must outrank a put stamped
//! before it. Keeping the state as one JSON document per row keeps this
//! module independent of each table's columns (the app's model declares and
//! checks them), and `visible` beside it lets reads and counts skip
//! tombstones without parsing them.
//!
//! Every function works inside the caller's transaction, which also holds
//! the caller's own writes (the outbox row of a changeset, an event for the
//! app): all of it commits or none. A call that is refused (a missing row, a
//! clock error, a corrupt state) returns its error before it writes
//! anything; after an SQL error midway, the caller rolls back.
//!
//! Values are `serde_json::Value`, the project's way of storing typed
//! values; a column's `None` is SQL null.

use super::clock::{Clock, ClockError, Stamp};
use super::merge::{self, Change, ChangeKind, Row, Side, TableRules};
use rusqlite::{Connection, OptionalExtension, Transaction, params};
use serde::Serialize;
use serde_json::Value;
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use thiserror::Error;

/// [`SCHEMA`] as a literal, so that the gateway's tables unit can add its
/// own tables to it with `concat!`.
macro_rules! schema {
    () => {
        r#"
CREATE TABLE IF NOT EXISTS synced_rows (
    app     TEXT NOT NULL,
    tbl     TEXT NOT NULL,
    key     TEXT NOT NULL,
    -- 1 when the row exists for readers (merge::visible), 0 for a tombstone
    -- or a row that only updates have reached.
    visible INTEGER NOT NULL CHECK (visible IN (0, 1)),
    -- The JSON of the merge::Row: every column's version and the row's
    -- existence, kept after a delete for the changes that arrive late.
    state   TEXT NOT NULL,
    PRIMARY KEY (app, tbl, key)
) WITHOUT ROWID;

-- Each app's last stamp, so that its clock resumes after a restart and never
-- stamps below a change it made or saw, even if the wall clock went back.
CREATE TABLE IF NOT EXISTS synced_clock (
    app     TEXT PRIMARY KEY,
    wall_ms INTEGER NOT NULL,
    counter INTEGER NOT NULL,
    -- The node id's 64 bits, read as a signed integer.
    node    INTEGER NOT NULL
);

-- The changesets from the other side already applied: changesets travel at
-- least once, and a repeat is skipped by its id.
CREATE TABLE IF NOT EXISTS synced_applied (
    app       TEXT NOT NULL,
    changeset TEXT NOT NULL,
    PRIMARY KEY (app, changeset)
) WITHOUT ROWID;

-- What the merge overwrote: one record per version that lost (a column's, or
-- with col = '' the row's existence), with the version kept. kept and lost are
-- the JSON of a merge::Cell (or merge::Register for col = ''); lost_stamp is
-- the lost version's stamp as fixed-width decimals (wall-counter-node), so
-- that text order is stamp order.
CREATE TABLE IF NOT EXISTS synced_overwritten (
    app        TEXT NOT NULL,
    tbl        TEXT NOT NULL,
    key        TEXT NOT NULL,
    col        TEXT NOT NULL,
    kept       TEXT NOT NULL,
    lost       TEXT NOT NULL,
    lost_stamp TEXT NOT NULL,
    PRIMARY KEY (app, tbl, key, col, lost_stamp)
);
"#
    };
}
pub(crate) use schema;

/// The tables of synced rows. Idempotent: run it at every open.
///
/// `app` namespaces everything: each app has its own tables, its own clock
/// and its own record of applied changesets.
pub const SCHEMA: &str = schema!();

/// A row as readers see it: its columns, `None` being null.
pub type Columns = BTreeMap<String, Option<Value>>;

/// One synced table of one app, with the merge rules both sides hold for it.
#[derive(Debug, Clone, Copy)]
pub struct Table<'a> {
    pub app: &'a str,
    pub name: &'a str,
    pub rules: &'a TableRules,
}

/// What a guest (or the server's API) asks of a table.
#[derive(Debug, Clone, PartialEq)]
pub enum Edit {
    /// Makes the row present and writes the columns given. Columns left out
    /// keep their versions (a put after a delete shows the values from before
    /// it), so the caller, which knows the table's columns, should give them
    /// all, null for those not set.
    Put { key: String, columns: Columns },
    /// Writes the columns given to a row that exists.
    Update { key: String, columns: Columns },
    /// Deletes a row that exists.
    Delete { key: String },
}

impl Edit {
    pub fn key(&self) -> &str {
        match self {
            Edit::Put { key, .. } | Edit::Update { key, .. } | Edit::Delete { key } => key,
        }
    }

    /// The change it makes, for the merge.
    pub fn change_kind(&self) -> ChangeKind<Value> {
        match self {
            Edit::Put { columns, .. } => ChangeKind::Put(columns.clone()),
            Edit::Update { columns, .. } => ChangeKind::Update(columns.clone()),
            Edit::Delete { .. } => ChangeKind::Delete,
        }
    }
}

/// Which keys a [`scan`] reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyRange {
    /// The keys that start with this (all keys for the empty prefix).
    Prefix(String),
    /// `from` inclusive, `to` exclusive; `None` leaves that end open.
    Between {
        from: Option<String>,
        to: Option<String>,
    },
}

/// What [`apply_remote`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remote {
    /// The changeset had been applied before: nothing was done.
    pub duplicate: bool,
    /// The keys whose visible row is not what it was before the changeset
    /// (created, changed or deleted), sorted, each once: what the app is told.
    pub changed_keys: Vec<String>,
}

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("no row with key {key:?}: it was never put, or it was deleted")]
    NoSuchRow { key: String },
    #[error("synced tables clock: {0}")]
    Clock(#[from] ClockError),
    #[error("synced tables storage: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("synced row {key:?} has a corrupt stored state: {reason}")]
    Corrupt { key: String, reason: String },
}

/// Applies a guest's edits (or, on the server, its API's), all or none:
/// stamps each with the app's clock (one stamp per edit, in order), merges
/// it as a change from `side`, stores the rows and the clock, and returns
/// the changes to ship to the other side, one per edit, for the caller to
/// queue in the same transaction.
///
/// An update or delete of a key that is not visible (at that point of the
/// call: an earlier edit of the same call counts) refuses the whole call
/// with [`StoreError::NoSuchRow`] before anything is written.
///
/// Every edit is shipped, even one that changed nothing here because it lost
/// to a version the rule prefers (a device edit of a server-wins column the
/// server has written): it loses on the other side too, and the other side
/// records what was overwritten, so no edit vanishes unseen.
///
/// `node` is this end's node id, and the edits are stamped with it whatever
/// node the stored clock last named: an end given a new id keeps its clock's
/// time, and its stamps stay unique.
pub fn edit(
    tx: &Transaction<'_>,
    table: &Table<'_>,
    side: Side,
    node: u64,
    now_ms: u64,
    edits: &[Edit],
) -> Result<Vec<Change<Value>>, StoreError> {
    if edits.is_empty() {
        return Ok(Vec::new());
    }
    let mut clock = Clock::resume(match load_clock(tx, table.app)? {
        Some(last) => Stamp::new(last.wall_ms, last.counter, node),
        None => Stamp::new(0, 0, node),
    });
    // Everything is merged in memory first and written at the end, so that a
    // refused edit (or a clock error) returns before the first write.
    let mut batch = Batch::new(table);
    let mut changes = Vec::with_capacity(edits.len());
    for edit in edits {
        let key = edit.key();
        let needs_row = !matches!(edit, Edit::Put { .. });
        if needs_row && !batch.is_visible(tx, key)? {
            return Err(StoreError::NoSuchRow {
                key: key.to_owned(),
            });
        }
        let kind = edit.change_kind();
        let change = normalized(Cow::Owned(Change {
            key: key.to_owned(),
            side,
            stamp: clock.tick(now_ms)?,
            kind,
        }))
        .into_owned();
        batch.apply(tx, &change)?;
        changes.push(change);
    }
    batch.write(tx)?;
    save_clock(tx, table.app, clock.last())?;
    Ok(changes)
}

/// Applies a changeset from the other side, once: a changeset id already
/// applied for the app is skipped (`duplicate`), since changesets travel at
/// least once.
///
/// Each change's stamp is observed by the app's clock first, so that the
/// edits this end makes afterwards are stamped after them. A stamp the
/// clock refuses (too far ahead of `now_ms`) refuses the whole changeset
/// with [`StoreError::Clock`], with nothing written and the id not
/// recorded, so that it can be applied once the clocks agree.
///
/// The clock keeps the node it last stamped with (this call stamps
/// nothing); an app whose first synced write comes from the other side gets
/// node 0 until its first [`edit`] names its node.
pub fn apply_remote(
    tx: &Transaction<'_>,
    table: &Table<'_>,
    changeset_id: &str,
    changes: &[Change<Value>],
    now_ms: u64,
) -> Result<Remote, StoreError> {
    let seen = tx
        .prepare_cached("SELECT 1 FROM synced_applied WHERE app = ?1 AND changeset = ?2")?
        .exists(params![table.app, changeset_id])?;
    if seen {
        return Ok(Remote {
            duplicate: true,
            changed_keys: Vec::new(),
        });
    }
    let mut clock = match load_clock(tx, table.app)? {
        Some(last) => Clock::resume(last),
        None => Clock::new(0),
    };
    for change in changes {
        clock.observe(change.stamp, now_ms)?;
    }
    let mut batch = Batch::new(table);
    for change in changes {
        batch.apply(tx, &normalized(Cow::Borrowed(change)))?;
    }
    let changed_keys = batch.write(tx)?;
    tx.prepare_cached("INSERT INTO synced_applied (app, changeset) VALUES (?1, ?2)")?
        .execute(params![table.app, changeset_id])?;
    save_clock(tx, table.app, clock.last())?;
    Ok(Remote {
        duplicate: false,
        changed_keys,
    })
}

/// The row as readers see it, `None` if it does not exist (never put, or
/// deleted).
pub fn get(conn: &Connection, table: &Table<'_>, key: &str) -> Result<Option<Columns>, StoreError> {
    let state: Option<String> = conn
        .prepare_cached(
            "SELECT state FROM synced_rows
             WHERE app = ?1 AND tbl = ?2 AND key = ?3 AND visible = 1",
        )?
        .query_row(params![table.app, table.name, key], |r| r.get(0))
        .optional()?;
    state.map(|state| shown(key, &state)).transpose()
}

/// The visible rows whose keys are in `range`, in key order, at most
/// `limit` of them.
///
/// Keys compare as SQLite's default (binary) collation compares text: by
/// their UTF-8 bytes, which is the order of `str` in Rust. A prefix is read
/// as a range of the primary key rather than with LIKE, in which `%` and `_`
/// (common in keys) are wildcards and which the index would not serve.
pub fn scan(
    conn: &Connection,
    table: &Table<'_>,
    range: &KeyRange,
    limit: usize,
) -> Result<Vec<(String, Columns)>, StoreError> {
    let (from, to) = match range {
        KeyRange::Prefix(prefix) => (Some(prefix.clone()), prefix_successor(prefix)),
        KeyRange::Between { from, to } => (from.clone(), to.clone()),
    };
    // Only the bounds that exist go into the SQL: `?3 IS NULL OR key >= ?3`
    // would keep SQLite from using the key as a range of the index.
    let mut sql = String::from(
        "SELECT key, state FROM synced_rows WHERE app = ?1 AND tbl = ?2 AND visible = 1",
    );
    if from.is_some() {
        sql.push_str(" AND key >= ?3");
    }
    if to.is_some() {
        sql.push_str(" AND key < ?4");
    }
    sql.push_str(" ORDER BY key LIMIT ?5");
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map(params![table.app, table.name, from, to, limit], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
    })?;
    let mut found = Vec::new();
    for row in rows {
        let (key, state) = row?;
        let columns = shown(&key, &state)?;
        found.push((key, columns));
    }
    Ok(found)
}

/// The table's visible rows and the bytes of their stored state, which the
/// per-app limits count. Tombstones are left out: they are the merge's
/// bookkeeping, not the app's data.
pub fn counts(conn: &Connection, table: &Table<'_>) -> Result<(u64, u64), StoreError> {
    let counted = conn
        .prepare_cached(
            "SELECT count(*), coalesce(sum(octet_length(state)), 0) FROM synced_rows
             WHERE app = ?1 AND tbl = ?2 AND visible = 1",
        )?
        .query_row(params![table.app, table.name], |r| {
            Ok((get_u64(r, 0)?, get_u64(r, 1)?))
        })?;
    Ok(counted)
}

/// The visible rows of all of an app's tables and the bytes of their stored
/// state: what its limits count.
pub fn app_counts(conn: &Connection, app: &str) -> Result<(u64, u64), StoreError> {
    Ok(conn
        .prepare_cached(
            "SELECT count(*), coalesce(sum(octet_length(state)), 0) FROM synced_rows
             WHERE app = ?1 AND visible = 1",
        )?
        .query_row(params![app], |r| Ok((get_u64(r, 0)?, get_u64(r, 1)?)))?)
}

/// The visible rows among `keys` of the table and the bytes of their
/// stored state: taken before and after a write, the difference is what
/// the write adds to the app's counts.
pub fn key_counts(
    conn: &Connection,
    table: &Table<'_>,
    keys: &[&str],
) -> Result<(u64, u64), StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT octet_length(state) FROM synced_rows
         WHERE app = ?1 AND tbl = ?2 AND key = ?3 AND visible = 1",
    )?;
    let (mut rows, mut bytes) = (0, 0);
    for key in keys {
        if let Some(size) = stmt
            .query_row(params![table.app, table.name, key], |r| get_u64(r, 0))
            .optional()?
        {
            rows += 1;
            bytes += size;
        }
    }
    Ok((rows, bytes))
}

impl KeyRange {
    /// The part of the range past `key`, for reading on after a page that
    /// ended at it: `key` followed by U+0000 is the first string above it.
    pub fn after(&self, key: &str) -> KeyRange {
        let (from, to) = match self {
            KeyRange::Prefix(prefix) => (Some(prefix.clone()), prefix_successor(prefix)),
            KeyRange::Between { from, to } => (from.clone(), to.clone()),
        };
        let past = format!("{key}\0");
        KeyRange::Between {
            from: Some(match from {
                Some(from) if from > past => from,
                _ => past,
            }),
            to,
        }
    }
}

/// The smallest string above every string that starts with `prefix`, or
/// `None` if there is none (the empty prefix, or one of U+10FFFF only):
/// drop the trailing U+10FFFF characters, which cannot be incremented, then
/// move the last character to the next one.
fn prefix_successor(prefix: &str) -> Option<String> {
    let mut chars = prefix.trim_end_matches(char::MAX).chars();
    let last = chars.next_back()?;
    // The range of `char` skips the surrogates (U+D7FF is followed by
    // U+E000), which no `str` holds.
    let next = (last..=char::MAX).nth(1)?;
    let mut successor = chars.as_str().to_owned();
    successor.push(next);
    Some(successor)
}

/// JSON has one null, but `Option<Value>` has two (`None` and
/// `Some(Value::Null)`), and the stored state and the wire keep only the
/// first. Reading every null as `None` before merging makes the same change
/// merge the same whether its row came from memory or from storage, and on
/// both sides.
fn normalized(change: Cow<'_, Change<Value>>) -> Cow<'_, Change<Value>> {
    let has_json_null = match &change.kind {
        ChangeKind::Put(columns) | ChangeKind::Update(columns) => {
            columns.values().any(|v| matches!(v, Some(Value::Null)))
        }
        ChangeKind::Delete => false,
    };
    if !has_json_null {
        return change;
    }
    let mut change = change.into_owned();
    if let ChangeKind::Put(columns) | ChangeKind::Update(columns) = &mut change.kind {
        for value in columns.values_mut() {
            if matches!(value, Some(Value::Null)) {
                *value = None;
            }
        }
    }
    Cow::Owned(change)
}

/// The rows one call touches, merged in memory and written at its end.
struct Batch<'a> {
    table: &'a Table<'a>,
    rows: BTreeMap<String, Touched>,
    overwritten: Vec<Record>,
}

struct Touched {
    /// As stored before the call.
    before: Option<Row<Value>>,
    /// As merged so far.
    row: Option<Row<Value>>,
    changed: bool,
}

/// One row of `synced_overwritten`, encoded.
struct Record {
    key: String,
    col: String,
    kept: String,
    lost: String,
    lost_stamp: String,
}

impl<'a> Batch<'a> {
    fn new(table: &'a Table<'a>) -> Self {
        Self {
            table,
            rows: BTreeMap::new(),
            overwritten: Vec::new(),
        }
    }

    /// The row of `key` as merged so far, loaded at its first use.
    fn touched(&mut self, conn: &Connection, key: &str) -> Result<&mut Touched, StoreError> {
        Ok(match self.rows.entry(key.to_owned()) {
            Entry::Occupied(entry) => entry.into_mut(),
            Entry::Vacant(entry) => {
                let before = load_row(conn, self.table, key)?;
                entry.insert(Touched {
                    row: before.clone(),
                    before,
                    changed: false,
                })
            }
        })
    }

    fn is_visible(&mut self, conn: &Connection, key: &str) -> Result<bool, StoreError> {
        let touched = self.touched(conn, key)?;
        Ok(touched.row.as_ref().and_then(merge::visible).is_some())
    }

    fn apply(&mut self, conn: &Connection, change: &Change<Value>) -> Result<(), StoreError> {
        let rules = self.table.rules;
        let touched = self.touched(conn, &change.key)?;
        let applied = merge::apply(touched.row.as_ref(), change, rules);
        if applied.changed {
            touched.row = Some(applied.row);
            touched.changed = true;
        }
        // Recorded on both ends and by both functions: a local edit that
        // overwrites the other side's value is a loss like any other, and
        // the end that made it may be the only one that ever sees it (the
        // other end receives only the winner).
        let key = &change.key;
        for o in &applied.overwritten {
            self.overwritten.push(Record {
                key: key.clone(),
                col: o.column.clone(),
                kept: to_json(key, &o.kept)?,
                lost: to_json(key, &o.lost)?,
                lost_stamp: stamp_text(&o.lost.stamp),
            });
        }
        if let Some(o) = &applied.presence_overwritten {
            self.overwritten.push(Record {
                key: key.clone(),
                col: String::new(),
                kept: to_json(key, &o.kept)?,
                lost: to_json(key, &o.lost)?,
                lost_stamp: stamp_text(&o.lost.stamp),
            });
        }
        Ok(())
    }

    /// Stores the rows that changed and the records of what was overwritten;
    /// returns the keys whose visible row changed, sorted.
    fn write(self, tx: &Transaction<'_>) -> Result<Vec<String>, StoreError> {
        let table = self.table;
        let mut changed_keys = Vec::new();
        for (key, touched) in &self.rows {
            let Some(row) = touched.row.as_ref().filter(|_| touched.changed) else {
                continue;
            };
            let shown = merge::visible(row);
            let state = to_json(key, row)?;
            tx.prepare_cached(
                "INSERT INTO synced_rows (app, tbl, key, visible, state)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (app, tbl, key)
                 DO UPDATE SET visible = excluded.visible, state = excluded.state",
            )?
            .execute(params![table.app, table.name, key, shown.is_some(), state])?;
            if touched.before.as_ref().and_then(merge::visible) != shown {
                changed_keys.push(key.clone());
            }
        }
        // OR IGNORE: a lost change applied again (a duplicate under another
        // changeset id, or the same version losing to a later one) reports
        // the same loss again; the first record stands.
        let mut insert = tx.prepare_cached(
            "INSERT OR IGNORE INTO synced_overwritten
             (app, tbl, key, col, kept, lost, lost_stamp)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?;
        for r in &self.overwritten {
            insert.execute(params![
                table.app,
                table.name,
                r.key,
                r.col,
                r.kept,
                r.lost,
                r.lost_stamp
            ])?;
        }
        Ok(changed_keys)
    }
}

fn load_row(
    conn: &Connection,
    table: &Table<'_>,
    key: &str,
) -> Result<Option<Row<Value>>, StoreError> {
    let state: Option<String> = conn
        .prepare_cached("SELECT state FROM synced_rows WHERE app = ?1 AND tbl = ?2 AND key = ?3")?
        .query_row(params![table.app, table.name, key], |r| r.get(0))
        .optional()?;
    state.map(|state| parse_state(key, &state)).transpose()
}

fn parse_state(key: &str, state: &str) -> Result<Row<Value>, StoreError> {
    serde_json::from_str(state).map_err(|e| StoreError::Corrupt {
        key: key.to_owned(),
        reason: format!("state is not a merge row: {e}"),
    })
}

/// The visible columns of a row stored as visible.
fn shown(key: &str, state: &str) -> Result<Columns, StoreError> {
    merge::visible(&parse_state(key, state)?).ok_or_else(|| StoreError::Corrupt {
        key: key.to_owned(),
        reason: "marked visible, but its state says it does not exist".to_owned(),
    })
}

/// Encodes a row or a version. Values, stamps and maps keyed by strings
/// always encode; the error is mapped rather than unwrapped all the same.
fn to_json<T: Serialize>(key: &str, what: &T) -> Result<String, StoreError> {
    serde_json::to_string(what).map_err(|e| StoreError::Corrupt {
        key: key.to_owned(),
        reason: format!("state does not encode as JSON: {e}"),
    })
}

/// A stamp as text whose order is the stamps' order: each field zero-padded
/// to the width of its largest value.
pub fn stamp_text(stamp: &Stamp) -> String {
    format!(
        "{:020}-{:010}-{:020}",
        stamp.wall_ms, stamp.counter, stamp.node
    )
}

fn load_clock(conn: &Connection, app: &str) -> Result<Option<Stamp>, StoreError> {
    let last = conn
        .prepare_cached("SELECT wall_ms, counter, node FROM synced_clock WHERE app = ?1")?
        .query_row(params![app], |r| {
            Ok(Stamp::new(
                get_u64(r, 0)?,
                r.get(1)?,
                node_from_sql(r.get(2)?),
            ))
        })
        .optional()?;
    Ok(last)
}

fn save_clock(tx: &Transaction<'_>, app: &str, last: Stamp) -> Result<(), StoreError> {
    tx.prepare_cached(
        "INSERT INTO synced_clock (app, wall_ms, counter, node) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (app) DO UPDATE SET
             wall_ms = excluded.wall_ms, counter = excluded.counter, node = excluded.node",
    )?
    .execute(params![
        app,
        i64::try_from(last.wall_ms)
            .map_err(|e| rusqlite::Error::ToSqlConversionFailure(e.into()))?,
        last.counter,
        node_to_sql(last.node)
    ])?;
    Ok(())
}

/// A quantity (milliseconds, counts, bytes) stored in SQLite's signed
/// integer; rusqlite reads `u64` only with its `fallible_uint` feature.
fn get_u64(row: &rusqlite::Row<'_>, idx: usize) -> rusqlite::Result<u64> {
    let value: i64 = row.get(idx)?;
    u64::try_from(value).map_err(|_| rusqlite::Error::IntegralValueOutOfRange(idx, value))
}

// A node id is a name, not a quantity: its 64 bits are stored as they are in
// SQLite's signed integer, so that every id round-trips.
fn node_to_sql(node: u64) -> i64 {
    node.cast_signed()
}

fn node_from_sql(node: i64) -> u64 {
    node.cast_unsigned()
}

#[cfg(test)]
mod tests {
    use super::super::clock::MAX_DRIFT_MS;
    use super::super::merge::{Cell, Register, Rule};
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    const APP: &str = "recipes-app";
    const GATEWAY: u64 = 1;
    const SERVER: u64 = 2;
    const T0: u64 = 1_700_000_000_000;

    fn db() -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(SCHEMA).unwrap();
        // The schema is idempotent.
        conn.execute_batch(SCHEMA).unwrap();
        conn
    }

    fn table(rules: &TableRules) -> Table<'_> {
        Table {
            app: APP,
            name: "recipes",
            rules,
        }
    }

    fn cols(pairs: &[(&str, Value)]) -> Columns {
        pairs
            .iter()
            .map(|(c, v)| (c.to_string(), Some(v.clone()).filter(|v| !v.is_null())))
            .collect()
    }

    fn put(key: &str, pairs: &[(&str, Value)]) -> Edit {
        Edit::Put {
            key: key.into(),
            columns: cols(pairs),
        }
    }

    fn update(key: &str, pairs: &[(&str, Value)]) -> Edit {
        Edit::Update {
            key: key.into(),
            columns: cols(pairs),
        }
    }

    fn delete(key: &str) -> Edit {
        Edit::Delete { key: key.into() }
    }

    /// One call in its own transaction, committed if it succeeds.
    fn edit_in(
        conn: &mut Connection,
        table: &Table<'_>,
        side: Side,
        node: u64,
        now_ms: u64,
        edits: &[Edit],
    ) -> Result<Vec<Change<Value>>, StoreError> {
        let tx = conn.transaction().unwrap();
        let changes = edit(&tx, table, side, node, now_ms, edits)?;
        tx.commit().unwrap();
        Ok(changes)
    }

    /// A gateway's edits, as its app makes them.
    fn local(
        conn: &mut Connection,
        table: &Table<'_>,
        now_ms: u64,
        edits: &[Edit],
    ) -> Result<Vec<Change<Value>>, StoreError> {
        edit_in(conn, table, Side::Device, GATEWAY, now_ms, edits)
    }

    fn remote_in(
        conn: &mut Connection,
        table: &Table<'_>,
        id: &str,
        changes: &[Change<Value>],
        now_ms: u64,
    ) -> Result<Remote, StoreError> {
        let tx = conn.transaction().unwrap();
        let remote = apply_remote(&tx, table, id, changes, now_ms)?;
        tx.commit().unwrap();
        Ok(remote)
    }

    fn change(side: Side, wall_ms: u64, key: &str, kind: ChangeKind<Value>) -> Change<Value> {
        let node = match side {
            Side::Device => GATEWAY,
            Side::Server => SERVER,
        };
        Change {
            key: key.into(),
            side,
            stamp: Stamp::new(wall_ms, 0, node),
            kind,
        }
    }

    /// Every stored row of every table, as stored.
    fn dump(conn: &Connection) -> Vec<(String, String, String, bool, String)> {
        let mut stmt = conn
            .prepare("SELECT app, tbl, key, visible, state FROM synced_rows ORDER BY app, tbl, key")
            .unwrap();
        stmt.query_map([], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
    }

    fn count(conn: &Connection, sql: &str) -> i64 {
        conn.query_row(sql, [], |r| r.get(0)).unwrap()
    }

    fn keys(found: &[(String, Columns)]) -> Vec<&str> {
        found.iter().map(|(k, _)| k.as_str()).collect()
    }

    #[test]
    fn put_get_update_delete_round_trip() {
        let mut conn = db();
        let rules = TableRules::new(Rule::LastWriterWins);
        let t = table(&rules);
        assert_eq!(get(&conn, &t, "r1").unwrap(), None);

        let changes = local(
            &mut conn,
            &t,
            T0,
            &[put(
                "r1",
                &[("name", json!("bread")), ("setpoint", json!(180.5))],
            )],
        )
        .unwrap();
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].key, "r1");
        assert_eq!(changes[0].side, Side::Device);
        assert_eq!(changes[0].stamp, Stamp::new(T0, 0, GATEWAY));
        assert!(matches!(changes[0].kind, ChangeKind::Put(_)));
        assert_eq!(
            get(&conn, &t, "r1").unwrap(),
            Some(cols(&[
                ("name", json!("bread")),
                ("setpoint", json!(180.5))
            ]))
        );

        // Update writes only its columns; JSON null is stored as null.
        let changes = local(
            &mut conn,
            &t,
            T0 + 1,
            &[Edit::Update {
                key: "r1".into(),
                columns: [
                    ("setpoint".to_string(), Some(json!({"c": 200}))),
                    ("note".to_string(), Some(Value::Null)),
                ]
                .into(),
            }],
        )
        .unwrap();
        let ChangeKind::Update(sent) = &changes[0].kind else {
            panic!("an update: {changes:?}");
        };
        // JSON's null is shipped as the one null the wire and state keep.
        assert_eq!(sent.get("note"), Some(&None));
        let row = get(&conn, &t, "r1").unwrap().unwrap();
        assert_eq!(
            row,
            cols(&[
                ("name", json!("bread")),
                ("note", Value::Null),
                ("setpoint", json!({"c": 200})),
            ])
        );
        assert_eq!(row["note"], None);
        let (rows, bytes) = counts(&conn, &t).unwrap();
        assert_eq!(rows, 1);
        let state: String = conn
            .query_row("SELECT state FROM synced_rows WHERE key = 'r1'", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(bytes, state.len() as u64);

        local(&mut conn, &t, T0 + 2, &[delete("r1")]).unwrap();
        assert_eq!(get(&conn, &t, "r1").unwrap(), None);
        assert_eq!(counts(&conn, &t).unwrap(), (0, 0));
        // The tombstone stays, with its versions.
        let (visible, state): (bool, String) = conn
            .query_row(
                "SELECT visible, state FROM synced_rows WHERE key = 'r1'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert!(!visible);
        let row: Row<Value> = serde_json::from_str(&state).unwrap();
        assert_eq!(
            row.present,
            Some(Register {
                value: false,
                stamp: Stamp::new(T0 + 2, 0, GATEWAY),
                side: Side::Device
            })
        );
        assert_eq!(row.columns["name"].value, Some(json!("bread")));

        // A put brings it back.
        local(
            &mut conn,
            &t,
            T0 + 3,
            &[put("r1", &[("name", json!("rye"))])],
        )
        .unwrap();
        assert_eq!(
            get(&conn, &t, "r1").unwrap().unwrap()["name"],
            Some(json!("rye"))
        );

        // Other apps and tables do not see it.
        let other = Table {
            app: "other-app",
            ..t
        };
        assert_eq!(get(&conn, &other, "r1").unwrap(), None);
        let other = Table { name: "other", ..t };
        assert_eq!(get(&conn, &other, "r1").unwrap(), None);
        assert_eq!(counts(&conn, &other).unwrap(), (0, 0));
    }

    #[test]
    fn edits_of_rows_that_do_not_exist_are_refused_and_nothing_is_stored() {
        let mut conn = db();
        let rules = TableRules::new(Rule::LastWriterWins);
        let t = table(&rules);
        let refused = |r: Result<Vec<Change<Value>>, StoreError>, key: &str| match r {
            Err(StoreError::NoSuchRow { key: k }) => assert_eq!(k, key),
            other => panic!("expected NoSuchRow {key}: {other:?}"),
        };

        refused(
            local(&mut conn, &t, T0, &[update("nope", &[("a", json!(1))])]),
            "nope",
        );
        refused(local(&mut conn, &t, T0, &[delete("nope")]), "nope");
        assert_eq!(count(&conn, "SELECT count(*) FROM synced_clock"), 0);

        local(&mut conn, &t, T0, &[put("gone", &[("a", json!(1))])]).unwrap();
        local(&mut conn, &t, T0 + 1, &[delete("gone")]).unwrap();
        refused(
            local(&mut conn, &t, T0 + 2, &[update("gone", &[("a", json!(2))])]),
            "gone",
        );
        refused(local(&mut conn, &t, T0 + 2, &[delete("gone")]), "gone");
        // A row that only an update from the other side has reached does not
        // exist either.
        remote_in(
            &mut conn,
            &t,
            "s-1",
            &[change(
                Side::Server,
                T0,
                "half",
                ChangeKind::Update(cols(&[("a", json!(1))])),
            )],
            T0,
        )
        .unwrap();
        refused(
            local(&mut conn, &t, T0 + 2, &[update("half", &[("a", json!(2))])]),
            "half",
        );

        let before = dump(&conn);
        let clock_before = load_clock(&conn, APP).unwrap();

        // A valid edit, then an invalid one: the call is refused before it
        // writes, and the caller's transaction, dropped, rolls back.
        {
            let tx = conn.transaction().unwrap();
            let r = edit(
                &tx,
                &t,
                Side::Device,
                GATEWAY,
                T0 + 10,
                &[
                    put("new", &[("a", json!(1))]),
                    update("gone", &[("a", json!(3))]),
                ],
            );
            refused(r, "gone");
            // Nothing was written even inside the transaction.
            assert_eq!(get(&tx, &t, "new").unwrap(), None);
            assert_eq!(dump(&tx), before);
        }
        assert_eq!(get(&conn, &t, "new").unwrap(), None);
        assert_eq!(dump(&conn), before);
        assert_eq!(load_clock(&conn, APP).unwrap(), clock_before);

        // Within one call, an earlier edit counts: put then update is fine,
        // delete then update is not.
        let changes = local(
            &mut conn,
            &t,
            T0 + 20,
            &[
                put("new", &[("a", json!(1))]),
                update("new", &[("a", json!(2))]),
            ],
        )
        .unwrap();
        assert_eq!(changes.len(), 2);
        assert!(changes[0].stamp < changes[1].stamp);
        assert_eq!(
            get(&conn, &t, "new").unwrap(),
            Some(cols(&[("a", json!(2))]))
        );
        refused(
            local(
                &mut conn,
                &t,
                T0 + 30,
                &[delete("new"), update("new", &[("a", json!(3))])],
            ),
            "new",
        );
        assert_eq!(
            get(&conn, &t, "new").unwrap(),
            Some(cols(&[("a", json!(2))]))
        );
        // No edits: nothing happens.
        assert_eq!(local(&mut conn, &t, T0 + 40, &[]).unwrap(), vec![]);
    }

    #[test]
    fn scan_by_prefix_and_by_range_in_key_order() {
        let mut conn = db();
        let rules = TableRules::new(Rule::LastWriterWins);
        let t = table(&rules);
        let all = [
            "a",
            "a%",
            "a%%",
            "a%b",
            "a_b",
            "ab",
            "abc",
            "a\u{10FFFF}",
            "a\u{10FFFF}x",
            "b",
            "\u{10FFFF}",
            "\u{10FFFF}\u{10FFFF}z",
        ];
        let edits: Vec<Edit> = all
            .iter()
            .rev()
            .map(|k| put(k, &[("k", json!(k))]))
            .collect();
        local(&mut conn, &t, T0, &edits).unwrap();
        // A tombstone, and a row in another table, are not listed.
        local(&mut conn, &t, T0 + 1, &[delete("a%%")]).unwrap();
        let other = Table { name: "other", ..t };
        edit_in(
            &mut conn,
            &other,
            Side::Device,
            GATEWAY,
            T0 + 2,
            &[put("a%c", &[])],
        )
        .unwrap();

        let prefix =
            |p: &str, limit: usize| scan(&conn, &t, &KeyRange::Prefix(p.into()), limit).unwrap();
        let found = prefix("a%", 100);
        assert_eq!(keys(&found), ["a%", "a%b"]);
        assert_eq!(found[1].1, cols(&[("k", json!("a%b"))]));
        assert_eq!(keys(&prefix("a_", 100)), ["a_b"]);
        // A prefix that is a whole key lists it and the longer ones.
        assert_eq!(keys(&prefix("ab", 100)), ["ab", "abc"]);
        assert_eq!(keys(&prefix("abc", 100)), ["abc"]);
        assert_eq!(
            keys(&prefix("a\u{10FFFF}", 100)),
            ["a\u{10FFFF}", "a\u{10FFFF}x"]
        );
        assert_eq!(
            keys(&prefix("\u{10FFFF}", 100)),
            ["\u{10FFFF}", "\u{10FFFF}\u{10FFFF}z"]
        );
        assert_eq!(
            keys(&prefix("\u{10FFFF}\u{10FFFF}", 100)),
            ["\u{10FFFF}\u{10FFFF}z"]
        );
        assert_eq!(keys(&prefix("c", 100)), Vec::<&str>::new());
        let mut visible: Vec<&str> = all.iter().copied().filter(|k| *k != "a%%").collect();
        visible.sort_unstable();
        assert_eq!(keys(&prefix("", 100)), visible);
        assert_eq!(keys(&prefix("", 3)), visible[..3]);
        assert_eq!(keys(&prefix("a", 2)), ["a", "a%"]);
        assert!(prefix("a", 0).is_empty());

        let between = |from: Option<&str>, to: Option<&str>, limit: usize| {
            let range = KeyRange::Between {
                from: from.map(String::from),
                to: to.map(String::from),
            };
            scan(&conn, &t, &range, limit).unwrap()
        };
        assert_eq!(
            keys(&between(Some("a_b"), Some("b"), 100)),
            ["a_b", "ab", "abc", "a\u{10FFFF}", "a\u{10FFFF}x"]
        );
        assert_eq!(keys(&between(Some("a%"), Some("a_b"), 100)), ["a%", "a%b"]);
        assert_eq!(keys(&between(None, Some("a%b"), 100)), ["a", "a%"]);
        assert_eq!(
            keys(&between(Some("b"), None, 100)),
            ["b", "\u{10FFFF}", "\u{10FFFF}\u{10FFFF}z"]
        );
        assert_eq!(keys(&between(None, None, 100)), visible);
        assert_eq!(keys(&between(None, None, 1)), ["a"]);
        assert!(between(Some("b"), Some("a"), 100).is_empty());
        assert!(between(Some("ab"), Some("ab"), 100).is_empty());
    }

    #[test]
    fn the_successor_of_a_prefix_bounds_exactly_its_keys() {
        assert_eq!(prefix_successor(""), None);
        assert_eq!(prefix_successor("a").as_deref(), Some("b"));
        assert_eq!(prefix_successor("a%").as_deref(), Some("a&"));
        assert_eq!(prefix_successor("a\u{10FFFF}").as_deref(), Some("b"));
        assert_eq!(
            prefix_successor("ab\u{10FFFF}\u{10FFFF}").as_deref(),
            Some("ac")
        );
        assert_eq!(prefix_successor("\u{10FFFF}"), None);
        assert_eq!(prefix_successor("\u{10FFFF}\u{10FFFF}"), None);
        assert_eq!(prefix_successor("x\u{D7FF}").as_deref(), Some("x\u{E000}"));
        assert_eq!(prefix_successor("\u{7F}").as_deref(), Some("\u{80}"));
        assert_eq!(prefix_successor("é").as_deref(), Some("ê"));
    }

    #[test]
    fn the_clock_resumes_monotonic_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gateway.db");
        let rules = TableRules::new(Rule::LastWriterWins);
        let t = table(&rules);

        let first = {
            let mut conn = Connection::open(&path).unwrap();
            conn.execute_batch(SCHEMA).unwrap();
            let a = local(&mut conn, &t, T0, &[put("k", &[])]).unwrap();
            let b = local(
                &mut conn,
                &t,
                T0,
                &[
                    update("k", &[("x", json!(1))]),
                    update("k", &[("x", json!(2))]),
                ],
            )
            .unwrap();
            assert_eq!(a[0].stamp, Stamp::new(T0, 0, GATEWAY));
            assert_eq!(b[0].stamp, Stamp::new(T0, 1, GATEWAY));
            assert_eq!(b[1].stamp, Stamp::new(T0, 2, GATEWAY));
            b[1].stamp
        };
        // Restarted with the wall clock an hour back (no RTC, before NTP).
        let mut conn = Connection::open(&path).unwrap();
        conn.execute_batch(SCHEMA).unwrap();
        let after = local(
            &mut conn,
            &t,
            T0 - 3_600_000,
            &[update("k", &[("x", json!(3))])],
        )
        .unwrap();
        assert!(
            after[0].stamp > first,
            "{:?} after {first:?}",
            after[0].stamp
        );
        assert_eq!(after[0].stamp, Stamp::new(T0, 3, GATEWAY));
        // The later update won, as it should.
        assert_eq!(get(&conn, &t, "k").unwrap().unwrap()["x"], Some(json!(3)));

        // A changeset seen moves the clock: the next edit is after it.
        let seen = Stamp::new(T0 + 60_000, 4, SERVER);
        let mut remote = change(
            Side::Server,
            0,
            "k",
            ChangeKind::Update(cols(&[("x", json!(9))])),
        );
        remote.stamp = seen;
        remote_in(&mut conn, &t, "s-1", &[remote], T0 + 1).unwrap();
        drop(conn);
        let mut conn = Connection::open(&path).unwrap();
        let next = local(&mut conn, &t, T0, &[update("k", &[("x", json!(4))])]).unwrap();
        assert!(next[0].stamp > seen);
        assert_eq!(next[0].stamp.node, GATEWAY);

        // A node id of all 64 bits round-trips through the clock's row.
        let big = u64::MAX - 1;
        let again = edit_in(&mut conn, &t, Side::Device, big, T0, &[update("k", &[])]).unwrap();
        assert_eq!(again[0].stamp.node, big);
        let (node, counter): (i64, i64) = conn
            .query_row("SELECT node, counter FROM synced_clock", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        assert_eq!(node_from_sql(node), big);
        assert_eq!(load_clock(&conn, APP).unwrap(), Some(again[0].stamp));
        assert_eq!(counter, i64::from(again[0].stamp.counter));
    }

    #[test]
    fn a_changeset_is_applied_once_and_reports_the_rows_it_changed() {
        let mut conn = db();
        let rules = TableRules::new(Rule::LastWriterWins);
        let t = table(&rules);
        // Local: "shown" and "tomb" (deleted).
        local(
            &mut conn,
            &t,
            T0,
            &[
                put("shown", &[("a", json!(1))]),
                put("tomb", &[("a", json!(1))]),
            ],
        )
        .unwrap();
        local(&mut conn, &t, T0 + 1, &[delete("tomb")]).unwrap();

        let changes = vec![
            change(
                Side::Server,
                T0 + 10,
                "shown",
                ChangeKind::Update(cols(&[("a", json!(2))])),
            ),
            // A tombstone's columns change, not what anyone sees.
            change(
                Side::Server,
                T0 + 11,
                "tomb",
                ChangeKind::Update(cols(&[("a", json!(2))])),
            ),
            change(
                Side::Server,
                T0 + 12,
                "new",
                ChangeKind::Put(cols(&[("a", json!(3))])),
            ),
            // Created and deleted within the changeset: no visible change.
            change(Side::Server, T0 + 13, "brief", ChangeKind::Put(cols(&[]))),
            change(Side::Server, T0 + 14, "brief", ChangeKind::Delete),
            change(
                Side::Server,
                T0 + 15,
                "shown",
                ChangeKind::Update(cols(&[("b", json!(true))])),
            ),
            // Older than the version above: it loses.
            change(
                Side::Server,
                T0 - 5,
                "shown",
                ChangeKind::Update(cols(&[("a", json!(0))])),
            ),
        ];
        let first = remote_in(&mut conn, &t, "server-db-1", &changes, T0 + 20).unwrap();
        assert_eq!(
            first,
            Remote {
                duplicate: false,
                changed_keys: vec!["new".into(), "shown".into()],
            }
        );
        assert_eq!(
            get(&conn, &t, "shown").unwrap(),
            Some(cols(&[("a", json!(2)), ("b", json!(true))]))
        );
        assert_eq!(
            get(&conn, &t, "new").unwrap(),
            Some(cols(&[("a", json!(3))]))
        );
        assert_eq!(get(&conn, &t, "tomb").unwrap(), None);
        assert_eq!(get(&conn, &t, "brief").unwrap(), None);
        let stored = dump(&conn);
        let clock = load_clock(&conn, APP).unwrap().unwrap();
        assert!(clock > Stamp::new(T0 + 15, 0, SERVER));
        assert_eq!(clock.node, GATEWAY);

        let again = remote_in(&mut conn, &t, "server-db-1", &changes, T0 + 30).unwrap();
        assert_eq!(
            again,
            Remote {
                duplicate: true,
                changed_keys: vec![],
            }
        );
        assert_eq!(dump(&conn), stored);
        assert_eq!(load_clock(&conn, APP).unwrap().unwrap(), clock);
        // The same changeset id in another app is another changeset.
        let other = Table {
            app: "other-app",
            ..t
        };
        let theirs = remote_in(&mut conn, &other, "server-db-1", &changes[2..3], T0 + 30).unwrap();
        assert_eq!(theirs.changed_keys, ["new"]);
        // An app whose first write comes from the other side: node 0 until
        // it edits.
        assert_eq!(load_clock(&conn, "other-app").unwrap().unwrap().node, 0);
        // The same changes under a new id: nothing changes, nothing to tell.
        let replay = remote_in(&mut conn, &t, "server-db-2", &changes, T0 + 30).unwrap();
        assert_eq!(replay.changed_keys, Vec::<String>::new());
        assert!(!replay.duplicate);
        assert_eq!(dump(&conn).len(), stored.len() + 1);
    }

    #[test]
    fn overwritten_versions_are_recorded_once_each() {
        let mut conn = db();
        let rules = TableRules::new(Rule::ServerWins);
        let t = table(&rules);
        edit_in(
            &mut conn,
            &t,
            Side::Server,
            SERVER,
            T0,
            &[put("k", &[("a", json!(1)), ("b", json!("s"))])],
        )
        .unwrap();
        // The device's later put loses everywhere under server-wins, its
        // delete too.
        let device = vec![
            change(
                Side::Device,
                T0 + 5,
                "k",
                ChangeKind::Put(cols(&[("a", json!(2)), ("b", json!("s"))])),
            ),
            change(Side::Device, T0 + 6, "k", ChangeKind::Delete),
        ];
        let r = remote_in(&mut conn, &t, "gw-1", &device, T0 + 10).unwrap();
        assert_eq!(r.changed_keys, Vec::<String>::new());
        assert_eq!(
            get(&conn, &t, "k").unwrap(),
            Some(cols(&[("a", json!(1)), ("b", json!("s"))]))
        );
        let records = |conn: &Connection| -> Vec<(String, String, String, String)> {
            conn.prepare(
                "SELECT col, kept, lost, lost_stamp FROM synced_overwritten
                 WHERE app = ?1 AND tbl = 'recipes' AND key = 'k' ORDER BY col, lost_stamp",
            )
            .unwrap()
            .query_map([APP], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
        };
        let first = records(&conn);
        // Column a (b had the same value: nothing lost), and the existence.
        assert_eq!(first.len(), 2, "{first:?}");
        let (col, kept, lost, lost_stamp) = &first[0];
        assert_eq!(col, "");
        let kept: Register = serde_json::from_str(kept).unwrap();
        let lost: Register = serde_json::from_str(lost).unwrap();
        assert!(kept.value && kept.side == Side::Server);
        assert!(!lost.value && lost.side == Side::Device);
        assert_eq!(lost.stamp, Stamp::new(T0 + 6, 0, GATEWAY));
        assert_eq!(lost_stamp, &stamp_text(&lost.stamp));
        let (col, kept, lost, _) = &first[1];
        assert_eq!(col, "a");
        let kept: Cell<Value> = serde_json::from_str(kept).unwrap();
        let lost: Cell<Value> = serde_json::from_str(lost).unwrap();
        assert_eq!((kept.value, kept.side), (Some(json!(1)), Side::Server));
        assert_eq!((lost.value, lost.side), (Some(json!(2)), Side::Device));

        // The same losing changes again under other ids: still one record each.
        remote_in(&mut conn, &t, "gw-2", &device, T0 + 20).unwrap();
        remote_in(&mut conn, &t, "gw-3", &device[..1], T0 + 20).unwrap();
        assert_eq!(records(&conn), first);

        // A later device version that loses is another record; a server edit
        // overwriting a device value (the device's earlier version of b,
        // written while the server had none) is recorded by edit too.
        remote_in(
            &mut conn,
            &t,
            "gw-4",
            &[
                change(
                    Side::Device,
                    T0 + 30,
                    "k",
                    ChangeKind::Update(cols(&[("a", json!(3))])),
                ),
                change(
                    Side::Device,
                    T0 + 31,
                    "k",
                    ChangeKind::Update(cols(&[("c", json!("d"))])),
                ),
            ],
            T0 + 40,
        )
        .unwrap();
        edit_in(
            &mut conn,
            &t,
            Side::Server,
            SERVER,
            T0 + 50,
            &[update("k", &[("c", json!("s"))])],
        )
        .unwrap();
        let now = records(&conn);
        let summary: Vec<(&str, &str)> = now
            .iter()
            .map(|(c, _, _, s)| (c.as_str(), &s[..20]))
            .collect();
        let wall = |ms: u64| format!("{ms:020}");
        let (w6, w5, w30, w31) = (wall(T0 + 6), wall(T0 + 5), wall(T0 + 30), wall(T0 + 31));
        assert_eq!(
            summary,
            [
                ("", w6.as_str()),
                ("a", w5.as_str()),
                ("a", w30.as_str()),
                ("c", w31.as_str())
            ]
        );
    }

    #[test]
    fn pages_read_on_past_the_last_key_and_counts_see_visible_rows_only() {
        let mut conn = db();
        let rules = TableRules::new(Rule::LastWriterWins);
        let t = table(&rules);
        let edits: Vec<Edit> = ["a1", "a2", "a2\0", "a3", "b1"]
            .iter()
            .map(|k| put(k, &[("v", json!(k))]))
            .collect();
        local(&mut conn, &t, T0, &edits).unwrap();
        let page = |range: KeyRange| -> Vec<String> {
            keys(&scan(&conn, &t, &range, 100).unwrap())
                .into_iter()
                .map(str::to_owned)
                .collect()
        };
        let prefix = KeyRange::Prefix("a".into());
        // Past "a2": "a2\0" is the first key above it, and is listed.
        assert_eq!(page(prefix.after("a2")), ["a2\0", "a3"]);
        // Past a key before the range: the range's own start holds.
        assert_eq!(page(prefix.after("0")), ["a1", "a2", "a2\0", "a3"]);
        let between = KeyRange::Between {
            from: None,
            to: Some("b".into()),
        };
        assert_eq!(page(between.after("a2\0")), ["a3"]);

        let (rows, bytes) = app_counts(&conn, APP).unwrap();
        assert_eq!((rows, bytes), counts(&conn, &t).unwrap());
        assert_eq!(rows, 5);
        local(&mut conn, &t, T0 + 1, &[delete("a1")]).unwrap();
        let (one, one_bytes) = key_counts(&conn, &t, &["a1", "a2", "zz"]).unwrap();
        assert_eq!(one, 1, "a1 is a tombstone and zz was never put");
        let (rows_now, bytes_now) = app_counts(&conn, APP).unwrap();
        assert_eq!(rows_now, 4);
        assert!(one_bytes > 0 && bytes_now < bytes);
    }

    #[test]
    fn a_changeset_too_far_ahead_is_refused_whole() {
        let mut conn = db();
        let rules = TableRules::new(Rule::LastWriterWins);
        let t = table(&rules);
        local(&mut conn, &t, T0, &[put("k", &[("a", json!(1))])]).unwrap();
        let before = dump(&conn);
        let clock = load_clock(&conn, APP).unwrap();
        let changes = vec![
            change(
                Side::Server,
                T0 + 1,
                "k",
                ChangeKind::Update(cols(&[("a", json!(2))])),
            ),
            change(Side::Server, T0 + 2, "other", ChangeKind::Put(cols(&[]))),
            change(
                Side::Server,
                T0 + MAX_DRIFT_MS + 1,
                "wild",
                ChangeKind::Put(cols(&[])),
            ),
        ];
        let err = remote_in(&mut conn, &t, "s-1", &changes, T0).unwrap_err();
        assert!(
            matches!(err, StoreError::Clock(ClockError::TooFarAhead { .. })),
            "{err:?}"
        );
        assert!(
            err.to_string()
                .starts_with("synced tables clock: remote stamp at"),
            "{err}"
        );
        assert_eq!(dump(&conn), before);
        assert_eq!(load_clock(&conn, APP).unwrap(), clock);
        assert_eq!(count(&conn, "SELECT count(*) FROM synced_applied"), 0);
        assert_eq!(count(&conn, "SELECT count(*) FROM synced_overwritten"), 0);

        // Once our clock has caught up, the same changeset applies.
        let r = remote_in(&mut conn, &t, "s-1", &changes, T0 + 2).unwrap();
        assert_eq!(r.changed_keys, ["k", "other", "wild"]);
    }

    #[test]
    fn a_corrupt_state_is_reported_with_its_key() {
        let mut conn = db();
        let rules = TableRules::new(Rule::LastWriterWins);
        let t = table(&rules);
        local(&mut conn, &t, T0, &[put("k", &[])]).unwrap();
        conn.execute(
            "UPDATE synced_rows SET state = '{\"present\": 1' WHERE key = 'k'",
            [],
        )
        .unwrap();
        for err in [
            get(&conn, &t, "k").unwrap_err(),
            scan(&conn, &t, &KeyRange::Prefix(String::new()), 10).unwrap_err(),
            local(&mut conn, &t, T0, &[update("k", &[])]).unwrap_err(),
        ] {
            let StoreError::Corrupt { key, .. } = &err else {
                panic!("{err:?}");
            };
            assert_eq!(key, "k");
            assert!(
                err.to_string().starts_with(
                    "synced row \"k\" has a corrupt stored state: state is not a merge row:"
                ),
                "{err}"
            );
        }
        // Marked visible, but a tombstone.
        conn.execute(
            "UPDATE synced_rows SET state = '{\"present\":null,\"columns\":{}}' WHERE key = 'k'",
            [],
        )
        .unwrap();
        let err = get(&conn, &t, "k").unwrap_err();
        assert_eq!(
            err.to_string(),
            "synced row \"k\" has a corrupt stored state: marked visible, but its state says it does not exist"
        );
        assert_eq!(
            StoreError::NoSuchRow { key: "r".into() }.to_string(),
            "no row with key \"r\": it was never put, or it was deleted"
        );
    }

    // ---- Two stores converge ------------------------------------------------

    /// One end: its database, the changesets it made, its clock's offset.
    struct End {
        conn: Connection,
        side: Side,
        node: u64,
        skew_ms: u64,
        sent: Vec<(String, Vec<Change<Value>>)>,
    }

    impl End {
        fn new(side: Side, node: u64, skew_ms: u64) -> Self {
            Self {
                conn: db(),
                side,
                node,
                skew_ms,
                sent: Vec::new(),
            }
        }

        /// Makes the edits as one call; a refused call is dropped, as a
        /// guest would see an error.
        fn edit(&mut self, t: &Table<'_>, now_ms: u64, edits: &[Edit]) -> bool {
            match edit_in(
                &mut self.conn,
                t,
                self.side,
                self.node,
                now_ms + self.skew_ms,
                edits,
            ) {
                Ok(changes) => {
                    let id = format!("{:?}-{}", self.side, self.sent.len());
                    self.sent.push((id, changes));
                    true
                }
                Err(StoreError::NoSuchRow { .. }) => false,
                Err(e) => panic!("{e}"),
            }
        }

        /// Receives a changeset, through JSON as on the wire.
        fn receive(
            &mut self,
            t: &Table<'_>,
            now_ms: u64,
            changeset: &(String, Vec<Change<Value>>),
        ) -> Remote {
            let wire = serde_json::to_string(&changeset.1).unwrap();
            let changes: Vec<Change<Value>> = serde_json::from_str(&wire).unwrap();
            remote_in(
                &mut self.conn,
                t,
                &changeset.0,
                &changes,
                now_ms + self.skew_ms,
            )
            .unwrap()
        }
    }

    fn assert_converged(gateway: &End, server: &End, t: &Table<'_>) {
        let g = dump(&gateway.conn);
        assert!(!g.is_empty());
        assert_eq!(g, dump(&server.conn));
        let all = KeyRange::Prefix(String::new());
        assert_eq!(
            scan(&gateway.conn, t, &all, 1000).unwrap(),
            scan(&server.conn, t, &all, 1000).unwrap()
        );
        assert_eq!(
            counts(&gateway.conn, t).unwrap(),
            counts(&server.conn, t).unwrap()
        );
    }

    #[test]
    fn a_gateway_and_the_server_converge_under_each_rule() {
        for rule in Rule::ALL {
            let rules = TableRules::new(rule);
            let t = table(&rules);
            // The server's clock is 7 ms ahead of the gateway's.
            let mut gw = End::new(Side::Device, GATEWAY, 0);
            let mut sv = End::new(Side::Server, SERVER, 7);
            let at = |step: u64| T0 + 1_000 * step;

            assert!(gw.edit(
                &t,
                at(1),
                &[
                    put("k1", &[("a", json!(1)), ("b", json!("x"))]),
                    put("k2", &[("a", json!(2))]),
                ]
            ));
            // Concurrently, before either has heard from the other.
            assert!(sv.edit(
                &t,
                at(2),
                &[
                    put("k1", &[("a", json!(10))]),
                    put("k3", &[("a", json!(3))])
                ]
            ));
            let r = sv.receive(&t, at(3), &gw.sent[0].clone());
            assert!(!r.duplicate);
            assert!(sv.edit(
                &t,
                at(3),
                &[update("k1", &[("b", json!("y"))]), delete("k2")]
            ));
            assert!(gw.edit(
                &t,
                at(4),
                &[update("k2", &[("a", json!(20))]), delete("k1")]
            ));
            // The gateway hears the server out of order, and twice.
            let (s0, s1) = (sv.sent[0].clone(), sv.sent[1].clone());
            gw.receive(&t, at(5), &s1);
            gw.receive(&t, at(5), &s0);
            assert!(gw.receive(&t, at(5), &s1).duplicate);
            assert!(gw.edit(
                &t,
                at(6),
                &[
                    put("k2", &[("a", json!(21)), ("b", Value::Null)]),
                    update("k3", &[("a", json!(30))]),
                ]
            ));
            // The server hears the rest, out of order and with repeats.
            for (i, duplicate) in [(2, false), (1, false), (0, true), (2, true), (1, true)] {
                let changeset = gw.sent[i].clone();
                let r = sv.receive(&t, at(7), &changeset);
                assert_eq!(r.duplicate, duplicate, "changeset {i}");
            }
            // Everything has been applied everywhere, some of it twice more.
            for changeset in sv.sent.clone() {
                assert!(gw.receive(&t, at(8), &changeset).duplicate);
            }
            assert_converged(&gw, &sv, &t);

            // What each rule decided: k1 was put by the server and deleted by
            // the gateway later; k3 was put by the server and updated by the
            // gateway later; k2 was deleted by the server after the
            // gateway's put, then put again by the gateway.
            let k1 = get(&gw.conn, &t, "k1").unwrap();
            let k3 = get(&gw.conn, &t, "k3").unwrap().unwrap();
            let k2 = get(&gw.conn, &t, "k2").unwrap();
            match rule {
                Rule::ServerWins => {
                    assert_eq!(k1, Some(cols(&[("a", json!(10)), ("b", json!("y"))])));
                    assert_eq!(k3["a"], Some(json!(3)));
                    assert_eq!(k2, None);
                }
                Rule::DeviceWins => {
                    assert_eq!(k1, None);
                    assert_eq!(k3["a"], Some(json!(30)));
                    assert_eq!(k2, Some(cols(&[("a", json!(21)), ("b", Value::Null)])));
                }
                Rule::LastWriterWins => {
                    assert_eq!(k1, None);
                    assert_eq!(k3["a"], Some(json!(30)));
                    assert_eq!(k2, Some(cols(&[("a", json!(21)), ("b", Value::Null)])));
                }
            }
        }
    }

    const KEYS: [&str; 4] = ["a", "a%", "a_", "b"];
    use super::super::merge::tests::{COLUMNS, arb_rules};

    /// A key, put (0), update (1) or delete (2), and column values, as indices.
    type RawEdit = (usize, u8, Vec<(usize, Option<i64>)>);

    #[derive(Debug, Clone)]
    enum Step {
        /// One call of edits (key, put/update/delete, column values) on one end.
        Edit {
            gateway: bool,
            advance_ms: u64,
            edits: Vec<RawEdit>,
        },
        /// One of the other end's changesets so far, picked by `pick`
        /// (modulo their number), delivered to one end: any order, repeats.
        Deliver { to_gateway: bool, pick: usize },
    }

    fn arb_step() -> impl Strategy<Value = Step> {
        let edit = (
            0..KEYS.len(),
            0u8..3,
            prop::collection::vec(
                (0..COLUMNS.len(), prop::option::weighted(0.8, -2i64..3)),
                0..3,
            ),
        );
        prop_oneof![
            3 => (any::<bool>(), 0u64..40, prop::collection::vec(edit, 1..3)).prop_map(
                |(gateway, advance_ms, edits)| Step::Edit { gateway, advance_ms, edits }
            ),
            2 => (any::<bool>(), any::<usize>())
                .prop_map(|(to_gateway, pick)| Step::Deliver { to_gateway, pick }),
        ]
    }

    fn to_edit(key: usize, kind: u8, values: &[(usize, Option<i64>)]) -> Edit {
        let key = KEYS[key].to_string();
        let columns: Columns = values
            .iter()
            .map(|&(c, v)| (COLUMNS[c].to_string(), v.map(Value::from)))
            .collect();
        match kind {
            0 => Edit::Put { key, columns },
            1 => Edit::Update { key, columns },
            _ => Edit::Delete { key },
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn two_stores_converge_whatever_they_exchange_and_in_what_order(
            rules in arb_rules(),
            skew_ms in 0u64..2_000,
            steps in prop::collection::vec(arb_step(), 1..40),
        ) {
            let t = table(&rules);
            let mut gw = End::new(Side::Device, GATEWAY, 0);
            let mut sv = End::new(Side::Server, SERVER, skew_ms);
            let mut now = T0;
            for step in &steps {
                match step {
                    Step::Edit { gateway, advance_ms, edits } => {
                        now += advance_ms;
                        let edits: Vec<Edit> =
                            edits.iter().map(|(k, kind, v)| to_edit(*k, *kind, v)).collect();
                        let end = if *gateway { &mut gw } else { &mut sv };
                        end.edit(&t, now, &edits);
                    }
                    Step::Deliver { to_gateway, pick } => {
                        let (to, from) = if *to_gateway { (&mut gw, &sv) } else { (&mut sv, &gw) };
                        if !from.sent.is_empty() {
                            let changeset = from.sent[pick % from.sent.len()].clone();
                            to.receive(&t, now, &changeset);
                        }
                    }
                }
            }
            // Then everything, newest first, and all of it again.
            now += 1;
            let to_gateway: Vec<_> = sv.sent.iter().rev().chain(&sv.sent).cloned().collect();
            let to_server: Vec<_> = gw.sent.iter().rev().chain(&gw.sent).cloned().collect();
            for changeset in &to_gateway {
                gw.receive(&t, now, changeset);
            }
            for changeset in &to_server {
                sv.receive(&t, now, changeset);
            }
            for (end, n) in [(&gw, sv.sent.len()), (&sv, gw.sent.len())] {
                let applied = count(&end.conn, "SELECT count(*) FROM synced_applied");
                prop_assert_eq!(applied, i64::try_from(n).unwrap());
            }
            if gw.sent.is_empty() && sv.sent.is_empty() {
                prop_assert!(dump(&gw.conn).is_empty() && dump(&sv.conn).is_empty());
            } else {
                assert_converged(&gw, &sv, &t);
            }
        }
    }
}

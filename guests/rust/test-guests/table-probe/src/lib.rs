//! Test guest: its `recipes` synced table, written and read as the cloud's
//! actions ask, each answer a line of text a test can compare.
//!
//! - `put("id|name|setpoint")`: a put (an empty setpoint is left null);
//! - `update("id|column|value")`: an update of one column (`name`,
//!   `setpoint` or `uses`);
//! - `delete("id")`;
//! - `transact("op;op;...")`: the writes, `p:id|name|setpoint`, `u:id|column|value`
//!   or `d:id`, as one transaction;
//! - `get("id")`: `id name=... setpoint=...` or `none`;
//! - `scan("prefix")`: every key under the prefix, a page of 2 at a time;
//! - `fill(n)`: `n` rows `fill-0`.. in transactions of 500;
//! - `status`: `pending=N pushed=yes|no rows=N`;
//! - `changes`: the keys the server changed since last asked, `,`-joined;
//! - `sync("push,pull")`: `sync` the ways named; `pulled`: `seq=N last=yes|no`;
//! - `dump("")`: every row as `get` shows it, `;`-joined;
//! - `later("MS;op;op...")`: the ops of a `transact`, made on the first tick
//!   at least MS milliseconds later (for writes while the cloud is away).
//!
//! With `fill = N` in its config, `init` fills N rows itself unless they are
//! there, so that a test can write while the cloud is away.
//!
//! Every text argument may start with `@TABLE;` to act on another of the
//! model's tables than `recipes`. A refused call answers `error <kind>:
//! <message>`.

use wasmgate_guest::tables::{self, Edit, KeyRange, Row};
use wasmgate_guest::{App, Config, Error, Fields, Value, info};

struct TableProbe {
    /// Transactions to make on a later tick: when (ns), the table, and the
    /// ops.
    later: Vec<(u64, String, String)>,
}

const TABLE: &str = "recipes";

fn refused(e: Error) -> String {
    format!("error {}: {}", e.kind(), e.message())
}

fn column(name: &str, raw: &str) -> Result<(String, Value), String> {
    let value = match name {
        "name" => Value::Text(raw.to_string()),
        "setpoint" => Value::Number(raw.parse().map_err(|e| format!("setpoint {raw:?}: {e}"))?),
        "uses" => Value::Integer(raw.parse().map_err(|e| format!("uses {raw:?}: {e}"))?),
        other => Value::Text(format!("{other}={raw}")),
    };
    Ok((name.to_string(), value))
}

fn put_row(spec: &str) -> Result<Row, String> {
    let mut parts = spec.split('|');
    let key = parts.next().unwrap_or_default().to_string();
    let mut columns: Fields = Vec::new();
    if let Some(name) = parts.next() {
        columns.push(column("name", name)?);
    }
    if let Some(setpoint) = parts.next().filter(|s| !s.is_empty()) {
        columns.push(column("setpoint", setpoint)?);
    }
    Ok(Row { key, columns })
}

fn update_row(spec: &str) -> Result<Row, String> {
    let mut parts = spec.splitn(3, '|');
    let key = parts.next().unwrap_or_default().to_string();
    let name = parts.next().unwrap_or_default();
    let raw = parts.next().unwrap_or_default();
    Ok(Row {
        key,
        columns: vec![column(name, raw)?],
    })
}

fn show(key: &str, columns: &Fields) -> String {
    let mut line = key.to_string();
    for (name, value) in columns {
        let value = match value {
            Value::Text(t) => t.clone(),
            Value::Number(n) => n.to_string(),
            Value::Integer(i) => i.to_string(),
            other => format!("{other:?}"),
        };
        line.push_str(&format!(" {name}={value}"));
    }
    line
}

/// The ops of a transaction: `p:id|name|setpoint`, `u:id|column|value`,
/// `d:id`, `;`-separated.
fn edits_of(text: &str) -> Result<Vec<Edit>, String> {
    let mut edits = Vec::new();
    for op in text.split(';') {
        edits.push(match op.split_once(':') {
            Some(("p", spec)) => Edit::Put(put_row(spec)?),
            Some(("u", spec)) => Edit::Update(update_row(spec)?),
            Some(("d", key)) => Edit::Delete(key.to_string()),
            _ => return Err(format!("bad op {op:?}")),
        });
    }
    Ok(edits)
}

/// Put rows `fill-000000` .. `fill-{n-1}`, 500 to a transaction.
fn fill(n: i64) -> String {
    let mut start = 0;
    while start < n {
        let end = (start + 500).min(n);
        let edits: Vec<Edit> = (start..end)
            .map(|i| {
                Edit::Put(Row {
                    key: format!("fill-{i:06}"),
                    columns: vec![("uses".to_string(), Value::Integer(i))],
                })
            })
            .collect();
        if let Err(e) = tables::transact(TABLE, &edits) {
            return format!("filled {start}, then {}", refused(e));
        }
        start = end;
    }
    format!("filled {n}")
}

fn answer(result: Result<(), Error>) -> String {
    match result {
        Ok(()) => "ok".to_string(),
        Err(e) => refused(e),
    }
}

impl App for TableProbe {
    fn init(config: Config, _previous: Option<Vec<u8>>) -> Result<Self, String> {
        let n: i64 = config.parse_or("fill", 0)?;
        let there = tables::get(TABLE, "fill-000000")
            .map_err(refused)?
            .is_some();
        if n > 0 && !there {
            info!("table-probe: {}", fill(n));
        }
        info!("table-probe started");
        Ok(TableProbe { later: Vec::new() })
    }

    fn on_tick(&mut self, now: u64) {
        let (due, waiting): (Vec<_>, Vec<_>) =
            self.later.drain(..).partition(|(due, _, _)| *due <= now);
        self.later = waiting;
        for (due, table, ops) in due {
            let result = edits_of(&ops).map(|edits| answer(tables::transact(&table, &edits)));
            info!(
                "later in {table} ({} ops) at {} ms late -> {result:?}",
                ops.split(';').count(),
                (now - due) / 1_000_000
            );
        }
    }

    fn on_action(
        &mut self,
        _device: String,
        name: String,
        argument: Option<Value>,
    ) -> Result<Option<Value>, String> {
        let text = match &argument {
            Some(Value::Text(t)) => t.clone(),
            _ => String::new(),
        };
        let (table, text) = match text.strip_prefix('@').and_then(|t| t.split_once(';')) {
            Some((table, rest)) => (table.to_string(), rest.to_string()),
            None => (TABLE.to_string(), text),
        };
        let table = table.as_str();
        let line = match name.as_str() {
            "put" => {
                let row = put_row(&text)?;
                answer(tables::put(table, &row.key, &row.columns))
            }
            "update" => {
                let row = update_row(&text)?;
                answer(tables::update(table, &row.key, &row.columns))
            }
            "delete" => answer(tables::delete(table, &text)),
            "transact" => answer(tables::transact(table, &edits_of(&text)?)),
            "later" => {
                let (ms, ops) = text.split_once(';').ok_or("later needs MS;ops")?;
                let ms: u64 = ms.parse().map_err(|e| format!("later {ms:?}: {e}"))?;
                edits_of(ops)?;
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or_default();
                self.later
                    .push((now + ms * 1_000_000, table.to_string(), ops.to_string()));
                "scheduled".to_string()
            }
            "get" => match tables::get(table, &text) {
                Ok(Some(columns)) => show(&text, &columns),
                Ok(None) => "none".to_string(),
                Err(e) => refused(e),
            },
            "scan" => {
                let mut keys = Vec::new();
                let mut after: Option<String> = None;
                loop {
                    let page = match tables::scan(
                        table,
                        &KeyRange::Prefix(text.clone()),
                        after.as_deref(),
                        2,
                    ) {
                        Ok(page) => page,
                        Err(e) => return Ok(Some(Value::Text(refused(e)))),
                    };
                    let full = page.len() == 2;
                    after = page.last().map(|r| r.key.clone());
                    keys.extend(page.into_iter().map(|r| r.key));
                    if !full {
                        break;
                    }
                }
                keys.join(",")
            }
            "fill" => fill(match argument {
                Some(Value::Integer(n)) => n,
                _ => 0,
            }),
            "sync" => {
                let mut ways = tables::SyncDirections::empty();
                for way in text.split(',') {
                    let direction = match way {
                        "push" => tables::SyncDirections::PUSH,
                        "pull" => tables::SyncDirections::PULL,
                        other => return Err(format!("no direction {other:?}")),
                    };
                    ways = ways | direction;
                }
                answer(tables::sync(table, ways))
            }
            "pulled" => match tables::status(table) {
                Ok(s) => format!(
                    "seq={} last={}",
                    s.pulled_seq,
                    if s.last_pull.is_some() { "yes" } else { "no" }
                ),
                Err(e) => refused(e),
            },
            "changes" => match tables::server_changes(table, 1000) {
                Ok(keys) => keys.join(","),
                Err(e) => refused(e),
            },
            "dump" => {
                let mut rows = Vec::new();
                let mut after: Option<String> = None;
                loop {
                    let page = match tables::scan(
                        table,
                        &KeyRange::Prefix(String::new()),
                        after.as_deref(),
                        1000,
                    ) {
                        Ok(page) => page,
                        Err(e) => return Ok(Some(Value::Text(refused(e)))),
                    };
                    let full = page.len() == 1000;
                    after = page.last().map(|r| r.key.clone());
                    rows.extend(page.iter().map(|r| show(&r.key, &r.columns)));
                    if !full {
                        break;
                    }
                }
                rows.join(";")
            }
            "status" => match tables::status(table) {
                Ok(s) => format!(
                    "pending={} pushed={} rows={}",
                    s.pending_changes,
                    if s.last_push.is_some() { "yes" } else { "no" },
                    s.rows
                ),
                Err(e) => refused(e),
            },
            other => return Err(format!("no such action {other}")),
        };
        info!("{name}({text}) -> {line}");
        Ok(Some(Value::Text(line)))
    }
}

wasmgate_guest::app!(TableProbe);

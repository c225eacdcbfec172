//! The inventory example (examples/inventory): a spare-parts cabinet whose
//! `parts` table the gateway and the office both edit, kept in step by the
//! synced tables (docs/synced-tables.md).
//!
//! - The cabinet (this app) owns `count`: `take` and `restock` change it,
//!   and the model makes it `device-wins`, so the office cannot overwrite a
//!   count the cabinet made.
//! - The office (`serve`'s API, console or plain SQL) owns `description`
//!   and `reorder_at` (`server-wins`); `bin` is whoever moved the part last.
//! - On every tick the app asks which parts the office changed
//!   (`server-changes`), logs them, and raises `low_stock` for any that is
//!   now at or below its reorder point; `take` does the same.
//!
//! At its first start it fills the table from its config (`parts`), so the
//! example has something to show; after that the table is the truth, on
//! both sides.

use wasmgate_guest::tables::{self, Edit, KeyRange, Row};
use wasmgate_guest::{
    App, Config, Fields, Severity, Timestamp, Value, field, info, this_device, warn,
};

const PARTS: &str = "parts";

struct Inventory;

fn text_of(columns: &Fields, name: &str) -> Option<String> {
    columns.iter().find_map(|(n, v)| match v {
        Value::Text(t) if n == name => Some(t.clone()),
        _ => None,
    })
}

fn integer_of(columns: &Fields, name: &str) -> Option<i64> {
    columns.iter().find_map(|(n, v)| match v {
        Value::Integer(i) if n == name => Some(*i),
        _ => None,
    })
}

fn failed(e: wasmgate_guest::Error) -> String {
    format!("{}: {}", e.kind(), e.message())
}

/// Raise `low_stock` if `part` is at or below its reorder point.
fn check_stock(part: &str) -> Result<(), String> {
    let Some(row) = tables::get(PARTS, part).map_err(failed)? else {
        return Ok(());
    };
    let (Some(count), Some(reorder_at)) =
        (integer_of(&row, "count"), integer_of(&row, "reorder_at"))
    else {
        return Ok(());
    };
    if count <= reorder_at {
        this_device()
            .alert(
                "low_stock",
                Severity::Warning,
                &[
                    field("part", part.to_string()),
                    field("count", count),
                    field("reorder_at", reorder_at),
                ],
            )
            .map_err(failed)?;
        info!("{part}: {count} left, at or below {reorder_at}: low_stock raised");
    }
    Ok(())
}

/// `PART` or `PART:N` (N is 1 if not given).
fn part_and_count(argument: Option<Value>) -> Result<(String, i64), String> {
    let Some(Value::Text(text)) = argument else {
        return Err("give PART or PART:N".into());
    };
    match text.split_once(':') {
        None => Ok((text, 1)),
        Some((part, n)) => {
            let n: i64 = n
                .parse()
                .map_err(|e| format!("{n:?} is not a count: {e}"))?;
            if n <= 0 {
                return Err(format!("{n} is not a count of parts"));
            }
            Ok((part.to_string(), n))
        }
    }
}

/// Add `delta` to a part's count, which may not go below 0.
fn change_count(part: &str, delta: i64) -> Result<i64, String> {
    let row = tables::get(PARTS, part)
        .map_err(failed)?
        .ok_or_else(|| format!("no part {part:?} in the cabinet"))?;
    let count = integer_of(&row, "count").unwrap_or(0) + delta;
    if count < 0 {
        return Err(format!("only {} of {part} in the cabinet", count - delta));
    }
    tables::update(PARTS, part, &[field("count", count)]).map_err(failed)?;
    Ok(count)
}

impl App for Inventory {
    fn init(config: Config, _previous: Option<Vec<u8>>) -> Result<Self, String> {
        let empty = tables::scan(PARTS, &KeyRange::Prefix(String::new()), None, 1)
            .map_err(failed)?
            .is_empty();
        if empty {
            // `parts = "bolt-m6:200:50:A1, fuse-10a:40:10:B2"`: part, count,
            // reorder point, bin.
            let mut edits = Vec::new();
            for spec in config.get("parts").unwrap_or_default().split(',') {
                let fields: Vec<&str> = spec.trim().split(':').collect();
                let [part, count, reorder_at, bin] = fields[..] else {
                    continue;
                };
                let number = |s: &str| s.parse::<i64>().map_err(|e| format!("parts: {s:?}: {e}"));
                edits.push(Edit::Put(Row {
                    key: part.to_string(),
                    columns: vec![
                        field("count", number(count)?),
                        field("reorder_at", number(reorder_at)?),
                        field("bin", bin.to_string()),
                    ],
                }));
            }
            tables::transact(PARTS, &edits).map_err(failed)?;
            info!("the cabinet starts with {} parts", edits.len());
        }
        Ok(Inventory)
    }

    fn on_tick(&mut self, _now: Timestamp) {
        let changed = match tables::server_changes(PARTS, 100) {
            Ok(changed) => changed,
            Err(e) => {
                warn!("cannot read what the office changed: {}", failed(e));
                return;
            }
        };
        for part in changed {
            match tables::get(PARTS, &part) {
                Ok(Some(row)) => info!(
                    "the office changed {part}: {:?}, reorder at {:?}, in {:?}",
                    text_of(&row, "description"),
                    integer_of(&row, "reorder_at"),
                    text_of(&row, "bin")
                ),
                Ok(None) => info!("the office removed {part}"),
                Err(e) => warn!("cannot read {part}: {}", failed(e)),
            }
            if let Err(e) = check_stock(&part) {
                warn!("cannot check {part}: {e}");
            }
        }
    }

    fn on_action(
        &mut self,
        _device: String,
        name: String,
        argument: Option<Value>,
    ) -> Result<Option<Value>, String> {
        match name.as_str() {
            "take" => {
                let (part, n) = part_and_count(argument)?;
                let count = change_count(&part, -n)?;
                check_stock(&part)?;
                Ok(Some(Value::Integer(count)))
            }
            "restock" => {
                let (part, n) = part_and_count(argument)?;
                Ok(Some(Value::Integer(change_count(&part, n)?)))
            }
            "list" => {
                let rows = tables::scan(PARTS, &KeyRange::Prefix(String::new()), None, 1000)
                    .map_err(failed)?;
                let lines: Vec<String> = rows
                    .iter()
                    .map(|r| {
                        format!(
                            "{}: {} in {} (reorder at {}){}",
                            r.key,
                            integer_of(&r.columns, "count").unwrap_or(0),
                            text_of(&r.columns, "bin").unwrap_or_default(),
                            integer_of(&r.columns, "reorder_at").unwrap_or(0),
                            text_of(&r.columns, "description")
                                .map(|d| format!(", {d}"))
                                .unwrap_or_default()
                        )
                    })
                    .collect();
                Ok(Some(Value::Text(lines.join("\n"))))
            }
            other => Err(format!("no action {other}")),
        }
    }
}

wasmgate_guest::app!(Inventory);

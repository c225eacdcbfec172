//! Synced tables: rows that a gateway's app and the server both edit, kept
//! in step both ways (issue 17). The parts both ends share: the hybrid
//! logical clock that orders changes ([`clock`]), the per-column merge that
//! makes two replicas converge whatever the order and duplication of the
//! changes they apply ([`merge`]), the rows with their versions in SQLite
//! ([`store`]), and the [`Changeset`] that carries changes between them. The
//! gateway's guest interface is `crate::tables`; `serve` applies changesets
//! in `server::db`. See docs/synced-tables.md.

pub mod clock;
pub mod merge;
pub mod store;

use serde::{Deserialize, Serialize};

/// The changes of one write, as they travel (`docs/protocol.md`,
/// "Changeset"): the id an end applies it once by, the table, the table's
/// rules as the writer declares them, and the changes in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Changeset {
    pub id: String,
    pub table: String,
    pub rules: merge::TableRules,
    pub changes: Vec<merge::Change<serde_json::Value>>,
    /// The server's number for its changesets of the table, 1, 2, ... (a
    /// gateway's have none): a gateway that sees one missing pulls it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
}

/// The most changes one changeset may carry from anyone (a gateway's own
/// limit, `synced_max_changes`, is at most this).
pub const MAX_CHANGES: usize = 100_000;

/// The longest key, in bytes (the gateway refuses longer ones first).
pub const MAX_KEY_BYTES: usize = 512;

impl Changeset {
    /// Check a changeset that came from `side` for `table`: an id of 1 to
    /// 128 characters, its own table, at most [`MAX_CHANGES`] changes,
    /// keys of 1 to [`MAX_KEY_BYTES`] bytes, and every change made by
    /// `side` (a gateway speaks for its devices, never for the server).
    pub fn check(&self, table: &str, side: merge::Side) -> Result<(), String> {
        if self.id.is_empty() || self.id.len() > 128 {
            return Err("the changeset id must be 1 to 128 characters".into());
        }
        if self.table != table {
            return Err(format!(
                "the changeset is for table {:?}, not {table:?}",
                self.table
            ));
        }
        if self.changes.len() > MAX_CHANGES {
            return Err(format!(
                "{} changes, more than the {MAX_CHANGES} a changeset may hold",
                self.changes.len()
            ));
        }
        for change in &self.changes {
            if change.key.is_empty() || change.key.len() > MAX_KEY_BYTES {
                return Err(format!(
                    "a change's key must be 1 to {MAX_KEY_BYTES} bytes, not {}",
                    change.key.len()
                ));
            }
            if change.side != side {
                return Err(format!(
                    "change of key {:?} claims to come from the {:?} side",
                    change.key, change.side
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use merge::{Change, ChangeKind, Rule, Side, TableRules};

    fn changeset(key: &str, side: Side) -> Changeset {
        Changeset {
            id: "gw-1".into(),
            table: "t".into(),
            rules: TableRules::new(Rule::LastWriterWins),
            changes: vec![Change {
                key: key.into(),
                side,
                stamp: clock::Stamp::new(1, 0, 7),
                kind: ChangeKind::Delete,
            }],
            seq: None,
        }
    }

    #[test]
    fn a_changeset_is_checked_for_its_table_its_keys_and_its_side() {
        assert_eq!(
            changeset("k", Side::Device).check("t", Side::Device),
            Ok(())
        );
        for (bad, table, expected) in [
            (
                changeset("k", Side::Server),
                "t",
                "claims to come from the Server side",
            ),
            (
                changeset("", Side::Device),
                "t",
                "key must be 1 to 512 bytes, not 0",
            ),
            (
                changeset("k", Side::Device),
                "u",
                "is for table \"t\", not \"u\"",
            ),
            (
                Changeset {
                    id: String::new(),
                    ..changeset("k", Side::Device)
                },
                "t",
                "id must be 1 to 128 characters",
            ),
        ] {
            let error = bad.check(table, Side::Device).expect_err(expected);
            assert!(error.contains(expected), "{error}");
        }
        // It reads what the gateway's link sends, and nothing else.
        let json = r#"{"id":"gw-db-9","table":"t","rules":{"key_rule":"device-wins","columns":{}},
            "changes":[{"key":"k","side":"device","stamp":{"wall_ms":5,"counter":0,"node":3},
                        "kind":{"put":{"a":1,"b":null}}}]}"#;
        let read: Changeset = serde_json::from_str(json).expect("a changeset");
        assert_eq!(
            read.changes[0].kind,
            ChangeKind::Put(
                [
                    ("a".to_string(), Some(serde_json::json!(1))),
                    ("b".to_string(), None)
                ]
                .into()
            )
        );
        let extra = json.replacen("\"table\"", "\"sneaky\":1,\"table\"", 1);
        assert!(serde_json::from_str::<Changeset>(&extra).is_err());
    }
}

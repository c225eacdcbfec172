//! The merge at the core of synced tables: rows that a gateway (the device
//! side) and the server both edit, each applying the other's changes, and
//! both ending with the same rows.
//!
//! Every column of a row is a register holding one version (value, stamp,
//! side), and so is the row's existence (`present`). Applying a change keeps,
//! in each register it writes, whichever of the current and the incoming
//! version ranks higher under the column's [`Rule`]. The rank ([`rank`]) is a
//! total order on versions, so each register's state is the maximum of every
//! version ever applied to it: a join-semilattice, whose join (max) is
//! commutative, associative and idempotent. That is why replicas converge:
//! two replicas that have applied the same set of changes hold the same rows,
//! whatever the order in which the changes arrived and however often each
//! arrived. A row is a product of such registers (a missing register being
//! the bottom), which is a semilattice too.
//!
//! Deletes are tombstones (`present` false, columns kept) rather than
//! removals, so that a change arriving late still meets the version it must
//! lose or win against.
//!
//! Convergence assumes what the clock gives: every change has its own stamp
//! (node ids differ between sides and nodes; clocks are resumed from their
//! persisted stamp), and both sides apply the same [`TableRules`].
//!
//! Pure: no I/O, no clock; the caller stores rows and stamps changes.

use super::clock::Stamp;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::fmt::Debug;
use std::str::FromStr;
use thiserror::Error;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    Device,
    Server,
}

/// How two versions of one register (a column, or a row's existence) are
/// decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Rule {
    /// A server version beats any device version; between two versions from
    /// the same side, the later stamp wins.
    ServerWins,
    /// A device version beats any server version; otherwise the later stamp.
    DeviceWins,
    /// The later stamp wins, whichever side wrote it.
    LastWriterWins,
}

impl Rule {
    pub const ALL: [Rule; 3] = [Rule::ServerWins, Rule::DeviceWins, Rule::LastWriterWins];

    pub fn name(self) -> &'static str {
        match self {
            Rule::ServerWins => "server-wins",
            Rule::DeviceWins => "device-wins",
            Rule::LastWriterWins => "last-writer-wins",
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("unknown merge rule {given:?}: expected server-wins, device-wins or last-writer-wins")]
pub struct UnknownRule {
    pub given: String,
}

impl FromStr for Rule {
    type Err = UnknownRule;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Rule::ALL
            .into_iter()
            .find(|rule| rule.name() == s)
            .ok_or_else(|| UnknownRule {
                given: s.to_owned(),
            })
    }
}

/// The rules of one table. Both sides must hold the same rules: the rules
/// define the order the merge takes maxima in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableRules {
    /// Decides the row's existence (put against delete), and every column
    /// not in `columns`.
    pub key_rule: Rule,
    #[serde(default)]
    pub columns: BTreeMap<String, Rule>,
}

impl TableRules {
    pub fn new(key_rule: Rule) -> Self {
        Self {
            key_rule,
            columns: BTreeMap::new(),
        }
    }

    pub fn rule_for(&self, column: &str) -> Rule {
        self.columns.get(column).copied().unwrap_or(self.key_rule)
    }
}

/// One column's current version. `value: None` is SQL null: a written value
/// like any other, not the absence of a version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cell<V> {
    pub value: Option<V>,
    pub stamp: Stamp,
    pub side: Side,
}

/// The version of a row's existence: `value` is true after a put, false
/// after a delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Register {
    pub value: bool,
    pub stamp: Stamp,
    pub side: Side,
}

/// A row's full merge state, tombstones included.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Row<V> {
    /// `None` until a put or delete has been applied: a row that only updates
    /// have reached exists for no one yet, but keeps their columns for the
    /// put that may follow.
    pub present: Option<Register>,
    pub columns: BTreeMap<String, Cell<V>>,
}

impl<V> Default for Row<V> {
    fn default() -> Self {
        Self {
            present: None,
            columns: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change<V> {
    pub key: String,
    pub side: Side,
    pub stamp: Stamp,
    pub kind: ChangeKind<V>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeKind<V> {
    /// Makes the row present and writes the columns given. Columns not given
    /// keep their versions, so a put that re-creates a deleted row should
    /// carry every column of the table (null for those not set), or it shows
    /// values from before the delete.
    Put(BTreeMap<String, Option<V>>),
    /// Writes the columns given, leaving existence alone: an update of a
    /// deleted row does not bring it back (one side deleting while the other
    /// edits is decided by the key rule, between put and delete only).
    Update(BTreeMap<String, Option<V>>),
    /// Makes the row absent; its columns stay, as a tombstone.
    Delete,
}

/// A conflict: two sides wrote different values to one column, and one of
/// them lost. The server logs these so that no edit vanishes unseen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Overwritten<V> {
    pub column: String,
    pub kept: Cell<V>,
    pub lost: Cell<V>,
}

/// The same for the row's existence: a put lost to a delete or the reverse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceOverwritten {
    pub kept: Register,
    pub lost: Register,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied<V> {
    pub row: Row<V>,
    /// False when the change left the row as it was (a duplicate, or it lost
    /// everywhere): nothing to store or forward.
    pub changed: bool,
    /// Re-applying a change that won records nothing. A row does not remember
    /// the versions that lost, so re-applying a change that lost records its
    /// loss again: store records keyed by (key, column, `lost.stamp`) to keep
    /// one each.
    pub overwritten: Vec<Overwritten<V>>,
    pub presence_overwritten: Option<PresenceOverwritten>,
}

/// The order versions are decided in: the rule's preferred side first, then
/// the stamp, then the side. Stamps are unique per change, so the final side
/// only matters if two sides share a node id; it keeps the order total even
/// then.
pub fn rank(rule: Rule, stamp: &Stamp, side: Side) -> (bool, Stamp, bool) {
    let preferred = match rule {
        Rule::ServerWins => side == Side::Server,
        Rule::DeviceWins => side == Side::Device,
        Rule::LastWriterWins => false,
    };
    (preferred, *stamp, side == Side::Server)
}

/// Whether the incoming version replaces the current one. An equal version
/// (the same change applied again) does not: re-applying is a no-op.
pub fn wins(rule: Rule, incoming: (&Stamp, Side), current: (&Stamp, Side)) -> bool {
    rank(rule, incoming.0, incoming.1) > rank(rule, current.0, current.1)
}

/// Applies one change to a row's state (`None`: no state yet for its key).
pub fn apply<V: Clone + PartialEq + Debug>(
    row: Option<&Row<V>>,
    change: &Change<V>,
    rules: &TableRules,
) -> Applied<V> {
    let mut applied = Applied {
        row: row.cloned().unwrap_or_default(),
        changed: false,
        overwritten: Vec::new(),
        presence_overwritten: None,
    };
    let (present, columns) = match &change.kind {
        ChangeKind::Put(columns) => (Some(true), Some(columns)),
        ChangeKind::Update(columns) => (None, Some(columns)),
        ChangeKind::Delete => (Some(false), None),
    };

    if let Some(value) = present {
        let incoming = Register {
            value,
            stamp: change.stamp,
            side: change.side,
        };
        let current = applied.row.present;
        match resolve(rules.key_rule, current.as_ref(), &incoming) {
            Resolved::Take(conflict) => {
                applied.row.present = Some(incoming);
                applied.changed = true;
                applied.presence_overwritten = conflict.map(|lost| PresenceOverwritten {
                    kept: incoming,
                    lost: *lost,
                });
            }
            Resolved::Keep(conflict) => {
                applied.presence_overwritten = conflict.map(|kept| PresenceOverwritten {
                    kept: *kept,
                    lost: incoming,
                });
            }
        }
    }

    for (column, value) in columns.into_iter().flatten() {
        let incoming = Cell {
            value: value.clone(),
            stamp: change.stamp,
            side: change.side,
        };
        let current = applied.row.columns.get(column);
        match resolve(rules.rule_for(column), current, &incoming) {
            Resolved::Take(conflict) => {
                if let Some(lost) = conflict {
                    applied.overwritten.push(Overwritten {
                        column: column.clone(),
                        kept: incoming.clone(),
                        lost: lost.clone(),
                    });
                }
                applied.row.columns.insert(column.clone(), incoming);
                applied.changed = true;
            }
            Resolved::Keep(conflict) => {
                if let Some(kept) = conflict {
                    applied.overwritten.push(Overwritten {
                        column: column.clone(),
                        kept: kept.clone(),
                        lost: incoming,
                    });
                }
            }
        }
    }
    applied
}

/// What readers see: the row's columns if it exists, `None` if it was
/// deleted or never put.
pub fn visible<V: Clone>(row: &Row<V>) -> Option<BTreeMap<String, Option<V>>> {
    if !row.present.is_some_and(|present| present.value) {
        return None;
    }
    Some(
        row.columns
            .iter()
            .map(|(column, cell)| (column.clone(), cell.value.clone()))
            .collect(),
    )
}

/// A register's version, for the one decision shared by cells and `present`.
trait Version {
    fn stamp(&self) -> &Stamp;
    fn side(&self) -> Side;
    fn same_value(&self, other: &Self) -> bool;
}

impl<V: PartialEq> Version for Cell<V> {
    fn stamp(&self) -> &Stamp {
        &self.stamp
    }
    fn side(&self) -> Side {
        self.side
    }
    fn same_value(&self, other: &Self) -> bool {
        self.value == other.value
    }
}

impl Version for Register {
    fn stamp(&self) -> &Stamp {
        &self.stamp
    }
    fn side(&self) -> Side {
        self.side
    }
    fn same_value(&self, other: &Self) -> bool {
        self.value == other.value
    }
}

/// Each variant carries the current version when it and the incoming one
/// conflict (different sides, different values): the one replaced (`Take`)
/// or the one that stays (`Keep`).
enum Resolved<'a, T> {
    Take(Option<&'a T>),
    Keep(Option<&'a T>),
}

fn resolve<'a, T: Version>(rule: Rule, current: Option<&'a T>, incoming: &T) -> Resolved<'a, T> {
    let Some(current) = current else {
        return Resolved::Take(None);
    };
    // Same side: one writer's later edit, not a conflict. Same value: the
    // two sides agree, so nothing is lost whichever stamp stays.
    let conflict =
        (current.side() != incoming.side() && !current.same_value(incoming)).then_some(current);
    if wins(
        rule,
        (incoming.stamp(), incoming.side()),
        (current.stamp(), current.side()),
    ) {
        Resolved::Take(conflict)
    } else {
        Resolved::Keep(conflict)
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::super::clock::Clock;
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    const DEVICE: u64 = 1;
    const SERVER: u64 = 2;

    fn stamp(wall_ms: u64, side: Side) -> Stamp {
        let node = match side {
            Side::Device => DEVICE,
            Side::Server => SERVER,
        };
        Stamp::new(wall_ms, 0, node)
    }

    fn cols(pairs: &[(&str, Option<i64>)]) -> BTreeMap<String, Option<i64>> {
        pairs.iter().map(|(c, v)| (c.to_string(), *v)).collect()
    }

    fn change(side: Side, wall_ms: u64, kind: ChangeKind<i64>) -> Change<i64> {
        Change {
            key: "k".into(),
            side,
            stamp: stamp(wall_ms, side),
            kind,
        }
    }

    fn put(side: Side, wall_ms: u64, pairs: &[(&str, Option<i64>)]) -> Change<i64> {
        change(side, wall_ms, ChangeKind::Put(cols(pairs)))
    }

    fn update(side: Side, wall_ms: u64, pairs: &[(&str, Option<i64>)]) -> Change<i64> {
        change(side, wall_ms, ChangeKind::Update(cols(pairs)))
    }

    fn delete(side: Side, wall_ms: u64) -> Change<i64> {
        change(side, wall_ms, ChangeKind::Delete)
    }

    /// Applies the changes in order from no state.
    fn run(rules: &TableRules, changes: &[Change<i64>]) -> Row<i64> {
        changes
            .iter()
            .fold(Row::default(), |row, c| apply(Some(&row), c, rules).row)
    }

    fn shown(row: &Row<i64>) -> Option<BTreeMap<String, Option<i64>>> {
        visible(row)
    }

    #[test]
    fn wins_follows_each_rule() {
        use Side::{Device, Server};
        let early = Stamp::new(1, 0, 1);
        let late = Stamp::new(2, 0, 2);
        // server-wins: side first, then stamp.
        assert!(wins(Rule::ServerWins, (&early, Server), (&late, Device)));
        assert!(!wins(Rule::ServerWins, (&late, Device), (&early, Server)));
        assert!(wins(Rule::ServerWins, (&late, Server), (&early, Server)));
        assert!(!wins(Rule::ServerWins, (&early, Device), (&late, Device)));
        // device-wins: the mirror image.
        assert!(wins(Rule::DeviceWins, (&early, Device), (&late, Server)));
        assert!(!wins(Rule::DeviceWins, (&late, Server), (&early, Device)));
        assert!(wins(Rule::DeviceWins, (&late, Server), (&early, Server)));
        // last-writer-wins: the stamp alone.
        assert!(wins(
            Rule::LastWriterWins,
            (&late, Device),
            (&early, Server)
        ));
        assert!(wins(
            Rule::LastWriterWins,
            (&late, Server),
            (&early, Device)
        ));
        assert!(!wins(
            Rule::LastWriterWins,
            (&early, Server),
            (&late, Device)
        ));
        // An equal version never wins: re-applying is a no-op.
        for rule in Rule::ALL {
            assert!(!wins(rule, (&late, Server), (&late, Server)));
        }
    }

    #[test]
    fn server_wins_keeps_the_server_value_whatever_the_stamps() {
        let rules = TableRules::new(Rule::ServerWins);
        let changes = [
            put(Side::Server, 10, &[("t", Some(20))]),
            update(Side::Device, 20, &[("t", Some(22))]),
        ];
        let row = run(&rules, &changes);
        assert_eq!(shown(&row), Some(cols(&[("t", Some(20))])));
        // Between server versions, the later one.
        let row = run(
            &rules,
            &[
                update(Side::Server, 30, &[("t", Some(25))]),
                changes[0].clone(),
            ],
        );
        assert_eq!(row.columns["t"].value, Some(25));
    }

    #[test]
    fn device_wins_keeps_the_device_value_whatever_the_stamps() {
        let rules = TableRules::new(Rule::DeviceWins);
        let row = run(
            &rules,
            &[
                put(Side::Device, 10, &[("t", Some(20))]),
                update(Side::Server, 20, &[("t", Some(22))]),
                update(Side::Device, 15, &[("t", Some(21))]),
            ],
        );
        assert_eq!(shown(&row), Some(cols(&[("t", Some(21))])));
    }

    #[test]
    fn last_writer_wins_takes_the_later_stamp_from_either_side() {
        let rules = TableRules::new(Rule::LastWriterWins);
        let a = put(Side::Device, 10, &[("t", Some(1))]);
        let b = update(Side::Server, 20, &[("t", Some(2))]);
        let c = update(Side::Device, 30, &[("t", None)]);
        for order in [[&a, &b, &c], [&c, &b, &a], [&b, &a, &c], [&c, &a, &b]] {
            let owned: Vec<_> = order.into_iter().cloned().collect();
            assert_eq!(shown(&run(&rules, &owned)), Some(cols(&[("t", None)])));
        }
    }

    #[test]
    fn columns_follow_their_own_rule_and_the_rest_the_key_rule() {
        let mut rules = TableRules::new(Rule::LastWriterWins);
        rules.columns.insert("setpoint".into(), Rule::ServerWins);
        rules.columns.insert("reading".into(), Rule::DeviceWins);
        assert_eq!(rules.rule_for("note"), Rule::LastWriterWins);
        let row = run(
            &rules,
            &[
                put(
                    Side::Server,
                    10,
                    &[
                        ("setpoint", Some(20)),
                        ("reading", Some(0)),
                        ("note", Some(1)),
                    ],
                ),
                put(
                    Side::Device,
                    20,
                    &[
                        ("setpoint", Some(18)),
                        ("reading", Some(5)),
                        ("note", Some(2)),
                    ],
                ),
                update(Side::Server, 30, &[("reading", Some(9))]),
            ],
        );
        assert_eq!(
            shown(&row),
            Some(cols(&[
                ("note", Some(2)),
                ("reading", Some(5)),
                ("setpoint", Some(20))
            ]))
        );
    }

    #[test]
    fn delete_and_put_resolve_by_stamp_whatever_the_arrival_order() {
        let rules = TableRules::new(Rule::LastWriterWins);
        let p = put(Side::Device, 10, &[("a", Some(1))]);
        let d = delete(Side::Server, 20);
        assert_eq!(shown(&run(&rules, &[p.clone(), d.clone()])), None);
        assert_eq!(shown(&run(&rules, &[d.clone(), p.clone()])), None);
        // The tombstone keeps its columns, for changes that arrive later.
        let tomb = run(&rules, &[d.clone(), p.clone()]);
        assert_eq!(tomb.columns["a"].value, Some(1));
        assert_eq!(tomb.present.map(|r| r.value), Some(false));

        // A later put brings the row back, in either order.
        let again = put(Side::Device, 30, &[("a", Some(3))]);
        for order in [
            [p.clone(), d.clone(), again.clone()],
            [again.clone(), d.clone(), p.clone()],
            [d.clone(), again.clone(), p.clone()],
        ] {
            assert_eq!(shown(&run(&rules, &order)), Some(cols(&[("a", Some(3))])));
        }
    }

    #[test]
    fn the_key_rule_decides_put_against_delete() {
        // Server-wins: the device's later delete loses to the server's put.
        let rules = TableRules::new(Rule::ServerWins);
        let p = put(Side::Server, 10, &[("a", Some(1))]);
        let d = delete(Side::Device, 20);
        for order in [[p.clone(), d.clone()], [d.clone(), p.clone()]] {
            let applied_last = apply(Some(&run(&rules, &order[..1])), &order[1], &rules);
            assert_eq!(shown(&applied_last.row), Some(cols(&[("a", Some(1))])));
            let conflict = applied_last.presence_overwritten.expect("a conflict");
            assert!(conflict.kept.value && conflict.kept.side == Side::Server);
            assert!(!conflict.lost.value && conflict.lost.side == Side::Device);
        }
    }

    #[test]
    fn an_update_does_not_resurrect_a_deleted_or_unknown_row() {
        let rules = TableRules::new(Rule::LastWriterWins);
        let deleted = run(
            &rules,
            &[
                put(Side::Device, 10, &[("a", Some(1))]),
                delete(Side::Device, 20),
                update(Side::Server, 30, &[("a", Some(2))]),
            ],
        );
        assert_eq!(shown(&deleted), None);
        // It did write the column, for a later put that leaves it out.
        assert_eq!(deleted.columns["a"].value, Some(2));

        let unknown = apply(None, &update(Side::Server, 30, &[("a", Some(2))]), &rules);
        assert!(unknown.changed);
        assert_eq!(unknown.row.present, None);
        assert_eq!(shown(&unknown.row), None);
        // The put it ran ahead of shows the row, with the update's newer value.
        let later = apply(
            Some(&unknown.row),
            &put(Side::Device, 10, &[("a", Some(1)), ("b", Some(5))]),
            &rules,
        );
        assert_eq!(
            shown(&later.row),
            Some(cols(&[("a", Some(2)), ("b", Some(5))]))
        );
    }

    #[test]
    fn applying_a_change_again_changes_nothing() {
        let rules = TableRules::new(Rule::ServerWins);
        let first = apply(None, &put(Side::Device, 10, &[("a", Some(1))]), &rules);
        let second = apply(
            Some(&first.row),
            &put(Side::Server, 20, &[("a", Some(2))]),
            &rules,
        );
        assert_eq!(second.overwritten.len(), 1);
        let again = apply(
            Some(&second.row),
            &put(Side::Server, 20, &[("a", Some(2))]),
            &rules,
        );
        assert_eq!(again.row, second.row);
        assert!(!again.changed);
        assert!(again.overwritten.is_empty());
        assert_eq!(again.presence_overwritten, None);
        // The change that lost, again: no change, and the same loss (same
        // lost stamp) as the first time, for the log to keep once.
        let lost_again = apply(
            Some(&second.row),
            &put(Side::Device, 10, &[("a", Some(1))]),
            &rules,
        );
        assert_eq!(lost_again.row, second.row);
        assert!(!lost_again.changed);
        assert_eq!(lost_again.overwritten, second.overwritten);
        let del = delete(Side::Server, 30);
        let once = apply(Some(&second.row), &del, &rules);
        assert!(once.changed);
        let twice = apply(Some(&once.row), &del, &rules);
        assert!(!twice.changed);
        assert_eq!(twice.row, once.row);
    }

    #[test]
    fn an_overwritten_device_value_is_recorded_when_it_is_replaced() {
        let rules = TableRules::new(Rule::ServerWins);
        let device = apply(None, &put(Side::Device, 10, &[("a", Some(1))]), &rules);
        let server = apply(
            Some(&device.row),
            &update(Side::Server, 5, &[("a", Some(2))]),
            &rules,
        );
        assert_eq!(
            server.overwritten,
            vec![Overwritten {
                column: "a".into(),
                kept: Cell {
                    value: Some(2),
                    stamp: stamp(5, Side::Server),
                    side: Side::Server
                },
                lost: Cell {
                    value: Some(1),
                    stamp: stamp(10, Side::Device),
                    side: Side::Device
                },
            }]
        );
    }

    #[test]
    fn an_incoming_value_that_loses_is_recorded() {
        let rules = TableRules::new(Rule::ServerWins);
        let server = apply(None, &put(Side::Server, 10, &[("a", Some(2))]), &rules);
        let device = apply(
            Some(&server.row),
            &update(Side::Device, 20, &[("a", None)]),
            &rules,
        );
        assert!(!device.changed);
        assert_eq!(device.row, server.row);
        assert_eq!(device.overwritten.len(), 1);
        let o = &device.overwritten[0];
        assert_eq!((o.kept.side, o.kept.value), (Side::Server, Some(2)));
        assert_eq!((o.lost.side, o.lost.value), (Side::Device, None));
    }

    #[test]
    fn no_conflict_is_recorded_for_one_side_or_for_equal_values() {
        let rules = TableRules::new(Rule::LastWriterWins);
        // One side editing its own value: not a conflict.
        let row = run(&rules, &[put(Side::Device, 10, &[("a", Some(1))])]);
        let same_side = apply(
            Some(&row),
            &update(Side::Device, 20, &[("a", Some(2))]),
            &rules,
        );
        assert!(same_side.changed && same_side.overwritten.is_empty());
        // An older one from the same side that loses: not a conflict either.
        let stale = apply(
            Some(&same_side.row),
            &update(Side::Device, 5, &[("a", Some(0))]),
            &rules,
        );
        assert!(!stale.changed && stale.overwritten.is_empty());
        // Both sides wrote the same value: nothing was lost.
        let agree = apply(
            Some(&same_side.row),
            &update(Side::Server, 30, &[("a", Some(2))]),
            &rules,
        );
        assert!(agree.changed && agree.overwritten.is_empty());
        let agree_late = apply(
            Some(&agree.row),
            &put(Side::Device, 25, &[("a", Some(2))]),
            &rules,
        );
        assert!(agree_late.overwritten.is_empty());
        // Put against put: both present, no existence conflict.
        assert_eq!(agree_late.presence_overwritten, None);
    }

    #[test]
    fn rules_have_kebab_case_names() {
        for rule in Rule::ALL {
            assert_eq!(rule.to_string().parse::<Rule>(), Ok(rule));
            let json = serde_json::to_string(&rule).unwrap();
            assert_eq!(json, format!("\"{rule}\""));
            assert_eq!(serde_json::from_str::<Rule>(&json).unwrap(), rule);
        }
        assert_eq!("server-wins".parse(), Ok(Rule::ServerWins));
        let err = "ServerWins".parse::<Rule>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown merge rule \"ServerWins\": expected server-wins, device-wins or last-writer-wins"
        );
        assert_eq!(serde_json::to_string(&Side::Device).unwrap(), "\"device\"");
        let rules: TableRules = serde_json::from_str(
            r#"{"key_rule":"last-writer-wins","columns":{"t":"server-wins"}}"#,
        )
        .unwrap();
        assert_eq!(rules.rule_for("t"), Rule::ServerWins);
        assert_eq!(rules.rule_for("u"), Rule::LastWriterWins);
    }

    // ---- Convergence, by property ------------------------------------------

    const KEYS: [&str; 3] = ["a", "b", "c"];
    /// The columns of the property tests' tables (the store's tests too).
    pub(in crate::synced) const COLUMNS: [&str; 3] = ["x", "y", "z"];

    /// One edit, before it is stamped: stamps come from the sides' clocks as
    /// the edits are replayed in order, as they would be on the two nodes.
    #[derive(Debug, Clone)]
    struct Edit {
        side: Side,
        /// How the side's wall clock moves before the edit; negative values
        /// are a clock going backwards.
        step_ms: i64,
        /// Whether the side first observes the other side's latest stamp, as
        /// after receiving its changes.
        observe: bool,
        key: usize,
        kind: u8,
        values: Vec<(usize, Option<i64>)>,
    }

    fn arb_side() -> impl Strategy<Value = Side> {
        prop_oneof![Just(Side::Device), Just(Side::Server)]
    }

    fn arb_rule() -> impl Strategy<Value = Rule> {
        prop::sample::select(Rule::ALL.to_vec())
    }

    /// Any key rule, and any rule or none for each of [`COLUMNS`] (shared
    /// with the store's property test).
    pub(in crate::synced) fn arb_rules() -> impl Strategy<Value = TableRules> {
        (
            arb_rule(),
            prop::collection::vec(prop::option::of(arb_rule()), COLUMNS.len()),
        )
            .prop_map(|(key_rule, per_column)| TableRules {
                key_rule,
                columns: COLUMNS
                    .iter()
                    .zip(per_column)
                    .filter_map(|(c, rule)| Some((c.to_string(), rule?)))
                    .collect(),
            })
    }

    fn arb_edit() -> impl Strategy<Value = Edit> {
        (
            arb_side(),
            -3i64..6,
            prop::bool::weighted(0.3),
            0..KEYS.len(),
            0u8..3,
            prop::collection::vec(
                (0..COLUMNS.len(), prop::option::weighted(0.8, 0i64..4)),
                0..4,
            ),
        )
            .prop_map(|(side, step_ms, observe, key, kind, values)| Edit {
                side,
                step_ms,
                observe,
                key,
                kind,
                values,
            })
    }

    /// Stamps the edits with a device clock and a server clock.
    fn stamp_edits(edits: &[Edit]) -> Vec<Change<i64>> {
        let start = 1_700_000_000_000u64;
        let mut clocks = [Clock::new(DEVICE), Clock::new(SERVER)];
        let mut now = [start, start];
        let mut latest: [Option<Stamp>; 2] = [None, None];
        edits
            .iter()
            .map(|e| {
                let me = usize::from(e.side == Side::Server);
                now[me] = now[me].saturating_add_signed(e.step_ms);
                let stamp = match latest[1 - me] {
                    Some(theirs) if e.observe => {
                        clocks[me].observe(theirs, now[me]).unwrap();
                        clocks[me].tick(now[me]).unwrap()
                    }
                    _ => clocks[me].tick(now[me]).unwrap(),
                };
                latest[me] = Some(stamp);
                let values = e
                    .values
                    .iter()
                    .map(|&(c, v)| (COLUMNS[c].to_string(), v))
                    .collect();
                Change {
                    key: KEYS[e.key].to_string(),
                    side: e.side,
                    stamp,
                    kind: match e.kind {
                        0 => ChangeKind::Put(values),
                        1 => ChangeKind::Update(values),
                        _ => ChangeKind::Delete,
                    },
                }
            })
            .collect()
    }

    /// Every change at least once, some more than once, shuffled.
    fn arb_delivery(n: usize) -> impl Strategy<Value = Vec<usize>> {
        prop::collection::vec(0..n, 0..=n).prop_flat_map(move |repeats| {
            let mut all: Vec<usize> = (0..n).collect();
            all.extend(repeats);
            Just(all).prop_shuffle()
        })
    }

    type Replica = BTreeMap<String, Row<i64>>;

    fn replay<'a>(
        rules: &TableRules,
        changes: impl IntoIterator<Item = &'a Change<i64>>,
    ) -> Replica {
        let mut replica = Replica::new();
        for c in changes {
            let applied = apply(replica.get(&c.key), c, rules);
            replica.insert(c.key.clone(), applied.row);
        }
        replica
    }

    /// The rules restated, so that the expected state does not come from
    /// the code under test: the preferred side, then the stamp.
    fn oracle_rank(rule: Rule, stamp: Stamp, side: Side) -> (bool, Stamp) {
        let preferred = match (rule, side) {
            (Rule::ServerWins, Side::Server) | (Rule::DeviceWins, Side::Device) => true,
            (Rule::ServerWins, Side::Device)
            | (Rule::DeviceWins, Side::Server)
            | (Rule::LastWriterWins, _) => false,
        };
        (preferred, stamp)
    }

    /// The version that should end up in a register, found directly: the
    /// highest-ranked among every version written to it.
    fn expected_cell(
        rules: &TableRules,
        changes: &[Change<i64>],
        key: &str,
        column: &str,
    ) -> Option<Cell<i64>> {
        let rule = rules.rule_for(column);
        changes
            .iter()
            .filter(|c| c.key == key)
            .filter_map(|c| match &c.kind {
                ChangeKind::Put(v) | ChangeKind::Update(v) => Some(Cell {
                    value: *v.get(column)?,
                    stamp: c.stamp,
                    side: c.side,
                }),
                ChangeKind::Delete => None,
            })
            .max_by_key(|cell| oracle_rank(rule, cell.stamp, cell.side))
    }

    fn expected_present(
        rules: &TableRules,
        changes: &[Change<i64>],
        key: &str,
    ) -> Option<Register> {
        changes
            .iter()
            .filter(|c| c.key == key)
            .filter_map(|c| {
                let value = match c.kind {
                    ChangeKind::Put(_) => true,
                    ChangeKind::Delete => false,
                    ChangeKind::Update(_) => return None,
                };
                Some(Register {
                    value,
                    stamp: c.stamp,
                    side: c.side,
                })
            })
            .max_by_key(|r| oracle_rank(rules.key_rule, r.stamp, r.side))
    }

    fn arb_case() -> impl Strategy<Value = (TableRules, Vec<Edit>, Vec<usize>, Vec<usize>)> {
        (arb_rules(), prop::collection::vec(arb_edit(), 1..40)).prop_flat_map(|(rules, edits)| {
            let n = edits.len();
            (Just(rules), Just(edits), arb_delivery(n), arb_delivery(n))
        })
    }

    proptest! {
        #[test]
        fn replicas_converge_whatever_the_order_and_duplicates(
            (rules, edits, order_a, order_b) in arb_case()
        ) {
            let changes = stamp_edits(&edits);
            // Each side's stamps increase, and every stamp is distinct.
            let stamps: BTreeSet<Stamp> = changes.iter().map(|c| c.stamp).collect();
            prop_assert_eq!(stamps.len(), changes.len());

            let a = replay(&rules, order_a.iter().map(|&i| &changes[i]));
            let b = replay(&rules, order_b.iter().map(|&i| &changes[i]));
            prop_assert_eq!(&a, &b);

            let mut sorted = changes.clone();
            sorted.sort_by_key(|c| c.stamp);
            let by_stamp = replay(&rules, &sorted);
            prop_assert_eq!(&a, &by_stamp);

            // And the state is the maximum of what was written, register by
            // register, found without `apply`.
            for key in KEYS {
                let Some(row) = a.get(key) else {
                    prop_assert!(changes.iter().all(|c| c.key != key));
                    continue;
                };
                prop_assert_eq!(row.present, expected_present(&rules, &changes, key));
                for column in COLUMNS {
                    prop_assert_eq!(
                        row.columns.get(column).cloned(),
                        expected_cell(&rules, &changes, key, column)
                    );
                }
            }

            // Applying any change again to the converged state changes
            // nothing, and can only report that change's own loss again.
            for c in &changes {
                let again = apply(a.get(&c.key), c, &rules);
                prop_assert!(!again.changed);
                prop_assert_eq!(Some(&again.row), a.get(&c.key));
                prop_assert!(again.overwritten.iter().all(|o| o.lost.stamp == c.stamp));
                prop_assert!(again.presence_overwritten.is_none_or(|o| o.lost.stamp == c.stamp));
            }
        }
    }
}

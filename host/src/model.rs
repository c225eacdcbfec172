//! Device models: what an app's devices have (attributes, actions,
//! time-series, alerts) and the synced tables the app keeps with the server,
//! read from a JSON file per app, and the checks every value from a guest or
//! the cloud passes before it is stored or delivered.
//!
//! A model is checked once at load, so a bad model stops the gateway with a
//! message naming the file and the problem, not a guest at run time.

use serde::Deserialize;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use crate::bindings::Value;
use crate::policy::{self, Stage};
use crate::synced::merge::{Rule, TableRules};
use crate::value::{ValueKind, from_json, kind_of};

/// The longest text or bytes value the host takes, in bytes. Larger content
/// belongs in a file transfer, not in a twin attribute or a point.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;

/// The most fields one report, point or alert may carry.
pub const MAX_FIELDS: usize = 256;

/// A number as a model or a value has it: an integer stays an integer, so
/// that integers are compared as integers (a float holds them exactly only
/// up to 2^53).
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum Bound {
    Integer(i64),
    Number(f64),
}

impl Bound {
    fn is_finite(self) -> bool {
        match self {
            Bound::Integer(_) => true,
            Bound::Number(n) => n.is_finite(),
        }
    }

    /// `self <= other`, exactly, whatever mix of integer and float they are.
    pub fn at_most(self, other: Bound) -> bool {
        use std::cmp::Ordering::{Greater, Less};
        match (self, other) {
            (Bound::Integer(a), Bound::Integer(b)) => a <= b,
            (Bound::Number(a), Bound::Number(b)) => a <= b,
            (Bound::Integer(a), Bound::Number(b)) => compare_int_float(a, b) != Some(Greater),
            (Bound::Number(a), Bound::Integer(b)) => compare_int_float(b, a) != Some(Less),
        }
    }
}

/// How integer `i` compares with float `f`, exactly (`None` for NaN).
fn compare_int_float(i: i64, f: f64) -> Option<std::cmp::Ordering> {
    use std::cmp::Ordering;
    if f.is_nan() {
        return None;
    }
    // 2^63 is exact as a float; every i64 is below it and at or above -2^63.
    const TWO_63: f64 = 9_223_372_036_854_775_808.0;
    if f >= TWO_63 {
        return Some(Ordering::Less);
    }
    if f < -TWO_63 {
        return Some(Ordering::Greater);
    }
    let whole = f.trunc();
    // In range, so exact.
    let whole_int = whole as i64;
    Some(i.cmp(&whole_int).then(if f > whole {
        Ordering::Less
    } else if f < whole {
        Ordering::Greater
    } else {
        Ordering::Equal
    }))
}

impl std::fmt::Display for Bound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Bound::Integer(i) => write!(f, "{i}"),
            Bound::Number(n) => write!(f, "{n}"),
        }
    }
}

/// Why a model file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{path}: cannot read the device model: {error}")]
    Read {
        path: PathBuf,
        /// Shown in the message, so not a `source` (it would be shown twice).
        error: std::io::Error,
    },
    #[error("{path}: invalid device model: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: invalid device model: {key}: {message}")]
    Invalid {
        path: PathBuf,
        key: String,
        message: String,
    },
}

/// What is wrong in a model, and where: the key (`attributes.t.range`) and
/// the problem. `parse` turns it into [`ModelError::Invalid`].
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
struct InvalidKey {
    key: String,
    message: String,
}

impl InvalidKey {
    fn new(key: impl Into<String>, message: impl Into<String>) -> InvalidKey {
        InvalidKey {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// One attribute of the device twin.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttributeSpec {
    #[serde(rename = "type")]
    pub kind: ValueKind,
    /// Whether the cloud may set a desired value.
    #[serde(default)]
    pub writable: bool,
    #[serde(default)]
    pub unit: Option<String>,
    /// Inclusive `[min, max]`, for integer and number attributes.
    #[serde(default)]
    pub range: Option<[Bound; 2]>,
    /// The desired value until the cloud sets one.
    #[serde(default)]
    pub default: Option<serde_json::Value>,
    #[serde(default)]
    pub description: Option<String>,
    /// What happens to reported values before they are stored and sent.
    #[serde(default)]
    pub policies: Vec<Stage>,
}

/// A typed field of a time-series point, an alert, or an action argument.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldSpec {
    #[serde(rename = "type")]
    pub kind: ValueKind,
    #[serde(default)]
    pub unit: Option<String>,
    #[serde(default)]
    pub range: Option<[Bound; 2]>,
    #[serde(default)]
    pub description: Option<String>,
}

/// An action the cloud can invoke, with at most one argument.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionSpec {
    #[serde(default)]
    pub argument: Option<FieldSpec>,
    #[serde(default)]
    pub description: Option<String>,
}

/// A time-series ("data store") and the fields of its points.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeriesSpec {
    pub fields: BTreeMap<String, FieldSpec>,
    #[serde(default)]
    pub description: Option<String>,
    /// What happens to recorded points before they reach the outbox.
    #[serde(default)]
    pub policies: Vec<Stage>,
}

/// An alert and the fields it carries.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertSpec {
    #[serde(default)]
    pub fields: BTreeMap<String, FieldSpec>,
    #[serde(default)]
    pub description: Option<String>,
}

/// A column of a synced table: a typed field with an optional merge rule of
/// its own (the table's rule otherwise). [`FieldSpec`]'s keys spelled out
/// again rather than flattened in: serde cannot deny unknown keys through
/// `flatten`, and a misspelt `rule` must not pass silently.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnSpec {
    #[serde(rename = "type")]
    pub kind: ValueKind,
    #[serde(default)]
    pub unit: Option<String>,
    #[serde(default)]
    pub range: Option<[Bound; 2]>,
    #[serde(default)]
    pub rule: Option<Rule>,
    #[serde(default)]
    pub description: Option<String>,
}

/// A synced table (`docs/synced-tables.md`): rows keyed by text that the app
/// and the server both edit, merged by the declared rules.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableSpec {
    /// The name of the key column, which is always text; `key` by default.
    #[serde(default = "default_key_column")]
    pub key: String,
    /// The rule for the row's existence and for every column without one of
    /// its own; `last-writer-wins` by default.
    #[serde(default = "default_rule")]
    pub rule: Rule,
    pub columns: BTreeMap<String, ColumnSpec>,
    #[serde(default)]
    pub description: Option<String>,
    /// The rules as the merge takes them; filled in by `validate`.
    #[serde(skip)]
    rules: Option<TableRules>,
}

fn default_key_column() -> String {
    "key".to_string()
}

fn default_rule() -> Rule {
    Rule::LastWriterWins
}

/// A row's columns as the synced store keeps them: JSON values, `None`
/// being null.
pub type TableColumns = BTreeMap<String, Option<serde_json::Value>>;

impl TableSpec {
    /// The merge rules of the table (both ends must hold the same).
    pub fn rules(&self) -> &TableRules {
        self.rules
            .as_ref()
            .expect("a table's rules are filled in when its model is checked")
    }

    /// Check the columns a guest gives for a row of `table`: every column
    /// declared, typed and in range, none twice. A put (`whole`) sets every
    /// column, so those left out are null; an update writes only those
    /// given, and needs one.
    pub fn check_columns(
        &self,
        table: &str,
        values: Vec<(String, Value)>,
        whole: bool,
    ) -> Result<TableColumns, String> {
        if !whole && values.is_empty() {
            return Err(format!(
                "an update of table `{table}` needs at least one column"
            ));
        }
        let checked = check_fields(
            values,
            &self.columns,
            || format!("column of table `{table}`"),
            || format!("column of table `{table}`:"),
        )?;
        let mut columns: TableColumns = checked
            .into_iter()
            .map(|(name, value)| (name, Some(crate::value::to_json(&value))))
            .collect();
        if whole {
            for name in self.columns.keys() {
                columns.entry(name.clone()).or_insert(None);
            }
        }
        Ok(columns)
    }

    /// Columns given as a JSON object (by `serve`'s API, or by plain SQL on
    /// its tables), checked as [`check_columns`](Self::check_columns)
    /// checks a guest's: every name declared, each value of its column's
    /// type and in range. `null` writes null. A put (`whole`) sets every
    /// column, so those left out are null.
    pub fn columns_from_json(
        &self,
        table: &str,
        object: &serde_json::Map<String, serde_json::Value>,
        whole: bool,
    ) -> Result<TableColumns, String> {
        if let Some(name) = object.keys().find(|n| !self.columns.contains_key(*n)) {
            return Err(format!("unknown column of table `{table}`: `{name}`"));
        }
        let values = object
            .iter()
            .filter(|(_, v)| !v.is_null())
            .map(|(name, json)| {
                from_json(json, self.columns[name].kind)
                    .map(|v| (name.clone(), v))
                    .map_err(|e| format!("column of table `{table}` `{name}`: {e}"))
            })
            .collect::<Result<Vec<_>, String>>()?;
        let mut columns = if values.is_empty() {
            TableColumns::new()
        } else {
            self.check_columns(table, values, false)?
        };
        for (name, json) in object {
            if json.is_null() {
                columns.insert(name.clone(), None);
            }
        }
        if whole {
            for name in self.columns.keys() {
                columns.entry(name.clone()).or_insert(None);
            }
        }
        Ok(columns)
    }

    /// A stored row as the guest reads it: its non-null columns, typed. A
    /// column the model no longer declares, or whose stored value no longer
    /// fits its declared type, is left out: the model changed since the
    /// value was written, and the merge keeps it until a write replaces it.
    pub fn read_columns(&self, stored: &TableColumns) -> Vec<(String, Value)> {
        stored
            .iter()
            .filter_map(|(name, json)| {
                let spec = self.columns.get(name)?;
                from_json(json.as_ref()?, spec.kind)
                    .ok()
                    .map(|v| (name.clone(), v))
            })
            .collect()
    }
}

/// A device model as written in the JSON file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceModel {
    /// A name for the model, e.g. `urn:example:thermostat:1`.
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub attributes: BTreeMap<String, AttributeSpec>,
    #[serde(default)]
    pub actions: BTreeMap<String, ActionSpec>,
    #[serde(default)]
    pub series: BTreeMap<String, SeriesSpec>,
    #[serde(default)]
    pub alerts: BTreeMap<String, AlertSpec>,
    /// The synced tables of the app this model is the own model of.
    #[serde(default)]
    pub tables: BTreeMap<String, TableSpec>,
    /// The attributes' defaults, typed; filled in by `load`.
    #[serde(skip)]
    defaults: HashMap<String, Value>,
    /// The JSON text it was read from, announced to the cloud as it is.
    #[serde(skip)]
    source: String,
}

/// Names become MQTT topic segments and SQL keys: keep them plain.
pub fn check_name(name: &str) -> Result<(), String> {
    // `.` and `..` pass the character test but name a directory, not a
    // file: a transfer's name becomes a file name in an app's directory.
    let ok = !name.is_empty()
        && name != "."
        && name != ".."
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a valid name (1 to 64 characters from A-Z a-z 0-9 _ - ., not . or ..)"
        ))
    }
}

impl DeviceModel {
    /// The JSON text the model was read from.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Read and check a model file.
    pub fn load(path: &Path) -> Result<DeviceModel, ModelError> {
        Self::read(path).map(|(model, _)| model)
    }

    /// Read and check a model file: the model, and the file's text (for
    /// keeping it as a document, without reading the file again).
    pub fn read(path: &Path) -> Result<(DeviceModel, String), ModelError> {
        let text = std::fs::read_to_string(path).map_err(|error| ModelError::Read {
            path: path.to_path_buf(),
            error,
        })?;
        let model = Self::parse(&text).map_err(|e| match e {
            ModelError::Parse { message, .. } => ModelError::Parse {
                path: path.to_path_buf(),
                message,
            },
            ModelError::Invalid { key, message, .. } => ModelError::Invalid {
                path: path.to_path_buf(),
                key,
                message,
            },
            other => other,
        })?;
        Ok((model, text))
    }

    /// Parse and check a model from JSON text (errors carry an empty path).
    pub fn parse(text: &str) -> Result<DeviceModel, ModelError> {
        let mut model: DeviceModel = serde_json::from_str(text).map_err(|e| ModelError::Parse {
            path: PathBuf::new(),
            message: e.to_string(),
        })?;
        model
            .validate()
            .map_err(|InvalidKey { key, message }| ModelError::Invalid {
                path: PathBuf::new(),
                key,
                message,
            })?;
        model.source = text.to_string();
        Ok(model)
    }

    fn validate(&mut self) -> Result<(), InvalidKey> {
        let spec_range = |key: &str, kind: ValueKind, range: Option<[Bound; 2]>| match range {
            None => Ok(()),
            Some(_) if !matches!(kind, ValueKind::Integer | ValueKind::Number) => {
                Err(InvalidKey::new(
                    format!("{key}.range"),
                    format!("a range needs an integer or number type, not {kind}"),
                ))
            }
            Some([min, max]) if !(min.is_finite() && max.is_finite() && min.at_most(max)) => {
                Err(InvalidKey::new(
                    format!("{key}.range"),
                    format!("[{min}, {max}] is not a range (finite, min <= max)"),
                ))
            }
            Some(_) => Ok(()),
        };
        let fields = |key: &str, fields: &BTreeMap<String, FieldSpec>| {
            for (name, spec) in fields {
                let key = format!("{key}.{name}");
                check_name(name).map_err(|m| InvalidKey::new(&key, m))?;
                spec_range(&key, spec.kind, spec.range)?;
            }
            Ok::<(), InvalidKey>(())
        };

        // Alert stages must name a declared alert that carries the field.
        let alerts = &self.alerts;
        let alert_has_field = |alert: &str, field: &str| match alerts.get(alert) {
            None => Err(format!(
                "raises `{alert}`, which the model does not declare"
            )),
            Some(a) if !a.fields.contains_key(field) => Err(format!(
                "raises `{alert}`, which has no field `{field}` to carry the value"
            )),
            Some(_) => Ok(()),
        };
        let numeric = |kind: ValueKind| matches!(kind, ValueKind::Integer | ValueKind::Number);
        for (name, spec) in &self.attributes {
            let key = format!("attributes.{name}");
            check_name(name).map_err(|m| InvalidKey::new(&key, m))?;
            spec_range(&key, spec.kind, spec.range)?;
            policy::check(
                &spec.policies,
                &[(name.clone(), numeric(spec.kind))],
                Some(name),
                &alert_has_field,
            )
            .map_err(|(i, m)| InvalidKey::new(format!("{key}.policies[{i}]"), m))?;
            if let Some(json) = &spec.default {
                let value = from_json(json, spec.kind)
                    .and_then(|v| check_value(v, spec.kind, spec.range))
                    .map_err(|m| InvalidKey::new(format!("{key}.default"), m))?;
                self.defaults.insert(name.clone(), value);
            }
        }
        for (name, spec) in &self.actions {
            let key = format!("actions.{name}");
            check_name(name).map_err(|m| InvalidKey::new(&key, m))?;
            if let Some(arg) = &spec.argument {
                spec_range(&format!("{key}.argument"), arg.kind, arg.range)?;
            }
        }
        for (name, spec) in &self.series {
            let key = format!("series.{name}");
            check_name(name).map_err(|m| InvalidKey::new(&key, m))?;
            if spec.fields.is_empty() {
                return Err(InvalidKey::new(
                    format!("{key}.fields"),
                    "a series needs at least one field",
                ));
            }
            fields(&format!("{key}.fields"), &spec.fields)?;
            let kinds: Vec<(String, bool)> = spec
                .fields
                .iter()
                .map(|(n, f)| (n.clone(), numeric(f.kind)))
                .collect();
            policy::check(&spec.policies, &kinds, None, &alert_has_field)
                .map_err(|(i, m)| InvalidKey::new(format!("{key}.policies[{i}]"), m))?;
        }
        for (name, spec) in &self.alerts {
            let key = format!("alerts.{name}");
            check_name(name).map_err(|m| InvalidKey::new(&key, m))?;
            fields(&format!("{key}.fields"), &spec.fields)?;
        }
        for (name, spec) in &mut self.tables {
            let key = format!("tables.{name}");
            check_name(name).map_err(|m| InvalidKey::new(&key, m))?;
            check_name(&spec.key).map_err(|m| InvalidKey::new(format!("{key}.key"), m))?;
            if spec.columns.is_empty() {
                return Err(InvalidKey::new(
                    format!("{key}.columns"),
                    "a table needs at least one column besides its key",
                ));
            }
            if spec.columns.len() > MAX_FIELDS {
                return Err(InvalidKey::new(
                    format!("{key}.columns"),
                    format!(
                        "{} columns is more than the limit of {MAX_FIELDS}",
                        spec.columns.len()
                    ),
                ));
            }
            let mut rules = TableRules::new(spec.rule);
            for (column, c) in &spec.columns {
                let ckey = format!("{key}.columns.{column}");
                check_name(column).map_err(|m| InvalidKey::new(&ckey, m))?;
                if *column == spec.key {
                    return Err(InvalidKey::new(
                        &ckey,
                        format!("`{column}` is the table's key, which is a text column of its own"),
                    ));
                }
                spec_range(&ckey, c.kind, c.range)?;
                if let Some(rule) = c.rule {
                    rules.columns.insert(column.clone(), rule);
                }
            }
            spec.rules = Some(rules);
        }
        Ok(())
    }

    /// A synced table the model declares.
    pub fn table(&self, name: &str) -> Result<&TableSpec, String> {
        self.tables
            .get(name)
            .ok_or_else(|| unknown("table", name, self.tables.keys()))
    }

    /// The default desired value of an attribute.
    pub fn default_of(&self, attribute: &str) -> Option<&Value> {
        self.defaults.get(attribute)
    }

    /// Check a report: every attribute known, typed and in range, no name
    /// twice. All or nothing; returns the values as they will be stored.
    pub fn check_report(
        &self,
        attributes: Vec<(String, Value)>,
    ) -> Result<Vec<(String, Value)>, String> {
        if attributes.is_empty() {
            return Err("a report needs at least one attribute".into());
        }
        check_fields(
            attributes,
            &self.attributes,
            || "attribute".to_string(),
            || "attribute".to_string(),
        )
    }

    /// The check of `series`' points, field by field (see [`PointCheck`]).
    pub fn point_check(&self, series: &str) -> Result<PointCheck<'_>, String> {
        let (series, spec) = self
            .series
            .get_key_value(series)
            .ok_or_else(|| unknown("series", series, self.series.keys()))?;
        Ok(PointCheck {
            series,
            policies: &spec.policies,
            fields: FieldCheck::new(&spec.fields),
        })
    }

    /// Check an alert and its values.
    pub fn check_alert(
        &self,
        alert: &str,
        values: Vec<(String, Value)>,
    ) -> Result<Vec<(String, Value)>, String> {
        let spec = self
            .alerts
            .get(alert)
            .ok_or_else(|| unknown("alert", alert, self.alerts.keys()))?;
        check_fields(
            values,
            &spec.fields,
            || format!("alert `{alert}` field"),
            || format!("field of alert `{alert}`:"),
        )
    }

    /// Check a desired value from the cloud: a known, writable attribute,
    /// of its type and in its range.
    pub fn check_desired(&self, name: &str, json: &serde_json::Value) -> Result<Value, String> {
        let spec = self
            .attributes
            .get(name)
            .ok_or_else(|| unknown("attribute", name, self.attributes.keys()))?;
        if !spec.writable {
            return Err(format!("attribute `{name}` is read-only"));
        }
        from_json(json, spec.kind).and_then(|v| check_value(v, spec.kind, spec.range))
    }

    /// Check an action invocation from the cloud: a known action, with an
    /// argument if and only if it takes one, of its type and in its range.
    pub fn check_action(
        &self,
        action: &str,
        argument: Option<&serde_json::Value>,
    ) -> Result<Option<Value>, String> {
        let spec = self
            .actions
            .get(action)
            .ok_or_else(|| unknown("action", action, self.actions.keys()))?;
        match (&spec.argument, argument) {
            (None, None | Some(serde_json::Value::Null)) => Ok(None),
            (None, Some(_)) => Err(format!("action `{action}` takes no argument")),
            (Some(arg), None | Some(serde_json::Value::Null)) => Err(format!(
                "action `{action}` needs an argument of type {}",
                arg.kind
            )),
            (Some(arg), Some(json)) => from_json(json, arg.kind)
                .and_then(|v| check_value(v, arg.kind, arg.range))
                .map(Some)
                .map_err(|m| format!("argument of action `{action}`: {m}")),
        }
    }

    /// A stored attribute value (JSON) read back with the model's type.
    pub fn attribute_from_json(&self, name: &str, json: &serde_json::Value) -> Option<Value> {
        let spec = self.attributes.get(name)?;
        from_json(json, spec.kind).ok()
    }
}

fn unknown<'a>(what: &str, name: &str, known: impl Iterator<Item = &'a String>) -> String {
    let known: Vec<&str> = known.map(String::as_str).collect();
    if known.is_empty() {
        format!("unknown {what} `{name}` (the model declares none)")
    } else {
        format!(
            "unknown {what} `{name}` (the model declares: {})",
            known.join(", ")
        )
    }
}

/// A value a model declares: its kind, and its range if it has one.
trait Declared {
    fn kind_and_range(&self) -> (ValueKind, Option<[Bound; 2]>);
}

impl Declared for AttributeSpec {
    fn kind_and_range(&self) -> (ValueKind, Option<[Bound; 2]>) {
        (self.kind, self.range)
    }
}

impl Declared for FieldSpec {
    fn kind_and_range(&self) -> (ValueKind, Option<[Bound; 2]>) {
        (self.kind, self.range)
    }
}

impl Declared for ColumnSpec {
    fn kind_and_range(&self) -> (ValueKind, Option<[Bound; 2]>) {
        (self.kind, self.range)
    }
}

/// The points of one series, checked field by field as a caller reads
/// them. A name resolves to the model's own, so the caller need not own it:
/// `record-batch` reads each field name where the guest wrote it (see
/// `device::record_in_place`), which spares a `String` per field.
pub struct PointCheck<'m> {
    series: &'m str,
    policies: &'m [Stage],
    fields: FieldCheck<'m, FieldSpec>,
}

impl<'m> PointCheck<'m> {
    /// What the series' points go through before the outbox.
    pub fn policies(&self) -> &'m [Stage] {
        self.policies
    }

    /// Start a point of `count` fields.
    pub fn begin(&mut self, count: usize) -> Result<(), String> {
        if count == 0 {
            return Err(format!(
                "a point of series `{}` needs at least one field",
                self.series
            ));
        }
        self.fields.begin(count)
    }

    /// Check one field of the point begun: its name as the model spells it,
    /// and its value, widened where the model asks for a number.
    pub fn field(&mut self, name: &str, value: Value) -> Result<(&'m str, Value), String> {
        let series = self.series;
        self.fields.check(
            name,
            value,
            || format!("series `{series}` field"),
            || format!("field of series `{series}`:"),
        )
    }
}

/// Named values checked one at a time against what `declared` says of each
/// name, none twice. Reused from one set of values to the next (`begin`),
/// so that checking a point allocates nothing once the first is checked.
struct FieldCheck<'m, D> {
    declared: &'m BTreeMap<String, D>,
    /// The names checked so far: scanned for a handful of values, hashed
    /// beyond (a guest may send up to `MAX_FIELDS`).
    seen: Vec<&'m str>,
    seen_many: HashSet<&'m str>,
    hashed: bool,
}

impl<'m, D: Declared> FieldCheck<'m, D> {
    fn new(declared: &'m BTreeMap<String, D>) -> Self {
        FieldCheck {
            declared,
            seen: Vec::new(),
            seen_many: HashSet::new(),
            hashed: false,
        }
    }

    /// Start a set of `count` values.
    fn begin(&mut self, count: usize) -> Result<(), String> {
        if count > MAX_FIELDS {
            return Err(format!(
                "{count} values is more than the limit of {MAX_FIELDS}"
            ));
        }
        self.seen.clear();
        self.seen_many.clear();
        self.hashed = count > 16;
        Ok(())
    }

    /// Check one value. `what` names the values in an error ("series `temp`
    /// field"), `unknown_as` in the error for a name not declared ("field of
    /// series `temp`:"): both made only for an error, as this runs for every
    /// recorded point.
    fn check(
        &mut self,
        name: &str,
        value: Value,
        what: impl Fn() -> String,
        unknown_as: impl Fn() -> String,
    ) -> Result<(&'m str, Value), String> {
        let (declared_name, spec) = self
            .declared
            .get_key_value(name)
            .ok_or_else(|| unknown(&unknown_as(), name, self.declared.keys()))?;
        let declared_name = declared_name.as_str();
        let twice = if self.hashed {
            !self.seen_many.insert(declared_name)
        } else {
            let twice = self.seen.contains(&declared_name);
            self.seen.push(declared_name);
            twice
        };
        if twice {
            return Err(format!("{} `{name}` given twice", what()));
        }
        let (kind, range) = spec.kind_and_range();
        let value =
            check_value(value, kind, range).map_err(|m| format!("{} `{name}`: {m}", what()))?;
        Ok((declared_name, value))
    }
}

/// Check named values against what `declared` says of each name (see
/// [`FieldCheck::check`]). The values are checked in place and handed back,
/// widened where the model asks for a number.
fn check_fields<D: Declared>(
    mut values: Vec<(String, Value)>,
    declared: &BTreeMap<String, D>,
    what: impl Fn() -> String,
    unknown_as: impl Fn() -> String,
) -> Result<Vec<(String, Value)>, String> {
    let mut check = FieldCheck::new(declared);
    check.begin(values.len())?;
    for (name, value) in &mut values {
        // Taken out and put back checked: a placeholder meanwhile.
        let unchecked = std::mem::replace(value, Value::Integer(0));
        *value = check.check(name, unchecked, &what, &unknown_as)?.1;
    }
    Ok(values)
}

/// Check one value against a kind and an optional inclusive range. Integers
/// are widened to numbers where the model asks for a number.
pub fn check_value(
    value: Value,
    kind: ValueKind,
    range: Option<[Bound; 2]>,
) -> Result<Value, String> {
    let value = match (value, kind) {
        (Value::Integer(i), ValueKind::Number) => Value::Number(i as f64),
        (value, kind) if kind_of(&value) == kind => value,
        (value, kind) => return Err(format!("expected {kind}, got {}", kind_of(&value))),
    };
    let numeric = match &value {
        Value::Number(n) if !n.is_finite() => return Err(format!("{n} is not a finite number")),
        Value::Number(n) => Some(Bound::Number(*n)),
        Value::Integer(i) => Some(Bound::Integer(*i)),
        Value::Text(s) if s.len() > MAX_VALUE_BYTES => {
            return Err(format!(
                "text of {} bytes is over the limit of {MAX_VALUE_BYTES}",
                s.len()
            ));
        }
        Value::Bytes(b) if b.len() > MAX_VALUE_BYTES => {
            return Err(format!(
                "{} bytes is over the limit of {MAX_VALUE_BYTES}",
                b.len()
            ));
        }
        _ => None,
    };
    if let (Some(x), Some([min, max])) = (numeric, range)
        && !(min.at_most(x) && x.at_most(max))
    {
        return Err(format!("{x} is out of range [{min}, {max}]"));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_are_checked_against_ranges_as_integers() {
        let top = 9_007_199_254_740_995_i64; // 2^53 + 3: no float holds it
        let range = Some([Bound::Integer(0), Bound::Integer(top)]);
        let check = |i: i64| check_value(Value::Integer(i), ValueKind::Integer, range);
        assert!(check(top).is_ok());
        // One past the end: a float comparison would let it through.
        assert_eq!(
            check(top + 1).expect_err("out of range"),
            format!("{} is out of range [0, {top}]", top + 1)
        );
        assert!(check(-1).is_err());
        // Mixed: an integer against float bounds, a float against integer ones.
        let half = Some([Bound::Number(0.5), Bound::Number(2.5)]);
        assert!(check_value(Value::Integer(0), ValueKind::Integer, half).is_err());
        assert!(check_value(Value::Integer(2), ValueKind::Integer, half).is_ok());
        assert!(check_value(Value::Integer(3), ValueKind::Integer, half).is_err());
        assert!(
            check_value(
                Value::Number(2.5),
                ValueKind::Number,
                Some([Bound::Integer(0), Bound::Integer(2)])
            )
            .is_err()
        );
        assert!(Bound::Integer(i64::MAX).at_most(Bound::Number(9.3e18)));
        assert!(!Bound::Number(9.3e18).at_most(Bound::Integer(i64::MAX)));
        // A model's range keeps its integers exact.
        let model = DeviceModel::parse(&format!(
            r#"{{"attributes": {{"n": {{"type": "integer", "writable": true, "range": [0, {top}]}}}}}}"#
        ))
        .expect("model");
        assert!(
            model
                .check_report(vec![("n".into(), Value::Integer(top + 1))])
                .is_err()
        );
        assert!(
            model
                .check_report(vec![("n".into(), Value::Integer(top))])
                .is_ok()
        );
    }

    const RECIPES: &str = r#"{"tables": {"recipes": {
        "key": "id",
        "rule": "device-wins",
        "columns": {
            "name": {"type": "text"},
            "setpoint": {"type": "number", "range": [0, 100], "rule": "server-wins"}
        }}}}"#;

    #[test]
    fn tables_declare_typed_columns_and_their_merge_rules() {
        let model = DeviceModel::parse(RECIPES).expect("model");
        let table = model.table("recipes").expect("declared");
        assert_eq!(table.key, "id");
        assert_eq!(table.rules().rule_for("name"), Rule::DeviceWins);
        assert_eq!(table.rules().rule_for("setpoint"), Rule::ServerWins);
        assert_eq!(
            model.table("nope").expect_err("undeclared"),
            "unknown table `nope` (the model declares: recipes)"
        );
        // Defaults: a `key` column and last-writer-wins.
        let plain =
            DeviceModel::parse(r#"{"tables": {"t": {"columns": {"v": {"type": "integer"}}}}}"#)
                .expect("model");
        let t = plain.table("t").expect("declared");
        assert_eq!((t.key.as_str(), t.rule), ("key", Rule::LastWriterWins));
    }

    #[test]
    fn bad_table_declarations_name_the_key() {
        for (model, expected) in [
            (
                r#"{"tables": {"t": {"columns": {}}}}"#,
                "tables.t.columns: a table needs at least one column besides its key",
            ),
            (
                r#"{"tables": {"t": {"key": "id", "columns": {"id": {"type": "text"}}}}}"#,
                "tables.t.columns.id: `id` is the table's key, which is a text column of its own",
            ),
            (
                r#"{"tables": {"t": {"columns": {"v": {"type": "text", "range": [0, 1]}}}}}"#,
                "tables.t.columns.v.range: a range needs an integer or number type, not text",
            ),
            (
                r#"{"tables": {"a/b": {"columns": {"v": {"type": "text"}}}}}"#,
                "tables.a/b: \"a/b\" is not a valid name (1 to 64 characters from A-Z a-z 0-9 _ - ., not . or ..)",
            ),
        ] {
            let error = DeviceModel::parse(model).expect_err(model).to_string();
            assert!(error.ends_with(expected), "{error}");
        }
        let rule = DeviceModel::parse(
            r#"{"tables": {"t": {"rule": "newest", "columns": {"v": {"type": "text"}}}}}"#,
        )
        .expect_err("unknown rule")
        .to_string();
        assert!(rule.contains("unknown variant `newest`"), "{rule}");
    }

    #[test]
    fn table_columns_are_checked_filled_and_read_back_typed() {
        let model = DeviceModel::parse(RECIPES).expect("model");
        let table = model.table("recipes").expect("declared");
        // A put sets every column: those left out are null.
        let put = table
            .check_columns(
                "recipes",
                vec![("setpoint".into(), Value::Integer(21))],
                true,
            )
            .expect("valid");
        assert_eq!(put.get("name"), Some(&None));
        assert_eq!(put.get("setpoint"), Some(&Some(serde_json::json!(21.0))));
        // An update writes only what it gives, and needs something.
        let update = table
            .check_columns(
                "recipes",
                vec![("name".into(), Value::Text("a".into()))],
                false,
            )
            .expect("valid");
        assert_eq!(update.len(), 1);
        assert!(table.check_columns("recipes", vec![], false).is_err());
        for (bad, expected) in [
            (
                vec![("setpoint".into(), Value::Number(101.0))],
                "column of table `recipes` `setpoint`: 101 is out of range [0, 100]",
            ),
            (
                vec![("colour".into(), Value::Text("red".into()))],
                "unknown column of table `recipes`: `colour` (the model declares: name, setpoint)",
            ),
            (
                vec![("name".into(), Value::Integer(1))],
                "column of table `recipes` `name`: expected text, got integer",
            ),
        ] {
            assert_eq!(
                table
                    .check_columns("recipes", bad, true)
                    .expect_err(expected),
                expected
            );
        }
        // Reading back: typed, nulls and columns the model dropped left out.
        let mut stored = put.clone();
        stored.insert("gone".into(), Some(serde_json::json!(1)));
        assert_eq!(
            table.read_columns(&stored),
            vec![("setpoint".to_string(), Value::Number(21.0))]
        );
    }

    #[test]
    fn table_columns_from_json_are_checked_as_a_guests_are() {
        let model = DeviceModel::parse(RECIPES).expect("model");
        let table = model.table("recipes").expect("declared");
        let object = |json: serde_json::Value| json.as_object().cloned().expect("an object");
        let put = table
            .columns_from_json("recipes", &object(serde_json::json!({"setpoint": 5})), true)
            .expect("valid");
        assert_eq!(put.get("name"), Some(&None), "a put sets every column");
        assert_eq!(put.get("setpoint"), Some(&Some(serde_json::json!(5.0))));
        let update = table
            .columns_from_json("recipes", &object(serde_json::json!({"name": null})), false)
            .expect("a null is a value");
        assert_eq!(update, TableColumns::from([("name".to_string(), None)]));
        for (json, expected) in [
            (
                serde_json::json!({"colour": "red"}),
                "unknown column of table `recipes`: `colour`",
            ),
            (
                serde_json::json!({"setpoint": "hot"}),
                "column of table `recipes` `setpoint`: expected number, got text",
            ),
            (
                serde_json::json!({"setpoint": 101}),
                "column of table `recipes` `setpoint`: 101 is out of range [0, 100]",
            ),
        ] {
            assert_eq!(
                table
                    .columns_from_json("recipes", &object(json), false)
                    .expect_err(expected),
                expected
            );
        }
    }

    #[test]
    fn names_are_plain_file_names_and_never_dot_or_dot_dot() {
        for bad in [
            ".",
            "..",
            "",
            "a/b",
            "../x",
            "/abs",
            "a/../b",
            "sp ace",
            &"x".repeat(65),
        ] {
            let e = check_name(bad).unwrap_err();
            assert!(e.contains("is not a valid name"), "{bad}: {e}");
        }
        for good in ["a", "a.b", "...", ".hidden", "gw-17_x.2", &"x".repeat(64)] {
            assert_eq!(check_name(good), Ok(()), "{good}");
        }
    }

    const MODEL: &str = r#"{
        "attributes": {
            "level": { "type": "number", "range": [0, 100], "unit": "%" },
            "enabled": { "type": "boolean", "writable": true, "default": true },
            "label": { "type": "text" }
        },
        "series": { "levels": { "fields": { "level": { "type": "number" } } } },
        "alerts": { "high": { "fields": { "level": { "type": "number" } } } },
        "actions": { "reset": {}, "calibrate": { "argument": { "type": "number" } } }
    }"#;

    fn model() -> DeviceModel {
        DeviceModel::parse(MODEL).expect("test model parses")
    }

    #[test]
    fn good_values_pass_and_integers_widen() {
        let out = model()
            .check_report(vec![("level".into(), Value::Integer(42))])
            .expect("accepted");
        assert!(matches!(out[0].1, Value::Number(n) if n == 42.0));
        assert!(matches!(
            model().default_of("enabled"),
            Some(Value::Boolean(true))
        ));
    }

    #[test]
    fn each_kind_of_bad_report_has_a_clear_error() {
        let m = model();
        let err = |attrs: Vec<(&str, Value)>| {
            m.check_report(attrs.into_iter().map(|(n, v)| (n.to_string(), v)).collect())
                .unwrap_err()
        };
        assert_eq!(
            err(vec![("level", Value::Number(250.0))]),
            "attribute `level`: 250 is out of range [0, 100]"
        );
        assert_eq!(
            err(vec![("level", Value::Text("x".into()))]),
            "attribute `level`: expected number, got text"
        );
        assert_eq!(
            err(vec![("colour", Value::Boolean(true))]),
            "unknown attribute `colour` (the model declares: enabled, label, level)"
        );
        assert_eq!(
            err(vec![("level", Value::Number(f64::NAN))]),
            "attribute `level`: NaN is not a finite number"
        );
        assert_eq!(
            err(vec![
                ("level", Value::Number(1.0)),
                ("level", Value::Number(2.0))
            ]),
            "attribute `level` given twice"
        );
        assert!(
            err(vec![(
                "label",
                Value::Text("x".repeat(MAX_VALUE_BYTES + 1))
            )])
            .contains("over the limit")
        );
    }

    /// One point checked field by field, as `device::Recording` does.
    fn check_point(m: &DeviceModel, series: &str, values: &[(&str, Value)]) -> Result<(), String> {
        let mut check = m.point_check(series)?;
        check.begin(values.len())?;
        values
            .iter()
            .try_for_each(|(name, value)| check.field(name, value.clone()).map(drop))
    }

    #[test]
    fn points_and_alerts_are_checked_against_their_declarations() {
        let m = model();
        assert!(check_point(&m, "levels", &[("level", Value::Number(1.0))]).is_ok());
        assert_eq!(
            check_point(&m, "nope", &[("level", Value::Number(1.0))]).unwrap_err(),
            "unknown series `nope` (the model declares: levels)"
        );
        assert!(
            check_point(&m, "levels", &[("depth", Value::Number(1.0))])
                .unwrap_err()
                .contains("`depth`")
        );
        assert!(m.check_alert("high", vec![]).is_ok());
        assert!(
            m.check_alert("low", vec![])
                .unwrap_err()
                .starts_with("unknown alert `low`")
        );
    }

    #[test]
    fn desired_values_and_action_arguments_from_the_cloud_are_checked() {
        let m = model();
        assert!(matches!(
            m.check_desired("enabled", &serde_json::json!(false)),
            Ok(Value::Boolean(false))
        ));
        assert_eq!(
            m.check_desired("level", &serde_json::json!(5)).unwrap_err(),
            "attribute `level` is read-only"
        );
        assert_eq!(
            m.check_desired("enabled", &serde_json::json!("yes"))
                .unwrap_err(),
            "expected boolean, got text"
        );
        assert!(
            m.check_desired("nope", &serde_json::json!(1))
                .unwrap_err()
                .starts_with("unknown attribute `nope`")
        );

        assert!(matches!(m.check_action("reset", None), Ok(None)));
        assert_eq!(
            m.check_action("reset", Some(&serde_json::json!(1)))
                .unwrap_err(),
            "action `reset` takes no argument"
        );
        assert!(
            matches!(m.check_action("calibrate", Some(&serde_json::json!(2))), Ok(Some(Value::Number(n))) if n == 2.0)
        );
        assert_eq!(
            m.check_action("calibrate", None).unwrap_err(),
            "action `calibrate` needs an argument of type number"
        );
        assert_eq!(
            m.check_action("calibrate", Some(&serde_json::json!("x")))
                .unwrap_err(),
            "argument of action `calibrate`: expected number, got text"
        );
        assert!(
            m.check_action("explode", None)
                .unwrap_err()
                .starts_with("unknown action `explode`")
        );
    }

    #[test]
    fn policies_are_checked_at_load() {
        let with = |policies: &str| {
            DeviceModel::parse(&format!(
                r#"{{"series": {{"s": {{"fields": {{"t": {{"type": "number"}}}}, "policies": {policies}}}}},
                    "alerts": {{"hot": {{"fields": {{"t": {{"type": "number"}}}}}}}}}}"#
            ))
        };
        assert!(with(r#"[{"window": {"function": "mean", "count": 5}}, {"alert": {"field": "t", "above": 30, "raise": "hot"}}]"#).is_ok());
        let err = with(r#"[{"filter": {"field": "t", "min": 1}}, {"alert": {"field": "t", "above": 30, "raise": "cold"}}]"#)
            .unwrap_err()
            .to_string();
        assert!(
            err.ends_with(
                "series.s.policies[1]: alert: raises `cold`, which the model does not declare"
            ),
            "{err}"
        );
        let err = with(r#"[{"smooth": {}}]"#).unwrap_err().to_string();
        assert!(err.contains("unknown variant `smooth`"), "{err}");
        let attr = DeviceModel::parse(
            r#"{"attributes": {"label": {"type": "text", "policies": [{"filter": {"max": 3}}]}}}"#,
        );
        assert!(
            attr.unwrap_err()
                .to_string()
                .ends_with("attributes.label.policies[0]: filter: field `label` is not numeric")
        );
    }

    #[test]
    fn validation_errors_carry_the_key_and_the_message() {
        let text = r#"{"alerts": {"hot": {"fields": {"t": {"type": "text", "range": [0, 1]}}}}}"#;
        let mut m: DeviceModel = serde_json::from_str(text).expect("json");
        let err = m.validate().unwrap_err();
        assert_eq!(
            err,
            InvalidKey::new(
                "alerts.hot.fields.t.range",
                "a range needs an integer or number type, not text"
            )
        );
        assert_eq!(
            err.to_string(),
            "alerts.hot.fields.t.range: a range needs an integer or number type, not text"
        );
        // `parse` passes both on, unchanged, in `ModelError::Invalid`.
        match DeviceModel::parse(text) {
            Err(ModelError::Invalid { key, message, .. }) => {
                assert_eq!(InvalidKey::new(key, message), err,)
            }
            other => panic!("expected ModelError::Invalid, got {other:?}"),
        }
    }

    #[test]
    fn bad_models_fail_at_load_naming_the_key() {
        let invalid = |text: &str| match DeviceModel::parse(text) {
            Err(ModelError::Invalid { key, message, .. }) => format!("{key}: {message}"),
            Err(ModelError::Parse { message, .. }) => format!("parse: {message}"),
            other => panic!("expected an error, got {other:?}"),
        };
        assert_eq!(
            invalid(r#"{"attributes": {"t": {"type": "text", "range": [0, 1]}}}"#),
            "attributes.t.range: a range needs an integer or number type, not text"
        );
        assert_eq!(
            invalid(r#"{"attributes": {"t": {"type": "number", "range": [5, 1]}}}"#),
            "attributes.t.range: [5, 1] is not a range (finite, min <= max)"
        );
        assert_eq!(
            invalid(
                r#"{"attributes": {"t": {"type": "integer", "range": [0, 10], "default": 11}}}"#
            ),
            "attributes.t.default: 11 is out of range [0, 10]"
        );
        assert!(
            invalid(r#"{"attributes": {"a/b": {"type": "integer"}}}"#)
                .starts_with("attributes.a/b: ")
        );
        assert!(invalid(r#"{"series": {"s": {"fields": {}}}}"#).starts_with("series.s.fields: "));
        let parse = invalid("{\n  \"attributes\": {\"t\": {\"type\": \"float\"}}\n}");
        assert!(
            parse.contains("unknown variant `float`") && parse.contains("line 2"),
            "{parse}"
        );
        assert!(invalid(r#"{"atributes": {}}"#).contains("unknown field `atributes`"));
    }
}

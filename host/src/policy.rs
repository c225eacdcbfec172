//! Device policies: what the host does with values before they reach the
//! outbox, as the Oracle device client's policies did: range filters,
//! duplicate and delta elimination, sampling, windowed aggregates, and alert
//! conditions.
//!
//! A policy is a pipeline of stages declared in the device model, on a
//! time-series (`series.<name>.policies`) or on an attribute
//! (`attributes.<name>.policies`). Each point (or reported value) goes
//! through the stages in order; a stage passes it, drops it, holds it (a
//! window that is not full yet) or replaces it (the window's aggregate).
//! Alert stages never change the stream: they raise a model-declared alert
//! when their condition starts to hold.
//!
//! State (last values, counters, open windows) lives with the app instance:
//! a restart of the app starts every pipeline afresh, and an open window is
//! dropped (documented in docs/buffering.md).

use serde::Deserialize;

use crate::bindings::Value;

/// One stage of a pipeline, as written in the model.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum Stage {
    /// Drop values outside `[min, max]` (either bound may be left out).
    Filter(FilterSpec),
    /// Drop a value within `delta` of the last one passed (`delta` 0: drop
    /// exact repeats). Without `field` on a series: drop a point whose fields
    /// all equal the last point passed.
    Deduplicate(DeduplicateSpec),
    /// Keep every `every`th value, or at most one per `interval_ms`.
    Sample(SampleSpec),
    /// Replace values by their `function` over a window of `count` values or
    /// of `interval_ms`.
    Window(WindowSpec),
    /// Raise alert `raise` when the value meets the condition.
    Alert(AlertSpec),
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FilterSpec {
    #[serde(default)]
    pub field: Option<String>,
    #[serde(default)]
    pub min: Option<f64>,
    #[serde(default)]
    pub max: Option<f64>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DeduplicateSpec {
    #[serde(default)]
    pub field: Option<String>,
    #[serde(default)]
    pub delta: f64,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SampleSpec {
    #[serde(default)]
    pub every: Option<u64>,
    #[serde(default)]
    pub interval_ms: Option<u64>,
}

/// The aggregate a window computes.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Function {
    Mean,
    Min,
    Max,
    Stddev,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WindowSpec {
    pub function: Function,
    #[serde(default)]
    pub count: Option<u64>,
    #[serde(default)]
    pub interval_ms: Option<u64>,
    /// The fields to aggregate (default: every numeric field).
    #[serde(default)]
    pub fields: Option<Vec<String>>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AlertSpec {
    #[serde(default)]
    pub field: Option<String>,
    #[serde(default)]
    pub above: Option<f64>,
    #[serde(default)]
    pub below: Option<f64>,
    /// The alert to raise: declared in the model's `alerts`, with a field of
    /// the same name as the one watched.
    pub raise: String,
    #[serde(default)]
    pub severity: AlertSeverity,
    /// Raise on every value that meets the condition, not only when it
    /// starts to.
    #[serde(default)]
    pub repeat: bool,
}

/// How serious an alert is, as a policy declares it or a guest raises it,
/// and as the cloud receives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertSeverity {
    Info,
    #[default]
    Warning,
    Critical,
}

impl AlertSeverity {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertSeverity::Info => "info",
            AlertSeverity::Warning => "warning",
            AlertSeverity::Critical => "critical",
        }
    }
}

impl From<crate::bindings::Severity> for AlertSeverity {
    fn from(severity: crate::bindings::Severity) -> Self {
        match severity {
            crate::bindings::Severity::Info => AlertSeverity::Info,
            crate::bindings::Severity::Warning => AlertSeverity::Warning,
            crate::bindings::Severity::Critical => AlertSeverity::Critical,
        }
    }
}

/// A point as the pipelines see it: nanoseconds and named values.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub time: u64,
    pub values: Vec<(String, Value)>,
}

/// An alert a pipeline raised.
#[derive(Debug, Clone, PartialEq)]
pub struct Raised {
    pub alert: String,
    pub severity: AlertSeverity,
    pub values: Vec<(String, Value)>,
}

/// Check a pipeline against the fields it may name (`fields` gives each
/// field's name and whether it is numeric). `implied` is the attribute's
/// name for attribute policies. Errors are (stage index, message).
pub fn check(
    stages: &[Stage],
    fields: &[(String, bool)],
    implied: Option<&str>,
    alert_has_field: &dyn Fn(&str, &str) -> Result<(), String>,
) -> Result<(), (usize, String)> {
    let numeric =
        |i: usize, field: &Option<String>, what: &str| -> Result<String, (usize, String)> {
            let name = field
                .as_deref()
                .or(implied)
                .ok_or((i, format!("{what} needs a `field`")))?;
            match fields.iter().find(|(n, _)| n == name) {
                None => Err((i, format!("{what}: no field `{name}`"))),
                Some((_, false)) => Err((i, format!("{what}: field `{name}` is not numeric"))),
                Some(_) => Ok(name.to_string()),
            }
        };
    for (i, stage) in stages.iter().enumerate() {
        match stage {
            Stage::Filter(f) => {
                numeric(i, &f.field, "filter")?;
                match (f.min, f.max) {
                    (None, None) => return Err((i, "filter needs `min`, `max` or both".into())),
                    (Some(a), Some(b)) if a > b => {
                        return Err((i, format!("filter: min {a} is above max {b}")));
                    }
                    _ => {}
                }
            }
            Stage::Deduplicate(d) => {
                if !(d.delta >= 0.0 && d.delta.is_finite()) {
                    return Err((
                        i,
                        format!("deduplicate: delta {} must be 0 or more", d.delta),
                    ));
                }
                if d.delta > 0.0 {
                    numeric(i, &d.field, "deduplicate with a delta")?;
                } else if let Some(name) = d.field.as_deref().or(implied)
                    && !fields.iter().any(|(n, _)| n == name)
                {
                    return Err((i, format!("deduplicate: no field `{name}`")));
                }
            }
            Stage::Sample(s) => match (s.every, s.interval_ms) {
                (Some(n), None) if n >= 1 => {}
                (None, Some(ms)) if ms >= 1 => {}
                _ => return Err((
                    i,
                    "sample needs exactly one of `every` (1 or more) and `interval_ms` (1 or more)"
                        .into(),
                )),
            },
            Stage::Window(w) => {
                match (w.count, w.interval_ms) {
                    (Some(n), None) if n >= 1 => {}
                    (None, Some(ms)) if ms >= 1 => {}
                    _ => return Err((i, "window needs exactly one of `count` (1 or more) and `interval_ms` (1 or more)".into())),
                }
                for name in w.fields.iter().flatten() {
                    numeric(i, &Some(name.clone()), "window")?;
                }
                if !fields.iter().any(|(_, numeric)| *numeric) {
                    return Err((i, "window: there is no numeric field to aggregate".into()));
                }
            }
            Stage::Alert(a) => {
                let name = numeric(i, &a.field, "alert")?;
                if a.above.is_none() && a.below.is_none() {
                    return Err((i, "alert needs `above`, `below` or both".into()));
                }
                alert_has_field(&a.raise, &name).map_err(|m| (i, format!("alert: {m}")))?;
            }
        }
    }
    Ok(())
}

fn number(values: &[(String, Value)], name: &str) -> Option<f64> {
    values
        .iter()
        .find(|(n, _)| n == name)
        .and_then(|(_, v)| match v {
            Value::Number(x) => Some(*x),
            Value::Integer(i) => Some(*i as f64),
            _ => None,
        })
}

fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Boolean(x), Value::Boolean(y)) => x == y,
        (Value::Integer(x), Value::Integer(y)) => x == y,
        (Value::Number(x), Value::Number(y)) => x == y,
        (Value::Text(x), Value::Text(y)) => x == y,
        (Value::Bytes(x), Value::Bytes(y)) => x == y,
        _ => false,
    }
}

/// Running aggregate of one field.
#[derive(Debug, Clone, Default)]
struct Accumulator {
    n: u64,
    sum: f64,
    sum_sq: f64,
    min: f64,
    max: f64,
}

impl Accumulator {
    fn add(&mut self, x: f64) {
        if self.n == 0 {
            self.min = x;
            self.max = x;
        }
        self.n += 1;
        self.sum += x;
        self.sum_sq += x * x;
        self.min = self.min.min(x);
        self.max = self.max.max(x);
    }

    fn value(&self, f: Function) -> f64 {
        let n = self.n.max(1) as f64;
        match f {
            Function::Mean => self.sum / n,
            Function::Min => self.min,
            Function::Max => self.max,
            // Population standard deviation.
            Function::Stddev => (self.sum_sq / n - (self.sum / n).powi(2)).max(0.0).sqrt(),
        }
    }
}

/// An open window: per-field accumulators and the last point seen.
#[derive(Debug, Clone, Default)]
struct Window {
    start: u64,
    count: u64,
    fields: Vec<(String, Accumulator)>,
    last: Option<Sample>,
}

#[derive(Debug, Clone)]
enum StageState {
    Stateless,
    Last(Option<Vec<(String, Value)>>),
    Count(u64),
    LastTime(Option<u64>),
    Window(Window),
    Alerting(bool),
}

/// A pipeline and its state, for one stream (a series or an attribute of
/// one device).
#[derive(Debug, Clone)]
pub struct Pipeline {
    stages: Vec<Stage>,
    state: Vec<StageState>,
    /// The attribute's name, for attribute pipelines.
    implied: Option<String>,
}

impl Pipeline {
    pub fn new(stages: Vec<Stage>, implied: Option<String>) -> Pipeline {
        let state = stages
            .iter()
            .map(|s| match s {
                Stage::Filter(_) => StageState::Stateless,
                Stage::Deduplicate(_) => StageState::Last(None),
                Stage::Sample(SampleSpec { every: Some(_), .. }) => StageState::Count(0),
                Stage::Sample(_) => StageState::LastTime(None),
                Stage::Window(_) => StageState::Window(Window::default()),
                Stage::Alert(_) => StageState::Alerting(false),
            })
            .collect();
        Pipeline {
            stages,
            state,
            implied,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.stages.is_empty()
    }

    /// Run one sample through the stages: what comes out (if anything) and
    /// the alerts raised on the way.
    pub fn apply(&mut self, sample: Sample) -> (Option<Sample>, Vec<Raised>) {
        let mut raised = Vec::new();
        let mut current = Some(sample);
        for (stage, state) in self.stages.iter().zip(self.state.iter_mut()) {
            let Some(sample) = current.take() else { break };
            let field_of = |f: &Option<String>| {
                f.clone()
                    .or_else(|| self.implied.clone())
                    .unwrap_or_default()
            };
            current = match (stage, state) {
                (Stage::Filter(f), _) => {
                    let x = number(&sample.values, &field_of(&f.field));
                    let out = x.is_some_and(|x| {
                        f.min.is_some_and(|m| x < m) || f.max.is_some_and(|m| x > m)
                    });
                    (!out).then_some(sample)
                }
                (Stage::Deduplicate(d), StageState::Last(last)) => {
                    let key = d.field.clone().or_else(|| self.implied.clone());
                    let watched: Vec<(String, Value)> = match &key {
                        Some(name) => sample
                            .values
                            .iter()
                            .filter(|(n, _)| n == name)
                            .cloned()
                            .collect(),
                        None => sample.values.clone(),
                    };
                    let repeat = match last {
                        None => false,
                        Some(prev) if d.delta > 0.0 => match (
                            number(prev, key.as_deref().unwrap_or_default()),
                            number(&watched, key.as_deref().unwrap_or_default()),
                        ) {
                            (Some(a), Some(b)) => (a - b).abs() < d.delta,
                            _ => false,
                        },
                        Some(prev) => {
                            !watched.is_empty()
                                && prev.len() == watched.len()
                                && prev
                                    .iter()
                                    .zip(&watched)
                                    .all(|((n1, v1), (n2, v2))| n1 == n2 && same(v1, v2))
                        }
                    };
                    if repeat {
                        None
                    } else {
                        if !watched.is_empty() {
                            *last = Some(watched);
                        }
                        Some(sample)
                    }
                }
                (Stage::Sample(SampleSpec { every: Some(n), .. }), StageState::Count(seen)) => {
                    let keep = *seen % n == 0;
                    *seen += 1;
                    keep.then_some(sample)
                }
                (
                    Stage::Sample(SampleSpec {
                        interval_ms: Some(ms),
                        ..
                    }),
                    StageState::LastTime(last),
                ) => {
                    let gap = ms.saturating_mul(1_000_000);
                    let keep = last.is_none_or(|t| sample.time >= t.saturating_add(gap));
                    if keep {
                        *last = Some(sample.time);
                    }
                    keep.then_some(sample)
                }
                (Stage::Window(w), StageState::Window(open)) => window(w, open, sample),
                (Stage::Alert(a), StageState::Alerting(active)) => {
                    let field = field_of(&a.field);
                    if let Some(x) = number(&sample.values, &field) {
                        let meets =
                            a.above.is_some_and(|m| x > m) || a.below.is_some_and(|m| x < m);
                        if meets && (a.repeat || !*active) {
                            raised.push(Raised {
                                alert: a.raise.clone(),
                                severity: a.severity,
                                values: vec![(field, Value::Number(x))],
                            });
                        }
                        *active = meets;
                    }
                    Some(sample)
                }
                _ => Some(sample),
            };
        }
        (current, raised)
    }
}

/// Add a sample to an open window; emit the aggregate when it closes.
fn window(spec: &WindowSpec, open: &mut Window, sample: Sample) -> Option<Sample> {
    let mut emitted = None;
    // An interval window closes when a sample arrives after its end; that
    // sample opens the next window.
    if let (Some(ms), Some(_)) = (spec.interval_ms, &open.last)
        && sample.time >= open.start.saturating_add(ms.saturating_mul(1_000_000))
    {
        emitted = close(spec, open);
    }
    if open.last.is_none() {
        open.start = sample.time;
    }
    for (name, value) in &sample.values {
        let wanted = spec.fields.as_ref().is_none_or(|f| f.contains(name));
        let x = match value {
            Value::Number(x) => *x,
            Value::Integer(i) => *i as f64,
            _ => continue,
        };
        if !wanted {
            continue;
        }
        match open.fields.iter_mut().find(|(n, _)| n == name) {
            Some((_, acc)) => acc.add(x),
            None => {
                let mut acc = Accumulator::default();
                acc.add(x);
                open.fields.push((name.clone(), acc));
            }
        }
    }
    open.count += 1;
    open.last = Some(sample);
    if spec.count.is_some_and(|n| open.count >= n) {
        emitted = close(spec, open);
    }
    emitted
}

/// The window's aggregate, stamped with its last sample's time; fields that
/// are not aggregated keep their last value.
fn close(spec: &WindowSpec, open: &mut Window) -> Option<Sample> {
    let done = std::mem::take(open);
    let last = done.last?;
    let values = last
        .values
        .into_iter()
        .map(
            |(name, value)| match done.fields.iter().find(|(n, _)| *n == name) {
                Some((_, acc)) => (name, Value::Number(acc.value(spec.function))),
                None => (name, value),
            },
        )
        .collect();
    Some(Sample {
        time: last.time,
        values,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stages(json: &str) -> Vec<Stage> {
        serde_json::from_str(json).expect("stages parse")
    }

    fn s(time: u64, t: f64) -> Sample {
        Sample {
            time,
            values: vec![("t".into(), Value::Number(t))],
        }
    }

    /// Run values through a pipeline; the (time, t) pairs that come out.
    fn run(json: &str, input: &[(u64, f64)]) -> Vec<(u64, f64)> {
        let mut p = Pipeline::new(stages(json), None);
        input
            .iter()
            .filter_map(|&(time, t)| p.apply(s(time, t)).0)
            .map(|out| (out.time, number(&out.values, "t").expect("t")))
            .collect()
    }

    const MS: u64 = 1_000_000;

    #[test]
    fn filter_drops_values_outside_the_range() {
        let out = run(
            r#"[{"filter": {"field": "t", "min": 0, "max": 10}}]"#,
            &[(1, -1.0), (2, 0.0), (3, 10.0), (4, 10.5), (5, 5.0)],
        );
        assert_eq!(out, vec![(2, 0.0), (3, 10.0), (5, 5.0)]);
    }

    #[test]
    fn deduplicate_drops_repeats_and_small_changes() {
        let input = [
            (1, 20.0),
            (2, 20.0),
            (3, 20.1),
            (4, 20.6),
            (5, 20.3),
            (6, 20.3),
        ];
        assert_eq!(
            run(r#"[{"deduplicate": {"field": "t"}}]"#, &input),
            vec![(1, 20.0), (3, 20.1), (4, 20.6), (5, 20.3)]
        );
        // Within 0.5 of the last value passed, not of the last value seen.
        assert_eq!(
            run(r#"[{"deduplicate": {"field": "t", "delta": 0.5}}]"#, &input),
            vec![(1, 20.0), (4, 20.6)]
        );
    }

    #[test]
    fn sample_keeps_every_nth_or_one_per_interval() {
        let input: Vec<(u64, f64)> = (0..7).map(|i| (i * 400 * MS, i as f64)).collect();
        assert_eq!(
            run(r#"[{"sample": {"every": 3}}]"#, &input),
            vec![(0, 0.0), (1200 * MS, 3.0), (2400 * MS, 6.0)]
        );
        assert_eq!(
            run(r#"[{"sample": {"interval_ms": 1000}}]"#, &input),
            vec![(0, 0.0), (1200 * MS, 3.0), (2400 * MS, 6.0)]
        );
    }

    #[test]
    fn count_windows_emit_their_aggregate_at_the_last_value() {
        let input = [
            (1, 2.0),
            (2, 4.0),
            (3, 4.0),
            (4, 4.0),
            (5, 5.0),
            (6, 5.0),
            (7, 7.0),
            (8, 9.0),
        ];
        assert_eq!(
            run(r#"[{"window": {"function": "mean", "count": 4}}]"#, &input),
            vec![(4, 3.5), (8, 6.5)]
        );
        assert_eq!(
            run(r#"[{"window": {"function": "min", "count": 4}}]"#, &input),
            vec![(4, 2.0), (8, 5.0)]
        );
        assert_eq!(
            run(r#"[{"window": {"function": "max", "count": 4}}]"#, &input),
            vec![(4, 4.0), (8, 9.0)]
        );
        // 2, 4, 4, 4, 5, 5, 7, 9: the textbook population stddev of 2.
        assert_eq!(
            run(
                r#"[{"window": {"function": "stddev", "count": 8}}]"#,
                &input
            ),
            vec![(8, 2.0)]
        );
    }

    #[test]
    fn interval_windows_close_when_a_later_value_arrives() {
        let input = [
            (0, 1.0),
            (300 * MS, 3.0),
            (999 * MS, 5.0),
            (1000 * MS, 10.0),
            (1500 * MS, 20.0),
            (2100 * MS, 0.0),
        ];
        assert_eq!(
            run(
                r#"[{"window": {"function": "mean", "interval_ms": 1000}}]"#,
                &input
            ),
            vec![(999 * MS, 3.0), (1500 * MS, 15.0)]
        );
    }

    #[test]
    fn windows_aggregate_only_the_named_fields_and_keep_the_others_last_value() {
        let mut p = Pipeline::new(
            stages(r#"[{"window": {"function": "max", "count": 2, "fields": ["a"]}}]"#),
            None,
        );
        let point = |time, a: f64, b: i64| Sample {
            time,
            values: vec![
                ("a".into(), Value::Number(a)),
                ("b".into(), Value::Integer(b)),
            ],
        };
        assert_eq!(p.apply(point(1, 1.0, 10)).0, None);
        let out = p.apply(point(2, 0.5, 20)).0.expect("window closed");
        assert_eq!(
            out.values,
            vec![
                ("a".into(), Value::Number(1.0)),
                ("b".into(), Value::Integer(20))
            ]
        );
    }

    #[test]
    fn alerts_fire_when_the_condition_starts_to_hold_and_stages_run_in_order() {
        let mut p = Pipeline::new(
            stages(
                r#"[{"alert": {"field": "t", "above": 30, "raise": "hot"}}, {"sample": {"every": 2}}]"#,
            ),
            None,
        );
        let raised: Vec<usize> = [25.0, 31.0, 32.0, 29.0, 33.0]
            .iter()
            .enumerate()
            .map(|(i, &t)| p.apply(s(i as u64, t)).1.len())
            .collect();
        assert_eq!(raised, vec![0, 1, 0, 0, 1]);
        let mut repeat = Pipeline::new(
            stages(
                r#"[{"alert": {"field": "t", "below": 0, "raise": "cold", "severity": "critical", "repeat": true}}]"#,
            ),
            None,
        );
        let (out, alerts) = repeat.apply(s(1, -2.0));
        assert_eq!(out, Some(s(1, -2.0)), "the value itself passes on");
        assert_eq!(
            alerts,
            vec![Raised {
                alert: "cold".into(),
                severity: AlertSeverity::Critical,
                values: vec![("t".into(), Value::Number(-2.0))]
            }]
        );
        assert_eq!(repeat.apply(s(2, -3.0)).1.len(), 1);
    }

    #[test]
    fn attribute_pipelines_use_the_attribute_as_their_field() {
        let mut p = Pipeline::new(
            stages(r#"[{"deduplicate": {"delta": 1}}]"#),
            Some("t".into()),
        );
        let kept: Vec<bool> = [20.0, 20.5, 21.2]
            .iter()
            .map(|&t| p.apply(s(0, t)).0.is_some())
            .collect();
        assert_eq!(kept, vec![true, false, true]);
    }

    #[test]
    fn invalid_pipelines_are_refused_with_the_stage_and_reason() {
        let fields = vec![("t".to_string(), true), ("label".to_string(), false)];
        let alerts = |alert: &str, field: &str| {
            if alert == "hot" && field == "t" {
                Ok(())
            } else {
                Err(format!("no alert `{alert}` with a field `{field}`"))
            }
        };
        let err = |json: &str| check(&stages(json), &fields, None, &alerts).unwrap_err();
        assert_eq!(
            err(r#"[{"filter": {"field": "x", "min": 1}}]"#),
            (0, "filter: no field `x`".into())
        );
        assert_eq!(
            err(r#"[{"filter": {"field": "label", "min": 1}}]"#),
            (0, "filter: field `label` is not numeric".into())
        );
        assert_eq!(
            err(r#"[{"filter": {"field": "t", "min": 5, "max": 1}}]"#),
            (0, "filter: min 5 is above max 1".into())
        );
        assert_eq!(err(r#"[{"sample": {"every": 2}}, {"sample": {}}]"#).0, 1);
        assert!(
            err(r#"[{"window": {"function": "mean", "count": 2, "interval_ms": 5}}]"#)
                .1
                .starts_with("window needs exactly one")
        );
        assert_eq!(
            err(r#"[{"alert": {"field": "t", "above": 1, "raise": "cold"}}]"#),
            (0, "alert: no alert `cold` with a field `t`".into())
        );
        assert_eq!(
            err(r#"[{"deduplicate": {"field": "t", "delta": -1}}]"#),
            (0, "deduplicate: delta -1 must be 0 or more".into())
        );
        assert!(serde_json::from_str::<Vec<Stage>>(r#"[{"average": {}}]"#).is_err());
        assert!(
            serde_json::from_str::<Vec<Stage>>(
                r#"[{"window": {"function": "median", "count": 2}}]"#
            )
            .is_err()
        );
        assert!(check(&stages(r#"[{"filter": {"field": "t", "max": 9}}, {"alert": {"field": "t", "above": 5, "raise": "hot"}}]"#), &fields, None, &alerts).is_ok());
    }
}

//! The edge node's protocol state: births, aliases, sequence numbers, the
//! primary host's state, and commands read against the devices' models. A
//! pure state machine (no I/O, no clock: times are passed in), as rumqttc's
//! `MqttState` is; `link.rs` is the I/O around it.
//!
//! The rules it keeps (Sparkplug B 3.0):
//! - a session is one MQTT connection; its `bdSeq` (0 to 255, one more on
//!   every CONNECT) is in the will's NDEATH and in the session's NBIRTH;
//! - the NBIRTH has `seq` 0; every later message of the node (DBIRTH, DDATA,
//!   DDEATH) has the next `seq`, 255 wrapping to 0;
//! - a device is born (DBIRTH, every metric it will report, with its name,
//!   datatype and alias) before any DDATA of it, and after the NBIRTH;
//!   aliases are unique across the node for the session;
//! - a rebirth request births everything again, from `seq` 0, in the same
//!   session (same `bdSeq`);
//! - with a primary host configured, nothing is published until its STATE
//!   says it is online.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use super::payload::{self, Metric, MetricValue, Payload, datatype};
use crate::bindings::Value;
use crate::model::DeviceModel;
use crate::value::ValueKind;

/// The namespace of every Sparkplug B topic.
pub const NAMESPACE: &str = "spBv1.0";

/// The node metric a host writes `true` to for a rebirth.
pub const REBIRTH: &str = "Node Control/Rebirth";

/// The node metric carrying the session number.
pub const BD_SEQ: &str = "bdSeq";

/// The node metric naming the software.
pub const SOFTWARE: &str = "Properties/Software";

/// Topic names of one edge node.
#[derive(Debug, Clone)]
pub struct Topics {
    group: String,
    node: String,
}

/// What a topic the node subscribes to carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound<'a> {
    NodeCommand,
    DeviceCommand(&'a str),
    /// The primary host's STATE.
    HostState,
    /// Anything else (nothing the node subscribes to).
    Other,
}

impl Topics {
    pub fn new(group: &str, node: &str) -> Topics {
        Topics {
            group: group.to_string(),
            node: node.to_string(),
        }
    }

    /// `spBv1.0/{group}/{kind}/{node}` (NBIRTH, NDEATH, NCMD).
    pub fn node(&self, kind: &str) -> String {
        format!("{NAMESPACE}/{}/{kind}/{}", self.group, self.node)
    }

    /// `spBv1.0/{group}/{kind}/{node}/{device}` (DBIRTH, DDATA, DDEATH, DCMD).
    pub fn device(&self, kind: &str, device: &str) -> String {
        format!("{NAMESPACE}/{}/{kind}/{}/{device}", self.group, self.node)
    }

    /// `spBv1.0/STATE/{host}`.
    pub fn state(host: &str) -> String {
        format!("{NAMESPACE}/STATE/{host}")
    }

    /// The commands to this node and its devices.
    pub fn command_filters(&self) -> [String; 2] {
        [self.node("NCMD"), self.device("DCMD", "+")]
    }

    pub fn classify<'a>(&self, topic: &'a str, host: Option<&str>) -> Inbound<'a> {
        if host.is_some_and(|h| topic == Topics::state(h)) {
            return Inbound::HostState;
        }
        if topic == self.node("NCMD") {
            return Inbound::NodeCommand;
        }
        let prefix = self.device("DCMD", "");
        match topic.strip_prefix(&prefix) {
            Some(device) if !device.is_empty() && !device.contains('/') => {
                Inbound::DeviceCommand(device)
            }
            _ => Inbound::Other,
        }
    }
}

/// What a device metric stands for.
#[derive(Debug, Clone, PartialEq)]
enum Source {
    Attribute {
        writable: bool,
    },
    /// A field of a series' points.
    Field,
    /// An alert, sent as its JSON text.
    Alert,
    /// An action: a write invokes it; `None` if it takes no argument.
    Action(Option<ValueKind>),
}

#[derive(Debug, Clone)]
struct DeviceMetric {
    alias: u64,
    datatype: u32,
    /// The kind of the values it carries (text for alerts, the argument's
    /// kind or boolean for actions).
    kind: ValueKind,
    source: Source,
}

/// A device the node speaks for.
#[derive(Debug)]
struct Device {
    model: Arc<DeviceModel>,
    /// Its metrics, by name; aliases are given at its birth.
    metrics: BTreeMap<String, DeviceMetric>,
    born: bool,
    /// Whether its app runs (or is starting): a device whose app stopped
    /// or crashed is dead (DDEATH) until the app runs again.
    alive: bool,
    /// The attribute values sent this session, so that data goes out by
    /// exception.
    sent: HashMap<String, Value>,
}

/// What a device is born with: its attributes' current values and when
/// they were reported (milliseconds).
pub type Current = Vec<(String, Value, u64)>;

/// A command, read and checked against the device's model.
#[derive(Debug, Default, PartialEq)]
pub struct Commands {
    /// `Node Control/Rebirth` was written `true`.
    pub rebirth: bool,
    /// Attribute writes, as a `wg/v1` desired change's attributes.
    pub desired: serde_json::Map<String, serde_json::Value>,
    /// Action invocations: the action and its argument.
    pub actions: Vec<(String, Option<serde_json::Value>)>,
    /// Metrics that were refused, and why.
    pub refused: Vec<(String, String)>,
}

/// The primary host application's last STATE.
#[derive(Debug)]
struct Host {
    id: String,
    online: bool,
    /// The STATE's timestamp: an older one arriving late is ignored.
    timestamp: u64,
}

/// The edge node's state.
#[derive(Debug)]
pub struct EdgeNode {
    topics: Topics,
    software: String,
    bd_seq: u64,
    next_seq: u64,
    next_alias: u64,
    node_born: bool,
    /// When the node was last born (ms): points older than that were
    /// recorded while it was offline (or waiting for its primary host), and
    /// go out flagged historical.
    born_at_ms: u64,
    devices: BTreeMap<String, Device>,
    /// Devices gone while born: their DDEATH is due.
    deaths: Vec<String>,
    host: Option<Host>,
}

/// Aliases 0 to 2 are the node's own metrics.
const FIRST_DEVICE_ALIAS: u64 = 16;
const REBIRTH_ALIAS: u64 = 1;
const SOFTWARE_ALIAS: u64 = 2;

impl EdgeNode {
    pub fn new(topics: Topics, software: &str, primary_host: Option<&str>) -> EdgeNode {
        EdgeNode {
            topics,
            software: software.to_string(),
            bd_seq: 0,
            next_seq: 0,
            next_alias: FIRST_DEVICE_ALIAS,
            node_born: false,
            born_at_ms: 0,
            devices: BTreeMap::new(),
            deaths: Vec::new(),
            host: primary_host.map(|id| Host {
                id: id.to_string(),
                online: false,
                timestamp: 0,
            }),
        }
    }

    pub fn topics(&self) -> &Topics {
        &self.topics
    }

    pub fn primary_host(&self) -> Option<&str> {
        self.host.as_ref().map(|h| h.id.as_str())
    }

    /// The bdSeq of the connection after one with `previous`.
    pub fn next_bd_seq(previous: u64) -> u64 {
        (previous + 1) % 256
    }

    /// The will of a connection with this bdSeq: its NDEATH.
    pub fn will(bd_seq: u64, now_ms: u64) -> Vec<u8> {
        payload::encode(&Payload {
            timestamp: Some(now_ms),
            metrics: vec![bd_seq_metric(bd_seq, now_ms)],
            ..Default::default()
        })
    }

    /// A new connection with this bdSeq: everything is born again.
    pub fn connected(&mut self, bd_seq: u64) {
        self.bd_seq = bd_seq;
        self.deaths.clear();
        // The host's STATE is read again on every connection (it is
        // retained): what it was before the connection dropped is stale.
        if let Some(host) = &mut self.host {
            host.online = false;
        }
        self.rebirth();
    }

    pub fn bd_seq(&self) -> u64 {
        self.bd_seq
    }

    /// Birth everything again in this session (a rebirth request, or a new
    /// connection).
    pub fn rebirth(&mut self) {
        self.node_born = false;
        self.next_seq = 0;
        self.next_alias = FIRST_DEVICE_ALIAS;
        for device in self.devices.values_mut() {
            device.born = false;
            device.sent.clear();
        }
    }

    /// Whether the node may publish: with a primary host, only while it is
    /// online.
    pub fn may_publish(&self) -> bool {
        self.host.as_ref().is_none_or(|h| h.online)
    }

    /// The primary host's STATE message; returns whether it changed from
    /// offline to online (`Some(true)`) or back (`Some(false)`).
    pub fn host_state(&mut self, payload: &[u8]) -> Result<Option<bool>, String> {
        #[derive(serde::Deserialize)]
        struct State {
            online: bool,
            #[serde(default)]
            timestamp: u64,
        }
        let Some(host) = self.host.as_mut() else {
            return Ok(None);
        };
        let state: State = serde_json::from_slice(payload)
            .map_err(|e| format!("the primary host's STATE is not its JSON: {e}"))?;
        if state.timestamp < host.timestamp {
            return Ok(None);
        }
        host.timestamp = state.timestamp;
        if state.online == host.online {
            return Ok(None);
        }
        host.online = state.online;
        Ok(Some(state.online))
    }

    /// The node speaks for this device, with this model (a new device, or a
    /// new model for one): it is born (again) at the next chance.
    pub fn add_device(&mut self, name: &str, model: Arc<DeviceModel>) {
        self.deaths.retain(|d| d != name);
        self.devices.insert(
            name.to_string(),
            Device {
                metrics: device_metrics(&model),
                model,
                born: false,
                alive: true,
                sent: HashMap::new(),
            },
        );
    }

    /// The device is gone: its DDEATH is due if it was born.
    pub fn remove_device(&mut self, name: &str) {
        if let Some(device) = self.devices.remove(name)
            && device.born
        {
            self.deaths.push(name.to_string());
        }
    }

    /// Whether the device's app runs: a device going down gets its DDEATH
    /// (if it was born), and its data waits until it is born again.
    pub fn set_alive(&mut self, name: &str, alive: bool) {
        let Some(device) = self.devices.get_mut(name) else {
            return;
        };
        if device.alive == alive {
            return;
        }
        device.alive = alive;
        if !alive && device.born {
            device.born = false;
            device.sent.clear();
            self.deaths.push(name.to_string());
        }
    }

    /// A device's birth could not be sent: it is due again.
    pub fn unborn(&mut self, name: &str) {
        if let Some(device) = self.devices.get_mut(name) {
            device.born = false;
        }
    }

    /// The devices whose data must wait: known, but dead or not yet born.
    pub fn held(&self) -> Vec<&str> {
        self.devices
            .iter()
            .filter(|(_, d)| !d.born)
            .map(|(name, _)| name.as_str())
            .collect()
    }

    /// What must go out before any data: the NBIRTH, or a DBIRTH (its
    /// device), or a DDEATH.
    pub fn due(&self) -> Option<Due> {
        if !self.node_born {
            return Some(Due::NodeBirth);
        }
        if let Some(device) = self.deaths.first() {
            return Some(Due::DeviceDeath(device.clone()));
        }
        self.devices
            .iter()
            .find(|(_, d)| d.alive && !d.born)
            .map(|(name, _)| Due::DeviceBirth(name.clone()))
    }

    /// Whether the device has been born this session (its data may go out).
    pub fn born(&self, device: &str) -> bool {
        self.node_born && self.devices.get(device).is_some_and(|d| d.born)
    }

    /// The NBIRTH (`seq` 0).
    pub fn node_birth(&self, now_ms: u64) -> Payload {
        Payload {
            timestamp: Some(now_ms),
            seq: Some(0),
            metrics: vec![
                bd_seq_metric(self.bd_seq, now_ms),
                payload::metric(
                    Some(REBIRTH),
                    REBIRTH_ALIAS,
                    datatype::BOOLEAN,
                    Some(MetricValue::BooleanValue(false)),
                    now_ms,
                ),
                payload::metric(
                    Some(SOFTWARE),
                    SOFTWARE_ALIAS,
                    datatype::STRING,
                    Some(MetricValue::StringValue(self.software.clone())),
                    now_ms,
                ),
            ],
            ..Default::default()
        }
    }

    /// A device's DBIRTH: every metric, with its name, datatype and alias;
    /// attributes carry their current value, the rest are null until data.
    pub fn device_birth(&mut self, name: &str, current: &Current, now_ms: u64) -> Option<Payload> {
        let mut next_alias = self.next_alias;
        let device = self.devices.get_mut(name)?;
        let values: HashMap<&str, (&Value, u64)> = current
            .iter()
            .map(|(n, v, t)| (n.as_str(), (v, *t)))
            .collect();
        let mut metrics = Vec::with_capacity(device.metrics.len());
        device.sent.clear();
        for (metric_name, metric) in device.metrics.iter_mut() {
            metric.alias = next_alias;
            next_alias += 1;
            let (value, time) = match (&metric.source, values.get(metric_name.as_str())) {
                (Source::Attribute { .. }, Some((value, time)))
                    if kind_fits(value, metric.kind) =>
                {
                    device.sent.insert(metric_name.clone(), (*value).clone());
                    (Some(payload::metric_value(value)), *time)
                }
                _ => (None, now_ms),
            };
            let mut m = payload::metric(
                Some(metric_name),
                metric.alias,
                metric.datatype,
                value,
                time,
            );
            // Alerts and action results are events, not tags to keep.
            if matches!(metric.source, Source::Alert) {
                m.is_transient = Some(true);
            }
            metrics.push(m);
        }
        device.born = true;
        self.next_alias = next_alias;
        Some(Payload {
            timestamp: Some(now_ms),
            metrics,
            ..Default::default()
        })
    }

    /// A device's DDEATH.
    pub fn device_death(&mut self, name: &str, now_ms: u64) -> Payload {
        self.deaths.retain(|d| d != name);
        Payload {
            timestamp: Some(now_ms),
            ..Default::default()
        }
    }

    /// The node was born (its NBIRTH went out) at `now_ms`.
    pub fn node_born(&mut self, now_ms: u64) {
        self.node_born = true;
        self.born_at_ms = now_ms;
    }

    /// Put the next `seq` on a payload about to go out; [`EdgeNode::sent`]
    /// takes it once the publish was accepted, so a publish that could not
    /// be queued leaves no gap.
    pub fn stamp(&self, payload: &mut Payload) {
        payload.seq = Some(self.next_seq);
    }

    /// The stamped payload went out.
    pub fn sent(&mut self) {
        self.next_seq = (self.next_seq + 1) % 256;
    }

    /// A DDATA of the attributes whose value changed since they were last
    /// sent, and of those in `answer` whatever their value (the current
    /// value answers a refused write). `None` if there is nothing to send.
    pub fn attribute_data(
        &mut self,
        name: &str,
        current: &Current,
        answer: &[String],
        now_ms: u64,
    ) -> Option<Payload> {
        let device = self.devices.get_mut(name)?;
        let mut metrics = Vec::new();
        for (attribute, value, time) in current {
            let Some(metric) = device.metrics.get(attribute) else {
                continue;
            };
            if !matches!(metric.source, Source::Attribute { .. }) || !kind_fits(value, metric.kind)
            {
                continue;
            }
            let changed = device.sent.get(attribute) != Some(value);
            if changed || answer.contains(attribute) {
                metrics.push(payload::metric(
                    None,
                    metric.alias,
                    metric.datatype,
                    Some(payload::metric_value(value)),
                    *time,
                ));
                device.sent.insert(attribute.clone(), value.clone());
            }
        }
        // A refused write to an attribute never reported: say it is null.
        for attribute in answer {
            if current.iter().all(|(n, _, _)| n != attribute)
                && let Some(metric) = device.metrics.get(attribute)
            {
                metrics.push(payload::metric(
                    None,
                    metric.alias,
                    metric.datatype,
                    None,
                    now_ms,
                ));
            }
        }
        (!metrics.is_empty()).then(|| Payload {
            timestamp: Some(now_ms),
            metrics,
            ..Default::default()
        })
    }

    /// A DDATA of a batch of points of `series`: one metric per field and
    /// point, with the point's time; a point recorded before this session
    /// began is flagged historical.
    pub fn point_data(
        &self,
        name: &str,
        series: &str,
        points: &[crate::wire::protocol::Point],
        now_ms: u64,
    ) -> Option<Payload> {
        let device = self.devices.get(name)?;
        let mut metrics = Vec::new();
        for point in points {
            let time_ms = point.time / 1_000_000;
            let historical = time_ms < self.born_at_ms;
            for (field, json) in &point.values {
                let Some(metric) = device.metrics.get(&format!("{series}/{field}")) else {
                    continue;
                };
                let Ok(value) = crate::value::from_json(json, metric.kind) else {
                    continue;
                };
                let mut m = payload::metric(
                    None,
                    metric.alias,
                    metric.datatype,
                    Some(payload::metric_value(&value)),
                    time_ms,
                );
                if historical {
                    m.is_historical = Some(true);
                }
                metrics.push(m);
            }
        }
        (!metrics.is_empty()).then(|| Payload {
            timestamp: Some(now_ms),
            metrics,
            ..Default::default()
        })
    }

    /// A DDATA of an alert: its JSON (severity and values) as text.
    pub fn alert_data(
        &self,
        name: &str,
        alert: &str,
        json: &serde_json::Value,
        time_ms: u64,
        now_ms: u64,
    ) -> Option<Payload> {
        let metric = self
            .devices
            .get(name)?
            .metrics
            .get(&format!("alerts/{alert}"))?;
        let mut m = payload::metric(
            None,
            metric.alias,
            metric.datatype,
            Some(MetricValue::StringValue(json.to_string())),
            time_ms,
        );
        m.is_transient = Some(true);
        if time_ms < self.born_at_ms {
            m.is_historical = Some(true);
        }
        Some(Payload {
            timestamp: Some(now_ms),
            metrics: vec![m],
            ..Default::default()
        })
    }

    /// An NCMD: only a rebirth request is taken.
    pub fn node_command(&self, payload: &Payload) -> Commands {
        let mut commands = Commands::default();
        for metric in &payload.metrics {
            let name = match (named(metric), metric.alias) {
                (None, Some(REBIRTH_ALIAS)) => REBIRTH.to_string(),
                _ => label(metric),
            };
            if name != REBIRTH {
                commands
                    .refused
                    .push((name, "the node takes no command but a rebirth".into()));
                continue;
            }
            match payload::read_value(metric, ValueKind::Boolean) {
                Ok(Value::Boolean(true)) => commands.rebirth = true,
                Ok(_) => {}
                Err(e) => commands.refused.push((name, e)),
            }
        }
        commands
    }

    /// A DCMD to `device`: writable attributes become a desired change, and
    /// action metrics invocations; anything else is refused. The downlink
    /// then checks the values against the model, as for `wg/v1`.
    pub fn device_command(&self, device: &str, payload: &Payload) -> Commands {
        let mut commands = Commands::default();
        let Some(known) = self.devices.get(device) else {
            commands.refused.push((
                device.to_string(),
                "no such device on this node".to_string(),
            ));
            return commands;
        };
        for metric in &payload.metrics {
            let found = match (named(metric), metric.alias) {
                (Some(name), _) => known.metrics.get_key_value(name),
                (None, Some(alias)) if known.born => {
                    known.metrics.iter().find(|(_, m)| m.alias == alias)
                }
                _ => None,
            };
            let Some((name, spec)) = found else {
                commands
                    .refused
                    .push((label(metric), "the device has no such metric".into()));
                continue;
            };
            match &spec.source {
                Source::Attribute { writable: true } => {
                    match payload::read_value(metric, spec.kind) {
                        Ok(value) => {
                            commands
                                .desired
                                .insert(name.clone(), crate::value::to_json(&value));
                        }
                        Err(e) => commands.refused.push((name.clone(), e)),
                    }
                }
                Source::Attribute { writable: false } => commands
                    .refused
                    .push((name.clone(), "the attribute is not writable".into())),
                Source::Action(argument) => {
                    let action = name.trim_start_matches("actions/").to_string();
                    match argument {
                        None => commands.actions.push((action, None)),
                        Some(kind) => match payload::read_value(metric, *kind) {
                            Ok(value) => commands
                                .actions
                                .push((action, Some(crate::value::to_json(&value)))),
                            Err(e) => commands.refused.push((name.clone(), e)),
                        },
                    }
                }
                Source::Field | Source::Alert => commands.refused.push((
                    name.clone(),
                    "a series field or alert is reported, not written".into(),
                )),
            }
        }
        commands
    }

    /// The model a device was added with.
    pub fn model(&self, device: &str) -> Option<&Arc<DeviceModel>> {
        self.devices.get(device).map(|d| &d.model)
    }
}

/// How a refused command metric is named in the log and the refusal: its
/// name, else its alias. A sender may give neither, or an empty name, and
/// the operator still needs something to look for.
fn label(metric: &Metric) -> String {
    match (named(metric), metric.alias) {
        (Some(name), _) => name.to_string(),
        (None, Some(alias)) => format!("alias {alias}"),
        (None, None) if metric.name.is_some() => "a metric with an empty name".to_string(),
        (None, None) => "a metric with neither name nor alias".to_string(),
    }
}

/// A command metric's name, if it has one: an empty name is none, so that
/// the metric is read by its alias.
fn named(metric: &Metric) -> Option<&str> {
    metric.name.as_deref().filter(|name| !name.is_empty())
}

/// What [`EdgeNode::due`] asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Due {
    NodeBirth,
    DeviceBirth(String),
    DeviceDeath(String),
}

fn bd_seq_metric(bd_seq: u64, now_ms: u64) -> Metric {
    Metric {
        name: Some(BD_SEQ.into()),
        timestamp: Some(now_ms),
        datatype: Some(datatype::INT64),
        value: Some(MetricValue::LongValue(bd_seq)),
        ..Default::default()
    }
}

fn kind_fits(value: &Value, kind: ValueKind) -> bool {
    crate::value::kind_of(value) == kind
}

/// Every metric a device of this model reports or takes, by name: its
/// attributes (`name`), its series' fields (`series/field`), its alerts
/// (`alerts/name`, text) and its actions (`actions/name`). Aliases are
/// given at birth.
fn device_metrics(model: &DeviceModel) -> BTreeMap<String, DeviceMetric> {
    let mut metrics = BTreeMap::new();
    let mut add = |name: String, kind: ValueKind, source: Source| {
        metrics.insert(
            name,
            DeviceMetric {
                alias: 0,
                datatype: payload::datatype_of(kind),
                kind,
                source,
            },
        );
    };
    for (name, spec) in &model.attributes {
        add(
            name.clone(),
            spec.kind,
            Source::Attribute {
                writable: spec.writable,
            },
        );
    }
    for (series, spec) in &model.series {
        for (field, field_spec) in &spec.fields {
            add(format!("{series}/{field}"), field_spec.kind, Source::Field);
        }
    }
    for name in model.alerts.keys() {
        add(format!("alerts/{name}"), ValueKind::Text, Source::Alert);
    }
    for (name, spec) in &model.actions {
        let argument = spec.argument.as_ref().map(|a| a.kind);
        add(
            format!("actions/{name}"),
            argument.unwrap_or(ValueKind::Boolean),
            Source::Action(argument),
        );
    }
    metrics
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model() -> Arc<DeviceModel> {
        Arc::new(
            DeviceModel::parse(
                r#"{
                "attributes": {
                    "temperature": {"type": "number"},
                    "setpoint": {"type": "number", "writable": true, "range": [5, 30]},
                    "mode": {"type": "text", "writable": true}
                },
                "series": {"climate": {"fields": {"t": {"type": "number"}, "n": {"type": "integer"}}}},
                "alerts": {"overheat": {}},
                "actions": {"reset": {}, "boost": {"argument": {"type": "integer"}}}
            }"#,
            )
            .expect("model"),
        )
    }

    fn node() -> EdgeNode {
        let mut node = EdgeNode::new(Topics::new("plant", "gw1"), "wasmgate test", None);
        node.add_device("thermo", model());
        node.connected(7);
        node
    }

    fn by_name(payload: &Payload) -> HashMap<String, Metric> {
        payload
            .metrics
            .iter()
            .map(|m| (m.name.clone().unwrap_or_default(), m.clone()))
            .collect()
    }

    /// Publish everything due, as the link does, returning the seqs.
    fn birth_all(node: &mut EdgeNode, current: &Current) -> Vec<(Due, u64)> {
        let mut out = Vec::new();
        while let Some(due) = node.due() {
            let mut payload = match &due {
                Due::NodeBirth => node.node_birth(1_000),
                Due::DeviceBirth(d) => node.device_birth(d, current, 1_000).unwrap(),
                Due::DeviceDeath(d) => node.device_death(d, 1_000),
            };
            node.stamp(&mut payload);
            node.sent();
            if due == Due::NodeBirth {
                node.node_born(1_000);
            }
            out.push((due, payload.seq.unwrap()));
        }
        out
    }

    #[test]
    fn topics_follow_the_namespace() {
        let t = Topics::new("plant", "gw1");
        assert_eq!(t.node("NBIRTH"), "spBv1.0/plant/NBIRTH/gw1");
        assert_eq!(t.device("DDATA", "d1"), "spBv1.0/plant/DDATA/gw1/d1");
        assert_eq!(Topics::state("scada"), "spBv1.0/STATE/scada");
        assert_eq!(
            t.classify("spBv1.0/plant/DCMD/gw1/d1", None),
            Inbound::DeviceCommand("d1")
        );
        assert_eq!(
            t.classify("spBv1.0/plant/NCMD/gw1", None),
            Inbound::NodeCommand
        );
        assert_eq!(
            t.classify("spBv1.0/plant/DCMD/gw1/a/b", None),
            Inbound::Other
        );
        assert_eq!(
            t.classify("spBv1.0/STATE/scada", Some("scada")),
            Inbound::HostState
        );
        assert_eq!(t.classify("spBv1.0/STATE/scada", None), Inbound::Other);
    }

    #[test]
    fn the_node_is_born_first_with_seq_zero_then_its_devices() {
        let mut node = node();
        let current = vec![("temperature".to_string(), Value::Number(21.5), 900)];
        let births = birth_all(&mut node, &current);
        assert_eq!(
            births,
            vec![(Due::NodeBirth, 0), (Due::DeviceBirth("thermo".into()), 1)]
        );
        let nbirth = by_name(&node.node_birth(1_000));
        assert!(matches!(
            nbirth[BD_SEQ].value,
            Some(MetricValue::LongValue(7))
        ));
        assert!(matches!(
            nbirth[REBIRTH].value,
            Some(MetricValue::BooleanValue(false))
        ));
    }

    #[test]
    fn a_birth_names_every_metric_with_a_unique_alias_and_the_models_datatype() {
        let mut node = node();
        node.add_device("other", model());
        birth_all(&mut node, &vec![]);
        let current = vec![("temperature".to_string(), Value::Number(21.5), 900)];
        let dbirth = node.device_birth("thermo", &current, 1_000).unwrap();
        let metrics = by_name(&dbirth);
        let names: Vec<&str> = {
            let mut n: Vec<&str> = metrics.keys().map(String::as_str).collect();
            n.sort();
            n
        };
        assert_eq!(
            names,
            [
                "actions/boost",
                "actions/reset",
                "alerts/overheat",
                "climate/n",
                "climate/t",
                "mode",
                "setpoint",
                "temperature"
            ]
        );
        assert_eq!(metrics["temperature"].datatype, Some(datatype::DOUBLE));
        assert_eq!(metrics["temperature"].timestamp, Some(900));
        assert!(matches!(
            metrics["temperature"].value,
            Some(MetricValue::DoubleValue(v)) if v == 21.5
        ));
        assert_eq!(metrics["setpoint"].is_null, Some(true));
        assert_eq!(metrics["climate/n"].datatype, Some(datatype::INT64));
        assert_eq!(metrics["mode"].datatype, Some(datatype::STRING));
        assert_eq!(metrics["actions/boost"].datatype, Some(datatype::INT64));
        assert_eq!(metrics["actions/reset"].datatype, Some(datatype::BOOLEAN));
        // Unique across the node: the other device's aliases differ.
        let other = node.device_birth("other", &vec![], 1_000).unwrap();
        let mut aliases: Vec<u64> = dbirth
            .metrics
            .iter()
            .chain(&other.metrics)
            .map(|m| m.alias.unwrap())
            .collect();
        let count = aliases.len();
        aliases.sort();
        aliases.dedup();
        assert_eq!(aliases.len(), count);
        assert!(aliases.iter().all(|a| *a >= FIRST_DEVICE_ALIAS));
    }

    #[test]
    fn seq_wraps_after_255_and_a_rebirth_starts_again_at_zero() {
        let mut node = node();
        birth_all(&mut node, &vec![]);
        let mut seqs = Vec::new();
        for _ in 0..300 {
            let mut p = Payload::default();
            node.stamp(&mut p);
            node.sent();
            seqs.push(p.seq.unwrap());
        }
        assert_eq!(seqs[0], 2);
        assert_eq!(seqs[253], 255);
        assert_eq!(seqs[254], 0);
        assert!(seqs.iter().all(|s| *s <= 255));
        node.rebirth();
        assert_eq!(node.due(), Some(Due::NodeBirth));
        let births = birth_all(&mut node, &vec![]);
        assert_eq!(births[0].1, 0);
        assert_eq!(node.bd_seq(), 7, "a rebirth keeps the session's bdSeq");
    }

    #[test]
    fn a_stamp_not_sent_leaves_no_gap() {
        let node = node();
        let mut p = Payload::default();
        node.stamp(&mut p);
        let mut q = Payload::default();
        node.stamp(&mut q);
        assert_eq!(p.seq, q.seq);
    }

    #[test]
    fn bd_seq_counts_connections_and_wraps() {
        assert_eq!(EdgeNode::next_bd_seq(0), 1);
        assert_eq!(EdgeNode::next_bd_seq(255), 0);
        let will = payload::decode(&EdgeNode::will(9, 5)).unwrap();
        assert_eq!(will.seq, None);
        assert_eq!(will.metrics[0].name.as_deref(), Some(BD_SEQ));
        assert!(matches!(
            will.metrics[0].value,
            Some(MetricValue::LongValue(9))
        ));
    }

    #[test]
    fn attribute_data_goes_out_by_exception_and_answers_refused_writes() {
        let mut node = node();
        let current = vec![("temperature".to_string(), Value::Number(21.5), 900)];
        birth_all(&mut node, &current);
        assert!(
            node.attribute_data("thermo", &current, &[], 1_000)
                .is_none()
        );
        let changed = vec![("temperature".to_string(), Value::Number(22.0), 950)];
        let data = node.attribute_data("thermo", &changed, &[], 1_000).unwrap();
        assert_eq!(data.metrics.len(), 1);
        assert_eq!(data.metrics[0].name, None, "data goes by alias");
        assert_eq!(data.metrics[0].timestamp, Some(950));
        // A refused write to setpoint: answered with its value (null: never
        // reported), and an unchanged temperature only when asked.
        let data = node
            .attribute_data(
                "thermo",
                &changed,
                &["setpoint".to_string(), "temperature".to_string()],
                1_000,
            )
            .unwrap();
        assert_eq!(data.metrics.len(), 2);
        assert!(data.metrics.iter().any(|m| m.is_null == Some(true)));
    }

    #[test]
    fn points_recorded_before_the_birth_are_historical_in_order() {
        let mut node = node();
        birth_all(&mut node, &vec![]);
        let point = |ms: u64, t: f64| crate::wire::protocol::Point {
            time: ms * 1_000_000,
            values: serde_json::json!({"t": t, "unknown": 1})
                .as_object()
                .unwrap()
                .clone(),
        };
        let data = node
            .point_data(
                "thermo",
                "climate",
                &[point(400, 1.0), point(1_200, 2.0)],
                1_300,
            )
            .unwrap();
        assert_eq!(data.metrics.len(), 2, "fields the model lacks are left out");
        assert_eq!(data.metrics[0].timestamp, Some(400));
        assert_eq!(data.metrics[0].is_historical, Some(true));
        assert_eq!(data.metrics[1].timestamp, Some(1_200));
        assert_eq!(data.metrics[1].is_historical, None);
    }

    #[test]
    fn commands_become_desired_changes_and_actions_or_are_refused() {
        let mut node = node();
        birth_all(&mut node, &vec![]);
        let dbirth = node.device_birth("thermo", &vec![], 1_000).unwrap();
        let alias_of = |name: &str| {
            dbirth
                .metrics
                .iter()
                .find(|m| m.name.as_deref() == Some(name))
                .unwrap()
                .alias
                .unwrap()
        };
        let write = |name: Option<&str>, alias: Option<u64>, dt: u32, v: MetricValue| Metric {
            name: name.map(str::to_string),
            alias,
            datatype: Some(dt),
            value: Some(v),
            ..Default::default()
        };
        let command = Payload {
            metrics: vec![
                write(
                    Some("setpoint"),
                    None,
                    datatype::FLOAT,
                    MetricValue::FloatValue(22.5),
                ),
                write(
                    None,
                    Some(alias_of("mode")),
                    datatype::STRING,
                    MetricValue::StringValue("eco".into()),
                ),
                write(
                    Some("temperature"),
                    None,
                    datatype::DOUBLE,
                    MetricValue::DoubleValue(1.0),
                ),
                write(
                    Some("actions/boost"),
                    None,
                    datatype::INT32,
                    MetricValue::IntValue(3),
                ),
                write(
                    Some("actions/reset"),
                    None,
                    datatype::BOOLEAN,
                    MetricValue::BooleanValue(true),
                ),
                write(
                    Some("nope"),
                    None,
                    datatype::BOOLEAN,
                    MetricValue::BooleanValue(true),
                ),
                write(
                    Some("setpoint"),
                    None,
                    datatype::STRING,
                    MetricValue::StringValue("hot".into()),
                ),
            ],
            ..Default::default()
        };
        let commands = node.device_command("thermo", &command);
        assert_eq!(commands.desired["setpoint"], serde_json::json!(22.5));
        assert_eq!(commands.desired["mode"], serde_json::json!("eco"));
        assert_eq!(
            commands.actions,
            vec![
                ("boost".to_string(), Some(serde_json::json!(3))),
                ("reset".to_string(), None)
            ]
        );
        let refused: Vec<&str> = commands.refused.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(refused, ["temperature", "nope", "setpoint"]);
        assert!(!commands.rebirth);
        let unknown = node.device_command("ghost", &command);
        assert_eq!(unknown.refused.len(), 1);
    }

    #[test]
    fn a_rebirth_request_by_name_or_alias_is_read() {
        let node = node();
        let rebirth = |name: Option<&str>, alias: Option<u64>| Payload {
            metrics: vec![Metric {
                name: name.map(str::to_string),
                alias,
                datatype: Some(datatype::BOOLEAN),
                value: Some(MetricValue::BooleanValue(true)),
                ..Default::default()
            }],
            ..Default::default()
        };
        assert!(node.node_command(&rebirth(Some(REBIRTH), None)).rebirth);
        assert!(
            node.node_command(&rebirth(None, Some(REBIRTH_ALIAS)))
                .rebirth
        );
        assert!(
            node.node_command(&rebirth(Some(""), Some(REBIRTH_ALIAS)))
                .rebirth,
            "an empty name is read by the alias, as in a DCMD"
        );
        let other = node.node_command(&rebirth(Some("Node Control/Reboot"), None));
        assert!(!other.rebirth);
        assert_eq!(other.refused.len(), 1);
    }

    #[test]
    fn a_command_metric_with_an_empty_name_is_read_by_alias_or_refused_with_a_label() {
        let mut node = node();
        birth_all(&mut node, &vec![]);
        let alias = node.devices["thermo"].metrics["setpoint"].alias;
        let write = |name: Option<&str>, alias: Option<u64>| Payload {
            metrics: vec![Metric {
                name: name.map(str::to_string),
                alias,
                datatype: Some(datatype::DOUBLE),
                value: Some(MetricValue::DoubleValue(21.5)),
                ..Default::default()
            }],
            ..Default::default()
        };
        let by_alias = node.device_command("thermo", &write(Some(""), Some(alias)));
        assert_eq!(
            by_alias.desired.get("setpoint"),
            Some(&serde_json::json!(21.5))
        );
        // Found by a fuzz run: a refusal named "" told the operator nothing.
        for (name, alias) in [(Some(""), None), (None, None)] {
            let refused = node.device_command("thermo", &write(name, alias)).refused;
            assert_eq!(refused.len(), 1);
            assert!(refused[0].0.contains("metric with"), "{refused:?}");
            let refused = node.node_command(&write(name, alias)).refused;
            assert!(refused[0].0.contains("metric with"), "{refused:?}");
        }
    }

    #[test]
    fn with_a_primary_host_nothing_goes_out_until_it_is_online() {
        let mut node = EdgeNode::new(Topics::new("g", "n"), "x", Some("scada"));
        assert!(!node.may_publish());
        assert_eq!(
            node.host_state(br#"{"online": true, "timestamp": 10}"#),
            Ok(Some(true))
        );
        assert!(node.may_publish());
        // An older STATE arriving late changes nothing.
        assert_eq!(
            node.host_state(br#"{"online": false, "timestamp": 5}"#),
            Ok(None)
        );
        assert!(node.may_publish());
        assert_eq!(
            node.host_state(br#"{"online": false, "timestamp": 11}"#),
            Ok(Some(false))
        );
        assert!(!node.may_publish());
        assert!(node.host_state(b"online").is_err());
        // After a reconnect the node waits for the (retained) STATE again,
        // even if the host was online when the connection dropped.
        node.host_state(br#"{"online": true, "timestamp": 12}"#)
            .unwrap();
        node.connected(1);
        assert!(!node.may_publish());
        assert_eq!(
            node.host_state(br#"{"online": true, "timestamp": 12}"#),
            Ok(Some(true))
        );
    }

    #[test]
    fn a_device_whose_app_stops_dies_and_is_born_again_when_it_runs() {
        let mut node = node();
        birth_all(&mut node, &vec![]);
        node.set_alive("thermo", false);
        assert_eq!(node.due(), Some(Due::DeviceDeath("thermo".into())));
        birth_all(&mut node, &vec![]);
        assert!(!node.born("thermo"), "its data waits");
        assert_eq!(node.held(), ["thermo"]);
        assert_eq!(node.due(), None, "no birth while its app is down");
        node.set_alive("thermo", true);
        assert_eq!(node.due(), Some(Due::DeviceBirth("thermo".into())));
    }

    #[test]
    fn a_device_gone_after_its_birth_gets_a_death() {
        let mut node = node();
        birth_all(&mut node, &vec![]);
        node.remove_device("thermo");
        assert_eq!(node.due(), Some(Due::DeviceDeath("thermo".into())));
        birth_all(&mut node, &vec![]);
        assert_eq!(node.due(), None);
        // A device gone before it was born needs no death.
        node.add_device("late", model());
        node.remove_device("late");
        assert_eq!(node.due(), None);
    }
}

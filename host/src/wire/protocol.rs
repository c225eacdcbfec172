//! The JSON payloads of the cloud protocol, shared by the gateway and the
//! operator's `wasmgate cloud` commands. `docs/protocol.md` describes them;
//! keep the two in step.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The largest downlink payload the gateway reads; larger ones are refused
/// with an error reply.
pub const MAX_DOWNLINK_BYTES: usize = 64 * 1024;

/// `status` (retained, on the gateway's own device; also the last will).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Status {
    pub online: bool,
    /// Nanoseconds since the epoch; absent in the last will.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<u64>,
    /// Why the gateway is offline: `shutdown` or `connection lost`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// `[gateway.labels]`: what fleet selectors (deployments, rollouts)
    /// match. Absent in the last will.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// The broker the gateway is connected to (`mqtt://host:port`), one
    /// of `[cloud] urls`: after a failover, which node of the cluster it
    /// moved to. Absent in the last will.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broker: Option<String>,
    #[serde(default)]
    pub apps: Vec<AppInfo>,
    #[serde(default)]
    pub outbox: OutboxInfo,
}

/// One app as a running gateway reports it: in the status message, in
/// `wasmgate apps` and `status`, and (as numbers) in `/metrics`. Built in
/// one place, `crate::report`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AppInfo {
    pub name: String,
    pub device: String,
    pub state: RunState,
    /// Its version number in the gateway's deployment registry.
    pub version: i64,
    /// sha256 of the running component.
    pub component: String,
    /// How its component was made ready: compiled now, taken from the
    /// compile cache, or a precompiled artifact.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load: Option<Load>,
    pub restarts: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Events handled since the gateway started.
    #[serde(default)]
    pub events: u64,
    /// Calls that trapped since the gateway started.
    #[serde(default)]
    pub traps: u64,
    /// Export calls since the gateway started.
    #[serde(default)]
    pub calls: u64,
    /// Time spent in the app's calls since the gateway started, seconds.
    #[serde(default)]
    pub call_seconds: f64,
    /// The app's linear memory, bytes.
    #[serde(default)]
    pub memory_bytes: u64,
    /// Each capability unit's figures, by unit and figure name (for
    /// example `log.dropped`, `storage.bytes`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub capabilities: BTreeMap<String, BTreeMap<String, u64>>,
    /// The devices the app registered (indirectly connected devices). The
    /// status message lists at most [`STATUS_LIST`] of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<RegisteredDevice>,
    /// Registered devices left out of `devices` to keep the status message
    /// within [`STATUS_BUDGET`].
    #[serde(default, skip_serializing_if = "is_zero")]
    pub devices_omitted: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The most bytes a status message may take: far below the broker's packet
/// limit, so that no app's registrations, streams or errors can make the
/// message unsendable (it is retained, and a link that cannot send it
/// would reconnect for ever).
pub const STATUS_BUDGET: usize = 256 << 10;

/// Registered devices per app, and outbox streams, that a status message
/// lists at most; the rest are counted.
pub const STATUS_LIST: usize = 100;

/// The longest app error a status message carries when it must shrink.
const STATUS_ERROR_BYTES: usize = 1024;

impl Status {
    /// Shrink the message to `budget` bytes: lists cut to [`STATUS_LIST`]
    /// (the largest streams kept), then, if still over, no lists at all,
    /// then errors cut short. What is left out is counted, never silent.
    pub fn fit(&mut self, budget: usize) {
        for app in &mut self.apps {
            omit_past(&mut app.devices, &mut app.devices_omitted, STATUS_LIST);
        }
        if self.outbox.streams.len() > STATUS_LIST {
            self.outbox
                .streams
                .sort_by(|a, b| b.bytes.cmp(&a.bytes).then(b.points.cmp(&a.points)));
        }
        omit_past(
            &mut self.outbox.streams,
            &mut self.outbox.streams_omitted,
            STATUS_LIST,
        );
        let size = |status: &Status| serde_json::to_vec(status).map_or(0, |v| v.len());
        if size(self) <= budget {
            return;
        }
        for app in &mut self.apps {
            omit_past(&mut app.devices, &mut app.devices_omitted, 0);
        }
        omit_past(
            &mut self.outbox.streams,
            &mut self.outbox.streams_omitted,
            0,
        );
        if size(self) <= budget {
            return;
        }
        for app in &mut self.apps {
            if let Some(error) = &mut app.error
                && error.len() > STATUS_ERROR_BYTES
            {
                let mut cut = STATUS_ERROR_BYTES;
                while !error.is_char_boundary(cut) {
                    cut -= 1;
                }
                error.truncate(cut);
                error.push_str("...");
            }
        }
    }
}

/// Keep the first `keep` of `list`, counting the rest in `omitted`.
fn omit_past<T>(list: &mut Vec<T>, omitted: &mut u64, keep: usize) {
    if list.len() > keep {
        *omitted += (list.len() - keep) as u64;
        list.truncate(keep);
    }
}

/// How a component was made ready to run.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Load {
    /// Compiled by this gateway (and kept in its compile cache).
    Compiled,
    /// Taken from the compile cache.
    Cache,
    /// An artifact made by `wasmgate compile`.
    Precompiled,
}

/// Where an app's actor is in its life.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RunState {
    Starting,
    Running,
    /// Crashed; waiting before the next start.
    Restarting,
    /// Crashed too often; left stopped.
    Quarantined,
    Stopped,
}

impl RunState {
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Starting => "starting",
            RunState::Running => "running",
            RunState::Restarting => "restarting",
            RunState::Quarantined => "quarantined",
            RunState::Stopped => "stopped",
        }
    }
}

impl std::fmt::Display for RunState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A device an app registered, as the status announces it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RegisteredDevice {
    pub id: String,
    pub hardware_id: String,
    /// The name of the model among the app's `[app.models]`.
    pub model: String,
    /// Manufacturer, model number, serial number, ... as the app gave them.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

/// What waits in the outbox, and what it lost.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct OutboxInfo {
    /// Rows of every kind.
    pub entries: u64,
    pub points: u64,
    /// Bytes of telemetry and alerts (what the outbox limit counts).
    #[serde(default)]
    pub bytes: u64,
    /// Per stream (telemetry of a series, or an alert, of a device). The
    /// status message lists at most [`STATUS_LIST`], the largest.
    #[serde(default)]
    pub streams: Vec<StreamInfo>,
    /// Streams left out of `streams` to keep the status message small.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub streams_omitted: u64,
    /// Why the database takes no writes now (a full disk, say), while it
    /// does not; points wait in memory meanwhile and `record` refuses more.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_error: Option<String>,
}

/// One stream of the outbox.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct StreamInfo {
    /// `telemetry` or `alert`.
    pub kind: String,
    pub device: String,
    pub name: String,
    pub points: u64,
    pub bytes: u64,
    /// Deleted unsent to make room (`drop-oldest`).
    pub dropped: u64,
    /// Refused at `record` (`reject-newest`).
    pub rejected: u64,
    /// Deleted unsent for age (`max_age_s`).
    pub expired: u64,
}

/// `twin/reported` (retained): every reported attribute of the device.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Reported {
    pub version: u64,
    pub time: u64,
    pub attributes: serde_json::Map<String, serde_json::Value>,
}

/// `twin/desired` (down): attributes to change. `version` must grow with
/// each change; an older or equal version is not applied again.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Desired {
    pub version: u64,
    pub attributes: serde_json::Map<String, serde_json::Value>,
}

/// `twin/ack`: what became of a desired change.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Ack {
    /// The version acknowledged; absent if the message could not be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    #[serde(default)]
    pub accepted: Vec<String>,
    /// Refused attributes and why.
    #[serde(default)]
    pub rejected: BTreeMap<String, String>,
    /// This version was applied before; nothing was done.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub duplicate: bool,
    /// The whole message was refused (unreadable, unknown device, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `action/{name}/req` (down).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ActionRequest {
    /// Correlation id, echoed in the response (at most 128 characters).
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub argument: Option<serde_json::Value>,
}

/// `action/{name}/res`: `result` on success, `error` otherwise.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ActionResponse {
    /// The request's id; absent if the request could not be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `telemetry/{series}` (QoS 1): a batch of points.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TelemetryBatch {
    /// `{gateway}-{sequence}`: the same batch sent twice has the same id.
    pub batch: String,
    pub points: Vec<Point>,
}

/// One point of a batch.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Point {
    /// Nanoseconds since the epoch.
    pub time: u64,
    pub values: serde_json::Map<String, serde_json::Value>,
}

/// `alert/{name}` (QoS 1).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Alert {
    /// `{gateway}-{sequence}`, for de-duplication.
    pub id: String,
    pub time: u64,
    /// `info`, `warning` or `critical`.
    pub severity: String,
    pub values: serde_json::Map<String, serde_json::Value>,
}

/// The format number of deployment manifests this gateway takes.
pub const DEPLOY_FORMAT: u32 = 2;

/// `deploy/req` (down, gateway device): a new version of an app, whose
/// component follows in `chunks` messages on `deploy/{id}/chunk/{index}`.
///
/// Everything but the transport's `chunk_size` and `chunks` is signed (see
/// `deploy::signing::signed_bytes`): the gateway takes it only for its own
/// target, before `expires`, with a `version` higher than any it took for
/// the app, an `id` it has never seen, and `threshold` signatures by
/// distinct trusted keys.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DeployManifest {
    /// [`DEPLOY_FORMAT`].
    pub format: u32,
    /// Names the transfer (1 to 64 characters from A-Z a-z 0-9 _ - .);
    /// never taken twice.
    pub id: String,
    pub app: String,
    /// The app's deployment number: only ever grows. Going back to an older
    /// component is a new deployment with a higher number.
    pub version: u64,
    /// Which gateways it is for.
    pub target: DeployTarget,
    /// Unix seconds after which it is refused.
    pub expires: u64,
    /// Bytes of the component.
    pub size: u64,
    /// sha256 of the component, hex.
    pub sha256: String,
    pub chunk_size: u64,
    pub chunks: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<Vec<(String, String)>>,
    /// What the app may reach (devices, networks); must lie within the
    /// gateway's `[allow]`. Absent: the running version's grants stay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grants: Option<crate::grants::Grants>,
    /// At least the gateway's `threshold` of them, by distinct keys.
    pub signatures: Vec<DeploySignature>,
}

/// The gateways a deployment is for: one by id, or a fleet by labels.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum DeployTarget {
    /// `{"gateway": "gw-1"}`
    Gateway(String),
    /// `{"selector": "site=plant-1,ring!=canary"}` over `[gateway.labels]`.
    Selector(String),
}

impl std::fmt::Display for DeployTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeployTarget::Gateway(id) => write!(f, "gateway:{id}"),
            DeployTarget::Selector(selector) => write!(f, "selector:{selector}"),
        }
    }
}

/// `deploy/keys` (down, gateway device): the keys cloud deployments must
/// be signed with from now on, and how many of them, signed by `threshold`
/// of the keys in force (as TUF rotates its root). Answered on `deploy/res`
/// under its `id`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KeyRotation {
    /// [`DEPLOY_FORMAT`].
    pub format: u32,
    /// Never taken twice (it shares the deployments' ids).
    pub id: String,
    /// The key set's number: only ever grows.
    pub version: u64,
    pub target: DeployTarget,
    /// Unix seconds after which it is refused.
    pub expires: u64,
    /// The new trusted keys.
    pub keys: Vec<RotatedKey>,
    /// How many of them must sign a deployment.
    pub threshold: usize,
    pub signatures: Vec<DeploySignature>,
}

/// `deploy/rollback` (down, gateway device): put an app back on the version
/// before the one running component `sha256`, signed as a deployment is.
/// A rollout signs one beside its manifest so that `serve` can undo what it
/// rolled out without holding a key. A gateway whose app does not run that
/// component does nothing (so a repeat is harmless). Answered on
/// `deploy/res` under its `id`: `rolled-back`, or `failed`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RollbackOrder {
    /// [`DEPLOY_FORMAT`].
    pub format: u32,
    pub id: String,
    pub app: String,
    /// The component to leave (its sha256, hex).
    pub sha256: String,
    pub target: DeployTarget,
    /// Unix seconds after which it is refused.
    pub expires: u64,
    pub signatures: Vec<DeploySignature>,
}

/// A key of a [`KeyRotation`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RotatedKey {
    /// The ed25519 public key, hex.
    pub public: String,
    /// Unix seconds after which its signatures no longer count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<u64>,
}

/// One signature of a manifest.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DeploySignature {
    /// The signing key's id (`config::key_id` of its public key).
    pub key: String,
    /// ed25519 over the manifest's signed bytes for this key, hex.
    pub sig: String,
}

/// `deploy/res` (up, gateway device): how a deployment is going.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct DeployProgress {
    /// The manifest's id; absent if the manifest could not be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// `receiving`, `deployed` or `failed`.
    pub stage: String,
    #[serde(default)]
    pub received: u64,
    #[serde(default)]
    pub chunks: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(devices: usize, error: Option<String>) -> AppInfo {
        let metadata: BTreeMap<String, String> = (0..32)
            .map(|i| (format!("key-{i}"), "v".repeat(256)))
            .collect();
        AppInfo {
            name: "bus".into(),
            device: "bus".into(),
            state: RunState::Running,
            version: 1,
            component: "ab".repeat(32),
            load: None,
            restarts: 0,
            error,
            events: 0,
            traps: 0,
            calls: 0,
            call_seconds: 0.0,
            memory_bytes: 0,
            capabilities: BTreeMap::new(),
            devices: (0..devices)
                .map(|i| RegisteredDevice {
                    id: format!("bus.{i}-{}", "x".repeat(200)),
                    hardware_id: "h".repeat(200),
                    model: "sensor".into(),
                    metadata: metadata.clone(),
                })
                .collect(),
            devices_omitted: 0,
        }
    }

    fn status(apps: Vec<AppInfo>, streams: usize) -> Status {
        Status {
            online: true,
            time: Some(1),
            reason: None,
            labels: BTreeMap::new(),
            broker: None,
            apps,
            outbox: OutboxInfo {
                streams: (0..streams)
                    .map(|i| StreamInfo {
                        kind: "telemetry".into(),
                        device: format!("bus.{i}"),
                        name: "climate".into(),
                        bytes: i as u64,
                        ..StreamInfo::default()
                    })
                    .collect(),
                ..OutboxInfo::default()
            },
        }
    }

    fn size(status: &Status) -> usize {
        serde_json::to_vec(status).expect("json").len()
    }

    #[test]
    fn a_status_is_cut_to_its_budget_and_says_what_it_left_out() {
        // 2,000 devices of 8 KiB each and 5,000 streams: some 17 MB.
        let mut big = status(vec![app(2000, None)], 5000);
        assert!(size(&big) > 16 << 20, "{}", size(&big));
        big.fit(STATUS_BUDGET);
        assert!(size(&big) <= STATUS_BUDGET, "{}", size(&big));
        assert_eq!(
            big.apps[0].devices.len() as u64 + big.apps[0].devices_omitted,
            2000
        );
        assert_eq!(
            big.outbox.streams.len() as u64 + big.outbox.streams_omitted,
            5000
        );
        // The largest streams are the ones kept, when any are.
        assert!(big.outbox.streams.iter().all(|s| s.bytes >= 4900));

        // Small enough after the lists are cut to STATUS_LIST: kept so.
        let mut some = status(vec![app(150, None)], 150);
        some.fit(usize::MAX);
        assert_eq!(some.apps[0].devices.len(), STATUS_LIST);
        assert_eq!(some.apps[0].devices_omitted, 50);
        assert_eq!(some.outbox.streams_omitted, 50);

        // A status that fits is left as it is.
        let mut small = status(vec![app(3, None)], 3);
        let before = small.clone();
        small.fit(STATUS_BUDGET);
        assert_eq!(small, before);

        // Errors are cut last.
        let mut noisy = status(
            (0..150).map(|_| app(0, Some("é".repeat(4096)))).collect(),
            0,
        );
        noisy.fit(STATUS_BUDGET);
        assert!(size(&noisy) <= STATUS_BUDGET, "{}", size(&noisy));
        assert!(
            noisy.apps[0]
                .error
                .as_deref()
                .expect("error")
                .ends_with("...")
        );
    }
}

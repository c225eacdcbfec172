//! `gateway.toml`: the gateway's identity, its data directory and its apps.
//!
//! Unknown keys are refused, and every error names the file and the key (and
//! the line, where TOML can tell). Relative paths are resolved against the
//! directory of the config file, so a config works from any working directory.

use serde::Deserialize;
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::model::check_name;

mod app;
mod bus;
mod cloud;
mod content;
mod deploy;
mod outbox;
mod provisioning;

use app::AppSection;
pub use app::{
    AppConfig, DEFAULT_BUS_QUEUE, DEFAULT_DISK_QUOTA_BYTES, DEFAULT_IO_REQUESTS_PER_S,
    DEFAULT_IO_WAIT, RestartPolicy, SyncedLimits,
};
pub use bus::BusConfig;
use bus::{BusSection, bus_config};
pub use cloud::{BrokerSettings, CloudConfig, MqttVersion, Profile, SparkplugIds};
use cloud::{CloudSection, cloud_config};
pub use content::ContentConfig;
use content::{ContentSection, content_config};
pub use deploy::{DeployConfig, TrustedKey, key_id, parse_time};
use deploy::{DeploySection, deploy_config};
pub use outbox::{Batching, MAX_BATCH_KIB, OutboxConfig, SeriesConfig, WhenFull};
use outbox::{OutboxSection, outbox_config};
use provisioning::{Claimed, ProvisioningSection};
pub use provisioning::{Identity, MAX_SERIAL, Unprovisioned, check_serial, write_private};

/// Why a config file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read the config: {error}")]
    Read {
        path: PathBuf,
        /// Shown in the message, so not a `source` (it would be shown twice).
        error: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: {key}: {message}")]
    Invalid {
        path: PathBuf,
        key: String,
        message: String,
    },
    /// `[provisioning]` and no identity yet: what asking for one needs.
    #[error(
        "{path}: this gateway has no identity yet: `wasmgate provision` (or `wasmgate run`) asks serve for one with claim {:?}",
        plan.claim
    )]
    Unprovisioned {
        path: PathBuf,
        plan: Box<Unprovisioned>,
    },
}

/// A section's value that is refused: its key (as gateway.toml spells it)
/// and why. [`Config::parse`] adds the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct KeyError {
    pub key: String,
    pub message: String,
}

impl KeyError {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> KeyError {
        KeyError {
            key: key.into(),
            message: message.into(),
        }
    }

    /// The same error under `prefix` (`outbox.` for a key of `[outbox]`).
    pub fn within(self, prefix: &str) -> KeyError {
        KeyError {
            key: format!("{prefix}{}", self.key),
            ..self
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    gateway: GatewaySection,
    #[serde(default)]
    outbox: Option<OutboxSection>,
    #[serde(default)]
    deploy: Option<DeploySection>,
    #[serde(default)]
    metrics: Option<MetricsSection>,
    #[serde(default)]
    content: Option<ContentSection>,
    #[serde(default)]
    cloud: Option<CloudSection>,
    /// The local MQTT bus apps may be granted topics on.
    #[serde(default)]
    bus: Option<BusSection>,
    /// What any app may be granted at most (only this file sets it).
    #[serde(default)]
    allow: crate::grants::Grants,
    #[serde(default)]
    simulator: Option<SimulatorSection>,
    #[serde(default, rename = "app")]
    apps: Vec<AppSection>,
    /// A claim to exchange for an identity (`config::provisioning`).
    #[serde(default)]
    provisioning: Option<ProvisioningSection>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GatewaySection {
    /// Absent when `[provisioning]` gets the id from `serve`.
    #[serde(default)]
    id: Option<String>,
    #[serde(default = "default_data_dir")]
    data_dir: PathBuf,
    /// What fleet selectors match this gateway by (`site`, `ring`, ...).
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

/// `[simulator]`: a Modbus TCP device in-process, for development and the
/// demo (`crate::sim`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SimulatorSection {
    modbus_listen: String,
    #[serde(default = "default_start_temperature")]
    start_temperature: f64,
}

fn default_start_temperature() -> f64 {
    17.5
}

/// The in-process Modbus device.
#[derive(Debug, Clone)]
pub struct SimulatorConfig {
    /// Where it listens (loopback only).
    pub modbus_listen: std::net::SocketAddr,
    pub start_temperature: f64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct MetricsSection {
    listen: String,
}

/// Devices an app may register unless its config says otherwise.
pub const DEFAULT_MAX_DEVICES: usize = 100;

/// The largest `max_devices` gateway.toml takes.
pub const MAX_DEVICES_LIMIT: usize = 100_000;

/// The content chunk size senders use unless told otherwise.
pub const DEFAULT_CHUNK_BYTES: u64 = 64 << 10;

/// The directory an app's guest sees as `/`, in the data directory.
pub fn app_files_dir(data_dir: &Path, app: &str) -> PathBuf {
    data_dir.join("apps").join(app).join("files")
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("data")
}
/// A gateway's configuration, checked and with paths resolved.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was read from.
    pub path: PathBuf,
    pub gateway_id: String,
    /// `[gateway.labels]`: what a deployment's fleet selector matches.
    pub labels: BTreeMap<String, String>,
    pub data_dir: PathBuf,
    pub outbox: OutboxConfig,
    pub deploy: DeployConfig,
    /// Where the Prometheus endpoint listens (loopback only), if at all.
    pub metrics: Option<std::net::SocketAddr>,
    pub content: ContentConfig,
    /// The cloud link; `None` runs offline (everything stays in the outbox).
    pub cloud: Option<CloudConfig>,
    /// `[bus]`: the local MQTT broker; `None` when the gateway has none.
    pub bus: Option<BusConfig>,
    /// `[allow]`: what any app may be granted at most.
    pub allow: crate::grants::Grants,
    /// `[simulator]`: a Modbus device served in-process (the demo's room).
    pub simulator: Option<SimulatorConfig>,
    pub apps: Vec<AppConfig>,
}

impl Config {
    /// Read and check a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.to_path_buf(),
            error,
        })?;
        Self::parse(path, &text)
    }

    /// Check config text as if it were read from `path`.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let file: File = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })?;
        let invalid = |key: String, message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            key,
            message,
        };
        // Absolute, so logs and `status` show where things really are.
        let path = &std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        let base = path.parent().unwrap_or(Path::new("."));
        let resolve = |p: &Path| {
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                base.join(p)
            }
        };

        let mut file = file;
        let data_dir = resolve(&file.gateway.data_dir);
        let mut unprovisioned = None;
        let identity = match (file.gateway.id.clone(), file.provisioning.take()) {
            (Some(id), None) => {
                check_name(&id).map_err(|m| invalid("gateway.id".into(), m))?;
                None
            }
            (None, None) => {
                return Err(invalid(
                    "gateway.id".into(),
                    "missing: give the gateway's id, or a [provisioning] claim to ask serve for one"
                        .into(),
                ));
            }
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "gateway.id".into(),
                    "a gateway provisioned by claim is given its id by serve: remove gateway.id or [provisioning]".into(),
                ));
            }
            (None, Some(section)) => {
                match section
                    .resolve(file.cloud.as_mut(), &data_dir, &resolve)
                    .map_err(|e| invalid(e.key, e.message))?
                {
                    Claimed::Issued(identity) => {
                        file.gateway.id = Some(identity.gateway.clone());
                        Some(identity)
                    }
                    Claimed::Asking(plan) => {
                        // The rest of the file is checked as usual (under
                        // the claim's name) before the claim is used.
                        file.gateway.id = Some(plan.claim.clone());
                        unprovisioned = Some(plan);
                        None
                    }
                }
            }
        };
        let gateway_id = file.gateway.id.clone().unwrap_or_default();
        // Issued labels win over local ones: serve decides what a
        // provisioned gateway's fleet selectors match.
        let mut labels = file.gateway.labels.clone();
        if let Some(identity) = &identity {
            labels.extend(identity.labels.clone());
        }
        crate::wire::selector::check_labels(&labels)
            .map_err(|(key, m)| invalid(format!("gateway.{key}"), m))?;
        let outbox = outbox_config(file.outbox.unwrap_or_default())
            .map_err(|e| invalid(e.key, e.message))?;
        let deploy = deploy_config(file.deploy.unwrap_or_default())
            .map_err(|e| invalid(e.key, e.message))?;
        let content = content_config(file.content.unwrap_or_default())
            .map_err(|e| invalid(e.key, e.message))?;
        let metrics = match file.metrics {
            None => None,
            Some(m) => {
                let addr: std::net::SocketAddr = m.listen.parse().map_err(|_| {
                    invalid(
                        "metrics.listen".into(),
                        format!("{:?} is not an address:port", m.listen),
                    )
                })?;
                if !addr.ip().is_loopback() {
                    return Err(invalid(
                        "metrics.listen".into(),
                        format!(
                            "{addr} is not a loopback address: the metrics endpoint is for the gateway itself"
                        ),
                    ));
                }
                Some(addr)
            }
        };

        let simulator = match file.simulator {
            None => None,
            Some(s) => {
                let listen: std::net::SocketAddr = s.modbus_listen.parse().map_err(|_| {
                    invalid(
                        "simulator.modbus_listen".into(),
                        format!("{:?} is not an address:port", s.modbus_listen),
                    )
                })?;
                if !listen.ip().is_loopback() {
                    return Err(invalid(
                        "simulator.modbus_listen".into(),
                        format!(
                            "{listen} is not a loopback address: the simulator is for this machine only"
                        ),
                    ));
                }
                if !(-50.0..=100.0).contains(&s.start_temperature) {
                    return Err(invalid(
                        "simulator.start_temperature".into(),
                        format!("{} is not between -50 and 100", s.start_temperature),
                    ));
                }
                Some(SimulatorConfig {
                    modbus_listen: listen,
                    start_temperature: s.start_temperature,
                })
            }
        };
        let mut allow = file.allow;
        allow
            .check(false)
            .map_err(|(field, message)| invalid(format!("allow.{field}"), message))?;
        // A token file is found from the config's directory, and must be the
        // gateway user's alone, as a password file must.
        for (i, grant) in allow.serve_http.iter_mut().enumerate() {
            if let Some(path) = &mut grant.token_file {
                *path = resolve(path);
                crate::permissions::check_private(path, "the token file")
                    .map_err(|m| invalid(format!("allow.serve_http[{i}].token_file"), m))?;
            }
        }
        let mut names = HashSet::new();
        let mut devices = HashSet::new();
        let mut serving = HashSet::new();
        let mut apps = Vec::with_capacity(file.apps.len());
        for (i, app) in file.apps.into_iter().enumerate() {
            let key = |field: &str| format!("app[{i}].{field}");
            check_name(&app.name).map_err(|m| invalid(key("name"), m))?;
            if !names.insert(app.name.clone()) {
                return Err(invalid(
                    key("name"),
                    format!("app {:?} is defined twice", app.name),
                ));
            }
            let device = app.device.clone().unwrap_or_else(|| app.name.clone());
            check_name(&device).map_err(|m| invalid(key("device"), m))?;
            if device == gateway_id {
                return Err(invalid(
                    key("device"),
                    format!("{device:?} is the gateway's own device id"),
                ));
            }
            if !devices.insert(device.clone()) {
                return Err(invalid(
                    key("device"),
                    format!("device {device:?} belongs to two apps"),
                ));
            }
            let between = |field: &str, v: u64, min: u64, max: u64| {
                if (min..=max).contains(&v) {
                    Ok(v)
                } else {
                    Err(invalid(
                        key(field),
                        format!("{v} is not between {min} and {max}"),
                    ))
                }
            };
            let tick = between("tick_interval_ms", app.tick_interval_ms, 1, 86_400_000)?;
            let timeout = between("call_timeout_ms", app.call_timeout_ms, 1, 600_000)?;
            let memory = between("memory_limit_mib", app.memory_limit_mib, 1, 4096)?;
            let quota = between(
                "storage_quota_kib",
                app.storage_quota_kib,
                1,
                16 * 1024 * 1024,
            )?;
            let disk_quota = between("disk_quota_mib", app.disk_quota_mib, 1, 1 << 30)?;
            // The disk quota covers the app's storage too.
            if quota > disk_quota * 1024 {
                return Err(invalid(
                    key("storage_quota_kib"),
                    format!(
                        "{quota} KiB does not fit in disk_quota_mib ({disk_quota} MiB), which covers the app's storage too"
                    ),
                ));
            }
            let r = &app.restart;
            if r.max_crashes == 0
                || r.backoff_initial_ms == 0
                || r.backoff_max_ms < r.backoff_initial_ms
            {
                return Err(invalid(
                    key("restart"),
                    "max_crashes and backoff_initial_ms must be positive and backoff_max_ms at least backoff_initial_ms".into(),
                ));
            }
            let mut config = Vec::with_capacity(app.config.len());
            for (k, v) in app.config {
                let text = match v {
                    toml::Value::String(s) => s,
                    toml::Value::Integer(i) => i.to_string(),
                    toml::Value::Float(f) => f.to_string(),
                    toml::Value::Boolean(b) => b.to_string(),
                    other => {
                        return Err(invalid(
                            key(&format!("config.{k}")),
                            format!(
                                "expected a string, number or boolean, got a {}",
                                other.type_str()
                            ),
                        ));
                    }
                };
                config.push((k, text));
            }
            let mut device_models = Vec::with_capacity(app.models.len());
            for (name, file) in &app.models {
                check_name(name).map_err(|m| invalid(key(&format!("models.{name}")), m))?;
                device_models.push((name.clone(), resolve(file)));
            }
            let max_devices = usize::try_from(between(
                "max_devices",
                app.max_devices as u64,
                0,
                MAX_DEVICES_LIMIT as u64,
            )?)
            .unwrap_or(0);
            let io_wait = between("io_wait_ms", app.io_wait_ms, 0, 600_000)?;
            let io_requests_per_s = between(
                "io_requests_per_s",
                u64::from(app.io_requests_per_s),
                1,
                100_000,
            )? as u32;
            let grants = app.grants;
            grants
                .check(true)
                .and_then(|()| grants.check_within(&allow))
                .map_err(|(field, message)| invalid(key(&format!("grants.{field}")), message))?;
            for grant in &grants.serve_http {
                if !serving.insert(grant.socket_addr()) {
                    return Err(invalid(
                        key("grants.serve_http"),
                        format!("two apps serve HTTP on {}", grant.address),
                    ));
                }
            }
            let bus_queue = between("bus_queue", app.bus_queue as u64, 1, 100_000)? as usize;
            let synced = SyncedLimits {
                max_rows: between("synced_max_rows", app.synced_max_rows, 1, 10_000_000)?,
                max_bytes: between("synced_max_kib", app.synced_max_kib, 1, 16 * 1024 * 1024)?
                    << 10,
                max_changes: between(
                    "synced_max_changes",
                    u64::from(app.synced_max_changes),
                    1,
                    100_000,
                )? as u32,
            };
            apps.push(AppConfig {
                synced,
                bus_queue,
                io_wait: Duration::from_millis(io_wait),
                io_requests_per_s,
                grants,
                device_models,
                max_devices,
                component: resolve(&app.component),
                model: resolve(&app.model),
                device,
                tick_interval: Duration::from_millis(tick),
                call_timeout: Duration::from_millis(timeout),
                memory_limit_bytes: usize::try_from(memory << 20).unwrap_or(usize::MAX),
                storage_quota_bytes: quota << 10,
                disk_quota_bytes: disk_quota << 20,
                config,
                restart: app.restart,
                name: app.name,
            });
        }
        let cloud = match file.cloud {
            None => None,
            Some(cloud) => Some(
                cloud_config(cloud, &gateway_id, &resolve)
                    .map_err(|e| invalid(e.key, e.message))?,
            ),
        };
        let bus = match file.bus {
            None => None,
            Some(bus) => Some(
                bus_config(bus, &gateway_id, &resolve).map_err(|e| invalid(e.key, e.message))?,
            ),
        };
        if let Some(plan) = unprovisioned {
            return Err(ConfigError::Unprovisioned {
                path: path.to_path_buf(),
                plan: Box::new(plan),
            });
        }
        Ok(Config {
            bus,
            path: path.to_path_buf(),
            gateway_id,
            labels,
            data_dir,
            outbox,
            deploy,
            metrics,
            content,
            cloud,
            allow,
            simulator,
            apps,
        })
    }

    /// The SQLite database inside the data directory.
    pub fn database_path(&self) -> PathBuf {
        self.data_dir.join("wasmgate.db")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("/etc/wg/gateway.toml"), text)
    }

    #[test]
    fn the_profile_and_mqtt_version_are_checked_and_sparkplug_ids_must_be_topic_levels() {
        let with = |cloud: &str| {
            parse(&format!(
                "[gateway]\nid = \"gw-1\"\n[cloud]\nurl = \"mqtt://a\"\n{cloud}\n"
            ))
        };
        let cloud = with("").expect("valid").cloud.expect("cloud");
        assert_eq!(cloud.profile, Profile::WgV1);
        let cloud = with("profile = \"sparkplug\"\n[cloud.sparkplug]\ngroup_id = \"plant\"")
            .expect("valid")
            .cloud
            .expect("cloud");
        assert_eq!(
            cloud.profile,
            Profile::Sparkplug(SparkplugIds {
                group_id: "plant".into(),
                edge_node_id: "gw-1".into(),
                primary_host: None,
            })
        );
        let cloud = with("mqtt_version = \"5\"\nsession_expiry_s = 60")
            .expect("valid")
            .cloud
            .expect("cloud");
        assert_eq!(cloud.mqtt_version, MqttVersion::V5);
        assert_eq!(cloud.session_expiry, std::time::Duration::from_secs(60));
        assert_eq!(
            with("").unwrap().cloud.unwrap().mqtt_version,
            MqttVersion::V311
        );
        for (bad, says) in [
            ("mqtt_version = \"4\"", "cloud.mqtt_version"),
            ("session_expiry_s = 0", "cloud.session_expiry_s"),
            (
                "mqtt_version = \"5\"\nprofile = \"sparkplug\"\n[cloud.sparkplug]\ngroup_id = \"g\"",
                "MQTT 3.1.1",
            ),
            ("profile = \"sparkplug\"", "needs [cloud.sparkplug]"),
            ("profile = \"opc-ua\"", "cloud.profile"),
            (
                "[cloud.sparkplug]\ngroup_id = \"plant\"",
                "is for profile = \"sparkplug\"",
            ),
            (
                "profile = \"sparkplug\"\n[cloud.sparkplug]\ngroup_id = \"a/b\"",
                "cloud.sparkplug.group_id",
            ),
            (
                "profile = \"sparkplug\"\n[cloud.sparkplug]\ngroup_id = \"g\"\nprimary_host = \"#\"",
                "cloud.sparkplug.primary_host",
            ),
        ] {
            let error = with(bad).expect_err(bad).to_string();
            assert!(error.contains(says), "{bad}: {error}");
        }
    }

    #[test]
    fn cloud_urls_list_the_nodes_of_a_cluster_and_refuse_what_cannot_work() {
        let with = |cloud: &str| parse(&format!("[gateway]\nid = \"gw-1\"\n[cloud]\n{cloud}\n"));
        let config = with(
            r#"urls = ["mqtt://a:1883", "mqtt://b:1884"]
username = "gw-1""#,
        )
        .expect("valid");
        let cloud = config.cloud.expect("cloud");
        assert_eq!((cloud.broker.host.as_str(), cloud.broker.port), ("a", 1883));
        assert_eq!(cloud.failover.len(), 1);
        assert_eq!(
            (cloud.failover[0].host.as_str(), cloud.failover[0].port),
            ("b", 1884)
        );
        assert_eq!(
            cloud.failover[0].username.as_deref(),
            Some("gw-1"),
            "the same login"
        );
        for (bad, says) in [
            (
                r#"url = "mqtt://a"
urls = ["mqtt://b"]"#,
                "not both",
            ),
            ("urls = []", "1 to 16"),
            (r#"urls = ["mqtt://a", "nonsense"]"#, "cloud.urls[1]"),
            (
                r#"urls = ["mqtt://a", "mqtt://b"]
embedded = true"#,
                "not both",
            ),
        ] {
            let error = with(bad).expect_err(bad).to_string();
            assert!(error.contains(says), "{bad}: {error}");
        }
    }

    #[test]
    fn a_full_config_resolves_paths_and_defaults() {
        let config = parse(
            r#"
            [gateway]
            id = "gw-1"

            [[app]]
            name = "thermo"
            component = "apps/thermo.wasm"
            model = "/models/thermo.json"
            tick_interval_ms = 250
            config = { seed = 42, room = "hall", debug = true }
            "#,
        )
        .expect("valid");
        assert_eq!(config.data_dir, Path::new("/etc/wg/data"));
        let app = &config.apps[0];
        assert_eq!(app.component, Path::new("/etc/wg/apps/thermo.wasm"));
        assert_eq!(app.model, Path::new("/models/thermo.json"));
        assert_eq!(app.device, "thermo");
        assert_eq!(app.tick_interval, Duration::from_millis(250));
        assert_eq!(app.memory_limit_bytes, 64 << 20);
        assert_eq!(app.restart, RestartPolicy::default());
        assert_eq!(
            app.config,
            vec![
                ("debug".to_string(), "true".to_string()),
                ("room".to_string(), "hall".to_string()),
                ("seed".to_string(), "42".to_string())
            ]
        );
    }

    #[test]
    fn a_gateway_provisioned_by_claim_loads_as_the_identity_it_was_issued() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let text = format!(
            r#"[gateway]
data_dir = "{}"
[gateway.labels]
site = "local"
floor = "2"
[cloud]
url = "mqtts://broker:8883"
ca_file = "ca.pem"
[provisioning]
claim = "batch-7"
cert_file = "claim.pem"
key_file = "claim.key"
serial = "SN-1"
"#,
            data.display()
        );
        let Err(ConfigError::Unprovisioned { plan, .. }) = parse(&text) else {
            panic!("no identity yet: unprovisioned");
        };
        assert_eq!(
            (plan.claim.as_str(), plan.serial.as_str()),
            ("batch-7", "SN-1")
        );
        assert_eq!(
            plan.broker.cert_file.as_deref(),
            Some(Path::new("/etc/wg/claim.pem"))
        );
        assert_eq!(plan.data_dir, data);

        let identity = Identity {
            gateway: "plant1-gw-7".into(),
            labels: BTreeMap::from([("site".into(), "plant-1".into())]),
            claim: "batch-7".into(),
            serial: "SN-1".into(),
            issued_at: 1,
            not_after: 2,
        };
        identity.store(&data, "CERT", "KEY").unwrap();
        let config = parse(&text).expect("provisioned");
        assert_eq!(config.gateway_id, "plant1-gw-7");
        // Issued labels win; local ones the issue does not name stay.
        assert_eq!(config.labels["site"], "plant-1");
        assert_eq!(config.labels["floor"], "2");
        let broker = config.cloud.unwrap().broker;
        assert_eq!(broker.client_id, "plant1-gw-7");
        assert_eq!(broker.cert_file, Some(Identity::cert_file(&data)));
        assert_eq!(broker.key_file, Some(Identity::key_file(&data)));
    }

    #[test]
    fn a_claim_token_logs_in_as_the_claim_with_the_token_as_password() {
        use secrecy::ExposeSecret as _;
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("claim.token");
        write_private(&token, "s3cret-claim-token\n").unwrap();
        let text = format!(
            "[gateway]\ndata_dir = \"{}\"\n[cloud]\nurl = \"mqtt://broker:1883\"\n[provisioning]\nclaim = \"batch-9\"\ntoken_file = \"{}\"\nserial = \"SN-9\"\n",
            dir.path().join("data").display(),
            token.display()
        );
        let Err(ConfigError::Unprovisioned { plan, .. }) = parse(&text) else {
            panic!("unprovisioned");
        };
        assert_eq!(plan.broker.username.as_deref(), Some("batch-9"));
        assert_eq!(
            plan.broker
                .password
                .as_ref()
                .map(|p| p.expose_secret().to_string()),
            Some("s3cret-claim-token".to_string())
        );
        assert_eq!(plan.broker.cert_file, None);
        // The token never shows in what the plan prints.
        assert!(!format!("{plan:?}").contains("s3cret"));
    }

    #[test]
    fn provisioning_refuses_what_would_contradict_the_identity() {
        let cases = [
            (
                "id = \"gw\"\n[cloud]\nurl = \"mqtt://b\"\n[provisioning]\nclaim = \"c\"\ntoken_file = \"t\"\nserial = \"s\"",
                "gateway.id",
            ),
            (
                "[cloud]\nurl = \"mqtt://b\"\ncert_file = \"x\"\nkey_file = \"y\"\n[provisioning]\nclaim = \"c\"\ntoken_file = \"t\"\nserial = \"s\"",
                "cloud.cert_file",
            ),
            (
                "[provisioning]\nclaim = \"c\"\ntoken_file = \"t\"\nserial = \"s\"",
                "provisioning",
            ),
            (
                "[cloud]\nurl = \"mqtt://b\"\n[provisioning]\nclaim = \"c\"\nserial = \"s\"",
                "provisioning.claim",
            ),
            (
                "[cloud]\nurl = \"mqtt://b\"\n[provisioning]\nclaim = \"c\"\ntoken_file = \"t\"\nserial = \"a b\"",
                "provisioning.serial",
            ),
            ("data_dir = \"/tmp\"", "gateway.id"),
        ];
        for (text, key) in cases {
            let text = format!("[gateway]\n{text}\n");
            match parse(&text) {
                Err(ConfigError::Invalid { key: k, .. }) => assert_eq!(k, key, "{text}"),
                other => panic!("{text}: {other:?}"),
            }
        }
    }

    #[test]
    fn errors_name_the_file_the_key_and_the_line() {
        let err = parse("[gateway]\nid = \"gw\"\ncolour = \"red\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("/etc/wg/gateway.toml: "), "{err}");
        assert!(
            err.contains("line 3") && err.contains("unknown field `colour`"),
            "{err}"
        );

        let err = parse("[gateway]\nid = \"gw\"\n[[app]]\nname = \"a\"\ncomponent = \"a.wasm\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing field `model`"), "{err}");

        let twice = r#"
            [gateway]
            id = "gw"
            [[app]]
            name = "a"
            component = "a.wasm"
            model = "a.json"
            [[app]]
            name = "a"
            component = "b.wasm"
            model = "b.json"
        "#;
        assert_eq!(
            parse(twice).unwrap_err().to_string(),
            "/etc/wg/gateway.toml: app[1].name: app \"a\" is defined twice"
        );

        let slow = "[gateway]\nid = \"gw\"\n[[app]]\nname = \"a\"\ncomponent = \"a\"\nmodel = \"m\"\ntick_interval_ms = 0\n";
        assert_eq!(
            parse(slow).unwrap_err().to_string(),
            "/etc/wg/gateway.toml: app[0].tick_interval_ms: 0 is not between 1 and 86400000"
        );
        let crowded = "[gateway]\nid = \"gw\"\n[[app]]\nname = \"a\"\ncomponent = \"a\"\nmodel = \"m\"\ndisk_quota_mib = 4\nstorage_quota_kib = 8192\n";
        assert_eq!(
            parse(crowded).unwrap_err().to_string(),
            "/etc/wg/gateway.toml: app[0].storage_quota_kib: 8192 KiB does not fit in disk_quota_mib (4 MiB), which covers the app's storage too"
        );
        let nested = "[gateway]\nid = \"gw\"\n[[app]]\nname = \"a\"\ncomponent = \"a\"\nmodel = \"m\"\nconfig = { x = [1] }\n";
        assert_eq!(
            parse(nested).unwrap_err().to_string(),
            "/etc/wg/gateway.toml: app[0].config.x: expected a string, number or boolean, got a array"
        );
        assert!(
            parse("[gateway]\nid = \"a/b\"\n")
                .unwrap_err()
                .to_string()
                .contains("gateway.id")
        );
    }
    #[test]
    fn cloud_settings_are_checked() {
        let cloud = |body: &str| parse(&format!("[gateway]\nid = \"gw\"\n[cloud]\n{body}\n"));
        let c = cloud("url = \"mqtts://broker.example:8884\"\nca_file = \"ca.pem\"\nusername = \"u\"\npassword = \"p\"")
            .expect("valid")
            .cloud
            .expect("cloud");
        assert_eq!(
            (c.broker.host.as_str(), c.broker.port, c.broker.tls),
            ("broker.example", 8884, true)
        );
        assert_eq!(c.broker.client_id, "gw");
        assert_eq!(
            c.broker.ca_file.as_deref(),
            Some(Path::new("/etc/wg/ca.pem"))
        );
        let e = cloud("embedded = true")
            .expect("valid")
            .cloud
            .expect("cloud");
        assert_eq!(e.embedded, Some("127.0.0.1:18830".parse().expect("addr")));
        assert_eq!(
            (e.broker.host.as_str(), e.broker.port, e.broker.tls),
            ("127.0.0.1", 18830, false)
        );

        let err = |body: &str| cloud(body).unwrap_err().to_string();
        assert!(err("").contains("cloud.url: give the broker's url"));
        assert!(err("url = \"http://x\"").contains("is not an mqtt:// or mqtts:// URL"));
        assert!(err("url = \"mqtts://x\"").contains("needs ca_file"));
        assert!(err("url = \"mqtt://x\"\nca_file = \"ca.pem\"").contains("need an mqtts:// url"));
        assert!(
            err("url = \"mqtts://x\"\nca_file = \"c\"\ncert_file = \"c\"").contains("go together")
        );
        assert!(err("url = \"mqtt://x:99999\"").contains("is not a port number"));
        assert!(err("url = \"mqtt://x\"\nembedded = true").contains("not both"));
    }
}

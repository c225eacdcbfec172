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
    #[serde(default, rename = "app")]
    apps: Vec<AppSection>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CloudSection {
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    embedded: bool,
    #[serde(default = "default_embedded_listen")]
    embedded_listen: String,
    #[serde(default)]
    client_id: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    ca_file: Option<PathBuf>,
    #[serde(default)]
    cert_file: Option<PathBuf>,
    #[serde(default)]
    key_file: Option<PathBuf>,
    #[serde(default = "default_keep_alive_s")]
    keep_alive_s: u64,
    #[serde(default = "default_backoff_initial_ms")]
    backoff_initial_ms: u64,
    #[serde(default = "default_backoff_max_ms")]
    backoff_max_ms: u64,
    #[serde(default = "default_max_inflight")]
    max_inflight: u16,
    #[serde(default = "default_status_interval_s")]
    status_interval_s: u64,
}

/// Not MQTT's 1883: a system Mosquitto (installed for the tests, say) often
/// holds that one, and the demo must not collide with it.
fn default_embedded_listen() -> String {
    "127.0.0.1:18830".into()
}
fn default_keep_alive_s() -> u64 {
    30
}
fn default_backoff_initial_ms() -> u64 {
    500
}
fn default_backoff_max_ms() -> u64 {
    30_000
}
fn default_max_inflight() -> u16 {
    32
}
fn default_status_interval_s() -> u64 {
    60
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GatewaySection {
    id: String,
    #[serde(default = "default_data_dir")]
    data_dir: PathBuf,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ContentSection {
    max_upload_mib: Option<u64>,
    max_download_mib: Option<u64>,
    upload_kib_per_s: Option<u64>,
    chunk_kib: Option<u64>,
}

/// Large content transfers (`[content]`): limits and pace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContentConfig {
    /// The largest upload an app may start.
    pub max_upload_bytes: u64,
    /// The largest download the gateway takes.
    pub max_download_bytes: u64,
    /// Bytes a second uploads may use (0: as fast as the link goes).
    pub upload_bytes_per_s: u64,
    /// The chunk size of uploads.
    pub chunk_bytes: u64,
}

impl Default for ContentConfig {
    fn default() -> Self {
        ContentConfig {
            max_upload_bytes: 64 << 20,
            max_download_bytes: 64 << 20,
            upload_bytes_per_s: 0,
            chunk_bytes: DEFAULT_CHUNK_BYTES,
        }
    }
}

fn content_config(section: ContentSection) -> Result<ContentConfig, (String, String)> {
    let mut config = ContentConfig::default();
    let range = |key: &str, v: u64, min: u64, max: u64| {
        if (min..=max).contains(&v) {
            Ok(v)
        } else {
            Err((
                format!("content.{key}"),
                format!("{v} is not between {min} and {max}"),
            ))
        }
    };
    if let Some(v) = section.max_upload_mib {
        config.max_upload_bytes = range("max_upload_mib", v, 0, 4096)? << 20;
    }
    if let Some(v) = section.max_download_mib {
        config.max_download_bytes = range("max_download_mib", v, 0, 4096)? << 20;
    }
    if let Some(v) = section.upload_kib_per_s {
        config.upload_bytes_per_s = range("upload_kib_per_s", v, 0, 1 << 30)? << 10;
    }
    if let Some(v) = section.chunk_kib {
        config.chunk_bytes = range("chunk_kib", v, 1, 1024)? << 10;
    }
    Ok(config)
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct MetricsSection {
    listen: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeploySection {
    #[serde(default)]
    probation_s: Option<u64>,
    #[serde(default)]
    keep_versions: Option<usize>,
    #[serde(default)]
    trusted_keys: Vec<String>,
}

/// `[deploy]`: how new versions are taken in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeployConfig {
    /// A new version that crashes within this is rolled back.
    pub probation: Duration,
    /// Earlier versions kept for rollback.
    pub keep_versions: usize,
    /// ed25519 public keys (32 bytes) whose signatures cloud deployments need.
    pub trusted_keys: Vec<[u8; 32]>,
}

impl Default for DeployConfig {
    fn default() -> Self {
        DeployConfig {
            probation: Duration::from_secs(30),
            keep_versions: 3,
            trusted_keys: Vec::new(),
        }
    }
}

fn deploy_config(section: DeploySection) -> Result<DeployConfig, (String, String)> {
    let mut config = DeployConfig::default();
    if let Some(s) = section.probation_s {
        if s > 86_400 {
            return Err((
                "deploy.probation_s".into(),
                format!("{s} is more than a day"),
            ));
        }
        config.probation = Duration::from_secs(s);
    }
    if let Some(k) = section.keep_versions {
        if !(1..=100).contains(&k) {
            return Err((
                "deploy.keep_versions".into(),
                format!("{k} is not between 1 and 100"),
            ));
        }
        config.keep_versions = k;
    }
    for (i, key) in section.trusted_keys.iter().enumerate() {
        let bytes = hex::decode(key.trim())
            .ok()
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .ok_or_else(|| {
                (
                    format!("deploy.trusted_keys[{i}]"),
                    "not a hex ed25519 public key (64 hex digits; `wasmgate keygen` makes one)"
                        .to_string(),
                )
            })?;
        config.trusted_keys.push(bytes);
    }
    Ok(config)
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct OutboxSection {
    #[serde(default)]
    flush_interval_ms: Option<u64>,
    #[serde(default)]
    sync_record: bool,
    #[serde(default)]
    max_kib: Option<u64>,
    #[serde(default)]
    max_age_s: Option<u64>,
    #[serde(default)]
    when_full: Option<WhenFull>,
    #[serde(default)]
    database_max_mib: Option<u64>,
    #[serde(default)]
    batch_max_points: Option<u32>,
    #[serde(default)]
    batch_max_kib: Option<u64>,
    #[serde(default)]
    batch_max_delay_ms: Option<u64>,
    #[serde(default)]
    series: BTreeMap<String, SeriesSection>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SeriesSection {
    #[serde(default)]
    max_kib: Option<u64>,
    #[serde(default)]
    max_age_s: Option<u64>,
    #[serde(default)]
    when_full: Option<WhenFull>,
    #[serde(default)]
    batch_max_points: Option<u32>,
    #[serde(default)]
    batch_max_kib: Option<u64>,
    #[serde(default)]
    batch_max_delay_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AppSection {
    name: String,
    component: PathBuf,
    model: PathBuf,
    #[serde(default)]
    device: Option<String>,
    #[serde(default = "default_tick_interval_ms")]
    tick_interval_ms: u64,
    #[serde(default = "default_call_timeout_ms")]
    call_timeout_ms: u64,
    #[serde(default = "default_memory_limit_mib")]
    memory_limit_mib: u64,
    #[serde(default = "default_storage_quota_kib")]
    storage_quota_kib: u64,
    #[serde(default)]
    config: BTreeMap<String, toml::Value>,
    #[serde(default)]
    restart: RestartPolicy,
    /// Models the app may `register` devices with, by name.
    #[serde(default)]
    models: BTreeMap<String, PathBuf>,
    #[serde(default = "default_max_devices")]
    max_devices: usize,
}

fn default_max_devices() -> usize {
    DEFAULT_MAX_DEVICES
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
fn default_tick_interval_ms() -> u64 {
    1000
}
fn default_call_timeout_ms() -> u64 {
    1000
}
fn default_memory_limit_mib() -> u64 {
    64
}
fn default_storage_quota_kib() -> u64 {
    10 * 1024
}

/// What happens when an app crashes (traps, overruns its call deadline, hits
/// its memory limit, or fails `init`).
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct RestartPolicy {
    /// Wait before the first restart; doubled after each crash.
    pub backoff_initial_ms: u64,
    /// The longest wait between restarts.
    pub backoff_max_ms: u64,
    /// This many crashes within `window_s` quarantines the app.
    pub max_crashes: u32,
    pub window_s: u64,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            backoff_initial_ms: 500,
            backoff_max_ms: 60_000,
            max_crashes: 5,
            window_s: 300,
        }
    }
}

/// A gateway's configuration, checked and with paths resolved.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was read from.
    pub path: PathBuf,
    pub gateway_id: String,
    pub data_dir: PathBuf,
    pub outbox: OutboxConfig,
    pub deploy: DeployConfig,
    /// Where the Prometheus endpoint listens (loopback only), if at all.
    pub metrics: Option<std::net::SocketAddr>,
    pub content: ContentConfig,
    /// The cloud link; `None` runs offline (everything stays in the outbox).
    pub cloud: Option<CloudConfig>,
    pub apps: Vec<AppConfig>,
}

/// What happens when the outbox is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WhenFull {
    /// Make room by deleting the oldest telemetry (alerts last).
    DropOldest,
    /// Refuse new points with a `limit` error to the guest.
    RejectNewest,
}

/// How a series' points are grouped into messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batching {
    pub max_points: u32,
    pub max_bytes: u64,
    /// Hold a batch this long for more points (0: send at once).
    pub max_delay: Duration,
}

/// Limits and batching of one series (or the gateway's defaults).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeriesConfig {
    /// Bytes of this series' stream (per device) in the outbox.
    pub max_bytes: Option<u64>,
    /// Points older than this are deleted unsent.
    pub max_age: Option<Duration>,
    pub when_full: WhenFull,
    pub batching: Batching,
}

/// `[outbox]`: durability, bounds and batching of what waits for the cloud.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxConfig {
    /// How long recorded points may wait in memory before they are committed.
    pub flush_interval: Duration,
    /// Make every `record` call durable before it returns.
    pub sync_record: bool,
    /// Bytes of telemetry and alerts the outbox may hold in all.
    pub max_bytes: u64,
    /// A cap on the database file (SQLite's max_page_count).
    pub database_max_bytes: Option<u64>,
    /// For series without their own section.
    pub defaults: SeriesConfig,
    pub series: BTreeMap<String, SeriesConfig>,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        OutboxConfig {
            flush_interval: Duration::from_millis(50),
            sync_record: false,
            max_bytes: 256 << 20,
            database_max_bytes: None,
            defaults: SeriesConfig {
                max_bytes: None,
                max_age: Some(Duration::from_secs(7 * 24 * 3600)),
                when_full: WhenFull::DropOldest,
                batching: Batching {
                    max_points: 1000,
                    max_bytes: 256 << 10,
                    max_delay: Duration::ZERO,
                },
            },
            series: BTreeMap::new(),
        }
    }
}

impl OutboxConfig {
    /// The settings of `series`.
    pub fn series(&self, series: &str) -> &SeriesConfig {
        self.series.get(series).unwrap_or(&self.defaults)
    }
}

/// Check `[outbox]`; errors are (key, message).
fn outbox_config(section: OutboxSection) -> Result<OutboxConfig, (String, String)> {
    let mut config = OutboxConfig::default();
    let key = |k: &str| format!("outbox.{k}");
    if let Some(ms) = section.flush_interval_ms {
        if !(1..=1000).contains(&ms) {
            return Err((
                key("flush_interval_ms"),
                format!("{ms} is not between 1 and 1000"),
            ));
        }
        config.flush_interval = Duration::from_millis(ms);
    }
    config.sync_record = section.sync_record;
    if let Some(kib) = section.max_kib {
        if kib == 0 {
            return Err((key("max_kib"), "must be positive".into()));
        }
        config.max_bytes = kib << 10;
    }
    if let Some(mib) = section.database_max_mib {
        if mib == 0 {
            return Err((
                key("database_max_mib"),
                "must be positive (leave it out for no cap)".into(),
            ));
        }
        config.database_max_bytes = Some(mib << 20);
    }
    let defaults = SeriesSection {
        max_kib: None,
        max_age_s: section.max_age_s,
        when_full: section.when_full,
        batch_max_points: section.batch_max_points,
        batch_max_kib: section.batch_max_kib,
        batch_max_delay_ms: section.batch_max_delay_ms,
    };
    config.defaults = series_config(&defaults, &config.defaults).map_err(|(k, m)| (key(&k), m))?;
    for (name, series) in &section.series {
        check_name(name).map_err(|m| (key(&format!("series.{name}")), m))?;
        let resolved = series_config(series, &config.defaults)
            .map_err(|(k, m)| (key(&format!("series.{name}.{k}")), m))?;
        config.series.insert(name.clone(), resolved);
    }
    Ok(config)
}

/// A series section over the defaults it inherits.
fn series_config(s: &SeriesSection, base: &SeriesConfig) -> Result<SeriesConfig, (String, String)> {
    let mut out = base.clone();
    if let Some(kib) = s.max_kib {
        if kib == 0 {
            return Err(("max_kib".into(), "must be positive".into()));
        }
        out.max_bytes = Some(kib << 10);
    }
    if let Some(secs) = s.max_age_s {
        // 0 keeps points until they are sent.
        out.max_age = (secs > 0).then(|| Duration::from_secs(secs));
    }
    if let Some(w) = s.when_full {
        out.when_full = w;
    }
    if let Some(n) = s.batch_max_points {
        if n == 0 {
            return Err(("batch_max_points".into(), "must be positive".into()));
        }
        out.batching.max_points = n;
    }
    if let Some(kib) = s.batch_max_kib {
        if !(1..=(MAX_BATCH_KIB)).contains(&kib) {
            return Err((
                "batch_max_kib".into(),
                format!("{kib} is not between 1 and {MAX_BATCH_KIB}"),
            ));
        }
        out.batching.max_bytes = kib << 10;
    }
    if let Some(ms) = s.batch_max_delay_ms {
        if ms > 3_600_000 {
            return Err((
                "batch_max_delay_ms".into(),
                format!("{ms} is more than an hour"),
            ));
        }
        out.batching.max_delay = Duration::from_millis(ms);
    }
    Ok(out)
}

/// The largest batch, in KiB: well under the link's packet limit.
pub const MAX_BATCH_KIB: u64 = 4096;

/// The cloud link, as gateway.toml's `[cloud]` gives it.
#[derive(Debug, Clone)]
pub struct CloudConfig {
    pub broker: BrokerSettings,
    /// Run an in-process broker listening here, and connect to it.
    pub embedded: Option<std::net::SocketAddr>,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// Publishes awaiting the broker's acknowledgement at once.
    pub max_inflight: u16,
    /// How often the retained status is refreshed (it is also sent on every change).
    pub status_interval: Duration,
}

impl CloudConfig {
    /// The embedded broker on 127.0.0.1:18830 with default settings (`wasmgate dev`).
    pub fn embedded(gateway_id: &str) -> CloudConfig {
        let section = CloudSection {
            url: None,
            embedded: true,
            embedded_listen: default_embedded_listen(),
            client_id: None,
            username: None,
            password: None,
            ca_file: None,
            cert_file: None,
            key_file: None,
            keep_alive_s: default_keep_alive_s(),
            backoff_initial_ms: default_backoff_initial_ms(),
            backoff_max_ms: default_backoff_max_ms(),
            max_inflight: default_max_inflight(),
            status_interval_s: default_status_interval_s(),
        };
        // The defaults are valid by construction.
        cloud_config(section, gateway_id, &|p: &Path| p.to_path_buf())
            .unwrap_or_else(|(k, m)| unreachable!("{k}: {m}"))
    }
}

/// How to reach and log in to an MQTT broker (the gateway's link and the
/// operator's `wasmgate cloud` commands share this).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerSettings {
    pub host: String,
    pub port: u16,
    pub tls: bool,
    pub client_id: String,
    pub username: Option<String>,
    pub password: Option<String>,
    /// PEM CA certificates to trust (required for `mqtts://`).
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate and key, for mutual TLS.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub keep_alive: Duration,
}

impl BrokerSettings {
    /// Settings from a `mqtt://host[:port]` or `mqtts://host[:port]` URL.
    pub fn from_url(url: &str, client_id: &str) -> Result<BrokerSettings, String> {
        let (tls, rest) = if let Some(rest) = url.strip_prefix("mqtts://") {
            (true, rest)
        } else if let Some(rest) = url.strip_prefix("mqtt://") {
            (false, rest)
        } else {
            return Err(format!("{url:?} is not an mqtt:// or mqtts:// URL"));
        };
        let rest = rest.trim_end_matches('/');
        let (host, port) = match rest.rsplit_once(':') {
            Some((host, port)) => (
                host,
                port.parse::<u16>()
                    .map_err(|_| format!("{url:?}: {port:?} is not a port number"))?,
            ),
            None => (rest, if tls { 8883 } else { 1883 }),
        };
        if host.is_empty() || host.contains('/') {
            return Err(format!("{url:?}: no host name"));
        }
        Ok(BrokerSettings {
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
            port,
            tls,
            client_id: client_id.to_string(),
            username: None,
            password: None,
            ca_file: None,
            cert_file: None,
            key_file: None,
            keep_alive: Duration::from_secs(30),
        })
    }

    /// Check the TLS settings hang together.
    pub fn check(&self) -> Result<(), String> {
        if self.cert_file.is_some() != self.key_file.is_some() {
            return Err("cert_file and key_file go together (mutual TLS needs both)".into());
        }
        if !self.tls && (self.ca_file.is_some() || self.cert_file.is_some()) {
            return Err("ca_file, cert_file and key_file need an mqtts:// url".into());
        }
        if self.tls && self.ca_file.is_none() {
            return Err("an mqtts:// url needs ca_file: the CA certificates to trust".into());
        }
        if self.password.is_some() && self.username.is_none() {
            return Err("a password needs a username".into());
        }
        Ok(())
    }
}

/// One app as the gateway runs it.
#[derive(Debug, Clone)]
pub struct AppConfig {
    pub name: String,
    pub component: PathBuf,
    pub model: PathBuf,
    /// The device the app speaks for by default.
    pub device: String,
    pub tick_interval: Duration,
    pub call_timeout: Duration,
    pub memory_limit_bytes: usize,
    pub storage_quota_bytes: u64,
    /// Key/values passed to the app's `init`.
    pub config: Vec<(String, String)>,
    pub restart: RestartPolicy,
    /// Models the app may `register` devices with: name and file.
    pub device_models: Vec<(String, PathBuf)>,
    /// How many devices the app may register.
    pub max_devices: usize,
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

        check_name(&file.gateway.id).map_err(|m| invalid("gateway.id".into(), m))?;
        let outbox =
            outbox_config(file.outbox.unwrap_or_default()).map_err(|(k, m)| invalid(k, m))?;
        let deploy =
            deploy_config(file.deploy.unwrap_or_default()).map_err(|(k, m)| invalid(k, m))?;
        let content =
            content_config(file.content.unwrap_or_default()).map_err(|(k, m)| invalid(k, m))?;
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

        let mut names = HashSet::new();
        let mut devices = HashSet::new();
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
            if device == file.gateway.id {
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
            apps.push(AppConfig {
                device_models,
                max_devices,
                component: resolve(&app.component),
                model: resolve(&app.model),
                device,
                tick_interval: Duration::from_millis(tick),
                call_timeout: Duration::from_millis(timeout),
                memory_limit_bytes: usize::try_from(memory << 20).unwrap_or(usize::MAX),
                storage_quota_bytes: quota << 10,
                config,
                restart: app.restart,
                name: app.name,
            });
        }
        let cloud = match file.cloud {
            None => None,
            Some(cloud) => Some(
                cloud_config(cloud, &file.gateway.id, &resolve).map_err(|(k, m)| invalid(k, m))?,
            ),
        };
        Ok(Config {
            path: path.to_path_buf(),
            gateway_id: file.gateway.id,
            data_dir: resolve(&file.gateway.data_dir),
            outbox,
            deploy,
            metrics,
            content,
            cloud,
            apps,
        })
    }

    /// The SQLite database inside the data directory.
    pub fn database_path(&self) -> PathBuf {
        self.data_dir.join("wasmgate.db")
    }
}

/// Check `[cloud]`; errors are (key, message).
fn cloud_config(
    cloud: CloudSection,
    gateway_id: &str,
    resolve: &dyn Fn(&Path) -> PathBuf,
) -> Result<CloudConfig, (String, String)> {
    let key = |k: &str| format!("cloud.{k}");
    let client_id = cloud
        .client_id
        .clone()
        .unwrap_or_else(|| gateway_id.to_string());
    let (mut broker, embedded) = match (&cloud.url, cloud.embedded) {
        (Some(_), true) => {
            return Err((
                key("embedded"),
                "give either url or embedded = true, not both".into(),
            ));
        }
        (None, false) => {
            return Err((
                key("url"),
                "give the broker's url, or embedded = true for an in-process broker".into(),
            ));
        }
        (Some(url), false) => (
            BrokerSettings::from_url(url, &client_id).map_err(|m| (key("url"), m))?,
            None,
        ),
        (None, true) => {
            let addr: std::net::SocketAddr = cloud.embedded_listen.parse().map_err(|_| {
                (
                    key("embedded_listen"),
                    format!("{:?} is not an address:port", cloud.embedded_listen),
                )
            })?;
            let url = format!("mqtt://{}", addr);
            (
                BrokerSettings::from_url(&url, &client_id)
                    .map_err(|m| (key("embedded_listen"), m))?,
                Some(addr),
            )
        }
    };
    broker.username = cloud.username;
    broker.password = cloud.password;
    broker.ca_file = cloud.ca_file.as_deref().map(resolve);
    broker.cert_file = cloud.cert_file.as_deref().map(resolve);
    broker.key_file = cloud.key_file.as_deref().map(resolve);
    if !(5..=3600).contains(&cloud.keep_alive_s) {
        return Err((
            key("keep_alive_s"),
            format!("{} is not between 5 and 3600", cloud.keep_alive_s),
        ));
    }
    broker.keep_alive = Duration::from_secs(cloud.keep_alive_s);
    broker.check().map_err(|m| (key("url"), m))?;
    if cloud.backoff_initial_ms == 0 || cloud.backoff_max_ms < cloud.backoff_initial_ms {
        return Err((
            key("backoff_initial_ms"),
            "backoff_initial_ms must be positive and at most backoff_max_ms".into(),
        ));
    }
    if !(1..=1000).contains(&cloud.max_inflight) {
        return Err((
            key("max_inflight"),
            format!("{} is not between 1 and 1000", cloud.max_inflight),
        ));
    }
    if cloud.status_interval_s == 0 {
        return Err((key("status_interval_s"), "must be positive".into()));
    }
    Ok(CloudConfig {
        broker,
        embedded,
        backoff_initial: Duration::from_millis(cloud.backoff_initial_ms),
        backoff_max: Duration::from_millis(cloud.backoff_max_ms),
        max_inflight: cloud.max_inflight,
        status_interval: Duration::from_secs(cloud.status_interval_s),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("/etc/wg/gateway.toml"), text)
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

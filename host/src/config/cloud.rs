//! `[cloud]`: the broker the gateway links to (or the embedded one), how
//! it logs in, and how it reconnects.

use serde::Deserialize;

use super::KeyError;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CloudSection {
    #[serde(default)]
    pub(super) url: Option<String>,
    #[serde(default)]
    pub(super) embedded: bool,
    #[serde(default = "default_embedded_listen")]
    pub(super) embedded_listen: String,
    #[serde(default)]
    pub(super) client_id: Option<String>,
    #[serde(default)]
    pub(super) username: Option<String>,
    #[serde(default)]
    pub(super) password: Option<String>,
    #[serde(default)]
    pub(super) ca_file: Option<PathBuf>,
    #[serde(default)]
    pub(super) cert_file: Option<PathBuf>,
    #[serde(default)]
    pub(super) key_file: Option<PathBuf>,
    #[serde(default = "default_keep_alive_s")]
    pub(super) keep_alive_s: u64,
    #[serde(default = "default_backoff_initial_ms")]
    pub(super) backoff_initial_ms: u64,
    #[serde(default = "default_backoff_max_ms")]
    pub(super) backoff_max_ms: u64,
    #[serde(default = "default_max_inflight")]
    pub(super) max_inflight: u16,
    #[serde(default = "default_status_interval_s")]
    pub(super) status_interval_s: u64,
}

/// Not MQTT's 1883: a system Mosquitto (installed for the tests, say) often
/// holds that one, and the demo must not collide with it.
pub(super) fn default_embedded_listen() -> String {
    "127.0.0.1:18830".into()
}
pub(super) fn default_keep_alive_s() -> u64 {
    30
}
pub(super) fn default_backoff_initial_ms() -> u64 {
    500
}
pub(super) fn default_backoff_max_ms() -> u64 {
    30_000
}
pub(super) fn default_max_inflight() -> u16 {
    32
}
pub(super) fn default_status_interval_s() -> u64 {
    60
}

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
            .unwrap_or_else(|e| unreachable!("{e}"))
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

/// Check `[cloud]`; errors name the key.
pub(super) fn cloud_config(
    cloud: CloudSection,
    gateway_id: &str,
    resolve: &dyn Fn(&Path) -> PathBuf,
) -> Result<CloudConfig, KeyError> {
    let key = |k: &str| format!("cloud.{k}");
    let client_id = cloud
        .client_id
        .clone()
        .unwrap_or_else(|| gateway_id.to_string());
    let (mut broker, embedded) = match (&cloud.url, cloud.embedded) {
        (Some(_), true) => {
            return Err(KeyError::new(
                key("embedded"),
                "give either url or embedded = true, not both",
            ));
        }
        (None, false) => {
            return Err(KeyError::new(
                key("url"),
                "give the broker's url, or embedded = true for an in-process broker",
            ));
        }
        (Some(url), false) => (
            BrokerSettings::from_url(url, &client_id).map_err(|m| KeyError::new(key("url"), m))?,
            None,
        ),
        (None, true) => {
            let addr: std::net::SocketAddr = cloud.embedded_listen.parse().map_err(|_| {
                KeyError::new(
                    key("embedded_listen"),
                    format!("{:?} is not an address:port", cloud.embedded_listen),
                )
            })?;
            let url = format!("mqtt://{}", addr);
            (
                BrokerSettings::from_url(&url, &client_id)
                    .map_err(|m| KeyError::new(key("embedded_listen"), m))?,
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
        return Err(KeyError::new(
            key("keep_alive_s"),
            format!("{} is not between 5 and 3600", cloud.keep_alive_s),
        ));
    }
    broker.keep_alive = Duration::from_secs(cloud.keep_alive_s);
    broker.check().map_err(|m| KeyError::new(key("url"), m))?;
    if cloud.backoff_initial_ms == 0 || cloud.backoff_max_ms < cloud.backoff_initial_ms {
        return Err(KeyError::new(
            key("backoff_initial_ms"),
            "backoff_initial_ms must be positive and at most backoff_max_ms",
        ));
    }
    if !(1..=1000).contains(&cloud.max_inflight) {
        return Err(KeyError::new(
            key("max_inflight"),
            format!("{} is not between 1 and 1000", cloud.max_inflight),
        ));
    }
    if cloud.status_interval_s == 0 {
        return Err(KeyError::new(key("status_interval_s"), "must be positive"));
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

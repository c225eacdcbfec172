//! `[cloud]`: the broker the gateway links to (or the embedded one), how
//! it logs in, and how it reconnects.

use secrecy::SecretString;
use serde::Deserialize;

use super::KeyError;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CloudSection {
    #[serde(default)]
    pub(super) url: Option<String>,
    /// Several brokers (the nodes of a cluster): the gateway moves to the
    /// next when the one it is on fails.
    #[serde(default)]
    pub(super) urls: Option<Vec<String>>,
    #[serde(default)]
    pub(super) embedded: bool,
    #[serde(default = "default_embedded_listen")]
    pub(super) embedded_listen: String,
    #[serde(default)]
    pub(super) client_id: Option<String>,
    #[serde(default)]
    pub(super) username: Option<String>,
    /// Inline; then gateway.toml itself must be the gateway user's alone.
    #[serde(default)]
    pub(super) password: Option<String>,
    /// A file holding the password (owner-only, trailing newline ignored).
    #[serde(default)]
    pub(super) password_file: Option<PathBuf>,
    /// The name of an environment variable holding the password.
    #[serde(default)]
    pub(super) password_env: Option<String>,
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
    #[serde(default = "default_answer_timeout_s")]
    pub(super) answer_timeout_s: u64,
    /// `wg/v1` (the default) or `sparkplug`.
    #[serde(default)]
    pub(super) profile: Option<String>,
    /// `"3.1.1"` (the default) or `"5"`, for the `wg/v1` profile.
    #[serde(default)]
    pub(super) mqtt_version: Option<String>,
    /// MQTT 5: how long the broker keeps the gateway's session (its
    /// subscriptions and the messages queued for it) after a disconnect.
    #[serde(default = "default_session_expiry_s")]
    pub(super) session_expiry_s: u64,
    /// `[cloud.sparkplug]`: the edge node's ids, for `profile = "sparkplug"`.
    #[serde(default)]
    pub(super) sparkplug: Option<SparkplugSection>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SparkplugSection {
    pub(super) group_id: String,
    /// The gateway id unless given.
    #[serde(default)]
    pub(super) edge_node_id: Option<String>,
    /// A primary host application's id: the node publishes only while that
    /// host's STATE says it is online.
    #[serde(default)]
    pub(super) primary_host: Option<String>,
}

/// The MQTT version of the `wg/v1` link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MqttVersion {
    V311,
    V5,
}

/// What the gateway speaks to the cloud.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Profile {
    /// The project's own protocol (`docs/protocol.md`).
    WgV1,
    /// A Sparkplug B 3.0 edge node (`docs/sparkplug.md`).
    Sparkplug(SparkplugIds),
}

/// The edge node's place in the Sparkplug namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SparkplugIds {
    pub group_id: String,
    pub edge_node_id: String,
    pub primary_host: Option<String>,
}

/// The most brokers `[cloud] urls` may list.
pub const MAX_BROKERS: usize = 16;

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
pub(super) fn default_answer_timeout_s() -> u64 {
    30
}
/// A week: a gateway off the network over a long weekend still finds the
/// desired changes and action requests sent meanwhile.
pub(super) fn default_session_expiry_s() -> u64 {
    7 * 24 * 3600
}

/// The cloud link, as gateway.toml's `[cloud]` gives it.
#[derive(Debug, Clone)]
pub struct CloudConfig {
    pub broker: BrokerSettings,
    /// `urls` past the first: where the gateway moves when its broker fails,
    /// in order, then back to `broker`.
    pub failover: Vec<BrokerSettings>,
    /// Run an in-process broker listening here, and connect to it.
    pub embedded: Option<std::net::SocketAddr>,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// Publishes awaiting the broker's acknowledgement at once.
    pub max_inflight: u16,
    /// How often the retained status is refreshed (it is also sent on every change).
    pub status_interval: Duration,
    /// How long an action or desired change waits for its app (its queue,
    /// restarts and the call) before the cloud is told it timed out. A
    /// request not begun by then is never run.
    pub answer_timeout: Duration,
    /// The password is written in gateway.toml itself, which must then be
    /// the gateway user's alone.
    pub password_inline: bool,
    pub profile: Profile,
    pub mqtt_version: MqttVersion,
    /// MQTT 5: how long the broker keeps the session after a disconnect.
    pub session_expiry: Duration,
}

impl CloudConfig {
    /// The embedded broker on 127.0.0.1:18830 with default settings (`wasmgate dev`).
    pub fn embedded(gateway_id: &str) -> CloudConfig {
        let section = CloudSection {
            url: None,
            urls: None,
            embedded: true,
            embedded_listen: default_embedded_listen(),
            client_id: None,
            username: None,
            password: None,
            password_file: None,
            password_env: None,
            ca_file: None,
            cert_file: None,
            key_file: None,
            keep_alive_s: default_keep_alive_s(),
            backoff_initial_ms: default_backoff_initial_ms(),
            backoff_max_ms: default_backoff_max_ms(),
            max_inflight: default_max_inflight(),
            status_interval_s: default_status_interval_s(),
            answer_timeout_s: default_answer_timeout_s(),
            profile: None,
            sparkplug: None,
            mqtt_version: None,
            session_expiry_s: default_session_expiry_s(),
        };
        // The defaults are valid by construction.
        cloud_config(section, gateway_id, &|p: &Path| p.to_path_buf())
            .unwrap_or_else(|e| unreachable!("{e}"))
    }
}

/// How to reach and log in to an MQTT broker (the gateway's link and the
/// operator's `wasmgate cloud` commands share this).
#[derive(Debug, Clone)]
pub struct BrokerSettings {
    pub host: String,
    pub port: u16,
    pub tls: bool,
    pub client_id: String,
    pub username: Option<String>,
    /// Redacted in every `Debug` and never logged; read only where the
    /// CONNECT packet is made.
    pub password: Option<SecretString>,
    /// PEM CA certificates to trust (required for `mqtts://`).
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate and key, for mutual TLS.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub keep_alive: Duration,
}

impl BrokerSettings {
    /// Settings from a `mqtt://host[:port]` or `mqtts://host[:port]` URL,
    /// read by the `url` crate (the parser rumqttc's own `parse_url` uses).
    /// Nothing but the broker's address may be in it: rumqttc would take
    /// options from a query and credentials from the user part, which
    /// belong in their own settings here.
    pub fn from_url(text: &str, client_id: &str) -> Result<BrokerSettings, String> {
        let url = url::Url::parse(text).map_err(|e| match e {
            url::ParseError::InvalidPort => {
                let port = text.rsplit_once(':').map_or("", |(_, p)| p);
                format!(
                    "{text:?}: {:?} is not a port number",
                    port.trim_end_matches('/')
                )
            }
            url::ParseError::EmptyHost => format!("{text:?}: no host name"),
            url::ParseError::RelativeUrlWithoutBase => {
                format!("{text:?} is not an mqtt:// or mqtts:// URL")
            }
            e => format!("{text:?}: {e}"),
        })?;
        let tls = match url.scheme() {
            "mqtts" => true,
            "mqtt" => false,
            _ => return Err(format!("{text:?} is not an mqtt:// or mqtts:// URL")),
        };
        let only_the_address = "give the broker as mqtt://host[:port] or mqtts://host[:port]";
        if url.query().is_some() {
            return Err(format!(
                "{text:?}: a query string (?...) is not supported; {only_the_address}"
            ));
        }
        if url.fragment().is_some() {
            return Err(format!(
                "{text:?}: a fragment (#...) is not supported; {only_the_address}"
            ));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(format!(
                "{text:?}: a user name or password in the URL is not supported; give them as the username and password settings"
            ));
        }
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| format!("{text:?}: no host name"))?;
        if !url.path().bytes().all(|b| b == b'/') {
            return Err(format!(
                "{text:?}: a path is not supported; {only_the_address}"
            ));
        }
        // The URL standard reads `host:` as no port; here it is a typo.
        if url.port().is_none() && text.trim_end_matches('/').ends_with(':') {
            return Err(format!("{text:?}: \"\" is not a port number"));
        }
        let port = url.port().unwrap_or(if tls { 8883 } else { 1883 });
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

    /// `mqtt://host:port` or `mqtts://host:port`: which broker, for the log
    /// and the status.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "mqtts" } else { "mqtt" };
        format!("{scheme}://{}:{}", self.host, self.port)
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
    let mut failover: Vec<BrokerSettings> = Vec::new();
    let url = match (&cloud.url, &cloud.urls) {
        (Some(_), Some(_)) => {
            return Err(KeyError::new(
                key("urls"),
                "give either url or urls, not both",
            ));
        }
        (None, Some(urls)) => {
            if urls.is_empty() || urls.len() > MAX_BROKERS {
                return Err(KeyError::new(
                    key("urls"),
                    format!("list 1 to {MAX_BROKERS} brokers"),
                ));
            }
            for (i, url) in urls.iter().enumerate().skip(1) {
                failover.push(
                    BrokerSettings::from_url(url, &client_id)
                        .map_err(|m| KeyError::new(format!("cloud.urls[{i}]"), m))?,
                );
            }
            Some(urls[0].clone())
        }
        (url, None) => url.clone(),
    };
    if !failover.is_empty() && cloud.embedded {
        return Err(KeyError::new(
            key("embedded"),
            "give either urls or embedded = true, not both",
        ));
    }
    let (mut broker, embedded) = match (&url, cloud.embedded) {
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
    let password_inline = cloud.password.is_some();
    Login {
        username: cloud.username,
        password: cloud.password,
        password_file: cloud.password_file,
        password_env: cloud.password_env,
        ca_file: cloud.ca_file,
        cert_file: cloud.cert_file,
        key_file: cloud.key_file,
        keep_alive_s: cloud.keep_alive_s,
    }
    .apply("cloud", &mut broker, resolve)?;
    // The other brokers log in as the first does.
    for other in &mut failover {
        let (tls, host, port) = (other.tls, other.host.clone(), other.port);
        *other = broker.clone();
        other.tls = tls;
        other.host = host;
        other.port = port;
        if other.tls != broker.tls {
            return Err(KeyError::new(
                key("urls"),
                "list brokers of one kind: all mqtt:// or all mqtts://",
            ));
        }
    }
    check_backoff("cloud", cloud.backoff_initial_ms, cloud.backoff_max_ms)?;
    if !(1..=1000).contains(&cloud.max_inflight) {
        return Err(KeyError::new(
            key("max_inflight"),
            format!("{} is not between 1 and 1000", cloud.max_inflight),
        ));
    }
    if cloud.status_interval_s == 0 {
        return Err(KeyError::new(key("status_interval_s"), "must be positive"));
    }
    if !(1..=3600).contains(&cloud.answer_timeout_s) {
        return Err(KeyError::new(
            key("answer_timeout_s"),
            format!("{} is not between 1 and 3600", cloud.answer_timeout_s),
        ));
    }
    let profile = profile(cloud.profile.as_deref(), cloud.sparkplug, gateway_id)?;
    let mqtt_version = match cloud.mqtt_version.as_deref() {
        None | Some("3.1.1") => MqttVersion::V311,
        Some("5") => MqttVersion::V5,
        Some(other) => {
            return Err(KeyError::new(
                key("mqtt_version"),
                format!("{other:?} is not an MQTT version: give \"3.1.1\" or \"5\""),
            ));
        }
    };
    if mqtt_version == MqttVersion::V5 && matches!(profile, Profile::Sparkplug(_)) {
        return Err(KeyError::new(
            key("mqtt_version"),
            "Sparkplug B 3.0 runs on MQTT 3.1.1 here: remove mqtt_version, or use profile = \"wg/v1\"",
        ));
    }
    if mqtt_version == MqttVersion::V5 && embedded.is_some() {
        return Err(KeyError::new(
            key("mqtt_version"),
            "the embedded broker speaks MQTT 3.1.1: remove mqtt_version, or give the url of a broker that speaks 5",
        ));
    }
    if !(1..=u64::from(u32::MAX)).contains(&cloud.session_expiry_s) {
        return Err(KeyError::new(
            key("session_expiry_s"),
            format!(
                "{} is not between 1 and {}",
                cloud.session_expiry_s,
                u32::MAX
            ),
        ));
    }
    Ok(CloudConfig {
        profile,
        mqtt_version,
        session_expiry: Duration::from_secs(cloud.session_expiry_s),
        broker,
        failover,
        embedded,
        backoff_initial: Duration::from_millis(cloud.backoff_initial_ms),
        backoff_max: Duration::from_millis(cloud.backoff_max_ms),
        max_inflight: cloud.max_inflight,
        status_interval: Duration::from_secs(cloud.status_interval_s),
        answer_timeout: Duration::from_secs(cloud.answer_timeout_s),
        password_inline,
    })
}

/// `profile` and `[cloud.sparkplug]`. Sparkplug ids are topic levels:
/// nothing that MQTT gives a meaning (`/ + #`) may be in them.
fn profile(
    name: Option<&str>,
    section: Option<SparkplugSection>,
    gateway_id: &str,
) -> Result<Profile, KeyError> {
    match (name.unwrap_or("wg/v1"), section) {
        ("wg/v1", None) => Ok(Profile::WgV1),
        ("wg/v1", Some(_)) => Err(KeyError::new(
            "cloud.sparkplug",
            "is for profile = \"sparkplug\"; set that, or remove the section",
        )),
        ("sparkplug", None) => Err(KeyError::new(
            "cloud.sparkplug",
            "profile = \"sparkplug\" needs [cloud.sparkplug] with group_id",
        )),
        ("sparkplug", Some(s)) => {
            let edge_node_id = s.edge_node_id.unwrap_or_else(|| gateway_id.to_string());
            for (key, id) in [
                ("group_id", Some(&s.group_id)),
                ("edge_node_id", Some(&edge_node_id)),
                ("primary_host", s.primary_host.as_ref()),
            ] {
                if let Some(id) = id {
                    check_sparkplug_id(id)
                        .map_err(|m| KeyError::new(format!("cloud.sparkplug.{key}"), m))?;
                }
            }
            Ok(Profile::Sparkplug(SparkplugIds {
                group_id: s.group_id,
                edge_node_id,
                primary_host: s.primary_host,
            }))
        }
        (other, _) => Err(KeyError::new(
            "cloud.profile",
            format!("{other:?} is not a profile: give \"wg/v1\" or \"sparkplug\""),
        )),
    }
}

/// A Sparkplug id: a plain topic level (the specification forbids `/`,
/// `+` and `#`; wasmgate also keeps them printable and short).
fn check_sparkplug_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_graphic() && !matches!(c, '/' | '+' | '#'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{id:?} is not a Sparkplug id (1 to 64 printable characters, no / + #)"
        ))
    }
}

/// How a section (`[cloud]`, `[bus]`) logs in to its broker: the keys
/// besides the URL that both share.
pub(super) struct Login {
    pub(super) username: Option<String>,
    pub(super) password: Option<String>,
    pub(super) password_file: Option<PathBuf>,
    pub(super) password_env: Option<String>,
    pub(super) ca_file: Option<PathBuf>,
    pub(super) cert_file: Option<PathBuf>,
    pub(super) key_file: Option<PathBuf>,
    pub(super) keep_alive_s: u64,
}

impl Login {
    /// Check these and set them on `broker`; errors name `section.key`.
    pub(super) fn apply(
        self,
        section: &str,
        broker: &mut BrokerSettings,
        resolve: &dyn Fn(&Path) -> PathBuf,
    ) -> Result<(), KeyError> {
        let key = |k: &str| format!("{section}.{k}");
        broker.username = self.username;
        broker.password = password(
            section,
            self.password,
            self.password_file.as_deref().map(resolve).as_deref(),
            self.password_env.as_deref(),
        )?;
        broker.ca_file = self.ca_file.as_deref().map(resolve);
        broker.cert_file = self.cert_file.as_deref().map(resolve);
        broker.key_file = self.key_file.as_deref().map(resolve);
        if !(5..=3600).contains(&self.keep_alive_s) {
            return Err(KeyError::new(
                key("keep_alive_s"),
                format!("{} is not between 5 and 3600", self.keep_alive_s),
            ));
        }
        broker.keep_alive = Duration::from_secs(self.keep_alive_s);
        broker.check().map_err(|m| KeyError::new(key("url"), m))
    }
}

/// Reconnection backoff: positive, and the first wait at most the longest.
pub(super) fn check_backoff(section: &str, initial_ms: u64, max_ms: u64) -> Result<(), KeyError> {
    if initial_ms == 0 || max_ms < initial_ms {
        return Err(KeyError::new(
            format!("{section}.backoff_initial_ms"),
            "backoff_initial_ms must be positive and at most backoff_max_ms",
        ));
    }
    Ok(())
}

/// The broker password from the one place the section gives it: inline, a
/// file (which must be the gateway user's alone), or an environment
/// variable. Errors name the setting, the file or the variable, never the
/// value.
fn password(
    section: &str,
    inline: Option<String>,
    file: Option<&Path>,
    env: Option<&str>,
) -> Result<Option<SecretString>, KeyError> {
    let key = |k: &str| format!("{section}.{k}");
    let given = [inline.is_some(), file.is_some(), env.is_some()];
    if given.iter().filter(|g| **g).count() > 1 {
        return Err(KeyError::new(
            key("password"),
            "give the password one way: password, password_file or password_env",
        ));
    }
    if let Some(path) = file {
        crate::permissions::check_private(path, "the password file")
            .map_err(|m| KeyError::new(key("password_file"), m))?;
        let text = std::fs::read_to_string(path)
            .map_err(|e| KeyError::new(key("password_file"), format!("{}: {e}", path.display())))?;
        let text = text.strip_suffix('\n').unwrap_or(&text);
        let text = text.strip_suffix('\r').unwrap_or(text);
        if text.is_empty() {
            return Err(KeyError::new(
                key("password_file"),
                format!("{} is empty", path.display()),
            ));
        }
        return Ok(Some(SecretString::from(text)));
    }
    if let Some(name) = env {
        return match std::env::var(name) {
            Ok(value) if !value.is_empty() => Ok(Some(SecretString::from(value))),
            Ok(_) => Err(KeyError::new(
                key("password_env"),
                format!("the environment variable {name} is empty"),
            )),
            Err(_) => Err(KeyError::new(
                key("password_env"),
                format!("the environment variable {name} is not set"),
            )),
        };
    }
    Ok(inline.map(SecretString::from))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(url: &str) -> (String, u16, bool) {
        let b = BrokerSettings::from_url(url, "gw").expect(url);
        (b.host, b.port, b.tls)
    }

    /// The error for `url`, which must name the URL.
    fn error(url: &str) -> String {
        let e = BrokerSettings::from_url(url, "gw").unwrap_err();
        assert!(e.contains(&format!("{url:?}")), "{e}");
        e
    }

    #[test]
    fn default_ports() {
        assert_eq!(
            parsed("mqtt://broker.example"),
            ("broker.example".into(), 1883, false)
        );
        assert_eq!(
            parsed("mqtts://broker.example"),
            ("broker.example".into(), 8883, true)
        );
        assert_eq!(
            parsed("mqtts://broker.example/"),
            ("broker.example".into(), 8883, true)
        );
        assert_eq!(parsed("mqtt://[::1]"), ("::1".into(), 1883, false));
    }

    #[test]
    fn explicit_port() {
        assert_eq!(
            parsed("mqtt://broker.example:1884"),
            ("broker.example".into(), 1884, false)
        );
        // 1883 given for mqtts:// is taken, not replaced by the default.
        assert_eq!(
            parsed("mqtts://broker.example:1883"),
            ("broker.example".into(), 1883, true)
        );
        assert_eq!(
            parsed("mqtt://127.0.0.1:18830/"),
            ("127.0.0.1".into(), 18830, false)
        );
        assert_eq!(parsed("mqtts://[::1]:8884"), ("::1".into(), 8884, true));
    }

    #[test]
    fn the_client_id_is_kept_as_given() {
        for id in ["gw", "", "a b&c=d+e%20f/?#", "gateway-ü"] {
            let b = BrokerSettings::from_url("mqtt://broker.example", id).expect(id);
            assert_eq!(b.client_id, id);
        }
    }

    #[test]
    fn no_host() {
        for url in [
            "mqtt://",
            "mqtts://:8883",
            "mqtt:///",
            "mqtt:///broker",
            "mqtt:broker.example",
        ] {
            assert!(error(url).ends_with("no host name"), "{url}");
        }
    }

    #[test]
    fn bad_port() {
        assert_eq!(
            error("mqtt://broker.example:99999"),
            r#""mqtt://broker.example:99999": "99999" is not a port number"#
        );
        assert!(error("mqtts://broker.example:x").ends_with(r#""x" is not a port number"#));
        assert!(error("mqtt://broker.example:").ends_with(r#""" is not a port number"#));
        assert!(error("mqtt://[::1]:-1").ends_with(r#""-1" is not a port number"#));
    }

    #[test]
    fn bad_host() {
        let e = error("mqtt://bro ker:1883");
        assert!(e.contains("invalid domain character"), "{e}");
    }

    #[test]
    fn wrong_scheme() {
        // tcp://, ssl://, ws:// and wss:// are rumqttc's own; the gateway takes none.
        for url in [
            "ws://broker.example",
            "wss://broker.example",
            "tcp://broker.example:1883",
            "ssl://broker.example:8883",
            "http://broker.example",
            "broker.example:1883",
        ] {
            assert_eq!(
                error(url),
                format!("{url:?} is not an mqtt:// or mqtts:// URL")
            );
        }
    }

    #[test]
    fn query_strings_and_other_url_parts_are_refused() {
        for url in [
            "mqtt://broker.example?client_id=other",
            "mqtt://broker.example:1883?keep_alive_secs=5",
            "mqtts://broker.example/?inflight_num=1",
            "mqtt://broker.example?",
        ] {
            assert!(error(url).contains("a query string (?...) is not supported"));
        }
        assert!(error("mqtt://broker.example#x").contains("a fragment (#...) is not supported"));
        assert!(error("mqtt://broker.example/mqtt").contains("a path is not supported"));
        assert!(error("mqtt://user:pw@broker.example").contains("a user name or password"));
        assert!(error("mqtt://:pw@broker.example").contains("a user name or password"));
    }
}

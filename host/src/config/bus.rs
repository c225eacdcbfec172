//! `[bus]`: the local MQTT broker on the gateway's own network, where
//! devices and other local software publish (not the cloud link). Apps
//! reach it through the `bus` capability, on the topics they were granted.

use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::KeyError;
use super::cloud::{
    BrokerSettings, Login, check_backoff, default_backoff_initial_ms, default_backoff_max_ms,
    default_keep_alive_s,
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct BusSection {
    url: String,
    #[serde(default)]
    client_id: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    password_file: Option<PathBuf>,
    #[serde(default)]
    password_env: Option<String>,
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
    #[serde(default = "default_max_message_kib")]
    max_message_kib: u64,
}

fn default_max_message_kib() -> u64 {
    256
}

/// The local bus, as gateway.toml's `[bus]` gives it.
#[derive(Debug, Clone)]
pub struct BusConfig {
    pub broker: BrokerSettings,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// The largest message delivered to an app or published by one; larger
    /// ones are dropped and counted.
    pub max_message_bytes: usize,
    /// The password is written in gateway.toml itself.
    pub password_inline: bool,
}

/// Check `[bus]`; errors name the key.
pub(super) fn bus_config(
    bus: BusSection,
    gateway_id: &str,
    resolve: &dyn Fn(&Path) -> PathBuf,
) -> Result<BusConfig, KeyError> {
    // Its own client id: the cloud link may use the gateway's id on a
    // broker that is also this one.
    let client_id = bus.client_id.unwrap_or_else(|| format!("{gateway_id}-bus"));
    let mut broker =
        BrokerSettings::from_url(&bus.url, &client_id).map_err(|m| KeyError::new("bus.url", m))?;
    let password_inline = bus.password.is_some();
    Login {
        username: bus.username,
        password: bus.password,
        password_file: bus.password_file,
        password_env: bus.password_env,
        ca_file: bus.ca_file,
        cert_file: bus.cert_file,
        key_file: bus.key_file,
        keep_alive_s: bus.keep_alive_s,
    }
    .apply("bus", &mut broker, resolve)?;
    check_backoff("bus", bus.backoff_initial_ms, bus.backoff_max_ms)?;
    if !(1..=16 * 1024).contains(&bus.max_message_kib) {
        return Err(KeyError::new(
            "bus.max_message_kib",
            format!("{} is not between 1 and 16384", bus.max_message_kib),
        ));
    }
    Ok(BusConfig {
        broker,
        backoff_initial: Duration::from_millis(bus.backoff_initial_ms),
        backoff_max: Duration::from_millis(bus.backoff_max_ms),
        max_message_bytes: usize::try_from(bus.max_message_kib << 10).unwrap_or(usize::MAX),
        password_inline,
    })
}

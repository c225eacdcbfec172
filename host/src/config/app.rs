//! `[[app]]`: each app's component, model, device, limits, restart policy,
//! config and the models it may register devices with.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use super::*;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AppSection {
    pub(super) name: String,
    pub(super) component: PathBuf,
    pub(super) model: PathBuf,
    #[serde(default)]
    pub(super) device: Option<String>,
    #[serde(default = "default_tick_interval_ms")]
    pub(super) tick_interval_ms: u64,
    #[serde(default = "default_call_timeout_ms")]
    pub(super) call_timeout_ms: u64,
    #[serde(default = "default_memory_limit_mib")]
    pub(super) memory_limit_mib: u64,
    #[serde(default = "default_storage_quota_kib")]
    pub(super) storage_quota_kib: u64,
    #[serde(default = "default_disk_quota_mib")]
    pub(super) disk_quota_mib: u64,
    #[serde(default)]
    pub(super) config: BTreeMap<String, toml::Value>,
    #[serde(default)]
    pub(super) restart: RestartPolicy,
    /// Models the app may `register` devices with, by name.
    #[serde(default)]
    pub(super) models: BTreeMap<String, PathBuf>,
    #[serde(default = "default_max_devices")]
    pub(super) max_devices: usize,
    /// What the app may reach outside its sandbox, within `[allow]`.
    #[serde(default)]
    pub(super) grants: crate::grants::Grants,
    /// The most an export call may wait on device I/O, beyond its deadline.
    #[serde(default = "default_io_wait_ms")]
    pub(super) io_wait_ms: u64,
    /// Device requests (Modbus, ...) a second, with a burst of twice that.
    #[serde(default = "default_io_requests_per_s")]
    pub(super) io_requests_per_s: u32,
    /// Bus messages that may wait for the app's `on-message`.
    #[serde(default = "default_bus_queue")]
    pub(super) bus_queue: usize,
    /// The synced tables' limits (`docs/synced-tables.md`).
    #[serde(default = "default_synced_max_rows")]
    pub(super) synced_max_rows: u64,
    #[serde(default = "default_synced_max_kib")]
    pub(super) synced_max_kib: u64,
    #[serde(default = "default_synced_max_changes")]
    pub(super) synced_max_changes: u32,
}

pub(super) fn default_synced_max_rows() -> u64 {
    SyncedLimits::default().max_rows
}
pub(super) fn default_synced_max_kib() -> u64 {
    SyncedLimits::default().max_bytes >> 10
}
pub(super) fn default_synced_max_changes() -> u32 {
    SyncedLimits::default().max_changes
}

/// What an app's synced tables may hold, all its tables together, and what
/// one transaction may change. A write past one is refused with a `limit`
/// error; what is already committed stays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
pub struct SyncedLimits {
    /// Rows (not counting deleted ones).
    pub max_rows: u64,
    /// Bytes of the rows as stored: every column's value and version.
    pub max_bytes: u64,
    /// Writes in one call, which makes one changeset.
    pub max_changes: u32,
}

impl Default for SyncedLimits {
    fn default() -> Self {
        SyncedLimits {
            max_rows: 10_000,
            max_bytes: 4 << 20,
            max_changes: 1_000,
        }
    }
}

pub(super) fn default_bus_queue() -> usize {
    DEFAULT_BUS_QUEUE
}

/// Bus messages that may wait for an app by default; past that, they are
/// dropped for it and counted.
pub const DEFAULT_BUS_QUEUE: usize = 256;

pub(super) fn default_io_requests_per_s() -> u32 {
    DEFAULT_IO_REQUESTS_PER_S
}

/// An app's device requests a second by default.
pub const DEFAULT_IO_REQUESTS_PER_S: u32 = 200;

pub(super) fn default_io_wait_ms() -> u64 {
    DEFAULT_IO_WAIT.as_millis() as u64
}

/// What an export call may wait on devices by default, beyond its deadline.
pub const DEFAULT_IO_WAIT: Duration = Duration::from_secs(10);

pub(super) fn default_max_devices() -> usize {
    DEFAULT_MAX_DEVICES
}

pub(super) fn default_tick_interval_ms() -> u64 {
    1000
}
pub(super) fn default_call_timeout_ms() -> u64 {
    1000
}
pub(super) fn default_memory_limit_mib() -> u64 {
    64
}
pub(super) fn default_storage_quota_kib() -> u64 {
    10 * 1024
}
pub(super) fn default_disk_quota_mib() -> u64 {
    DEFAULT_DISK_QUOTA_BYTES >> 20
}

/// What an app may keep on disk by default: its files and the uploads it
/// has waiting to be sent.
pub const DEFAULT_DISK_QUOTA_BYTES: u64 = 256 << 20;

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
    /// Bytes the app's directory and its waiting uploads may take together.
    pub disk_quota_bytes: u64,
    /// Key/values passed to the app's `init`.
    pub config: Vec<(String, String)>,
    pub restart: RestartPolicy,
    /// Models the app may `register` devices with: name and file.
    pub device_models: Vec<(String, PathBuf)>,
    /// How many devices the app may register.
    pub max_devices: usize,
    /// What it may reach outside its sandbox (devices, networks).
    pub grants: crate::grants::Grants,
    /// The most an export call may wait on device I/O, beyond its deadline.
    pub io_wait: Duration,
    /// Device requests a second (burst: twice that).
    pub io_requests_per_s: u32,
    /// Bus messages that may wait for the app's `on-message`.
    pub bus_queue: usize,
    /// What its synced tables may hold.
    pub synced: SyncedLimits,
}

impl AppConfig {
    /// What a call may wait on device I/O: nothing for an app granted no
    /// I/O, so its calls keep their plain wall-time bound.
    pub fn io_budget(&self) -> Duration {
        if self.grants.is_empty() {
            Duration::ZERO
        } else {
            self.io_wait
        }
    }
}

//! `[outbox]` and `[outbox.series.NAME]`: how much waits for the cloud,
//! for how long, what happens when it is full, and how points are batched.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;

use super::*;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct OutboxSection {
    #[serde(default)]
    pub(super) flush_interval_ms: Option<u64>,
    #[serde(default)]
    pub(super) sync_record: bool,
    #[serde(default)]
    pub(super) max_kib: Option<u64>,
    #[serde(default)]
    pub(super) max_age_s: Option<u64>,
    #[serde(default)]
    pub(super) when_full: Option<WhenFull>,
    #[serde(default)]
    pub(super) database_max_mib: Option<u64>,
    #[serde(default)]
    pub(super) batch_max_points: Option<u32>,
    #[serde(default)]
    pub(super) batch_max_kib: Option<u64>,
    #[serde(default)]
    pub(super) batch_max_delay_ms: Option<u64>,
    #[serde(default)]
    pub(super) series: BTreeMap<String, SeriesSection>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SeriesSection {
    #[serde(default)]
    pub(super) max_kib: Option<u64>,
    #[serde(default)]
    pub(super) max_age_s: Option<u64>,
    #[serde(default)]
    pub(super) when_full: Option<WhenFull>,
    #[serde(default)]
    pub(super) batch_max_points: Option<u32>,
    #[serde(default)]
    pub(super) batch_max_kib: Option<u64>,
    #[serde(default)]
    pub(super) batch_max_delay_ms: Option<u64>,
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

impl SeriesConfig {
    /// The byte limit the writer keeps a stream of this series under by
    /// dropping its oldest rows (`None` without one, or when a full stream
    /// refuses new points instead).
    pub fn drop_oldest_limit(&self) -> Option<u64> {
        self.max_bytes
            .filter(|_| self.when_full == WhenFull::DropOldest)
    }
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

    /// Every series' settings: each `[outbox.series.*]` and the defaults.
    pub fn all_series(&self) -> impl Iterator<Item = &SeriesConfig> {
        self.series.values().chain([&self.defaults])
    }
}

/// Check `[outbox]`; errors name the key.
pub(super) fn outbox_config(section: OutboxSection) -> Result<OutboxConfig, KeyError> {
    let mut config = OutboxConfig::default();
    let key = |k: &str| format!("outbox.{k}");
    if let Some(ms) = section.flush_interval_ms {
        if !(1..=1000).contains(&ms) {
            return Err(KeyError::new(
                key("flush_interval_ms"),
                format!("{ms} is not between 1 and 1000"),
            ));
        }
        config.flush_interval = Duration::from_millis(ms);
    }
    config.sync_record = section.sync_record;
    if let Some(kib) = section.max_kib {
        if kib == 0 {
            return Err(KeyError::new(key("max_kib"), "must be positive"));
        }
        config.max_bytes = kib << 10;
    }
    if let Some(mib) = section.database_max_mib {
        if mib == 0 {
            return Err(KeyError::new(
                key("database_max_mib"),
                "must be positive (leave it out for no cap)",
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
    config.defaults = series_config(&defaults, &config.defaults).map_err(|e| e.within(&key("")))?;
    for (name, series) in &section.series {
        check_name(name).map_err(|m| KeyError::new(key(&format!("series.{name}")), m))?;
        let resolved = series_config(series, &config.defaults)
            .map_err(|e| e.within(&key(&format!("series.{name}."))))?;
        config.series.insert(name.clone(), resolved);
    }
    Ok(config)
}

/// A series section over the defaults it inherits.
pub(super) fn series_config(
    s: &SeriesSection,
    base: &SeriesConfig,
) -> Result<SeriesConfig, KeyError> {
    let mut out = base.clone();
    if let Some(kib) = s.max_kib {
        if kib == 0 {
            return Err(KeyError::new("max_kib", "must be positive"));
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
            return Err(KeyError::new("batch_max_points", "must be positive"));
        }
        out.batching.max_points = n;
    }
    if let Some(kib) = s.batch_max_kib {
        if !(1..=(MAX_BATCH_KIB)).contains(&kib) {
            return Err(KeyError::new(
                "batch_max_kib",
                format!("{kib} is not between 1 and {MAX_BATCH_KIB}"),
            ));
        }
        out.batching.max_bytes = kib << 10;
    }
    if let Some(ms) = s.batch_max_delay_ms {
        if ms > 3_600_000 {
            return Err(KeyError::new(
                "batch_max_delay_ms",
                format!("{ms} is more than an hour"),
            ));
        }
        out.batching.max_delay = Duration::from_millis(ms);
    }
    Ok(out)
}

/// The largest batch, in KiB: well under the link's packet limit.
pub const MAX_BATCH_KIB: u64 = 4096;

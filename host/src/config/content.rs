//! `[content]`: limits and pace of large content transfers.

use serde::Deserialize;

use super::*;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ContentSection {
    pub(super) max_upload_mib: Option<u64>,
    pub(super) max_download_mib: Option<u64>,
    pub(super) upload_kib_per_s: Option<u64>,
    pub(super) chunk_kib: Option<u64>,
    pub(super) max_downloads: Option<u64>,
    pub(super) downloads_max_mib: Option<u64>,
    pub(super) download_idle_s: Option<u64>,
    pub(super) disk_reserve_mib: Option<u64>,
    pub(super) max_pending_uploads: Option<u64>,
    pub(super) pending_uploads_max_mib: Option<u64>,
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
    /// Downloads in progress at once, gateway-wide; a manifest past this is
    /// refused as busy.
    pub max_downloads: u64,
    /// Announced bytes of the downloads in progress, together.
    pub downloads_max_bytes: u64,
    /// A download that gets no chunk for this long fails, and its partial
    /// file is deleted.
    pub download_idle: std::time::Duration,
    /// Free space a new download must leave on the data directory's
    /// filesystem, for the outbox and the rest of the gateway.
    pub disk_reserve_bytes: u64,
    /// Uploads one app may have waiting to be sent.
    pub max_pending_uploads: u64,
    /// Bytes of the uploads one app may have waiting to be sent.
    pub pending_uploads_max_bytes: u64,
}

impl Default for ContentConfig {
    fn default() -> Self {
        ContentConfig {
            max_upload_bytes: 64 << 20,
            max_download_bytes: 64 << 20,
            upload_bytes_per_s: 0,
            chunk_bytes: DEFAULT_CHUNK_BYTES,
            max_downloads: 8,
            downloads_max_bytes: 256 << 20,
            download_idle: std::time::Duration::from_secs(600),
            disk_reserve_bytes: 64 << 20,
            max_pending_uploads: 16,
            pending_uploads_max_bytes: 256 << 20,
        }
    }
}

pub(super) fn content_config(section: ContentSection) -> Result<ContentConfig, KeyError> {
    let mut config = ContentConfig::default();
    let range = |key: &str, v: u64, min: u64, max: u64| {
        if (min..=max).contains(&v) {
            Ok(v)
        } else {
            Err(KeyError::new(
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
    if let Some(v) = section.max_downloads {
        config.max_downloads = range("max_downloads", v, 1, 256)?;
    }
    if let Some(v) = section.downloads_max_mib {
        config.downloads_max_bytes = range("downloads_max_mib", v, 1, 1 << 20)? << 20;
    }
    if let Some(v) = section.download_idle_s {
        config.download_idle =
            std::time::Duration::from_secs(range("download_idle_s", v, 1, 7 * 24 * 3600)?);
    }
    if let Some(v) = section.max_pending_uploads {
        config.max_pending_uploads = range("max_pending_uploads", v, 1, 10_000)?;
    }
    if let Some(v) = section.pending_uploads_max_mib {
        config.pending_uploads_max_bytes = range("pending_uploads_max_mib", v, 1, 1 << 20)? << 20;
    }
    if let Some(v) = section.disk_reserve_mib {
        config.disk_reserve_bytes = range("disk_reserve_mib", v, 0, 1 << 30)? << 20;
    }
    Ok(config)
}

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
    Ok(config)
}

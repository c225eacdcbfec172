//! `[deploy]`: probation, kept versions, and the keys cloud deployments
//! must be signed with.

use serde::Deserialize;

use super::KeyError;
use std::time::Duration;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DeploySection {
    #[serde(default)]
    pub(super) probation_s: Option<u64>,
    #[serde(default)]
    pub(super) keep_versions: Option<usize>,
    #[serde(default)]
    pub(super) trusted_keys: Vec<String>,
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

pub(super) fn deploy_config(section: DeploySection) -> Result<DeployConfig, KeyError> {
    let mut config = DeployConfig::default();
    if let Some(s) = section.probation_s {
        if s > 86_400 {
            return Err(KeyError::new(
                "deploy.probation_s",
                format!("{s} is more than a day"),
            ));
        }
        config.probation = Duration::from_secs(s);
    }
    if let Some(k) = section.keep_versions {
        if !(1..=100).contains(&k) {
            return Err(KeyError::new(
                "deploy.keep_versions",
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
                KeyError::new(
                    format!("deploy.trusted_keys[{i}]"),
                    "not a hex ed25519 public key (64 hex digits; `wasmgate keygen` makes one)"
                        .to_string(),
                )
            })?;
        config.trusted_keys.push(bytes);
    }
    Ok(config)
}

//! `[deploy]`: probation, kept versions, and the keys cloud deployments
//! must be signed with (each with its id and an optional expiry), and how
//! many of them must sign (`threshold`).

use serde::Deserialize;
use sha2::{Digest as _, Sha256};

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
    pub(super) trusted_keys: Vec<KeyEntry>,
    #[serde(default)]
    pub(super) threshold: Option<usize>,
}

/// A trusted key as gateway.toml writes it: its public key alone, or with
/// an expiry (RFC 3339, `"2027-06-30T00:00:00Z"`).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum KeyEntry {
    Public(String),
    Expiring { public: String, expires: String },
}

/// A key whose signatures cloud deployments may carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedKey {
    /// [`key_id`] of its public key: what a signature names it by.
    pub id: String,
    /// The ed25519 public key.
    pub public: [u8; 32],
    /// Unix seconds after which its signatures no longer count.
    pub expires: Option<u64>,
}

/// A key's id: the first 16 hex digits of the sha256 of its public key
/// (as TUF derives key ids), so the gateway and the signer agree on it
/// without naming it anywhere.
pub fn key_id(public: &[u8; 32]) -> String {
    hex::encode(&Sha256::digest(public)[..8])
}

/// Unix seconds of an RFC 3339 time.
pub fn parse_time(text: &str) -> Result<u64, String> {
    let time = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map_err(|e| format!("{text:?} is not an RFC 3339 time (2027-06-30T00:00:00Z): {e}"))?;
    u64::try_from(time.unix_timestamp()).map_err(|_| format!("{text:?} is before 1970"))
}

/// `[deploy]`: how new versions are taken in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeployConfig {
    /// A new version that crashes within this is rolled back.
    pub probation: Duration,
    /// Earlier versions kept for rollback.
    pub keep_versions: usize,
    /// The keys whose signatures cloud deployments need.
    pub trusted_keys: Vec<TrustedKey>,
    /// How many distinct trusted keys must sign a deployment.
    pub threshold: usize,
}

impl Default for DeployConfig {
    fn default() -> Self {
        DeployConfig {
            probation: Duration::from_secs(30),
            keep_versions: 3,
            trusted_keys: Vec::new(),
            threshold: 1,
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
    for (i, entry) in section.trusted_keys.iter().enumerate() {
        let field = format!("deploy.trusted_keys[{i}]");
        let (public, expires) = match entry {
            KeyEntry::Public(public) => (public, None),
            KeyEntry::Expiring { public, expires } => (
                public,
                Some(
                    parse_time(expires)
                        .map_err(|m| KeyError::new(format!("{field}.expires"), m))?,
                ),
            ),
        };
        let public = hex::decode(public.trim())
            .ok()
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .ok_or_else(|| {
                KeyError::new(
                    field.clone(),
                    "not a hex ed25519 public key (64 hex digits; `wasmgate keygen` makes one)"
                        .to_string(),
                )
            })?;
        let id = key_id(&public);
        if config.trusted_keys.iter().any(|k| k.id == id) {
            return Err(KeyError::new(field, format!("key {id} is listed twice")));
        }
        config.trusted_keys.push(TrustedKey {
            id,
            public,
            expires,
        });
    }
    if let Some(threshold) = section.threshold {
        if threshold == 0 || threshold > config.trusted_keys.len().max(1) {
            return Err(KeyError::new(
                "deploy.threshold",
                format!(
                    "{threshold} signatures cannot be required of {} trusted key(s)",
                    config.trusted_keys.len()
                ),
            ));
        }
        config.threshold = threshold;
    }
    Ok(config)
}

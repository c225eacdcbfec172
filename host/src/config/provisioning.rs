//! `[provisioning]`: a gateway that comes up in the field with only a claim
//! credential, and the identity `serve` issued it in exchange.
//!
//! A gateway.toml with `[provisioning]` has no `gateway.id`. Until the
//! identity exists, [`super::Config::load`] refuses it with
//! [`super::ConfigError::Unprovisioned`], which carries everything
//! `cloud::provision` needs to ask for one ([`Unprovisioned`]). Once the
//! identity is in the data directory ([`Identity`]), the config loads as
//! that gateway: its id, its issued labels, and its own certificate for the
//! cloud link. The identity is written once, atomically ([`Identity::store`]),
//! so a gateway killed at any moment has either no identity or a whole one.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::cloud::{CloudSection, cloud_config};
use super::{BrokerSettings, KeyError};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ProvisioningSection {
    /// The claim's name: the broker user its credential logs in as.
    claim: String,
    /// A batch claim certificate and its key (mutual TLS)...
    #[serde(default)]
    cert_file: Option<PathBuf>,
    #[serde(default)]
    key_file: Option<PathBuf>,
    /// ... or a claim token: the MQTT password of user `claim`.
    #[serde(default)]
    token_file: Option<PathBuf>,
    /// The serial number the allow-list knows this device by; by default
    /// the contents of `serial_file`.
    #[serde(default)]
    serial: Option<String>,
    #[serde(default = "default_serial_file")]
    serial_file: PathBuf,
    /// How long to wait for `serve`'s answer before asking again.
    #[serde(default = "default_timeout_s")]
    timeout_s: u64,
}

fn default_serial_file() -> PathBuf {
    PathBuf::from("/etc/machine-id")
}

fn default_timeout_s() -> u64 {
    30
}

/// The most characters a serial number may have.
pub const MAX_SERIAL: usize = 128;

/// What a gateway that is not provisioned yet needs to ask for its identity.
#[derive(Debug, Clone)]
pub struct Unprovisioned {
    pub data_dir: PathBuf,
    pub claim: String,
    pub serial: String,
    /// `[cloud]`'s first broker, logging in with the claim credential; the
    /// client id is set per request.
    pub broker: BrokerSettings,
    pub timeout: Duration,
}

/// What `[provisioning]` makes of a config: the gateway it was issued, or
/// what asking for an identity needs.
pub(super) enum Claimed {
    Issued(Identity),
    Asking(Unprovisioned),
}

impl ProvisioningSection {
    /// Check the section against `[cloud]` (`cloud`) and the identity in
    /// `data_dir`. Issued, `cloud` logs in with the identity's certificate;
    /// not yet, the plan logs in with the claim.
    pub(super) fn resolve(
        &self,
        cloud: Option<&mut CloudSection>,
        data_dir: &Path,
        resolve: &dyn Fn(&Path) -> PathBuf,
    ) -> Result<Claimed, KeyError> {
        let (login, serial, timeout) = self.check(resolve)?;
        let Some(cloud) = cloud else {
            return Err(KeyError::new(
                "provisioning",
                "needs [cloud]: the broker serve listens on",
            ));
        };
        // What a provisioned gateway takes from its identity, not [cloud].
        let from_the_identity = [
            ("client_id", cloud.client_id.is_some()),
            ("username", cloud.username.is_some()),
            ("password", cloud.password.is_some()),
            ("password_file", cloud.password_file.is_some()),
            ("password_env", cloud.password_env.is_some()),
            ("cert_file", cloud.cert_file.is_some()),
            ("key_file", cloud.key_file.is_some()),
        ];
        if let Some((name, _)) = from_the_identity.iter().find(|(_, set)| *set) {
            return Err(KeyError::new(
                format!("cloud.{name}"),
                "a gateway provisioned by claim logs in with the identity serve issues; leave it out",
            ));
        }
        if let Some(identity) = Identity::load(data_dir)
            .map_err(|m| KeyError::new("provisioning", format!("its identity: {m}")))?
        {
            cloud.cert_file = Some(Identity::cert_file(data_dir));
            cloud.key_file = Some(Identity::key_file(data_dir));
            return Ok(Claimed::Issued(identity));
        }
        let mut claim_cloud = cloud.clone();
        match login {
            ClaimLogin::Certificate { cert, key } => {
                claim_cloud.cert_file = Some(cert);
                claim_cloud.key_file = Some(key);
            }
            ClaimLogin::Token(token) => {
                claim_cloud.username = Some(self.claim.clone());
                claim_cloud.password_file = Some(token);
            }
        }
        let broker = cloud_config(claim_cloud, &self.claim, resolve)?.broker;
        Ok(Claimed::Asking(Unprovisioned {
            data_dir: data_dir.to_path_buf(),
            claim: self.claim.clone(),
            serial,
            broker,
            timeout,
        }))
    }

    /// Check the section; the claim's login, to be set on `[cloud]`'s.
    fn check(
        &self,
        resolve: &dyn Fn(&Path) -> PathBuf,
    ) -> Result<(ClaimLogin, String, Duration), KeyError> {
        let key = |k: &str| format!("provisioning.{k}");
        crate::model::check_name(&self.claim).map_err(|m| KeyError::new(key("claim"), m))?;
        let login = match (&self.cert_file, &self.key_file, &self.token_file) {
            (Some(cert), Some(k), None) => ClaimLogin::Certificate {
                cert: resolve(cert),
                key: resolve(k),
            },
            (None, None, Some(token)) => ClaimLogin::Token(resolve(token)),
            (None, None, None) => {
                return Err(KeyError::new(
                    key("claim"),
                    "give the claim's credential: cert_file and key_file, or token_file",
                ));
            }
            _ => {
                return Err(KeyError::new(
                    key("token_file"),
                    "give cert_file and key_file together, or token_file alone",
                ));
            }
        };
        let serial = match &self.serial {
            Some(serial) => serial.clone(),
            None => {
                let file = resolve(&self.serial_file);
                std::fs::read_to_string(&file)
                    .map_err(|e| {
                        KeyError::new(
                            key("serial_file"),
                            format!(
                                "{}: {e} (or give the device's serial as provisioning.serial)",
                                file.display()
                            ),
                        )
                    })?
                    .trim()
                    .to_string()
            }
        };
        check_serial(&serial).map_err(|m| KeyError::new(key("serial"), m))?;
        if !(1..=600).contains(&self.timeout_s) {
            return Err(KeyError::new(
                key("timeout_s"),
                format!("{} is not between 1 and 600", self.timeout_s),
            ));
        }
        Ok((login, serial, Duration::from_secs(self.timeout_s)))
    }
}

/// A serial number: 1 to 128 printable ASCII characters, no spaces.
pub fn check_serial(serial: &str) -> Result<(), String> {
    if serial.is_empty()
        || serial.len() > MAX_SERIAL
        || !serial.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(format!(
            "{serial:?} is not a serial number (1 to {MAX_SERIAL} printable characters, no spaces)"
        ));
    }
    Ok(())
}

/// How the claim logs in to the broker.
enum ClaimLogin {
    Certificate {
        cert: PathBuf,
        key: PathBuf,
    },
    /// The password of user `claim`, in this (owner-only) file.
    Token(PathBuf),
}

/// What `serve` issued: the gateway's identity, kept in
/// `data_dir/identity/`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Identity {
    pub gateway: String,
    pub labels: BTreeMap<String, String>,
    pub claim: String,
    pub serial: String,
    /// ms since the epoch.
    pub issued_at: u64,
    pub not_after: u64,
}

impl Identity {
    /// The directory that holds a gateway's identity.
    pub fn dir(data_dir: &Path) -> PathBuf {
        data_dir.join("identity")
    }

    pub fn cert_file(data_dir: &Path) -> PathBuf {
        Self::dir(data_dir).join("cert.pem")
    }

    pub fn key_file(data_dir: &Path) -> PathBuf {
        Self::dir(data_dir).join("key.pem")
    }

    /// The key a request is made with, kept before the request goes out:
    /// a gateway that dies after `serve` issued its certificate, but before
    /// it stored it, asks again with the same key and is issued the same
    /// identity, rather than refused for an id that is taken.
    pub fn pending_key_file(data_dir: &Path) -> PathBuf {
        data_dir.join("identity.key.pending")
    }

    /// The identity in `data_dir`, if the gateway has one.
    pub fn load(data_dir: &Path) -> Result<Option<Identity>, String> {
        let file = Self::dir(data_dir).join("identity.json");
        let text = match std::fs::read_to_string(&file) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("{}: {e}", file.display())),
        };
        let identity: Identity =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", file.display()))?;
        crate::model::check_name(&identity.gateway)
            .map_err(|m| format!("{}: gateway: {m}", file.display()))?;
        Ok(Some(identity))
    }

    /// Keep this identity, its certificate and its key in `data_dir`, all
    /// at once: written beside it, synced, then renamed into place.
    pub fn store(&self, data_dir: &Path, cert_pem: &str, key_pem: &str) -> std::io::Result<()> {
        std::fs::create_dir_all(data_dir)?;
        let staging = data_dir.join("identity.new");
        if staging.exists() {
            std::fs::remove_dir_all(&staging)?;
        }
        std::fs::create_dir(&staging)?;
        crate::permissions::make_private_dir(&staging)?;
        let json = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        for (name, text) in [
            ("identity.json", json.as_str()),
            ("cert.pem", cert_pem),
            ("key.pem", key_pem),
        ] {
            write_private(&staging.join(name), text)?;
        }
        std::fs::File::open(&staging)?.sync_all()?;
        std::fs::rename(&staging, Self::dir(data_dir))?;
        std::fs::File::open(data_dir)?.sync_all()?;
        // The key now lives in the identity; the pending copy may go.
        match std::fs::remove_file(Self::pending_key_file(data_dir)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

/// Write an owner-only file and sync it.
pub fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_identity_is_stored_whole_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Identity::load(dir.path()).unwrap(), None);
        write_private(&Identity::pending_key_file(dir.path()), "KEY").unwrap();
        // A staging directory left by a gateway killed mid-store is replaced.
        std::fs::create_dir(dir.path().join("identity.new")).unwrap();
        std::fs::write(dir.path().join("identity.new/cert.pem"), "half").unwrap();
        let identity = Identity {
            gateway: "gw-7".into(),
            labels: BTreeMap::from([("site".into(), "plant-1".into())]),
            claim: "batch-1".into(),
            serial: "SN-1".into(),
            issued_at: 1,
            not_after: 2,
        };
        identity.store(dir.path(), "CERT", "KEY").unwrap();
        assert_eq!(Identity::load(dir.path()).unwrap(), Some(identity));
        assert_eq!(
            std::fs::read_to_string(Identity::cert_file(dir.path())).unwrap(),
            "CERT"
        );
        assert!(!Identity::pending_key_file(dir.path()).exists());
        assert!(!dir.path().join("identity.new").exists());
        crate::permissions::check_private(&Identity::key_file(dir.path()), "the key").unwrap();
    }

    #[test]
    fn serials_are_printable_and_bounded() {
        assert!(check_serial("SN-0001").is_ok());
        for bad in ["", "a b", "x\n", &"7".repeat(MAX_SERIAL + 1)] {
            assert!(check_serial(bad).is_err(), "{bad:?}");
        }
    }
}

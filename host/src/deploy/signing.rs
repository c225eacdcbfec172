//! Signed deployments: ed25519 keys (ring), the exact bytes a deployment
//! signature covers, and checking a manifest's signatures against the keys
//! gateway.toml trusts and its threshold.
//!
//! The signed bytes (`wasmgate-deploy-v2`) cover the signing key's id, the
//! deployment id, the app, its version number, the target, the expiry, the
//! component's size and sha256, and digests of the model and the config. So
//! a signature cannot be reused for another app, component, model, config,
//! version, gateway or fleet, nor after it expires; the gateway's record of
//! versions and ids (`registry::accept_deployment`) stops replays. These are
//! TUF's and Uptane's defences against replay, rollback and freeze attacks.

use anyhow::Context as _;
use ring::rand::SecureRandom as _;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair as _, UnparsedPublicKey};
use sha2::{Digest, Sha256};
use std::path::Path;

use crate::config::{TrustedKey, key_id};
use crate::wire::protocol::{DeployManifest, DeploySignature, KeyRotation, RollbackOrder};

/// The most signatures a manifest may carry (each costs a verification).
pub const MAX_SIGNATURES: usize = 16;

/// A signed message: what each signature covers, and its signatures.
pub trait Signed {
    /// The bytes a signature by the key with id `key` covers.
    fn signed_bytes(&self, key: &str) -> Vec<u8>;
    fn signatures(&self) -> &[DeploySignature];
}

/// sha256 hex of some JSON, or `-` for none.
fn digest_of(json: Option<String>) -> String {
    json.map(|j| hex::encode(Sha256::digest(j.as_bytes())))
        .unwrap_or_else(|| "-".into())
}

impl Signed for DeployManifest {
    fn signed_bytes(&self, key: &str) -> Vec<u8> {
        let m = self;
        let mut bytes = format!(
            "wasmgate-deploy-v2\nkey={key}\nid={}\napp={}\nversion={}\ntarget={}\nexpires={}\nsize={}\nsha256={}\nmodel={}\nconfig={}\n",
            m.id,
            m.app,
            m.version,
            m.target,
            m.expires,
            m.size,
            m.sha256,
            digest_of(m.model.as_ref().map(|m| m.to_string())),
            digest_of(
                m.config
                    .as_ref()
                    .map(|c| serde_json::to_string(c).unwrap_or_default())
            ),
        );
        // Only when there are grants, so manifests signed before grants
        // existed still verify; adding or removing them breaks the signature.
        if let Some(grants) = &m.grants {
            bytes.push_str(&format!(
                "grants={}\n",
                digest_of(serde_json::to_string(grants).ok())
            ));
        }
        bytes.into_bytes()
    }

    fn signatures(&self) -> &[DeploySignature] {
        &self.signatures
    }
}

impl Signed for KeyRotation {
    fn signed_bytes(&self, key: &str) -> Vec<u8> {
        let r = self;
        let keys: Vec<String> = r
            .keys
            .iter()
            .map(|k| {
                let expires = k.expires.map_or("-".to_string(), |e| e.to_string());
                format!("{}:{expires}", k.public)
            })
            .collect();
        format!(
            "wasmgate-keys-v2\nkey={key}\nid={}\nversion={}\ntarget={}\nexpires={}\nthreshold={}\nkeys={}\n",
            r.id,
            r.version,
            r.target,
            r.expires,
            r.threshold,
            keys.join(","),
        )
        .into_bytes()
    }

    fn signatures(&self) -> &[DeploySignature] {
        &self.signatures
    }
}

impl Signed for RollbackOrder {
    fn signed_bytes(&self, key: &str) -> Vec<u8> {
        let r = self;
        format!(
            "wasmgate-rollback-v1\nkey={key}\nid={}\napp={}\nsha256={}\ntarget={}\nexpires={}\n",
            r.id, r.app, r.sha256, r.target, r.expires,
        )
        .into_bytes()
    }

    fn signatures(&self) -> &[DeploySignature] {
        &self.signatures
    }
}

/// What a signature by the key with id `key` over `manifest` covers.
pub fn signed_bytes(manifest: &DeployManifest, key: &str) -> Vec<u8> {
    manifest.signed_bytes(key)
}

/// A new key pair: (32-byte seed, public key), both hex.
pub fn generate() -> anyhow::Result<(String, String)> {
    let mut seed = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut seed)
        .map_err(|_| anyhow::anyhow!("no randomness available"))?;
    let pair = Ed25519KeyPair::from_seed_unchecked(&seed).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok((hex::encode(seed), hex::encode(pair.public_key().as_ref())))
}

/// Read a private key file (the hex seed `wasmgate keygen` writes). Like
/// ssh, it refuses a key file other users can read.
pub fn load_key(path: &Path) -> anyhow::Result<Ed25519KeyPair> {
    crate::permissions::check_private(path, "the private key").map_err(anyhow::Error::msg)?;
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the key {}", path.display()))?;
    let seed = hex::decode(text.trim())
        .ok()
        .filter(|s| s.len() == 32)
        .with_context(|| {
            format!(
                "{} is not a wasmgate private key (64 hex digits)",
                path.display()
            )
        })?;
    Ed25519KeyPair::from_seed_unchecked(&seed)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// The id of `key`'s public key.
pub fn id_of(key: &Ed25519KeyPair) -> String {
    let public: [u8; 32] = key
        .public_key()
        .as_ref()
        .try_into()
        .expect("an ed25519 public key is 32 bytes");
    key_id(&public)
}

/// Sign `message` (a manifest, a key rotation) with `key`.
pub fn sign(key: &Ed25519KeyPair, message: &impl Signed) -> DeploySignature {
    let id = id_of(key);
    let sig = hex::encode(key.sign(&message.signed_bytes(&id)).as_ref());
    DeploySignature { key: id, sig }
}

/// `message` signed by each of `keys`, as a threshold of them asks.
pub fn sign_all(keys: &[Ed25519KeyPair], message: &impl Signed) -> Vec<DeploySignature> {
    keys.iter().map(|key| sign(key, message)).collect()
}

/// Check `message`'s signatures at `now` (unix seconds): at least
/// `threshold` distinct trusted, unexpired keys must have signed it. Which
/// keys did, or why too few.
pub fn verify(
    trusted: &[TrustedKey],
    threshold: usize,
    message: &impl Signed,
    now: u64,
) -> Result<Vec<String>, String> {
    if trusted.is_empty() {
        return Err(
            "cloud deployment is off: gateway.toml trusts no keys ([deploy] trusted_keys)".into(),
        );
    }
    let signatures = message.signatures();
    if signatures.len() > MAX_SIGNATURES {
        return Err(format!(
            "{} signatures, more than the {MAX_SIGNATURES} taken",
            signatures.len()
        ));
    }
    let mut good: Vec<String> = Vec::new();
    let mut problems: Vec<String> = Vec::new();
    for signature in signatures {
        let Some(key) = trusted.iter().find(|k| k.id == signature.key) else {
            problems.push(format!("key {} is not trusted", signature.key));
            continue;
        };
        if let Some(expires) = key.expires
            && now > expires
        {
            problems.push(format!(
                "key {} expired at {}",
                key.id,
                format_time(expires)
            ));
            continue;
        }
        let verifies = hex::decode(&signature.sig).is_ok_and(|sig| {
            UnparsedPublicKey::new(&ED25519, key.public)
                .verify(&message.signed_bytes(&key.id), &sig)
                .is_ok()
        });
        if !verifies {
            problems.push(format!("the signature by key {} does not verify", key.id));
        } else if !good.contains(&key.id) {
            good.push(key.id.clone());
        }
    }
    if good.len() >= threshold {
        return Ok(good);
    }
    let mut error = if threshold == 1 {
        "no valid signature by a trusted key".to_string()
    } else {
        format!(
            "needs signatures by {threshold} distinct trusted keys, has {}",
            good.len()
        )
    };
    if signatures.is_empty() {
        error.push_str(" (the manifest is not signed)");
    } else if !problems.is_empty() {
        error.push_str(&format!(" ({})", problems.join("; ")));
    }
    Err(error)
}

/// Unix seconds as RFC 3339, for messages.
pub fn format_time(unix: u64) -> String {
    i64::try_from(unix)
        .ok()
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("{unix} s after 1970"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::protocol::{DEPLOY_FORMAT, DeployTarget};

    fn key(seed: u8) -> (Ed25519KeyPair, TrustedKey) {
        let pair = Ed25519KeyPair::from_seed_unchecked(&[seed; 32]).expect("key");
        let public: [u8; 32] = pair.public_key().as_ref().try_into().expect("32");
        let trusted = TrustedKey {
            id: key_id(&public),
            public,
            expires: None,
        };
        (pair, trusted)
    }

    fn manifest() -> DeployManifest {
        DeployManifest {
            format: DEPLOY_FORMAT,
            id: "d1".into(),
            app: "app".into(),
            version: 3,
            target: DeployTarget::Gateway("gw".into()),
            expires: 2_000_000_000,
            size: 10,
            sha256: "abc".into(),
            chunk_size: 10,
            chunks: 1,
            model: None,
            config: Some(vec![("k".into(), "v".into())]),
            grants: None,
            signatures: Vec::new(),
        }
    }

    #[test]
    fn a_rollback_order_signature_holds_only_for_its_app_component_target_and_expiry() {
        let (pair, trusted) = key(2);
        let mut order = RollbackOrder {
            format: DEPLOY_FORMAT,
            id: "r1".into(),
            app: "app".into(),
            sha256: "ab".repeat(32),
            target: DeployTarget::Selector("ring=canary".into()),
            expires: 2_000_000_000,
            signatures: Vec::new(),
        };
        order.signatures.push(sign(&pair, &order));
        let now = 1_900_000_000;
        let trusted = std::slice::from_ref(&trusted);
        assert!(verify(trusted, 1, &order, now).is_ok());
        let changes: [fn(&mut RollbackOrder); 5] = [
            |o| o.id = "r2".into(),
            |o| o.app = "other".into(),
            |o| o.sha256 = "cd".repeat(32),
            |o| o.target = DeployTarget::Gateway("gw".into()),
            |o| o.expires += 1,
        ];
        for change in changes {
            let mut changed = order.clone();
            change(&mut changed);
            assert!(verify(trusted, 1, &changed, now).is_err(), "{changed:?}");
        }
    }

    #[test]
    fn a_signature_holds_only_for_what_it_signed() {
        let (pair, trusted) = key(1);
        let mut m = manifest();
        m.signatures.push(sign(&pair, &m));
        let now = 1_900_000_000;
        assert_eq!(
            verify(std::slice::from_ref(&trusted), 1, &m, now),
            Ok(vec![trusted.id.clone()])
        );
        // Every signed field changes the bytes.
        let changes: [fn(&mut DeployManifest); 11] = [
            |m| m.id = "d2".into(),
            |m| m.app = "other".into(),
            |m| m.version = 4,
            |m| m.target = DeployTarget::Gateway("gw2".into()),
            |m| m.target = DeployTarget::Selector("site=a".into()),
            |m| m.expires += 1,
            |m| m.size += 1,
            |m| m.sha256 = "abd".into(),
            |m| m.config = None,
            // Grants added where there were none, or changed.
            |m| m.grants = Some(Default::default()),
            |m| {
                m.grants = Some(crate::grants::Grants {
                    modbus: vec![crate::grants::ModbusGrant {
                        endpoint: "tcp://meter:502".into(),
                        units: Some(vec![1]),
                        timeout_ms: 1000,
                    }],
                    ..Default::default()
                })
            },
        ];
        for change in changes {
            let mut other = m.clone();
            change(&mut other);
            let e = verify(std::slice::from_ref(&trusted), 1, &other, now).unwrap_err();
            assert!(e.contains("does not verify"), "{e}");
        }
        // The chunking is transport, not signed.
        let mut rechunked = m.clone();
        rechunked.chunk_size = 5;
        rechunked.chunks = 2;
        assert!(verify(&[trusted], 1, &rechunked, now).is_ok());
    }

    #[test]
    fn untrusted_expired_and_too_few_keys_are_refused_with_the_reason() {
        let (a, trusted_a) = key(1);
        let (b, trusted_b) = key(2);
        let (stranger, _) = key(3);
        let now = 1_900_000_000;
        let mut m = manifest();
        m.signatures.push(sign(&stranger, &m));
        let e = verify(std::slice::from_ref(&trusted_a), 1, &m, now).unwrap_err();
        assert!(
            e.starts_with("no valid signature by a trusted key (key ")
                && e.ends_with("is not trusted)"),
            "{e}"
        );

        let mut m = manifest();
        m.signatures.push(sign(&a, &m));
        let both = [trusted_a.clone(), trusted_b.clone()];
        let e = verify(&both, 2, &m, now).unwrap_err();
        assert_eq!(e, "needs signatures by 2 distinct trusted keys, has 1");
        // The same key twice is still one key.
        m.signatures.push(sign(&a, &m));
        assert!(verify(&both, 2, &m, now).is_err());
        m.signatures.push(sign(&b, &m));
        assert_eq!(verify(&both, 2, &m, now).expect("two keys").len(), 2);

        let expired = TrustedKey {
            expires: Some(now - 1),
            ..trusted_a
        };
        let mut m = manifest();
        m.signatures.push(sign(&a, &m));
        let e = verify(&[expired], 1, &m, now).unwrap_err();
        assert!(e.contains("expired at 2030-03-17T17:46:39Z"), "{e}");
        assert!(
            verify(&[], 1, &m, now)
                .unwrap_err()
                .contains("trusts no keys")
        );
        assert!(
            verify(&[trusted_b], 1, &manifest(), now)
                .unwrap_err()
                .contains("not signed")
        );
    }

    #[test]
    fn a_private_key_file_others_can_read_is_refused() {
        use std::os::unix::fs::PermissionsExt as _;
        let (seed, _) = generate().expect("keys");
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("k.key");
        std::fs::write(&path, &seed).expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let e = load_key(&path).expect_err("refused").to_string();
        assert!(e.contains("chmod 600"), "{e}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        assert!(load_key(&path).is_ok());
    }
}

//! Signed deployments: ed25519 keys (ring), the exact bytes a deployment
//! signature covers, and checking it against the keys gateway.toml trusts.
//!
//! The signature covers the deployment id, the app, the component's sha256
//! and digests of the model and the config, so a signature cannot be reused
//! for another app, another component, or the same component with another
//! model or config.

use anyhow::Context as _;
use ring::rand::SecureRandom as _;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair as _, UnparsedPublicKey};
use sha2::{Digest, Sha256};
use std::path::Path;

/// What a deployment signature covers.
pub fn signed_bytes(
    id: &str,
    app: &str,
    sha256: &str,
    model: Option<&serde_json::Value>,
    config: Option<&[(String, String)]>,
) -> Vec<u8> {
    let digest_of = |json: Option<String>| {
        json.map(|j| hex::encode(Sha256::digest(j.as_bytes())))
            .unwrap_or_else(|| "-".into())
    };
    format!(
        "wasmgate-deploy-v1\nid={id}\napp={app}\nsha256={sha256}\nmodel={}\nconfig={}\n",
        digest_of(model.map(|m| m.to_string())),
        digest_of(config.map(|c| serde_json::to_string(c).unwrap_or_default())),
    )
    .into_bytes()
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

/// Read a private key file (the hex seed `wasmgate keygen` writes).
pub fn load_key(path: &Path) -> anyhow::Result<Ed25519KeyPair> {
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

/// Sign `bytes`; the signature and the public key, hex.
pub fn sign(key: &Ed25519KeyPair, bytes: &[u8]) -> (String, String) {
    (
        hex::encode(key.sign(bytes).as_ref()),
        hex::encode(key.public_key().as_ref()),
    )
}

/// Check a hex signature against the trusted keys; which key signed it.
pub fn verify(trusted: &[[u8; 32]], bytes: &[u8], signature: &str) -> Result<usize, String> {
    if trusted.is_empty() {
        return Err(
            "cloud deployment is off: gateway.toml trusts no keys ([deploy] trusted_keys)".into(),
        );
    }
    let signature = hex::decode(signature).map_err(|_| "the signature is not hex".to_string())?;
    trusted
        .iter()
        .position(|key| {
            UnparsedPublicKey::new(&ED25519, key)
                .verify(bytes, &signature)
                .is_ok()
        })
        .ok_or_else(|| "the signature does not match any trusted key".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_only_for_the_signed_bytes_and_a_trusted_key() {
        let (seed, public) = generate().expect("keys");
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("k.key");
        std::fs::write(&path, &seed).expect("write");
        let key = load_key(&path).expect("load");
        let trusted: [u8; 32] = hex::decode(&public)
            .expect("hex")
            .try_into()
            .expect("32 bytes");
        let bytes = signed_bytes("d1", "app", "abc", None, Some(&[("k".into(), "v".into())]));
        let (signature, signer) = sign(&key, &bytes);
        assert_eq!(signer, public);
        assert_eq!(verify(&[trusted], &bytes, &signature), Ok(0));
        let other = signed_bytes(
            "d1",
            "other-app",
            "abc",
            None,
            Some(&[("k".into(), "v".into())]),
        );
        assert!(
            verify(&[trusted], &other, &signature).is_err(),
            "not for another app"
        );
        assert!(
            verify(&[[7; 32]], &bytes, &signature)
                .unwrap_err()
                .contains("any trusted key")
        );
        assert!(
            verify(&[], &bytes, &signature)
                .unwrap_err()
                .contains("trusts no keys")
        );
    }
}

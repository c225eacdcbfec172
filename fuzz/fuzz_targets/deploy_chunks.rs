//! Any sequence of chunks (index as it comes in the topic, and bytes) for a
//! signed deployment: a component is assembled only when it is, byte for
//! byte, the one whose sha256 was signed.

#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use ring::signature::{Ed25519KeyPair, KeyPair};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::sync::LazyLock;
use wasmgate::config::{TrustedKey, key_id};
use wasmgate::deploy::cloud::{Transfer, Trust, check_manifest};
use wasmgate::deploy::signing;
use wasmgate::wire::protocol::{DEPLOY_FORMAT, DeployManifest, DeployTarget};

/// A component of 10 bytes in chunks of 3.
const COMPONENT: &[u8] = b"\0asm-bytes";

/// Its manifest, signed by the fixed test key (32 bytes of 7) and checked
/// by gateway `gw`, which trusts that key, at a fixed time.
static MANIFEST: LazyLock<DeployManifest> = LazyLock::new(|| {
    let key = Ed25519KeyPair::from_seed_unchecked(&[7; 32]).expect("key");
    let mut manifest = DeployManifest {
        format: DEPLOY_FORMAT,
        id: "fuzz-1".into(),
        app: "app".into(),
        version: 1,
        target: DeployTarget::Gateway("gw".into()),
        expires: 2_000_000_000,
        size: COMPONENT.len() as u64,
        sha256: hex::encode(Sha256::digest(COMPONENT)),
        chunk_size: 3,
        chunks: 4,
        model: None,
        config: None,
        grants: None,
        signatures: Vec::new(),
    };
    manifest.signatures.push(signing::sign(&key, &manifest));
    let public: [u8; 32] = key.public_key().as_ref().try_into().expect("32 bytes");
    let trust = Trust {
        gateway: "gw".into(),
        labels: BTreeMap::new(),
        keys: vec![TrustedKey {
            id: key_id(&public),
            public,
            expires: None,
        }],
        threshold: 1,
        allow: Default::default(),
    };
    let payload = serde_json::to_vec(&manifest).expect("json");
    check_manifest(&trust, &payload, 1_900_000_000).expect("a good manifest")
});

#[derive(Debug, Arbitrary)]
struct Chunk {
    index: String,
    payload: Vec<u8>,
}

fuzz_target!(|chunks: Vec<Chunk>| {
    let mut transfer = Transfer::new(MANIFEST.clone());
    for chunk in chunks {
        if transfer.accept(&chunk.index, chunk.payload).is_err() {
            // The handler drops the transfer at the first bad chunk.
            return;
        }
    }
    if let Ok((_, component)) = transfer.assemble() {
        assert_eq!(component, COMPONENT);
    }
});

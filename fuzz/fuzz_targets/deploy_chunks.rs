//! Any sequence of chunks (index as it comes in the topic, and bytes) for a
//! signed deployment: a component is assembled only when it is, byte for
//! byte, the one whose sha256 was signed.

#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use ring::signature::{Ed25519KeyPair, KeyPair};
use sha2::{Digest, Sha256};
use std::sync::LazyLock;
use wasmgate::cloud::protocol::DeployManifest;
use wasmgate::deploy::cloud::{Transfer, check_manifest};
use wasmgate::deploy::signing;

/// A component of 10 bytes in chunks of 3, and its signed manifest.
const COMPONENT: &[u8] = b"\0asm-bytes";

static MANIFEST: LazyLock<DeployManifest> = LazyLock::new(|| {
    let key = Ed25519KeyPair::from_seed_unchecked(&[7; 32]).expect("key");
    let sha256 = hex::encode(Sha256::digest(COMPONENT));
    let signed = signing::signed_bytes("fuzz-1", "app", &sha256, None, None);
    let (signature, _) = signing::sign(&key, &signed);
    let manifest = serde_json::json!({
        "id": "fuzz-1", "app": "app", "size": COMPONENT.len(), "sha256": sha256,
        "chunk_size": 3, "chunks": 4, "signature": signature,
    });
    let public: [u8; 32] = key.public_key().as_ref().try_into().expect("32 bytes");
    check_manifest(&[public], manifest.to_string().as_bytes()).expect("a good manifest")
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

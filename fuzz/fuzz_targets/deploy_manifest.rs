//! Any `deploy/req` payload: only a manifest signed by the trusted key, with
//! names and sizes that add up, is accepted. The corpus holds such signed
//! manifests, so mutations reach past the JSON into the checks.

#![no_main]

use libfuzzer_sys::fuzz_target;
use ring::signature::{Ed25519KeyPair, KeyPair};
use std::sync::LazyLock;
use wasmgate::deploy::cloud::{MAX_CHUNK_BYTES, check_manifest};

/// The key the corpus was signed with: a fixed test seed of 32 bytes of 7
/// (see `fuzz/make-seeds`).
static TRUSTED: LazyLock<[u8; 32]> = LazyLock::new(|| {
    let key = Ed25519KeyPair::from_seed_unchecked(&[7; 32]).expect("key");
    key.public_key().as_ref().try_into().expect("32 bytes")
});

fuzz_target!(|payload: &[u8]| {
    match check_manifest(&[*TRUSTED], payload) {
        Ok(m) => {
            assert!(m.size > 0 && m.chunk_size <= MAX_CHUNK_BYTES);
            assert_eq!(m.chunks, m.size.div_ceil(m.chunk_size));
        }
        Err((_, reason)) => assert!(!reason.is_empty()),
    }
});

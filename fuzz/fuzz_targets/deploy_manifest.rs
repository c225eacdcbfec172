//! Any `deploy/req` payload, checked by gateway `gw` (labels `site=plant-1`,
//! `ring=main`) that trusts one key with a threshold of 1, at a fixed time:
//! only a format-2 manifest with names and sizes that add up, for this
//! gateway or a selector its labels match, not expired, and signed by the
//! trusted key over its signed bytes, is accepted; anything else is refused
//! with a reason (and, if any, an id that is a valid name). The corpus holds
//! such signed manifests (see `fuzz/make-seeds`), so mutations reach past
//! the JSON into the checks.

#![no_main]

use libfuzzer_sys::fuzz_target;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use std::collections::BTreeMap;
use std::sync::LazyLock;
use wasmgate::config::{TrustedKey, key_id};
use wasmgate::deploy::MAX_ARTIFACT_BYTES;
use wasmgate::deploy::cloud::{MAX_CHUNK_BYTES, Trust, check_manifest};
use wasmgate::deploy::signing::signed_bytes;
use wasmgate::model::check_name;
use wasmgate::wire::protocol::{DEPLOY_FORMAT, DeployTarget};
use wasmgate::wire::selector::Selector;

/// The time the manifests are checked at (2030-03-17T17:46:40Z); the valid
/// seeds expire at 2_000_000_000 (2033), the expired one before this.
const NOW: u64 = 1_900_000_000;

/// Gateway `gw`, trusting the key the corpus was signed with: a fixed test
/// seed of 32 bytes of 7 (see `fuzz/make-seeds`).
static TRUST: LazyLock<Trust> = LazyLock::new(|| {
    let key = Ed25519KeyPair::from_seed_unchecked(&[7; 32]).expect("key");
    let public: [u8; 32] = key.public_key().as_ref().try_into().expect("32 bytes");
    Trust {
        gateway: "gw".into(),
        labels: BTreeMap::from([
            ("site".to_string(), "plant-1".to_string()),
            ("ring".to_string(), "main".to_string()),
        ]),
        keys: vec![TrustedKey {
            id: key_id(&public),
            public,
            expires: None,
        }],
        threshold: 1,
        allow: Default::default(),
    }
});

fuzz_target!(|payload: &[u8]| {
    let trust = &*TRUST;
    match check_manifest(trust, payload, NOW) {
        Ok(m) => {
            assert_eq!(m.format, DEPLOY_FORMAT);
            assert!(check_name(&m.id).is_ok() && check_name(&m.app).is_ok());
            assert!(m.version >= 1 && i64::try_from(m.version).is_ok());
            // The sizes add up.
            assert!(m.size > 0 && m.size <= MAX_ARTIFACT_BYTES as u64);
            assert!(m.chunk_size >= 1 && m.chunk_size <= MAX_CHUNK_BYTES);
            assert_eq!(m.chunks, m.size.div_ceil(m.chunk_size));
            // For this gateway.
            match &m.target {
                DeployTarget::Gateway(gateway) => assert_eq!(*gateway, trust.gateway),
                DeployTarget::Selector(text) => {
                    let selector = Selector::parse(text).expect("an accepted selector parses");
                    assert!(selector.matches(&trust.labels), "{text}");
                }
            }
            assert!(m.expires >= NOW);
            // Signed by the trusted key, over what it signs.
            let key = &trust.keys[0];
            let signed = signed_bytes(&m, &key.id);
            assert!(
                m.signatures.iter().any(|s| s.key == key.id
                    && hex::decode(&s.sig).is_ok_and(|sig| {
                        UnparsedPublicKey::new(&ED25519, key.public)
                            .verify(&signed, &sig)
                            .is_ok()
                    })),
                "accepted without a valid signature by the trusted key"
            );
        }
        Err((id, reason)) => {
            assert!(!reason.is_empty());
            // The id a refusal echoes in `deploy/res` is a name.
            if let Some(id) = id {
                assert!(check_name(&id).is_ok(), "{id:?}");
            }
        }
    }
});

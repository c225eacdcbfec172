//! Any content manifest or acknowledgement (both come from outside the
//! process): a manifest is accepted only if its names, sizes and digest add
//! up, and then every chunk has a length that sums to the size.

#![no_main]

use libfuzzer_sys::fuzz_target;
use wasmgate::content::transfer::{Ack, Manifest};

fuzz_target!(|payload: &[u8]| {
    let _ = serde_json::from_slice::<Ack>(payload);
    let Ok(manifest) = serde_json::from_slice::<Manifest>(payload) else {
        return;
    };
    if manifest.check(64 << 20).is_ok() {
        let total: u64 = (0..manifest.chunks).map(|i| manifest.chunk_len(i)).sum();
        assert_eq!(total, manifest.size);
        assert!(manifest.chunk_len(0) <= manifest.chunk_size);
    }
});

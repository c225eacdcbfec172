//! Any bytes as a Sparkplug B payload: refused with a reason, or decoded
//! into metrics that encode and decode again to the same bytes, and whose
//! values read as any model kind without a panic (a value that does not fit
//! is refused, one that does keeps its kind).

#![no_main]

use libfuzzer_sys::fuzz_target;
use wasmgate::cloud::sparkplug::payload;
use wasmgate::value::{ValueKind, kind_of};

fuzz_target!(|bytes: &[u8]| {
    let decoded = match payload::decode(bytes) {
        Err(reason) => {
            assert!(!reason.is_empty());
            return;
        }
        Ok(p) => p,
    };
    // Compared as bytes: a NaN value is not equal to itself.
    let encoded = payload::encode(&decoded);
    let again = payload::decode(&encoded).expect("its own encoding decodes");
    assert_eq!(payload::encode(&again), encoded);
    for metric in &decoded.metrics {
        for kind in [
            ValueKind::Boolean,
            ValueKind::Integer,
            ValueKind::Number,
            ValueKind::Text,
            ValueKind::Bytes,
        ] {
            match payload::read_value(metric, kind) {
                Ok(value) => assert_eq!(kind_of(&value), kind),
                Err(reason) => assert!(!reason.is_empty()),
            }
        }
    }
});

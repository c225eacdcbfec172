//! Any topic the broker hands the gateway: parsed, or `None`; never a panic.
//! A parsed topic names only what was in it.

#![no_main]

use libfuzzer_sys::fuzz_target;
use wasmgate::cloud::topics;

fuzz_target!(|topic: &str| {
    if let Some(parsed) = topics::parse(topic) {
        assert!(topic.contains(parsed.gateway));
        assert!(topic.contains(parsed.device));
    }
});

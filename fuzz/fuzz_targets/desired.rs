//! Any `twin/desired` payload, checked against a model with every kind of
//! value: refused whole with a reason, or split into accepted and refused
//! attributes, where only writable attributes of the model are accepted.

#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::LazyLock;
use wasmgate::cloud::downlink::check_desired;
use wasmgate::model::DeviceModel;

static MODEL: LazyLock<DeviceModel> =
    LazyLock::new(|| DeviceModel::parse(include_str!("../model.json")).expect("the fuzz model"));

fuzz_target!(|payload: &[u8]| {
    match check_desired(&MODEL, payload) {
        Err(reason) => assert!(!reason.is_empty()),
        Ok(change) => {
            for (name, _) in &change.accepted {
                let spec = MODEL
                    .attributes
                    .get(name)
                    .expect("an accepted attribute is in the model");
                assert!(spec.writable, "{name} is not writable but was accepted");
            }
            for reason in change.rejected.values() {
                assert!(!reason.is_empty());
            }
        }
    }
});

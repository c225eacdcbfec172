//! Any `action/{name}/req` payload for any action name: an id and an
//! argument of the declared kind, or a refusal with a reason.

#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::LazyLock;
use wasmgate::cloud::downlink::check_action;
use wasmgate::model::DeviceModel;

static MODEL: LazyLock<DeviceModel> =
    LazyLock::new(|| DeviceModel::parse(include_str!("../model.json")).expect("the fuzz model"));

const NAMES: [&str; 7] = [
    "reset",
    "calibrate",
    "rename",
    "flash",
    "step",
    "toggle",
    "missing",
];

fuzz_target!(|input: (u8, &[u8])| {
    let (which, payload) = input;
    let name = NAMES[usize::from(which) % NAMES.len()];
    match check_action(&MODEL, name, payload) {
        Ok((id, argument)) => {
            assert!((1..=128).contains(&id.len()));
            let spec = MODEL.actions.get(name).expect("only declared actions pass");
            assert_eq!(argument.is_some(), spec.argument.is_some(), "{name}");
        }
        Err((id, reason)) => {
            assert!(!reason.is_empty());
            if let Some(id) = id {
                assert!(
                    id.len() <= 128,
                    "a refusal echoes at most 128 characters of id"
                );
            }
        }
    }
});

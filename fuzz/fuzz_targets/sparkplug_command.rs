//! Any bytes as an NCMD, and as a DCMD to a born device of the fuzz model,
//! taken the way the Sparkplug link takes them: only writable attributes
//! become a desired change, whose values then pass the downlink's own
//! check of a `wg/v1` desired change; actions are the model's; every
//! refusal has a reason.

#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::{Arc, LazyLock};
use wasmgate::cloud::downlink::check_desired;
use wasmgate::cloud::sparkplug::node::{Due, EdgeNode, Topics};
use wasmgate::cloud::sparkplug::payload;
use wasmgate::model::DeviceModel;

static MODEL: LazyLock<Arc<DeviceModel>> = LazyLock::new(|| {
    Arc::new(DeviceModel::parse(include_str!("../model.json")).expect("the fuzz model"))
});

/// A node with the device `d` born, so that commands may name metrics by
/// alias.
fn born_node() -> EdgeNode {
    let mut node = EdgeNode::new(Topics::new("g", "n"), "fuzz", None);
    node.add_device("d", MODEL.clone());
    node.connected(0);
    while let Some(due) = node.due() {
        match due {
            Due::NodeBirth => node.node_born(0),
            Due::DeviceBirth(d) => {
                node.device_birth(&d, &Vec::new(), 0);
            }
            Due::DeviceDeath(d) => {
                node.device_death(&d, 0);
            }
        }
    }
    node
}

fuzz_target!(|bytes: &[u8]| {
    let Ok(command) = payload::decode(bytes) else {
        return;
    };
    let node = born_node();
    let ncmd = node.node_command(&command);
    assert!(ncmd.desired.is_empty() && ncmd.actions.is_empty());
    let dcmd = node.device_command("d", &command);
    assert!(!dcmd.rebirth);
    for (metric, reason) in dcmd.refused.iter().chain(&ncmd.refused) {
        assert!(!metric.is_empty() && !reason.is_empty());
    }
    for name in dcmd.desired.keys() {
        assert!(
            MODEL.attributes.get(name).is_some_and(|a| a.writable),
            "{name} is not a writable attribute"
        );
    }
    for (action, _) in &dcmd.actions {
        assert!(MODEL.actions.contains_key(action), "{action} is no action");
    }
    if !dcmd.desired.is_empty() {
        let desired = serde_json::json!({"version": 1, "attributes": dcmd.desired});
        let change = check_desired(&MODEL, desired.to_string().as_bytes())
            .expect("a desired change the node made is well formed");
        for reason in change.rejected.values() {
            assert!(!reason.is_empty());
        }
    }
});

//! The integration tests, one module per area, in one test binary so that
//! the suite links the host once. Each test starts the real `wasmgate`
//! binary with real guests compiled from source, real Mosquitto where the
//! cloud is involved, and reads the real SQLite file.
//!
//! Run one area with `cargo test --test it hostile::` (or any part of a
//! test's name).

#[path = "../common/mod.rs"]
mod common;

mod buffering;
mod cloud;
mod cluster;
mod console;
mod content;
mod deploy;
mod device_io;
mod durability;
mod examples;
mod faults;
mod fleet;
mod hostile;
mod hostile_input;
mod languages;
mod mqtt5;
mod operator;
mod provisioning;
mod registration;
mod rollout;
mod runtime;
mod runtime_only;
mod scaffold;
mod security;
mod serve;
mod serving;
mod sparkplug;
mod standard;
mod tables;
mod validation;

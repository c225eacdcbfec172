//! The cloud link over MQTT, and the operator's side of the same protocol.
//!
//! - [`link`]: the gateway's connection. One long-lived task owns the rumqttc
//!   `EventLoop`; it publishes the outbox (rows are deleted only when the
//!   broker acknowledges them), keeps the retained `status`, and hands
//!   downlink messages to [`downlink`].
//! - [`connection`]: the link's MQTT connection in either version (3.1.1 or
//!   5), in one shape for the link.
//! - [`downlink`]: desired changes and action requests: checked against the
//!   device model, delivered to the app that owns the device, answered.
//! - [`operator`]: `wasmgate cloud ...`, the enterprise side.
//! - [`sparkplug`]: the other profile: the gateway as a Sparkplug B 3.0 edge
//!   node, on the same outbox and downlink.
//! - [`synced`]: the server's changes to synced tables, applied to the
//!   apps' tables beside the link.
//! - [`broker`]: the embedded broker for development and the demo.
//! - [`topics`], [`protocol`]: topic names and JSON payloads
//!   (`docs/protocol.md`), re-exported from [`crate::wire`].

#[cfg(feature = "broker")]
pub mod broker;
pub mod connection;
pub mod downlink;
pub mod ledger;
pub mod link;
pub mod operator;
pub mod provision;
pub mod sparkplug;
pub mod synced;
pub mod transfers;

pub use crate::wire::{protocol, topics};

pub use crate::mqtt::{MAX_INCOMING_PACKET_BYTES, MAX_PACKET_BYTES, mqtt_options, no_delay};

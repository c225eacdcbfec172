//! wasmgate: a WebAssembly edge runtime for IoT gateways.
//!
//! The host owns everything that touches the outside world; user logic runs
//! as sandboxed components of the `wasmgate:device/app` world (see `wit/`).
//! Where things live:
//!
//! - [`config`]: `gateway.toml`. [`model`]: device models and value checks.
//!   [`registration`]: devices an app registers (indirectly connected ones).
//!   [`content`]: large content to and from the cloud (uploads, downloads).
//!   [`policy`]: device policies (filters, sampling, windows, alert conditions).
//! - [`engine`]: the wasmtime engine, linker, epoch ticker, compile cache.
//! - [`bindings`]: the one `bindgen!`. One module per WIT interface
//!   implements its `Host` trait: [`device`], [`storage`], [`log`]; plus
//!   [`wasi`] for the WASI subset guests get.
//! - [`app`]: one actor per running app (store, events, restarts).
//! - [`store`]: the SQLite database. [`outbox`]: durable store-and-forward.
//! - [`cloud`]: the MQTT link, the downlink, the operator CLI, the embedded broker.
//! - [`deploy`]: deployments (admin socket, cloud, watch), registry, hot swap.
//! - [`metrics`]: per-app and gateway metrics, the Prometheus endpoint.
//! - [`server`]: `wasmgate cloud serve`, the server side (database, API).
//! - [`gateway`]: start-up and shutdown. [`status`], [`cli`], [`commands`]: the CLI.

pub mod app;
pub mod bindings;
pub mod bus;
pub mod capability;
pub mod cli;
pub mod cloud;
pub mod commands;
pub mod config;
pub mod config_store;
pub mod content;
pub mod deploy;
pub mod device;
pub mod engine;
pub mod gateway;
pub mod grants;
pub mod http_serve;
pub mod io_clock;
pub mod log;
pub mod logbook;
pub mod metrics;
pub mod modbus;
pub mod model;
pub mod mqtt;
pub mod outbox;
pub mod own_wakes;
pub mod permissions;
pub mod policy;
pub mod rate;
pub mod registration;
pub mod report;
pub mod scaffold;
pub mod serial;
#[cfg(feature = "server")]
pub mod server;
pub mod sim;
pub mod status;
pub mod storage;
pub mod store;
pub mod synced;
pub mod tables;
pub mod value;
pub mod wasi;
pub mod wire;

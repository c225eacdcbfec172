//! Write a wasmgate app in Rust.
//!
//! An app is a type that implements [`App`], exported with one macro line:
//!
//! ```ignore
//! use wasmgate_guest::{App, Config};
//!
//! struct Counter { n: u64 }
//!
//! impl App for Counter {
//!     fn init(_config: Config, _previous: Option<Vec<u8>>) -> Result<Self, String> {
//!         Ok(Counter { n: 0 })
//!     }
//!     fn on_tick(&mut self, _now: u64) { self.n += 1; }
//! }
//!
//! wasmgate_guest::app!(Counter);
//! ```
//!
//! Build it with `cargo build --target wasm32-wasip2 --release`: the `.wasm`
//! file that comes out is a component the gateway runs as it is.
//!
//! Everything the WIT world defines is here too, under [`wasmgate::device`],
//! for what the helpers do not cover.

/// The bindings generated from `wit/` for the `wasmgate:device/bus-app`
/// world: the `app` world and the `on-message` export, so that every Rust
/// app can subscribe to the local bus (one that does not leaves
/// [`App::on_message`] as it is). `export_app!` is public so that app
/// crates can export their `Guest` type.
#[allow(clippy::too_many_arguments)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "bus-app",
        path: "../../../wit",
        pub_export_macro: true,
        export_macro_name: "export_app",
        default_bindings_module: "wasmgate_guest::bindings",
    });
}

pub mod modbus;
pub mod serial;

/// The local MQTT bus: subscribe and publish on the topics the app was
/// granted. Messages arrive in [`App::on_message`].
pub mod bus {
    pub use crate::bindings::wasmgate::device::bus::{publish, subscribe, unsubscribe};
    pub use crate::bindings::wasmgate::device::types::IoError;
}

pub use bindings::wasmgate;
pub use bindings::wasmgate::device::content;
pub use bindings::wasmgate::device::device::{
    Device, register, report_all, this_device, unregister,
};
pub use bindings::wasmgate::device::log::Level;
pub use bindings::wasmgate::device::storage;
/// Synced tables: rows the app and the server both edit, declared in the
/// app's model (`docs/synced-tables.md`).
pub use bindings::wasmgate::device::tables;
pub use bindings::wasmgate::device::types::{
    Error, Fields, Point, Severity, Time, Timestamp, Value,
};
pub use bindings::{Guest, export_app};

use std::fmt;

/// A wasmgate app. The host calls these one at a time; `self` lives from
/// `init` until the instance is stopped or replaced.
pub trait App: Sized + 'static {
    /// Start the app. `config` holds the app's key/values from gateway.toml;
    /// `previous` is the state the replaced instance returned from `save`.
    fn init(config: Config, previous: Option<Vec<u8>>) -> Result<Self, String>;

    /// The state to hand to the next instance (hot swap, clean shutdown).
    fn save(&mut self) -> Option<Vec<u8>> {
        None
    }

    /// Called at the app's tick interval; `now` is nanoseconds since the epoch.
    fn on_tick(&mut self, now: Timestamp) {
        let _ = now;
    }

    /// The cloud changed desired attributes (already checked against the model).
    fn on_desired(&mut self, device: String, changes: Fields) -> Result<(), String> {
        let _ = changes;
        Err(format!("this app takes no desired changes for {device}"))
    }

    /// A message from the local bus, on a filter the app subscribed to
    /// ([`bus::subscribe`]).
    fn on_message(&mut self, topic: String, payload: Vec<u8>) {
        let _ = (topic, payload);
    }

    /// The cloud invoked an action (its argument already checked against the model).
    fn on_action(
        &mut self,
        device: String,
        name: String,
        argument: Option<Value>,
    ) -> Result<Option<Value>, String> {
        let _ = (device, argument);
        Err(format!("this app has no action {name}"))
    }
}

/// The app's configuration: the key/values given in gateway.toml.
#[derive(Debug, Clone, Default)]
pub struct Config(Vec<(String, String)>);

impl Config {
    /// Wraps the pairs the host passed to `init`.
    pub fn new(pairs: Vec<(String, String)>) -> Self {
        Config(pairs)
    }

    /// The value of `key`, if given.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The value of `key` parsed as `T`, `default` if it is not given, and an
    /// error naming the key if it does not parse.
    pub fn parse_or<T: std::str::FromStr>(&self, key: &str, default: T) -> Result<T, String>
    where
        T::Err: fmt::Display,
    {
        match self.get(key) {
            None => Ok(default),
            Some(raw) => raw
                .parse()
                .map_err(|e| format!("config key {key}: cannot parse {raw:?}: {e}")),
        }
    }
}

/// A field of a report, point or alert: `field("temperature", 21.5)`.
pub fn field(name: &str, value: impl Into<Value>) -> (String, Value) {
    (name.to_string(), value.into())
}

/// The value of `name` in `fields`, if present.
pub fn find<'a>(fields: &'a Fields, name: &str) -> Option<&'a Value> {
    fields.iter().find(|(n, _)| n == name).map(|(_, v)| v)
}

impl Value {
    /// The value as a float, for `number` and `integer` values.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Number(n) => Some(*n),
            Value::Integer(i) => Some(*i as f64),
            _ => None,
        }
    }
}

impl From<f64> for Value {
    fn from(v: f64) -> Self {
        Value::Number(v)
    }
}
impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::Integer(v)
    }
}
impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Value::Boolean(v)
    }
}
impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::Text(v.to_string())
    }
}
impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::Text(v)
    }
}
impl From<Vec<u8>> for Value {
    fn from(v: Vec<u8>) -> Self {
        Value::Bytes(v)
    }
}

impl Error {
    /// What kind of refusal this is: `invalid`, `limit` or `unavailable`.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Invalid(_) => "invalid",
            Error::Limit(_) => "limit",
            Error::Unavailable(_) => "unavailable",
        }
    }

    /// The host's explanation.
    pub fn message(&self) -> &str {
        match self {
            Error::Invalid(m) | Error::Limit(m) | Error::Unavailable(m) => m,
        }
    }
}

/// Write a line to the app's log.
pub fn log(level: Level, message: &str) {
    wasmgate::device::log::log(level, message);
}

/// `info!("tick {n}")`: format and write an `info` line to the app's log.
#[macro_export]
macro_rules! info {
    ($($arg:tt)*) => { $crate::log($crate::Level::Info, &format!($($arg)*)) };
}

/// `warn!(...)`: like [`info!`] at `warn` level.
#[macro_export]
macro_rules! warn {
    ($($arg:tt)*) => { $crate::log($crate::Level::Warn, &format!($($arg)*)) };
}

/// `error!(...)`: like [`info!`] at `error` level.
#[macro_export]
macro_rules! error {
    ($($arg:tt)*) => { $crate::log($crate::Level::Error, &format!($($arg)*)) };
}

/// Export a type implementing [`App`] as the component's `app` world.
#[macro_export]
macro_rules! app {
    ($app:ty) => {
        const _: () = {
            // The instance lives here between calls. Wasm guests are single
            // threaded, so a thread-local is the whole story.
            ::std::thread_local! {
                static INSTANCE: ::std::cell::RefCell<::std::option::Option<$app>> =
                    const { ::std::cell::RefCell::new(::std::option::Option::None) };
            }

            fn with_app<R>(f: impl FnOnce(&mut $app) -> R) -> R {
                INSTANCE.with(|slot| {
                    let mut slot = slot.borrow_mut();
                    let app = slot
                        .as_mut()
                        .expect("wasmgate called an export before init succeeded");
                    f(app)
                })
            }

            struct Exports;

            impl $crate::bindings::Guest for Exports {
                fn init(
                    config: ::std::vec::Vec<(::std::string::String, ::std::string::String)>,
                    previous: ::std::option::Option<::std::vec::Vec<u8>>,
                ) -> ::std::result::Result<(), ::std::string::String> {
                    let app = <$app as $crate::App>::init($crate::Config::new(config), previous)?;
                    INSTANCE.with(|slot| *slot.borrow_mut() = ::std::option::Option::Some(app));
                    Ok(())
                }
                fn save() -> ::std::option::Option<::std::vec::Vec<u8>> {
                    with_app(|app| $crate::App::save(app))
                }
                fn on_tick(now: $crate::Timestamp) {
                    with_app(|app| $crate::App::on_tick(app, now))
                }
                fn on_desired(
                    device: ::std::string::String,
                    changes: $crate::Fields,
                ) -> ::std::result::Result<(), ::std::string::String> {
                    with_app(|app| $crate::App::on_desired(app, device, changes))
                }
                fn on_action(
                    device: ::std::string::String,
                    name: ::std::string::String,
                    argument: ::std::option::Option<$crate::Value>,
                ) -> ::std::result::Result<
                    ::std::option::Option<$crate::Value>,
                    ::std::string::String,
                > {
                    with_app(|app| $crate::App::on_action(app, device, name, argument))
                }
                fn on_message(topic: ::std::string::String, payload: ::std::vec::Vec<u8>) {
                    with_app(|app| $crate::App::on_message(app, topic, payload))
                }
            }

            $crate::export_app! { Exports with_types_in $crate::bindings }
        };
    };
}

//! What a guest capability is: one unit per WIT interface (or group of
//! them, for WASI), in the spirit of Spin's `Factor` and wasmtime's
//! `WasiCtx`/`WasiView`.
//!
//! A unit is a value of a type that implements [`Capability`]:
//!
//! - the value itself is its **per-gateway state** (channels, signals, the
//!   gateway's settings for it), made once at start and shared by every app;
//! - [`Capability::instance`] builds its **per-app state** (its `Ctx`) for
//!   one instance of an app, from what [`AppSetup`] says of the app;
//! - [`Capability::add_to_linker`] is its **linker registration**: it links
//!   its interfaces for any store data that holds its `Ctx` ([`HasCtx`]);
//! - [`Capability::SCHEMA`] is **its SQL**, the tables it alone owns.
//!
//! `app` lists the units once (`app::units`): the store data holds one
//! `Ctx` of each, instantiation builds them in one loop over that list, and
//! one function links them all. A new capability is one new unit and one
//! line in that list.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use wasmtime::component::Linker;

use crate::config::AppConfig;
use crate::model::DeviceModel;
use crate::rate::AppRates;
use crate::store::Database;

/// What a unit's instance builder may read of the app it builds for.
pub struct AppSetup<'a> {
    pub app: &'a Arc<str>,
    /// The device the app speaks for.
    pub device: &'a Arc<str>,
    pub config: &'a AppConfig,
    /// The app's own device model.
    pub model: &'a Arc<DeviceModel>,
    /// The models the app may `register` devices with, by name.
    pub device_models: &'a Arc<BTreeMap<String, Arc<DeviceModel>>>,
    /// The app's own directory, its only WASI preopen.
    pub files_dir: &'a Path,
    /// The app's rate-limit buckets: they outlive its instances, so a
    /// restart or a hot swap does not hand it a fresh burst.
    pub rates: &'a AppRates,
    /// The gateway's database; each unit opens its own connections.
    pub db: &'a Database,
}

/// One guest capability. See the module header.
pub trait Capability: Send + Sync + 'static {
    /// The per-app state, kept in the app's store.
    type Ctx: Send + 'static;

    /// Its name, as errors say it.
    const NAME: &'static str;

    /// The SQL of the tables it owns, applied at start (idempotent:
    /// `CREATE TABLE IF NOT EXISTS`).
    const SCHEMA: &'static str = "";

    /// Build the per-app state for one instance of an app. An error stops
    /// the instance from starting, with the message as its crash report.
    fn instance(&self, app: &AppSetup<'_>) -> anyhow::Result<Self::Ctx>;

    /// Link its interfaces for store data `T` that holds its `Ctx`.
    fn add_to_linker<T: HasCtx<Self>>(linker: &mut Linker<T>) -> wasmtime::Result<()>
    where
        Self: Sized;
}

/// Store data that holds the per-app state of capability `C`.
pub trait HasCtx<C: Capability>: Send + 'static {
    fn ctx(&mut self) -> &mut C::Ctx;
}

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
//! - [`Capability::SCHEMA`] is **its SQL**, the tables it alone owns;
//! - [`Capability::report`] is **its part of an app's report**: named
//!   figures that the status message, `wasmgate apps` and `/metrics` show
//!   under the unit's name (see `crate::report`).
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
    /// The gateway's database.
    pub db: &'a Database,
    /// The instance's connection to it, opened at its first use and
    /// shared by the units that use one.
    pub conn: &'a crate::store::SharedConnection,
    /// The instance's I/O time: an I/O unit times its waits on it.
    pub io: &'a Arc<crate::io_clock::IoClock>,
    /// The app's counters, kept across its instances.
    pub metrics: &'a Arc<crate::metrics::AppMetrics>,
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

    /// Its figures for `app` now (counts it keeps, or reads from its own
    /// tables through `db`). None by default.
    fn report(&self, app: &ReportScope<'_>) -> Vec<Figure> {
        let _ = app;
        Vec::new()
    }

    /// Link its interfaces for store data `T` that holds its `Ctx`.
    fn add_to_linker<T: HasCtx<Self>>(linker: &mut Linker<T>) -> wasmtime::Result<()>
    where
        Self: Sized;
}

/// What a unit's report may read of the app it reports on.
pub struct ReportScope<'a> {
    pub app: &'a str,
    /// The app's counters, kept across its restarts and versions.
    pub metrics: &'a crate::metrics::AppMetrics,
    /// A read connection to the gateway's database, for the unit's tables.
    pub db: &'a rusqlite::Connection,
}

/// Whether a figure only grows (a Prometheus counter) or goes up and down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FigureKind {
    Counter,
    Gauge,
}

/// One number a unit reports for an app: `/metrics` shows it as
/// `wasmgate_app_{unit}_{name}`, the status message and `wasmgate apps`
/// under `capabilities.{unit}.{name}`.
#[derive(Debug, Clone, PartialEq)]
pub struct Figure {
    pub name: &'static str,
    pub help: &'static str,
    pub kind: FigureKind,
    pub value: u64,
}

impl Figure {
    /// A counter's figure, read now.
    pub fn counter(
        name: &'static str,
        help: &'static str,
        value: &std::sync::atomic::AtomicU64,
    ) -> Figure {
        Figure {
            name,
            help,
            kind: FigureKind::Counter,
            value: value.load(std::sync::atomic::Ordering::Relaxed),
        }
    }
}

/// A unit's gateway-wide state kept per app (its counters, say), made on
/// first use and kept across the app's instances.
pub struct PerApp<T>(std::sync::Mutex<std::collections::HashMap<String, Arc<T>>>);

impl<T: Default> PerApp<T> {
    pub fn get(&self, app: &str) -> Arc<T> {
        let mut all = self.0.lock().unwrap_or_else(|e| e.into_inner());
        all.entry(app.to_string()).or_default().clone()
    }
}

impl<T> Default for PerApp<T> {
    fn default() -> Self {
        PerApp(Default::default())
    }
}

/// Store data that holds the per-app state of capability `C`.
pub trait HasCtx<C: Capability>: Send + 'static {
    fn ctx(&mut self) -> &mut C::Ctx;
}

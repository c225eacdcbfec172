//! Running apps: one actor per app owns its wasmtime `Store`, its instance
//! and its event queue, and calls the guest's exports one at a time.
//!
//! The store data, [`AppCtx`], holds the per-app state of each capability
//! unit (see [`crate::capability`]; the list is `units!` below), plus the
//! limiter and the deadline of the call in progress.

mod actor;
pub mod restarts;

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, watch};
use wasmtime::ResourceLimiter;
use wasmtime::component::Linker;

pub use actor::{
    AppShared, AppSpec, AppVersion, Control, Outcome, spawn, time_dispatch, time_instantiation,
};

use crate::bindings::Value;
use crate::capability::{AppSetup, Capability, Figure, HasCtx, ReportScope};
use crate::model::DeviceModel;
use crate::registration::Registered;
use crate::wire::protocol::RunState;

/// Declares the capability units every app gets, once: the gateway's
/// [`Units`], each unit's per-app state in [`UnitCtxs`], the one loop that
/// builds them for an instance, the one function that links them, and how
/// the store data reaches each ([`HasCtx`]).
macro_rules! units {
    ($($field:ident: $unit:ty),* $(,)?) => {
        /// The gateway's state of every capability unit, made once at start.
        #[derive(Clone)]
        pub struct Units {
            $(pub $field: Arc<$unit>,)*
        }

        /// Each unit's per-app state, in the app's store.
        pub struct UnitCtxs {
            $(pub(crate) $field: <$unit as Capability>::Ctx,)*
        }

        impl Units {
            /// Build every unit's state for one instance of an app.
            fn instances(&self, setup: &AppSetup<'_>) -> Result<UnitCtxs, AppError> {
                Ok(UnitCtxs {
                    $($field: self.$field.instance(setup).map_err(|e| AppError::Preparing {
                        unit: <$unit as Capability>::NAME,
                        reason: format!("{e:#}"),
                    })?,)*
                })
            }

            /// Every unit's figures for one app, by unit name (units with
            /// nothing to report are left out).
            pub fn report(&self, scope: &ReportScope<'_>) -> Vec<(&'static str, Vec<Figure>)> {
                let mut out = Vec::new();
                $(
                    let figures = self.$field.report(scope);
                    if !figures.is_empty() {
                        out.push((<$unit as Capability>::NAME, figures));
                    }
                )*
                out
            }

            /// The SQL of every unit's tables.
            pub fn schemas() -> Vec<&'static str> {
                vec![$(<$unit as Capability>::SCHEMA),*]
            }
        }

        /// Link every interface a guest can import.
        pub fn add_to_linker(linker: &mut Linker<AppCtx>) -> wasmtime::Result<()> {
            $(<$unit as Capability>::add_to_linker(linker)?;)*
            Ok(())
        }

        $(
            impl HasCtx<$unit> for AppCtx {
                fn ctx(&mut self) -> &mut <$unit as Capability>::Ctx {
                    &mut self.units.$field
                }
            }
        )*
    };
}

units! {
    wasi: crate::wasi::Wasi,
    device: crate::device::Device,
    storage: crate::storage::Storage,
    log: crate::log::Log,
    config_store: crate::config_store::ConfigStore,
    content: crate::content::Content,
    modbus: crate::modbus::Modbus,
    serial: crate::serial::Serial,
    bus: crate::bus::Bus,
    tables: crate::tables::Tables,
    http_serve: crate::http_serve::HttpServe,
}

/// A component linked and ready to instantiate, by the world it fits.
#[derive(Clone)]
pub enum Prepared {
    /// A wasmgate app (`wasmgate:device/app` exports): one long-lived
    /// instance, called on ticks and events.
    App(crate::bindings::AppPre<AppCtx>),
    /// A `wasi:http/proxy` component (`wasi:http/incoming-handler`
    /// export): an instance per request, on its `serve_http` address.
    HttpProxy(wasmtime_wasi_http::p2::bindings::ProxyPre<AppCtx>),
}

impl Prepared {
    pub fn engine(&self) -> &wasmtime::Engine {
        match self {
            Prepared::App(pre) => pre.engine(),
            Prepared::HttpProxy(pre) => pre.engine(),
        }
    }

    /// Whether it serves HTTP rather than being a wasmgate app.
    pub fn serves_http(&self) -> bool {
        matches!(self, Prepared::HttpProxy(_))
    }

    /// Its world, as messages name it.
    pub fn world(&self) -> &'static str {
        match self {
            Prepared::App(_) => "wasmgate:device/app",
            Prepared::HttpProxy(_) => "wasi:http/proxy",
        }
    }
}

/// The data of an app's `Store`: one state per capability unit, the
/// limiter, and the deadline of the call in progress.
pub struct AppCtx {
    pub(crate) units: UnitCtxs,
    /// What the call in progress waited on device I/O (not counted against
    /// its deadline).
    io: Arc<crate::io_clock::IoClock>,
    pub(crate) limiter: AppLimiter,
    /// When the export call in progress must have returned.
    deadline: Instant,
    call_timeout: Duration,
}

/// A call ran past its deadline and was interrupted.
#[derive(Debug, thiserror::Error)]
#[error("the call ran past its deadline of {} ms", .0.as_millis())]
pub struct DeadlineExceeded(pub Duration);

/// A guest asked for more linear memory than its limit allows.
#[derive(Debug, thiserror::Error)]
#[error("memory limit of {limit} MiB reached (the guest asked for {desired} MiB)", limit = .limit >> 20, desired = .desired >> 20)]
pub struct MemoryLimitHit {
    pub limit: usize,
    pub desired: usize,
}

/// Caps an app's memory and tables. Growing past the memory limit traps
/// with [`MemoryLimitHit`] rather than failing the `memory.grow`, so the
/// crash report says what happened instead of "unreachable".
pub struct AppLimiter {
    memory_limit: usize,
    metrics: Arc<crate::metrics::AppMetrics>,
}

/// Elements a guest's tables may hold.
const MAX_TABLE_ELEMENTS: usize = 100_000;

impl ResourceLimiter for AppLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired <= self.memory_limit {
            self.metrics
                .memory_bytes
                .store(desired as u64, std::sync::atomic::Ordering::Relaxed);
        }
        if desired > self.memory_limit {
            return Err(MemoryLimitHit {
                limit: self.memory_limit,
                desired,
            }
            .into());
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}

/// Why an app did not do what it was asked: what [`AppHandle`]'s methods,
/// the replies to [`AppEvent`]s and the actor's own calls give back.
///
/// Each variant's message is the whole text (a wrapped error is part of
/// it, not a `source`), as the cloud, the admin socket and the log show it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AppError {
    /// The app's actor ended (removed, or the gateway shut down) before it
    /// answered.
    #[error("app {app} stopped before handling the request")]
    Gone { app: String },
    /// The operator stopped the app: events are refused until it starts.
    #[error("app {app} is stopped")]
    Stopped { app: String },
    /// The app crashed too often: events are refused until a new version.
    #[error("app {app} is quarantined")]
    Quarantined { app: String },
    /// The guest refused the request, with its own reason.
    #[error("{0}")]
    Refused(String),
    /// The guest's `init` returned an error, with its own reason.
    #[error("init returned an error: {0}")]
    InitRefused(String),
    /// A capability unit could not prepare its state for a new instance.
    #[error("preparing {unit}: {reason}")]
    Preparing { unit: &'static str, reason: String },
    /// A call trapped, ran past its deadline, hit the memory limit or
    /// failed: the crash report (the call, why, and the guest's stderr).
    #[error("{0}")]
    Trap(String),
    /// The call handling a request crashed the app (the crash report).
    #[error("the app crashed: {0}")]
    Crashed(Box<AppError>),
    /// A new version could not be instantiated; the running one stays.
    #[error("the new version could not start: {reason}; version {running} keeps running")]
    NotStarted { reason: Box<AppError>, running: i64 },
    /// The app serves HTTP (a `wasi:http/proxy` component): it has no
    /// exports for desired values or actions.
    #[error(
        "app {app} serves HTTP (a wasi:http/proxy component): it takes no desired values or actions"
    )]
    ServesHttp { app: String },
    /// A new version's `init` failed or crashed; the running one stays.
    #[error("{reason}; version {running} keeps running")]
    SwapRefused { reason: Box<AppError>, running: i64 },
    /// The app gave no answer within the time its sender waits. `started`
    /// tells whether it had begun handling the request: if not, it never
    /// will (the actor skips requests nobody waits for).
    #[error("the app did not answer within {} s; {}", .within.as_secs(), not_answered(*.started))]
    NotAnswered { within: Duration, started: bool },
}

fn not_answered(started: bool) -> &'static str {
    if started {
        "it had started handling the request, which may still take effect"
    } else {
        "it had not started handling the request, and will not"
    }
}

/// Where an app is in its life.
#[derive(Debug, Clone, PartialEq)]
pub enum AppState {
    Starting,
    Running,
    /// Crashed; waiting `retry_in` before the next start.
    Restarting {
        error: String,
        retry_in: Duration,
    },
    /// Crashed too often; left stopped until the gateway restarts or the
    /// app is deployed again.
    Quarantined {
        error: String,
    },
    Stopped,
}

impl AppState {
    /// The state without its details, as reports give it.
    pub fn run_state(&self) -> RunState {
        match self {
            AppState::Starting => RunState::Starting,
            AppState::Running => RunState::Running,
            AppState::Restarting { .. } => RunState::Restarting,
            AppState::Quarantined { .. } => RunState::Quarantined,
            AppState::Stopped => RunState::Stopped,
        }
    }

    /// The state's name as `wasmgate status` and the database show it.
    pub fn name(&self) -> &'static str {
        self.run_state().as_str()
    }

    /// The error behind a restart or quarantine.
    pub fn error(&self) -> Option<&str> {
        match self {
            AppState::Restarting { error, .. } | AppState::Quarantined { error } => Some(error),
            _ => None,
        }
    }
}

/// What an app's actor publishes about itself.
#[derive(Debug, Clone)]
pub struct AppStatus {
    pub state: AppState,
    pub restarts: u64,
    /// sha256 of the component it runs.
    pub component: String,
    /// Its version number in the deployment registry.
    pub version: i64,
    /// How its component was made ready.
    pub load: Option<crate::wire::protocol::Load>,
}

/// Something for the guest to handle, with where to send the outcome.
pub enum AppEvent {
    Desired {
        device: String,
        changes: Vec<(String, Value)>,
        reply: oneshot::Sender<Result<(), AppError>>,
        started: Started,
    },
    Action {
        device: String,
        name: String,
        argument: Option<Value>,
        reply: oneshot::Sender<Result<Option<Value>, AppError>>,
        started: Started,
    },
}

/// Set by the actor when it begins handling a request, so that a sender
/// that gives up can say whether the request may still take effect.
pub type Started = Arc<std::sync::atomic::AtomicBool>;

impl AppEvent {
    /// Whether whoever sent it has stopped waiting for the answer.
    pub fn abandoned(&self) -> bool {
        match self {
            AppEvent::Desired { reply, .. } => reply.is_closed(),
            AppEvent::Action { reply, .. } => reply.is_closed(),
        }
    }

    /// The actor begins handling it.
    pub fn mark_started(&self) {
        let (AppEvent::Desired { started, .. } | AppEvent::Action { started, .. }) = self;
        started.store(true, std::sync::atomic::Ordering::Release);
    }
}

/// A request queued for an app, whose answer is still to come.
pub struct Asked<T> {
    app: Arc<str>,
    outcome: oneshot::Receiver<Result<T, AppError>>,
    started: Started,
}

impl<T> Asked<T> {
    /// Wait `within` for the answer. Giving up drops the receiver, which
    /// tells the actor not to run the request late.
    pub async fn answer(self, within: Duration) -> Result<T, AppError> {
        let started = self.started.clone();
        match tokio::time::timeout(within, self.outcome()).await {
            Ok(answer) => answer,
            Err(_) => Err(not_answered_within(within, &started)),
        }
    }

    async fn outcome(self) -> Result<T, AppError> {
        let app = self.app;
        self.outcome.await.map_err(|_| AppError::Gone {
            app: app.to_string(),
        })?
    }
}

fn not_answered_within(within: Duration, started: &Started) -> AppError {
    AppError::NotAnswered {
        within,
        started: started.load(std::sync::atomic::Ordering::Acquire),
    }
}

/// The rest of the host's way to talk to a running app.
#[derive(Clone)]
pub struct AppHandle {
    name: Arc<str>,
    events: mpsc::Sender<AppEvent>,
    control: mpsc::Sender<Control>,
    status: watch::Receiver<AppStatus>,
    /// The running instance's I/O clock: a stop, remove or swap cancels
    /// what the app waits for on a device, so it need not wait out the
    /// device's timeout.
    io: CurrentIo,
}

/// The I/O clock of an app's running instance, set by its actor.
pub type CurrentIo = Arc<std::sync::Mutex<Option<Arc<crate::io_clock::IoClock>>>>;

/// How many events may wait for an app before senders wait in turn.
pub const EVENT_QUEUE: usize = 256;

impl AppHandle {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn status(&self) -> AppStatus {
        self.status.borrow().clone()
    }

    /// Deliver desired changes (already checked against the model).
    /// Deliver desired changes (already checked against the model), and
    /// wait `within` for the outcome.
    pub async fn desired(
        &self,
        device: String,
        changes: Vec<(String, Value)>,
        within: Duration,
    ) -> Result<(), AppError> {
        self.ask(within, |reply, started| AppEvent::Desired {
            device,
            changes,
            reply,
            started,
        })
        .await
    }

    /// Invoke an action (its argument already checked against the model),
    /// and wait `within` for its result.
    pub async fn action(
        &self,
        device: String,
        name: String,
        argument: Option<Value>,
        within: Duration,
    ) -> Result<Option<Value>, AppError> {
        self.ask(within, |reply, started| AppEvent::Action {
            device,
            name,
            argument,
            reply,
            started,
        })
        .await
    }

    /// Queue an action (its argument already checked against the model)
    /// without waiting, for a caller that must not wait: its answer is
    /// [`Asked::answer`]. `None` if the app's queue is full or the app is
    /// gone; the caller then takes the way that waits ([`Self::action`]),
    /// which says why.
    pub fn try_action(
        &self,
        device: String,
        name: String,
        argument: Option<Value>,
    ) -> Option<Asked<Option<Value>>> {
        let (event, asked) = self.asking(|reply, started| AppEvent::Action {
            device,
            name,
            argument,
            reply,
            started,
        });
        self.events.try_send(event).ok().map(|()| asked)
    }

    /// Send the event `make` builds and wait `within` (the wait for room in
    /// the app's queue included) for its answer. Giving up drops the
    /// answer's receiver, which tells the actor not to run it late.
    async fn ask<T>(
        &self,
        within: Duration,
        make: impl FnOnce(oneshot::Sender<Result<T, AppError>>, Started) -> AppEvent,
    ) -> Result<T, AppError> {
        let (event, asked) = self.asking(make);
        let started = asked.started.clone();
        let answered = async {
            self.send(event).await?;
            asked.outcome().await
        };
        match tokio::time::timeout(within, answered).await {
            Ok(answer) => answer,
            Err(_) => Err(not_answered_within(within, &started)),
        }
    }

    /// The event `make` builds, and the receiving end of its answer.
    fn asking<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, AppError>>, Started) -> AppEvent,
    ) -> (AppEvent, Asked<T>) {
        let (reply, outcome) = oneshot::channel();
        let started = Started::default();
        let event = make(reply, started.clone());
        let asked = Asked {
            app: self.name.clone(),
            outcome,
            started,
        };
        (event, asked)
    }

    /// Swap in `version`: `Ok` once its `init` succeeded (an error leaves
    /// the running version in place); the receiver tells how its probation
    /// ended.
    pub async fn swap(
        &self,
        version: AppVersion,
        probation: Duration,
    ) -> Result<oneshot::Receiver<Outcome>, AppError> {
        let (reply, answer) = oneshot::channel();
        let (outcome, outcome_rx) = oneshot::channel();
        self.control
            .send(Control::Swap {
                version: Box::new(version),
                probation,
                reply,
                outcome,
            })
            .await
            .map_err(|_| self.gone())?;
        self.cancel_io();
        answer.await.map_err(|_| self.gone())??;
        Ok(outcome_rx)
    }

    /// Stop (saving its state), start, or remove the app.
    pub async fn control(
        &self,
        make: impl FnOnce(oneshot::Sender<()>) -> Control,
    ) -> Result<(), AppError> {
        let (done, wait) = oneshot::channel();
        let control = make(done);
        let interrupts = !matches!(control, Control::Start(_));
        self.control.send(control).await.map_err(|_| self.gone())?;
        // Sent first: the call the cancel ends is followed by this control.
        if interrupts {
            self.cancel_io();
        }
        wait.await.map_err(|_| self.gone())
    }

    /// End the running instance's device waits (see [`CurrentIo`]).
    fn cancel_io(&self) {
        if let Some(io) = self.io.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            io.cancel();
        }
    }

    async fn send(&self, event: AppEvent) -> Result<(), AppError> {
        self.events.send(event).await.map_err(|_| self.gone())
    }

    fn gone(&self) -> AppError {
        AppError::Gone {
            app: self.name.to_string(),
        }
    }
}

#[cfg(test)]
impl AppHandle {
    /// A handle whose events arrive on the returned receiver: a unit test
    /// answers them in the app's place.
    pub(crate) fn stand_in(name: &str) -> (AppHandle, mpsc::Receiver<AppEvent>) {
        let (events, received) = mpsc::channel(EVENT_QUEUE);
        let (control, _) = mpsc::channel(1);
        let (_, status) = watch::channel(AppStatus {
            state: AppState::Running,
            restarts: 0,
            component: String::new(),
            version: 1,
            load: None,
        });
        let handle = AppHandle {
            name: name.into(),
            events,
            control,
            status,
            io: CurrentIo::default(),
        };
        (handle, received)
    }
}

/// One app in the [`Directory`].
#[derive(Clone)]
pub struct Entry {
    pub handle: AppHandle,
    /// The device it speaks for.
    pub device: String,
    /// The model of the version it runs.
    pub model: Arc<DeviceModel>,
}

/// The apps the gateway runs, by name, and the devices they registered: the
/// deployer and the apps write it, the cloud link reads it for the status
/// and routes downlink messages by device.
#[derive(Clone, Default)]
pub struct Directory(Arc<RwLock<Routes>>);

#[derive(Default)]
struct Routes {
    apps: BTreeMap<String, Entry>,
    /// Registered devices by id.
    registered: BTreeMap<String, Registered>,
}

impl Directory {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Routes> {
        self.0.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Routes> {
        self.0.write().unwrap_or_else(|e| e.into_inner())
    }

    pub fn insert(&self, entry: Entry) {
        self.write()
            .apps
            .insert(entry.handle.name().to_string(), entry);
    }

    /// The app is gone, and with it the routes to the devices it registered.
    pub fn remove(&self, app: &str) {
        let mut routes = self.write();
        routes.apps.remove(app);
        routes.registered.retain(|_, r| r.app != app);
    }

    pub fn get(&self, app: &str) -> Option<Entry> {
        self.read().apps.get(app).cloned()
    }

    /// The app that speaks for `device`, with the model of that device: its
    /// own device, or one it registered.
    pub fn by_device(&self, device: &str) -> Option<Entry> {
        let routes = self.read();
        if let Some(entry) = routes.apps.values().find(|e| e.device == device) {
            return Some(entry.clone());
        }
        let registered = routes.registered.get(device)?;
        let app = routes.apps.get(&registered.app)?;
        Some(Entry {
            handle: app.handle.clone(),
            device: device.to_string(),
            model: registered.model.clone(),
        })
    }

    pub fn list(&self) -> Vec<Entry> {
        self.read().apps.values().cloned().collect()
    }

    /// The first `limit` devices `app` registered, by id, and how many it
    /// registered in all (a report need not copy thousands to count them).
    pub fn registered_by(
        &self,
        app: &str,
        limit: usize,
    ) -> (Vec<crate::registration::Registration>, usize) {
        let routes = self.read();
        let mut all = routes.registered.values().filter(|r| r.app == app);
        let first = all
            .by_ref()
            .take(limit)
            .map(|r| r.registration.clone())
            .collect::<Vec<_>>();
        let total = first.len() + all.count();
        (first, total)
    }
}

impl crate::registration::Routes for Directory {
    fn owner(&self, device: &str) -> Option<String> {
        self.by_device(device)
            .map(|entry| entry.handle.name().to_string())
    }

    fn registered_model(&self, app: &str, device: &str) -> Option<Arc<DeviceModel>> {
        self.read()
            .registered
            .get(device)
            .filter(|r| r.app == app)
            .map(|r| r.model.clone())
    }

    fn register(&self, registered: Registered) {
        self.write()
            .registered
            .insert(registered.registration.device.clone(), registered);
    }

    fn unregister(&self, device: &str) {
        self.write().registered.remove(device);
    }
}

#[cfg(test)]
mod tests {
    use super::{AppError, AppEvent};
    use tokio::sync::oneshot;

    #[test]
    fn an_event_whose_sender_gave_up_is_abandoned() {
        let (reply, waiting) = oneshot::channel();
        let event = AppEvent::Action {
            device: "d".into(),
            name: "reset".into(),
            argument: None,
            reply,
            started: Default::default(),
        };
        assert!(!event.abandoned(), "someone waits");
        drop(waiting);
        assert!(event.abandoned(), "nobody waits any more");
    }

    /// The cloud sees these texts in its acks and action answers, and the
    /// deployer in a refused version's outcome.
    #[test]
    fn errors_read_as_they_always_did() {
        let trap = AppError::Trap("on-action trapped: wasm `unreachable`".into());
        assert_eq!(
            AppError::Crashed(Box::new(trap.clone())).to_string(),
            "the app crashed: on-action trapped: wasm `unreachable`"
        );
        assert_eq!(
            AppError::NotStarted {
                reason: Box::new(AppError::Preparing {
                    unit: "storage",
                    reason: "disk full".into()
                }),
                running: 3
            }
            .to_string(),
            "the new version could not start: preparing storage: disk full; version 3 keeps running"
        );
        assert_eq!(
            AppError::SwapRefused {
                reason: Box::new(trap),
                running: 3
            }
            .to_string(),
            "on-action trapped: wasm `unreachable`; version 3 keeps running"
        );
        assert_eq!(
            AppError::Refused("relay stuck".into()).to_string(),
            "relay stuck"
        );
        assert_eq!(
            AppError::Quarantined { app: "pump".into() }.to_string(),
            "app pump is quarantined"
        );
        assert_eq!(
            AppError::Stopped { app: "pump".into() }.to_string(),
            "app pump is stopped"
        );
    }
}

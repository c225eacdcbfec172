//! The app actor: start (instantiate + `init`), serve events and ticks, on
//! a crash restart with backoff or quarantine, and on request swap in a new
//! version, stop, start or go away.
//!
//! The actor is a small state machine ([`Phase`]). In every phase it
//! listens for control messages ([`Control`]), so a fixed version can be
//! deployed to an app that is restarting or quarantined, and for shutdown.
//! Events (desired changes, actions) wait in their queue while a swap
//! happens and are handled, in order, by whichever version runs after it.

mod http;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use wasmtime::{Store, Trap, UpdateDeadline};

use super::restarts::{Crashes, Verdict};
use super::{
    AppCtx, AppError, AppEvent, AppHandle, AppLimiter, AppState, AppStatus, DeadlineExceeded,
    EVENT_QUEUE, MemoryLimitHit,
};
use crate::app::Prepared;
use crate::bindings::App;
use crate::capability::AppSetup;
use crate::config::AppConfig;
use crate::metrics::AppMetrics;
use crate::model::DeviceModel;
use crate::value::wall_ns_at;
use crate::wasi::StderrTail;
use std::sync::atomic::Ordering;
/// Restarts and probations run on tokio's clock, which tests can pause and
/// drive; call deadlines stay on the real one (the epoch ticker's).
use tokio::time::Instant as Clock;

/// One version of an app: its component (compiled and linked), model and
/// settings.
#[derive(Clone)]
pub struct AppVersion {
    pub config: AppConfig,
    pub model: Arc<DeviceModel>,
    /// The models the app may `register` devices with, by name.
    pub device_models: Arc<BTreeMap<String, Arc<DeviceModel>>>,
    /// Shared with every other version of the same component.
    pub pre: Arc<Prepared>,
    /// sha256 of the component.
    pub digest: String,
    /// The version number in the deployment registry (0 if not registered).
    pub number: i64,
    /// How its component was made ready.
    pub load: Option<crate::wire::protocol::Load>,
}

/// What every app of the gateway shares.
#[derive(Clone)]
pub struct AppShared {
    /// Connections to the gateway's database, shared by every app's
    /// instances and actors: each takes one for a host call and hands it
    /// back, so apps reuse each other's open connections (with their parsed
    /// schema and prepared statements) instead of each opening its own.
    pub pool: Arc<crate::store::ConnectionPool>,
    /// The capability units, with their gateway state.
    pub units: super::Units,
    /// Signalled when an app's state changes.
    pub status_signal: Arc<Notify>,
    pub metrics: crate::metrics::Metrics,
    /// Free space kept for the database and the outbox
    /// (`[content] disk_reserve_mib`): an app whose directory grows while
    /// the disk has less is stopped.
    pub disk_reserve_bytes: u64,
}

/// Everything an actor needs to run one app.
pub struct AppSpec {
    pub version: AppVersion,
    pub shared: AppShared,
    /// The app's own directory, its only WASI preopen.
    pub files_dir: PathBuf,
    /// Start stopped (the operator stopped it before the gateway restarted).
    pub stopped: bool,
}

/// How a deployment ended, reported after its probation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The new version ran through its probation.
    Kept,
    /// It crashed during probation; the previous version runs again.
    RolledBack(String),
    /// The app was stopped, replaced again or shut down before the end of
    /// the probation.
    Interrupted,
}

/// Control messages, handled in every phase.
pub enum Control {
    /// Replace the running version. `reply` answers once `init` of the new
    /// version returned (an error leaves the old version running);
    /// `outcome` answers after `probation`.
    Swap {
        version: Box<AppVersion>,
        probation: Duration,
        reply: oneshot::Sender<Result<(), AppError>>,
        outcome: oneshot::Sender<Outcome>,
    },
    /// Stop the app (its state saved) until `Start`.
    Stop(oneshot::Sender<()>),
    Start(oneshot::Sender<()>),
    /// Stop and end the actor.
    Remove(oneshot::Sender<()>),
}

/// The largest state kept from `save` across a restart of the gateway.
pub const MAX_SAVED_STATE: usize = 1 << 20;

/// What one event costs through the actor's own call path: instantiate and
/// `init` a version, then call `on-tick` and `on-desired` `n` times each, as
/// the actor does (deadline armed, points handed over after the call).
/// Returns the mean of each. For the benchmarks.
#[doc(hidden)]
pub async fn time_dispatch(
    version: &AppVersion,
    shared: &AppShared,
    files_dir: &Path,
    n: u32,
) -> anyhow::Result<(Duration, Duration)> {
    let mut actor = Actor::detached(version, shared, files_dir);
    let mut instance = actor.start_version(version, None).await?;
    let timeout = version.config.call_timeout;
    let started = Instant::now();
    for _ in 0..n {
        instance.arm(timeout);
        let result = within(
            instance.called,
            timeout,
            &instance.io,
            std::pin::pin!(
                instance
                    .app
                    .call_on_tick(&mut instance.store, wall_ns_at(instance.called))
            ),
        )
        .await;
        instance.finish(result, "on-tick", timeout)?;
    }
    let tick = started.elapsed() / n.max(1);
    let changes = vec![("level".to_string(), crate::bindings::Value::Integer(1))];
    let started = Instant::now();
    for _ in 0..n {
        instance.arm(timeout);
        let result = within(
            instance.called,
            timeout,
            &instance.io,
            std::pin::pin!(
                instance
                    .app
                    .call_on_desired(&mut instance.store, "bench", &changes)
            ),
        )
        .await;
        let _ = instance.finish(result, "on-desired", timeout)?;
    }
    Ok((tick, started.elapsed() / n.max(1)))
}

/// What instantiating a version costs through the actor's own path (every
/// unit's state, the store, wasmtime's instantiation, the exports looked
/// up), without `init`: the mean of `n` in a row, each instance dropped
/// before the next. For the benchmarks: P4 sets it against a bare
/// `InstancePre` instantiated the same way, where the figure an app's start
/// logs is its first instance, in a process busy starting the others.
#[doc(hidden)]
pub async fn time_instantiation(
    version: &AppVersion,
    shared: &AppShared,
    files_dir: &Path,
    n: u32,
) -> anyhow::Result<Duration> {
    let mut actor = Actor::detached(version, shared, files_dir);
    let started = Instant::now();
    for _ in 0..n {
        drop(actor.instantiate(version).await?);
    }
    Ok(started.elapsed() / n.max(1))
}

/// Start the app's actor on `tasks`; it runs until `cancel` or `Remove`.
pub fn spawn(
    spec: AppSpec,
    cancel: CancellationToken,
    tasks: &mut JoinSet<()>,
) -> anyhow::Result<AppHandle> {
    let name: Arc<str> = spec.version.config.name.as_str().into();
    let (events_tx, events) = mpsc::channel(EVENT_QUEUE);
    let (control_tx, control) = mpsc::channel(16);
    let stopped = spec.stopped;
    let (actor, status) = Actor::new(
        AppBase::new(name.clone(), spec.shared, spec.files_dir),
        spec.version,
        events,
        control,
    );
    let io = actor.current_io.clone();
    tasks.spawn(actor.run(cancel, stopped));
    Ok(AppHandle {
        name,
        events: events_tx,
        control: control_tx,
        status,
        io,
    })
}

struct Actor {
    /// What outlives the app's instances, and makes their stores.
    base: AppBase,
    version: AppVersion,
    events: mpsc::Receiver<AppEvent>,
    control: mpsc::Receiver<Control>,
    status: watch::Sender<AppStatus>,
    /// When the recent crashes happened, within the restart window.
    crashes: Crashes,
    restarts: u64,
    /// A new version on trial, with the one to go back to.
    probation: Option<Probation>,
    /// When the app's disk use was last measured.
    disk_checked: Option<Instant>,
    /// What its directory held then (kept across restarts: an app that
    /// writes nothing new is not blamed for a disk others filled).
    files_measured: Option<u64>,
    /// The newest instance's I/O clock, for the handle to cancel.
    current_io: super::CurrentIo,
}

/// What an app keeps across its instances, and makes their stores with:
/// the actor holds one, and an HTTP app's request handler a clone, to make a
/// store per request in the request's task.
#[derive(Clone)]
struct AppBase {
    name: Arc<str>,
    /// The app's counters, kept across its instances and versions.
    metrics: Arc<AppMetrics>,
    /// Rate limits live as long as the app, not one instance of it, so a
    /// restart does not hand a flooding app a fresh burst.
    rates: crate::rate::AppRates,
    shared: AppShared,
    /// The app's own directory, its only WASI preopen.
    files_dir: PathBuf,
}

impl AppBase {
    fn new(name: Arc<str>, shared: AppShared, files_dir: PathBuf) -> AppBase {
        let metrics = shared.metrics.app(&name);
        AppBase {
            rates: crate::rate::AppRates::new(metrics.clone()),
            metrics,
            name,
            shared,
            files_dir,
        }
    }

    /// A connection to the gateway's database from the apps' pool: one
    /// that an instance (of this app or another) handed back after a host
    /// call, so that the apps keep a few open connections between them, not
    /// one each.
    fn db(&self) -> rusqlite::Result<crate::store::Pooled> {
        self.shared.pool.open()
    }

    /// The state the app's last instance kept at a clean stop, if any.
    fn saved_state(&self) -> rusqlite::Result<Option<Vec<u8>>> {
        self.db()
            .and_then(|db| crate::store::saved_state(&db, &self.name))
    }

    /// A store for one instance of `version`: every unit's state, the
    /// memory limit, and the deadline (armed for its instantiation). Also
    /// its I/O clock and the tail of its stderr.
    fn store(
        &self,
        version: &AppVersion,
    ) -> Result<(Store<AppCtx>, Arc<crate::io_clock::IoClock>, StderrTail), AppError> {
        let config = &version.config;
        let device: Arc<str> = config.device.as_str().into();
        let io = Arc::new(crate::io_clock::IoClock::new(config.io_budget()));
        let conn = crate::store::SharedConnection::pooled(self.shared.pool.clone());
        let setup = AppSetup {
            io: &io,
            metrics: &self.metrics,
            app: &self.name,
            device: &device,
            config,
            model: &version.model,
            device_models: &version.device_models,
            files_dir: &self.files_dir,
            rates: &self.rates,
            db: self.shared.pool.database(),
            conn: &conn,
        };
        let units = self.shared.units.instances(&setup)?;
        let stderr_tail = units.wasi.stderr_tail.clone();
        let ctx = AppCtx {
            io: io.clone(),
            units,
            limiter: AppLimiter {
                memory_limit: config.memory_limit_bytes,
                metrics: self.metrics.clone(),
            },
            deadline: Instant::now(),
            call_timeout: config.call_timeout,
        };
        let mut store = Store::new(version.pre.engine(), ctx);
        store.limiter(|ctx| &mut ctx.limiter);
        // Each epoch tick (10 ms) a running guest comes here: past its
        // deadline it traps, otherwise it yields so that other apps and the
        // host's own tasks get the thread.
        store.epoch_deadline_callback(|ctx| {
            let data = ctx.data();
            // Time waited on devices does not count against the deadline.
            if Instant::now() >= data.deadline + data.io.waited() {
                Err(DeadlineExceeded(data.call_timeout).into())
            } else {
                // `yield_now` lets tokio run its timers and I/O before
                // this task is polled again; a plain yield re-wakes it at
                // once, and busy guests then starve other apps' ticks.
                Ok(UpdateDeadline::YieldCustom(
                    1,
                    Box::pin(tokio::task::yield_now()),
                ))
            }
        });
        store.data_mut().deadline = Instant::now() + config.call_timeout;
        store.set_epoch_deadline(1);
        Ok((store, io, stderr_tail))
    }
}

/// How often an app's disk use is measured (before a tick).
const DISK_CHECK: Duration = Duration::from_secs(1);

/// Bytes on disk under `dir` (allocated blocks, so a sparse file counts
/// what it takes), without following links; at most `MAX_ENTRIES` entries
/// are looked at, and an app with more counts as over any quota.
fn disk_bytes(dir: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt as _;
    const MAX_ENTRIES: usize = 100_000;
    let mut total = 0u64;
    let mut seen = 0usize;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            seen += 1;
            if seen > MAX_ENTRIES {
                return u64::MAX;
            }
            let Ok(meta) = entry.path().symlink_metadata() else {
                continue;
            };
            total = total.saturating_add(meta.blocks().saturating_mul(512));
            if meta.is_dir() {
                pending.push(entry.path());
            }
        }
    }
    total
}

struct Probation {
    until: Clock,
    previous: AppVersion,
    /// What the previous version saved, for its `init` if it comes back.
    saved: Option<Vec<u8>>,
    outcome: oneshot::Sender<Outcome>,
}

/// A live instance and its store.
struct Instance {
    store: Store<AppCtx>,
    app: App,
    /// The instance's I/O time (also in its store data).
    io: Arc<crate::io_clock::IoClock>,
    stderr_tail: StderrTail,
    metrics: Arc<AppMetrics>,
    /// When the call in progress started.
    called: Instant,
    /// Which calls are timed to their end.
    timing: crate::metrics::CallSampler,
    /// The component's `on-message` export, if it has one (`bus-app`).
    on_message: Option<OnMessage>,
    /// Bus messages waiting for it.
    messages: Option<tokio::sync::mpsc::Receiver<crate::bus::Message>>,
}

/// The `on-message` export: topic and payload.
type OnMessage = wasmtime::component::TypedFunc<(String, Vec<u8>), ()>;

/// Where the actor is.
enum Phase {
    /// Start an instance, with the state a previous instance handed over.
    Start(Option<Vec<u8>>),
    Serving(Box<Instance>),
    /// Serving HTTP: a listener, and an instance per request.
    ServingHttp(Box<http::HttpApp>),
    /// Crashed; start again at the given time.
    Waiting(Clock),
    Quarantined,
    Stopped,
    /// Shut down or removed: leave the loop.
    Done,
}

impl Actor {
    /// An actor of `version` that no channel reaches, for the benchmarks'
    /// timings of its call path.
    fn detached(version: &AppVersion, shared: &AppShared, files_dir: &Path) -> Actor {
        let (_, events) = mpsc::channel(1);
        let (_, control) = mpsc::channel(1);
        let base = AppBase::new(
            version.config.name.as_str().into(),
            shared.clone(),
            files_dir.to_path_buf(),
        );
        Actor::new(base, version.clone(), events, control).0
    }

    /// An actor of `version` that has not run yet (no crashes, no
    /// restarts), and the watch of its status, starting.
    fn new(
        base: AppBase,
        version: AppVersion,
        events: mpsc::Receiver<AppEvent>,
        control: mpsc::Receiver<Control>,
    ) -> (Actor, watch::Receiver<AppStatus>) {
        let (status, watched) = watch::channel(AppStatus {
            state: AppState::Starting,
            restarts: 0,
            component: version.digest.clone(),
            version: version.number,
            load: version.load,
        });
        let actor = Actor {
            base,
            version,
            events,
            control,
            status,
            crashes: Crashes::default(),
            restarts: 0,
            probation: None,
            disk_checked: None,
            files_measured: None,
            current_io: Default::default(),
        };
        (actor, watched)
    }

    async fn run(mut self, cancel: CancellationToken, stopped: bool) {
        let mut phase = if stopped {
            self.set_state(AppState::Stopped);
            Phase::Stopped
        } else {
            match self.base.saved_state() {
                Ok(state) => Phase::Start(state),
                Err(e) => {
                    tracing::warn!(app = %self.base.name, "could not read the saved state: {e}");
                    Phase::Start(None)
                }
            }
        };
        loop {
            phase = match phase {
                Phase::Start(previous) => self.starting(previous).await,
                Phase::Serving(instance) => self.serve(instance, &cancel).await,
                Phase::ServingHttp(app) => self.serve_http(app, &cancel).await,
                Phase::Waiting(until) => self.waiting(until, &cancel).await,
                Phase::Quarantined => self.idle(&cancel, true).await,
                Phase::Stopped => self.idle(&cancel, false).await,
                Phase::Done => return,
            };
        }
    }

    async fn starting(&mut self, previous: Option<Vec<u8>>) -> Phase {
        self.set_state(AppState::Starting);
        if self.version.pre.serves_http() {
            // Nothing to hand over: its instances live one request each.
            return match self.start_http().await {
                Ok(app) => {
                    self.set_state(AppState::Running);
                    Phase::ServingHttp(Box::new(app))
                }
                Err(error) => self.crashed(error),
            };
        }
        let handed_over = previous.is_some();
        match self.start(previous).await {
            Ok(instance) => {
                if handed_over
                    && let Err(e) = self
                        .base
                        .db()
                        .and_then(|db| crate::store::clear_saved_state(&db, &self.base.name))
                {
                    tracing::warn!(app = %self.base.name, "could not clear the saved state: {e}");
                }
                self.set_state(AppState::Running);
                Phase::Serving(Box::new(instance))
            }
            Err(error) => self.crashed(error),
        }
    }

    /// A crash: roll back if the version is on probation; otherwise back
    /// off before restarting, or quarantine.
    fn crashed(&mut self, error: AppError) -> Phase {
        self.base.metrics.traps.fetch_add(1, Ordering::Relaxed);
        // The next instance's first tick measures the disk again, before
        // the app can write more.
        self.disk_checked = None;
        if let Some(probation) = self.probation.take() {
            let reason = format!(
                "version {} crashed during its probation: {error}",
                self.version.number
            );
            tracing::error!(app = %self.base.name, "{reason}; rolling back to version {}", probation.previous.number);
            self.version = probation.previous;
            self.crashes.clear();
            let _ = probation.outcome.send(Outcome::RolledBack(reason));
            return Phase::Start(probation.saved);
        }
        match self.after_crash(error) {
            Some(backoff) => Phase::Waiting(Clock::now() + backoff),
            None => Phase::Quarantined,
        }
    }

    /// Count a crash; the backoff before the next start, or `None` to quarantine.
    fn after_crash(&mut self, error: AppError) -> Option<Duration> {
        let policy = &self.version.config.restart;
        match self.crashes.record(Clock::now(), policy) {
            Verdict::Quarantine { count } => {
                tracing::error!(
                    app = %self.base.name,
                    "app quarantined after {count} crashes within {}s: {error}",
                    policy.window_s
                );
                self.set_state(AppState::Quarantined {
                    error: error.to_string(),
                });
                None
            }
            Verdict::Restart { after, count } => {
                tracing::warn!(
                    app = %self.base.name,
                    "app crashed: {error}; restarting in {} ms (crash {count} of {} allowed within {}s)",
                    after.as_millis(),
                    policy.max_crashes,
                    policy.window_s
                );
                self.set_state(AppState::Restarting {
                    error: error.to_string(),
                    retry_in: after,
                });
                Some(after)
            }
        }
    }

    /// Instantiate `self.version` and call `init`. An error is the crash report.
    async fn start(&mut self, previous: Option<Vec<u8>>) -> Result<Instance, AppError> {
        let version = self.version.clone();
        self.start_version(&version, previous).await
    }

    async fn start_version(
        &mut self,
        version: &AppVersion,
        previous: Option<Vec<u8>>,
    ) -> Result<Instance, AppError> {
        let started = Instant::now();
        let mut instance = self.instantiate(version).await?;
        let instantiated = started.elapsed();
        let timeout = version.config.call_timeout;
        instance.arm(timeout);
        let result = within(
            instance.called,
            timeout,
            &instance.io,
            std::pin::pin!(instance.app.call_init(
                &mut instance.store,
                &version.config.config,
                previous.as_deref(),
            )),
        )
        .await;
        match instance.finish(result, "init", timeout)? {
            Ok(()) => {
                tracing::info!(
                    app = %self.base.name,
                    version = version.number,
                    component = &version.digest[..12],
                    "app started in {:.3} ms (instantiated in {:.3} ms, then init)",
                    started.elapsed().as_secs_f64() * 1000.0,
                    instantiated.as_secs_f64() * 1000.0
                );
                self.announce_model(version);
                Ok(instance)
            }
            Err(message) => Err(AppError::InitRefused(message)),
        }
    }

    /// Queue the app's device model for the cloud (retained on
    /// `{device}/model`), which checks desired values and actions with it.
    /// A failure costs the cloud its check, not the app its start.
    fn announce_model(&self, version: &AppVersion) {
        // One transaction: its statements each committed on their own were
        // 7 % of a ten-app start's CPU (BENCHMARKS.md, P4).
        let announced = self.base.db().and_then(|mut conn| {
            let tx = conn.transaction()?;
            crate::outbox::announce_model(&tx, &version.config.device, version.model.source())?;
            // What the server changed in its synced tables meanwhile.
            crate::tables::queue_pulls(
                &tx,
                &self.base.name,
                &version.config.device,
                &version.model,
            )?;
            tx.commit()
        });
        if let Err(e) = announced {
            tracing::warn!(app = %self.base.name, "cannot queue the device model for the cloud: {e}");
        }
    }

    async fn instantiate(&mut self, version: &AppVersion) -> Result<Instance, AppError> {
        let Prepared::App(pre) = &*version.pre else {
            return Err(AppError::ServesHttp {
                app: self.base.name.to_string(),
            });
        };
        let config = &version.config;
        let (mut store, io, stderr_tail) = self.base.store(version)?;
        *self.current_io.lock().unwrap_or_else(|e| e.into_inner()) = Some(io.clone());
        let instance = within(
            Instant::now(),
            config.call_timeout,
            &io,
            std::pin::pin!(pre.instance_pre().instantiate_async(&mut store)),
        )
        .await
        .map_err(|e| describe(&e, "instantiation", &stderr_tail))?;
        let app = App::new(&mut store, &instance)
            .map_err(|e| describe(&e, "instantiation", &stderr_tail))?;
        // Optional: only `bus-app` components have it, and only they may
        // subscribe. One of another type is refused rather than ignored.
        let on_message = match instance.get_func(&mut store, "on-message") {
            None => None,
            Some(func) => Some(func.typed::<(String, Vec<u8>), ()>(&store).map_err(|e| {
                AppError::Trap(format!(
                    "the component's on-message export is not on-message: func(topic: string, payload: list<u8>): {e:#}"
                ))
            })?),
        };
        let units = &mut store.data_mut().units;
        units.bus.set_handler(on_message.is_some());
        let messages = units.bus.take_messages();
        Ok(Instance {
            store,
            app,
            io,
            stderr_tail,
            metrics: self.base.metrics.clone(),
            called: Instant::now(),
            timing: Default::default(),
            on_message,
            messages,
        })
    }

    async fn serve(&mut self, mut instance: Box<Instance>, cancel: &CancellationToken) -> Phase {
        let timeout = self.version.config.call_timeout;
        let mut ticker = tokio::time::interval(self.version.config.tick_interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
        let probation_end = self.probation.as_ref().map(|p| p.until);
        loop {
            let probation_done = async {
                match probation_end {
                    Some(until) => tokio::time::sleep_until(until).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                _ = cancel.cancelled() => {
                    self.end_probation(Outcome::Interrupted);
                    self.stop(*instance).await;
                    self.set_state(AppState::Stopped);
                    return Phase::Done;
                }
                Some(control) = self.control.recv() => match control {
                    Control::Swap { version, reply, outcome, .. } if version.pre.serves_http() => {
                        // Another kind of component: no hot swap between
                        // them; the app stops (its state saved) and starts
                        // on the new one.
                        tracing::info!(app = %self.base.name, "version {} serves HTTP: restarting the app on it", version.number);
                        self.end_probation(Outcome::Interrupted);
                        self.stop(*instance).await;
                        self.install(*version, reply, outcome);
                        return Phase::Start(None);
                    }
                    Control::Swap { version, probation, reply, outcome } => {
                        return self.swap(instance, *version, probation, reply, outcome).await;
                    }
                    Control::Stop(done) => {
                        self.end_probation(Outcome::Interrupted);
                        self.stop(*instance).await;
                        self.set_state(AppState::Stopped);
                        let _ = done.send(());
                        return Phase::Stopped;
                    }
                    Control::Start(done) => { let _ = done.send(()); }
                    Control::Remove(done) => {
                        self.end_probation(Outcome::Interrupted);
                        self.stop(*instance).await;
                        self.set_state(AppState::Stopped);
                        let _ = done.send(());
                        return Phase::Done;
                    }
                },
                _ = probation_done => {
                    tracing::info!(app = %self.base.name, version = self.version.number, "version passed its probation");
                    self.end_probation(Outcome::Kept);
                    return Phase::Serving(instance);
                }
                Some(event) = self.events.recv() => {
                    // Whoever asked has given up (and answered "did not
                    // answer in time"): a request nobody waits for any
                    // more is not run late.
                    if event.abandoned() {
                        tracing::warn!(app = %self.base.name, "skipping a request whose sender stopped waiting for it");
                        continue;
                    }
                    event.mark_started();
                    self.base.metrics.events.fetch_add(1, Ordering::Relaxed);
                    if let Err(crash) = instance.handle(event, timeout).await {
                        return self.crashed(crash);
                    }
                }
                Some(message) = next_message(&mut instance.messages) => {
                    self.base.metrics.events.fetch_add(1, Ordering::Relaxed);
                    if let Err(crash) = instance.deliver(message, timeout).await {
                        return self.crashed(crash);
                    }
                }
                _ = ticker.tick() => {
                    if let Err(over) = self.check_disk().await {
                        return self.crashed(over);
                    }
                    self.base.metrics.events.fetch_add(1, Ordering::Relaxed);
                    instance.arm(timeout);
                    let result = within(instance.called, timeout, &instance.io, std::pin::pin!(instance.app.call_on_tick(&mut instance.store, wall_ns_at(instance.called)))).await;
                    if let Err(crash) = instance.finish(result, "on-tick", timeout) {
                        return self.crashed(crash);
                    }
                }
            }
        }
    }

    /// Hot swap: the new version is instantiated first; the old one saves
    /// its state, which the new one's `init` receives. Only if that
    /// succeeds does the new version take over; otherwise the old one keeps
    /// running as if nothing happened.
    async fn swap(
        &mut self,
        mut old: Box<Instance>,
        version: AppVersion,
        probation: Duration,
        reply: oneshot::Sender<Result<(), AppError>>,
        outcome: oneshot::Sender<Outcome>,
    ) -> Phase {
        self.end_probation(Outcome::Interrupted);
        let started = Instant::now();
        let mut new = match self.instantiate(&version).await {
            Ok(i) => i,
            Err(e) => {
                self.keep_io(&old);
                let _ = reply.send(Err(AppError::NotStarted {
                    reason: Box::new(e),
                    running: self.version.number,
                }));
                return Phase::Serving(old);
            }
        };
        let timeout = self.version.config.call_timeout;
        let saved = match old.save(timeout).await {
            Ok(state) => state,
            Err(crash) => {
                // The old instance is gone; carry on with the new one, without state.
                tracing::warn!(app = %self.base.name, "save failed during the swap: {crash}");
                None
            }
        };
        new.arm(version.config.call_timeout);
        let init = within(
            new.called,
            version.config.call_timeout,
            &new.io,
            std::pin::pin!(new.app.call_init(
                &mut new.store,
                &version.config.config,
                saved.as_deref()
            )),
        )
        .await;
        match new.finish(init, "init", version.config.call_timeout) {
            Ok(Ok(())) => {}
            failed => {
                let why = match failed {
                    Ok(Err(message)) => AppError::InitRefused(message),
                    Err(crash) => crash,
                    Ok(Ok(())) => unreachable!(),
                };
                tracing::warn!(app = %self.base.name, "version {} refused: {why}; version {} keeps running", version.number, self.version.number);
                self.keep_io(&old);
                let _ = reply.send(Err(AppError::SwapRefused {
                    reason: Box::new(why),
                    running: self.version.number,
                }));
                return Phase::Serving(old);
            }
        }
        let pause = started.elapsed();
        tracing::info!(
            app = %self.base.name,
            from = self.version.number,
            to = version.number,
            component = &version.digest[..12],
            "hot swap done in {} us; on probation for {} s",
            pause.as_micros(),
            probation.as_secs()
        );
        let previous = std::mem::replace(&mut self.version, version);
        self.crashes.clear();
        self.probation = Some(Probation {
            until: Clock::now() + probation,
            previous,
            saved,
            outcome,
        });
        self.set_state(AppState::Running);
        let _ = reply.send(Ok(()));
        drop(old);
        Phase::Serving(new.into())
    }

    /// A refused swap: the running instance's I/O clock is the one a stop
    /// cancels again.
    fn keep_io(&self, running: &Instance) {
        *self.current_io.lock().unwrap_or_else(|e| e.into_inner()) = Some(running.io.clone());
    }

    fn end_probation(&mut self, outcome: Outcome) {
        if let Some(p) = self.probation.take() {
            let _ = p.outcome.send(outcome);
        }
    }

    /// Install a version while no instance runs (restarting, quarantined,
    /// stopped); it starts at once unless the app is stopped.
    fn install(
        &mut self,
        version: AppVersion,
        reply: oneshot::Sender<Result<(), AppError>>,
        outcome: oneshot::Sender<Outcome>,
    ) {
        self.end_probation(Outcome::Interrupted);
        tracing::info!(app = %self.base.name, from = self.version.number, to = version.number, "new version installed");
        self.version = version;
        self.crashes.clear();
        let _ = reply.send(Ok(()));
        // Nothing was running to go back to: the version is kept.
        let _ = outcome.send(Outcome::Kept);
    }

    async fn waiting(&mut self, until: Clock, cancel: &CancellationToken) -> Phase {
        tokio::select! {
            _ = tokio::time::sleep_until(until) => {
                self.restarts += 1;
                Phase::Start(None)
            }
            _ = cancel.cancelled() => {
                self.set_state(AppState::Stopped);
                Phase::Done
            }
            Some(control) = self.control.recv() => match control {
                Control::Swap { version, reply, outcome, .. } => {
                    self.install(*version, reply, outcome);
                    Phase::Start(None)
                }
                Control::Stop(done) => {
                    self.set_state(AppState::Stopped);
                    let _ = done.send(());
                    Phase::Stopped
                }
                Control::Start(done) => { let _ = done.send(()); Phase::Waiting(until) }
                Control::Remove(done) => {
                    self.set_state(AppState::Stopped);
                    let _ = done.send(());
                    Phase::Done
                }
            },
        }
    }

    /// Quarantined or stopped: answer events with an error until a new
    /// version, a start, or shutdown.
    async fn idle(&mut self, cancel: &CancellationToken, quarantined: bool) -> Phase {
        let this = if quarantined {
            Phase::Quarantined
        } else {
            Phase::Stopped
        };
        tokio::select! {
            _ = cancel.cancelled() => Phase::Done,
            Some(control) = self.control.recv() => match control {
                Control::Swap { version, reply, outcome, .. } => {
                    self.install(*version, reply, outcome);
                    if quarantined { Phase::Start(None) } else { this }
                }
                Control::Stop(done) => {
                    self.set_state(AppState::Stopped);
                    let _ = done.send(());
                    Phase::Stopped
                }
                Control::Start(done) => {
                    let _ = done.send(());
                    let saved = self.base.saved_state().unwrap_or_default();
                    Phase::Start(saved)
                }
                Control::Remove(done) => {
                    let _ = done.send(());
                    Phase::Done
                }
            },
            Some(event) = self.events.recv() => {
                let app = self.base.name.to_string();
                let error = if quarantined {
                    AppError::Quarantined { app }
                } else {
                    AppError::Stopped { app }
                };
                match event {
                    AppEvent::Desired { reply, .. } => { let _ = reply.send(Err(error)); }
                    AppEvent::Action { reply, .. } => { let _ = reply.send(Err(error)); }
                }
                this
            }
        }
    }

    /// Clean stop: ask the guest for its state and keep it for the next start.
    async fn stop(&mut self, mut instance: Instance) {
        let timeout = self.version.config.call_timeout;
        match instance.save(timeout).await {
            Ok(Some(state)) if state.len() > MAX_SAVED_STATE => tracing::warn!(
                app = %self.base.name,
                "the state `save` returned ({} bytes) is over the limit of {MAX_SAVED_STATE}: not kept; keep large state in storage",
                state.len()
            ),
            Ok(Some(state)) => {
                if let Err(e) = self
                    .base
                    .db()
                    .and_then(|db| crate::store::put_saved_state(&db, &self.base.name, &state))
                {
                    tracing::warn!(app = %self.base.name, "could not keep the saved state: {e}");
                }
            }
            Ok(None) => {}
            Err(crash) => tracing::warn!(app = %self.base.name, "save failed at stop: {crash}"),
        }
    }

    /// At most once a [`DISK_CHECK`]: whether the app's directory and the
    /// uploads it has waiting fit its `disk_quota_mib`. An app over it
    /// counts as crashed (and ends quarantined if it stays over), so that
    /// it cannot fill the disk that the database and the other apps share.
    async fn check_disk(&mut self) -> Result<(), AppError> {
        if self
            .disk_checked
            .is_some_and(|at| at.elapsed() < DISK_CHECK)
        {
            return Ok(());
        }
        self.disk_checked = Some(Instant::now());
        // The walk may take a while in a large directory: off the runtime's
        // worker, so no other app's ticks wait on it.
        let dir = self.base.files_dir.clone();
        let files = tokio::task::spawn_blocking(move || disk_bytes(&dir))
            .await
            .unwrap_or(0);
        // The content and storage units own their tables and say what they hold.
        // A database that cannot be opened counts as holding nothing, as a
        // failed query does.
        let (waiting, stored) = self.base.db().map_or((0, 0), |db| {
            (
                crate::content::waiting_uploads(&db, &self.base.name).map_or(0, |(_, bytes)| bytes),
                crate::storage::usage(&db, &self.base.name).map_or(0, |(_, bytes)| bytes),
            )
        });
        let quota = self.version.config.disk_quota_bytes;
        let used = files.saturating_add(waiting).saturating_add(stored);
        if used > quota {
            return Err(AppError::Trap(format!(
                "disk quota: the app's directory ({files} bytes), its waiting uploads ({waiting} bytes) and its storage ({stored} bytes) are over its disk_quota_mib of {} MiB; it stays stopped while they are",
                quota >> 20
            )));
        }
        let grew = self
            .files_measured
            .replace(files)
            .map_or(0, |before| files.saturating_sub(before));
        let reserve = self.base.shared.disk_reserve_bytes;
        if grew > 0
            && let Some(free) = crate::content::transfer::free_bytes(&self.base.files_dir)
            && free < reserve
        {
            return Err(AppError::Trap(format!(
                "disk reserve: the app's directory grew by {grew} bytes while the disk has {free} bytes free, less than the {reserve} bytes kept for the database and the outbox ([content] disk_reserve_mib)"
            )));
        }
        Ok(())
    }

    fn set_state(&mut self, state: AppState) {
        let detail = state.error().map(str::to_string);
        if let Err(e) = self.base.db().and_then(|db| {
            crate::store::set_app_state(
                &db,
                &self.base.name,
                state.name(),
                detail.as_deref(),
                self.restarts,
                &self.version.digest,
            )
        }) {
            tracing::warn!(app = %self.base.name, "could not record the app state: {e}");
        }
        self.status.send_replace(AppStatus {
            state,
            restarts: self.restarts,
            component: self.version.digest.clone(),
            version: self.version.number,
            load: self.version.load,
        });
        // Only once the new state is readable: a status built between the
        // signal and the update would carry the old state (a swapped-in
        // component, say) until the next periodic status.
        self.base.shared.status_signal.notify_one();
    }
}

impl Instance {
    /// Set the deadline for the next export call.
    fn arm(&mut self, timeout: Duration) {
        self.stderr_tail.clear();
        self.called = Instant::now();
        self.timing.start(self.called);
        self.io.reset();
        self.store.data_mut().deadline = self.called + timeout;
        self.store.set_epoch_deadline(1);
    }

    /// After an export call: hand over buffered points and turn a trap into
    /// a crash report.
    fn finish<T>(
        &mut self,
        result: wasmtime::Result<T>,
        call: &str,
        _timeout: Duration,
    ) -> Result<T, AppError> {
        self.metrics
            .actor_call(self.timing.took(self.called, Instant::now));
        self.store.data_mut().units.device.flush();
        result.map_err(|e| describe(&e, call, &self.stderr_tail))
    }

    /// Ask the guest for the state to hand to its next instance (`save`):
    /// before a swap and at a clean stop. An error is the crash report.
    async fn save(&mut self, timeout: Duration) -> Result<Option<Vec<u8>>, AppError> {
        self.arm(timeout);
        let saved = within(
            self.called,
            timeout,
            &self.io,
            std::pin::pin!(self.app.call_save(&mut self.store)),
        )
        .await;
        self.finish(saved, "save", timeout)
    }

    /// Hand one bus message to `on-message`. An error is the crash report.
    async fn deliver(
        &mut self,
        message: crate::bus::Message,
        timeout: Duration,
    ) -> Result<(), AppError> {
        let Some(on_message) = self.on_message else {
            return Ok(()); // never subscribed: nothing is routed to it
        };
        self.arm(timeout);
        let call = on_message.call_async(&mut self.store, (message.topic, message.payload));
        let result = within(self.called, timeout, &self.io, std::pin::pin!(call)).await;
        self.finish(result, "on-message", timeout)
    }

    /// Handle one event and answer it. An error is the crash report.
    async fn handle(&mut self, event: AppEvent, timeout: Duration) -> Result<(), AppError> {
        match event {
            AppEvent::Desired {
                device,
                changes,
                reply,
                ..
            } => {
                self.arm(timeout);
                let result = within(
                    self.called,
                    timeout,
                    &self.io,
                    std::pin::pin!(self.app.call_on_desired(&mut self.store, &device, &changes)),
                )
                .await;
                match self.finish(result, "on-desired", timeout) {
                    Ok(outcome) => {
                        let _ = reply.send(outcome.map_err(AppError::Refused));
                        Ok(())
                    }
                    Err(crash) => {
                        let _ = reply.send(Err(AppError::Crashed(Box::new(crash.clone()))));
                        Err(crash)
                    }
                }
            }
            AppEvent::Action {
                device,
                name,
                argument,
                reply,
                ..
            } => {
                self.arm(timeout);
                let result = within(
                    self.called,
                    timeout,
                    &self.io,
                    std::pin::pin!(self.app.call_on_action(
                        &mut self.store,
                        &device,
                        &name,
                        argument.as_ref()
                    )),
                )
                .await;
                match self.finish(result, "on-action", timeout) {
                    Ok(outcome) => {
                        let _ = reply.send(outcome.map_err(AppError::Refused));
                        Ok(())
                    }
                    Err(crash) => {
                        let _ = reply.send(Err(AppError::Crashed(Box::new(crash.clone()))));
                        Err(crash)
                    }
                }
            }
        }
    }
}

/// The next message in `messages`, or never when there is no queue.
async fn next_message(
    messages: &mut Option<tokio::sync::mpsc::Receiver<crate::bus::Message>>,
) -> Option<crate::bus::Message> {
    match messages {
        Some(messages) => messages.recv().await,
        None => std::future::pending().await,
    }
}

/// Say why a call failed, for the log, the app's state and the cloud.
/// How long a call may stay past its deadline inside a host call (a sleep,
/// a wait on a pollable), where the epoch deadline cannot reach it, before
/// it is cut off. The call's future is then dropped, with its instance, and
/// the app counts as crashed.
pub const HOST_CALL_GRACE: Duration = Duration::from_millis(500);

/// Bound an export call in wall time: its deadline plus [`HOST_CALL_GRACE`],
/// counted from `started` (the call's [`Instance::arm`], whose clock read
/// serves both: one read less on every call). The call is pinned where it
/// is made and taken by reference: wasmtime's call futures are large, and
/// moving one into this function's future was a tenth of what dispatch
/// added to a bare call (P1).
async fn within<T, F: std::future::Future<Output = wasmtime::Result<T>>>(
    started: Instant,
    timeout: Duration,
    io: &crate::io_clock::IoClock,
    mut call: std::pin::Pin<&mut F>,
) -> wasmtime::Result<T> {
    // Most calls run to their end on the first poll, never waiting in a host
    // call: they need no timer. Arming one registers it in tokio's timer
    // wheel and removes it again, which was most of what dispatch added to
    // a bare call (P1). A call that waits gets its bound from its start.
    let first = std::future::poll_fn(|cx| std::task::Poll::Ready(call.as_mut().poll(cx))).await;
    if let std::task::Poll::Ready(result) = first {
        return result;
    }
    // Device I/O may add its budget: each wait is cut at what is left of it.
    let bound = Clock::from_std(started) + timeout + HOST_CALL_GRACE + io.budget();
    match tokio::time::timeout_at(bound, call).await {
        Ok(result) => result,
        Err(_) => Err(StuckInHostCall(timeout).into()),
    }
}

/// A call stayed in a host call past its deadline and was cut off.
#[derive(Debug, thiserror::Error)]
#[error("the call ran past its deadline of {} ms, waiting in a host call (a sleep, say); it was cut off and its instance dropped", .0.as_millis())]
struct StuckInHostCall(Duration);

fn describe(error: &wasmtime::Error, call: &str, stderr_tail: &StderrTail) -> AppError {
    let mut text = if let Some(deadline) = error.downcast_ref::<DeadlineExceeded>() {
        format!("{call}: {deadline}")
    } else if let Some(stuck) = error.downcast_ref::<StuckInHostCall>() {
        format!("{call}: {stuck}")
    } else if let Some(memory) = error.downcast_ref::<MemoryLimitHit>() {
        format!("{call}: {memory}")
    } else if let Some(trap) = error.downcast_ref::<Trap>() {
        format!("{call} trapped: {trap}")
    } else {
        // The whole chain: the outermost context alone ("error while
        // executing at wasm backtrace ...") can hide the cause.
        format!("{call} failed: {error:#}")
    };
    if let Some(tail) = stderr_tail.summary() {
        text.push_str(&format!(" (guest stderr: {tail})"));
    }
    AppError::Trap(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_crash_report_keeps_the_whole_chain_of_its_error() {
        let error = wasmtime::Error::msg("the root cause: a host bug")
            .context("error while executing at wasm backtrace: 0: app::on_tick");
        let report = describe(&error, "on-tick", &StderrTail::default()).to_string();
        assert!(
            report.starts_with("on-tick failed: error while executing")
                && report.contains("the root cause: a host bug"),
            "{report}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_stuck_in_a_host_call_is_cut_off_after_its_deadline_and_the_grace() {
        let timeout = Duration::from_millis(300);
        let started = Clock::now();
        let no_io = crate::io_clock::IoClock::default();
        let stuck = within(
            started.into_std(),
            timeout,
            &no_io,
            std::pin::pin!(async {
                tokio::time::sleep(Duration::from_secs(90)).await;
                Ok(())
            }),
        )
        .await
        .expect_err("cut off");
        assert_eq!(started.elapsed(), timeout + HOST_CALL_GRACE);
        let report = describe(&stuck, "on-tick", &StderrTail::default()).to_string();
        assert_eq!(
            report,
            "on-tick: the call ran past its deadline of 300 ms, waiting in a host call (a sleep, say); it was cut off and its instance dropped"
        );
        // A call that returns in time is left alone, whether it finishes
        // at once or after a wait.
        assert_eq!(
            within(
                Clock::now().into_std(),
                timeout,
                &no_io,
                std::pin::pin!(async { Ok(7) })
            )
            .await
            .expect("in time"),
            7
        );
        let waits = std::pin::pin!(async {
            tokio::time::sleep(timeout).await;
            Ok(8)
        });
        let waits = within(Clock::now().into_std(), timeout, &no_io, waits);
        assert_eq!(waits.await.expect("in time"), 8);
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_that_waits_is_bounded_from_its_start_not_from_its_first_wait() {
        let timeout = Duration::from_millis(300);
        let started = Clock::now();
        let no_io = crate::io_clock::IoClock::default();
        // 200 ms pass in the call's first poll (a guest computing before
        // it waits), then it waits for ever.
        let call = async {
            tokio::time::advance(Duration::from_millis(200)).await;
            std::future::pending::<wasmtime::Result<()>>().await
        };
        within(started.into_std(), timeout, &no_io, std::pin::pin!(call))
            .await
            .expect_err("cut off");
        assert_eq!(started.elapsed(), timeout + HOST_CALL_GRACE);
    }
}

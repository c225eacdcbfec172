//! The app actor: start (instantiate + `init`), serve events and ticks,
//! and on a crash restart with backoff or quarantine.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use wasmtime::component::ResourceTable;
use wasmtime::{Store, Trap, UpdateDeadline};

use super::{
    AppCtx, AppEvent, AppHandle, AppLimiter, AppState, AppStatus, DeadlineExceeded, EVENT_QUEUE,
    MemoryLimitHit,
};
use crate::bindings::{App, AppPre};
use crate::config::AppConfig;
use crate::device::{DeviceCtx, DeviceDeps};
use crate::log::LogCtx;
use crate::model::DeviceModel;
use crate::outbox::IngestSender;
use crate::outbox::Usage;
use crate::storage::StorageCtx;
use crate::store::Database;
use crate::value::now_ns;
use crate::wasi::StderrTail;

/// Everything an actor needs to run one app.
pub struct AppSpec {
    pub config: AppConfig,
    pub model: Arc<DeviceModel>,
    pub pre: AppPre<AppCtx>,
    pub digest: String,
    pub db: Database,
    /// The outbox's totals and limits.
    pub usage: Arc<Usage>,
    /// The app's own directory, its only WASI preopen.
    pub files_dir: PathBuf,
    pub ingest: IngestSender,
    /// Signalled when a report or alert reaches the outbox.
    pub outbox_signal: Arc<Notify>,
    /// Signalled when the app's state changes.
    pub status_signal: Arc<Notify>,
}

/// Start the app's actor on `tasks`; it runs until `cancel`.
pub fn spawn(
    spec: AppSpec,
    cancel: CancellationToken,
    tasks: &mut JoinSet<()>,
) -> anyhow::Result<AppHandle> {
    let name: Arc<str> = spec.config.name.as_str().into();
    let (events_tx, events) = mpsc::channel(EVENT_QUEUE);
    let (status_tx, status) = watch::channel(AppStatus {
        state: AppState::Starting,
        restarts: 0,
        component: spec.digest.clone(),
    });
    let db = spec.db.open()?;
    let actor = Actor {
        name: name.clone(),
        spec,
        events,
        status: status_tx,
        db,
        crashes: VecDeque::new(),
        restarts: 0,
    };
    tasks.spawn(actor.run(cancel));
    Ok(AppHandle {
        name,
        events: events_tx,
        status,
    })
}

struct Actor {
    name: Arc<str>,
    spec: AppSpec,
    events: mpsc::Receiver<AppEvent>,
    status: watch::Sender<AppStatus>,
    /// For the app's row in `apps` and its saved state.
    db: rusqlite::Connection,
    /// When the recent crashes happened, within the restart window.
    crashes: VecDeque<Instant>,
    restarts: u64,
}

/// A live instance and its store.
struct Instance {
    store: Store<AppCtx>,
    app: App,
    stderr_tail: StderrTail,
}

enum Ended {
    Shutdown,
    Crashed(String),
}

impl Actor {
    async fn run(mut self, cancel: CancellationToken) {
        let mut previous = match crate::store::saved_state(&self.db, &self.name) {
            Ok(state) => state,
            Err(e) => {
                tracing::warn!(app = %self.name, "could not read the saved state: {e}");
                None
            }
        };
        loop {
            self.set_state(AppState::Starting);
            let handed_over = previous.is_some();
            let ended = match self.start(previous.take()).await {
                Ok(mut instance) => {
                    if handed_over
                        && let Err(e) = crate::store::clear_saved_state(&self.db, &self.name)
                    {
                        tracing::warn!(app = %self.name, "could not clear the saved state: {e}");
                    }
                    self.set_state(AppState::Running);
                    match self.serve(&mut instance, &cancel).await {
                        Ended::Shutdown => {
                            self.stop(instance).await;
                            self.set_state(AppState::Stopped);
                            return;
                        }
                        crashed => crashed,
                    }
                }
                Err(error) => Ended::Crashed(error),
            };
            let Ended::Crashed(error) = ended else { return };
            if cancel.is_cancelled() {
                self.set_state(AppState::Stopped);
                return;
            }
            match self.after_crash(error) {
                Some(backoff) => {
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = cancel.cancelled() => {
                            self.set_state(AppState::Stopped);
                            return;
                        }
                    }
                    self.restarts += 1;
                }
                None => {
                    self.quarantined(&cancel).await;
                    return;
                }
            }
        }
    }

    /// Count a crash; the backoff before the next start, or `None` to quarantine.
    fn after_crash(&mut self, error: String) -> Option<Duration> {
        let policy = &self.spec.config.restart;
        let window = Duration::from_secs(policy.window_s);
        let now = Instant::now();
        self.crashes.push_back(now);
        while self
            .crashes
            .front()
            .is_some_and(|t| now.duration_since(*t) > window)
        {
            self.crashes.pop_front();
        }
        let count = self.crashes.len() as u32;
        if count >= policy.max_crashes {
            tracing::error!(
                app = %self.name,
                "app quarantined after {count} crashes within {}s: {error}",
                policy.window_s
            );
            self.set_state(AppState::Quarantined { error });
            return None;
        }
        let factor = 1u64 << (count - 1).min(20);
        let backoff = Duration::from_millis(
            policy
                .backoff_initial_ms
                .saturating_mul(factor)
                .min(policy.backoff_max_ms),
        );
        tracing::warn!(
            app = %self.name,
            "app crashed: {error}; restarting in {} ms (crash {count} of {} allowed within {}s)",
            backoff.as_millis(),
            policy.max_crashes,
            policy.window_s
        );
        self.set_state(AppState::Restarting {
            error,
            retry_in: backoff,
        });
        Some(backoff)
    }

    /// Instantiate and call `init`. An error is the crash report.
    async fn start(&mut self, previous: Option<Vec<u8>>) -> Result<Instance, String> {
        let started = Instant::now();
        let mut instance = self.instantiate().await?;
        let config = self.spec.config.config.clone();
        instance.arm(self.spec.config.call_timeout);
        let result = instance
            .app
            .call_init(&mut instance.store, &config, previous.as_deref())
            .await;
        match instance.finish(result, "init", self.spec.config.call_timeout)? {
            Ok(()) => {
                tracing::info!(
                    app = %self.name,
                    component = &self.spec.digest[..12],
                    "app started in {} ms",
                    started.elapsed().as_millis()
                );
                Ok(instance)
            }
            Err(message) => Err(format!("init returned an error: {message}")),
        }
    }

    async fn instantiate(&mut self) -> Result<Instance, String> {
        let spec = &self.spec;
        let stderr_tail = StderrTail::default();
        let open = || {
            spec.db
                .open()
                .map_err(|e| format!("opening the database: {e}"))
        };
        let ctx = AppCtx {
            wasi: crate::wasi::context(&self.name, &spec.files_dir, &stderr_tail)
                .map_err(|e| format!("preparing WASI: {e:#}"))?,
            table: ResourceTable::new(),
            limiter: AppLimiter {
                memory_limit: spec.config.memory_limit_bytes,
            },
            device: DeviceCtx::new(DeviceDeps {
                app: self.name.clone(),
                default_device: spec.config.device.clone(),
                model: spec.model.clone(),
                db: open()?,
                ingest: spec.ingest.clone(),
                usage: spec.usage.clone(),
                outbox_signal: spec.outbox_signal.clone(),
            }),
            storage: StorageCtx::new(self.name.clone(), open()?, spec.config.storage_quota_bytes)
                .map_err(|e| format!("opening storage: {e}"))?,
            log: LogCtx::new(self.name.clone()),
            deadline: Instant::now(),
            call_timeout: spec.config.call_timeout,
        };
        let mut store = Store::new(spec.pre.engine(), ctx);
        store.limiter(|ctx| &mut ctx.limiter);
        // Each epoch tick (10 ms) a running guest comes here: past its
        // deadline it traps, otherwise it yields so that other apps and the
        // host's own tasks get the thread.
        store.epoch_deadline_callback(|ctx| {
            let data = ctx.data();
            if Instant::now() >= data.deadline {
                Err(DeadlineExceeded(data.call_timeout).into())
            } else {
                Ok(UpdateDeadline::Yield(1))
            }
        });
        let timeout = spec.config.call_timeout;
        store.data_mut().deadline = Instant::now() + timeout;
        store.set_epoch_deadline(1);
        let app = spec
            .pre
            .instantiate_async(&mut store)
            .await
            .map_err(|e| describe(&e, "instantiation", &stderr_tail))?;
        Ok(Instance {
            store,
            app,
            stderr_tail,
        })
    }

    async fn serve(&mut self, instance: &mut Instance, cancel: &CancellationToken) -> Ended {
        let timeout = self.spec.config.call_timeout;
        let mut ticker = tokio::time::interval(self.spec.config.tick_interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => return Ended::Shutdown,
                Some(event) = self.events.recv() => {
                    if let Err(crash) = instance.handle(event, timeout).await {
                        return Ended::Crashed(crash);
                    }
                }
                _ = ticker.tick() => {
                    instance.arm(timeout);
                    let result = instance.app.call_on_tick(&mut instance.store, now_ns()).await;
                    if let Err(crash) = instance.finish(result, "on-tick", timeout) {
                        return Ended::Crashed(crash);
                    }
                }
            }
        }
    }

    /// Clean stop: ask the guest for its state and keep it for the next start.
    async fn stop(&mut self, mut instance: Instance) {
        let timeout = self.spec.config.call_timeout;
        instance.arm(timeout);
        let result = instance.app.call_save(&mut instance.store).await;
        match instance.finish(result, "save", timeout) {
            Ok(Some(state)) => {
                if let Err(e) = crate::store::put_saved_state(&self.db, &self.name, &state) {
                    tracing::warn!(app = %self.name, "could not keep the saved state: {e}");
                }
            }
            Ok(None) => {}
            Err(crash) => tracing::warn!(app = %self.name, "save failed at shutdown: {crash}"),
        }
    }

    /// Stay quarantined until shutdown, answering every event with an error.
    async fn quarantined(&mut self, cancel: &CancellationToken) {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                Some(event) = self.events.recv() => {
                    let error = format!("app {} is quarantined", self.name);
                    match event {
                        AppEvent::Desired { reply, .. } => { let _ = reply.send(Err(error)); }
                        AppEvent::Action { reply, .. } => { let _ = reply.send(Err(error)); }
                    }
                }
            }
        }
    }

    fn set_state(&mut self, state: AppState) {
        let detail = state.error().map(str::to_string);
        if let Err(e) = crate::store::set_app_state(
            &self.db,
            &self.name,
            state.name(),
            detail.as_deref(),
            self.restarts,
            &self.spec.digest,
        ) {
            tracing::warn!(app = %self.name, "could not record the app state: {e}");
        }
        self.spec.status_signal.notify_one();
        self.status.send_replace(AppStatus {
            state,
            restarts: self.restarts,
            component: self.spec.digest.clone(),
        });
    }
}

impl Instance {
    /// Set the deadline for the next export call.
    fn arm(&mut self, timeout: Duration) {
        self.stderr_tail.clear();
        self.store.data_mut().deadline = Instant::now() + timeout;
        self.store.set_epoch_deadline(1);
    }

    /// After an export call: hand over buffered points and turn a trap into
    /// a crash report.
    fn finish<T>(
        &mut self,
        result: wasmtime::Result<T>,
        call: &str,
        _timeout: Duration,
    ) -> Result<T, String> {
        self.store.data_mut().device.flush();
        result.map_err(|e| describe(&e, call, &self.stderr_tail))
    }

    async fn handle(&mut self, event: AppEvent, timeout: Duration) -> Result<(), String> {
        match event {
            AppEvent::Desired {
                device,
                changes,
                reply,
            } => {
                self.arm(timeout);
                let result = self
                    .app
                    .call_on_desired(&mut self.store, &device, &changes)
                    .await;
                match self.finish(result, "on-desired", timeout) {
                    Ok(outcome) => {
                        let _ = reply.send(outcome);
                        Ok(())
                    }
                    Err(crash) => {
                        let _ = reply.send(Err(format!("the app crashed: {crash}")));
                        Err(crash)
                    }
                }
            }
            AppEvent::Action {
                device,
                name,
                argument,
                reply,
            } => {
                self.arm(timeout);
                let result = self
                    .app
                    .call_on_action(&mut self.store, &device, &name, argument.as_ref())
                    .await;
                match self.finish(result, "on-action", timeout) {
                    Ok(outcome) => {
                        let _ = reply.send(outcome);
                        Ok(())
                    }
                    Err(crash) => {
                        let _ = reply.send(Err(format!("the app crashed: {crash}")));
                        Err(crash)
                    }
                }
            }
        }
    }
}

/// Say why a call failed, for the log, the app's state and the cloud.
fn describe(error: &wasmtime::Error, call: &str, stderr_tail: &StderrTail) -> String {
    let mut text = if let Some(deadline) = error.downcast_ref::<DeadlineExceeded>() {
        format!("{call}: {deadline}")
    } else if let Some(memory) = error.downcast_ref::<MemoryLimitHit>() {
        format!("{call}: {memory}")
    } else if let Some(trap) = error.downcast_ref::<Trap>() {
        format!("{call} trapped: {trap}")
    } else {
        format!("{call} failed: {error}")
    };
    if let Some(tail) = stderr_tail.summary() {
        text.push_str(&format!(" (guest stderr: {tail})"));
    }
    text
}

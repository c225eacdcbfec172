//! Deployment: every way a new version of an app arrives (gateway.toml at
//! start, `wasmgate deploy` through the admin socket, the cloud, a watched
//! file), checked the same way, registered, and swapped in without
//! restarting the gateway.
//!
//! The [`Deployer`] is one task that owns the engine's loading, the
//! registry and the artifact store, and talks to the app actors. A new
//! version is compiled and linked off the apps' event path, then handed to
//! the app's actor, which swaps it in between two events. A version whose
//! `init` fails never takes over; one that crashes during its probation is
//! rolled back by the actor, and the deployer records why.

pub mod admin;
pub mod artifacts;
pub mod cloud;
pub mod registry;
pub mod signing;
pub mod watch;

use anyhow::Context as _;
use serde::Serialize;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::app::{
    self, AppError, AppShared, AppSpec, AppVersion, Control, Directory, Entry, Outcome,
};
use crate::config::Config;
use crate::engine::Runtime;
use crate::model::{DeviceModel, ModelError, check_name};
use crate::report::Reporter;
use crate::wire::protocol::AppInfo;
use crate::wire::protocol::Load;
use artifacts::Artifacts;
use registry::{Outcome as VersionOutcome, Spec};

/// How long a new version must run without crashing before it is kept.
pub const DEFAULT_PROBATION: Duration = Duration::from_secs(30);

/// Versions kept for rollback besides the running one.
pub const DEFAULT_KEEP: usize = 3;

/// A new version to deploy. What is not given is taken from the version
/// the app runs now.
#[derive(Debug, Clone)]
pub struct DeployRequest {
    pub app: String,
    pub component: Vec<u8>,
    pub model: Option<serde_json::Value>,
    pub config: Option<Vec<(String, String)>>,
    /// What the app may reach; `None` keeps the running version's.
    pub grants: Option<crate::grants::Grants>,
    /// Everything at once (gateway.toml and watch mode give it).
    pub spec: Option<Spec>,
    /// `config`, `cli`, `cloud`, `watch`.
    pub source: String,
}

/// What `wasmgate apps` shows of one app: the gateway's report of it
/// (`crate::report`), and its versions in the registry.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct AppReport {
    #[serde(flatten)]
    pub app: AppInfo,
    pub versions: Vec<VersionReport>,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct VersionReport {
    pub version: i64,
    pub digest: String,
    pub source: String,
    pub deployed_at: i64,
    pub outcome: VersionOutcome,
}

/// Why the deployer refused or failed a command: what [`DeployClient`]'s
/// methods give back (the admin socket and the cloud show its message).
///
/// Each variant's message is the whole text: a wrapped error is part of
/// it, and only the registry's is also a `source`.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error("no app {0}")]
    NoSuchApp(String),
    /// The app's name is not a valid name (why).
    #[error("app name: {0}")]
    AppName(String),
    /// The device's name is not a valid name (why).
    #[error("device: {0}")]
    DeviceName(String),
    #[error("the component is {} MiB, over the limit of {} MiB", .bytes >> 20, MAX_ARTIFACT_BYTES >> 20)]
    TooLarge { bytes: usize },
    /// A first deployment came without a device model.
    #[error("app {app} is new: its device model is needed (--model FILE)")]
    ModelNeeded { app: String },
    #[error("device {device} belongs to app {owner}")]
    DeviceTaken { device: String, owner: String },
    /// The app's device model does not parse or validate.
    #[error("{}", invalid_model(.0))]
    InvalidModel(ModelError),
    /// One of the models the app registers devices with is invalid (which,
    /// and why).
    #[error("{0}")]
    InvalidDeviceModels(String),
    /// wasmtime refused the component (not a component, not of the
    /// world, not compiled for this gateway...).
    #[error("the component was refused: {0:#}")]
    ComponentRefused(anyhow::Error),
    /// The task loading the component failed (panicked).
    #[error("loading failed: {0}")]
    LoadTask(tokio::task::JoinError),
    /// The version to roll back to could not be loaded.
    #[error("{0:#}")]
    LoadVersion(anyhow::Error),
    /// The first version of an app could not be started.
    #[error("cannot start the app: {0:#}")]
    CannotStart(anyhow::Error),
    /// The deployment registry (SQLite) failed.
    #[error("the deployment registry failed: {0}")]
    Registry(#[from] rusqlite::Error),
    /// Recording that the app stopped, started or was removed failed (the
    /// database's own message).
    #[error("{0}")]
    RecordState(rusqlite::Error),
    /// The artifact store could not keep the component.
    #[error("cannot store the component: {0}")]
    ArtifactStore(std::io::Error),
    /// The app refused the new version (its `init` failed or crashed); the
    /// version it ran keeps running.
    #[error("app {app}: version {version} refused: {reason}")]
    VersionRefused {
        app: String,
        version: i64,
        reason: AppError,
    },
    #[error("app {0} has no earlier version that ran to roll back to")]
    NothingToRollBackTo(String),
    /// The app did not take a stop, start or remove (it had gone).
    #[error(transparent)]
    App(#[from] AppError),
    #[error("the gateway is shutting down")]
    ShuttingDown,
}

/// The message of [`DeployError::InvalidModel`]. A model parsed from the
/// registry has no path, so its error starts with `: `.
fn invalid_model(error: &ModelError) -> String {
    format!("the device model is invalid: {error}").replace(": : ", ": ")
}

type Reply = oneshot::Sender<Result<String, DeployError>>;

enum Command {
    Deploy(Box<DeployRequest>, Reply),
    Rollback(String, Reply),
    /// Roll the app back if it runs the component with this digest.
    RollbackFrom(String, String, Reply),
    Stop(String, Reply),
    Start(String, Reply),
    Remove(String, Reply),
}

/// The rest of the gateway's way to the deployer. What the apps are is
/// read here, beside the deployer rather than through it, so `apps` never
/// waits on a deployment or on a busy app.
#[derive(Clone)]
pub struct DeployClient {
    commands: mpsc::Sender<Command>,
    reporter: Reporter,
    db: crate::store::Database,
}

impl DeployClient {
    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, DeployError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(make(tx))
            .await
            .map_err(|_| DeployError::ShuttingDown)?;
        rx.await.map_err(|_| DeployError::ShuttingDown)
    }

    pub async fn deploy(&self, request: DeployRequest) -> Result<String, DeployError> {
        self.ask(|tx| Command::Deploy(Box::new(request), tx))
            .await?
    }
    pub async fn rollback(&self, app: String) -> Result<String, DeployError> {
        self.ask(|tx| Command::Rollback(app, tx)).await?
    }
    /// Roll `app` back if it runs the component `digest`; if it runs
    /// another, do nothing and say so.
    pub async fn rollback_from(&self, app: String, digest: String) -> Result<String, DeployError> {
        self.ask(|tx| Command::RollbackFrom(app, digest, tx))
            .await?
    }
    pub async fn stop(&self, app: String) -> Result<String, DeployError> {
        self.ask(|tx| Command::Stop(app, tx)).await?
    }
    pub async fn start(&self, app: String) -> Result<String, DeployError> {
        self.ask(|tx| Command::Start(app, tx)).await?
    }
    pub async fn remove(&self, app: String) -> Result<String, DeployError> {
        self.ask(|tx| Command::Remove(app, tx)).await?
    }
    pub async fn apps(&self) -> Result<Vec<AppReport>, DeployError> {
        let (reporter, db) = (self.reporter.clone(), self.db.clone());
        tokio::task::spawn_blocking(move || {
            let conn = db.open().map_err(DeployError::RecordState)?;
            Ok(app_reports(&reporter, &conn))
        })
        .await
        .map_err(|_| DeployError::ShuttingDown)?
    }
}

/// Every app as the reporter has it, with its registry versions.
fn app_reports(reporter: &Reporter, conn: &rusqlite::Connection) -> Vec<AppReport> {
    reporter
        .apps()
        .into_iter()
        .map(|app| {
            let versions = registry::versions(conn, &app.name)
                .unwrap_or_default()
                .into_iter()
                .map(|v| VersionReport {
                    version: v.version,
                    digest: v.digest,
                    source: v.source,
                    deployed_at: v.deployed_at,
                    outcome: v.outcome,
                })
                .collect();
            AppReport { app, versions }
        })
        .collect()
}

/// A probation that ended, reported back by the task that waited for it.
struct Settled {
    app: String,
    version: i64,
    previous: i64,
    outcome: Outcome,
}

pub struct Deployer {
    runtime: Arc<Runtime>,
    artifacts: Artifacts,
    directory: Directory,
    shared: AppShared,
    data_dir: PathBuf,
    probation: Duration,
    keep: usize,
    apps: JoinSet<()>,
    stop_apps: CancellationToken,
    /// The probations under way: each ends with how it went. Owned here,
    /// so none outlives the deployer.
    probations: JoinSet<Settled>,
    /// Stops and starts waiting on their app (which may be in a call of up
    /// to its deadline): they wait here, not in the deployer's loop, so an
    /// app busy in a long call holds up no one but the client who asked.
    controls: JoinSet<()>,
}

impl Deployer {
    pub fn new(
        runtime: Arc<Runtime>,
        shared: AppShared,
        directory: Directory,
        data_dir: PathBuf,
        probation: Duration,
        keep: usize,
    ) -> anyhow::Result<Deployer> {
        Ok(Deployer {
            runtime,
            artifacts: Artifacts::open(&data_dir.join("artifacts"))
                .context("opening the artifact store")?,
            directory,
            shared,
            data_dir,
            probation,
            keep,
            controls: JoinSet::new(),
            apps: JoinSet::new(),
            stop_apps: CancellationToken::new(),
            probations: JoinSet::new(),
        })
    }

    /// A connection from the apps' pool, for one statement or a few: the
    /// deployer keeps none of its own.
    fn db(&self) -> rusqlite::Result<crate::store::Pooled> {
        self.shared.pool.open()
    }

    /// Bring the registry in line with gateway.toml and start every app.
    ///
    /// An app of gateway.toml seen for the first time, or whose component or
    /// settings changed since the last start, is deployed from the config as
    /// a new version. Otherwise the app runs the version it ran when the
    /// gateway stopped, however that was deployed, stopped if the operator
    /// had stopped it. Apps deployed from elsewhere run too. Everything is
    /// checked before anything starts: a component that does not load stops
    /// the start with an error naming the app.
    pub async fn start_apps(&mut self, config: &Config) -> anyhow::Result<()> {
        // Components loaded by the check below, used again to start them.
        let mut loaded_now = std::collections::HashMap::new();
        // Each component's sha256, by its bytes: apps of one component are
        // hashed once, and compared byte for byte (a memcmp) after that.
        let mut digests: Vec<(Vec<u8>, String)> = Vec::new();
        for app in &config.apps {
            let (component, spec) = read_app(app)?;
            let component_digest = match digests.iter().find(|(bytes, _)| *bytes == component) {
                Some((_, digest)) => digest.clone(),
                None => {
                    let digest = artifacts::digest(&component);
                    digests.push((component.clone(), digest.clone()));
                    digest
                }
            };
            let fingerprint = artifacts::digest(
                format!("{component_digest}\n{}", serde_json::to_string(&spec)?).as_bytes(),
            );
            let current = registry::current(&*self.db()?, &app.name)?;
            if current.as_ref().and_then(|c| c.config_digest.as_deref())
                == Some(fingerprint.as_str())
            {
                continue;
            }
            // Checked before any version is recorded: a component that does
            // not load leaves the registry as it was.
            let runtime = self.runtime.clone();
            let (bytes, digest) = (component.clone(), component_digest.clone());
            let loaded = tokio::task::spawn_blocking(move || runtime.load_hashed(&bytes, &digest))
                .await?
                .map_err(|e| {
                    anyhow::anyhow!(
                        "app {}: the component {} is refused: {}",
                        app.name,
                        app.component.display(),
                        first_line(&format!("{e:#}"))
                    )
                })?;
            log_load(&app.name, &loaded);
            loaded_now.insert(app.name.clone(), (loaded.pre, loaded.source));
            self.artifacts.put_hashed(&component, &component_digest)?;
            // The new version, current, running, and the one it replaces,
            // in one transaction: a crash between them would leave a
            // version recorded without the config that made it current.
            let db = self.db()?;
            let tx = rusqlite::Transaction::new_unchecked(
                &db,
                rusqlite::TransactionBehavior::Immediate,
            )?;
            let number = registry::add(&tx, &app.name, &component_digest, &spec, "config")?;
            registry::set_current(&tx, &app.name, number)?;
            registry::set_config_digest(&tx, &app.name, &fingerprint)?;
            registry::set_outcome(&tx, &app.name, number, &VersionOutcome::Running)?;
            if let Some(previous) = &current {
                registry::set_outcome(&tx, &app.name, previous.version, &VersionOutcome::Replaced)?;
            }
            tx.commit()?;
            if let Some(previous) = current {
                tracing::info!(app = %app.name, "gateway.toml changed the app: version {number} replaces {}", previous.version);
            }
        }
        let all = registry::all(&*self.db()?)?;
        for current in all {
            let loaded = loaded_now.remove(&current.app);
            let version = self
                .load_version(&current.app, current.version, loaded)
                .await?;
            self.spawn_app(version, current.stopped)?;
        }
        Ok(())
    }

    /// Load a registered version: its component (from the compile cache when
    /// possible, or as `loaded` already) and model.
    async fn load_version(
        &self,
        app: &str,
        number: i64,
        loaded: Option<(Arc<crate::app::Prepared>, Load)>,
    ) -> anyhow::Result<AppVersion> {
        let record = registry::get(&*self.db()?, app, number)?
            .with_context(|| format!("app {app}: version {number} is not in the registry"))?;
        let model = DeviceModel::parse(&record.spec.model.to_string())
            .map_err(|e| anyhow::anyhow!("app {app}: {e}"))?;
        let (pre, load) = match loaded {
            Some(ready) => ready,
            None => {
                // Read only if neither a loaded copy nor the compile cache
                // has it: the registry knows its digest.
                let (runtime, artifacts) = (self.runtime.clone(), self.artifacts.clone());
                let digest = record.digest.clone();
                let loaded = tokio::task::spawn_blocking(move || {
                    runtime.load_artifact(&digest, || artifacts.get(&digest))
                })
                .await?
                .with_context(|| format!("app {app}: the artifact of version {number}"))?;
                log_load(app, &loaded);
                (loaded.pre, loaded.source)
            }
        };
        let device_models = record
            .spec
            .parse_device_models()
            .map_err(|e| anyhow::anyhow!("app {app}: {e}"))?;
        Ok(AppVersion {
            config: record.spec.to_config(app),
            model: Arc::new(model),
            device_models: Arc::new(device_models),
            pre,
            digest: record.digest,
            number,
            load: Some(load),
        })
    }

    fn spawn_app(&mut self, version: AppVersion, stopped: bool) -> anyhow::Result<()> {
        let name = version.config.name.clone();
        let files_dir = crate::config::app_files_dir(&self.data_dir, &name);
        std::fs::create_dir_all(&files_dir)
            .with_context(|| format!("creating {}", files_dir.display()))?;
        crate::store::claim_device(&*self.db()?, &version.config.device, &name)?;
        let device = version.config.device.clone();
        let model = version.model.clone();
        let spec = AppSpec {
            version,
            shared: self.shared.clone(),
            files_dir,
            stopped,
        };
        let handle = app::spawn(spec, self.stop_apps.child_token(), &mut self.apps)?;
        self.directory.insert(Entry {
            handle,
            device,
            model,
        });
        Ok(())
    }

    /// Serve deployment commands until `cancel`; then stop every app (each
    /// finishes its call in progress and saves its state).
    pub async fn run(mut self, mut inbox: Inbox, cancel: CancellationToken) {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                Some(command) = inbox.0.recv() => self.handle(command).await,
                Some(settled) = self.probations.join_next() => match settled {
                    Ok(settled) => self.settle(settled).await,
                    Err(e) => tracing::error!("a probation task failed: {e}"),
                },
                Some(Err(e)) = self.controls.join_next() => {
                    tracing::error!("a stop or start task failed: {e}");
                }
            }
        }
        self.stop_apps.cancel();
        // Waiting stops and starts end as their apps stop.
        while self.controls.join_next().await.is_some() {}
        while let Some(done) = self.apps.join_next().await {
            if let Err(e) = done {
                tracing::error!("an app task failed: {e}");
            }
        }
    }

    async fn handle(&mut self, command: Command) {
        match command {
            Command::Deploy(request, reply) => {
                let app = request.app.clone();
                let result = self.deploy(*request).await;
                match &result {
                    Ok(message) => tracing::info!(app = %app, "{message}"),
                    Err(error) => tracing::warn!(app = %app, "deployment refused: {error}"),
                }
                let _ = reply.send(result);
            }
            Command::Rollback(app, reply) => {
                let _ = reply.send(self.rollback(&app).await);
            }
            Command::RollbackFrom(app, digest, reply) => {
                // Checked here, in the one task that changes versions, so
                // nothing can swap the app between the check and the rollback.
                let running = self.db().and_then(|db| {
                    let Some(current) = registry::current(&db, &app)? else {
                        return Ok(None);
                    };
                    let versions = registry::versions(&db, &app)?;
                    Ok(versions
                        .into_iter()
                        .find(|v| v.version == current.version)
                        .map(|v| (v.version, v.digest)))
                });
                let result = match running {
                    Ok(Some((_, running))) if running == digest => self.rollback(&app).await,
                    Ok(Some((version, running))) => Ok(format!(
                        "app {app} runs version {version} (component {}), not component {digest}: nothing to roll back",
                        &running[..running.len().min(12)]
                    )),
                    Ok(None) => Err(DeployError::NoSuchApp(app.clone())),
                    Err(e) => Err(e.into()),
                };
                let _ = reply.send(result);
            }
            Command::Stop(app, reply) => self.stop_or_start(&app, true, reply),
            Command::Start(app, reply) => self.stop_or_start(&app, false, reply),
            Command::Remove(app, reply) => {
                let _ = reply.send(self.remove(&app).await);
            }
        }
    }

    async fn deploy(&mut self, request: DeployRequest) -> Result<String, DeployError> {
        let app = request.app.clone();
        check_name(&app).map_err(DeployError::AppName)?;
        if request.component.len() > MAX_ARTIFACT_BYTES {
            return Err(DeployError::TooLarge {
                bytes: request.component.len(),
            });
        }
        let current = registry::current(&*self.db()?, &app)?;
        let running = match &current {
            Some(c) => registry::get(&*self.db()?, &app, c.version)?,
            None => None,
        };
        let spec = next_spec(
            &app,
            request.spec,
            request.model,
            request.config,
            request.grants,
            running.as_ref().map(|r| &r.spec),
        )?;
        check_name(&spec.device).map_err(DeployError::DeviceName)?;
        if let Some(other) = self.directory.by_device(&spec.device)
            && other.handle.name() != app
        {
            return Err(DeployError::DeviceTaken {
                device: spec.device,
                owner: other.handle.name().to_string(),
            });
        }
        let model =
            DeviceModel::parse(&spec.model.to_string()).map_err(DeployError::InvalidModel)?;
        let device_models = spec
            .parse_device_models()
            .map_err(DeployError::InvalidDeviceModels)?;
        let digest = artifacts::digest(&request.component);
        self.artifacts
            .put_hashed(&request.component, &digest)
            .map_err(DeployError::ArtifactStore)?;
        if let Some(base) = &running
            && base.digest == digest
            && base.spec == spec
        {
            return Ok(format!(
                "app {app} already runs this (version {})",
                base.version
            ));
        }
        let (runtime, hashed) = (self.runtime.clone(), digest.clone());
        let bytes = request.component;
        let loaded = tokio::task::spawn_blocking(move || runtime.load_hashed(&bytes, &hashed))
            .await
            .map_err(DeployError::LoadTask)?
            .map_err(DeployError::ComponentRefused)?;
        log_load(&app, &loaded);
        let number = registry::add(&*self.db()?, &app, &digest, &spec, &request.source)?;
        let version = AppVersion {
            config: spec.to_config(&app),
            model: Arc::new(model),
            device_models: Arc::new(device_models),
            pre: loaded.pre,
            digest,
            number,
            load: Some(loaded.source),
        };
        self.switch_to(&app, version, current.map(|c| c.version))
            .await
    }

    /// Run `version` in place of what runs now (swap, or first start).
    async fn switch_to(
        &mut self,
        app: &str,
        version: AppVersion,
        previous: Option<i64>,
    ) -> Result<String, DeployError> {
        let number = version.number;
        let device = version.config.device.clone();
        let model = version.model.clone();
        let Some(entry) = self.directory.get(app) else {
            self.spawn_app(version, false)
                .map_err(DeployError::CannotStart)?;
            registry::make_current(&*self.db()?, app, number, &VersionOutcome::Running)?;
            self.tidy(app);
            return Ok(format!("app {app}: version {number} started"));
        };
        crate::store::claim_device(&*self.db()?, &device, app)?;
        match entry.handle.swap(version, self.probation).await {
            Ok(outcome) => {
                registry::make_current(&*self.db()?, app, number, &VersionOutcome::OnProbation)?;
                self.directory.insert(Entry {
                    handle: entry.handle,
                    device,
                    model,
                });
                let (app_name, previous) = (app.to_string(), previous.unwrap_or(0));
                self.probations.spawn(async move {
                    Settled {
                        app: app_name,
                        version: number,
                        previous,
                        outcome: outcome.await.unwrap_or(Outcome::Interrupted),
                    }
                });
                Ok(format!(
                    "app {app}: version {number} runs, on probation for {} s",
                    self.probation.as_secs()
                ))
            }
            Err(error) => {
                registry::set_outcome(
                    &*self.db()?,
                    app,
                    number,
                    &VersionOutcome::Refused(error.to_string()),
                )?;
                Err(DeployError::VersionRefused {
                    app: app.to_string(),
                    version: number,
                    reason: error,
                })
            }
        }
    }

    async fn settle(&mut self, settled: Settled) {
        let Settled {
            app,
            version,
            previous,
            outcome,
        } = settled;
        match &outcome {
            Outcome::Kept => {
                tracing::info!(app = %app, version, "deployment kept after its probation")
            }
            Outcome::RolledBack(reason) => {
                tracing::error!(app = %app, version, "deployment rolled back to version {previous}: {reason}")
            }
            Outcome::Interrupted => {}
        }
        let settled = self
            .db()
            .and_then(|db| registry::settle(&db, &app, version, previous, &outcome));
        match settled {
            // Rolled back: the directory routes with the previous version's
            // device and model again.
            Ok(Some(record)) => {
                if let Some(entry) = self.directory.get(&app)
                    && let Ok(model) = DeviceModel::parse(&record.spec.model.to_string())
                {
                    self.directory.insert(Entry {
                        handle: entry.handle,
                        device: record.spec.device.clone(),
                        model: Arc::new(model),
                    });
                }
            }
            Ok(None) => {}
            Err(e) => tracing::error!(app = %app, "the deployment registry failed: {e}"),
        }
        self.tidy(&app);
    }

    /// Forget old versions and the artifacts nobody uses.
    fn tidy(&self, app: &str) {
        if let Err(e) = self
            .db()
            .and_then(|db| registry::prune(&db, app, self.keep))
        {
            tracing::warn!(app, "could not prune old versions: {e}");
        }
        match self.db().and_then(|db| registry::digests_in_use(&db)) {
            Ok(keep) => self.artifacts.collect_garbage(&keep),
            Err(e) => tracing::warn!("could not list the artifacts in use: {e}"),
        }
    }

    async fn rollback(&mut self, app: &str) -> Result<String, DeployError> {
        let current = registry::current(&*self.db()?, app)?
            .ok_or_else(|| DeployError::NoSuchApp(app.to_string()))?;
        let versions = registry::versions(&*self.db()?, app)?;
        let target = registry::rollback_target(&versions, current.version)
            .ok_or_else(|| DeployError::NothingToRollBackTo(app.to_string()))?;
        let version = self
            .load_version(app, target.version, None)
            .await
            .map_err(DeployError::LoadVersion)?;
        let message = self.switch_to(app, version, Some(current.version)).await?;
        registry::set_outcome(
            &*self.db()?,
            app,
            current.version,
            &VersionOutcome::RolledBackByOperator,
        )?;
        Ok(format!(
            "{message} (rolled back from version {})",
            current.version
        ))
    }

    /// Stop (or start) `app`: recorded at once, so it holds across a
    /// restart, then carried out by the app's actor after its call in
    /// progress. The client is answered from `controls` once it is done.
    fn stop_or_start(&mut self, app: &str, stop: bool, reply: Reply) {
        let Some(entry) = self.directory.get(app) else {
            let _ = reply.send(Err(DeployError::NoSuchApp(app.to_string())));
            return;
        };
        if let Err(e) = self
            .db()
            .and_then(|db| registry::set_stopped(&db, app, stop))
        {
            let _ = reply.send(Err(DeployError::RecordState(e)));
            return;
        }
        let handle = entry.handle.clone();
        let done = if stop {
            format!(
                "app {app} stopped (it stays stopped across restarts until `wasmgate start {app}`)"
            )
        } else {
            format!("app {app} started")
        };
        self.controls.spawn(async move {
            let control = if stop { Control::Stop } else { Control::Start };
            let result = handle.control(control).await;
            let _ = reply.send(result.map(|()| done).map_err(DeployError::from));
        });
    }

    async fn remove(&mut self, app: &str) -> Result<String, DeployError> {
        let entry = self
            .directory
            .get(app)
            .ok_or_else(|| DeployError::NoSuchApp(app.to_string()))?;
        entry.handle.control(Control::Remove).await?;
        self.directory.remove(app);
        self.db()
            .and_then(|db| registry::remove(&db, app))
            .map_err(DeployError::RecordState)?;
        self.tidy(app);
        Ok(format!(
            "app {app} removed (its storage and files are kept; deploying it again finds them)"
        ))
    }
}

/// The largest component the deployer takes.
pub const MAX_ARTIFACT_BYTES: usize = 64 << 20;

/// Where the deployer's commands arrive.
pub struct Inbox(mpsc::Receiver<Command>);

/// A client and the inbox it talks to; `apps` it answers from `reporter`
/// and the registry in `db`.
pub fn channel(reporter: Reporter, db: crate::store::Database) -> (DeployClient, Inbox) {
    let (tx, rx) = mpsc::channel(64);
    (
        DeployClient {
            commands: tx,
            reporter,
            db,
        },
        Inbox(rx),
    )
}

/// The spec of the version a request makes: the request's whole spec if it
/// gives one; otherwise the running version's, with the request's model and
/// config in place of its own; for a new app, a default spec around the
/// model, which must then be given.
fn next_spec(
    app: &str,
    spec: Option<Spec>,
    model: Option<serde_json::Value>,
    config: Option<Vec<(String, String)>>,
    grants: Option<crate::grants::Grants>,
    running: Option<&Spec>,
) -> Result<Spec, DeployError> {
    let mut spec = match (spec, running) {
        (Some(spec), _) => return Ok(spec),
        (None, Some(base)) => {
            let mut spec = base.clone();
            if let Some(model) = model {
                spec.model = model;
            }
            if let Some(config) = config {
                spec.config = config;
            }
            spec
        }
        (None, None) => {
            let model = model.ok_or_else(|| DeployError::ModelNeeded {
                app: app.to_string(),
            })?;
            Spec::from_config(&default_app(app), model).with_config(config.unwrap_or_default())
        }
    };
    if let Some(grants) = grants {
        spec.grants = grants;
    }
    Ok(spec)
}

/// The first line of a message, at most 300 characters: a loader's error
/// can carry a dump of the bytes it read.
fn first_line(text: &str) -> String {
    let line = text.lines().next().unwrap_or_default();
    match line.char_indices().nth(300) {
        Some((cut, _)) => format!("{}…", &line[..cut]),
        None => line.to_string(),
    }
}

/// Read an app of gateway.toml from its files: the component's bytes, and
/// the spec of the version they make, with its model and the models it may
/// register devices with (as documents; each is checked as a model first).
/// The one reader for start-up and watch mode, so that both deploy the
/// same version from the same files.
pub fn read_app(app: &crate::config::AppConfig) -> anyhow::Result<(Vec<u8>, Spec)> {
    // Each file is read once: checked as a model, kept as its document.
    let document = |path: &std::path::Path| -> anyhow::Result<serde_json::Value> {
        let (_, text) = DeviceModel::read(path)?;
        Ok(serde_json::from_str(&text)?)
    };
    let component = std::fs::read(&app.component).with_context(|| {
        format!(
            "app {}: reading component {}",
            app.name,
            app.component.display()
        )
    })?;
    let mut spec = Spec::from_config(app, document(&app.model)?);
    for (name, path) in &app.device_models {
        let model = document(path).with_context(|| format!("app {}: models.{name}", app.name))?;
        spec.device_models.insert(name.clone(), model);
    }
    Ok((component, spec))
}

/// The settings a new app gets when its deployment gives none.
fn default_app(name: &str) -> crate::config::AppConfig {
    crate::config::AppConfig {
        name: name.to_string(),
        component: Default::default(),
        model: Default::default(),
        device: name.to_string(),
        tick_interval: Duration::from_millis(1000),
        call_timeout: Duration::from_millis(1000),
        memory_limit_bytes: 64 << 20,
        storage_quota_bytes: 10 << 20,
        disk_quota_bytes: crate::config::DEFAULT_DISK_QUOTA_BYTES,
        config: Vec::new(),
        restart: Default::default(),
        device_models: Vec::new(),
        max_devices: crate::registration::DEFAULT_MAX_DEVICES,
        grants: Default::default(),
        io_wait: crate::config::DEFAULT_IO_WAIT,
        io_requests_per_s: crate::config::DEFAULT_IO_REQUESTS_PER_S,
        bus_queue: crate::config::DEFAULT_BUS_QUEUE,
        synced: Default::default(),
    }
}

impl Spec {
    fn with_config(mut self, config: Vec<(String, String)>) -> Spec {
        self.config = config;
        self
    }
}

fn log_load(app: &str, loaded: &crate::engine::Loaded) {
    let elapsed = loaded.elapsed;
    if loaded.shared {
        tracing::info!(app, "uses the component another app has loaded");
        return;
    }
    match loaded.source {
        Load::Compiled => tracing::info!(
            app,
            "compiled component in {} ms (kept in the compile cache)",
            elapsed.as_millis()
        ),
        Load::Cache => tracing::info!(
            app,
            "loaded component from the compile cache in {} ms",
            elapsed.as_millis()
        ),
        Load::Precompiled => tracing::info!(
            app,
            "loaded a precompiled component in {} ms",
            elapsed.as_millis()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The admin socket and the cloud show these texts, and the
    /// integration tests match on them.
    #[test]
    fn errors_read_as_they_always_did() {
        let too_large = DeployError::TooLarge {
            bytes: MAX_ARTIFACT_BYTES + (3 << 20),
        };
        assert_eq!(
            too_large.to_string(),
            "the component is 67 MiB, over the limit of 64 MiB"
        );
        let model = DeviceModel::parse("not json").expect_err("not a model");
        let invalid = DeployError::InvalidModel(model).to_string();
        assert!(
            invalid.starts_with("the device model is invalid: invalid device model: "),
            "{invalid}"
        );
        let refused = DeployError::VersionRefused {
            app: "pump".into(),
            version: 2,
            reason: AppError::SwapRefused {
                reason: Box::new(AppError::InitRefused("no".into())),
                running: 1,
            },
        };
        assert_eq!(
            refused.to_string(),
            "app pump: version 2 refused: init returned an error: no; version 1 keeps running"
        );
        let gone = DeployError::from(AppError::Gone { app: "pump".into() });
        assert_eq!(
            gone.to_string(),
            "app pump stopped before handling the request"
        );
        assert_eq!(
            DeployError::NothingToRollBackTo("pump".into()).to_string(),
            "app pump has no earlier version that ran to roll back to"
        );
        assert_eq!(
            DeployError::ShuttingDown.to_string(),
            "the gateway is shutting down"
        );
    }

    #[test]
    fn a_new_app_needs_a_model_and_an_update_keeps_what_it_does_not_give() {
        let error = next_spec("pump", None, None, None, None, None).unwrap_err();
        assert_eq!(
            error.to_string(),
            "app pump is new: its device model is needed (--model FILE)"
        );

        let first = next_spec(
            "pump",
            None,
            Some(json!({"name": "m1"})),
            Some(vec![("rate".into(), "5".into())]),
            None,
            None,
        )
        .expect("a new app with its model");
        assert_eq!(first.device, "pump", "the device is named after the app");
        assert_eq!(first.config, vec![("rate".to_string(), "5".to_string())]);

        // A new component alone: model and config stay.
        let same = next_spec("pump", None, None, None, None, Some(&first)).expect("update");
        assert_eq!(same, first);
        // A new config: the model stays.
        let reconfigured = next_spec(
            "pump",
            None,
            None,
            Some(vec![("rate".into(), "9".into())]),
            None,
            Some(&first),
        )
        .expect("update");
        assert_eq!(reconfigured.model, first.model);
        assert_eq!(reconfigured.config[0].1, "9");
        // A whole spec (gateway.toml, watch mode) wins over everything.
        let mut whole = first.clone();
        whole.tick_interval_ms = 42;
        let given = next_spec(
            "pump",
            Some(whole.clone()),
            Some(json!({"name": "ignored"})),
            None,
            None,
            Some(&first),
        )
        .expect("whole");
        assert_eq!(given, whole);
        // Grants given replace the running version's; none given keep them.
        let grants = crate::grants::Grants {
            modbus: vec![crate::grants::ModbusGrant {
                endpoint: "tcp://meter:502".into(),
                units: Some(vec![1]),
                timeout_ms: 1000,
            }],
            ..Default::default()
        };
        let granted = next_spec("pump", None, None, None, Some(grants.clone()), Some(&first))
            .expect("granted");
        assert_eq!(granted.grants, grants);
        let kept = next_spec("pump", None, None, None, None, Some(&granted)).expect("kept");
        assert_eq!(kept.grants, grants);
    }
}

//! The gateway: from a checked config to running apps, and back down.
//!
//! Start-up fails fast, before any app runs, if the data directory is in use
//! by another wasmgate, a device model is invalid, or a component cannot be
//! loaded: a config that cannot run as written is an operator error to fix,
//! not something to half-run in the field. Shutdown stops every app (each
//! finishes its call in progress and hands its state to `save`), then
//! commits the telemetry still in memory.

use anyhow::Context as _;
use std::collections::HashMap;
use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::app::{self, AppHandle, AppSpec};
use crate::cloud::downlink::{Downlink, Route};
use crate::cloud::link::{self, LinkSpec};
use crate::config::Config;
use crate::engine::{Runtime, Source};
use crate::model::DeviceModel;
use crate::outbox::{Ingest, Usage};
use crate::store::Database;

/// The name of the lock file that keeps two gateways off one data directory.
pub const LOCK_FILE: &str = "wasmgate.lock";

/// Hold the data directory for this process. The lock goes with the process,
/// even on `kill -9`.
pub fn lock_data_dir(data_dir: &Path) -> anyhow::Result<File> {
    let path = data_dir.join(LOCK_FILE);
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    if file.try_lock().is_err() {
        let pid = std::fs::read_to_string(&path).unwrap_or_default();
        anyhow::bail!(
            "another wasmgate (pid {}) is using the data directory {}",
            pid.trim(),
            data_dir.display()
        );
    }
    file.set_len(0)?;
    write!(file, "{}", std::process::id())?;
    Ok(file)
}

/// The directory an app's guest sees as `/`.
pub fn app_files_dir(data_dir: &Path, app: &str) -> PathBuf {
    data_dir.join("apps").join(app).join("files")
}

/// Run the gateway until `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating the data directory {}", config.data_dir.display()))?;
    let _lock = lock_data_dir(&config.data_dir)?;
    let database = Database::new(config.database_path(), config.outbox.database_max_bytes);
    let db_path = database.path().to_path_buf();
    let db = database
        .open()
        .with_context(|| format!("opening the database {}", db_path.display()))?;
    crate::store::migrate(&db)
        .with_context(|| format!("preparing the database {}", db_path.display()))?;
    let usage = Arc::new(Usage::load(&db, config.outbox.clone()).context("reading the outbox")?);

    let models = config
        .apps
        .iter()
        .map(|app| DeviceModel::load(&app.model).map(Arc::new))
        .collect::<Result<Vec<_>, _>>()?;

    tracing::info!(
        gateway = %config.gateway_id,
        "starting with {} app(s); data in {}",
        config.apps.len(),
        config.data_dir.display()
    );
    let runtime = Runtime::new(&config.data_dir.join("cache"))?;
    let mut loaded = Vec::with_capacity(config.apps.len());
    for app in &config.apps {
        let component = tokio::task::block_in_place(|| runtime.load(&app.component))
            .with_context(|| format!("app {}", app.name))?;
        match component.source {
            Source::Compiled => tracing::info!(
                app = %app.name,
                "compiled component {} in {} ms (kept in the compile cache)",
                app.component.display(),
                component.elapsed.as_millis()
            ),
            Source::Cache => tracing::info!(
                app = %app.name,
                "loaded component {} from the compile cache in {} ms",
                app.component.display(),
                component.elapsed.as_millis()
            ),
        }
        crate::store::claim_device(&db, &app.device, &app.name)?;
        loaded.push(component);
    }

    if let Some(listen) = config.cloud.as_ref().and_then(|c| c.embedded) {
        crate::cloud::broker::start(listen)?;
    }

    let outbox_signal = Arc::new(Notify::new());
    let status_signal = Arc::new(Notify::new());
    let ingest = Ingest::start(&database, usage.clone(), outbox_signal.clone())?;
    let stop_apps = CancellationToken::new();
    let mut tasks = JoinSet::new();
    let mut handles: Vec<AppHandle> = Vec::new();
    let mut routes = HashMap::new();
    for ((app, model), component) in config.apps.iter().zip(models).zip(loaded) {
        let files_dir = app_files_dir(&config.data_dir, &app.name);
        std::fs::create_dir_all(&files_dir)
            .with_context(|| format!("creating {}", files_dir.display()))?;
        let spec = AppSpec {
            config: app.clone(),
            model: model.clone(),
            pre: component.pre,
            digest: component.digest,
            db: database.clone(),
            usage: usage.clone(),
            files_dir,
            ingest: ingest.sender(),
            outbox_signal: outbox_signal.clone(),
            status_signal: status_signal.clone(),
        };
        let handle = app::spawn(spec, stop_apps.child_token(), &mut tasks)?;
        routes.insert(
            app.device.clone(),
            Route {
                app: handle.clone(),
                model,
            },
        );
        handles.push(handle);
    }

    // The cloud link: started after the apps so that its first status
    // lists them, stopped after them so that it can say they stopped.
    let stop_link = CancellationToken::new();
    let link = match &config.cloud {
        None => {
            tracing::info!(
                "no [cloud] configured: running offline; everything stays in the outbox"
            );
            None
        }
        Some(cloud) => {
            let (replies_tx, replies) = mpsc::channel(256);
            let downlink = Downlink::new(
                config.gateway_id.clone(),
                routes,
                replies_tx,
                database.clone(),
                stop_link.child_token(),
            );
            let spec = LinkSpec {
                gateway: config.gateway_id.clone(),
                config: cloud.clone(),
                db: database.clone(),
                usage: usage.clone(),
                outbox_signal: outbox_signal.clone(),
                status_signal: status_signal.clone(),
                apps: handles
                    .iter()
                    .zip(&config.apps)
                    .map(|(h, a)| (h.clone(), a.device.clone()))
                    .collect(),
                downlink,
                replies,
            };
            Some(tokio::spawn(link::run(spec, stop_link.clone())))
        }
    };

    shutdown.cancelled().await;
    tracing::info!("shutting down: stopping {} app(s)", handles.len());
    stop_apps.cancel();
    while let Some(done) = tasks.join_next().await {
        if let Err(e) = done {
            tracing::error!("an app task failed: {e}");
        }
    }
    tokio::task::block_in_place(|| ingest.shutdown());
    stop_link.cancel();
    if let Some(link) = link {
        match link.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!("the cloud link failed: {e:#}"),
            Err(e) => tracing::error!("the cloud link task failed: {e}"),
        }
    }
    tracing::info!("stopped");
    Ok(())
}

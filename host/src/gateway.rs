//! The gateway: from a checked config to running apps, and back down.
//!
//! Start-up fails fast, before any app runs, if the data directory is in use
//! by another wasmgate, a device model is invalid, or a component cannot be
//! loaded: a config that cannot run as written is an operator error to fix,
//! not something to half-run in the field. Shutdown stops every app (each
//! finishes its call in progress and hands its state to `save`), then
//! commits the telemetry still in memory.

use anyhow::Context as _;
use std::fs::File;
use std::io::Write as _;
use std::path::Path;
use std::sync::Arc;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::app::{AppShared, Directory, Units};
use crate::cloud::downlink::Downlink;
use crate::cloud::link::{self, LinkSpec};
use crate::config::Config;
use crate::deploy::{Deployer, admin};
use crate::engine::Runtime;
use crate::metrics::Metrics;
use crate::model::DeviceModel;
use crate::outbox::{Ingest, Usage};
use crate::report::Reporter;
use crate::store::Database;
use crate::wire::topics::Service;

/// The name of the lock file that keeps two gateways off one data directory.
pub const LOCK_FILE: &str = "wasmgate.lock";

/// How long a start waits for the data directory's lock: a wasmgate that
/// was just stopped may still be exiting (a restart by systemd, or a test
/// that starts it again at once), and its lock goes with its last file.
pub const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Hold the data directory for this process. The lock goes with the process,
/// even on `kill -9`.
pub fn lock_data_dir(data_dir: &Path) -> anyhow::Result<File> {
    lock_data_dir_within(data_dir, LOCK_WAIT)
}

/// [`lock_data_dir`], waiting at most `wait` for a holder to let go.
fn lock_data_dir_within(data_dir: &Path, wait: std::time::Duration) -> anyhow::Result<File> {
    let path = data_dir.join(LOCK_FILE);
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    let deadline = std::time::Instant::now() + wait;
    loop {
        match file.try_lock() {
            Ok(()) => break,
            Err(std::fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                let pid = std::fs::read_to_string(&path).unwrap_or_default();
                anyhow::bail!(
                    "another wasmgate (pid {}) is using the data directory {}",
                    pid.trim(),
                    data_dir.display()
                );
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("locking {}", path.display()));
            }
        }
    }
    file.set_len(0)?;
    write!(file, "{}", std::process::id())?;
    Ok(file)
}

/// Refuse to start with a secret other users can read: the TLS key, and
/// gateway.toml when it holds the broker password itself. (A
/// `password_file` is checked where the config reads it.)
fn check_secrets(config: &Config) -> Result<(), String> {
    let links = [
        config
            .cloud
            .as_ref()
            .map(|c| ("cloud", &c.broker, c.password_inline)),
        config
            .bus
            .as_ref()
            .map(|b| ("bus", &b.broker, b.password_inline)),
    ];
    for (section, broker, password_inline) in links.into_iter().flatten() {
        if let Some(key) = &broker.key_file {
            crate::permissions::check_private(key, &format!("the TLS key ({section}.key_file)"))?;
        }
        if password_inline {
            crate::permissions::check_private(
                &config.path,
                "the config, which holds the broker password,",
            )
            .map_err(|e| format!("{e} (or move the password to {section}.password_file)"))?;
        }
    }
    Ok(())
}

/// How long shutdown waits for the cloud link's helper tasks once the link
/// has stopped.
const LINK_TASKS_DRAIN: std::time::Duration = std::time::Duration::from_secs(5);

/// Run the gateway until `shutdown` is cancelled.
/// With `watch`, a changed component file of gateway.toml is deployed as a
/// new version of its app (development mode).
/// Raise the soft limit on open files to the hard one. The soft limit is
/// often 1,024, which the apps' files, SQLite connections, sockets and
/// transfers together can reach; the hard one is what the operator allows.
fn raise_open_file_limit() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current == limit.maximum {
        return;
    }
    let raised = Rlimit {
        current: limit.maximum,
        maximum: limit.maximum,
    };
    match setrlimit(Resource::Nofile, raised) {
        Ok(()) => tracing::debug!(
            "open files: soft limit raised from {:?} to {:?}",
            limit.current,
            limit.maximum
        ),
        Err(e) => tracing::warn!(
            "open files: cannot raise the soft limit of {:?}: {e}",
            limit.current
        ),
    }
}

pub async fn run(config: Config, shutdown: CancellationToken, watch: bool) -> anyhow::Result<()> {
    // Everything the gateway creates from here on is its user's alone.
    crate::permissions::restrict_new_files();
    raise_open_file_limit();
    if config.data_dir.exists() {
        crate::permissions::check_private(&config.data_dir, "the data directory")
            .map_err(anyhow::Error::msg)?;
    } else {
        std::fs::create_dir_all(&config.data_dir).with_context(|| {
            format!("creating the data directory {}", config.data_dir.display())
        })?;
        crate::permissions::make_private_dir(&config.data_dir)
            .with_context(|| format!("restricting {}", config.data_dir.display()))?;
    }
    check_secrets(&config).map_err(anyhow::Error::msg)?;
    let _lock = lock_data_dir(&config.data_dir)?;
    let database = Database::new(config.database_path(), config.outbox.database_max_bytes);
    let db_path = database.path().to_path_buf();
    // The apps' connections, which the deployer and the start's own reads
    // take too: the connection that prepares the database goes back to the
    // pool, schema parsed, for the first app rather than stay open unused.
    let pool = crate::store::ConnectionPool::new(database.clone());
    let usage = {
        let db = pool
            .open()
            .with_context(|| format!("opening the database {}", db_path.display()))?;
        let mut schemas = Units::schemas();
        schemas.push(crate::deploy::registry::SCHEMA);
        crate::store::migrate(&db, &schemas)
            .with_context(|| format!("preparing the database {}", db_path.display()))?;
        Arc::new(Usage::load(&db, config.outbox.clone()).context("reading the outbox")?)
    };

    // Models are checked before anything starts: a bad one is an operator
    // error to fix, named with its file.
    for app in &config.apps {
        DeviceModel::load(&app.model)?;
        for (_, path) in &app.device_models {
            DeviceModel::load(path)?;
        }
    }

    tracing::info!(
        gateway = %config.gateway_id,
        "starting with {} app(s) in gateway.toml; data in {}",
        config.apps.len(),
        config.data_dir.display()
    );
    let runtime = Runtime::new(&config.data_dir.join("cache"))?;
    // Compiling in a child keeps the compiler's memory out of the gateway's
    // (see `compiling_in_child`); without an executable to run, the gateway
    // compiles itself, as it would if the child failed.
    #[cfg(feature = "compiler")]
    let runtime = match crate::engine::own_executable() {
        Ok(executable) => runtime.compiling_in_child(executable),
        Err(e) => {
            tracing::warn!(
                "components are compiled in the gateway: its executable is not found: {e}"
            );
            runtime
        }
    };
    let runtime = Arc::new(runtime);

    if let Some(listen) = config.cloud.as_ref().and_then(|c| c.embedded) {
        #[cfg(feature = "broker")]
        crate::cloud::broker::start(listen)?;
        #[cfg(not(feature = "broker"))]
        anyhow::bail!(
            "[cloud] embedded = true ({listen}): this wasmgate was built without the embedded broker \
             (the runtime-only build leaves it out); give the url of a broker instead"
        );
    }

    // The demo's device, up before the apps that poll it.
    let stop_simulator = CancellationToken::new();
    let simulator = match &config.simulator {
        Some(sim) => {
            let simulator =
                crate::sim::Simulator::bind(sim.modbus_listen, sim.start_temperature).await?;
            Some(tokio::spawn(simulator.run(stop_simulator.clone())))
        }
        None => None,
    };

    let outbox_signal = Arc::new(Notify::new());
    let status_signal = Arc::new(Notify::new());
    let ingest = Ingest::start(&database, usage.clone(), outbox_signal.clone())?;
    let metrics = Metrics::default();
    let directory = Directory::default();
    let content_signal = Arc::new(Notify::new());
    let content_resumed = Arc::new(crate::content::Resumed::default());
    let units = Units {
        wasi: Arc::new(crate::wasi::Wasi),
        device: Arc::new(crate::device::Device {
            ingest: ingest.sender(),
            usage: usage.clone(),
            outbox_signal: outbox_signal.clone(),
            directory: Arc::new(directory.clone()),
            status_signal: status_signal.clone(),
        }),
        storage: Arc::new(crate::storage::Storage::default()),
        log: Arc::new(crate::log::Log),
        config_store: Arc::new(crate::config_store::ConfigStore),
        content: Arc::new(crate::content::Content {
            data_dir: config.data_dir.clone(),
            config: config.content.clone(),
            signal: content_signal.clone(),
            resumed: content_resumed.clone(),
        }),
        modbus: Arc::new(crate::modbus::Modbus::new(config.allow.clone())),
        serial: Arc::new(crate::serial::Serial::new(config.allow.clone())),
        bus: Arc::new(crate::bus::Bus::new(
            config.bus.clone(),
            config.allow.clone(),
        )?),
        tables: Arc::new(crate::tables::Tables::new(
            outbox_signal.clone(),
            config
                .cloud
                .as_ref()
                .is_some_and(|c| matches!(c.profile, crate::config::Profile::Sparkplug(_))),
        )),
        http_serve: Arc::new(crate::http_serve::HttpServe::new(config.allow.clone())),
    };
    // The local bus, up before the apps that subscribe in their `init`
    // (a subscription made before it connects is sent when it does).
    let stop_bus = CancellationToken::new();
    let bus = tokio::spawn(units.bus.clone().run(stop_bus.clone()));
    let reporter = Reporter::new(
        config.gateway_id.clone(),
        directory.clone(),
        units.clone(),
        metrics.clone(),
        usage.clone(),
        database.clone(),
        config.cloud.is_some(),
    )
    .with_labels(config.labels.clone());
    // The synced-tables service counts the server's changes in its tallies.
    let tables_unit = units.tables.clone();
    let shared = AppShared {
        pool: pool.clone(),
        units,
        status_signal: status_signal.clone(),
        metrics: metrics.clone(),
        disk_reserve_bytes: config.content.disk_reserve_bytes,
    };
    let mut deployer = Deployer::new(
        runtime,
        shared,
        directory.clone(),
        config.data_dir.clone(),
        config.deploy.probation,
        config.deploy.keep_versions,
    )?;
    // Watch mode's starting point is taken before the apps load (see `Watcher`).
    let watcher = watch.then(|| crate::deploy::watch::Watcher::new(&config));
    deployer.start_apps(&config).await?;
    let (deploy, inbox) = crate::deploy::channel(reporter.clone(), database.clone());
    let stop_deployer = CancellationToken::new();
    let deployer = tokio::spawn(deployer.run(inbox, stop_deployer.clone()));

    let stop_admin = CancellationToken::new();
    let metrics_endpoint = config.metrics.map(|listen| {
        tokio::spawn(crate::report::prometheus::serve(
            listen,
            reporter.clone(),
            stop_admin.clone(),
        ))
    });
    let admin = tokio::spawn(admin::serve(
        admin::socket_path(&config.data_dir),
        deploy.clone(),
        reporter.clone(),
        stop_admin.clone(),
    ));
    let watcher =
        watcher.map(|watcher| tokio::spawn(watcher.run(deploy.clone(), stop_admin.clone())));

    // The cloud link: started after the apps so that its first status
    // lists them, stopped after them so that it can say they stopped.
    let stop_link = CancellationToken::new();
    // The link's helpers: downlink workers, the content service, cloud
    // deployments. Shutdown waits for them (within a bound) after the link.
    let link_tasks = TaskTracker::new();
    let link = match &config.cloud {
        None => {
            tracing::info!(
                "no [cloud] configured: running offline; everything stays in the outbox"
            );
            None
        }
        Some(cloud) => {
            let (replies_tx, replies) = mpsc::channel(256);
            let (trust, base) = pool
                .open()
                .map_err(anyhow::Error::from)
                .and_then(|db| crate::deploy::cloud::Trust::load(&config, &db))
                .context("reading the trusted deployment keys")?;
            let deployments = crate::deploy::cloud::spawn(
                trust,
                base,
                database.clone(),
                deploy.clone(),
                replies_tx.clone(),
                stop_link.child_token(),
                &link_tasks,
            );
            let content = crate::content::service::spawn(
                crate::content::service::ServiceSpec {
                    gateway: config.gateway_id.clone(),
                    data_dir: config.data_dir.clone(),
                    db: database.clone(),
                    config: config.content.clone(),
                    directory: Arc::new(directory.clone()),
                    replies: replies_tx.clone(),
                    signal: content_signal.clone(),
                    resumed: content_resumed.clone(),
                },
                stop_link.child_token(),
                &link_tasks,
            );
            let downlink = Downlink::new(
                config.gateway_id.clone(),
                directory.clone(),
                replies_tx,
                database.clone(),
                outbox_signal.clone(),
                stop_link.child_token(),
                link_tasks.clone(),
            )
            .counting_refusals_in(metrics.link.clone())
            .answering_within(cloud.answer_timeout)
            // Either link polls `Downlink::next_answer`.
            .answering_directly()
            .with_handler(Service::Deploy, deployments)
            .with_handler(Service::Content, content)
            .with_handler(
                Service::Synced,
                crate::cloud::synced::spawn(
                    crate::cloud::synced::SyncedSpec {
                        db: database.clone(),
                        tables: tables_unit.clone(),
                        directory: Arc::new(directory.clone()),
                        outbox_signal: outbox_signal.clone(),
                    },
                    stop_link.child_token(),
                    &link_tasks,
                ),
            );
            let spec = LinkSpec {
                gateway: config.gateway_id.clone(),
                config: cloud.clone(),
                db: database.clone(),
                usage: usage.clone(),
                outbox_signal: outbox_signal.clone(),
                status_signal: status_signal.clone(),
                report: reporter.clone(),
                downlink,
                replies,
                outbox: config.outbox.clone(),
            };
            Some(tokio::spawn(crate::own_wakes::repoll_own_wakes(link::run(
                spec,
                stop_link.clone(),
            ))))
        }
    };

    shutdown.cancelled().await;
    tracing::info!("shutting down: stopping {} app(s)", directory.list().len());
    stop_admin.cancel();
    if let Ok(Err(e)) = admin.await {
        tracing::warn!("the admin endpoint failed: {e:#}");
    }
    if let Some(watcher) = watcher {
        let _ = watcher.await;
    }
    if let Some(endpoint) = metrics_endpoint
        && let Ok(Err(e)) = endpoint.await
    {
        tracing::warn!("{e:#}");
    }
    stop_deployer.cancel();
    if let Err(e) = deployer.await {
        tracing::error!("the deployer task failed: {e}");
    }
    // After the apps, which may publish as they stop.
    stop_bus.cancel();
    if let Err(e) = bus.await {
        tracing::error!("the local bus task failed: {e}");
    }
    stop_simulator.cancel();
    if let Some(simulator) = simulator
        && let Ok(Err(e)) = simulator.await
    {
        tracing::warn!("the Modbus simulator failed: {e:#}");
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
    link_tasks.close();
    // A downlink worker may be waiting on an app's answer (up to
    // `[cloud] answer_timeout_s`); shutdown does not wait that long for it.
    if tokio::time::timeout(LINK_TASKS_DRAIN, link_tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            tasks = link_tasks.len(),
            "stopping with cloud tasks still busy after {} s",
            LINK_TASKS_DRAIN.as_secs()
        );
    }
    tracing::info!("stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_start_waits_for_a_holder_that_lets_go_and_names_one_that_does_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        let held = lock_data_dir_within(dir.path(), Duration::ZERO).expect("first lock");
        let err = lock_data_dir_within(dir.path(), Duration::from_millis(100))
            .expect_err("held throughout")
            .to_string();
        assert!(
            err.contains("another wasmgate") && err.contains(&std::process::id().to_string()),
            "{err}"
        );
        // The holder lets go while the next start waits: it gets the lock.
        let release = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            drop(held);
        });
        lock_data_dir_within(dir.path(), Duration::from_secs(10)).expect("lock after release");
        release.join().expect("release");
    }
}

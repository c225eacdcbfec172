//! `wasmgate cloud serve`: the server side. It subscribes to the fleet
//! through the broker, keeps what gateways send in SQLite or PostgreSQL
//! ([`db`]), acknowledging each message only once it is committed
//! ([`ingest`]), and answers an HTTP API ([`api`]) that reads it and sets
//! desired values and calls actions, checked against the devices' models.
//! See docs/server.md.
//!
//! - [`record`]: what a message from the broker says (pure, unit-tested).
//! - [`db`]: the schema (`schema/`), writes and queries.
//! - [`ingest`]: the MQTT event loop, commits and acks.
//! - [`answers`]: action calls waiting for their responses.
//! - [`auth`]: API tokens and their roles.
//! - [`client`]: the operator's client of the API (`wasmgate cloud rollout`).
//! - [`console`]: the web console's files (it uses the API like any client).
//! - [`provisioning`]: identities for gateways that hold only a claim.
//! - [`rollout`]: a rollout's decisions (pure, unit-tested); [`rollouts`]:
//!   rollouts in the database and the task that drives them.

pub mod answers;
pub mod api;
pub mod auth;
pub mod client;
pub mod console;
pub mod db;
pub mod ingest;
pub mod provisioning;
pub mod record;
pub mod rollout;
pub mod rollouts;
pub mod tables;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::BrokerSettings;

/// The database `serve` uses when none is named: a SQLite file in the
/// working directory.
pub const DEFAULT_DATABASE: &str = "sqlite://wasmgate-serve.db";

/// Where the API listens when not told: loopback only.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8640";

#[derive(Debug)]
pub struct ServeOptions {
    pub broker: BrokerSettings,
    pub database: String,
    pub listen: SocketAddr,
    /// `ROLE TOKEN` lines; required to listen beyond loopback.
    pub tokens: Option<PathBuf>,
    /// Share events with other `serve` instances in this group.
    pub share: Option<String>,
    /// The fleet CA's certificate and key: with them, `serve` provisions
    /// gateways by claim.
    pub fleet_ca: Option<(PathBuf, PathBuf)>,
}

impl ServeOptions {
    /// Refuse what is unsafe before anything starts.
    pub fn check(&self) -> anyhow::Result<()> {
        if !self.listen.ip().is_loopback() && self.tokens.is_none() {
            anyhow::bail!(
                "--listen {} reaches beyond this machine: give --tokens FILE so that requests need a token",
                self.listen
            );
        }
        if let Some(group) = &self.share
            && (group.is_empty() || group.contains(['/', '+', '#']))
        {
            anyhow::bail!("--share {group:?}: a group name has no '/', '+' or '#'");
        }
        db::Backend::of(&self.database).map_err(anyhow::Error::msg)?;
        Ok(())
    }
}

/// Run until `cancel`: ingest and API, then drain both.
pub async fn run(options: ServeOptions, cancel: CancellationToken) -> anyhow::Result<()> {
    options.check()?;
    let tokens = options
        .tokens
        .as_deref()
        .map(auth::Tokens::load)
        .transpose()?
        .map(Arc::new);
    let fleet_ca = options
        .fleet_ca
        .as_ref()
        .map(|(cert, key)| provisioning::FleetCa::load(cert, key))
        .transpose()?;
    let db = db::Db::open(&options.database).await?;
    tracing::info!(database = %db::redact(&options.database), "database ready");
    let mut mqtt = crate::mqtt::mqtt_options(&options.broker, false)?;
    // Acknowledged only after the commit; a large window of unacknowledged
    // messages lets one commit take many.
    mqtt.set_manual_acks(true)
        .set_inflight(u16::try_from(ingest::MAX_COMMIT_MESSAGES).unwrap_or(u16::MAX));
    let (client, mut events) = rumqttc::AsyncClient::new(mqtt, 4 * ingest::MAX_COMMIT_MESSAGES);
    crate::mqtt::no_delay(&mut events);
    let answers = Arc::new(answers::Answers::default());
    let counters = Arc::new(ingest::Counters::default());
    let listener = tokio::net::TcpListener::bind(options.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", options.listen))?;
    let address = listener.local_addr()?;

    let tasks = TaskTracker::new();
    let (pulls, pulled) = tokio::sync::mpsc::channel(tables::PULL_QUEUE);
    let answerer = tables::Answerer {
        db: db.clone(),
        client: client.clone(),
    };
    tasks.spawn(answerer.run(pulled, cancel.clone()));
    let plain_edits = tables::PlainEdits {
        db: db.clone(),
        client: client.clone(),
    };
    tasks.spawn(plain_edits.run(cancel.clone()));
    let ingest = ingest::Ingest {
        pulls,
        client: client.clone(),
        db: db.clone(),
        share: options.share.clone(),
        answers: answers.clone(),
        counters: counters.clone(),
        provisioning: fleet_ca.map(|ca| provisioning::Provisioning::new(db.clone(), ca)),
    };
    tasks.spawn(ingest.run(events, cancel.clone()));
    let driver = rollouts::Driver {
        db: db.clone(),
        client: client.clone(),
        counters: counters.clone(),
    };
    tasks.spawn(driver.run(cancel.clone()));
    let router = console::router().merge(api::router(api::Api {
        db,
        client,
        answers,
        counters,
        tokens,
    }));
    let stop = cancel.clone();
    tasks.spawn(async move {
        let served = axum::serve(listener, router)
            .with_graceful_shutdown(stop.clone().cancelled_owned())
            .await;
        if let Err(e) = served {
            tracing::error!("the API stopped: {e}");
            stop.cancel();
        }
    });
    tasks.close();
    // The address goes to stdout, for scripts and tests that chose port 0.
    println!("api: http://{address}/api/v1");
    println!("console: http://{address}/console/");
    tracing::info!(%address, "serving the API");
    tasks.wait().await;
    Ok(())
}

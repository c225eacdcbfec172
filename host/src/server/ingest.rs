//! `serve`'s side of the broker: one task owns the MQTT event loop, reads
//! each message into a [`Record`], stores what arrived in one transaction
//! and only then acknowledges those messages to the broker (manual QoS 1
//! acks). A `serve` killed before its commit loses nothing: the broker sends
//! the messages again, and batch and alert ids keep them from being stored
//! twice.
//!
//! Events (telemetry, alerts, acks, deployment progress) may be shared
//! between several `serve` instances (`$share/GROUP/...`); retained state
//! (status, twins, registrations, models) goes to every instance, which
//! stores it idempotently.

use rumqttc::{AsyncClient, Event, EventLoop, Packet, Publish, QoS};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

use super::answers::Answers;
use super::db::Db;
use super::record::{self, Record};
use crate::wire::provision;
use crate::wire::topics::ROOT;

/// The most messages one commit takes.
pub const MAX_COMMIT_MESSAGES: usize = 512;

/// How long the first message of a commit waits for others to join it.
const GATHER: Duration = Duration::from_millis(5);

/// How long to wait before a commit that failed is tried again.
const RETRY: Duration = Duration::from_secs(1);

/// What `serve` counts, for `/api/v1/stats`.
#[derive(Debug, Default)]
pub struct Counters {
    pub messages: AtomicU64,
    pub points: AtomicU64,
    pub duplicates: AtomicU64,
    pub refused: AtomicU64,
    pub commits: AtomicU64,
    pub commit_failures: AtomicU64,
    /// Whether this instance drives the rollouts (see `rollouts`).
    pub drives_rollouts: std::sync::atomic::AtomicBool,
}

/// The filters `serve` subscribes to: events through the shared group if
/// one is given, state directly.
pub fn filters(share: Option<&str>, provisioning: bool) -> Vec<String> {
    let events = [
        "telemetry/+",
        "alert/+",
        "twin/ack",
        "deploy/res",
        "synced/+",
        "synced/+/pull",
    ];
    let state = [
        "status",
        "twin/reported",
        "twin/desired",
        "registration",
        "model",
        "action/+/res",
    ];
    let shared = |filter: String| match share {
        Some(group) => format!("$share/{group}/{filter}"),
        None => filter,
    };
    events
        .iter()
        .map(|s| shared(format!("{ROOT}/+/+/{s}")))
        .chain(state.iter().map(|s| format!("{ROOT}/+/+/{s}")))
        .chain(provisioning.then(|| shared(provision::REQUEST_FILTER.to_string())))
        .collect()
}

pub struct Ingest {
    pub client: AsyncClient,
    pub db: Db,
    pub share: Option<String>,
    pub answers: Arc<Answers>,
    pub counters: Arc<Counters>,
    /// Set when `serve` has the fleet CA and provisions gateways by claim.
    pub provisioning: Option<super::provisioning::Provisioning>,
    /// Gateways' pulls of synced tables, for the answerer.
    pub pulls: tokio::sync::mpsc::Sender<super::tables::Pull>,
}

/// Messages read but not yet committed, in arrival order.
#[derive(Default)]
struct Pending {
    messages: Vec<Publish>,
    records: Vec<Record>,
    since: Option<tokio::time::Instant>,
    /// A commit failed: not before this.
    retry_at: Option<tokio::time::Instant>,
}

impl Ingest {
    pub async fn run(self, mut events: EventLoop, cancel: CancellationToken) {
        let mut pending = Pending::default();
        let refusals = crate::rate::refusal_warnings();
        let mut connected = false;
        loop {
            let due = pending
                .retry_at
                .or(pending.since.map(|s| s + GATHER))
                .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
            let event = {
                let poll = events.poll();
                tokio::pin!(poll);
                tokio::select! {
                    biased;
                    _ = cancel.cancelled() => break,
                    _ = tokio::time::sleep_until(due), if !pending.messages.is_empty() => None,
                    event = &mut poll => Some(event),
                }
            };
            match event {
                None => self.commit(&mut pending).await,
                Some(Ok(Event::Incoming(Packet::ConnAck(_)))) => {
                    if !connected {
                        tracing::info!("connected to the broker");
                    }
                    connected = true;
                    for filter in filters(self.share.as_deref(), self.provisioning.is_some()) {
                        if let Err(e) = self.client.try_subscribe(filter, QoS::AtLeastOnce) {
                            tracing::error!("cannot subscribe: {e}");
                        }
                    }
                }
                Some(Ok(Event::Incoming(Packet::Publish(publish)))) => {
                    self.counters.messages.fetch_add(1, Ordering::Relaxed);
                    if let Some((claim, request)) = provision::parse_request_topic(&publish.topic)
                        && let Some(provisioning) = &self.provisioning
                    {
                        self.provision(provisioning, claim, request, &publish.payload)
                            .await;
                    } else {
                        self.read(&publish, &mut pending, &refusals);
                    }
                    pending.messages.push(publish);
                    pending.since.get_or_insert_with(tokio::time::Instant::now);
                    if pending.messages.len() >= MAX_COMMIT_MESSAGES && pending.retry_at.is_none() {
                        self.commit(&mut pending).await;
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    if connected {
                        tracing::warn!("lost the broker: {e}; reconnecting");
                    }
                    connected = false;
                    // What was read but not committed comes again from the
                    // broker (it was never acknowledged).
                    pending = Pending::default();
                    tokio::select! {
                        _ = cancel.cancelled() => break,
                        _ = tokio::time::sleep(RETRY) => {}
                    }
                }
            }
        }
        // Shutdown: commit what was read, then let the acks go out.
        if connected && !pending.messages.is_empty() {
            pending.retry_at = None;
            self.commit(&mut pending).await;
            let _ = self.client.try_disconnect();
            let drain = async {
                while let Ok(event) = events.poll().await {
                    if matches!(event, Event::Outgoing(rumqttc::Outgoing::Disconnect)) {
                        break;
                    }
                }
            };
            let _ = tokio::time::timeout(Duration::from_secs(2), drain).await;
        }
    }

    /// Read a fleet message into what the next commit stores.
    fn read(&self, publish: &Publish, pending: &mut Pending, refusals: &crate::rate::SharedLimit) {
        match record::read(&publish.topic, &publish.payload) {
            Ok(Some(Record::ActionResponse {
                gateway,
                device,
                action,
                response,
            })) => self.answers.answer(&gateway, &device, &action, response),
            Ok(Some(record)) => pending.records.push(record),
            Ok(None) => {}
            Err(reason) => {
                self.counters.refused.fetch_add(1, Ordering::Relaxed);
                if refusals.allow() {
                    tracing::warn!("not stored: {reason}");
                }
            }
        }
    }

    /// Answer a provisioning request. It is acknowledged with the next
    /// commit; if `serve` cannot answer now, the gateway asks again.
    async fn provision(
        &self,
        provisioning: &super::provisioning::Provisioning,
        claim: &str,
        request: &str,
        payload: &[u8],
    ) {
        let now = super::db::now_ms() as u64;
        match provisioning.handle(claim, request, payload, now).await {
            Ok(response) => {
                let topic = provision::response_topic(claim, request);
                let payload = serde_json::to_vec(&response).unwrap_or_default();
                if let Err(e) = self
                    .client
                    .try_publish(topic, QoS::AtLeastOnce, false, payload)
                {
                    tracing::error!("cannot answer provisioning request {request}: {e}");
                }
            }
            Err(e) => tracing::error!("provisioning request {request} not answered: {e}"),
        }
    }

    /// Store what is pending; acknowledge it once committed.
    async fn commit(&self, pending: &mut Pending) {
        let now = crate::value::now_ns() as i64;
        let result = match self.db.store(&pending.records, now).await {
            // One record the database refuses (not a lost connection, nor
            // a lock that a moment will free) must not hold up the rest:
            // store them one by one and refuse only that one.
            Err(e @ sqlx::Error::Database(_))
                if pending.records.len() > 1 && !super::db::is_transient(&e) =>
            {
                self.store_one_by_one(&pending.records, now).await
            }
            other => other.map_err(|e| e.to_string()),
        };
        match result {
            Ok(stored) => {
                self.counters.commits.fetch_add(1, Ordering::Relaxed);
                self.counters
                    .points
                    .fetch_add(stored.points, Ordering::Relaxed);
                self.counters
                    .duplicates
                    .fetch_add(stored.duplicates, Ordering::Relaxed);
                // The changesets down the commit made, and the pulls that
                // came with it, are answered once it is stored, by the
                // answerer (sending may wait, and this task must keep the
                // event loop turning). One dropped is asked for again.
                let pulls = stored
                    .down
                    .into_iter()
                    .chain(pending.records.iter().filter_map(|r| match r {
                        Record::Pull(pull) => Some(pull.clone()),
                        _ => None,
                    }));
                for pull in pulls {
                    if self.pulls.try_send(pull).is_err() {
                        tracing::warn!(
                            "a pull was dropped: too many are waiting (the gateway pulls again)"
                        );
                    }
                }
                for publish in pending.messages.drain(..) {
                    if let Err(e) = self.client.try_ack(&publish) {
                        // Not lost: unacknowledged, it comes again after
                        // a reconnect, and is not stored twice.
                        tracing::warn!("cannot acknowledge a stored message: {e}");
                    }
                }
                *pending = Pending::default();
            }
            Err(e) => {
                self.counters
                    .commit_failures
                    .fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    "cannot store {} messages: {e}; trying again in {} s",
                    pending.messages.len(),
                    RETRY.as_secs()
                );
                pending.retry_at = Some(tokio::time::Instant::now() + RETRY);
            }
        }
    }

    async fn store_one_by_one(
        &self,
        records: &[Record],
        now: i64,
    ) -> Result<super::db::Stored, String> {
        let mut total = super::db::Stored::default();
        for record in records {
            match self.db.store(std::slice::from_ref(record), now).await {
                Ok(stored) => {
                    total.points += stored.points;
                    total.duplicates += stored.duplicates;
                    total.down.extend(stored.down);
                }
                // Busy or locked is not a refusal: the commit is tried
                // again, and nothing is acknowledged meanwhile.
                Err(e) if super::db::is_transient(&e) => return Err(e.to_string()),
                Err(sqlx::Error::Database(e)) => {
                    self.counters.refused.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        gateway = record.gateway(),
                        "the database refused a record: {e}"
                    );
                }
                Err(e) => return Err(e.to_string()),
            }
        }
        Ok(total)
    }
}

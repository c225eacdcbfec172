//! The gateway's connection to the broker.
//!
//! One task owns the rumqttc `EventLoop` and is the only one that publishes,
//! so the order in which publishes leave is the order of the
//! `Outgoing::Publish(pkid)` events, and each acknowledged packet id maps
//! back to exactly the outbox row it carried. An outbox row is deleted only
//! when its PUBACK arrives. On a disconnect, every publish not yet
//! acknowledged is forgotten by rumqttc (its pending list is cleared) and
//! sent again from the outbox after the reconnect, so delivery is at least
//! once and a batch id lets consumers drop the rare duplicate.
//!
//! Reconnects back off exponentially (with jitter) up to a cap. The session
//! is persistent, so downlink messages sent while the gateway was away are
//! delivered when it comes back.

use backon::BackoffBuilder as _;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, mpsc};
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use super::connection::{self, Client, LinkEvent, Options, Properties};
use super::downlink::{Downlink, Reply};
use super::ledger::{HARD_QUEUED_BYTES, Ledger, Sent};
use super::protocol::{OutboxInfo, Status};
use super::topics;
use crate::config::{CloudConfig, OutboxConfig};
use crate::mqtt::reconnect_backoff;
use crate::outbox::{self, Lane, Stream, Usage};
use crate::report::Reporter;
use crate::store::Database;
use crate::value::now_ns;

/// Everything the link needs.
pub struct LinkSpec {
    pub gateway: String,
    pub config: CloudConfig,
    pub db: Database,
    /// The outbox's totals, limits and counters.
    pub usage: Arc<Usage>,
    /// Signalled when rows are added to the outbox.
    pub outbox_signal: Arc<Notify>,
    /// Signalled when an app's state changes.
    pub status_signal: Arc<Notify>,
    /// The gateway's report, for the status message; the link's counters
    /// are in its metrics.
    pub report: Reporter,
    /// Where received messages go; the link polls its
    /// [`Downlink::next_answer`] for the actions it sent straight to apps.
    pub downlink: Downlink,
    /// The answers of the downlink's workers and services.
    pub replies: mpsc::Receiver<Reply>,
    /// For MQTT 5's message expiry: each series' `max_age`.
    pub outbox: OutboxConfig,
}

/// Outbox rows a read asks for beyond what fits and what is already out
/// ([`Ledger::read_limit`]).
const READ_AHEAD: usize = 8;

/// Acknowledged rows are deleted in one transaction once this many wait,
/// or once nothing is out (`Ledger::settle_due`), or at the latest on the
/// outbox's one-second poll: one commit for many PUBACKs rather than one for
/// each pump. Not many more: deleting holds up the sending, and a larger
/// batch (256) slowed a backlog's drain (P3). A crash sends again what was
/// delivered and not yet deleted (duplicates, not a loss), so this also
/// bounds those.
const SETTLE_BATCH: usize = 64;

/// Acknowledged rows not yet deleted past which a pump waits for the write
/// lock rather than put the delete off again (see
/// [`Link::settle_delivered`]): what the link holds in memory, and what a
/// crash would send twice, stay bounded.
const MAX_UNSETTLED: usize = 4096;

/// How long a read of the outbox held back by the quarter-window rule
/// ([`Ledger::read_held`]) waits for more PUBACKs before the link reads and
/// sends what fits anyway. Against a broker that acknowledges promptly, a
/// quarter of the window is free well within it; against one with Nagle's
/// algorithm on, the publish sent then carries the TCP acknowledgement the
/// broker's held PUBACKs wait for.
const REFILL_WAIT: Duration = Duration::from_millis(1);

struct Link {
    spec_gateway: String,
    /// `{gateway}-{database id}`: batch and alert ids are this and the
    /// outbox seq (see `store::id_prefix`).
    id_prefix: String,
    status_topic: String,
    client: Client,
    outbox: OutboxConfig,
    db: rusqlite::Connection,
    usage: Arc<Usage>,
    report: Reporter,
    metrics: crate::metrics::Metrics,
    connected: bool,
    /// What is out and what waits (see `ledger`).
    ledger: Ledger,
    /// A pump (which first deletes what the ledger says was delivered once
    /// [`SETTLE_BATCH`] wait) waits for the connection's ready events to be
    /// handled.
    pump_due: bool,
    /// Whether a read is held back by the quarter-window rule; it is made
    /// anyway when `held_read` fires, [`REFILL_WAIT`] after it was first
    /// held. One timer, reset when a read is first held, not made anew.
    read_held: bool,
    held_read: Pin<Box<tokio::time::Sleep>>,
}

/// Run the link until `cancel`; then mark the gateway offline and disconnect.
pub async fn run(spec: LinkSpec, cancel: CancellationToken) -> anyhow::Result<()> {
    if let crate::config::Profile::Sparkplug(ids) = &spec.config.profile {
        let ids = ids.clone();
        return super::sparkplug::link::run(spec, ids, cancel).await;
    }
    let LinkSpec {
        gateway,
        config,
        db,
        usage,
        outbox_signal,
        status_signal,
        report,
        mut downlink,
        mut replies,
        outbox,
    } = spec;
    let status_topic = topics::topic(&gateway, &gateway, "status");
    let will = Status {
        online: false,
        time: None,
        reason: Some("connection lost".into()),
        labels: Default::default(),
        broker: None,
        apps: vec![],
        outbox: OutboxInfo::default(),
    };
    // Every broker the gateway may use (one, or the nodes of a cluster), in
    // order: it moves to the next when the one it is on fails.
    let will = serde_json::to_vec(&will)?;
    let mut brokers: Vec<(String, Options)> = Vec::new();
    for settings in std::iter::once(&config.broker).chain(&config.failover) {
        let options = Options::new(
            settings,
            config.mqtt_version,
            config.session_expiry,
            config.max_inflight,
            (&status_topic, will.clone()),
        )?;
        let url = settings.url();
        brokers.push((url, options));
    }
    let mut on = 0;
    let mut url = brokers[0].0.clone();
    report.metrics().link.set_broker(url.clone());
    let (client, mut eventloop) = connection::connect(
        brokers[0].1.clone(),
        usize::from(config.max_inflight) * 2 + 16,
    );

    let conn = db.open()?;
    let mut link = Link {
        id_prefix: crate::store::id_prefix(&conn, &gateway)?,
        spec_gateway: gateway.clone(),
        status_topic,
        client,
        outbox,
        db: conn,
        usage,
        metrics: report.metrics().clone(),
        report,
        ledger: Ledger::new(usize::from(config.max_inflight)),
        connected: false,
        pump_due: false,
        read_held: false,
        held_read: Box::pin(tokio::time::sleep(REFILL_WAIT)),
    };
    let backoff = reconnect_backoff(config.backoff_initial, config.backoff_max);
    let mut delays = backoff.build();
    let mut was_connected = false;
    let mut connects = 0u64;
    let mut status_timer = tokio::time::interval(config.status_interval);
    status_timer.set_missed_tick_behavior(MissedTickBehavior::Skip);
    // A slow poll of the outbox in case a signal was missed: the writer
    // signals every commit and every batch it seals.
    let mut outbox_timer = tokio::time::interval(Duration::from_secs(1));
    outbox_timer.set_missed_tick_behavior(MissedTickBehavior::Skip);

    tracing::info!(broker = %url, client_id = %config.broker.client_id, "connecting to the broker");
    'run: loop {
        // `poll` must not be dropped half-way (a connection attempt would be
        // abandoned), so it stays pinned while the other branches run; they
        // only talk to rumqttc through the client.
        let event = {
            let poll = eventloop.poll();
            tokio::pin!(poll);
            loop {
                tokio::select! {
                    biased;
                    _ = cancel.cancelled() => break 'run,
                    event = &mut poll => break event,
                    // Past its bound the ledger takes no more: the
                    // workers wait on this channel instead of losing answers.
                    Some(reply) = replies.recv(), if link.ledger.takes_replies() => {
                        link.queue(reply, false);
                        link.pump();
                    }
                    reply = downlink.next_answer(), if downlink.answers_pending() && link.ledger.takes_replies() => {
                        link.queue(reply, false);
                        link.pump();
                    }
                    _ = outbox_signal.notified() => {
                        link.ledger.outbox_changed();
                        link.pump();
                    }
                    _ = outbox_timer.tick() => {
                        // Whatever was delivered since, however little; and
                        // a read in case a signal was missed.
                        link.settle_delivered(false);
                        link.ledger.outbox_changed();
                        link.pump();
                    }
                    _ = status_signal.notified() => {
                        // An app's start and a device's registration queue
                        // rows (models, announcements) with this signal.
                        link.ledger.outbox_changed();
                        link.queue_status(true, None);
                        link.pump();
                    }
                    _ = status_timer.tick() => {
                        link.queue_status(true, None);
                        link.pump();
                    }
                    () = link.held_read.as_mut(), if link.read_held => link.pump_held(),
                    // Last: only once nothing above is ready.
                    _ = std::future::ready(()), if link.pump_due => link.pump(),
                }
            }
        };
        match event {
            Ok(LinkEvent::Connected) => {
                tracing::info!(broker = %url, "connected to the broker");
                if link
                    .metrics
                    .link
                    .connected
                    .swap(true, std::sync::atomic::Ordering::Relaxed)
                    || connects > 0
                {
                    link.metrics
                        .link
                        .reconnects
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                connects += 1;
                delays = backoff.build();
                was_connected = true;
                link.connected = true;
                for filter in topics::downlink_filters(&gateway) {
                    if let Err(e) = link.client.try_subscribe(&filter) {
                        tracing::error!("cannot subscribe: {e}");
                    }
                }
                // What the server changed in synced tables while the link
                // was away: asked for again, after the subscriptions.
                // (The pump below reads them from the outbox.)
                if let Err(e) = crate::tables::queue_all_pulls(&link.db) {
                    tracing::warn!("cannot queue the synced tables' pulls: {e}");
                }
                link.queue_status(true, None);
                link.pump();
            }
            Ok(LinkEvent::Subscribed(refused)) => {
                if refused {
                    tracing::error!(
                        "the broker refused a subscription: desired changes or actions will not arrive (check its ACL)"
                    );
                }
            }
            Ok(LinkEvent::Acknowledged(pkid, refused)) => {
                if let Some(reason) = refused {
                    // The broker will not take it again either: it counts as
                    // delivered, and the log says why it went nowhere.
                    tracing::warn!(pkid, "the broker did not take a message: {reason}");
                }
                link.acknowledged(pkid);
                let delivered = link.ledger.delivered().len();
                if delivered > 0 && delivered.is_multiple_of(SETTLE_BATCH) {
                    link.pump();
                } else {
                    link.pump_due = true;
                }
            }
            Ok(LinkEvent::Message(message)) => {
                let respond_to = message.response_topic.map(|topic| crate::wire::RespondTo {
                    topic,
                    correlation: message.correlation,
                });
                if let Some(refusal) =
                    downlink.dispatch_answering(&message.topic, &message.payload, respond_to)
                {
                    link.queue(refusal, false);
                    link.pump();
                }
            }
            Ok(LinkEvent::Sent(pkid)) => link.sent(pkid),
            Ok(_) => {}
            Err(e) => {
                // rumqttc would republish what was in flight; the outbox
                // does that instead, so forget it here.
                eventloop.forget_pending();
                link.disconnected();
                link.metrics
                    .link
                    .connected
                    .store(false, std::sync::atomic::Ordering::Relaxed);
                let wait = delays.next().unwrap_or(config.backoff_max);
                let error = if was_connected {
                    was_connected = false;
                    format!("lost the connection to the broker {url}: {}", e.describe())
                } else {
                    format!("cannot connect to the broker {url}: {}", e.describe())
                };
                if brokers.len() > 1 {
                    // Another node of the cluster: the outbox sends there
                    // what this one did not acknowledge.
                    on = (on + 1) % brokers.len();
                    url = brokers[on].0.clone();
                    eventloop.use_options(&brokers[on].1);
                    link.metrics.link.set_broker(url.clone());
                    tracing::warn!(
                        "{error}; moving to the broker {url} in {} ms",
                        wait.as_millis()
                    );
                } else {
                    tracing::warn!("{error}; trying again in {} ms", wait.as_millis());
                }
                link.metrics.link.set_last_error(error);
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = cancel.cancelled() => break 'run,
                }
            }
        }
    }

    // Shutdown: say so in the retained status, wait for the broker to have
    // it, then disconnect cleanly (a clean disconnect does not fire the last
    // will). The status goes past our window: rumqttc queues it behind what
    // is in flight.
    if link.connected {
        let status = link.status(false, Some("shutdown"));
        let reply = Reply {
            topic: link.status_topic.clone(),
            payload: serde_json::to_vec(&status).unwrap_or_default(),
            correlation: None,
        };
        let mut disconnecting = false;
        if link
            .publish(&reply.topic, true, reply.payload.clone())
            .is_ok()
        {
            link.ledger.submit(Sent::Message(reply, true));
        } else {
            disconnecting = link.client.try_disconnect().is_ok();
        }
        let deadline = tokio::time::sleep(Duration::from_secs(3));
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = &mut deadline => break,
                event = eventloop.poll() => match event {
                    Ok(LinkEvent::Sent(pkid)) => link.sent(pkid),
                    Ok(LinkEvent::Acknowledged(pkid, _)) => {
                        link.acknowledged(pkid);
                        let status_pending = link.ledger.carries(&link.status_topic);
                        if !status_pending && !disconnecting {
                            disconnecting = link.client.try_disconnect().is_ok();
                        }
                    }
                    Ok(LinkEvent::Disconnecting) | Err(_) => break,
                    Ok(_) => {}
                },
            }
        }
        link.settle_delivered(true);
        tracing::info!("disconnected from the broker");
    }
    Ok(())
}

impl Link {
    fn queue(&mut self, reply: Reply, retain: bool) {
        if let Err(reply) = self.ledger.queue(reply, retain) {
            let dropped = self
                .metrics
                .link
                .replies_dropped
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if dropped.is_power_of_two() || dropped == 0 {
                tracing::warn!(topic = %reply.topic, "dropping a reply: {HARD_QUEUED_BYTES} bytes of replies already wait for the broker ({} dropped so far)", dropped + 1);
            }
        }
    }

    fn queue_status(&mut self, online: bool, reason: Option<&str>) {
        // Only the newest status matters.
        let topic = self.status_topic.clone();
        let status = self.status(online, reason);
        let payload = serde_json::to_vec(&status).unwrap_or_default();
        self.ledger.queue_latest(
            Reply {
                topic,
                payload,
                correlation: None,
            },
            true,
        );
    }

    fn status(&self, online: bool, reason: Option<&str>) -> Status {
        self.report.status(online, reason, now_ns())
    }

    /// Send what fits in the window, and show how full it is.
    fn pump(&mut self) {
        self.pump_reading(false);
    }

    /// [`pump`](Self::pump), reading the outbox even with less than a
    /// quarter of the window free: a read held back for [`REFILL_WAIT`].
    fn pump_held(&mut self) {
        self.read_held = false;
        self.pump_reading(true);
    }

    fn pump_reading(&mut self, held_too: bool) {
        self.fill_window(held_too);
        self.hold_read();
        self.metrics.link.set_window(self.ledger.occupancy());
    }

    /// Start the wait of a read the quarter-window rule holds back, if one
    /// is and none was; forget it once none is.
    fn hold_read(&mut self) {
        if !self.connected || !self.ledger.read_held() {
            self.read_held = false;
        } else if !self.read_held {
            self.read_held = true;
            self.held_read
                .as_mut()
                .reset(tokio::time::Instant::now() + REFILL_WAIT);
        }
    }

    /// Send what fits in the window: queued messages first, then the outbox
    /// (alerts before everything else, then in order).
    fn fill_window(&mut self, held_too: bool) {
        self.pump_due = false;
        if self.ledger.settle_due(SETTLE_BATCH) {
            self.settle_delivered(self.ledger.delivered().len() >= MAX_UNSETTLED);
        }
        if !self.connected {
            return;
        }
        // Everything this pump reads (the rows, their payloads, the devices'
        // states) comes from one read transaction. On its own each query is
        // a transaction of its own, and each takes and drops SQLite's file
        // locks (two `fcntl` calls or more): three queries a device a second
        // at 10,000 devices (BENCHMARKS.md, S2). One snapshot also means a
        // row read is still there when its payload is read. Only reads
        // happen in it, so it never waits for the apps' writers nor holds
        // them up; deletes are settled above, outside it.
        // A pump that reads nothing (one that sends an action's answer)
        // opens no transaction.
        let read = self.ledger.read_due() || (held_too && self.ledger.read_held());
        let snapshot =
            (read || self.ledger.twins_due()).then(|| self.db.execute_batch("BEGIN DEFERRED"));
        self.send_what_fits(read);
        if let Some(Ok(())) = snapshot
            && let Err(e) = self.db.execute_batch("COMMIT")
        {
            tracing::error!("cannot end the outbox's read transaction: {e}");
            let _ = self.db.execute_batch("ROLLBACK");
        }
    }

    /// [`Link::fill_window`]'s sending, in its read transaction; the outbox
    /// is read if `read` ([`Ledger::read_due`]).
    fn send_what_fits(&mut self, read: bool) {
        while let Some((reply, retain)) = self.ledger.next_message() {
            let properties = Properties {
                correlation: reply.correlation.clone(),
                ..Properties::default()
            };
            if let Err(e) =
                self.client
                    .try_publish(&reply.topic, retain, reply.payload.clone(), &properties)
            {
                tracing::debug!("publish queue full: {e}");
                self.ledger.unsent(reply, retain);
                return;
            }
            self.ledger.submit(Sent::Message(reply, retain));
        }
        // States to send again, for twin rows that came while they were out.
        while let Some(device) = self.ledger.next_twin_due() {
            match self.publish_twin(&device) {
                Ok(Some(sent)) => self.ledger.submit(sent),
                Ok(None) => {}
                Err(e) => {
                    tracing::debug!("publish queue full: {e}");
                    self.ledger.twin_unsent(device);
                    return;
                }
            }
        }
        // A state just handed out may free an ack held back for it.
        if !read && !self.ledger.read_due() {
            return;
        }
        // The first lane (alerts, announcements, states, acks), then the
        // later one (telemetry, synced tables) with what room is left.
        let mut through = true;
        for lane in [Lane::First, Lane::Later] {
            if !self.ledger.room() {
                through = false;
                break;
            }
            match self.send_lane(lane, self.ledger.read_limit(READ_AHEAD)) {
                Some(lane_through) => through &= lane_through,
                // An early return: the outbox is read again at the next pump.
                None => return,
            }
        }
        if through {
            self.ledger.outbox_read_through();
        }
    }

    /// Hand out the rows of `lane` that fit, read on from where the last
    /// read of it left off: `Some(true)` if the read went through (every
    /// row it could find handled or skipped), `None` if it stopped on an
    /// error or a full rumqttc queue.
    fn send_lane(&mut self, lane: Lane, limit: usize) -> Option<bool> {
        let outbox::Unsent { rows, open, last } =
            match outbox::unsent_in(&self.db, lane, limit, self.ledger.read_past(lane)) {
                Ok(read) => read,
                Err(e) => {
                    tracing::error!("cannot read the outbox: {e}");
                    return None;
                }
            };
        // Rows past the limit, or a read that stops short below: the
        // outbox is read again at the next pump.
        let through = rows.len() < limit;
        // Read on past each row handed out, up to the first one that is not
        // (the window filled, or it could not be read): that one is read
        // again next time.
        let mut passing = true;
        for row in &rows {
            if !self.ledger.room() {
                return Some(false);
            }
            let handled = if self.ledger.row_out(row.seq) {
                true
            } else if row.kind == "twin" && self.ledger.twin_out(&row.device) {
                // The state out does not hold this row's report: it is sent
                // again once acknowledged.
                self.ledger.twin_later(&row.device);
                true
            } else if row.kind == "ack" && self.ledger.hold_ack(&row.device) {
                // Not passed: read again once the device's newer state is
                // handed out, ahead of it.
                false
            } else {
                let published = match row.kind.as_str() {
                    "twin" => self.publish_twin(&row.device),
                    "alert" => self.publish_alert(row),
                    "ack" => self.publish_stored(row, "twin/ack", false),
                    "registration" => self.publish_stored(row, "registration", true),
                    "model" => self.publish_stored(row, "model", true),
                    "changeset" => self.publish_changeset(row),
                    "pull" => {
                        let suffix = format!("synced/{}/pull", row.name);
                        self.publish_stored(row, &suffix, false)
                    }
                    _ => self.publish_telemetry(row),
                };
                match published {
                    Ok(Some(sent)) => {
                        self.ledger.submit(sent);
                        true
                    }
                    Ok(None) => false,
                    Err(e) => {
                        tracing::debug!("publish queue full: {e}");
                        return None;
                    }
                }
            };
            passing &= handled;
            if passing {
                self.ledger.pass(lane, row.seq, open);
            }
        }
        // Every row of the lane there was is handled: the rows of the other
        // lane up to the outbox's last need not be read past again.
        if through
            && passing
            && let Some(last) = last
        {
            self.ledger.pass(lane, last, open);
        }
        Some(through)
    }

    fn publish(
        &self,
        topic: &str,
        retain: bool,
        payload: Vec<u8>,
    ) -> Result<(), connection::ClientError> {
        self.publish_with(topic, retain, payload, &Properties::default())
    }

    fn publish_with(
        &self,
        topic: &str,
        retain: bool,
        payload: Vec<u8>,
        properties: &Properties,
    ) -> Result<(), connection::ClientError> {
        let bytes = payload.len() as u64;
        self.client
            .try_publish(topic, retain, payload, properties)?;
        self.metrics
            .link
            .bytes_sent
            .fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// The device's whole reported state, retained; settles every twin row
    /// of the device written so far.
    fn publish_twin(&mut self, device: &str) -> Result<Option<Sent>, connection::ClientError> {
        if self.ledger.twin_out(device) {
            return Ok(None);
        }
        let upto = match outbox::last_twin_seq(&self.db, device) {
            // No row left: the state sent last covers every report.
            Ok(0) => return Ok(None),
            Ok(seq) => seq,
            Err(e) => {
                tracing::error!("cannot read the outbox: {e}");
                return Ok(None);
            }
        };
        let (version, attributes) = match crate::store::reported_state(&self.db, device) {
            Ok(state) => state,
            Err(e) => {
                tracing::error!("cannot read the twin of {device}: {e}");
                return Ok(None);
            }
        };
        let payload = reported_payload(version, now_ns(), &attributes);
        let topic = topics::topic(&self.spec_gateway, device, "twin/reported");
        self.publish(&topic, true, payload)?;
        Ok(Some(Sent::Row {
            seq: upto,
            twin_device: Some(device.to_string()),
            counted: None,
        }))
    }

    /// A row's payload; `None` if it is gone (evicted or expired since it
    /// was read) or cannot be read (said in the log; it is tried again).
    fn stored(&self, row: &outbox::Row) -> Option<Vec<u8>> {
        outbox::payload(&self.db, row.seq).unwrap_or_else(|e| {
            tracing::error!("cannot read the outbox: {e}");
            None
        })
    }

    fn publish_alert(
        &mut self,
        row: &outbox::Row,
    ) -> Result<Option<Sent>, connection::ClientError> {
        let Some(stored) = self.stored(row) else {
            return Ok(None);
        };
        let mut alert: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(&stored).unwrap_or_default();
        alert.insert(
            "id".into(),
            format!("{}-{}", self.id_prefix, row.seq).into(),
        );
        let topic = topics::topic(
            &self.spec_gateway,
            &row.device,
            &format!("alert/{}", row.name),
        );
        self.publish(
            &topic,
            false,
            serde_json::to_vec(&alert).unwrap_or_default(),
        )?;
        Ok(Some(Sent::Row {
            seq: row.seq,
            twin_device: None,
            counted: Some((
                Stream::alert(&row.device, &row.name),
                row.bytes,
                u64::from(row.points),
            )),
        }))
    }

    /// A row sent as it is stored, on the device's `suffix` topic: an ack
    /// (`twin/ack`), or a registered device's retained announcement
    /// (`registration`; an empty one clears it).
    fn publish_stored(
        &mut self,
        row: &outbox::Row,
        suffix: &str,
        retain: bool,
    ) -> Result<Option<Sent>, connection::ClientError> {
        let Some(payload) = self.stored(row) else {
            return Ok(None);
        };
        let topic = topics::topic(&self.spec_gateway, &row.device, suffix);
        self.publish(&topic, retain, payload)?;
        Ok(Some(Sent::Row {
            seq: row.seq,
            twin_device: None,
            counted: None,
        }))
    }

    /// A synced table's changeset: its rules and changes as stored (a JSON
    /// object), with the id the server skips a repeat by and the table
    /// (`docs/protocol.md`).
    fn publish_changeset(
        &mut self,
        row: &outbox::Row,
    ) -> Result<Option<Sent>, connection::ClientError> {
        let Some(stored) = self.stored(row) else {
            return Ok(None);
        };
        // The stored object is already JSON: open it with the id and the
        // table rather than parse and re-encode it, as telemetry is wrapped.
        let Some(fields) = stored.strip_prefix(b"{") else {
            tracing::error!(
                seq = row.seq,
                "a changeset row is not a JSON object: left in the outbox"
            );
            return Ok(None);
        };
        let mut payload = Vec::with_capacity(stored.len() + 96);
        payload.extend_from_slice(
            format!(
                "{{\"id\":\"{}-{}\",\"table\":{},",
                self.id_prefix,
                row.seq,
                serde_json::Value::from(row.name.as_str())
            )
            .as_bytes(),
        );
        payload.extend_from_slice(fields);
        let topic = topics::topic(
            &self.spec_gateway,
            &row.device,
            &format!("synced/{}", row.name),
        );
        self.publish(&topic, false, payload)?;
        Ok(Some(Sent::Row {
            seq: row.seq,
            twin_device: None,
            counted: None,
        }))
    }

    /// A sealed telemetry row, as the writer cut it: one message.
    fn publish_telemetry(
        &mut self,
        row: &outbox::Row,
    ) -> Result<Option<Sent>, connection::ClientError> {
        let Some(points) = self.stored(row) else {
            return Ok(None);
        };
        // The stored batch is already the JSON array of points: wrap it
        // rather than parse and re-encode it.
        let mut payload = Vec::with_capacity(points.len() + 64);
        payload.extend_from_slice(
            format!("{{\"batch\":\"{}-{}\",\"points\":", self.id_prefix, row.seq).as_bytes(),
        );
        payload.extend_from_slice(&points);
        payload.push(b'}');
        let topic = topics::topic(
            &self.spec_gateway,
            &row.device,
            &format!("telemetry/{}", row.name),
        );
        let properties = Properties {
            message_expiry: self.message_expiry(row),
            ..Properties::default()
        };
        self.publish_with(&topic, false, payload, &properties)?;
        Ok(Some(Sent::Row {
            seq: row.seq,
            twin_device: None,
            counted: Some((
                Stream::telemetry(&row.device, &row.name),
                row.bytes,
                u64::from(row.points),
            )),
        }))
    }

    /// MQTT 5: a telemetry row's message expires when its series' points
    /// would expire in the outbox (`max_age_s`): what a consumer would not
    /// have been sent had it waited here is not delivered late from the
    /// broker's queue either. Measured from when the row was written; at
    /// least a second.
    fn message_expiry(&self, row: &outbox::Row) -> Option<u32> {
        // 3.1.1 has no expiry to carry it.
        if matches!(self.client, Client::V4(_)) {
            return None;
        }
        let series = self
            .outbox
            .series
            .get(&row.name)
            .unwrap_or(&self.outbox.defaults);
        let max_age = series.max_age?;
        let waited = Duration::from_nanos(now_ns().saturating_sub(row.created_at.max(0) as u64));
        let left = max_age.saturating_sub(waited).as_secs().max(1);
        Some(u32::try_from(left).unwrap_or(u32::MAX))
    }

    /// rumqttc sent the next submitted publish with packet id `pkid`.
    fn sent(&mut self, pkid: u16) {
        if !self.ledger.sent(pkid) {
            tracing::warn!(pkid, "a publish left that the link did not submit");
        }
    }

    /// The broker acknowledged packet `pkid`: what it carried is delivered,
    /// and settled with the next pump.
    fn acknowledged(&mut self, pkid: u16) {
        self.metrics
            .link
            .messages_sent
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if self.ledger.acknowledged(pkid).is_none() {
            tracing::debug!(pkid, "acknowledgement for an unknown packet");
        }
    }

    /// Delete the delivered rows from the outbox, in one transaction.
    ///
    /// Unless `wait`, a delete that would wait for the write lock (the apps'
    /// reports and the ingest writer commit all the time) is put off to a
    /// later pump, and the rows stay out in the ledger meanwhile, so that
    /// sending never waits on those commits. At 10,000 devices the link
    /// spent its time waiting there and sent a tenth of what came in
    /// (BENCHMARKS.md, S2).
    fn settle_delivered(&mut self, wait: bool) {
        match settle_or_defer(&self.db, &self.usage, self.ledger.delivered(), wait) {
            Settle::Later => {}
            Settle::Done => self.ledger.settled(),
            Settle::Failed => {
                // They stay in the outbox: read (and sent) again.
                self.ledger.settled();
                self.ledger.read_again();
            }
        }
    }

    /// Forget what was in flight; rows are read from the outbox again and
    /// unacknowledged messages are queued again, in their order.
    fn disconnected(&mut self) {
        // What was acknowledged is delivered: deleted before the rows are
        // read again, so it is not sent twice.
        self.settle_delivered(true);
        self.connected = false;
        self.ledger.disconnected();
        self.metrics.link.set_window(self.ledger.occupancy());
    }
}

/// A device's `twin/reported` message, `{"version":…,"time":…,"attributes":{…}}`,
/// from the attributes' JSON as `twin` keeps it (ordered by name). The
/// stored JSON goes in as it is (`RawValue`: checked, not built):
/// parsing every value into a `serde_json::Value` and encoding it again
/// took 1.8 % of the gateway's CPU at 10,000 devices (BENCHMARKS.md, S2).
/// A value that is not JSON (a database written by hand) is left out, as
/// it was.
fn reported_payload(version: u64, time: u64, attributes: &[(String, String)]) -> Vec<u8> {
    use serde_json::value::RawValue;
    #[derive(serde::Serialize)]
    struct Reported<'a> {
        version: u64,
        time: u64,
        #[serde(serialize_with = "as_map")]
        attributes: Vec<(&'a str, &'a RawValue)>,
    }
    fn as_map<S: serde::Serializer>(
        pairs: &[(&str, &RawValue)],
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.collect_map(pairs.iter().copied())
    }
    let attributes = attributes
        .iter()
        .filter_map(|(name, json)| Some((name.as_str(), serde_json::from_str(json).ok()?)))
        .collect();
    let reported = Reported {
        version,
        time,
        attributes,
    };
    // Serialising strings, numbers and raw JSON into a Vec cannot fail.
    serde_json::to_vec(&reported).unwrap_or_default()
}

/// What acknowledged publishes carried is delivered: their outbox rows are
/// removed (a device's twin rows up to the one sent, or the one row), in
/// one transaction, and taken off the outbox's totals. A message carrying
/// no row settles nothing. `false` if the rows could not be removed: they
/// stay and are sent again (duplicates, not a loss).
pub(crate) fn settle(db: &rusqlite::Connection, usage: &Usage, sent: &[Sent]) -> bool {
    matches!(settle_or_defer(db, usage, sent, true), Settle::Done)
}

/// What became of a [`settle_or_defer`].
#[derive(Debug, PartialEq)]
enum Settle {
    /// The rows are deleted.
    Done,
    /// Another writer held the database: nothing was done, try later.
    Later,
    /// The rows could not be deleted (said in the log).
    Failed,
}

/// [`settle`], or, unless `wait`, nothing at all if another writer holds
/// the database now.
fn settle_or_defer(db: &rusqlite::Connection, usage: &Usage, sent: &[Sent], wait: bool) -> Settle {
    let mut rows = Vec::new();
    let mut twins = Vec::new();
    for sent in sent {
        if let Sent::Row {
            seq,
            twin_device,
            counted,
        } = sent
        {
            match twin_device {
                Some(device) => twins.push((device.clone(), *seq)),
                None => rows.push((*seq, counted.clone())),
            }
        }
    }
    if rows.is_empty() && twins.is_empty() {
        return Settle::Done;
    }
    let deleted = if wait {
        outbox::delete_delivered_all(db, usage, &rows, &twins)
    } else {
        crate::store::without_waiting(db, || {
            outbox::delete_delivered_all(db, usage, &rows, &twins)
        })
    };
    match deleted {
        Ok(()) => Settle::Done,
        Err(e) if !wait && e.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy) => {
            Settle::Later
        }
        Err(e) => {
            tracing::error!("cannot remove delivered rows from the outbox: {e}");
            Settle::Failed
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reported_state_carries_the_stored_json_as_it_is_and_leaves_out_what_is_not_json() {
        let attributes = [
            ("label".to_string(), "\"bay \\\"3\\\"\"".to_string()),
            ("mode".to_string(), "{\"a\": [1, 2.5e3, null]}".to_string()),
            ("quo\"te".to_string(), "true".to_string()),
            ("temperature".to_string(), "21.25".to_string()),
            ("torn".to_string(), "{\"a\":".to_string()),
        ];
        let payload = reported_payload(7, 1_764_000_000_000_000_000, &attributes);
        let parsed: serde_json::Value = serde_json::from_slice(&payload).expect("JSON");
        assert_eq!(
            parsed,
            serde_json::json!({
                "version": 7,
                "time": 1_764_000_000_000_000_000u64,
                "attributes": {
                    "label": "bay \"3\"",
                    "mode": {"a": [1, 2500.0, null]},
                    "quo\"te": true,
                    "temperature": 21.25,
                }
            })
        );
        // No attribute at all is still an object.
        let empty: serde_json::Value =
            serde_json::from_slice(&reported_payload(0, 1, &[])).expect("JSON");
        assert_eq!(empty["attributes"], serde_json::json!({}));
    }

    #[test]
    fn reconnect_delays_double_up_to_the_cap_with_jitter() {
        let (initial, max) = (Duration::from_millis(100), Duration::from_millis(1000));
        let waits: Vec<Duration> = reconnect_backoff(initial, max).build().take(8).collect();
        for (i, wait) in waits.iter().enumerate() {
            let step = (initial * 2u32.pow(i as u32)).min(max);
            assert!(
                *wait >= step.mul_f64(0.74) && *wait <= step.mul_f64(1.51),
                "wait {i}: {wait:?} for a step of {step:?}"
            );
        }
    }

    #[test]
    fn a_settle_that_would_wait_for_another_writer_is_put_off_and_rows_stay() {
        let (_dir, db) = crate::store::temporary_database();
        let conn = db.open().expect("open");
        let entry = outbox::Entry {
            kind: outbox::Kind::Telemetry,
            device: "d".into(),
            name: "s".into(),
            points: 1,
            payload: b"[]".to_vec(),
        };
        outbox::insert(&conn, &[entry.clone(), entry]).expect("insert");
        let usage = Usage::load(&conn, crate::config::OutboxConfig::default()).expect("usage");
        let sent: Vec<Sent> = outbox::next_rows(&conn, 10)
            .expect("rows")
            .iter()
            .map(|row| Sent::Row {
                seq: row.seq,
                twin_device: None,
                counted: None,
            })
            .collect();
        assert_eq!(sent.len(), 2);
        let rows_left = || outbox::next_rows(&conn, 10).expect("rows").len();
        // Another writer (the apps' reports, the ingest writer) holds the
        // database until told to let go.
        let (let_go, told) = std::sync::mpsc::channel::<()>();
        let (holding, held) = std::sync::mpsc::channel::<()>();
        let holder = std::thread::spawn({
            let db = db.clone();
            move || {
                let conn = db.open().expect("open");
                conn.execute_batch("BEGIN IMMEDIATE")
                    .expect("hold the lock");
                holding.send(()).expect("say so");
                told.recv().expect("told");
                conn.execute_batch("COMMIT").expect("let go");
            }
        });
        held.recv().expect("held");
        assert_eq!(settle_or_defer(&conn, &usage, &sent, false), Settle::Later);
        assert_eq!(rows_left(), 2, "nothing deleted");
        // A settle that waits still waits: the connection waits again.
        let_go.send(()).expect("let go");
        assert!(
            settle(&conn, &usage, &sent),
            "deleted once the lock is free"
        );
        assert_eq!(rows_left(), 0);
        holder.join().expect("holder");
    }
}

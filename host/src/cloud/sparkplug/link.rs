//! The link of a gateway with `[cloud] profile = "sparkplug"`: the I/O
//! around [`EdgeNode`].
//!
//! As in the `wg/v1` link, one task owns the rumqttc `EventLoop`, the outbox
//! is the only source of data, and a row is deleted only when the broker
//! acknowledges the message that carried it (every publish is QoS 1 for
//! that reason; the specification's QoS 0 for data would let a row be lost
//! on a dying connection). What differs:
//! - each connection is a Sparkplug session: its bdSeq is counted in the
//!   database (so it keeps counting across a `kill -9`) and set in the
//!   will's NDEATH before the CONNECT;
//! - births go out first, built when they are sent, so that `seq` is the
//!   order in which messages leave; a birth not acknowledged when the
//!   connection drops is not sent again (the next session births anew);
//! - the devices and their models come from the outbox's `model` rows and
//!   are kept in `sparkplug_devices`, so a restart births them at once;
//! - commands become `wg/v1` desired changes and action requests handed to
//!   the downlink, which checks them against the model.

use backon::BackoffBuilder as _;
use rumqttc::{AsyncClient, Event, LastWill, Outgoing, Packet, QoS, SubscribeReasonCode};
use rusqlite::{Connection, OptionalExtension as _, params};
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use super::node::{Current, Due, EdgeNode, Inbound, Topics};
use super::payload::{self, Payload};
use crate::cloud::connection::describe_v4 as describe;
use crate::cloud::downlink::Reply;
use crate::cloud::ledger::{Ledger, Sent};
use crate::cloud::link::LinkSpec;
use crate::cloud::protocol::{Ack, ActionResponse, Point, RunState};
use crate::cloud::topics;
use crate::config::SparkplugIds;
use crate::model::DeviceModel;
use crate::mqtt::reconnect_backoff;
use crate::outbox::{self, Stream, Usage};
use crate::value::now_ns;

/// The node's own tables: its session counter and the devices it speaks for.
const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS sparkplug_node (
    id     INTEGER PRIMARY KEY CHECK (id = 0),
    bd_seq INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS sparkplug_devices (
    device TEXT PRIMARY KEY,
    model  TEXT NOT NULL
);
"#;

/// Outbox rows read per pump beyond those already in flight.
const READ_AHEAD: usize = 64;

fn now_ms() -> u64 {
    now_ns() / 1_000_000
}

struct Node {
    gateway: String,
    node: EdgeNode,
    client: AsyncClient,
    db: Connection,
    usage: Arc<Usage>,
    metrics: crate::metrics::Metrics,
    connected: bool,
    ledger: Ledger,
    /// Attributes whose refused write is answered with their current value.
    answers: BTreeMap<String, Vec<String>>,
    /// The version of the next desired change made from a DCMD: it must grow
    /// past every earlier one.
    desired_version: u64,
    /// Action requests made from DCMDs, for their ids.
    actions: u64,
}

/// The next bdSeq, counted in the database before the CONNECT that carries
/// it.
fn next_bd_seq(db: &Connection) -> rusqlite::Result<u64> {
    let previous: Option<i64> = db
        .query_row("SELECT bd_seq FROM sparkplug_node WHERE id = 0", [], |r| {
            r.get(0)
        })
        .optional()?;
    let next = match previous {
        Some(p) => EdgeNode::next_bd_seq(p.clamp(0, 255) as u64),
        None => 0,
    };
    db.execute(
        "INSERT INTO sparkplug_node (id, bd_seq) VALUES (0, ?1)
         ON CONFLICT (id) DO UPDATE SET bd_seq = excluded.bd_seq",
        [next as i64],
    )?;
    Ok(next)
}

/// Run the Sparkplug link until `cancel`; then send the NDEATH and
/// disconnect.
pub async fn run(
    spec: LinkSpec,
    ids: SparkplugIds,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
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
        outbox: _,
    } = spec;
    let conn = db.open()?;
    conn.execute_batch(SCHEMA)?;
    let topics = Topics::new(&ids.group_id, &ids.edge_node_id);
    let software = format!("wasmgate {}", env!("CARGO_PKG_VERSION"));
    let mut node = EdgeNode::new(topics.clone(), &software, ids.primary_host.as_deref());
    for (device, model) in stored_devices(&conn)? {
        match DeviceModel::parse(&model) {
            Ok(model) => node.add_device(&device, Arc::new(model)),
            Err(e) => tracing::error!(device, "the stored model cannot be read again: {e}"),
        }
    }
    let ndeath = topics.node("NDEATH");
    let mut brokers: Vec<(String, rumqttc::MqttOptions)> = Vec::new();
    for settings in std::iter::once(&config.broker).chain(&config.failover) {
        // A Sparkplug session starts clean: the births state everything.
        let mut options = crate::mqtt::mqtt_options(settings, true)?;
        options.set_inflight(config.max_inflight);
        let url = settings.url();
        brokers.push((url, options));
    }
    let mut on = 0;
    let mut url = brokers[0].0.clone();
    report.metrics().link.set_broker(url.clone());
    let mut bd_seq = next_bd_seq(&conn)?;
    let mut options = brokers[0].1.clone();
    options.set_last_will(will(&ndeath, bd_seq));
    let (client, mut eventloop) =
        AsyncClient::new(options, usize::from(config.max_inflight) * 2 + 16);
    crate::mqtt::no_delay(&mut eventloop);
    let mut link = Node {
        gateway: gateway.clone(),
        node,
        client,
        db: conn,
        usage,
        metrics: report.metrics().clone(),
        connected: false,
        ledger: Ledger::new(usize::from(config.max_inflight)),
        answers: BTreeMap::new(),
        desired_version: now_ns(),
        actions: 0,
    };
    let backoff = reconnect_backoff(config.backoff_initial, config.backoff_max);
    let mut delays = backoff.build();
    let mut was_connected = false;
    let mut connects = 0u64;
    // Set when the primary host went offline: the node ends its session
    // (NDEATH, DISCONNECT) and connects again to wait for the host.
    let mut leaving = false;
    let mut outbox_timer = tokio::time::interval(Duration::from_secs(1));
    outbox_timer.set_missed_tick_behavior(MissedTickBehavior::Skip);

    tracing::info!(broker = %url, group = %ids.group_id, edge_node = %ids.edge_node_id, "connecting to the broker as a Sparkplug B edge node");
    'run: loop {
        let event = {
            let poll = eventloop.poll();
            tokio::pin!(poll);
            loop {
                tokio::select! {
                    biased;
                    _ = cancel.cancelled() => break 'run,
                    event = &mut poll => break event,
                    Some(reply) = replies.recv() => {
                        link.reply(&reply);
                        link.pump();
                    }
                    // The actions the downlink sent straight to their apps.
                    reply = downlink.next_answer(), if downlink.answers_pending() => {
                        link.reply(&reply);
                        link.pump();
                    }
                    _ = outbox_signal.notified() => link.pump(),
                    _ = outbox_timer.tick() => link.pump(),
                    _ = status_signal.notified() => {
                        link.app_states(&report);
                        link.pump();
                    }
                }
            }
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                tracing::info!(broker = %url, bd_seq, "connected to the broker");
                if link.metrics.link.connected.swap(true, Ordering::Relaxed) || connects > 0 {
                    link.metrics.link.reconnects.fetch_add(1, Ordering::Relaxed);
                }
                connects += 1;
                delays = backoff.build();
                was_connected = true;
                link.connected = true;
                link.node.connected(bd_seq);
                link.app_states(&report);
                let mut filters: Vec<String> = topics.command_filters().into();
                if let Some(host) = link.node.primary_host() {
                    filters.push(Topics::state(host));
                }
                for filter in filters {
                    if let Err(e) = link.client.try_subscribe(filter, QoS::AtLeastOnce) {
                        tracing::error!("cannot subscribe: {e}");
                    }
                }
                link.pump();
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                if ack
                    .return_codes
                    .iter()
                    .any(|c| matches!(c, SubscribeReasonCode::Failure))
                {
                    tracing::error!(
                        "the broker refused a subscription: commands or the primary host's STATE will not arrive (check its ACL)"
                    );
                }
            }
            Ok(Event::Incoming(Packet::PubAck(ack))) => {
                link.acknowledged(ack.pkid);
                link.pump();
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                match topics.classify(&publish.topic, link.node.primary_host()) {
                    Inbound::HostState => match link.node.host_state(&publish.payload) {
                        Ok(Some(true)) => {
                            tracing::info!("the primary host is online: birthing the node");
                            link.node.rebirth();
                            link.pump();
                        }
                        Ok(Some(false)) => {
                            tracing::warn!(
                                "the primary host went offline: ending the session until it is back"
                            );
                            leaving = link.leave(&ndeath, bd_seq);
                        }
                        Ok(None) => {}
                        Err(e) => tracing::warn!("{e}"),
                    },
                    Inbound::NodeCommand => link.node_command(&publish.payload),
                    Inbound::DeviceCommand(device) => {
                        let device = device.to_string();
                        link.device_command(&mut downlink, &device, &publish.payload);
                    }
                    Inbound::Other => {
                        tracing::debug!(topic = %publish.topic, "ignoring a message on a topic the node does not take");
                    }
                }
                link.pump();
            }
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                if !link.ledger.sent(pkid) {
                    tracing::warn!(pkid, "a publish left that the link did not submit");
                }
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) if leaving => {
                // The session ended on purpose: start the next at once.
                leaving = false;
                eventloop.clean();
                eventloop.pending.clear();
                link.disconnected();
                bd_seq = next_bd_seq(&link.db)?;
                eventloop.mqtt_options.set_last_will(will(&ndeath, bd_seq));
            }
            Ok(_) => {}
            Err(e) => {
                eventloop.pending.clear();
                link.disconnected();
                leaving = false;
                link.metrics.link.connected.store(false, Ordering::Relaxed);
                let wait = delays.next().unwrap_or(config.backoff_max);
                let error = if was_connected {
                    was_connected = false;
                    format!("lost the connection to the broker {url}: {}", describe(&e))
                } else {
                    format!("cannot connect to the broker {url}: {}", describe(&e))
                };
                if brokers.len() > 1 {
                    on = (on + 1) % brokers.len();
                    url = brokers[on].0.clone();
                    eventloop.mqtt_options = brokers[on].1.clone();
                    link.metrics.link.set_broker(url.clone());
                }
                tracing::warn!("{error}; trying again in {} ms", wait.as_millis());
                link.metrics.link.set_last_error(error);
                // The next CONNECT is a new session: count it before it goes.
                bd_seq = next_bd_seq(&link.db)?;
                eventloop.mqtt_options.set_last_will(will(&ndeath, bd_seq));
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = cancel.cancelled() => break 'run,
                }
            }
        }
    }

    // Shutdown: a clean DISCONNECT does not fire the will, so the NDEATH is
    // published first, and the link waits (briefly) for the broker to have
    // it.
    if link.connected {
        let death = EdgeNode::will(bd_seq, now_ms());
        let mut disconnecting = false;
        if link
            .client
            .try_publish(&ndeath, QoS::AtLeastOnce, false, death)
            .is_err()
        {
            disconnecting = link.client.try_disconnect().is_ok();
        }
        let deadline = tokio::time::sleep(Duration::from_secs(3));
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = &mut deadline => break,
                event = eventloop.poll() => match event {
                    Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                        link.ledger.sent(pkid);
                    }
                    Ok(Event::Incoming(Packet::PubAck(ack))) => {
                        if link.ledger.acknowledged(ack.pkid).is_none() && !disconnecting {
                            // The NDEATH is the one publish the ledger does not know.
                            disconnecting = link.client.try_disconnect().is_ok();
                        }
                    }
                    Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => break,
                    Ok(_) => {}
                },
            }
        }
        tracing::info!("disconnected from the broker");
    }
    Ok(())
}

/// The will of a session: its NDEATH, QoS 1, not retained.
fn will(topic: &str, bd_seq: u64) -> LastWill {
    LastWill::new(
        topic,
        EdgeNode::will(bd_seq, now_ms()),
        QoS::AtLeastOnce,
        false,
    )
}

fn stored_devices(db: &Connection) -> rusqlite::Result<Vec<(String, String)>> {
    let mut stmt = db.prepare("SELECT device, model FROM sparkplug_devices ORDER BY device")?;
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect()
}

impl Node {
    /// Publish what fits in the window, and show how full it is.
    fn pump(&mut self) {
        self.fill_window();
        self.metrics.link.set_window(self.ledger.occupancy());
    }

    /// Publish what is due, then outbox rows, while the window has room.
    fn fill_window(&mut self) {
        if !self.connected || !self.node.may_publish() {
            return;
        }
        if !self.births() {
            return;
        }
        let answers = std::mem::take(&mut self.answers);
        for (device, attributes) in answers {
            if !self.ledger.room() || !self.node.born(&device) {
                self.answers.insert(device, attributes);
                continue;
            }
            let current = self.current(&device);
            if let Some(data) = self
                .node
                .attribute_data(&device, &current, &attributes, now_ms())
                && self
                    .send(
                        self.node.topics().device("DDATA", &device),
                        data,
                        self.marker(),
                    )
                    .is_err()
            {
                self.answers.insert(device, attributes);
                return;
            }
        }
        if !self.ledger.room() {
            return;
        }
        let held = self.node.held();
        let read = outbox::next_rows_except(&self.db, self.ledger.rows_out() + READ_AHEAD, &held);
        let rows = match read {
            Ok(rows) => rows,
            Err(e) => {
                tracing::error!("cannot read the outbox: {e}");
                return;
            }
        };
        let mut skipping = Skipping::default();
        for row in rows {
            if skipping.skips(&row, &self.ledger) {
                continue;
            }
            if !self.ledger.room() {
                break;
            }
            let handled = match row.kind.as_str() {
                "model" => {
                    self.model_row(&row);
                    // A birth or death may now be due before more data.
                    if !self.births() {
                        return;
                    }
                    Ok(())
                }
                "registration" => {
                    // The device's model row births it; its announcement
                    // has no Sparkplug form.
                    self.settle(&row);
                    Ok(())
                }
                "changeset" => {
                    // Synced tables have no Sparkplug form, and refuse
                    // writes under this profile: this one was written
                    // under wg/v1 before the switch. Its rows stay in the
                    // gateway's table.
                    tracing::warn!(
                        device = %row.device,
                        table = %row.name,
                        "a synced-table changeset cannot be sent as Sparkplug B: removed from the outbox (the rows stay on the gateway)"
                    );
                    self.settle(&row);
                    Ok(())
                }
                // A pull, queued at every app start: no server answers it
                // under this profile.
                "pull" => {
                    self.settle(&row);
                    Ok(())
                }
                "ack" => {
                    if let Some(stored) = self.stored(&row) {
                        let ack: Ack = serde_json::from_slice(&stored).unwrap_or_default();
                        self.answer_ack(&row.device, &ack);
                    }
                    self.settle(&row);
                    Ok(())
                }
                _ if !self.node.born(&row.device) => {
                    // Not (yet) a device of this node: its rows wait.
                    Ok(())
                }
                "twin" => self.twin_row(&row),
                "alert" => self.alert_row(&row),
                _ => self.telemetry_row(&row),
            };
            if let Err(e) = handled {
                tracing::debug!("publish queue full: {e}");
                return;
            }
        }
    }

    /// Send the births and deaths that are due; `false` if some could not
    /// go yet (the window is full).
    fn births(&mut self) -> bool {
        while let Some(due) = self.node.due() {
            if !self.ledger.room() {
                return false;
            }
            let now = now_ms();
            let (topic, payload) = match &due {
                Due::NodeBirth => (self.node.topics().node("NBIRTH"), self.node.node_birth(now)),
                Due::DeviceBirth(device) => {
                    let current = self.current(device);
                    let topic = self.node.topics().device("DBIRTH", device);
                    match self.node.device_birth(device, &current, now) {
                        Some(p) => (topic, p),
                        None => continue,
                    }
                }
                Due::DeviceDeath(device) => (
                    self.node.topics().device("DDEATH", device),
                    self.node.device_death(device, now),
                ),
            };
            if self.send(topic, payload, self.marker()).is_err() {
                // Births are made again from the state next time.
                if let Due::DeviceBirth(device) = &due {
                    self.node.unborn(device);
                }
                return false;
            }
            if due == Due::NodeBirth {
                self.node.node_born(now);
                tracing::info!(bd_seq = self.node.bd_seq(), "the node is born");
            }
        }
        true
    }

    /// What the ledger records for a message that carries no outbox row
    /// (a birth, a death, an answer): nothing to settle when it is
    /// acknowledged, and forgotten on a disconnect.
    fn marker(&self) -> Sent {
        Sent::Message(
            Reply {
                topic: String::new(),
                payload: Vec::new(),
                correlation: None,
            },
            false,
        )
    }

    /// Stamp `seq`, publish, and record what the publish carries.
    fn send(
        &mut self,
        topic: String,
        mut payload: Payload,
        sent: Sent,
    ) -> Result<(), rumqttc::ClientError> {
        self.node.stamp(&mut payload);
        let bytes = payload::encode(&payload);
        let len = bytes.len() as u64;
        self.client
            .try_publish(topic, QoS::AtLeastOnce, false, bytes)?;
        self.node.sent();
        self.metrics
            .link
            .bytes_sent
            .fetch_add(len, Ordering::Relaxed);
        self.ledger.submit(sent);
        Ok(())
    }

    /// A device's attributes as reported, typed by its model.
    fn current(&self, device: &str) -> Current {
        let Some(model) = self.node.model(device) else {
            return Vec::new();
        };
        let rows = crate::store::reported_attributes(&self.db, device).unwrap_or_else(|e| {
            tracing::error!("cannot read the twin of {device}: {e}");
            Vec::new()
        });
        rows.into_iter()
            .filter_map(|(name, json, at_ns)| {
                let kind = model.attributes.get(&name)?.kind;
                let json: serde_json::Value = serde_json::from_str(&json).ok()?;
                let value = crate::value::from_json(&json, kind).ok()?;
                Some((name, value, at_ns / 1_000_000))
            })
            .collect()
    }

    /// An app's state changed: its devices (its own and those it
    /// registered) live while it runs or starts, and die otherwise.
    fn app_states(&mut self, report: &crate::report::Reporter) {
        let status = report.status(true, None, now_ns());
        for app in status.apps {
            let alive = matches!(app.state, RunState::Running | RunState::Starting);
            self.node.set_alive(&app.device, alive);
            for registered in &app.devices {
                self.node.set_alive(&registered.id, alive);
            }
        }
    }

    fn stored(&self, row: &outbox::Row) -> Option<Vec<u8>> {
        outbox::payload(&self.db, row.seq).unwrap_or_else(|e| {
            tracing::error!("cannot read the outbox: {e}");
            None
        })
    }

    /// Remove a row that has nothing to send.
    fn settle(&self, row: &outbox::Row) {
        if let Err(e) = outbox::delete_delivered_all(&self.db, &self.usage, &[(row.seq, None)], &[])
        {
            tracing::error!(seq = row.seq, "cannot remove a row from the outbox: {e}");
        }
    }

    /// A device's model (or its withdrawal): kept, and the device born or
    /// dead.
    fn model_row(&mut self, row: &outbox::Row) {
        let Some(text) = self.stored(row) else {
            return;
        };
        let text = String::from_utf8_lossy(&text).into_owned();
        let kept = if text.is_empty() {
            self.node.remove_device(&row.device);
            self.db
                .execute(
                    "DELETE FROM sparkplug_devices WHERE device = ?1",
                    [&row.device],
                )
                .map(drop)
        } else {
            let same = self
                .node
                .model(&row.device)
                .is_some_and(|known| known.source() == text);
            match DeviceModel::parse(&text) {
                // Announced again at every start: the device stands as born.
                Ok(_) if same => Ok(()),
                Ok(model) => {
                    self.node.add_device(&row.device, Arc::new(model));
                    self.db
                        .execute(
                            "INSERT INTO sparkplug_devices (device, model) VALUES (?1, ?2)
                             ON CONFLICT (device) DO UPDATE SET model = excluded.model",
                            params![row.device, text],
                        )
                        .map(drop)
                }
                Err(e) => {
                    tracing::error!(device = %row.device, "a device model that cannot be read: {e}");
                    Ok(())
                }
            }
        };
        match kept {
            Ok(()) => self.settle(row),
            Err(e) => tracing::error!(device = %row.device, "cannot keep the device's model: {e}"),
        }
    }

    fn twin_row(&mut self, row: &outbox::Row) -> Result<(), rumqttc::ClientError> {
        let upto = match outbox::last_twin_seq(&self.db, &row.device) {
            Ok(seq) => seq,
            Err(e) => {
                tracing::error!("cannot read the outbox: {e}");
                return Ok(());
            }
        };
        let current = self.current(&row.device);
        match self
            .node
            .attribute_data(&row.device, &current, &[], now_ms())
        {
            Some(data) => self.send(
                self.node.topics().device("DDATA", &row.device),
                data,
                Sent::Row {
                    seq: upto,
                    twin_device: Some(row.device.clone()),
                    counted: None,
                },
            ),
            None => {
                // Nothing changed since it was last sent.
                if let Err(e) = outbox::delete_twin_upto(&self.db, &row.device, upto) {
                    tracing::error!("cannot remove a row from the outbox: {e}");
                }
                Ok(())
            }
        }
    }

    fn alert_row(&mut self, row: &outbox::Row) -> Result<(), rumqttc::ClientError> {
        let Some(stored) = self.stored(row) else {
            return Ok(());
        };
        let alert: serde_json::Value = serde_json::from_slice(&stored).unwrap_or_default();
        let time_ms = alert["time"].as_u64().unwrap_or_else(now_ns) / 1_000_000;
        let counted = Some((
            Stream::alert(&row.device, &row.name),
            row.bytes,
            u64::from(row.points),
        ));
        let data = self
            .node
            .alert_data(&row.device, &row.name, &alert, time_ms, now_ms());
        self.send_row(
            row,
            data,
            counted,
            "an alert the device's model does not declare",
        )
    }

    fn telemetry_row(&mut self, row: &outbox::Row) -> Result<(), rumqttc::ClientError> {
        let Some(stored) = self.stored(row) else {
            return Ok(());
        };
        let counted = Some((
            Stream::telemetry(&row.device, &row.name),
            row.bytes,
            u64::from(row.points),
        ));
        let points: Vec<Point> = serde_json::from_slice(&stored).unwrap_or_default();
        let data = self
            .node
            .point_data(&row.device, &row.name, &points, now_ms());
        self.send_row(
            row,
            data,
            counted,
            "a batch with no field the device's model declares",
        )
    }

    /// Send a counted row's DDATA; a row that makes none (the model has
    /// nothing for it) is removed, and the log says so.
    fn send_row(
        &mut self,
        row: &outbox::Row,
        data: Option<Payload>,
        counted: Option<(Stream, u64, u64)>,
        unsendable: &str,
    ) -> Result<(), rumqttc::ClientError> {
        let Some(data) = data else {
            tracing::warn!(device = %row.device, name = %row.name, "{unsendable} is not sent");
            let sent = Sent::Row {
                seq: row.seq,
                twin_device: None,
                counted,
            };
            crate::cloud::link::settle(&self.db, &self.usage, &[sent]);
            return Ok(());
        };
        self.send(
            self.node.topics().device("DDATA", &row.device),
            data,
            Sent::Row {
                seq: row.seq,
                twin_device: None,
                counted,
            },
        )
    }

    fn acknowledged(&mut self, pkid: u16) {
        self.metrics
            .link
            .messages_sent
            .fetch_add(1, Ordering::Relaxed);
        if self.ledger.acknowledged(pkid).is_some() {
            crate::cloud::link::settle(&self.db, &self.usage, self.ledger.delivered());
            self.ledger.settled();
        }
    }

    fn disconnected(&mut self) {
        self.connected = false;
        self.ledger.disconnected();
        self.ledger.forget_messages();
        self.metrics.link.set_window(self.ledger.occupancy());
    }

    /// End the session on purpose: the NDEATH, then DISCONNECT. Returns
    /// whether the disconnect was requested.
    fn leave(&mut self, ndeath: &str, bd_seq: u64) -> bool {
        let death = EdgeNode::will(bd_seq, now_ms());
        if let Err(e) = self
            .client
            .try_publish(ndeath, QoS::AtLeastOnce, false, death)
        {
            tracing::warn!("cannot publish the NDEATH: {e}");
        }
        self.connected = false;
        self.client.try_disconnect().is_ok()
    }

    /// Count and log a refused command metric.
    fn refused(&self, device: &str, metric: &str, why: &str) {
        self.metrics
            .link
            .downlink_refused
            .fetch_add(1, Ordering::Relaxed);
        tracing::warn!(device, metric, "refused a Sparkplug command: {why}");
    }

    fn node_command(&mut self, bytes: &[u8]) {
        let payload = match payload::decode(bytes) {
            Ok(p) => p,
            Err(e) => return self.refused("", "NCMD", &e),
        };
        let commands = self.node.node_command(&payload);
        for (metric, why) in &commands.refused {
            self.refused("", metric, why);
        }
        if commands.rebirth {
            tracing::info!("a rebirth was requested");
            self.node.rebirth();
        }
    }

    /// A DCMD: writes become one desired change, action metrics action
    /// requests, both handed to the downlink as if they came over `wg/v1`;
    /// refused writes are answered with the attribute's current value.
    fn device_command(
        &mut self,
        downlink: &mut crate::cloud::downlink::Downlink,
        device: &str,
        bytes: &[u8],
    ) {
        let payload = match payload::decode(bytes) {
            Ok(p) => p,
            Err(e) => return self.refused(device, "DCMD", &e),
        };
        let commands = self.node.device_command(device, &payload);
        let mut answer = Vec::new();
        for (metric, why) in &commands.refused {
            self.refused(device, metric, why);
            answer.push(metric.clone());
        }
        if !commands.desired.is_empty() {
            self.desired_version = (self.desired_version + 1).max(now_ns());
            let desired = serde_json::json!({
                "version": self.desired_version,
                "attributes": commands.desired,
            });
            let topic = topics::topic(&self.gateway, device, "twin/desired");
            if let Some(refusal) = downlink.dispatch(&topic, desired.to_string().as_bytes()) {
                self.reply(&refusal);
            }
        }
        for (action, argument) in commands.actions {
            self.actions += 1;
            let mut request = serde_json::json!({ "id": format!("spb-{}", self.actions) });
            if let Some(argument) = argument {
                request["argument"] = argument;
            }
            let topic = topics::topic(&self.gateway, device, &format!("action/{action}/req"));
            if let Some(refusal) = downlink.dispatch(&topic, request.to_string().as_bytes()) {
                self.reply(&refusal);
            }
        }
        if !answer.is_empty() {
            self.answers
                .entry(device.to_string())
                .or_default()
                .extend(answer);
        }
    }

    /// What the downlink's workers answer, as `wg/v1` replies: a desired
    /// change's ack or an action's response. Sparkplug has no message for
    /// either; a refusal is logged and counted, and a refused write is
    /// answered with the attribute's current value.
    fn reply(&mut self, reply: &Reply) {
        let Some(parsed) = topics::parse(&reply.topic) else {
            return;
        };
        let device = parsed.device.to_string();
        match parsed.kind {
            topics::Kind::Ack => {
                let ack: Ack = serde_json::from_slice(&reply.payload).unwrap_or_default();
                self.answer_ack(&device, &ack);
            }
            topics::Kind::ActionResponse(action) => {
                let response: Option<ActionResponse> = serde_json::from_slice(&reply.payload).ok();
                match response.and_then(|r| r.error) {
                    Some(error) => self.refused(&device, &format!("actions/{action}"), &error),
                    None => tracing::debug!(device, action, "an action requested by DCMD ran"),
                }
            }
            _ => {}
        }
    }

    fn answer_ack(&mut self, device: &str, ack: &Ack) {
        if let Some(error) = &ack.error {
            self.refused(device, "DCMD", error);
        }
        for (attribute, why) in &ack.rejected {
            self.refused(device, attribute, why);
            self.answers
                .entry(device.to_string())
                .or_default()
                .push(attribute.clone());
        }
    }
}

/// Which rows of one read the link leaves for the next read (which starts
/// from the first row again): rows already out; a device's twin row while
/// the device's state is out (its state goes once that one is
/// acknowledged); and an ack of such a device read after that row. The ack
/// answers a desired change, and leaves after the state the app reported
/// while applying it (docs/protocol.md, Ack); answered at once, it
/// overtook that state.
#[derive(Default)]
struct Skipping {
    states_left: HashSet<String>,
}

impl Skipping {
    /// Whether to leave `row`, given what `ledger` has out.
    fn skips(&mut self, row: &outbox::Row, ledger: &Ledger) -> bool {
        if row.kind == "twin" && ledger.twin_out(&row.device) {
            self.states_left.insert(row.device.clone());
            return true;
        }
        ledger.row_out(row.seq) || (row.kind == "ack" && self.states_left.contains(&row.device))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ack_read_after_a_twin_row_left_for_its_state_out_is_left_too() {
        let row = |seq: i64, kind: &str, device: &str| outbox::Row {
            seq,
            kind: kind.into(),
            device: device.into(),
            name: String::new(),
            points: 1,
            created_at: 0,
            bytes: 2,
        };
        // d's state is out, and so is row 6.
        let mut ledger = Ledger::new(8);
        for seq in [2, 6] {
            ledger.submit(Sent::Row {
                seq,
                twin_device: (seq == 2).then(|| "d".to_string()),
                counted: None,
            });
        }
        let mut skipping = Skipping::default();
        for (read, skipped, why) in [
            (row(1, "ack", "d"), false, "no state left yet"),
            (row(2, "twin", "d"), true, "d's state is out"),
            (row(3, "ack", "d"), true, "after d's state"),
            (row(4, "ack", "e"), false, "another device"),
            (row(5, "twin", "e"), false, "e's state is not out"),
            (row(6, "alert", "e"), true, "a row out"),
            (row(7, "alert", "d"), false, "only acks wait"),
        ] {
            assert_eq!(skipping.skips(&read, &ledger), skipped, "{why}");
        }
    }
}

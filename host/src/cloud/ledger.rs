//! The link's ledger: what each publish carried, from the moment it is
//! handed to rumqttc until the broker acknowledges it, and what waits to be
//! sent. A pure state machine (no I/O, no clock), as rumqttc's `MqttState`
//! is, so that its rules are unit-tested here; `link.rs` is the I/O around
//! it.
//!
//! The rules:
//! - at most `window` publishes are submitted or in flight at once;
//! - rumqttc reports each submitted publish's packet id in submission order
//!   (`Outgoing::Publish`), which is how a packet id is tied to what it
//!   carried;
//! - a PUBACK settles what its packet carried: outbox rows are then deleted
//!   by the link, replies are done. A row stays out until the link has
//!   deleted it ([`Ledger::delivered`], [`Ledger::settled`]): the link may
//!   put the delete off while another writer holds the database, and must
//!   not send the row again meanwhile;
//! - on a disconnect nothing in flight counts as delivered: outbox rows are
//!   read again from the outbox, and replies and statuses are queued again
//!   ahead of newer ones, in the order they were first submitted;
//! - while connected, the link reads each lane of the outbox on from the
//!   last row it handed out there (`read_past`) rather than from the
//!   first, but never past a row the telemetry writer may still add to. A device's twin row that
//!   comes while its state is out is not sent then: the device's state is
//!   sent again once the broker has the one out (`twins_due`);
//! - an ack row of a device whose newer state waits to be sent again is
//!   held back (`hold_ack`) until that state is handed out: an ack leaves
//!   after the state the app reported while applying the change.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use super::downlink::Reply;
use crate::outbox::{Counted, Lane};

/// Bytes of replies and statuses waiting to be sent past which the link
/// takes no more replies from the apps' workers and services: they wait
/// (their queues fill, and new requests are answered "busy") rather than
/// have their answers dropped.
pub const MAX_QUEUED_BYTES: usize = 8 << 20;

/// The link's own answers (refusals of requests that never reached a
/// worker) are queued past [`MAX_QUEUED_BYTES`] up to this hard bound;
/// beyond it one is dropped and counted.
pub const HARD_QUEUED_BYTES: usize = 2 * MAX_QUEUED_BYTES;

fn weight(reply: &Reply) -> usize {
    reply.topic.len() + reply.payload.len()
}

/// What a publish carried, to settle when its PUBACK comes.
#[derive(Debug, Clone, PartialEq)]
pub enum Sent {
    /// Outbox rows: a telemetry, alert or ack row one by one, or every
    /// `twin` row of a device up to `seq` (the retained state covers them
    /// all).
    Row {
        seq: i64,
        twin_device: Option<String>,
        /// The stream and size of a telemetry or alert row, to count it out
        /// of the outbox when it is delivered.
        counted: Option<Counted>,
    },
    /// A reply or status (and whether it is retained): sent again after a
    /// reconnect if not acknowledged.
    Message(Reply, bool),
}

/// See the module header.
#[derive(Debug)]
pub struct Ledger {
    window: usize,
    /// Submitted to rumqttc, waiting for their packet id, with their place
    /// in the submission order.
    submitted: VecDeque<(u64, Sent)>,
    /// Sent, waiting for PUBACK, by packet id.
    inflight: HashMap<u16, (u64, Sent)>,
    /// The next submission's place.
    order: u64,
    /// Outbox rows submitted or in flight.
    rows_out: HashSet<i64>,
    /// What acknowledged publishes carried, for the link to delete from the
    /// outbox: out still, but no longer counted in what it reads ahead for.
    delivered: Vec<Sent>,
    /// The seqs of the rows (not twin states) in `delivered`.
    settling: HashSet<i64>,
    /// Devices whose retained twin state is submitted or in flight.
    twins_out: HashSet<String>,
    /// For each lane of the outbox ([`Lane::First`], [`Lane::Later`]): the
    /// link has handed out (or skipped, see `twins_later`) every row of the
    /// lane up to this seq on this connection; it reads on past it.
    read_past: [i64; 2],
    /// Devices with a twin row that came while their state was out.
    twins_later: HashSet<String>,
    /// Of those, the ones whose state the broker has acknowledged since:
    /// their state is sent again, with the newer rows.
    twins_due: VecDeque<String>,
    /// Devices with an ack row held back until their newer state is handed
    /// out ([`Ledger::hold_ack`]); the outbox is read again then.
    acks_held: HashSet<String>,
    /// The outbox may hold rows not read yet: rows were added, or a read
    /// stopped short (the window filled, or rumqttc's queue did). A pump that only sends a reply
    /// does not read the outbox then (see [`Ledger::read_due`]).
    outbox_unread: bool,
    /// Replies and statuses waiting for a connection or a free slot.
    messages: VecDeque<(Reply, bool)>,
    /// Their bytes.
    queued_bytes: usize,
}

impl Ledger {
    pub fn new(window: usize) -> Ledger {
        Ledger {
            window: window.max(1),
            submitted: VecDeque::new(),
            inflight: HashMap::new(),
            order: 0,
            rows_out: HashSet::new(),
            delivered: Vec::new(),
            settling: HashSet::new(),
            twins_out: HashSet::new(),
            read_past: [0; 2],
            twins_later: HashSet::new(),
            twins_due: VecDeque::new(),
            acks_held: HashSet::new(),
            outbox_unread: true,
            messages: VecDeque::new(),
            queued_bytes: 0,
        }
    }

    /// Whether the link should take more replies from workers now.
    pub fn takes_replies(&self) -> bool {
        self.queued_bytes < MAX_QUEUED_BYTES
    }

    /// Whether another publish fits in the window.
    pub fn room(&self) -> bool {
        self.free() > 0
    }

    /// How many rows a read of the outbox asks for: what fits in the
    /// window's free slots, the rows already out (a read meets those again
    /// behind a row it could not pass, such as an open batch), and `ahead`
    /// more, for rows it skips. Rows read past what fits are read again by
    /// the next read: with 64 ahead whatever the room, the link read about
    /// 90 rows to send the 8 of a quarter window (BENCHMARKS.md, S2).
    pub fn read_limit(&self, ahead: usize) -> usize {
        self.free() + self.rows_out.len() + ahead
    }

    /// Slots of the window not taken by publishes submitted or in flight.
    fn free(&self) -> usize {
        self.window
            .saturating_sub(self.submitted.len() + self.inflight.len())
    }

    /// Whether to read the outbox for more now: once a quarter of the
    /// window is free. Read for every few PUBACKs, the link read a hundred
    /// rows to send the one or two that fit: 13 % of its time at 10,000
    /// devices (BENCHMARKS.md, S2). The rest of the window keeps the
    /// connection busy meanwhile (waiting for half of it slowed a backlog's
    /// drain, P3).
    pub fn refill_due(&self) -> bool {
        self.free() >= self.window.div_ceil(4)
    }

    /// The outbox may hold rows not read yet (rows were added to it, or the
    /// last read stopped short).
    pub fn outbox_changed(&mut self) {
        self.outbox_unread = true;
    }

    /// Whether to read the outbox now: it may hold rows not read yet and a
    /// quarter of the window is free ([`refill_due`](Self::refill_due)).
    /// An action's answer was sent by a pump that also read the outbox (a
    /// read transaction and three queries) for nothing.
    pub fn read_due(&self) -> bool {
        self.outbox_unread && self.refill_due()
    }

    /// Whether a read is held back only by the quarter-window rule: rows
    /// may wait and a slot is free, but fewer than a quarter of the window.
    /// The link reads anyway once its `REFILL_WAIT` passes like
    /// this. A broker with Nagle's algorithm on (Mosquitto's default) sends
    /// the first PUBACK of a burst at once and holds the rest until the
    /// gateway's TCP acknowledges it; a link sending nothing until a quarter
    /// is free acknowledges it only with its delayed ACK, 40 ms later, and
    /// sent a window every 40 ms (BENCHMARKS.md, S2 against a stock broker).
    pub fn read_held(&self) -> bool {
        self.outbox_unread && self.room() && !self.refill_due()
    }

    /// A read of the outbox went through: every row it found was handled,
    /// and there were no more than it asked for. Until rows are added
    /// ([`outbox_changed`](Self::outbox_changed)) it is not read again; a
    /// read that stops short (the window or rumqttc's queue full, an error)
    /// leaves the mark, and the next pump reads again.
    pub fn outbox_read_through(&mut self) {
        self.outbox_unread = false;
    }

    /// Whether states are waiting to be sent again.
    pub fn twins_due(&self) -> bool {
        !self.twins_due.is_empty()
    }

    /// How full the window is: publishes submitted or in flight, and
    /// replies and statuses waiting for room.
    pub fn occupancy(&self) -> (usize, usize) {
        (
            self.submitted.len() + self.inflight.len(),
            self.messages.len(),
        )
    }

    /// Queue a reply; `Err` gives it back when the queue is at its hard
    /// bound.
    pub fn queue(&mut self, reply: Reply, retain: bool) -> Result<(), Reply> {
        if self.queued_bytes + weight(&reply) > HARD_QUEUED_BYTES {
            return Err(reply);
        }
        self.queued_bytes += weight(&reply);
        self.messages.push_back((reply, retain));
        Ok(())
    }

    /// Queue a message that replaces any waiting one on the same topic
    /// (only the newest status matters).
    pub fn queue_latest(&mut self, reply: Reply, retain: bool) {
        self.messages.retain(|(r, _)| r.topic != reply.topic);
        self.messages.push_back((reply, retain));
        self.recount();
    }

    fn recount(&mut self) {
        self.queued_bytes = self.messages.iter().map(|(r, _)| weight(r)).sum();
    }

    /// The next waiting message, if one fits in the window. Give it back
    /// with [`unsent`](Self::unsent) if rumqttc cannot take it now.
    pub fn next_message(&mut self) -> Option<(Reply, bool)> {
        if !self.room() {
            return None;
        }
        let next = self.messages.pop_front()?;
        self.queued_bytes -= weight(&next.0);
        Some(next)
    }

    /// A message from [`next_message`](Self::next_message) that could not be
    /// submitted: first again next time.
    pub fn unsent(&mut self, reply: Reply, retain: bool) {
        self.queued_bytes += weight(&reply);
        self.messages.push_front((reply, retain));
    }

    /// Whether outbox row `seq` is already out (or acknowledged, and not
    /// yet deleted).
    pub fn row_out(&self, seq: i64) -> bool {
        self.rows_out.contains(&seq) || self.settling.contains(&seq)
    }

    /// Whether `device`'s retained twin state is already out.
    pub fn twin_out(&self, device: &str) -> bool {
        self.twins_out.contains(device)
    }

    /// Rows submitted or in flight, to read that many more from the outbox.
    pub fn rows_out(&self) -> usize {
        self.rows_out.len()
    }

    /// The seq the link reads `lane` of the outbox on from.
    pub fn read_past(&self, lane: Lane) -> i64 {
        self.read_past[lane as usize]
    }

    /// Every row of `lane` up to `seq` is handed out, or needs nothing
    /// more: read on past it, but not past a row the writer may still add
    /// to (`open`, the oldest such row), which must be read again once
    /// sealed.
    pub fn pass(&mut self, lane: Lane, seq: i64, open: Option<i64>) {
        let upto = open.map_or(seq, |open| seq.min(open - 1));
        let past = &mut self.read_past[lane as usize];
        *past = (*past).max(upto);
    }

    /// Read the outbox from its first row again (a delivered row could not
    /// be deleted, and must be sent again).
    pub fn read_again(&mut self) {
        self.read_past = [0; 2];
        self.outbox_unread = true;
    }

    /// A twin row of `device` came while its state is out: send the state
    /// again once the broker has the one out.
    pub fn twin_later(&mut self, device: &str) {
        if !self.twins_later.contains(device) {
            self.twins_later.insert(device.to_string());
        }
    }

    /// The next device whose state is to be sent again, if one fits in the
    /// window. Give it back with [`twin_unsent`](Self::twin_unsent) if
    /// rumqttc cannot take it now.
    pub fn next_twin_due(&mut self) -> Option<String> {
        if !self.room() {
            return None;
        }
        self.twins_due.pop_front()
    }

    /// A device from [`next_twin_due`](Self::next_twin_due) that could not
    /// be sent: first again next time.
    pub fn twin_unsent(&mut self, device: String) {
        self.twins_due.push_front(device);
    }

    /// Whether an ack row of `device` must wait: a newer state of the
    /// device, one that came while the last was out, is still to be sent
    /// again. The ack answers a change the app applied, and leaves after
    /// the state it reported meanwhile (docs/protocol.md, Ack); sent now,
    /// it would overtake that state.
    fn ack_waits(&self, device: &str) -> bool {
        self.twins_later.contains(device) || self.twins_due.iter().any(|d| d == device)
    }

    /// Whether the link must leave an ack row of `device` in the outbox
    /// ([`ack_waits`](Self::ack_waits)); if so, the outbox is read again
    /// once the device's state is handed out.
    pub fn hold_ack(&mut self, device: &str) -> bool {
        let waits = self.ack_waits(device);
        if waits && !self.acks_held.contains(device) {
            self.acks_held.insert(device.to_string());
        }
        waits
    }

    /// Whether a message on `topic` is submitted or in flight.
    pub fn carries(&self, topic: &str) -> bool {
        self.submitted
            .iter()
            .chain(self.inflight.values())
            .any(|(_, sent)| matches!(sent, Sent::Message(r, _) if r.topic == topic))
    }

    /// `sent` was handed to rumqttc.
    pub fn submit(&mut self, sent: Sent) {
        match &sent {
            Sent::Row {
                twin_device: Some(device),
                ..
            } => {
                self.twins_out.insert(device.clone());
                if self.acks_held.remove(device) {
                    self.outbox_unread = true;
                }
            }
            Sent::Row { seq, .. } => {
                self.rows_out.insert(*seq);
            }
            Sent::Message(..) => {}
        }
        self.submitted.push_back((self.order, sent));
        self.order += 1;
    }

    /// rumqttc sent the next submitted publish as packet `pkid`; `false`
    /// if nothing was submitted (a publish the ledger did not make).
    pub fn sent(&mut self, pkid: u16) -> bool {
        match self.submitted.pop_front() {
            Some(entry) => {
                self.inflight.insert(pkid, entry);
                true
            }
            None => false,
        }
    }

    /// The broker acknowledged packet `pkid`: what it carried (`None` for
    /// an unknown packet). Outbox rows join [`delivered`](Self::delivered).
    pub fn acknowledged(&mut self, pkid: u16) -> Option<Sent> {
        let (_, sent) = self.inflight.remove(&pkid)?;
        // A device's state is no longer out once acknowledged: a newer one
        // may go (sending an acknowledged state again is harmless, as it is
        // retained). Other rows are out until deleted: see `settled`.
        if let Sent::Row {
            seq, twin_device, ..
        } = &sent
        {
            match twin_device {
                Some(device) => {
                    self.twins_out.remove(device);
                    if self.twins_later.remove(device) {
                        self.twins_due.push_back(device.clone());
                    }
                }
                None => {
                    self.rows_out.remove(seq);
                    self.settling.insert(*seq);
                }
            }
            self.delivered.push(sent.clone());
        }
        Some(sent)
    }

    /// Outbox rows acknowledged and not yet deleted: for the link to delete.
    pub fn delivered(&self) -> &[Sent] {
        &self.delivered
    }

    /// Whether the [`delivered`](Self::delivered) rows are worth deleting
    /// now: `batch` of them, for one commit to carry many, or any once
    /// nothing is out, so the outbox's size is right as soon as a burst
    /// ends. A commit writes every page its deletes touched: settled on
    /// every pump, a few rows each, the deletes were a third of the link's
    /// time at 10,000 devices (BENCHMARKS.md, S2).
    pub fn settle_due(&self, batch: usize) -> bool {
        !self.delivered.is_empty()
            && (self.delivered.len() >= batch
                || (self.submitted.is_empty() && self.inflight.is_empty()))
    }

    /// The [`delivered`](Self::delivered) rows are deleted from the outbox
    /// (or could not be, and are to be read again): no longer out.
    pub fn settled(&mut self) {
        self.delivered.clear();
        self.settling.clear();
    }

    /// The connection is gone: forget what was out. Rows are read from the
    /// outbox again; unacknowledged messages go back to the front of the
    /// queue in the order they were first submitted.
    pub fn disconnected(&mut self) {
        let mut unsent: BTreeMap<u64, Sent> = self.inflight.drain().map(|(_, e)| e).collect();
        unsent.extend(self.submitted.drain(..));
        let mut again: VecDeque<(Reply, bool)> = unsent
            .into_values()
            .filter_map(|sent| match sent {
                Sent::Message(reply, retain) => Some((reply, retain)),
                Sent::Row { .. } => None,
            })
            .collect();
        again.extend(self.messages.drain(..));
        self.messages = again;
        self.recount();
        self.rows_out.clear();
        // Not deleted yet: read again with the rest (duplicates, not a
        // loss). The link deletes them before it gets here.
        self.settled();
        self.twins_out.clear();
        // Every row is read again, from the first.
        self.read_past = [0; 2];
        self.outbox_unread = true;
        self.twins_later.clear();
        self.twins_due.clear();
        self.acks_held.clear();
    }

    /// Drop every waiting message: for a profile whose messages belong to
    /// one connection (Sparkplug's births and sequence numbers), a message
    /// not acknowledged before a disconnect must not go out on the next.
    pub fn forget_messages(&mut self) {
        self.messages.clear();
        self.queued_bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forgotten_messages_do_not_go_out_after_a_reconnect() {
        let mut ledger = Ledger::new(4);
        ledger.submit(Sent::Message(reply("birth"), false));
        assert!(ledger.sent(1));
        ledger.disconnected();
        ledger.forget_messages();
        assert!(ledger.next_message().is_none());
        assert!(ledger.room());
    }

    fn reply(topic: &str) -> Reply {
        Reply {
            topic: topic.into(),
            payload: Vec::new(),
            correlation: None,
        }
    }

    fn row(seq: i64) -> Sent {
        Sent::Row {
            seq,
            twin_device: None,
            counted: None,
        }
    }

    fn twin(device: &str, seq: i64) -> Sent {
        Sent::Row {
            seq,
            twin_device: Some(device.into()),
            counted: None,
        }
    }

    #[test]
    fn packet_ids_are_tied_to_what_was_submitted_in_order() {
        let mut ledger = Ledger::new(8);
        ledger.submit(row(1));
        ledger.submit(twin("d", 2));
        assert!(ledger.row_out(1) && ledger.twin_out("d"));
        assert!(ledger.sent(7) && ledger.sent(3));
        assert!(!ledger.sent(9), "nothing else was submitted");
        // PUBACKs may come in any order; each settles its own packet.
        assert_eq!(ledger.acknowledged(3), Some(twin("d", 2)));
        assert!(!ledger.twin_out("d") && ledger.row_out(1));
        assert_eq!(ledger.acknowledged(7), Some(row(1)));
        assert_eq!(ledger.acknowledged(7), None, "settled once");
        // Acknowledged but not yet deleted: still out, not to be sent again,
        // but no longer read ahead for.
        assert!(ledger.row_out(1) && ledger.room());
        assert_eq!(ledger.rows_out(), 0);
        assert_eq!(ledger.delivered(), [twin("d", 2), row(1)]);
        ledger.settled();
        assert!(!ledger.row_out(1));
    }

    #[test]
    fn the_outbox_is_read_again_once_a_quarter_of_the_window_is_free() {
        let mut ledger = Ledger::new(8);
        assert!(ledger.refill_due(), "all free");
        for seq in 1..=7 {
            ledger.submit(row(seq));
            assert!(ledger.sent(seq as u16 + 10));
        }
        assert!(ledger.room() && !ledger.refill_due(), "one free of eight");
        ledger.acknowledged(11);
        assert!(ledger.refill_due(), "two free of eight");
        let mut one = Ledger::new(1);
        assert!(one.refill_due());
        one.submit(row(1));
        assert!(!one.refill_due());
    }

    #[test]
    fn a_read_is_held_only_while_rows_may_wait_and_less_than_a_quarter_is_free() {
        let mut ledger = Ledger::new(8);
        assert!(!ledger.read_held(), "all free: the read is due, not held");
        for seq in 1..=8 {
            ledger.submit(row(seq));
            assert!(ledger.sent(seq as u16 + 10));
        }
        assert!(!ledger.read_held(), "the window is full: nothing would fit");
        ledger.acknowledged(11);
        assert!(
            ledger.read_held() && !ledger.read_due(),
            "one free of eight: held back"
        );
        ledger.outbox_read_through();
        assert!(!ledger.read_held(), "nothing may wait");
        ledger.outbox_changed();
        ledger.acknowledged(12);
        assert!(
            !ledger.read_held() && ledger.read_due(),
            "two free of eight: due"
        );
    }

    #[test]
    fn the_outbox_is_read_only_when_it_may_hold_rows_not_read() {
        let mut ledger = Ledger::new(8);
        assert!(ledger.read_due(), "at the start");
        ledger.outbox_read_through();
        assert!(!ledger.read_due(), "read, and nothing added since");
        ledger.outbox_changed();
        assert!(ledger.read_due(), "rows added");
        ledger.outbox_read_through();
        // A reply goes out and is acknowledged: no row was added.
        ledger.submit(Sent::Message(reply("answer"), false));
        assert!(ledger.sent(1));
        assert!(!ledger.read_due());
        ledger.acknowledged(1);
        assert!(!ledger.read_due(), "nothing new to read");
        // Marked, but the window is too full to read: it stays marked.
        for seq in 1..=7 {
            ledger.submit(row(seq));
        }
        ledger.outbox_changed();
        assert!(!ledger.read_due(), "one free of eight");
        for pkid in 11..=17 {
            assert!(ledger.sent(pkid));
        }
        ledger.acknowledged(11);
        assert!(ledger.read_due(), "two free of eight, and still marked");
        ledger.disconnected();
        assert!(
            ledger.read_due(),
            "everything is read again after a reconnect"
        );
    }

    #[test]
    fn delivered_rows_are_settled_in_batches_or_once_nothing_is_out() {
        let mut ledger = Ledger::new(8);
        assert!(!ledger.settle_due(2), "nothing delivered");
        for (seq, pkid) in [(1, 11), (2, 12), (3, 13)] {
            ledger.submit(row(seq));
            assert!(ledger.sent(pkid));
        }
        ledger.acknowledged(11);
        assert!(!ledger.settle_due(2), "one delivered, two still out");
        ledger.acknowledged(12);
        assert!(ledger.settle_due(2), "a batch of two");
        assert!(!ledger.settle_due(3), "a batch of three is not there yet");
        ledger.acknowledged(13);
        assert!(ledger.settle_due(10), "nothing is out: the burst is over");
        ledger.settled();
        assert!(!ledger.settle_due(1), "settled");
    }

    #[test]
    fn a_read_asks_for_what_fits_and_the_rows_out_and_a_few_more() {
        let mut ledger = Ledger::new(8);
        assert_eq!(ledger.read_limit(4), 12, "an empty window");
        ledger.submit(row(1));
        ledger.submit(row(2));
        ledger.submit(Sent::Message(reply("r"), false));
        assert_eq!(
            ledger.read_limit(4),
            5 + 2 + 4,
            "five free, two rows out (a message is not read again)"
        );
    }

    #[test]
    fn reading_goes_on_past_handed_out_rows_of_each_lane_but_not_past_an_open_one() {
        use Lane::{First, Later};
        let mut ledger = Ledger::new(8);
        ledger.pass(Later, 3, None);
        assert_eq!(ledger.read_past(Later), 3);
        ledger.pass(Later, 2, None);
        assert_eq!(ledger.read_past(Later), 3, "never back");
        assert_eq!(ledger.read_past(First), 0, "each lane on its own");
        ledger.pass(First, 7, None);
        assert_eq!(ledger.read_past(First), 7);
        assert_eq!(ledger.read_past(Later), 3);
        // Row 5 may still grow: rows past it are sent, but read again
        // (and skipped as out) until it is sealed.
        ledger.pass(Later, 4, Some(5));
        ledger.pass(Later, 6, Some(5));
        assert_eq!(ledger.read_past(Later), 4);
        // A read that handled every row up to the outbox's last goes on
        // to just before the open row.
        ledger.pass(Later, 20, Some(9));
        assert_eq!(ledger.read_past(Later), 8);
        ledger.read_again();
        assert_eq!(ledger.read_past(Later), 0);
        assert_eq!(ledger.read_past(First), 0);
        ledger.pass(Later, 9, None);
        ledger.pass(First, 9, None);
        ledger.disconnected();
        assert_eq!(
            (ledger.read_past(First), ledger.read_past(Later)),
            (0, 0),
            "a new connection reads everything"
        );
    }

    #[test]
    fn a_twin_row_that_comes_while_the_state_is_out_sends_the_state_again_once_acknowledged() {
        let mut ledger = Ledger::new(1);
        ledger.submit(twin("d", 2));
        assert!(ledger.sent(1));
        ledger.twin_later("d");
        ledger.twin_later("d");
        assert_eq!(
            ledger.next_twin_due(),
            None,
            "the window is full, and d is out"
        );
        ledger.acknowledged(1);
        assert_eq!(ledger.next_twin_due(), Some("d".into()));
        assert_eq!(ledger.next_twin_due(), None, "once");
        // Given back when rumqttc cannot take it.
        ledger.twin_unsent("d".into());
        assert_eq!(ledger.next_twin_due(), Some("d".into()));
        // A twin acknowledged with nothing newer is not sent again, and a
        // disconnect forgets what was due (every row is read again).
        ledger.submit(twin("e", 3));
        ledger.sent(2);
        ledger.acknowledged(2);
        assert_eq!(ledger.next_twin_due(), None);
        ledger.submit(twin("f", 4));
        ledger.sent(3);
        ledger.twin_later("f");
        ledger.acknowledged(3);
        ledger.disconnected();
        assert_eq!(ledger.next_twin_due(), None);
    }

    #[test]
    fn an_ack_waits_for_the_newer_state_of_its_device_and_the_outbox_is_read_again_once_it_is_out()
    {
        let mut ledger = Ledger::new(4);
        ledger.submit(twin("d", 2));
        assert!(ledger.sent(1));
        assert!(!ledger.ack_waits("d"), "the state out covers every report");
        // A report while the state is out, then the app's ack.
        ledger.twin_later("d");
        assert!(ledger.ack_waits("d"));
        assert!(!ledger.ack_waits("e"), "another device's ack goes");
        assert!(!ledger.hold_ack("e"), "nor held");
        assert!(ledger.hold_ack("d"));
        ledger.outbox_read_through();
        ledger.acknowledged(1);
        assert!(ledger.ack_waits("d"), "due, not yet out");
        assert!(!ledger.read_due(), "nothing to read before the state goes");
        let device = ledger.next_twin_due().expect("d is due");
        ledger.submit(twin(&device, 5));
        assert!(!ledger.ack_waits("d"), "the state is out ahead of the ack");
        assert!(ledger.read_due(), "the held ack is read again");
        // Handed out without an ack held: no read for it.
        ledger.outbox_read_through();
        ledger.submit(twin("e", 6));
        assert!(!ledger.read_due());
        // A disconnect forgets the held acks: every row is read again.
        ledger.twin_later("e");
        assert!(ledger.hold_ack("e"));
        ledger.disconnected();
        assert!(!ledger.ack_waits("e"));
    }

    #[test]
    fn the_window_holds_submitted_and_inflight_publishes() {
        let mut ledger = Ledger::new(2);
        ledger.queue(reply("a"), false).expect("queued");
        ledger.queue(reply("b"), false).expect("queued");
        ledger.queue(reply("c"), false).expect("queued");
        for topic in ["a", "b"] {
            let (r, retain) = ledger.next_message().expect("room");
            assert_eq!(r.topic, topic);
            ledger.submit(Sent::Message(r, retain));
        }
        assert!(ledger.next_message().is_none(), "the window is full");
        assert!(ledger.sent(1));
        assert!(ledger.carries("b") && ledger.carries("a"));
        assert!(ledger.next_message().is_none(), "in flight still counts");
        ledger.acknowledged(1);
        assert!(!ledger.carries("a"));
        assert_eq!(
            ledger.next_message().map(|(r, _)| r.topic),
            Some("c".into())
        );
    }

    #[test]
    fn a_disconnect_requeues_messages_in_their_order_and_forgets_rows() {
        let mut ledger = Ledger::new(16);
        for (i, topic) in ["m1", "m2", "m3", "m4", "m5"].iter().enumerate() {
            ledger.submit(Sent::Message(reply(topic), false));
            ledger.submit(row(i as i64));
        }
        // Some left with packet ids (in flight), the rest still submitted.
        for pkid in [40, 10, 30, 20, 50, 60] {
            assert!(ledger.sent(pkid));
        }
        // Submitted in turn: m1 row0 m2 row1 m3 row2 ... ; 30 carried m2.
        assert_eq!(
            ledger.acknowledged(30),
            Some(Sent::Message(reply("m2"), false))
        );
        ledger.queue(reply("newer"), false).expect("queued");
        ledger.disconnected();
        assert_eq!(ledger.rows_out(), 0);
        let mut order = Vec::new();
        while let Some((r, _)) = ledger.next_message() {
            order.push(r.topic);
        }
        assert_eq!(order, ["m1", "m3", "m4", "m5", "newer"]);
    }

    #[test]
    fn the_queue_is_bounded_in_bytes_and_only_the_newest_status_waits() {
        let mut ledger = Ledger::new(1);
        let big = |topic: &str| Reply {
            topic: topic.into(),
            payload: vec![0; (MAX_QUEUED_BYTES / 4) - topic.len()],
            correlation: None,
        };
        for _ in 0..4 {
            assert!(ledger.takes_replies());
            ledger.queue(big("r"), false).expect("room");
        }
        // Past the soft bound the link stops taking workers' replies, but
        // its own refusals still queue up to the hard bound.
        assert!(!ledger.takes_replies());
        for _ in 0..4 {
            ledger.queue(big("r"), false).expect("room");
        }
        assert!(ledger.queue(reply("dropped"), false).is_err());
        // Sending frees room; a disconnect keeps the count right.
        let (first, retain) = ledger.next_message().expect("a message");
        ledger.submit(Sent::Message(first, retain));
        assert!(ledger.queue(reply("fits again"), false).is_ok());
        ledger.disconnected();
        assert!(ledger.queue(reply("full again"), false).is_err());
        let mut ledger = Ledger::new(1);
        ledger.queue_latest(reply("status"), true);
        ledger.queue(reply("r"), false).expect("room");
        ledger.queue_latest(reply("status"), true);
        let topics: Vec<String> = std::iter::from_fn(|| {
            let next = ledger.next_message();
            if let Some((r, retain)) = &next {
                ledger.submit(Sent::Message(r.clone(), *retain));
                ledger.sent(1);
                ledger.acknowledged(1);
            }
            next.map(|(r, _)| r.topic)
        })
        .collect();
        assert_eq!(topics, ["r", "status"]);
    }
}

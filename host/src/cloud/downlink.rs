//! Downlink: desired changes and action requests from the cloud.
//!
//! The link hands every message it receives to [`Downlink::dispatch`], which
//! never blocks it: it checks the topic and size, finds the device's app,
//! and queues the message on that device's worker. Each device has one
//! worker, so its messages are handled in the order they came; workers for
//! different devices run side by side. Nothing reaches a guest before it
//! passed the device model: unknown, read-only, wrong-typed or out-of-range
//! values are refused in the answer and logged.

use futures_util::StreamExt as _;
use futures_util::stream::FuturesUnordered;
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use crate::wire::Reply;
use crate::wire::topics::Service;
use crate::wire::{Inbound, RespondTo};

use super::protocol::{Ack, ActionRequest, ActionResponse, Desired, MAX_DOWNLINK_BYTES};
use super::topics::{self, Kind};
use crate::app::{AppError, Directory};
use crate::model::DeviceModel;
use crate::store::{ConnectionPool, Database};
use crate::value::to_json;

/// How long a downlink message may wait for its app (queue, restarts, call)
/// before the cloud is told it timed out, unless `[cloud] answer_timeout_s`
/// says otherwise.
pub const APP_TIMEOUT: Duration = Duration::from_secs(30);

/// Messages waiting per device before new ones are refused as "busy".
const DEVICE_QUEUE: usize = 64;

/// A device's worker that has had nothing to do for this long is ended,
/// and started again by the device's next message: a gateway that has
/// had a message for each of 10,000 devices does not keep 10,000 tasks
/// and queues (a few KiB each) for good.
const WORKER_IDLE: Duration = Duration::from_secs(60);

/// A device's worker, as the downlink sees it.
struct DeviceWorker {
    queue: mpsc::Sender<Request>,
    /// Messages handed to it and not yet answered. It is retired only at
    /// zero, waiting for nothing, so a device's messages stay in order
    /// across a retirement: the next worker starts after the last ended.
    pending: Arc<AtomicUsize>,
    last_message: Instant,
}

enum Request {
    Desired(Vec<u8>),
    /// An action request, and where its answer goes: `action/{name}/res`,
    /// or (MQTT 5) the request's response topic with its correlation data.
    Action {
        name: String,
        payload: Vec<u8>,
        answer: RespondTo,
    },
}

/// The longest response topic taken from a request (MQTT 5).
pub const MAX_RESPONSE_TOPIC: usize = 512;

/// The answer to come of an action sent straight to its app.
type PendingAnswer = Pin<Box<dyn Future<Output = Reply> + Send>>;

/// Routes downlink messages to per-device workers.
pub struct Downlink {
    /// Counts the messages refused before they reached a worker or service.
    metrics: Arc<crate::metrics::LinkMetrics>,
    gateway: String,
    /// Which app speaks for which device, with which model: looked up for
    /// every message, so deployments take effect at once.
    directory: Directory,
    workers: HashMap<String, DeviceWorker>,
    /// When idle workers were last looked for.
    retired: Instant,
    replies: mpsc::Sender<Reply>,
    /// The workers' connections to the gateway's database, taken for each
    /// use: a worker per device that ever had a message must not keep a
    /// connection (two open files and about 100 KiB of heap) open each.
    pool: Arc<ConnectionPool>,
    /// Wakes the link when an ack is in the outbox.
    outbox_signal: Arc<Notify>,
    cancel: CancellationToken,
    /// Where the device workers run, so that shutdown can wait for them.
    tasks: TaskTracker,
    /// The services that take other kinds of messages.
    handlers: HashMap<Service, mpsc::Sender<Inbound>>,
    /// Refusals are each answered and counted, but logged at this rate at
    /// most: a flood must not become a flood of log lines.
    refusal_log: crate::rate::SharedLimit,
    /// How long a request waits for its app before it is answered "timed out".
    answer_within: Duration,
    /// Whether an action for a device with nothing waiting goes straight to
    /// its app, its answer coming back through [`Downlink::next_answer`].
    direct: bool,
    /// The answers of the actions that went straight to their apps.
    answers: FuturesUnordered<PendingAnswer>,
}

impl Downlink {
    pub fn new(
        gateway: String,
        directory: Directory,
        replies: mpsc::Sender<Reply>,
        db: Database,
        outbox_signal: Arc<Notify>,
        cancel: CancellationToken,
        tasks: TaskTracker,
    ) -> Self {
        Downlink {
            metrics: Arc::default(),
            gateway,
            directory,
            workers: HashMap::new(),
            retired: Instant::now(),
            replies,
            pool: ConnectionPool::new(db),
            outbox_signal,
            cancel,
            tasks,
            handlers: HashMap::new(),
            refusal_log: crate::rate::refusal_warnings(),
            answer_within: APP_TIMEOUT,
            direct: false,
            answers: FuturesUnordered::new(),
        }
    }

    /// Send an action for a device that has nothing waiting straight to
    /// its app, and take its answer from [`next_answer`](Self::next_answer),
    /// which the caller (the link) must poll. A device's worker is one more
    /// task woken on the way there and one more on the way back: two hops
    /// that, with tokio's cap of three tasks run in a row from its LIFO
    /// slot, woke a second worker thread on every action (P7).
    pub fn answering_directly(mut self) -> Self {
        self.direct = true;
        self
    }

    /// Whether an action sent straight to its app is still to be answered.
    pub fn answers_pending(&self) -> bool {
        !self.answers.is_empty()
    }

    /// The next answer of an action sent straight to its app; never, while
    /// there is none to wait for.
    pub async fn next_answer(&mut self) -> Reply {
        match self.answers.next().await {
            Some(reply) => reply,
            None => std::future::pending().await,
        }
    }

    /// Wait this long for an app's answer before the cloud is told it timed out.
    pub fn answering_within(mut self, within: Duration) -> Self {
        self.answer_within = within;
        self
    }

    /// Count refusals in the link's metrics.
    pub fn counting_refusals_in(mut self, metrics: Arc<crate::metrics::LinkMetrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// Hand the messages of `service` to `to`.
    pub fn with_handler(mut self, service: Service, to: mpsc::Sender<Inbound>) -> Self {
        self.handlers.insert(service, to);
        self
    }

    /// Pass a message to its service without waiting; say so if it cannot
    /// take it (none, or its queue is full: the sender asks again).
    fn hand_over(&self, service: Service, topic: &str, payload: &[u8]) {
        let message = Inbound {
            topic: topic.to_string(),
            payload: payload.to_vec(),
        };
        let taken = self
            .handlers
            .get(&service)
            .is_some_and(|to| to.try_send(message).is_ok());
        if !taken {
            tracing::warn!(
                topic,
                "a message for the {service:?} service was dropped: it is busy or off (the sender asks again)"
            );
        }
    }

    /// End the workers that have waited for nothing for [`WORKER_IDLE`]:
    /// their queues are dropped, so each returns from its wait. Looked for
    /// at most once a [`WORKER_IDLE`], from `dispatch`, the only place
    /// that hands them work, so none can be given a message meanwhile.
    fn retire_idle_workers(&mut self, now: Instant) {
        if now.duration_since(self.retired) < WORKER_IDLE {
            return;
        }
        self.retired = now;
        self.workers.retain(|_, worker| {
            worker.pending.load(Ordering::Acquire) > 0
                || now.duration_since(worker.last_message) < WORKER_IDLE
        });
    }

    /// Handle one message the link received. Never waits. Returns the
    /// answer to a request refused here (oversized, for no app, or its
    /// device busy), for the link to queue itself: it must not wait on the
    /// channel that the link itself drains.
    #[must_use = "a refused request is answered with the reply returned"]
    pub fn dispatch(&mut self, topic: &str, payload: &[u8]) -> Option<Reply> {
        self.dispatch_answering(topic, payload, None)
    }

    /// [`dispatch`](Self::dispatch) for a message that (MQTT 5) names where
    /// an action's answer goes. A response topic that is not one a client
    /// may publish to (empty, a wildcard, over [`MAX_RESPONSE_TOPIC`]
    /// bytes) is ignored, and the answer goes to the usual topic. The
    /// broker's ACL decides where the gateway may publish.
    #[must_use = "a refused request is answered with the reply returned"]
    pub fn dispatch_answering(
        &mut self,
        topic: &str,
        payload: &[u8],
        respond_to: Option<RespondTo>,
    ) -> Option<Reply> {
        let Some(parsed) = topics::parse(topic).filter(|p| p.gateway == self.gateway) else {
            tracing::warn!(
                topic,
                "ignoring a message on a topic that is not part of this gateway's protocol"
            );
            return None;
        };
        let device = parsed.device.to_string();
        if let Some(service) = parsed.kind.service() {
            self.hand_over(service, topic, payload);
            return None;
        }
        // Our own deployment reports come back through the subscription.
        if parsed.kind == Kind::DeployResponse {
            return None;
        }
        let (request, reply_topic) = match parsed.kind {
            Kind::Desired => (
                Request::Desired(payload.to_vec()),
                topics::topic(&self.gateway, &device, "twin/ack"),
            ),
            Kind::ActionRequest(name) => {
                let answer = respond_to
                    .filter(|r| {
                        let usable = !r.topic.is_empty()
                            && r.topic.len() <= MAX_RESPONSE_TOPIC
                            && !r.topic.contains(['+', '#', '\0']);
                        if !usable {
                            tracing::warn!(topic, response_topic = %r.topic, "ignoring a response topic no client may publish to");
                        }
                        usable
                    })
                    .unwrap_or_else(|| RespondTo {
                        topic: topics::topic(&self.gateway, &device, &format!("action/{name}/res")),
                        correlation: None,
                    });
                let reply_topic = answer.topic.clone();
                (
                    Request::Action {
                        name: name.to_string(),
                        payload: payload.to_vec(),
                        answer,
                    },
                    reply_topic,
                )
            }
            _ => {
                tracing::warn!(
                    topic,
                    "ignoring a message the gateway does not take (only twin/desired and action/+/req come down)"
                );
                return None;
            }
        };
        let refuse = |error: String| {
            if self.refusal_log.allow() {
                tracing::warn!(topic, device = %device, "downlink refused: {error}");
            }
            self.metrics
                .downlink_refused
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            refusal(&request, reply_topic.clone(), error)
        };
        if payload.len() > MAX_DOWNLINK_BYTES {
            let reply = refuse(format!(
                "message of {} bytes is over the limit of {MAX_DOWNLINK_BYTES}",
                payload.len()
            ));
            return Some(reply);
        }
        let Some(route) = self.directory.by_device(&device) else {
            let reply = refuse(format!(
                "no app on gateway {} speaks for device {device}",
                self.gateway
            ));
            return Some(reply);
        };
        if let Some(answer) = self.ask_directly(&route, &request) {
            self.answers.push(answer);
            return None;
        }
        let now = Instant::now();
        self.retire_idle_workers(now);
        // A worker that ended (its task panicked, say) is
        // replaced, never left as a queue nobody drains.
        if self
            .workers
            .get(&device)
            .is_some_and(|w| w.queue.is_closed())
        {
            tracing::warn!(device = %device, "the device's downlink worker had stopped; starting a new one");
            self.workers.remove(&device);
        }
        let worker = self.workers.entry(device.clone()).or_insert_with(|| {
            let (tx, rx) = mpsc::channel(DEVICE_QUEUE);
            let worker = Worker {
                gateway: self.gateway.clone(),
                device: device.clone(),
                directory: self.directory.clone(),
                replies: self.replies.clone(),
                pool: self.pool.clone(),
                outbox_signal: self.outbox_signal.clone(),
                answer_within: self.answer_within,
                pending: Arc::default(),
            };
            let pending = worker.pending.clone();
            self.tasks.spawn(worker.run(rx, self.cancel.clone()));
            DeviceWorker {
                queue: tx,
                pending,
                last_message: now,
            }
        });
        worker.last_message = now;
        // Counted before it is sent: the worker may be done with it before
        // `try_send` returns.
        worker.pending.fetch_add(1, Ordering::AcqRel);
        if let Err(e) = worker.queue.try_send(request) {
            worker.pending.fetch_sub(1, Ordering::AcqRel);
            let request = match e {
                mpsc::error::TrySendError::Full(r) | mpsc::error::TrySendError::Closed(r) => r,
            };
            self.metrics
                .downlink_refused
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(device = %device, "downlink refused: {DEVICE_QUEUE} requests are already waiting");
            let reply = refusal(
                &request,
                reply_topic,
                format!("device {device} is busy: {DEVICE_QUEUE} requests are waiting"),
            );
            return Some(reply);
        }
        None
    }

    /// Send an action straight to its app (see
    /// [`answering_directly`](Self::answering_directly)): the answer to
    /// come, or `None` for the worker's way. That way is kept for a device
    /// whose worker has messages waiting, which must be handled first; a
    /// request the model refuses, which the worker answers; and an app
    /// whose queue is full, for which the worker waits.
    fn ask_directly(&self, route: &crate::app::Entry, request: &Request) -> Option<PendingAnswer> {
        if !self.direct {
            return None;
        }
        let Request::Action {
            name,
            payload,
            answer,
        } = request
        else {
            return None;
        };
        let idle = self
            .workers
            .get(&route.device)
            .is_none_or(|w| w.pending.load(Ordering::Acquire) == 0);
        if !idle {
            return None;
        }
        let (id, argument) = check_action(&route.model, name, payload).ok()?;
        let asked = route
            .handle
            .try_action(route.device.clone(), name.clone(), argument)?;
        let (device, name, answer) = (route.device.clone(), name.clone(), answer.clone());
        let within = self.answer_within;
        Some(Box::pin(async move {
            let outcome = asked.answer(within).await;
            action_reply(answer, &action_response(&device, &name, id, outcome))
        }))
    }
}

/// An action's response, as the reply to where its request asked for it.
fn action_reply(answer: RespondTo, response: &ActionResponse) -> Reply {
    Reply {
        topic: answer.topic,
        payload: serde_json::to_vec(response).unwrap_or_default(),
        correlation: answer.correlation,
    }
}

/// The answer to an action request, from the app's outcome.
fn action_response(
    device: &str,
    name: &str,
    id: String,
    outcome: Result<Option<crate::bindings::Value>, AppError>,
) -> ActionResponse {
    let fail = |error: String| {
        tracing::warn!(device, action = name, id = %id, "action failed: {error}");
        ActionResponse {
            id: Some(id.clone()),
            result: None,
            error: Some(error),
        }
    };
    match outcome {
        Ok(result) => {
            let result = result
                .as_ref()
                .map(to_json)
                .unwrap_or(serde_json::Value::Null);
            let size = result.to_string().len();
            if size > MAX_DOWNLINK_BYTES {
                return fail(format!(
                    "the app's result is {size} bytes, over the limit of {MAX_DOWNLINK_BYTES}"
                ));
            }
            // At debug: a gateway answering hundreds of actions a second
            // would write as many lines, on the answer's path (P7). A
            // refused or failed action still logs a warning.
            tracing::debug!(device, action = name, id = %id, "action answered");
            ActionResponse {
                id: Some(id.clone()),
                result: Some(result),
                error: None,
            }
        }
        Err(reason) => fail(reason.to_string()),
    }
}

/// The error answer to a request that never reached its worker.
fn refusal(request: &Request, topic: String, error: String) -> Reply {
    let payload = match request {
        Request::Desired(payload) => serde_json::to_vec(&Ack {
            version: version_of(payload),
            error: Some(error),
            ..Ack::default()
        }),
        Request::Action { payload, .. } => serde_json::to_vec(&ActionResponse {
            id: id_of(payload),
            result: None,
            error: Some(error),
        }),
    };
    let correlation = match request {
        Request::Action { answer, .. } => answer.correlation.clone(),
        Request::Desired(_) => None,
    };
    Reply {
        topic,
        payload: payload.unwrap_or_default(),
        correlation,
    }
}

/// The `version` of a desired message, if it has one, even if the rest is bad.
fn version_of(payload: &[u8]) -> Option<u64> {
    serde_json::from_slice::<serde_json::Value>(payload)
        .ok()?
        .get("version")?
        .as_u64()
}

/// The `id` of an action request, if it has a usable one.
fn id_of(payload: &[u8]) -> Option<String> {
    let id = serde_json::from_slice::<serde_json::Value>(payload)
        .ok()?
        .get("id")?
        .as_str()?
        .to_string();
    (id.len() <= 128).then_some(id)
}

/// A desired message checked against the device's model: what may be
/// applied, and what is refused and why. Whether its version is new is the
/// caller's question (it needs the twin).
#[derive(Debug, Default)]
pub struct DesiredChange {
    pub version: u64,
    pub accepted: Vec<(String, crate::bindings::Value)>,
    pub rejected: BTreeMap<String, String>,
}

impl DesiredChange {
    /// Every attribute the message named.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.accepted
            .iter()
            .map(|(n, _)| n.as_str())
            .chain(self.rejected.keys().map(String::as_str))
    }
}

/// The most attributes one desired change may name (reports are capped
/// alike), so that an ack stays small.
pub const MAX_DESIRED_ATTRIBUTES: usize = 256;

/// A desired change the app applied: its version and the accepted values
/// (JSON text), recorded in the twin with the change's ack.
struct Applied {
    version: u64,
    values: Vec<(String, String)>,
}

/// Read a `twin/desired` payload and check each attribute against `model`.
/// An unreadable message is refused whole; a bad attribute only itself.
pub fn check_desired(model: &DeviceModel, payload: &[u8]) -> Result<DesiredChange, String> {
    let desired: Desired =
        serde_json::from_slice(payload).map_err(|e| format!("malformed desired message: {e}"))?;
    // Stored as SQLite's signed 64-bit integer, and 0 means "none applied":
    // outside this range duplicate detection would break.
    if desired.version == 0 || i64::try_from(desired.version).is_err() {
        return Err(format!(
            "version {} is not between 1 and 2^63 - 1",
            desired.version
        ));
    }
    if desired.attributes.len() > MAX_DESIRED_ATTRIBUTES {
        return Err(format!(
            "{} attributes in one desired change, over the limit of {MAX_DESIRED_ATTRIBUTES}",
            desired.attributes.len()
        ));
    }
    let mut change = DesiredChange {
        version: desired.version,
        ..DesiredChange::default()
    };
    for (name, json) in &desired.attributes {
        match model.check_desired(name, json) {
            Ok(value) => change.accepted.push((name.clone(), value)),
            Err(reason) => {
                change.rejected.insert(name.clone(), reason);
            }
        }
    }
    Ok(change)
}

/// Read an `action/{name}/req` payload and check its argument against
/// `model`: the request id and the argument, or the id (if one could be
/// read) and why it is refused.
pub fn check_action(
    model: &DeviceModel,
    name: &str,
    payload: &[u8],
) -> Result<(String, Option<crate::bindings::Value>), (Option<String>, String)> {
    let request: ActionRequest = serde_json::from_slice(payload)
        .map_err(|e| (id_of(payload), format!("malformed action request: {e}")))?;
    if request.id.is_empty() || request.id.len() > 128 {
        return Err((
            id_of(payload),
            "the request id must be 1 to 128 characters".into(),
        ));
    }
    match model.check_action(name, request.argument.as_ref()) {
        Ok(argument) => Ok((request.id, argument)),
        Err(reason) => Err((Some(request.id), reason)),
    }
}

struct Worker {
    gateway: String,
    device: String,
    directory: Directory,
    replies: mpsc::Sender<Reply>,
    pool: Arc<ConnectionPool>,
    outbox_signal: Arc<Notify>,
    answer_within: Duration,
    /// Shared with its [`DeviceWorker`]: lowered once a message is answered.
    pending: Arc<AtomicUsize>,
}

impl Worker {
    async fn run(self, mut requests: mpsc::Receiver<Request>, cancel: CancellationToken) {
        loop {
            let request = tokio::select! {
                _ = cancel.cancelled() => return,
                request = requests.recv() => match request {
                    Some(r) => r,
                    // Retired (or the downlink is gone).
                    None => return,
                },
            };
            let sent = match self.handle(request).await {
                Some(reply) => self.replies.send(reply).await.is_ok(),
                None => true,
            };
            self.pending.fetch_sub(1, Ordering::AcqRel);
            if !sent {
                return;
            }
        }
    }

    /// Handle one message: the answer to send, or `None` once it is in the
    /// outbox (a twin ack).
    async fn handle(&self, request: Request) -> Option<Reply> {
        match request {
            Request::Desired(payload) => self.desired(&payload).await.1,
            Request::Action {
                name,
                payload,
                answer,
            } => Some(action_reply(answer, &self.action(&name, &payload).await)),
        }
    }

    /// Handle a desired change: decide it, then record what was applied
    /// and queue its ack into the outbox, in one transaction. The ack
    /// goes after the reports the app made while it applied the change,
    /// so the cloud sees them first, and a lost connection loses no
    /// answer. Also the reply to send at once, if the outbox cannot keep
    /// the ack.
    async fn desired(&self, payload: &[u8]) -> (Ack, Option<Reply>) {
        let (ack, applied) = self.decide_desired(payload).await;
        self.keep_ack(ack, applied)
    }

    /// Record `applied` and queue `ack` together; an ack whose change
    /// cannot be recorded becomes an error ack, queued alone.
    fn keep_ack(&self, ack: Ack, applied: Option<Applied>) -> (Ack, Option<Reply>) {
        let (ack, kept) = match (self.store_ack(&ack, applied.as_ref()), applied) {
            (Err(e), Some(applied)) => {
                let error = format!("the gateway could not store the change: {e}");
                let failed = self.failed(applied.version, error);
                let kept = self.store_ack(&failed, None);
                (failed, kept)
            }
            (kept, _) => (ack, kept),
        };
        match kept {
            Ok(()) => {
                self.outbox_signal.notify_one();
                (ack, None)
            }
            Err(e) => {
                tracing::error!(device = %self.device, "cannot keep a twin ack in the outbox, sending it at once: {e}");
                let reply = Reply {
                    topic: topics::topic(&self.gateway, &self.device, "twin/ack"),
                    payload: serde_json::to_vec(&ack).unwrap_or_default(),
                    correlation: None,
                };
                (ack, Some(reply))
            }
        }
    }

    /// Queue `ack` into the outbox, and record `applied` (if any) in the
    /// same transaction: one commit, not one for the change and one for
    /// its ack, which was a third of a desired change's time in the worker
    /// (P7's desired to ack).
    fn store_ack(&self, ack: &Ack, applied: Option<&Applied>) -> rusqlite::Result<()> {
        let mut db = self.pool.open()?;
        let tx = db.transaction()?;
        if let Some(applied) = applied {
            crate::store::apply_desired(&tx, &self.device, applied.version, &applied.values)?;
        }
        let entry = crate::outbox::Entry {
            kind: crate::outbox::Kind::Ack,
            device: self.device.clone(),
            name: String::new(),
            points: 0,
            payload: serde_json::to_vec(ack).unwrap_or_default(),
        };
        crate::outbox::insert(&tx, std::slice::from_ref(&entry))?;
        tx.commit()
    }

    /// Check a desired change and hand it to the app: its ack, and what
    /// to record of it (its version, even if every attribute was refused,
    /// so that an older message arriving later is recognised as stale).
    /// The database connection is taken for the read only, not held
    /// while the app works on the change.
    async fn decide_desired(&self, payload: &[u8]) -> (Ack, Option<Applied>) {
        let device = &self.device;
        let Some(route) = self.directory.by_device(device) else {
            let ack = Ack {
                version: version_of(payload),
                error: Some(format!(
                    "no app on gateway {} speaks for device {device}",
                    self.gateway
                )),
                ..Ack::default()
            };
            return (ack, None);
        };
        let checked = match check_desired(&route.model, payload) {
            Ok(c) => c,
            Err(error) => {
                tracing::warn!(device = %device, "refused a desired message: {error}");
                let ack = Ack {
                    version: version_of(payload),
                    error: Some(error),
                    ..Ack::default()
                };
                return (ack, None);
            }
        };
        let version = checked.version;
        let applied = match self
            .pool
            .open()
            .and_then(|db| crate::store::desired_version(&db, device))
        {
            Ok(v) => v,
            Err(e) => {
                let error = format!("the gateway cannot read its twin: {e}");
                return (self.failed(version, error), None);
            }
        };
        if version == applied {
            tracing::info!(device = %device, version, "desired version already applied; not applying it again");
            let ack = Ack {
                version: Some(version),
                duplicate: true,
                ..Ack::default()
            };
            return (ack, None);
        }
        let mut ack = Ack {
            version: Some(version),
            ..Ack::default()
        };
        if version < applied {
            for name in checked.names() {
                ack.rejected.insert(
                    name.to_string(),
                    format!("stale: version {version} is older than the applied version {applied}"),
                );
            }
            tracing::warn!(device = %device, version, applied, "refused a stale desired change");
            return (ack, None);
        }

        let mut accepted = checked.accepted;
        for (name, reason) in checked.rejected {
            tracing::warn!(device = %device, attribute = %name, "desired value refused: {reason}");
            ack.rejected.insert(name, reason);
        }
        if !accepted.is_empty() {
            let outcome = route
                .handle
                .desired(device.clone(), accepted.clone(), self.answer_within)
                .await;
            // A change the app never began leaves no trace: the version is
            // not recorded, so the cloud may send it again.
            let never_begun = matches!(outcome, Err(AppError::NotAnswered { started: false, .. }));
            let refused = match outcome {
                Ok(()) => None,
                Err(not_answered @ AppError::NotAnswered { .. }) => Some(not_answered.to_string()),
                Err(reason) => Some(format!("the app refused it: {reason}")),
            };
            if let Some(reason) = refused {
                tracing::warn!(device = %device, version, "desired change not applied: {reason}");
                for (name, _) in accepted.drain(..) {
                    ack.rejected.insert(name, reason.clone());
                }
            }
            if never_begun {
                return (ack, None);
            }
        }
        let values = accepted
            .iter()
            .map(|(n, v)| (n.clone(), to_json(v).to_string()))
            .collect();
        ack.accepted = accepted.into_iter().map(|(n, _)| n).collect();
        tracing::info!(device = %device, version, accepted = ?ack.accepted, rejected = ack.rejected.len(), "desired change handled");
        (ack, Some(Applied { version, values }))
    }

    fn failed(&self, version: u64, error: String) -> Ack {
        tracing::error!(device = %self.device, "{error}");
        Ack {
            version: Some(version),
            error: Some(error),
            ..Ack::default()
        }
    }

    async fn action(&self, name: &str, payload: &[u8]) -> ActionResponse {
        let device = &self.device;
        let Some(route) = self.directory.by_device(device) else {
            return ActionResponse {
                id: id_of(payload),
                result: None,
                error: Some(format!(
                    "no app on gateway {} speaks for device {device}",
                    self.gateway
                )),
            };
        };
        let (id, argument) = match check_action(&route.model, name, payload) {
            Ok(checked) => checked,
            Err((id, error)) => {
                tracing::warn!(device = %device, action = name, "refused an action request: {error}");
                return ActionResponse {
                    id,
                    result: None,
                    error: Some(error),
                };
            }
        };
        let outcome = route
            .handle
            .action(
                device.clone(),
                name.to_string(),
                argument,
                self.answer_within,
            )
            .await;
        action_response(device, name, id, outcome)
    }
}

#[cfg(test)]
mod tests {
    //! The worker against a real SQLite database and a stand-in for the
    //! app (its event queue, answered by the test). Time is tokio's, paused:
    //! an app that never answers times out at once, not after 30 s.

    use super::*;
    use crate::app::{AppError, AppEvent, AppHandle, Entry};
    use crate::bindings::Value;
    use serde_json::json;

    struct Setup {
        _dir: tempfile::TempDir,
        worker: Worker,
        db: Database,
        conn: rusqlite::Connection,
        app: mpsc::Receiver<AppEvent>,
    }

    fn setup() -> Setup {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Database::new(dir.path().join("gateway.db"), None);
        let conn = db.open().expect("open");
        crate::store::migrate(&conn, &[]).expect("migrate");
        crate::store::claim_device(&conn, "thermostat", "thermostat").expect("claim");
        let model = DeviceModel::parse(include_str!(
            "../../../examples/thermostat/thermostat.model.json"
        ))
        .expect("model");
        let directory = Directory::default();
        let (handle, app) = AppHandle::stand_in("thermostat");
        directory.insert(Entry {
            handle,
            device: "thermostat".into(),
            model: Arc::new(model),
        });
        let (replies, _) = mpsc::channel(8);
        let worker = Worker {
            gateway: "gw".into(),
            device: "thermostat".into(),
            directory,
            replies,
            pool: ConnectionPool::new(db.clone()),
            outbox_signal: Arc::new(Notify::new()),
            answer_within: APP_TIMEOUT,
            pending: Arc::default(),
        };
        Setup {
            _dir: dir,
            worker,
            db,
            conn,
            app,
        }
    }

    /// Answer every desired change with `answer`, counting them.
    fn app_answers_desired(
        mut app: mpsc::Receiver<AppEvent>,
        answer: Result<(), String>,
    ) -> tokio::task::JoinHandle<usize> {
        tokio::spawn(async move {
            let mut seen = 0;
            while let Some(event) = app.recv().await {
                if let AppEvent::Desired { reply, .. } = event {
                    seen += 1;
                    let _ = reply.send(answer.clone().map_err(AppError::Refused));
                }
            }
            seen
        })
    }

    fn desired(version: u64, setpoint: f64) -> Vec<u8> {
        json!({"version": version, "attributes": {"setpoint": setpoint}})
            .to_string()
            .into_bytes()
    }

    #[tokio::test]
    async fn a_desired_change_is_applied_once_and_an_older_one_is_stale() {
        let Setup {
            _dir,
            worker,
            conn,
            app,
            db: _,
        } = setup();
        let answering = app_answers_desired(app, Ok(()));

        let (ack, _) = worker.desired(&desired(5, 23.5)).await;
        assert_eq!(ack.accepted, vec!["setpoint".to_string()]);
        assert!(ack.rejected.is_empty() && ack.error.is_none(), "{ack:?}");
        assert_eq!(
            crate::store::desired_version(&conn, "thermostat").unwrap(),
            5
        );

        // The same version again: not applied twice.
        let (again, _) = worker.desired(&desired(5, 23.5)).await;
        assert!(again.duplicate, "{again:?}");
        // An older version: refused as stale, without asking the app.
        let (stale, _) = worker.desired(&desired(4, 22.0)).await;
        assert!(stale.rejected["setpoint"].starts_with("stale"), "{stale:?}");

        drop(worker);
        assert_eq!(answering.await.unwrap(), 1, "the app saw one change");
    }

    #[tokio::test]
    async fn values_the_model_refuses_never_reach_the_app() {
        let Setup {
            _dir,
            worker,
            conn,
            app,
            db: _,
        } = setup();
        let answering = app_answers_desired(app, Ok(()));
        // 99 is outside the setpoint's range; the version is still recorded.
        let (ack, _) = worker.desired(&desired(7, 99.0)).await;
        assert!(ack.accepted.is_empty(), "{ack:?}");
        assert!(ack.rejected.contains_key("setpoint"), "{ack:?}");
        assert_eq!(
            crate::store::desired_version(&conn, "thermostat").unwrap(),
            7
        );
        drop(worker);
        assert_eq!(answering.await.unwrap(), 0);
    }

    #[tokio::test]
    async fn what_the_app_refuses_is_rejected_with_its_reason() {
        let Setup {
            _dir,
            worker,
            conn: _,
            app,
            db: _,
        } = setup();
        let _answering = app_answers_desired(app, Err("relay stuck".into()));
        let (ack, _) = worker.desired(&desired(1, 22.0)).await;
        assert_eq!(
            ack.rejected["setpoint"], "the app refused it: relay stuck",
            "{ack:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_app_that_never_answers_times_out_on_the_driven_clock() {
        let Setup {
            _dir,
            worker,
            conn: _,
            app,
            db: _,
        } = setup();
        // The app takes events and never answers them: it begins the
        // desired change (as the actor marks it) but not the action.
        let _silent = tokio::spawn(async move {
            let mut app = app;
            let mut held = Vec::new();
            while let Some(event) = app.recv().await {
                if matches!(event, AppEvent::Desired { .. }) {
                    event.mark_started();
                }
                held.push(event);
            }
        });
        let started = tokio::time::Instant::now();
        let (ack, _) = worker.desired(&desired(1, 22.0)).await;
        assert_eq!(
            ack.rejected["setpoint"],
            format!(
                "the app did not answer within {} s; it had started handling the request, which may still take effect",
                APP_TIMEOUT.as_secs()
            )
        );
        // Exactly the timeout passed, on tokio's (paused) clock.
        assert_eq!(started.elapsed(), APP_TIMEOUT);

        let response = worker.action("reset", br#"{"id": "r1"}"#).await;
        assert_eq!(response.id.as_deref(), Some("r1"));
        assert_eq!(
            response.error.as_deref(),
            Some(
                "the app did not answer within 30 s; it had not started handling the request, and will not"
            ),
            "the action times out too, and was never begun"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_desired_change_never_begun_leaves_its_version_free_to_send_again() {
        let Setup {
            _dir,
            worker,
            conn,
            app,
            db: _,
        } = setup();
        // The app holds events without beginning them.
        let _silent = tokio::spawn(async move {
            let mut app = app;
            let mut held = Vec::new();
            while let Some(event) = app.recv().await {
                held.push(event);
            }
        });
        let before = crate::store::desired_version(&conn, "thermostat").expect("version");
        let (ack, _) = worker.desired(&desired(7, 22.0)).await;
        assert!(
            ack.rejected["setpoint"]
                .ends_with("had not started handling the request, and will not"),
            "{ack:?}"
        );
        assert_eq!(
            crate::store::desired_version(&conn, "thermostat").expect("version"),
            before,
            "version 7 is not recorded"
        );
    }

    #[tokio::test]
    async fn a_desired_change_is_recorded_with_its_ack_or_not_at_all() {
        let setup = setup();
        let _answering = app_answers_desired(setup.app, Ok(()));
        let (worker, conn) = (&setup.worker, &setup.conn);
        let acks = |conn: &rusqlite::Connection| -> Vec<Ack> {
            let mut stmt = conn
                .prepare("SELECT payload FROM outbox WHERE kind = 'ack' AND device = 'thermostat' ORDER BY seq")
                .expect("select");
            stmt.query_map([], |r| r.get::<_, Vec<u8>>(0))
                .expect("query")
                .map(|p| serde_json::from_slice(&p.expect("row")).expect("an ack"))
                .collect()
        };

        let (ack, unsent) = worker.desired(&desired(5, 23.5)).await;
        assert!(unsent.is_none(), "the outbox kept the ack");
        assert_eq!(ack.accepted, vec!["setpoint".to_string()]);
        let kept = acks(conn);
        assert_eq!(kept.len(), 1, "{kept:?}");
        assert_eq!(
            (kept[0].version, &kept[0].accepted),
            (Some(5), &ack.accepted)
        );

        // An outbox that refuses acks: the change is not recorded without
        // one, and the error ack goes out at once.
        conn.execute_batch(
            "CREATE TRIGGER no_acks BEFORE INSERT ON outbox WHEN NEW.kind = 'ack'
             BEGIN SELECT RAISE(ABORT, 'the disk is full'); END;",
        )
        .expect("trigger");
        let (ack, unsent) = worker.desired(&desired(6, 19.0)).await;
        let error = ack.error.clone().unwrap_or_default();
        assert!(
            error.starts_with("the gateway could not store the change")
                && error.contains("the disk is full"),
            "{ack:?}"
        );
        let unsent = unsent.expect("an ack the outbox cannot keep is sent at once");
        assert_eq!(unsent.topic, topics::topic("gw", "thermostat", "twin/ack"));
        let sent: Ack = serde_json::from_slice(&unsent.payload).expect("an ack");
        assert_eq!((sent.version, sent.error), (Some(6), ack.error));
        assert_eq!(
            crate::store::desired_version(conn, "thermostat").expect("version"),
            5,
            "version 6 is not recorded without its ack"
        );
        let setpoint: String = conn
            .query_row(
                "SELECT desired FROM twin WHERE device = 'thermostat' AND name = 'setpoint'",
                [],
                |r| r.get(0),
            )
            .expect("twin");
        assert_eq!(setpoint, "23.5");
        assert_eq!(acks(conn).len(), 1);
    }

    #[tokio::test]
    async fn actions_are_checked_then_answered_with_the_apps_result() {
        let Setup {
            _dir, worker, app, ..
        } = setup();
        let _answering = tokio::spawn(async move {
            let mut app = app;
            while let Some(event) = app.recv().await {
                if let AppEvent::Action { name, reply, .. } = event {
                    let _ = reply.send(Ok(Some(Value::Text(format!("did {name}")))));
                }
            }
        });
        let response = worker.action("reset", br#"{"id": "a1"}"#).await;
        assert_eq!(response.result, Some(json!("did reset")), "{response:?}");
        let unknown = worker.action("explode", br#"{"id": "a2"}"#).await;
        assert_eq!(unknown.id.as_deref(), Some("a2"));
        assert!(unknown.error.is_some() && unknown.result.is_none());
        let unreadable = worker.action("reset", b"not json").await;
        assert!(unreadable.id.is_none() && unreadable.error.is_some());
    }

    #[tokio::test]
    async fn a_worker_that_stopped_is_replaced_not_left_as_a_queue_nobody_drains() {
        let Setup {
            _dir,
            worker,
            db,
            mut app,
            ..
        } = setup();
        let (replies, mut replied) = mpsc::channel(8);
        let metrics = Arc::new(crate::metrics::LinkMetrics::default());
        let mut downlink = Downlink::new(
            "gw".into(),
            worker.directory.clone(),
            replies,
            db,
            Arc::new(Notify::new()),
            CancellationToken::new(),
            TaskTracker::new(),
        )
        .counting_refusals_in(metrics.clone());
        // The device's worker ended (it could not open the database, say).
        let (stopped, gone) = mpsc::channel(1);
        drop(gone);
        downlink.workers.insert(
            "thermostat".into(),
            DeviceWorker {
                queue: stopped,
                pending: Arc::default(),
                last_message: Instant::now(),
            },
        );

        let refused = downlink.dispatch("wg/v1/gw/thermostat/action/reset/req", br#"{"id": "r1"}"#);
        assert!(refused.is_none(), "taken by a new worker");
        match app.recv().await.expect("the app is asked") {
            AppEvent::Action { name, reply, .. } => {
                assert_eq!(name, "reset");
                let _ = reply.send(Ok(None));
            }
            _ => panic!("expected the action"),
        }
        let answer = replied.recv().await.expect("an answer");
        assert_eq!(answer.topic, "wg/v1/gw/thermostat/action/reset/res");
        let answer: ActionResponse = serde_json::from_slice(&answer.payload).expect("json");
        assert_eq!((answer.id.as_deref(), answer.error), (Some("r1"), None));
        assert_eq!(
            metrics
                .downlink_refused
                .load(std::sync::atomic::Ordering::Relaxed),
            0
        );

        // Oversized: refused with an answer, and counted.
        let refused = downlink
            .dispatch(
                "wg/v1/gw/thermostat/action/reset/req",
                &vec![b' '; MAX_DOWNLINK_BYTES + 1],
            )
            .expect("a refusal");
        let refused: ActionResponse = serde_json::from_slice(&refused.payload).expect("json");
        assert!(refused.error.expect("error").contains("over the limit"));
        assert_eq!(
            metrics
                .downlink_refused
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
    }

    /// `setup()`'s gateway with `n` more devices, `t0` to `t{n-1}`, each
    /// with a stand-in app, and a downlink over them all: the apps, where
    /// the answers go, and what the workers signal once an ack is kept.
    fn devices(
        n: usize,
    ) -> (
        Setup,
        Downlink,
        Vec<mpsc::Receiver<AppEvent>>,
        mpsc::Receiver<Reply>,
        Arc<Notify>,
    ) {
        let setup = setup();
        let directory = setup.worker.directory.clone();
        let model = directory.by_device("thermostat").expect("route").model;
        let mut apps = Vec::new();
        for i in 0..n {
            let device = format!("t{i}");
            crate::store::claim_device(&setup.conn, &device, &device).expect("claim");
            let (handle, app) = AppHandle::stand_in(&device);
            directory.insert(Entry {
                handle,
                device: device.clone(),
                model: model.clone(),
            });
            apps.push(app);
        }
        let (replies, replied) = mpsc::channel(8);
        let acked = Arc::new(Notify::new());
        let downlink = Downlink::new(
            "gw".into(),
            directory,
            replies,
            setup.db.clone(),
            acked.clone(),
            CancellationToken::new(),
            TaskTracker::new(),
        )
        // Longer than any test advances the clock: no answer times out.
        .answering_within(Duration::from_secs(3600));
        (setup, downlink, apps, replied, acked)
    }

    /// Answer the action the app `app` is asked next.
    async fn answer_action(app: &mut mpsc::Receiver<AppEvent>) {
        match app.recv().await.expect("the app is asked") {
            AppEvent::Action { reply, .. } => {
                let _ = reply.send(Ok(None));
            }
            _ => panic!("expected an action"),
        }
    }

    #[tokio::test]
    async fn the_workers_of_many_devices_share_a_few_connections() {
        let devices = 20;
        let (setup, mut downlink, mut apps, mut replied, acked) = self::devices(devices);
        // An action needs no connection at all.
        for (i, app) in apps.iter_mut().enumerate() {
            let topic = format!("wg/v1/gw/t{i}/action/reset/req");
            assert!(downlink.dispatch(&topic, br#"{"id": "r"}"#).is_none());
            answer_action(app).await;
            let answer = replied.recv().await.expect("an answer");
            assert_eq!(answer.topic, format!("wg/v1/gw/t{i}/action/reset/res"));
        }
        assert_eq!(downlink.workers.len(), devices, "a worker per device");
        assert_eq!(downlink.pool.opened(), 0, "and no connection for actions");
        // A desired change reads and writes the twin and keeps its ack; one
        // device after another, the devices' workers take turns on one.
        for (i, app) in apps.iter_mut().enumerate() {
            let topic = format!("wg/v1/gw/t{i}/twin/desired");
            assert!(downlink.dispatch(&topic, &desired(1, 21.0)).is_none());
            match app.recv().await.expect("the app is asked") {
                AppEvent::Desired { reply, .. } => {
                    let _ = reply.send(Ok(()));
                }
                _ => panic!("expected the desired change"),
            }
            acked.notified().await;
            assert_eq!(
                crate::store::desired_version(&setup.conn, &format!("t{i}")).expect("version"),
                1
            );
        }
        assert_eq!(
            downlink.pool.opened(),
            1,
            "one connection for the {devices} workers, not one each"
        );
        assert_eq!(downlink.pool.idle(), 1, "and none is held between messages");
    }

    #[tokio::test(start_paused = true)]
    async fn idle_workers_are_retired_and_the_next_message_starts_one_again() {
        let (_setup, mut downlink, mut apps, mut replied, _) = devices(5);
        let action = |downlink: &mut Downlink, device: usize, id: &str| {
            let topic = format!("wg/v1/gw/t{device}/action/reset/req");
            let payload = format!(r#"{{"id": "{id}"}}"#);
            assert!(downlink.dispatch(&topic, payload.as_bytes()).is_none());
        };
        for (i, app) in apps.iter_mut().enumerate() {
            action(&mut downlink, i, "first");
            answer_action(app).await;
            replied.recv().await.expect("an answer");
        }
        // t1's app is still working on this one when the others go idle.
        action(&mut downlink, 1, "slow");
        let slow = match apps[1].recv().await.expect("asked") {
            AppEvent::Action { reply, .. } => reply,
            _ => panic!("expected an action"),
        };
        tokio::time::advance(WORKER_IDLE + Duration::from_secs(1)).await;

        action(&mut downlink, 0, "again");
        let mut kept: Vec<&String> = downlink.workers.keys().collect();
        kept.sort();
        assert_eq!(
            kept,
            ["t0", "t1"],
            "the idle ones are retired; t0's next message started one, and t1's waits on its app"
        );
        answer_action(&mut apps[0]).await;
        let answer = replied.recv().await.expect("an answer");
        let answer: ActionResponse = serde_json::from_slice(&answer.payload).expect("json");
        assert_eq!(answer.id.as_deref(), Some("again"));
        let _ = slow.send(Ok(None));
        let answer = replied.recv().await.expect("the slow one's answer");
        let answer: ActionResponse = serde_json::from_slice(&answer.payload).expect("json");
        assert_eq!((answer.id.as_deref(), answer.error), (Some("slow"), None));
        // The retired tasks end: only t0's and t1's still run.
        for _ in 0..100 {
            if downlink.tasks.len() <= 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(downlink.tasks.len(), 2);
    }

    #[tokio::test]
    async fn desired_versions_outside_1_to_2_pow_63_and_floods_of_attributes_are_refused() {
        let Setup {
            _dir,
            worker,
            conn: _,
            app,
            db: _,
        } = setup();
        let answering = app_answers_desired(app, Ok(()));
        for version in [0u64, 1 << 63, u64::MAX] {
            let (ack, _) = worker
                .desired(
                    &json!({"version": version, "attributes": {"setpoint": 22.0}})
                        .to_string()
                        .into_bytes(),
                )
                .await;
            assert_eq!(
                ack.error,
                Some(format!("version {version} is not between 1 and 2^63 - 1")),
                "{ack:?}"
            );
            assert!(!ack.duplicate);
        }
        let many: serde_json::Map<String, serde_json::Value> =
            (0..300).map(|i| (format!("a{i}"), json!(1))).collect();
        let (ack, _) = worker
            .desired(
                &json!({"version": 3, "attributes": many})
                    .to_string()
                    .into_bytes(),
            )
            .await;
        assert!(
            ack.error
                .expect("refused")
                .contains("over the limit of 256")
        );
        // Nothing was applied, so version 1 is still new.
        let (ack, _) = worker.desired(&desired(1, 22.0)).await;
        assert_eq!(ack.accepted, vec!["setpoint".to_string()], "{ack:?}");
        drop(worker);
        assert_eq!(answering.await.unwrap(), 1);
    }

    /// A downlink that sends an idle device's actions straight to its app
    /// (as the link's does), and the channel its workers answer on.
    fn direct_downlink(setup: &Setup) -> (Downlink, mpsc::Receiver<Reply>) {
        let (replies, replied) = mpsc::channel(8);
        let downlink = Downlink::new(
            "gw".into(),
            setup.worker.directory.clone(),
            replies,
            setup.db.clone(),
            Arc::new(Notify::new()),
            CancellationToken::new(),
            TaskTracker::new(),
        )
        .answering_directly();
        (downlink, replied)
    }

    fn action_answer(reply: &Reply) -> ActionResponse {
        serde_json::from_slice(&reply.payload).expect("an action response")
    }

    #[tokio::test]
    async fn an_idle_devices_action_goes_straight_to_its_app_and_back_without_a_worker() {
        let mut setup = setup();
        let (mut downlink, mut replied) = direct_downlink(&setup);
        assert!(!downlink.answers_pending());

        let refused = downlink.dispatch("wg/v1/gw/thermostat/action/reset/req", br#"{"id": "d1"}"#);
        assert!(refused.is_none());
        assert!(downlink.answers_pending());
        assert!(downlink.workers.is_empty(), "no worker was started for it");
        match setup.app.try_recv().expect("in the app's queue at once") {
            AppEvent::Action { name, reply, .. } => {
                assert_eq!(name, "reset");
                let _ = reply.send(Ok(Some(Value::Text("done".into()))));
            }
            _ => panic!("expected the action"),
        }
        let answer = downlink.next_answer().await;
        assert_eq!(answer.topic, "wg/v1/gw/thermostat/action/reset/res");
        let answer = action_answer(&answer);
        assert_eq!(
            (answer.id.as_deref(), answer.result, answer.error),
            (Some("d1"), Some(json!("done")), None)
        );
        assert!(!downlink.answers_pending());
        assert!(replied.try_recv().is_err(), "nothing came the worker's way");
    }

    #[tokio::test]
    async fn an_action_behind_a_waiting_message_of_its_device_keeps_its_turn() {
        let mut setup = setup();
        let (mut downlink, mut replied) = direct_downlink(&setup);
        // A desired change first: its worker reads the twin before it asks
        // the app, so an action sent straight on would overtake it.
        let refused = downlink.dispatch("wg/v1/gw/thermostat/twin/desired", &desired(3, 22.0));
        assert!(refused.is_none());
        let refused = downlink.dispatch("wg/v1/gw/thermostat/action/reset/req", br#"{"id": "d2"}"#);
        assert!(refused.is_none());
        assert!(
            !downlink.answers_pending(),
            "it went to the device's worker"
        );

        match setup.app.recv().await.expect("the change") {
            AppEvent::Desired { reply, .. } => {
                let _ = reply.send(Ok(()));
            }
            _ => panic!("the desired change comes first"),
        }
        match setup.app.recv().await.expect("the action") {
            AppEvent::Action { reply, .. } => {
                let _ = reply.send(Ok(None));
            }
            _ => panic!("then the action"),
        }
        let answer = replied.recv().await.expect("the worker answers it");
        assert_eq!(action_answer(&answer).id.as_deref(), Some("d2"));
    }

    #[tokio::test]
    async fn an_action_the_model_refuses_is_answered_by_the_worker_without_the_app() {
        let mut setup = setup();
        let (mut downlink, mut replied) = direct_downlink(&setup);
        let refused =
            downlink.dispatch("wg/v1/gw/thermostat/action/explode/req", br#"{"id": "d3"}"#);
        assert!(refused.is_none() && !downlink.answers_pending());
        let answer = action_answer(&replied.recv().await.expect("answered"));
        assert_eq!(answer.id.as_deref(), Some("d3"));
        assert!(
            answer.error.is_some() && answer.result.is_none(),
            "{answer:?}"
        );
        assert!(setup.app.try_recv().is_err(), "the app was not asked");
    }

    #[tokio::test(start_paused = true)]
    async fn an_action_sent_straight_on_times_out_like_any_other() {
        let setup = setup();
        let (mut downlink, _replied) = direct_downlink(&setup);
        let refused = downlink.dispatch("wg/v1/gw/thermostat/action/reset/req", br#"{"id": "d4"}"#);
        assert!(refused.is_none() && downlink.answers_pending());
        // `setup.app` holds the event and never answers it.
        let started = tokio::time::Instant::now();
        let answer = action_answer(&downlink.next_answer().await);
        assert_eq!(started.elapsed(), APP_TIMEOUT);
        assert_eq!(
            answer.error.as_deref(),
            Some(
                "the app did not answer within 30 s; it had not started handling the request, and will not"
            )
        );
        drop(setup);
    }

    #[tokio::test]
    async fn an_action_for_an_app_whose_queue_is_full_waits_in_the_devices_worker() {
        let mut setup = setup();
        let (mut downlink, mut replied) = direct_downlink(&setup);
        for i in 0..crate::app::EVENT_QUEUE {
            let request = json!({"id": format!("q{i}")}).to_string();
            let refused =
                downlink.dispatch("wg/v1/gw/thermostat/action/reset/req", request.as_bytes());
            assert!(refused.is_none());
        }
        assert!(downlink.workers.is_empty(), "each went straight to the app");
        // The app's queue is full: the next waits for room in a worker,
        // and is answered once the app has caught up.
        let refused =
            downlink.dispatch("wg/v1/gw/thermostat/action/reset/req", br#"{"id": "last"}"#);
        assert!(refused.is_none());
        assert!(downlink.workers.contains_key("thermostat"));
        let mut asked = 0;
        while asked <= crate::app::EVENT_QUEUE {
            let Some(AppEvent::Action { reply, .. }) = setup.app.recv().await else {
                panic!("expected actions");
            };
            asked += 1;
            let _ = reply.send(Ok(None));
        }
        let answer = replied.recv().await.expect("the worker's answer");
        assert_eq!(action_answer(&answer).id.as_deref(), Some("last"));
        for _ in 0..crate::app::EVENT_QUEUE {
            let answer = action_answer(&downlink.next_answer().await);
            assert!(answer.error.is_none(), "{answer:?}");
        }
        assert!(!downlink.answers_pending());
    }
}

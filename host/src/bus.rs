//! The `wasmgate:device/bus` capability: the local MQTT broker on the
//! gateway's own network (`[bus]`), where devices and local software
//! publish. It is not the cloud link.
//!
//! - **Gateway state** ([`Bus`]): one MQTT client for the whole gateway
//!   (one task owns its event loop), the routes from topic filters to app
//!   instances, `[allow]`, and each app's counters.
//! - **Per-instance state** ([`BusCtx`]): the app's grants, its request
//!   rate, and the bounded queue its messages wait in for the actor, which
//!   hands them to the guest's `on-message` export one at a time.
//!
//! A subscribe or publish is checked against the app's grants and `[allow]`
//! before anything is sent, and refused with `denied` naming the topic.
//! The link never waits for an app: a message for an app whose queue is
//! full (it is slow, or never takes its messages) is dropped for that app
//! alone and counted. An instance's routes end with it, so a stopped,
//! crashed or replaced instance receives nothing more; the broker's
//! subscription goes when no instance routes its filter any more.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use backon::BackoffBuilder as _;
use rumqttc::{AsyncClient, Event, EventLoop, Packet, QoS};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use wasmtime::component::{HasData, Linker};

use crate::bindings::IoError;
use crate::bindings::wasmgate::device::bus::{self as generated, Host};
use crate::capability::{AppSetup, Capability, Figure, HasCtx, PerApp, ReportScope};
use crate::config::BusConfig;
use crate::grants::{BusAccess, Grants};
use crate::io_clock::IoCounters;
use crate::rate::SharedLimit;

/// Filters one instance may subscribe to at once.
const MAX_SUBSCRIPTIONS: usize = 64;

/// Requests the client queues for its event loop.
const CLIENT_QUEUE: usize = 256;

/// A message from the bus, on its way to an app's `on-message`.
#[derive(Debug)]
pub struct Message {
    pub topic: String,
    pub payload: Vec<u8>,
}

/// The bus unit's gateway state.
pub struct Bus {
    link: Option<Arc<Link>>,
    /// Taken by [`Bus::run`], the one task that polls it.
    eventloop: Mutex<Option<(EventLoop, BusConfig)>>,
    allow: Arc<Grants>,
    counters: PerApp<Counters>,
    next_instance: AtomicU64,
}

/// The gateway's client on the bus, and who gets what comes in.
struct Link {
    client: AsyncClient,
    connected: AtomicBool,
    routes: Mutex<Vec<Route>>,
    max_message_bytes: usize,
}

/// One instance's subscription to one filter.
struct Route {
    instance: u64,
    filter: String,
    inbox: mpsc::Sender<Message>,
    counters: Arc<Counters>,
}

/// What one app's bus traffic came to, since the gateway started.
#[derive(Debug, Default)]
struct Counters {
    /// Subscribes and publishes, by outcome.
    io: IoCounters,
    received: AtomicU64,
    dropped: AtomicU64,
    published: AtomicU64,
}

impl Bus {
    /// The unit for a gateway with `config` (`None`: no `[bus]`, and every
    /// call is refused as `closed`) whose `[allow]` is `allow`.
    pub fn new(config: Option<BusConfig>, allow: Grants) -> anyhow::Result<Bus> {
        let (link, eventloop) = match config {
            None => (None, None),
            Some(config) => {
                let options = crate::mqtt::mqtt_options(&config.broker, true)?;
                let (client, mut eventloop) = AsyncClient::new(options, CLIENT_QUEUE);
                crate::mqtt::no_delay(&mut eventloop);
                let link = Link {
                    client,
                    connected: AtomicBool::new(false),
                    routes: Mutex::default(),
                    max_message_bytes: config.max_message_bytes,
                };
                (Some(Arc::new(link)), Some((eventloop, config)))
            }
        };
        Ok(Bus {
            link,
            eventloop: Mutex::new(eventloop),
            allow: Arc::new(Grants {
                bus: allow.bus,
                ..Grants::default()
            }),
            counters: PerApp::default(),
            next_instance: AtomicU64::new(1),
        })
    }

    /// Keep the gateway on the bus until `cancel`: connect, reconnect with
    /// backoff, subscribe again to every routed filter after each connect,
    /// and hand each message to the instances whose filters match it.
    /// Returns at once when the gateway has no `[bus]`.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        let taken = self
            .eventloop
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let (Some(link), Some((mut eventloop, config))) = (self.link.clone(), taken) else {
            return;
        };
        let broker = format!("{}:{}", config.broker.host, config.broker.port);
        let backoff = crate::mqtt::reconnect_backoff(config.backoff_initial, config.backoff_max);
        let mut waits = backoff.build();
        let mut failures = 0u64;
        loop {
            let event = tokio::select! {
                () = cancel.cancelled() => break,
                event = eventloop.poll() => event,
            };
            match event {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    tracing::info!(%broker, "connected to the local bus");
                    link.connected.store(true, Ordering::Relaxed);
                    link.subscribe_all();
                    waits = backoff.build();
                    failures = 0;
                }
                Ok(Event::Incoming(Packet::Publish(publish))) => {
                    link.deliver(&publish.topic, &publish.payload);
                }
                Ok(_) => {}
                Err(e) => {
                    link.connected.store(false, Ordering::Relaxed);
                    failures += 1;
                    // The first failure of an outage, then sparingly.
                    if failures.is_power_of_two() {
                        tracing::warn!(%broker, "the local bus is unreachable ({failures} attempts): {e}");
                    }
                    let wait = waits.next().unwrap_or(config.backoff_max);
                    tokio::select! {
                        () = cancel.cancelled() => break,
                        () = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }
        let _ = link.client.try_disconnect();
        link.connected.store(false, Ordering::Relaxed);
    }
}

impl Link {
    /// Route `filter` to `route`'s instance, subscribing on the broker if
    /// no instance routed it yet.
    fn add(&self, route: Route) -> Result<(), IoError> {
        let mut routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        if routes
            .iter()
            .any(|r| r.instance == route.instance && r.filter == route.filter)
        {
            return Ok(());
        }
        if routes
            .iter()
            .filter(|r| r.instance == route.instance)
            .count()
            >= MAX_SUBSCRIPTIONS
        {
            return Err(IoError::Limit(format!(
                "an app may hold {MAX_SUBSCRIPTIONS} subscriptions at once"
            )));
        }
        if !routes.iter().any(|r| r.filter == route.filter) {
            self.client
                .try_subscribe(route.filter.as_str(), QoS::AtLeastOnce)
                .map_err(|e| IoError::Closed(format!("cannot subscribe: {e}")))?;
        }
        routes.push(route);
        Ok(())
    }

    /// End `instance`'s routes (to `filter` only, if given), unsubscribing
    /// on the broker from filters no instance routes any more.
    fn remove(&self, instance: u64, filter: Option<&str>) {
        let mut routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        let mut ended = BTreeSet::new();
        routes.retain(|r| {
            let ends = r.instance == instance && filter.is_none_or(|f| f == r.filter);
            if ends {
                ended.insert(r.filter.clone());
            }
            !ends
        });
        for filter in ended {
            if !routes.iter().any(|r| r.filter == filter) {
                let _ = self.client.try_unsubscribe(filter);
            }
        }
    }

    /// After a (clean-session) connect: subscribe to every routed filter.
    fn subscribe_all(&self) {
        let routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        let filters: BTreeSet<&str> = routes.iter().map(|r| r.filter.as_str()).collect();
        for filter in filters {
            if let Err(e) = self.client.try_subscribe(filter, QoS::AtLeastOnce) {
                tracing::warn!(filter, "cannot subscribe on the local bus: {e}");
            }
        }
    }

    /// Queue `payload` for every instance with a route matching `topic`,
    /// once per instance. A full queue drops it for that instance alone.
    fn deliver(&self, topic: &str, payload: &[u8]) {
        let routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        let mut served = BTreeSet::new();
        for route in routes.iter() {
            if !rumqttc::matches(topic, &route.filter) || !served.insert(route.instance) {
                continue;
            }
            if payload.len() > self.max_message_bytes {
                route.counters.dropped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let message = Message {
                topic: topic.to_string(),
                payload: payload.to_vec(),
            };
            let counter = match route.inbox.try_send(message) {
                Ok(()) => &route.counters.received,
                Err(mpsc::error::TrySendError::Full(_)) => &route.counters.dropped,
                // The instance is gone; its routes go with its state.
                Err(mpsc::error::TrySendError::Closed(_)) => continue,
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Per-instance state of the bus interface.
pub struct BusCtx {
    app: Arc<str>,
    instance: u64,
    grants: Grants,
    allow: Arc<Grants>,
    link: Option<Arc<Link>>,
    rate: SharedLimit,
    counters: Arc<Counters>,
    inbox: mpsc::Sender<Message>,
    /// For the actor, which delivers them ([`BusCtx::take_messages`]).
    messages: Option<mpsc::Receiver<Message>>,
    /// Whether the component exports `on-message` (set by the actor after
    /// instantiation, before `init`).
    handler: bool,
}

impl BusCtx {
    /// The queue the actor takes this instance's messages from.
    pub fn take_messages(&mut self) -> Option<mpsc::Receiver<Message>> {
        self.messages.take()
    }

    /// Whether the component can be handed messages at all.
    pub fn set_handler(&mut self, exported: bool) {
        self.handler = exported;
    }

    /// The checks every call makes before anything is sent.
    fn checked(&self, topic: &str, access: BusAccess) -> Result<&Arc<Link>, IoError> {
        if !(self.grants.bus_granted(topic, access) && self.allow.bus_granted(topic, access)) {
            tracing::debug!(app = %self.app, "bus {} denied: {topic}", access.name());
            return Err(IoError::Denied(format!(
                "bus {} on {topic} is not granted to app {}",
                access.name(),
                self.app
            )));
        }
        crate::io_clock::admit_rate(&self.rate)?;
        let link = self
            .link
            .as_ref()
            .ok_or_else(|| IoError::Closed("this gateway has no [bus]".into()))?;
        Ok(link)
    }

    fn subscribe_to(&self, filter: &str) -> Result<(), IoError> {
        if !rumqttc::valid_filter(filter) {
            return Err(IoError::Invalid(format!(
                "{filter:?} is not an MQTT topic filter"
            )));
        }
        let link = self.checked(filter, BusAccess::Subscribe)?;
        if !self.handler {
            return Err(IoError::Invalid(
                "the app does not export on-message, so it cannot receive messages (build it for the bus-app world)".into(),
            ));
        }
        link.add(Route {
            instance: self.instance,
            filter: filter.to_string(),
            inbox: self.inbox.clone(),
            counters: self.counters.clone(),
        })
    }

    fn publish_on(&self, topic: &str, payload: Vec<u8>, retain: bool) -> Result<(), IoError> {
        if topic.is_empty() || !rumqttc::valid_topic(topic) {
            return Err(IoError::Invalid(format!(
                "{topic:?} is not a topic to publish on (no + or #)"
            )));
        }
        let link = self.checked(topic, BusAccess::Publish)?;
        if payload.len() > link.max_message_bytes {
            return Err(IoError::Invalid(format!(
                "{} bytes is over the bus's max_message_kib of {}",
                payload.len(),
                link.max_message_bytes >> 10
            )));
        }
        if !link.connected.load(Ordering::Relaxed) {
            return Err(IoError::Closed(
                "the local bus is not connected (the gateway reconnects by itself)".into(),
            ));
        }
        link.client
            .try_publish(topic, QoS::AtLeastOnce, retain, payload)
            .map_err(|e| IoError::Limit(format!("the bus's queue is full: {e}")))?;
        self.counters.published.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

impl Drop for BusCtx {
    fn drop(&mut self) {
        if let Some(link) = &self.link {
            link.remove(self.instance, None);
        }
    }
}

struct BusData;

impl HasData for BusData {
    type Data<'a> = &'a mut BusCtx;
}

impl Capability for Bus {
    type Ctx = BusCtx;
    const NAME: &'static str = "bus";

    fn instance(&self, app: &AppSetup<'_>) -> anyhow::Result<BusCtx> {
        let (inbox, messages) = mpsc::channel(app.config.bus_queue.max(1));
        Ok(BusCtx {
            app: app.app.clone(),
            instance: self.next_instance.fetch_add(1, Ordering::Relaxed),
            grants: Grants {
                bus: app.config.grants.bus.clone(),
                ..Grants::default()
            },
            allow: self.allow.clone(),
            link: self.link.clone(),
            rate: app.rates.device_requests(app.config.io_requests_per_s),
            counters: self.counters.get(app.app),
            inbox,
            messages: Some(messages),
            handler: false,
        })
    }

    fn report(&self, app: &ReportScope<'_>) -> Vec<Figure> {
        let counters = self.counters.get(app.app);
        let figure = Figure::counter;
        vec![
            figure(
                "calls",
                "Bus subscribes and publishes the app made.",
                &counters.io.calls,
            ),
            figure(
                "received",
                "Bus messages queued for the app's on-message.",
                &counters.received,
            ),
            figure(
                "dropped",
                "Bus messages dropped for the app: its queue was full, or the message over max_message_kib.",
                &counters.dropped,
            ),
            figure(
                "published",
                "Messages the app published on the bus.",
                &counters.published,
            ),
            figure(
                "denied",
                "Bus subscribes and publishes refused: not granted to the app.",
                &counters.io.denied,
            ),
            figure(
                "failures",
                "Bus calls that failed: no bus, or not connected.",
                &counters.io.failures,
            ),
        ]
    }

    fn add_to_linker<T: HasCtx<Bus>>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
        generated::add_to_linker::<T, BusData>(linker, T::ctx)
    }
}

impl Host for BusCtx {
    fn subscribe(&mut self, filter: String) -> wasmtime::Result<Result<(), IoError>> {
        self.counters.io.begin();
        let subscribed = self.subscribe_to(&filter);
        Ok(self.counters.io.ended(subscribed))
    }

    fn unsubscribe(&mut self, filter: String) -> wasmtime::Result<Result<(), IoError>> {
        if let Some(link) = &self.link {
            link.remove(self.instance, Some(&filter));
        }
        Ok(Ok(()))
    }

    fn publish(
        &mut self,
        topic: String,
        payload: Vec<u8>,
        retain: bool,
    ) -> wasmtime::Result<Result<(), IoError>> {
        self.counters.io.begin();
        let published = self.publish_on(&topic, payload, retain);
        Ok(self.counters.io.ended(published))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link() -> (Link, EventLoop) {
        let options = rumqttc::MqttOptions::new("t", "127.0.0.1", 1);
        let (client, eventloop) = AsyncClient::new(options, CLIENT_QUEUE);
        let link = Link {
            client,
            connected: AtomicBool::new(true),
            routes: Mutex::default(),
            max_message_bytes: 8,
        };
        (link, eventloop)
    }

    fn route(instance: u64, filter: &str, capacity: usize) -> (Route, mpsc::Receiver<Message>) {
        let (inbox, messages) = mpsc::channel(capacity);
        let route = Route {
            instance,
            filter: filter.into(),
            inbox,
            counters: Arc::default(),
        };
        (route, messages)
    }

    #[test]
    fn a_message_reaches_each_matching_instance_once_and_a_full_queue_drops_for_its_own_app_only() {
        let (link, _eventloop) = link();
        let (slow, _never_read) = route(1, "sensors/#", 1);
        let slow_counters = slow.counters.clone();
        let (fast, mut fast_messages) = route(2, "sensors/+/temp", 16);
        let (fast_again, _) = route(2, "sensors/room1/temp", 16);
        let fast_counters = fast.counters.clone();
        link.add(slow).expect("slow");
        link.add(fast).expect("fast");
        link.add(fast_again).expect("overlapping filter");
        for _ in 0..3 {
            link.deliver("sensors/room1/temp", b"21.5");
        }
        link.deliver("sensors/room1/humidity", b"40");
        link.deliver("sensors/room1/temp", b"far too long");
        assert_eq!(slow_counters.received.load(Ordering::Relaxed), 1);
        assert_eq!(slow_counters.dropped.load(Ordering::Relaxed), 4);
        assert_eq!(
            fast_counters.received.load(Ordering::Relaxed),
            3,
            "once each"
        );
        assert_eq!(
            fast_counters.dropped.load(Ordering::Relaxed),
            1,
            "oversized"
        );
        let first = fast_messages.try_recv().expect("delivered");
        assert_eq!(
            (first.topic.as_str(), first.payload.as_slice()),
            ("sensors/room1/temp", &b"21.5"[..])
        );
        // An instance's routes end with it.
        link.remove(2, None);
        link.deliver("sensors/room1/temp", b"22");
        assert_eq!(fast_counters.received.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn an_instance_holds_a_bounded_number_of_subscriptions() {
        let (link, _eventloop) = link();
        for i in 0..MAX_SUBSCRIPTIONS {
            link.add(route(1, &format!("t/{i}"), 1).0).expect("room");
        }
        assert!(matches!(
            link.add(route(1, "t/more", 1).0),
            Err(IoError::Limit(_))
        ));
        link.add(route(2, "t/more", 1).0).expect("another instance");
    }
}

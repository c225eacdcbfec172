//! The `wg/v1` link's MQTT connection, in either protocol version:
//! rumqttc's 3.1.1 client or its MQTT 5 client (`[cloud] mqtt_version`).
//!
//! The link is written once against this: the few client calls it makes,
//! and the events it acts on, in one shape for both versions. What MQTT 5
//! adds travels in [`Properties`] (on a publish) and [`Received`] (on a
//! message that came down); under 3.1.1 those are simply absent.

use bytes::Bytes;
use rumqttc::v5;
use rumqttc::{Outgoing, QoS};
use std::time::Duration;

use crate::config::BrokerSettings;

/// What an MQTT 5 publish carries besides its topic and payload.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Properties {
    /// Seconds after which the broker drops the message undelivered.
    pub message_expiry: Option<u32>,
    /// The requester's correlation data, on an answer.
    pub correlation: Option<Vec<u8>>,
}

/// A message that came down.
#[derive(Debug, Clone)]
pub struct Received {
    pub topic: String,
    pub payload: Bytes,
    /// MQTT 5: where the requester wants its answer.
    pub response_topic: Option<String>,
    /// MQTT 5: what the requester wants echoed with its answer.
    pub correlation: Option<Vec<u8>>,
}

/// What the link acts on, from either version's event loop.
#[derive(Debug)]
pub enum LinkEvent {
    Connected,
    /// A SUBACK; `true` if the broker refused a subscription.
    Subscribed(bool),
    /// A PUBACK, and (MQTT 5) the reason the broker gave for not taking the
    /// message, if it did not.
    Acknowledged(u16, Option<String>),
    Message(Received),
    /// rumqttc sent the next submitted publish as this packet id.
    Sent(u16),
    Disconnecting,
    Other,
}

/// The content type of every `wg/v1` payload (MQTT 5).
pub const CONTENT_TYPE: &str = "application/json";

/// The client half.
#[derive(Clone)]
pub enum Client {
    V4(rumqttc::AsyncClient),
    V5(v5::AsyncClient),
}

/// The event loop half.
pub enum Events {
    V4(Box<rumqttc::EventLoop>),
    V5(Box<v5::EventLoop>),
}

/// A broker's options in the version the link speaks.
#[derive(Clone)]
pub enum Options {
    V4(Box<rumqttc::MqttOptions>),
    V5(Box<v5::MqttOptions>),
}

/// A client error in words.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ClientError(String);

/// A connection error, and whether the broker refused the connection (its
/// reason) or it failed on the way.
#[derive(Debug)]
pub enum ConnectionError {
    V4(rumqttc::ConnectionError),
    V5(v5::ConnectionError),
}

impl Options {
    /// The options for `settings`: 3.1.1 with a persistent session, or
    /// MQTT 5 without a clean start and with a session that the broker
    /// keeps for `session_expiry` after a disconnect.
    pub fn new(
        settings: &BrokerSettings,
        version: crate::config::MqttVersion,
        session_expiry: Duration,
        max_inflight: u16,
        will: (&str, Vec<u8>),
    ) -> anyhow::Result<Options> {
        Ok(match version {
            crate::config::MqttVersion::V311 => {
                let mut options = crate::mqtt::mqtt_options(settings, false)?;
                options
                    .set_inflight(max_inflight)
                    .set_last_will(rumqttc::LastWill::new(
                        will.0,
                        will.1,
                        QoS::AtLeastOnce,
                        true,
                    ));
                Options::V4(Box::new(options))
            }
            crate::config::MqttVersion::V5 => {
                let mut options = crate::mqtt::mqtt5_options(settings, session_expiry)?;
                let properties = v5::mqttbytes::v5::LastWillProperties {
                    delay_interval: None,
                    payload_format_indicator: Some(1),
                    message_expiry_interval: None,
                    content_type: Some(CONTENT_TYPE.into()),
                    response_topic: None,
                    correlation_data: None,
                    user_properties: Vec::new(),
                };
                options
                    .set_outgoing_inflight_upper_limit(max_inflight)
                    .set_last_will(v5::mqttbytes::v5::LastWill::new(
                        will.0,
                        will.1,
                        v5::mqttbytes::QoS::AtLeastOnce,
                        true,
                        Some(properties),
                    ));
                Options::V5(Box::new(options))
            }
        })
    }
}

/// A client and its event loop for `options`; `cap` requests may wait.
pub fn connect(options: Options, cap: usize) -> (Client, Events) {
    match options {
        Options::V4(options) => {
            let (client, mut events) = rumqttc::AsyncClient::new(*options, cap);
            crate::mqtt::no_delay(&mut events);
            (Client::V4(client), Events::V4(Box::new(events)))
        }
        Options::V5(options) => {
            let (client, events) = v5::AsyncClient::new(*options, cap);
            (Client::V5(client), Events::V5(Box::new(events)))
        }
    }
}

fn qos5() -> v5::mqttbytes::QoS {
    v5::mqttbytes::QoS::AtLeastOnce
}

impl Client {
    /// Publish at QoS 1 without waiting. Under MQTT 5 every payload says it
    /// is JSON text, and carries `properties`.
    pub fn try_publish(
        &self,
        topic: &str,
        retain: bool,
        payload: Vec<u8>,
        properties: &Properties,
    ) -> Result<(), ClientError> {
        match self {
            Client::V4(c) => c
                .try_publish(topic, QoS::AtLeastOnce, retain, payload)
                .map_err(|e| ClientError(e.to_string())),
            Client::V5(c) => {
                let properties = v5::mqttbytes::v5::PublishProperties {
                    payload_format_indicator: Some(1),
                    message_expiry_interval: properties.message_expiry,
                    correlation_data: properties.correlation.clone().map(Bytes::from),
                    content_type: Some(CONTENT_TYPE.into()),
                    ..Default::default()
                };
                c.try_publish_with_properties(topic, qos5(), retain, payload, properties)
                    .map_err(|e| ClientError(e.to_string()))
            }
        }
    }

    pub fn try_subscribe(&self, filter: &str) -> Result<(), ClientError> {
        match self {
            Client::V4(c) => c
                .try_subscribe(filter, QoS::AtLeastOnce)
                .map_err(|e| ClientError(e.to_string())),
            Client::V5(c) => c
                .try_subscribe(filter, qos5())
                .map_err(|e| ClientError(e.to_string())),
        }
    }

    pub fn try_disconnect(&self) -> Result<(), ClientError> {
        match self {
            Client::V4(c) => c.try_disconnect().map_err(|e| ClientError(e.to_string())),
            Client::V5(c) => c.try_disconnect().map_err(|e| ClientError(e.to_string())),
        }
    }
}

impl Events {
    /// The next event. Not cancel-safe in the middle of a connection
    /// attempt: keep the future pinned until it completes.
    pub async fn poll(&mut self) -> Result<LinkEvent, ConnectionError> {
        match self {
            Events::V4(events) => {
                use rumqttc::{Event, Packet, SubscribeReasonCode};
                Ok(match events.poll().await.map_err(ConnectionError::V4)? {
                    Event::Incoming(Packet::ConnAck(_)) => LinkEvent::Connected,
                    Event::Incoming(Packet::SubAck(ack)) => LinkEvent::Subscribed(
                        ack.return_codes
                            .iter()
                            .any(|c| matches!(c, SubscribeReasonCode::Failure)),
                    ),
                    Event::Incoming(Packet::PubAck(ack)) => LinkEvent::Acknowledged(ack.pkid, None),
                    Event::Incoming(Packet::Publish(p)) => LinkEvent::Message(Received {
                        topic: p.topic,
                        payload: p.payload,
                        response_topic: None,
                        correlation: None,
                    }),
                    Event::Outgoing(Outgoing::Publish(pkid)) => LinkEvent::Sent(pkid),
                    Event::Outgoing(Outgoing::Disconnect) => LinkEvent::Disconnecting,
                    _ => LinkEvent::Other,
                })
            }
            Events::V5(events) => {
                use v5::Event;
                use v5::mqttbytes::v5::{Packet, PubAckReason, SubscribeReasonCode};
                Ok(match events.poll().await.map_err(ConnectionError::V5)? {
                    Event::Incoming(Packet::ConnAck(_)) => LinkEvent::Connected,
                    Event::Incoming(Packet::SubAck(ack)) => LinkEvent::Subscribed(
                        ack.return_codes
                            .iter()
                            .any(|c| !matches!(c, SubscribeReasonCode::Success(_))),
                    ),
                    Event::Incoming(Packet::PubAck(ack)) => {
                        let refused = !matches!(
                            ack.reason,
                            PubAckReason::Success | PubAckReason::NoMatchingSubscribers
                        );
                        LinkEvent::Acknowledged(
                            ack.pkid,
                            refused.then(|| format!("{:?}", ack.reason)),
                        )
                    }
                    Event::Incoming(Packet::Publish(p)) => {
                        let (response_topic, correlation) = match p.properties {
                            Some(props) => (
                                props.response_topic,
                                props.correlation_data.map(|c| c.to_vec()),
                            ),
                            None => (None, None),
                        };
                        LinkEvent::Message(Received {
                            topic: String::from_utf8_lossy(&p.topic).into_owned(),
                            payload: p.payload,
                            response_topic,
                            correlation,
                        })
                    }
                    Event::Outgoing(Outgoing::Publish(pkid)) => LinkEvent::Sent(pkid),
                    Event::Outgoing(Outgoing::Disconnect) => LinkEvent::Disconnecting,
                    _ => LinkEvent::Other,
                })
            }
        }
    }

    /// Forget what rumqttc would publish again after a reconnect: the outbox
    /// does that instead.
    pub fn forget_pending(&mut self) {
        match self {
            Events::V4(events) => events.pending.clear(),
            Events::V5(events) => events.pending.clear(),
        }
    }

    /// Connect to another broker next time (a failover).
    pub fn use_options(&mut self, options: &Options) {
        match (self, options) {
            (Events::V4(events), Options::V4(options)) => events.mqtt_options = (**options).clone(),
            (Events::V5(events), Options::V5(options)) => events.options = (**options).clone(),
            // Every broker of one link speaks the same version.
            _ => unreachable!("brokers of one link in two MQTT versions"),
        }
    }
}

impl ConnectionError {
    /// The error in words an operator can act on.
    pub fn describe(&self) -> String {
        match self {
            ConnectionError::V4(e) => describe_v4(e),
            ConnectionError::V5(v5::ConnectionError::ConnectionRefused(code)) => {
                format!("the broker refused the connection ({code:?})")
            }
            ConnectionError::V5(v5::ConnectionError::Io(io)) => {
                tls_words(format!("network error: {io}"))
            }
            ConnectionError::V5(other) => tls_words(other.to_string()),
        }
    }
}

/// A 3.1.1 connection error in words an operator can act on.
pub fn describe_v4(e: &rumqttc::ConnectionError) -> String {
    match e {
        rumqttc::ConnectionError::ConnectionRefused(code) => {
            format!("the broker refused the connection ({code:?})")
        }
        rumqttc::ConnectionError::Io(io) => tls_words(format!("network error: {io}")),
        other => tls_words(other.to_string()),
    }
}

/// TLS failures surface deep inside rumqttc's errors; say which side did
/// not trust the other.
fn tls_words(text: String) -> String {
    if let Some(alert) = text.split("received fatal alert: ").nth(1) {
        format!(
            "the broker rejected the gateway's client certificate (TLS alert {alert}; check cert_file and key_file)"
        )
    } else if text.contains("invalid peer certificate") {
        format!("the broker's certificate is not trusted by ca_file ({text})")
    } else {
        text
    }
}

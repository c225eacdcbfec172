//! The `wg/v1` protocol as data: topic names ([`topics`]) and JSON payloads
//! ([`protocol`]), and [`Reply`], a message some part of the gateway asks
//! the link to publish. It imports nothing of the gateway, so the link,
//! the content service and cloud deployments all speak it without knowing
//! each other. `docs/protocol.md` describes it.

pub mod protocol;
pub mod provision;
pub mod selector;
pub mod topics;

/// A message from the cloud for a service of the gateway ([`topics::Service`]),
/// as the link received it. The downlink routes it by the service its
/// topic's kind names and does not look inside; the service reads it into
/// its own typed message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inbound {
    pub topic: String,
    pub payload: Vec<u8>,
}

impl Inbound {
    /// The topic as the protocol reads it.
    pub fn parsed(&self) -> Option<topics::Parsed<'_>> {
        topics::parse(&self.topic)
    }
}

/// A publish the link should send for another part of the gateway (an
/// ack, an action response, a transfer's chunk, deployment progress). The
/// link stays the only publisher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub topic: String,
    pub payload: Vec<u8>,
    /// MQTT 5: the requester's correlation data, echoed with its answer.
    pub correlation: Option<Vec<u8>>,
}

/// MQTT 5: where a request wants its answer (its response topic), and what
/// to echo with it (its correlation data).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RespondTo {
    pub topic: String,
    pub correlation: Option<Vec<u8>>,
}

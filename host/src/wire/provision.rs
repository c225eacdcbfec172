//! Provisioning by claim, as data: the topics a gateway that holds only a
//! claim credential asks `serve` for its identity on, and the two messages.
//! The gateway's side is `cloud::provision`, `serve`'s is
//! `server::provisioning`; docs/provisioning.md describes the exchange.
//!
//! The topics sit outside `wg/v1/{gateway}/...` on purpose: a claim is not
//! a gateway, and a broker ACL keyed on the user (the claim certificate's
//! common name, or the claim token's user name) confines each claim to
//! `wg/provision/v1/{claim}/#`, so the claim in the topic is the one the
//! broker authenticated.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Every provisioning topic starts with this.
pub const ROOT: &str = "wg/provision/v1";

/// The topic a gateway asks on.
pub fn request_topic(claim: &str, request: &str) -> String {
    format!("{ROOT}/{claim}/{request}/request")
}

/// The topic `serve` answers that request on.
pub fn response_topic(claim: &str, request: &str) -> String {
    format!("{ROOT}/{claim}/{request}/response")
}

/// What `serve` subscribes to (through its shared group, if any).
pub const REQUEST_FILTER: &str = "wg/provision/v1/+/+/request";

/// The claim and request id of a request topic; `None` for any other topic.
pub fn parse_request_topic(topic: &str) -> Option<(&str, &str)> {
    let rest = topic.strip_prefix(ROOT)?.strip_prefix('/')?;
    let mut parts = rest.split('/');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(claim), Some(request), Some("request"), None)
            if !claim.is_empty() && !request.is_empty() =>
        {
            Some((claim, request))
        }
        _ => None,
    }
}

/// How long a request stays valid: older (or further in the future) by
/// more than this, it is refused as stale. It bounds how long `serve` must
/// remember request ids to refuse a replay.
pub const MAX_REQUEST_AGE_MS: u64 = 10 * 60 * 1000;

/// A gateway's request for an identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    /// Random, once per request; it is also the common name of the
    /// request's CSR, so the key's own signature covers it.
    pub request: String,
    /// The device's serial number: what the allow-list knows it by.
    pub serial: String,
    /// A PEM certificate signing request for the key the gateway made and
    /// keeps; the key itself never leaves the gateway.
    pub csr: String,
    /// When the request was made, ms since the epoch.
    pub time: u64,
}

/// `serve`'s answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "lowercase", deny_unknown_fields)]
pub enum Response {
    Issued {
        request: String,
        /// The gateway's id, also the certificate's common name.
        gateway: String,
        labels: BTreeMap<String, String>,
        /// PEM client certificate for the request's key, signed by the
        /// fleet CA.
        certificate: String,
        /// When the certificate expires, ms since the epoch.
        not_after: u64,
    },
    Refused {
        request: String,
        reason: String,
    },
}

impl Response {
    pub fn request(&self) -> &str {
        match self {
            Response::Issued { request, .. } | Response::Refused { request, .. } => request,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_topics_read_back_and_nothing_else_does() {
        let topic = request_topic("batch-7", "r1");
        assert_eq!(parse_request_topic(&topic), Some(("batch-7", "r1")));
        assert_eq!(parse_request_topic(&response_topic("batch-7", "r1")), None);
        for other in [
            "wg/provision/v1/batch-7/request",
            "wg/provision/v1//r1/request",
            "wg/provision/v1/batch-7/r1/request/more",
            "wg/v1/gw/gw/status",
            "wg/provision/v10/a/b/request",
        ] {
            assert_eq!(parse_request_topic(other), None, "{other}");
        }
    }

    #[test]
    fn responses_are_tagged_by_outcome() {
        let refused = Response::Refused {
            request: "r1".into(),
            reason: "unknown claim".into(),
        };
        let json = serde_json::to_value(&refused).unwrap();
        assert_eq!(json["outcome"], "refused");
        assert_eq!(serde_json::from_value::<Response>(json).unwrap(), refused);
    }
}

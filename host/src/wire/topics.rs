//! Topic names of the cloud protocol (`docs/protocol.md`). Every topic is
//! `wg/v1/{gateway}/{device}/...`, so a broker ACL on `wg/v1/{client-id}/#`
//! confines a gateway to its own subtree.

/// The first two levels of every topic.
pub const ROOT: &str = "wg/v1";

/// `wg/v1/{gateway}/{device}/{suffix}`
pub fn topic(gateway: &str, device: &str, suffix: &str) -> String {
    format!("{ROOT}/{gateway}/{device}/{suffix}")
}

/// The topics a gateway subscribes to: desired changes and action requests
/// for any of its devices.
pub fn downlink_filters(gateway: &str) -> [String; 7] {
    [
        format!("{ROOT}/{gateway}/+/twin/desired"),
        format!("{ROOT}/{gateway}/+/action/+/req"),
        format!("{ROOT}/{gateway}/{gateway}/deploy/#"),
        format!("{ROOT}/{gateway}/+/content/up/+/ack"),
        format!("{ROOT}/{gateway}/+/content/down/+/manifest"),
        format!("{ROOT}/{gateway}/+/content/down/+/chunk/+"),
        format!("{ROOT}/{gateway}/+/synced/+/down"),
    ]
}

/// What a topic under `wg/v1/` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed<'a> {
    pub gateway: &'a str,
    pub device: &'a str,
    pub kind: Kind<'a>,
}

/// The message kinds of the protocol, by topic suffix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind<'a> {
    Status,
    /// A registered device's announcement (retained; empty once unregistered).
    Registration,
    /// A device's model, as its gateway announces it (retained; empty once
    /// the device is gone).
    Model,
    Reported,
    Desired,
    Ack,
    Telemetry(&'a str),
    Alert(&'a str),
    ActionRequest(&'a str),
    ActionResponse(&'a str),
    DeployRequest,
    /// A chunk of a deployment: its id and index.
    DeployChunk(&'a str, &'a str),
    DeployResponse,
    /// A new set of trusted deployment keys, signed by the keys in force.
    DeployKeys,
    /// `deploy/rollback`: a signed order to leave a component.
    DeployRollback,
    /// Content: the manifest, a chunk (id, index) and the receiver's
    /// acknowledgement, of an upload (gateway → cloud) or a download.
    UploadManifest(&'a str),
    UploadChunk(&'a str, &'a str),
    UploadAck(&'a str),
    DownloadManifest(&'a str),
    DownloadChunk(&'a str, &'a str),
    DownloadAck(&'a str),
    /// A changeset of a synced table (`synced/{table}`), gateway → cloud.
    Changeset(&'a str),
    /// A changeset of a synced table from the server (`synced/{table}/down`).
    ChangesetDown(&'a str),
    /// A gateway's request for the server's changesets of a table
    /// (`synced/{table}/pull`).
    Pull(&'a str),
}

/// The services that take messages coming down, besides the downlink's own
/// desired changes and action requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Service {
    /// Cloud deployments (`deploy/...` on the gateway's own device).
    Deploy,
    /// Content transfers (`content/...`).
    Content,
    /// The server's changes to synced tables (`synced/{table}/down`).
    Synced,
}

impl Kind<'_> {
    /// The service that takes a message of this kind coming down, if one
    /// does.
    pub fn service(&self) -> Option<Service> {
        match self {
            Kind::DeployRequest
            | Kind::DeployChunk(..)
            | Kind::DeployKeys
            | Kind::DeployRollback => Some(Service::Deploy),
            Kind::UploadAck(_) | Kind::DownloadManifest(_) | Kind::DownloadChunk(..) => {
                Some(Service::Content)
            }
            Kind::ChangesetDown(_) => Some(Service::Synced),
            _ => None,
        }
    }
}

/// Parse a protocol topic; `None` for anything that is not one.
pub fn parse(topic: &str) -> Option<Parsed<'_>> {
    let rest = topic.strip_prefix(ROOT)?.strip_prefix('/')?;
    let mut parts = rest.split('/');
    let gateway = parts.next().filter(|s| !s.is_empty())?;
    let device = parts.next().filter(|s| !s.is_empty())?;
    let tail: Vec<&str> = parts.collect();
    let kind = match tail.as_slice() {
        ["status"] => Kind::Status,
        ["registration"] => Kind::Registration,
        ["model"] => Kind::Model,
        ["twin", "reported"] => Kind::Reported,
        ["twin", "desired"] => Kind::Desired,
        ["twin", "ack"] => Kind::Ack,
        ["telemetry", series] if !series.is_empty() => Kind::Telemetry(series),
        ["alert", name] if !name.is_empty() => Kind::Alert(name),
        ["action", name, "req"] if !name.is_empty() => Kind::ActionRequest(name),
        ["action", name, "res"] if !name.is_empty() => Kind::ActionResponse(name),
        ["deploy", "req"] => Kind::DeployRequest,
        ["deploy", "res"] => Kind::DeployResponse,
        ["deploy", "keys"] => Kind::DeployKeys,
        ["deploy", "rollback"] => Kind::DeployRollback,
        ["deploy", id, "chunk", index] if !id.is_empty() => Kind::DeployChunk(id, index),
        ["content", "up", id, "manifest"] if !id.is_empty() => Kind::UploadManifest(id),
        ["content", "up", id, "chunk", index] if !id.is_empty() => Kind::UploadChunk(id, index),
        ["content", "up", id, "ack"] if !id.is_empty() => Kind::UploadAck(id),
        ["content", "down", id, "manifest"] if !id.is_empty() => Kind::DownloadManifest(id),
        ["content", "down", id, "chunk", index] if !id.is_empty() => Kind::DownloadChunk(id, index),
        ["content", "down", id, "ack"] if !id.is_empty() => Kind::DownloadAck(id),
        ["synced", table] if !table.is_empty() => Kind::Changeset(table),
        ["synced", table, "down"] if !table.is_empty() => Kind::ChangesetDown(table),
        ["synced", table, "pull"] if !table.is_empty() => Kind::Pull(table),
        _ => return None,
    };
    Some(Parsed {
        gateway,
        device,
        kind,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_round_trip_and_junk_is_refused() {
        let t = topic("gw", "dev", "action/reset/req");
        assert_eq!(t, "wg/v1/gw/dev/action/reset/req");
        assert_eq!(
            parse(&t),
            Some(Parsed {
                gateway: "gw",
                device: "dev",
                kind: Kind::ActionRequest("reset")
            })
        );
        assert_eq!(
            parse("wg/v1/gw/dev/telemetry/climate").map(|p| p.kind),
            Some(Kind::Telemetry("climate"))
        );
        assert_eq!(
            parse("wg/v1/gw/gw/status").map(|p| p.kind),
            Some(Kind::Status)
        );
        for junk in [
            "wg/v1/gw",
            "wg/v1/gw/dev/nope",
            "wg/v1//dev/status",
            "wg/v2/gw/dev/status",
            "wg/v1/gw/dev/action/x/req/y",
        ] {
            assert_eq!(parse(junk), None, "{junk}");
        }
        assert_eq!(downlink_filters("gw")[1], "wg/v1/gw/+/action/+/req");
        assert_eq!(
            parse("wg/v1/gw/gw/deploy/d1/chunk/3").map(|p| p.kind),
            Some(Kind::DeployChunk("d1", "3"))
        );
        assert_eq!(
            parse("wg/v1/gw/dev/synced/recipes").map(|p| p.kind),
            Some(Kind::Changeset("recipes"))
        );
    }

    #[test]
    fn each_kind_coming_down_names_the_service_that_takes_it() {
        let service = |t: &str| parse(t).and_then(|p| p.kind.service());
        assert_eq!(service("wg/v1/gw/gw/deploy/req"), Some(Service::Deploy));
        assert_eq!(service("wg/v1/gw/gw/deploy/keys"), Some(Service::Deploy));
        assert_eq!(
            service("wg/v1/gw/gw/deploy/d/chunk/0"),
            Some(Service::Deploy)
        );
        assert_eq!(
            service("wg/v1/gw/dev/synced/recipes/down"),
            Some(Service::Synced)
        );
        for content in [
            "wg/v1/gw/dev/content/up/u1/ack",
            "wg/v1/gw/dev/content/down/d1/manifest",
            "wg/v1/gw/dev/content/down/d1/chunk/2",
        ] {
            assert_eq!(service(content), Some(Service::Content), "{content}");
        }
        // The downlink's own, and what only goes up.
        for other in [
            "wg/v1/gw/dev/twin/desired",
            "wg/v1/gw/dev/action/reset/req",
            "wg/v1/gw/gw/deploy/res",
            "wg/v1/gw/dev/content/up/u1/manifest",
            "wg/v1/gw/dev/telemetry/climate",
            "wg/v1/gw/dev/synced/recipes",
            "wg/v1/gw/dev/synced/recipes/pull",
        ] {
            assert_eq!(service(other), None, "{other}");
        }
    }
}

//! What `serve` takes from the broker, read from a topic and payload into
//! a [`Record`] for the store. Pure: no I/O, so every rule about what is
//! kept and what is refused is unit-tested here.
//!
//! A message that cannot be read is refused with the reason; `serve` then
//! acknowledges it to the broker all the same (it would come back for ever
//! otherwise) and counts it.

use crate::wire::protocol::{
    Ack, ActionResponse, Alert, DeployProgress, Reported, Status, TelemetryBatch,
};
use crate::wire::topics::{self, Kind};

/// One message, read.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    Telemetry {
        gateway: String,
        device: String,
        series: String,
        batch: TelemetryBatch,
    },
    Alert {
        gateway: String,
        device: String,
        name: String,
        alert: Alert,
    },
    Reported {
        gateway: String,
        device: String,
        reported: Reported,
    },
    /// `None`: the retained desired state was cleared.
    Desired {
        gateway: String,
        device: String,
        desired: Option<serde_json::Value>,
    },
    Ack {
        gateway: String,
        device: String,
        ack: Ack,
        json: String,
    },
    Status {
        gateway: String,
        status: Status,
        json: String,
    },
    /// `None`: the device was unregistered.
    Registration {
        gateway: String,
        device: String,
        json: Option<String>,
    },
    /// The device's model as its gateway announced it (`None`: withdrawn).
    Model {
        gateway: String,
        device: String,
        json: Option<String>,
    },
    Deployment {
        gateway: String,
        progress: DeployProgress,
    },
    ActionResponse {
        gateway: String,
        device: String,
        action: String,
        response: ActionResponse,
    },
    /// The changes of one write to a synced table of the device's app.
    Changeset {
        gateway: String,
        device: String,
        changeset: crate::synced::Changeset,
    },
    /// A gateway asks for the server's changesets of a table after `after`.
    Pull(super::tables::Pull),
}

impl Record {
    /// The gateway the record is about.
    pub fn gateway(&self) -> &str {
        match self {
            Record::Telemetry { gateway, .. }
            | Record::Alert { gateway, .. }
            | Record::Reported { gateway, .. }
            | Record::Desired { gateway, .. }
            | Record::Ack { gateway, .. }
            | Record::Status { gateway, .. }
            | Record::Registration { gateway, .. }
            | Record::Model { gateway, .. }
            | Record::Deployment { gateway, .. }
            | Record::ActionResponse { gateway, .. }
            | Record::Changeset { gateway, .. }
            | Record::Pull(super::tables::Pull { gateway, .. }) => gateway,
        }
    }
}

/// The most points one batch may bring (the gateway cuts batches far
/// smaller; past this the message is refused rather than stored in part).
pub const MAX_BATCH_POINTS: usize = 100_000;

/// Read a message; `Ok(None)` for a topic `serve` does not keep.
pub fn read(topic: &str, payload: &[u8]) -> Result<Option<Record>, String> {
    let Some(parsed) = topics::parse(topic) else {
        return Ok(None);
    };
    let gateway = parsed.gateway.to_string();
    let device = parsed.device.to_string();
    let json = |what: &str| -> Result<serde_json::Value, String> {
        serde_json::from_slice(payload).map_err(|e| format!("{what} on {topic}: {e}"))
    };
    let text = || String::from_utf8_lossy(payload).into_owned();
    let record = match parsed.kind {
        Kind::Telemetry(series) => {
            let batch: TelemetryBatch = serde_json::from_slice(payload)
                .map_err(|e| format!("telemetry batch on {topic}: {e}"))?;
            if batch.batch.is_empty() || batch.batch.len() > 128 {
                return Err(format!(
                    "telemetry batch on {topic}: the batch id must be 1 to 128 characters"
                ));
            }
            if batch.points.len() > MAX_BATCH_POINTS {
                return Err(format!(
                    "telemetry batch on {topic}: {} points, more than the {MAX_BATCH_POINTS} a batch may hold",
                    batch.points.len()
                ));
            }
            Record::Telemetry {
                gateway,
                device,
                series: series.to_string(),
                batch,
            }
        }
        Kind::Alert(name) => {
            let alert: Alert =
                serde_json::from_slice(payload).map_err(|e| format!("alert on {topic}: {e}"))?;
            if alert.id.is_empty() || alert.id.len() > 128 {
                return Err(format!(
                    "alert on {topic}: the id must be 1 to 128 characters"
                ));
            }
            Record::Alert {
                gateway,
                device,
                name: name.to_string(),
                alert,
            }
        }
        Kind::Reported => Record::Reported {
            reported: serde_json::from_value(json("reported state")?)
                .map_err(|e| format!("reported state on {topic}: {e}"))?,
            gateway,
            device,
        },
        Kind::Desired => Record::Desired {
            desired: (!payload.is_empty())
                .then(|| json("desired state"))
                .transpose()?,
            gateway,
            device,
        },
        Kind::Ack => Record::Ack {
            ack: serde_json::from_value(json("twin ack")?)
                .map_err(|e| format!("twin ack on {topic}: {e}"))?,
            json: text(),
            gateway,
            device,
        },
        // Only a gateway's own device carries its status.
        Kind::Status if gateway == device => Record::Status {
            status: serde_json::from_value(json("status")?)
                .map_err(|e| format!("status on {topic}: {e}"))?,
            json: text(),
            gateway,
        },
        Kind::Status => return Err(format!("status on {topic}: not the gateway's own device")),
        Kind::Registration => Record::Registration {
            json: (!payload.is_empty())
                .then(|| json("registration").map(|_| text()))
                .transpose()?,
            gateway,
            device,
        },
        Kind::Model => Record::Model {
            json: (!payload.is_empty())
                .then(|| {
                    crate::model::DeviceModel::parse(&text())
                        .map_err(|e| format!("model on {topic}: {e}"))
                        .map(|_| text())
                })
                .transpose()?,
            gateway,
            device,
        },
        Kind::DeployResponse => Record::Deployment {
            progress: serde_json::from_value(json("deployment progress")?)
                .map_err(|e| format!("deployment progress on {topic}: {e}"))?,
            gateway,
        },
        Kind::ActionResponse(action) => Record::ActionResponse {
            response: serde_json::from_value(json("action response")?)
                .map_err(|e| format!("action response on {topic}: {e}"))?,
            action: action.to_string(),
            gateway,
            device,
        },
        Kind::Changeset(table) => {
            let changeset: crate::synced::Changeset = serde_json::from_slice(payload)
                .map_err(|e| format!("changeset on {topic}: {e}"))?;
            changeset
                .check(table, crate::synced::merge::Side::Device)
                .map_err(|e| format!("changeset on {topic}: {e}"))?;
            Record::Changeset {
                gateway,
                device,
                changeset,
            }
        }
        Kind::Pull(table) => {
            #[derive(serde::Deserialize)]
            #[serde(deny_unknown_fields)]
            struct Pull {
                after: u64,
            }
            let pull: Pull =
                serde_json::from_slice(payload).map_err(|e| format!("pull on {topic}: {e}"))?;
            Record::Pull(super::tables::Pull {
                gateway,
                device,
                table: table.to_string(),
                after: pull.after,
            })
        }
        _ => return Ok(None),
    };
    Ok(Some(record))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn telemetry_alerts_and_twins_are_read_with_their_place() {
        let record = read(
            "wg/v1/gw/th/telemetry/climate",
            br#"{"batch":"gw-3","points":[{"time":5,"values":{"t":20.5}}]}"#,
        )
        .expect("read")
        .expect("kept");
        let Record::Telemetry {
            gateway,
            device,
            series,
            batch,
        } = record
        else {
            panic!("{record:?}")
        };
        assert_eq!((gateway.as_str(), device.as_str()), ("gw", "th"));
        assert_eq!(series, "climate");
        assert_eq!(batch.points.len(), 1);
        assert_eq!(batch.points[0].time, 5);

        let alert = read(
            "wg/v1/gw/th/alert/hot",
            br#"{"id":"gw-4","time":6,"severity":"warning","values":{"t":30}}"#,
        )
        .expect("read");
        assert!(matches!(alert, Some(Record::Alert { name, .. }) if name == "hot"));
        let cleared = read("wg/v1/gw/th/twin/desired", b"").expect("read");
        assert!(matches!(
            cleared,
            Some(Record::Desired { desired: None, .. })
        ));
        let gone = read("wg/v1/gw/bus.s1/registration", b"").expect("read");
        assert!(matches!(
            gone,
            Some(Record::Registration { json: None, .. })
        ));
    }

    #[test]
    fn what_cannot_be_read_is_refused_with_the_topic_and_the_reason() {
        let e = read("wg/v1/gw/th/telemetry/climate", b"{not json").expect_err("refused");
        assert!(e.contains("wg/v1/gw/th/telemetry/climate"), "{e}");
        let e = read(
            "wg/v1/gw/th/telemetry/climate",
            br#"{"batch":"","points":[]}"#,
        )
        .expect_err("refused");
        assert!(e.contains("batch id"), "{e}");
        let e = read("wg/v1/gw/other/status", br#"{"online":true}"#).expect_err("refused");
        assert!(e.contains("own device"), "{e}");
        let e = read("wg/v1/gw/th/model", br#"{"attributes": 3}"#).expect_err("refused");
        assert!(e.contains("model on wg/v1/gw/th/model"), "{e}");
        // A gateway may not pass its changes off as the server's.
        let forged = br#"{"id":"gw-1","table":"t","rules":{"key_rule":"server-wins"},
            "changes":[{"key":"k","side":"server","stamp":{"wall_ms":1,"counter":0,"node":0},"kind":"delete"}]}"#;
        let e = read("wg/v1/gw/th/synced/t", forged).expect_err("refused");
        assert!(
            e.starts_with("changeset on wg/v1/gw/th/synced/t: change of key \"k\" claims"),
            "{e}"
        );
        let honest =
            String::from_utf8_lossy(forged).replace("\"server\",\"stamp", "\"device\",\"stamp");
        assert!(matches!(
            read("wg/v1/gw/th/synced/t", honest.as_bytes()),
            Ok(Some(Record::Changeset { .. }))
        ));
    }

    #[test]
    fn requests_going_down_and_foreign_topics_are_not_kept() {
        assert_eq!(read("wg/v1/gw/th/action/reset/req", b"{}"), Ok(None));
        assert_eq!(read("wg/v1/gw/gw/deploy/req", b"{}"), Ok(None));
        assert_eq!(read("elsewhere/gw/th/telemetry/x", b"{}"), Ok(None));
    }
}

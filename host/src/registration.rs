//! Indirectly connected devices (the Oracle `GatewayDevice` pattern): an app
//! that reads a bus of sensors `register`s each one by its hardware id and
//! then speaks for it as for its own device, with its own twin, telemetry,
//! alerts and actions under `wg/v1/{gateway}/{device}/...`.
//!
//! The device id is derived from the app's own device and the hardware id
//! alone, so registering the same hardware again (after a restart, or from a
//! new version of the app) gives the same id, as iobeam's saved device id
//! did. Registrations are kept in SQLite (`registrations`, with a row in
//! `devices` like any device), announced to the cloud each on its own
//! retained `{device}/registration` topic (queued in the outbox with the
//! change; the `status` message lists the first 100 of an app's), and capped
//! per app (`max_devices`).

use rusqlite::{Connection, OptionalExtension, params};
use sha2::{Digest, Sha256};
use std::sync::Arc;

use crate::model::DeviceModel;

/// The table of registrations (owned here; the device capability applies it).
pub const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS registrations (
    app           TEXT NOT NULL,
    hardware_id   TEXT NOT NULL,
    device        TEXT NOT NULL UNIQUE,
    model         TEXT NOT NULL,
    metadata      TEXT NOT NULL,
    registered_at INTEGER NOT NULL,
    PRIMARY KEY (app, hardware_id)
);
"#;

/// A device an app registered, as the gateway routes to it.
#[derive(Clone)]
pub struct Registered {
    pub app: String,
    pub model: Arc<DeviceModel>,
    pub registration: Registration,
}

/// Where the device capability routes the devices an app registers: the
/// gateway's directory of apps (`app::Directory`), seen from below so that
/// the capability does not depend on the app runtime.
pub trait Routes: Send + Sync {
    /// The app that speaks for `device`, its own device or one it
    /// registered, if any.
    fn owner(&self, device: &str) -> Option<String>;
    /// The model of `device`, if `app` registered it and it is routed:
    /// the one place the gateway keeps which app's devices are live.
    fn registered_model(&self, app: &str, device: &str) -> Option<Arc<DeviceModel>>;
    /// Route `registered.registration.device` to its app.
    fn register(&self, registered: Registered);
    fn unregister(&self, device: &str);
}

pub use crate::config::{DEFAULT_MAX_DEVICES, MAX_DEVICES_LIMIT};

/// The longest hardware id taken.
pub const MAX_HARDWARE_ID_BYTES: usize = 256;

/// Metadata: at most this many entries, values of at most this many bytes.
pub const MAX_METADATA_ENTRIES: usize = 32;
pub const MAX_METADATA_VALUE_BYTES: usize = 256;

/// One registered device.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Registration {
    /// The device id it has on the gateway and on the wire.
    pub device: String,
    pub hardware_id: String,
    /// The name of the model among the app's `[app.models]`.
    pub model: String,
    pub metadata: Vec<(String, String)>,
}

/// The device id of `hardware_id` registered by an app whose own device is
/// `parent`: `{parent}.{hardware_id}` when that is a valid name, otherwise
/// `{parent}.{first 16 hex digits of sha256(hardware_id)}`.
pub fn device_id(parent: &str, hardware_id: &str) -> String {
    let plain = format!("{parent}.{hardware_id}");
    if crate::model::check_name(&plain).is_ok() {
        return plain;
    }
    let digest = hex::encode(Sha256::digest(hardware_id.as_bytes()));
    format!("{parent}.{}", &digest[..16])
}

/// Check what a guest passes to `register`.
pub fn check(hardware_id: &str, metadata: &[(String, String)]) -> Result<(), String> {
    if hardware_id.is_empty() || hardware_id.len() > MAX_HARDWARE_ID_BYTES {
        return Err(format!(
            "a hardware id is 1 to {MAX_HARDWARE_ID_BYTES} bytes, not {}",
            hardware_id.len()
        ));
    }
    if hardware_id.chars().any(char::is_control) {
        return Err("a hardware id has no control characters".into());
    }
    if metadata.len() > MAX_METADATA_ENTRIES {
        return Err(format!(
            "{} metadata entries is over the limit of {MAX_METADATA_ENTRIES}",
            metadata.len()
        ));
    }
    for (key, value) in metadata {
        crate::model::check_name(key).map_err(|m| format!("metadata key: {m}"))?;
        if value.len() > MAX_METADATA_VALUE_BYTES {
            return Err(format!(
                "metadata {key}: {} bytes is over the limit of {MAX_METADATA_VALUE_BYTES}",
                value.len()
            ));
        }
    }
    Ok(())
}

/// The app's registration of `hardware_id`, if there is one.
pub fn find(
    conn: &Connection,
    app: &str,
    hardware_id: &str,
) -> rusqlite::Result<Option<Registration>> {
    conn.query_row(
        "SELECT device, hardware_id, model, metadata FROM registrations
         WHERE app = ?1 AND hardware_id = ?2",
        params![app, hardware_id],
        row,
    )
    .optional()
}

/// Every device the app has registered, by id.
pub fn of_app(conn: &Connection, app: &str) -> rusqlite::Result<Vec<Registration>> {
    let mut stmt = conn.prepare_cached(
        "SELECT device, hardware_id, model, metadata FROM registrations
         WHERE app = ?1 ORDER BY device",
    )?;
    stmt.query_map(params![app], row)?.collect()
}

/// How many devices the app has registered.
pub fn count(conn: &Connection, app: &str) -> rusqlite::Result<usize> {
    conn.query_row(
        "SELECT COUNT(*) FROM registrations WHERE app = ?1",
        params![app],
        |r| r.get::<_, i64>(0),
    )
    .map(|n| n.max(0) as usize)
}

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Registration> {
    let metadata: String = r.get(3)?;
    Ok(Registration {
        device: r.get(0)?,
        hardware_id: r.get(1)?,
        model: r.get(2)?,
        metadata: serde_json::from_str(&metadata).unwrap_or_default(),
    })
}

/// Keep a registration (new, or with new model or metadata), and claim its
/// device for the app.
pub fn save(
    conn: &mut Connection,
    app: &str,
    registration: &Registration,
    model: &crate::model::DeviceModel,
) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    tx.execute(
        "INSERT INTO registrations (app, hardware_id, device, model, metadata, registered_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (app, hardware_id) DO UPDATE
         SET model = excluded.model, metadata = excluded.metadata",
        params![
            app,
            registration.hardware_id,
            registration.device,
            registration.model,
            serde_json::to_string(&registration.metadata).unwrap_or_else(|_| "[]".into()),
            crate::value::now_ns() as i64,
        ],
    )?;
    crate::store::claim_device(&tx, &registration.device, app)?;
    announce(&tx, &registration.device, Some((app, registration)))?;
    crate::outbox::announce_model(&tx, &registration.device, model.source())?;
    tx.commit()
}

/// Queue a device's retained announcement (`{device}/registration`), or
/// its withdrawal, in the outbox, with the change that makes it: every
/// registered device reaches the cloud this way, however many there are,
/// while the status message lists only the first of them.
fn announce(
    tx: &rusqlite::Transaction<'_>,
    device: &str,
    registered: Option<(&str, &Registration)>,
) -> rusqlite::Result<()> {
    let payload = match registered {
        Some((app, r)) => serde_json::to_vec(&serde_json::json!({
            "app": app,
            "hardware_id": r.hardware_id,
            "model": r.model,
            "metadata": r.metadata.iter().cloned().collect::<std::collections::BTreeMap<_, _>>(),
        }))
        .unwrap_or_default(),
        // An empty retained message clears the announcement.
        None => Vec::new(),
    };
    crate::outbox::insert(
        tx,
        &[crate::outbox::Entry {
            kind: crate::outbox::Kind::Registration,
            device: device.to_string(),
            name: String::new(),
            points: 0,
            payload,
        }],
    )
}

/// Forget a registration: the device's row and twin go too, so a later
/// registration of the same hardware starts afresh. Data already in the
/// outbox is still sent.
pub fn delete(
    conn: &mut Connection,
    app: &str,
    hardware_id: &str,
) -> rusqlite::Result<Option<String>> {
    let tx = conn.transaction()?;
    let device: Option<String> = tx
        .query_row(
            "DELETE FROM registrations WHERE app = ?1 AND hardware_id = ?2 RETURNING device",
            params![app, hardware_id],
            |r| r.get(0),
        )
        .optional()?;
    if let Some(device) = &device {
        tx.execute("DELETE FROM devices WHERE device = ?1", params![device])?;
        tx.execute("DELETE FROM twin WHERE device = ?1", params![device])?;
        announce(&tx, device, None)?;
        crate::outbox::announce_model(&tx, device, "")?;
    }
    tx.commit()?;
    Ok(device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_id_depends_only_on_the_parent_and_the_hardware_id() {
        assert_eq!(device_id("bus", "th-01"), "bus.th-01");
        let odd = device_id("bus", "usb:0403/6001 #2");
        assert_eq!(odd, device_id("bus", "usb:0403/6001 #2"));
        assert!(
            odd.starts_with("bus.") && odd.len() == "bus.".len() + 16,
            "{odd}"
        );
        assert_ne!(odd, device_id("bus", "usb:0403/6001 #3"));
        let long = "x".repeat(200);
        assert!(crate::model::check_name(&device_id("bus", &long)).is_ok());
    }

    #[test]
    fn hardware_ids_and_metadata_are_checked() {
        assert!(check("th-01", &[("serial".into(), "A1".into())]).is_ok());
        assert!(check("", &[]).is_err());
        assert!(check(&"x".repeat(300), &[]).is_err());
        assert!(check("a\nb", &[]).is_err());
        assert!(check("a", &[("bad key".into(), "v".into())]).is_err());
        assert!(check("a", &[("k".into(), "v".repeat(300))]).is_err());
        let many: Vec<_> = (0..40).map(|i| (format!("k{i}"), "v".into())).collect();
        assert!(check("a", &many).is_err());
    }
}

//! Host side of the `wasmgate:device/device` interface: the devices an app
//! speaks for, their twin (reported / desired attributes), their time-series
//! and their alerts.
//!
//! Every value is checked against the app's device model first; a refused
//! call returns `error::invalid` to the guest, is logged, and stores nothing.
//! Reports and alerts are committed before the call returns; recorded points
//! are buffered here for the length of one export call (or up to
//! [`FLUSH_POINTS`]) and then handed to the outbox writer thread.

use rusqlite::{Connection, OptionalExtension, params};
use std::sync::Arc;
use tokio::sync::Notify;
use wasmtime::component::{HasData, Linker, Resource, ResourceTable};

use crate::app::AppCtx;
use crate::bindings::wasmgate::device::device::{Host, HostDevice, add_to_linker};
use crate::bindings::{GuestError, Point, Severity, Value};
use crate::model::DeviceModel;
use crate::outbox::{self, Batch, IngestSender, Kind};
use crate::value::{fields_to_json, now_ns, time_to_ns};

/// Points buffered in the app before they are handed to the writer thread.
pub const FLUSH_POINTS: usize = 4096;

/// How many device handles an app may hold at once; past this `this-device`
/// traps (a guest leaking handles is a bug, not an expected failure).
pub const MAX_HANDLES: usize = 1024;

/// The host's state behind a guest's `device` resource.
#[derive(Debug)]
pub struct DeviceHandle {
    id: String,
}

/// Per-app state of the device interface.
pub struct DeviceCtx {
    app: Arc<str>,
    default_device: String,
    model: Arc<DeviceModel>,
    db: Connection,
    ingest: IngestSender,
    /// Signalled when a report or alert is in the outbox.
    outbox_signal: Arc<Notify>,
    pending: Vec<Batch>,
    pending_points: usize,
    handles: usize,
}

impl DeviceCtx {
    pub fn new(
        app: Arc<str>,
        default_device: String,
        model: Arc<DeviceModel>,
        db: Connection,
        ingest: IngestSender,
        outbox_signal: Arc<Notify>,
    ) -> Self {
        DeviceCtx {
            app,
            default_device,
            model,
            db,
            ingest,
            outbox_signal,
            pending: Vec::new(),
            pending_points: 0,
            handles: 0,
        }
    }

    /// Hand buffered points to the outbox writer. Called after every export
    /// call, so a point is never held longer than the call that made it.
    pub fn flush(&mut self) {
        self.pending_points = 0;
        for batch in self.pending.drain(..) {
            if let Err(e) = self.ingest.append(batch) {
                tracing::warn!(app = %self.app, "dropping recorded points: {e}");
            }
        }
    }

    fn refuse(&self, device: &str, what: &str, message: String) -> GuestError {
        tracing::warn!(app = %self.app, device, "{what} refused: {message}");
        GuestError::Invalid(message)
    }

    fn unavailable(&self, what: &str, e: rusqlite::Error) -> GuestError {
        tracing::error!(app = %self.app, "{what} could not be stored: {e}");
        GuestError::Unavailable(format!("the gateway could not store the {what}: {e}"))
    }

    fn buffer(&mut self, device: &str, series: &str, points: Vec<outbox::Point>) {
        self.pending_points += points.len();
        match self.pending.last_mut() {
            Some(last) if last.device == device && last.series == series => {
                last.points.extend(points)
            }
            _ => self.pending.push(Batch {
                device: device.to_string(),
                series: series.to_string(),
                points,
            }),
        }
        if self.pending_points >= FLUSH_POINTS {
            self.flush();
        }
    }

    fn report(&mut self, device: &str, attributes: Vec<(String, Value)>) -> Result<(), GuestError> {
        let attributes = self
            .model
            .check_report(attributes)
            .map_err(|m| self.refuse(device, "report", m))?;
        self.store_report(device, &attributes)
            .map_err(|e| self.unavailable("report", e))?;
        self.outbox_signal.notify_one();
        Ok(())
    }

    fn store_report(
        &mut self,
        device: &str,
        attributes: &[(String, Value)],
    ) -> rusqlite::Result<()> {
        let now = now_ns();
        let tx = self.db.transaction()?;
        let version: i64 = tx.query_row(
            "UPDATE devices SET reported_version = reported_version + 1 WHERE device = ?1
             RETURNING reported_version",
            params![device],
            |r| r.get(0),
        )?;
        {
            let mut upsert = tx.prepare_cached(
                "INSERT INTO twin (device, name, reported, reported_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (device, name) DO UPDATE
                 SET reported = excluded.reported, reported_at = excluded.reported_at",
            )?;
            for (name, value) in attributes {
                let json = crate::value::to_json(value).to_string();
                upsert.execute(params![device, name, json, now as i64])?;
            }
        }
        let payload = serde_json::json!({
            "version": version,
            "time": now,
            "attributes": fields_to_json(attributes),
        });
        outbox::insert(
            &tx,
            &[outbox::Entry {
                kind: Kind::Twin,
                device: device.to_string(),
                name: String::new(),
                points: u32::try_from(attributes.len()).unwrap_or(u32::MAX),
                payload: payload.to_string().into_bytes(),
            }],
        )?;
        tx.commit()
    }

    fn twin_value(&self, device: &str, column: &str, name: &str) -> Option<Value> {
        // `column` is one of two constants below, never guest input.
        let sql = format!("SELECT {column} FROM twin WHERE device = ?1 AND name = ?2");
        let stored: Option<Option<String>> = self
            .db
            .query_row(&sql, params![device, name], |r| r.get(0))
            .optional()
            .unwrap_or_else(|e| {
                tracing::error!(app = %self.app, "reading the twin failed: {e}");
                None
            });
        let json: serde_json::Value = serde_json::from_str(&stored.flatten()?).ok()?;
        self.model.attribute_from_json(name, &json)
    }

    fn record(&mut self, device: &str, series: &str, points: Vec<Point>) -> Result<(), GuestError> {
        let now = now_ns();
        let mut checked = Vec::with_capacity(points.len());
        for (i, point) in points.into_iter().enumerate() {
            let at = |m: String| if i == 0 { m } else { format!("point {i}: {m}") };
            let time = match point.at {
                Some(t) => time_to_ns(t).map_err(|m| self.refuse(device, "record", at(m)))?,
                None => now,
            };
            let values = self
                .model
                .check_point(series, point.values)
                .map_err(|m| self.refuse(device, "record", at(m)))?;
            let values = values
                .iter()
                .map(|(n, v)| (n.clone(), crate::value::to_json(v)))
                .collect();
            checked.push(outbox::Point { time, values });
        }
        self.buffer(device, series, checked);
        Ok(())
    }

    fn alert(
        &mut self,
        device: &str,
        name: &str,
        severity: Severity,
        values: Vec<(String, Value)>,
    ) -> Result<(), GuestError> {
        let values = self
            .model
            .check_alert(name, values)
            .map_err(|m| self.refuse(device, "alert", m))?;
        let severity = match severity {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        };
        let payload = serde_json::json!({
            "time": now_ns(),
            "severity": severity,
            "values": fields_to_json(&values),
        });
        tracing::info!(app = %self.app, device, alert = name, severity, "alert raised");
        let entry = outbox::Entry {
            kind: Kind::Alert,
            device: device.to_string(),
            name: name.to_string(),
            points: 1,
            payload: payload.to_string().into_bytes(),
        };
        outbox::insert(&self.db, &[entry]).map_err(|e| self.unavailable("alert", e))?;
        self.outbox_signal.notify_one();
        Ok(())
    }
}

/// A borrow of the store data that the generated `Host` traits are
/// implemented on: the app's device state plus its resource table.
pub struct DeviceView<'a> {
    ctx: &'a mut DeviceCtx,
    table: &'a mut ResourceTable,
}

struct DeviceData;

impl HasData for DeviceData {
    type Data<'a> = DeviceView<'a>;
}

/// Add the device interface to the linker.
pub fn add(linker: &mut Linker<AppCtx>) -> wasmtime::Result<()> {
    add_to_linker::<AppCtx, DeviceData>(linker, |app| DeviceView {
        ctx: &mut app.device,
        table: &mut app.table,
    })
}

impl DeviceView<'_> {
    fn id_of(&self, handle: &Resource<DeviceHandle>) -> wasmtime::Result<String> {
        Ok(self.table.get(handle)?.id.clone())
    }
}

impl Host for DeviceView<'_> {
    fn this_device(&mut self) -> wasmtime::Result<Resource<DeviceHandle>> {
        if self.ctx.handles >= MAX_HANDLES {
            wasmtime::bail!("the app holds {MAX_HANDLES} device handles without dropping them");
        }
        let handle = self.table.push(DeviceHandle {
            id: self.ctx.default_device.clone(),
        })?;
        self.ctx.handles += 1;
        Ok(handle)
    }
}

impl HostDevice for DeviceView<'_> {
    fn id(&mut self, handle: Resource<DeviceHandle>) -> wasmtime::Result<String> {
        self.id_of(&handle)
    }

    fn report(
        &mut self,
        handle: Resource<DeviceHandle>,
        attributes: Vec<(String, Value)>,
    ) -> wasmtime::Result<Result<(), GuestError>> {
        let id = self.id_of(&handle)?;
        Ok(self.ctx.report(&id, attributes))
    }

    fn reported(
        &mut self,
        handle: Resource<DeviceHandle>,
        name: String,
    ) -> wasmtime::Result<Option<Value>> {
        let id = self.id_of(&handle)?;
        Ok(self.ctx.twin_value(&id, "reported", &name))
    }

    fn desired(
        &mut self,
        handle: Resource<DeviceHandle>,
        name: String,
    ) -> wasmtime::Result<Option<Value>> {
        let id = self.id_of(&handle)?;
        Ok(self
            .ctx
            .twin_value(&id, "desired", &name)
            .or_else(|| self.ctx.model.default_of(&name).cloned()))
    }

    fn record(
        &mut self,
        handle: Resource<DeviceHandle>,
        series: String,
        at: Option<crate::bindings::Time>,
        values: Vec<(String, Value)>,
    ) -> wasmtime::Result<Result<(), GuestError>> {
        let id = self.id_of(&handle)?;
        Ok(self.ctx.record(&id, &series, vec![Point { at, values }]))
    }

    fn record_batch(
        &mut self,
        handle: Resource<DeviceHandle>,
        series: String,
        points: Vec<Point>,
    ) -> wasmtime::Result<Result<(), GuestError>> {
        let id = self.id_of(&handle)?;
        Ok(self.ctx.record(&id, &series, points))
    }

    fn alert(
        &mut self,
        handle: Resource<DeviceHandle>,
        name: String,
        severity: Severity,
        values: Vec<(String, Value)>,
    ) -> wasmtime::Result<Result<(), GuestError>> {
        let id = self.id_of(&handle)?;
        Ok(self.ctx.alert(&id, &name, severity, values))
    }

    fn drop(&mut self, handle: Resource<DeviceHandle>) -> wasmtime::Result<()> {
        self.table.delete(handle)?;
        self.ctx.handles = self.ctx.handles.saturating_sub(1);
        Ok(())
    }
}

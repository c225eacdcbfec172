//! Host side of the `wasmgate:device/device` interface: the devices an app
//! speaks for, their twin (reported / desired attributes), their time-series
//! and their alerts.
//!
//! Every value is checked against the app's device model first; a refused
//! call returns `error::invalid` to the guest, is logged, and stores nothing.
//! Reports and alerts are committed before the call returns; recorded points
//! are buffered here for the length of one export call (or up to
//! [`FLUSH_POINTS`]) and then handed to the outbox writer thread.

use rusqlite::{OptionalExtension, params};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use tokio::sync::Notify;
use wasmtime::StoreContextMut;
use wasmtime::component::{
    ComponentType, HasData, Lift, Linker, Resource, ResourceTable, WasmList, WasmStr,
};

use crate::bindings::wasmgate::device::device::{self as generated, Host, HostDevice};
use crate::bindings::{GuestError, Point, Severity, Value};
use crate::capability::{AppSetup, Capability, Figure, FigureKind, HasCtx, ReportScope};
use crate::model::{DeviceModel, PointCheck};
use crate::outbox::{self, Batch, IngestSender, Kind, Points, Usage};
use crate::policy::{AlertSeverity, Pipeline, Sample};
use crate::rate::SharedLimit;
use crate::registration::{self, Registration};
use crate::value::{fields_to_json, now_ns, plausible_time, time_to_ns};

/// Points buffered in the app before they are handed to the writer thread.
pub const FLUSH_POINTS: usize = 4096;

/// How many device handles an app may hold at once; past this `this-device`
/// traps (a guest leaking handles is a bug, not an expected failure).
pub const MAX_HANDLES: usize = 1024;
/// The most reports one `report-all` call may carry: a bus of this many
/// devices is one commit, and the reports rate's burst (5,000) always
/// admits a full call.
pub const MAX_REPORTS_PER_CALL: usize = 1000;

/// Which side of an attribute's twin to read.
#[derive(Debug, Clone, Copy)]
enum TwinSide {
    Reported,
    Desired,
}

/// The host's state behind a guest's `device` resource.
#[derive(Debug)]
pub struct DeviceHandle {
    id: String,
}

/// What the device interface of one app works with.
struct DeviceDeps {
    app: Arc<str>,
    default_device: String,
    model: Arc<DeviceModel>,
    /// The instance's connection, opened at the first call that needs it.
    db: crate::store::SharedConnection,
    ingest: IngestSender,
    usage: Arc<Usage>,
    /// Signalled when a report or alert is in the outbox.
    outbox_signal: Arc<Notify>,
    /// The app's report and alert buckets, shared by its instances.
    rates: crate::rate::AppRates,
    /// The models the app may `register` devices with, by name.
    device_models: Arc<BTreeMap<String, Arc<DeviceModel>>>,
    max_devices: usize,
    /// Where registered devices are routed from, for the downlink.
    directory: Arc<dyn registration::Routes>,
    /// Signalled when the app registers or unregisters a device, so the
    /// status message announces it.
    status_signal: Arc<Notify>,
}

/// Per-app state of the device interface.
pub struct DeviceCtx {
    deps: DeviceDeps,
    /// Reports and alerts are transactions: rate-limited (see `rate`).
    reports: SharedLimit,
    alerts: SharedLimit,
    pending: Vec<Batch>,
    pending_points: usize,
    handles: usize,
    /// Policy pipelines by stream: `series/{device}/{name}` or
    /// `attribute/{device}/{name}`.
    pipelines: HashMap<String, Pipeline>,
}

impl DeviceCtx {
    /// The app's device state, with the devices it registered earlier (they
    /// are routed again at once, before the app registers them anew).
    fn new(deps: DeviceDeps) -> Self {
        let mut ctx = DeviceCtx {
            reports: deps.rates.reports.clone(),
            alerts: deps.rates.alerts.clone(),
            deps,
            pending: Vec::new(),
            pending_points: 0,
            handles: 0,
            pipelines: HashMap::new(),
        };
        // An app without registration models has nothing to route (and the
        // query would be the first on this connection, paying for reading
        // the schema inside a hot swap's pause).
        if ctx.deps.device_models.is_empty() {
            return ctx;
        }
        let earlier = ctx.deps.db.lock().and_then(|db| registration::of_app(&db, &ctx.deps.app)).unwrap_or_else(|e| {
            tracing::error!(app = %ctx.deps.app, "cannot read the app's registered devices: {e}");
            Vec::new()
        });
        for earlier in earlier {
            ctx.route(earlier);
        }
        ctx
    }

    /// Route a registration to this app, if its model is still one of the
    /// app's.
    fn route(&mut self, registration: Registration) -> Option<Arc<DeviceModel>> {
        let Some(model) = self.deps.device_models.get(&registration.model).cloned() else {
            tracing::warn!(
                app = %self.deps.app, device = %registration.device,
                "registered device not routed: the app has no model named {:?} any more",
                registration.model
            );
            return None;
        };
        self.deps.directory.register(registration::Registered {
            app: self.deps.app.to_string(),
            model: model.clone(),
            registration,
        });
        Some(model)
    }

    /// The model of a device the app speaks for: its own, or one it
    /// registered and has not unregistered.
    fn model_of(&self, device: &str) -> Result<Arc<DeviceModel>, GuestError> {
        if device == self.deps.default_device {
            return Ok(self.deps.model.clone());
        }
        self.deps
            .directory
            .registered_model(&self.deps.app, device)
            .ok_or_else(|| GuestError::Invalid(format!("device {device} is no longer registered")))
    }

    fn register(
        &mut self,
        hardware_id: &str,
        model: &str,
        metadata: Vec<(String, String)>,
    ) -> Result<String, GuestError> {
        Self::limited(&self.deps.rates.registrations, "registrations")?;
        let app = self.deps.app.clone();
        registration::check(hardware_id, &metadata).map_err(GuestError::Invalid)?;
        if !self.deps.device_models.contains_key(model) {
            let known: Vec<&str> = self.deps.device_models.keys().map(String::as_str).collect();
            return Err(GuestError::Invalid(format!(
                "no model named {model:?} among the app's [app.models] ({})",
                if known.is_empty() {
                    "it has none".to_string()
                } else {
                    known.join(", ")
                }
            )));
        }
        let existing = self
            .deps
            .db
            .lock()
            .and_then(|db| registration::find(&db, &app, hardware_id))
            .map_err(|e| self.unavailable("registration", e))?;
        let device = match &existing {
            Some(r) => r.device.clone(),
            None => {
                let count = self
                    .deps
                    .db
                    .lock()
                    .and_then(|db| registration::count(&db, &app))
                    .map_err(|e| self.unavailable("registration", e))?;
                if count >= self.deps.max_devices {
                    tracing::warn!(app = %app, hardware_id, "registration refused: {count} devices registered");
                    return Err(GuestError::Limit(format!(
                        "the app has registered {count} devices, its limit (max_devices = {})",
                        self.deps.max_devices
                    )));
                }
                registration::device_id(&self.deps.default_device, hardware_id)
            }
        };
        if let Some(owner) = self.deps.directory.owner(&device)
            && owner != *app
        {
            return Err(GuestError::Invalid(format!(
                "device {device} belongs to app {owner}"
            )));
        }
        let registration = Registration {
            device: device.clone(),
            hardware_id: hardware_id.to_string(),
            model: model.to_string(),
            metadata,
        };
        if existing.as_ref() != Some(&registration)
            && let Some(device_model) = self.deps.device_models.get(model)
        {
            self.deps
                .db
                .lock()
                .and_then(|mut db| registration::save(&mut db, &app, &registration, device_model))
                .map_err(|e| self.unavailable("registration", e))?;
            tracing::info!(app = %app, device = %device, hardware_id, model, "device registered");
        }
        let routed = self
            .deps
            .directory
            .registered_model(&app, &device)
            .is_some();
        self.route(registration);
        if existing.is_none() || !routed {
            self.deps.status_signal.notify_one();
        }
        Ok(device)
    }

    fn unregister(&mut self, hardware_id: &str) -> Result<(), GuestError> {
        let app = self.deps.app.clone();
        let device = self
            .deps
            .db
            .lock()
            .and_then(|mut db| registration::delete(&mut db, &app, hardware_id))
            .map_err(|e| self.unavailable("unregistration", e))?
            .ok_or_else(|| {
                GuestError::Invalid(format!(
                    "no device with hardware id {hardware_id:?} is registered by this app"
                ))
            })?;
        self.deps.directory.unregister(&device);
        self.deps.status_signal.notify_one();
        tracing::info!(app = %app, device = %device, hardware_id, "device unregistered");
        Ok(())
    }

    /// Hand buffered points to the outbox writer. Called after every export
    /// call, so a point is never held longer than the call that made it.
    pub fn flush(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        self.pending_points = 0;
        for batch in self.pending.drain(..) {
            if let Err(e) = self.deps.ingest.append(batch) {
                tracing::warn!(app = %self.deps.app, "dropping recorded points: {e}");
            }
        }
    }

    fn refuse(&self, device: &str, what: &str, message: String) -> GuestError {
        tracing::warn!(app = %self.deps.app, device, "{what} refused: {message}");
        GuestError::Invalid(message)
    }

    fn unavailable(&self, what: &str, e: rusqlite::Error) -> GuestError {
        tracing::error!(app = %self.deps.app, "{what} could not be stored: {e}");
        GuestError::Unavailable(format!("the gateway could not store the {what}: {e}"))
    }

    /// The pipeline of a stream, created on first use; `None` without policies.
    fn pipeline(
        &mut self,
        key: String,
        stages: &[crate::policy::Stage],
        implied: Option<&str>,
    ) -> Option<&mut Pipeline> {
        if stages.is_empty() {
            return None;
        }
        Some(
            self.pipelines
                .entry(key)
                .or_insert_with(|| Pipeline::new(stages.to_vec(), implied.map(str::to_string))),
        )
    }

    fn limited(limit: &SharedLimit, what: &str) -> Result<(), GuestError> {
        if limit.allow() {
            Ok(())
        } else {
            Err(GuestError::Limit(format!(
                "more than {} {what} a second",
                limit.per_second()
            )))
        }
    }

    fn report(&mut self, device: &str, attributes: Vec<(String, Value)>) -> Result<(), GuestError> {
        self.report_all(vec![(device.to_string(), attributes)])
    }

    /// Reports of several devices, stored in one transaction: all of them or,
    /// if any is refused, none. One commit for a whole bus scan is what lets
    /// thousands of registered devices report each second; a commit per
    /// report is the gateway's bottleneck there (BENCHMARKS.md, S2).
    fn report_all(
        &mut self,
        reports: Vec<(String, Vec<(String, Value)>)>,
    ) -> Result<(), GuestError> {
        if reports.len() > MAX_REPORTS_PER_CALL {
            return Err(GuestError::Invalid(format!(
                "{} reports in one call: at most {MAX_REPORTS_PER_CALL}",
                reports.len()
            )));
        }
        // Every report counts against the limit, batched or not: the limit
        // guards the uplink, which carries each device's report on its own.
        if !self.reports.allow_n(reports.len() as u64) {
            return Err(GuestError::Limit(format!(
                "more than {} reports a second",
                self.reports.per_second()
            )));
        }
        // Every report is checked before any policy sees one, so a refused
        // report leaves every pipeline (a deadband's last value, ...) as it was.
        let several = reports.len() > 1;
        let mut checked = Vec::with_capacity(reports.len());
        for (device, attributes) in reports {
            let model = self.model_of(&device)?;
            let attributes = model.check_report(attributes).map_err(|m| {
                let m = if several {
                    format!("device {device}: {m}")
                } else {
                    m
                };
                self.refuse(&device, "report", m)
            })?;
            checked.push((device, model, attributes));
        }
        let now = now_ns();
        let mut kept_reports = Vec::with_capacity(checked.len());
        for (device, model, attributes) in checked {
            let kept = self.through_policies(&device, &model, attributes, now)?;
            // A report the policies kept nothing of is not stored, and not an error.
            if !kept.is_empty() {
                kept_reports.push((device, kept));
            }
        }
        if kept_reports.is_empty() {
            return Ok(());
        }
        self.store_reports(&kept_reports)
            .map_err(|e| self.unavailable("report", e))?;
        self.deps.outbox_signal.notify_one();
        Ok(())
    }

    /// A report's attributes after their policies; the alerts the policies
    /// raise are stored on the way.
    fn through_policies(
        &mut self,
        device: &str,
        model: &DeviceModel,
        attributes: Vec<(String, Value)>,
        now: u64,
    ) -> Result<Vec<(String, Value)>, GuestError> {
        let mut kept = Vec::with_capacity(attributes.len());
        let mut raised = Vec::new();
        for (name, value) in attributes {
            let stages = model
                .attributes
                .get(&name)
                .map(|a| a.policies.as_slice())
                .unwrap_or(&[]);
            match self.pipeline(format!("attribute/{device}/{name}"), stages, Some(&name)) {
                None => kept.push((name, value)),
                Some(pipeline) => {
                    let (out, alerts) = pipeline.apply(Sample {
                        time: now,
                        values: vec![(name, value)],
                    });
                    raised.extend(alerts);
                    kept.extend(out.into_iter().flat_map(|s| s.values));
                }
            }
        }
        for alert in raised {
            self.store_alert(device, &alert.alert, alert.severity, &alert.values)?;
        }
        Ok(kept)
    }

    /// Store reports in the twin and the outbox, in one transaction.
    ///
    /// The outbox gets one `twin` row per device, with no payload: the row
    /// only marks that the device's state changed, and the link publishes
    /// the whole state from `twin` (`Link::publish_twin`). The report's JSON
    /// written into it too was encoded and stored for every report and never
    /// read (BENCHMARKS.md, S2).
    fn store_reports(
        &mut self,
        reports: &[(String, Vec<(String, Value)>)],
    ) -> rusqlite::Result<()> {
        let now = now_ns();
        let mut db = self.deps.db.lock()?;
        let tx = db.transaction()?;
        let mut entries = Vec::with_capacity(reports.len());
        {
            let mut next_version = tx.prepare_cached(
                "UPDATE devices SET reported_version = reported_version + 1 WHERE device = ?1",
            )?;
            let mut upsert = tx.prepare_cached(
                "INSERT INTO twin (device, name, reported, reported_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (device, name) DO UPDATE
                 SET reported = excluded.reported, reported_at = excluded.reported_at",
            )?;
            for (device, attributes) in reports {
                // A device that is not in `devices` has no version to move
                // on: its report is refused rather than kept unversioned.
                if next_version.execute(params![device])? == 0 {
                    return Err(rusqlite::Error::QueryReturnedNoRows);
                }
                outbox::replace_waiting_twin(&tx, device)?;
                for (name, value) in attributes {
                    let json = crate::value::to_json(value).to_string();
                    upsert.execute(params![device, name, json, now as i64])?;
                }
                entries.push(outbox::Entry {
                    kind: Kind::Twin,
                    device: device.clone(),
                    name: String::new(),
                    points: u32::try_from(attributes.len()).unwrap_or(u32::MAX),
                    payload: Vec::new(),
                });
            }
        }
        outbox::insert(&tx, &entries)?;
        tx.commit()
    }

    fn twin_value(&self, device: &str, side: TwinSide, name: &str) -> Option<Value> {
        let sql = match side {
            TwinSide::Reported => "SELECT reported FROM twin WHERE device = ?1 AND name = ?2",
            TwinSide::Desired => "SELECT desired FROM twin WHERE device = ?1 AND name = ?2",
        };
        let stored: Option<Option<String>> = self
            .deps
            .db
            .lock()
            .and_then(|db| {
                db.prepare_cached(sql)?
                    .query_row(params![device, name], |r| r.get(0))
            })
            .optional()
            .unwrap_or_else(|e| {
                tracing::error!(app = %self.deps.app, "reading the twin failed: {e}");
                None
            });
        let json: serde_json::Value = serde_json::from_str(&stored.flatten()?).ok()?;
        self.model_of(device).ok()?.attribute_from_json(name, &json)
    }

    /// The first step of a `record` call of `count` points: the checks
    /// that come before any point is read. Gives the device's model.
    fn admit_points(
        &self,
        device: &str,
        series: &str,
        count: usize,
    ) -> Result<Arc<DeviceModel>, GuestError> {
        if let Some(error) = self.deps.usage.write_error() {
            return Err(GuestError::Unavailable(error.to_string()));
        }
        if let Err(refusal) = self.deps.ingest.admit(device, series, count as u64) {
            tracing::warn!(app = %self.deps.app, device, series, "record refused: {refusal}");
            return Err(GuestError::Limit(refusal.to_string()));
        }
        self.model_of(device)
    }

    /// `record` of points lifted already (`record-batch` reads its points
    /// in place instead: see [`record_in_place`]).
    fn record(&mut self, device: &str, series: &str, points: Vec<Point>) -> Result<(), GuestError> {
        let model = self.admit_points(device, series, points.len())?;
        let mut recording = Recording::new(&model, series, points.len())
            .map_err(|m| self.refuse(device, "record", m))?;
        let read = points
            .into_iter()
            .enumerate()
            .try_for_each(|(index, point)| recording.point(index, point.at, point.values));
        read.map_err(|m| self.refuse(device, "record", m))?;
        self.store_recording(device, series, recording)
    }

    /// Hand a call's checked points on: through the series' policies if it
    /// has any, into the app's pending batch of the series, and to the
    /// writer at once where the app asked for durable calls.
    fn store_recording(
        &mut self,
        device: &str,
        series: &str,
        recording: Recording<'_>,
    ) -> Result<(), GuestError> {
        let points = match recording.points {
            RecordedPoints::Checked(points) => points,
            RecordedPoints::ForPolicies { samples, stages } => {
                let pipeline = self
                    .pipeline(format!("series/{device}/{series}"), stages, None)
                    .expect("a series with policies has a pipeline");
                let mut raised = Vec::new();
                let kept: Vec<Sample> = samples
                    .into_iter()
                    .filter_map(|sample| {
                        let (out, alerts) = pipeline.apply(sample);
                        raised.extend(alerts);
                        out
                    })
                    .collect();
                for alert in raised {
                    self.store_alert(device, &alert.alert, alert.severity, &alert.values)?;
                }
                points_of(&kept)
            }
        };
        if !points.is_empty() {
            self.buffer(device, series, points);
        }
        if self.deps.usage.config().sync_record {
            // Durable before the call returns, as configured.
            self.flush();
            self.deps
                .ingest
                .flush()
                .map_err(|e| GuestError::Unavailable(e.to_string()))?;
        }
        Ok(())
    }

    /// Add checked points to the app's pending batch of the stream.
    fn buffer(&mut self, device: &str, series: &str, points: Points) {
        let (count, bytes) = (points.len(), points.json_estimate());
        let batch = match self.pending.last_mut() {
            Some(last) if last.device == device && last.series == series => last,
            _ => {
                self.pending.push(Batch {
                    device: device.to_string(),
                    series: series.to_string(),
                    ..Batch::default()
                });
                let last = self.pending.len() - 1;
                &mut self.pending[last]
            }
        };
        batch.points.append(points);
        let held = batch.points.size();
        self.deps
            .ingest
            .reserve(device, series, bytes, count as u64);
        self.pending_points += count;
        if self.pending_points >= FLUSH_POINTS || held > (64 << 20) {
            self.flush();
        }
    }

    fn alert(
        &mut self,
        device: &str,
        name: &str,
        severity: Severity,
        values: Vec<(String, Value)>,
    ) -> Result<(), GuestError> {
        Self::limited(&self.alerts, "alerts")?;
        let values = self
            .model_of(device)?
            .check_alert(name, values)
            .map_err(|m| self.refuse(device, "alert", m))?;
        self.store_alert(device, name, severity.into(), &values)
    }

    fn store_alert(
        &mut self,
        device: &str,
        name: &str,
        severity: AlertSeverity,
        values: &[(String, Value)],
    ) -> Result<(), GuestError> {
        let severity = severity.as_str();
        let payload = serde_json::json!({
            "time": now_ns(),
            "severity": severity,
            "values": fields_to_json(values),
        })
        .to_string()
        .into_bytes();
        tracing::info!(app = %self.deps.app, device, alert = name, severity, "alert raised");
        let entry = outbox::Entry {
            kind: Kind::Alert,
            device: device.to_string(),
            name: name.to_string(),
            points: 1,
            payload,
        };
        self.deps
            .db
            .lock()
            .and_then(|db| outbox::insert_alert(&db, &self.deps.usage, entry))
            .map_err(|e| self.unavailable("alert", e))?;
        self.deps.outbox_signal.notify_one();
        Ok(())
    }
}

/// Samples that went through a series' policies, as points.
fn points_of(samples: &[Sample]) -> Points {
    let mut points = Points::with_capacity(samples.len());
    for sample in samples {
        points.begin(sample.time);
        for (name, value) in &sample.values {
            points.field(name, value);
        }
    }
    points
}

/// The points of one `record` call, checked and kept as the host reads
/// them, field by field: `record-batch` reads them where the guest wrote
/// them, without lifting them into `String`s first. Nothing reaches the
/// app's pending batches until every point has passed, so a refused call
/// stores nothing.
struct Recording<'m> {
    check: PointCheck<'m>,
    now: u64,
    points: RecordedPoints<'m>,
    /// The index of the point being read.
    index: usize,
}

enum RecordedPoints<'m> {
    /// Kept as read: the series has no policies.
    Checked(Points),
    /// Kept as samples for the series' policies, made points after them.
    ForPolicies {
        samples: Vec<Sample>,
        stages: &'m [crate::policy::Stage],
    },
}

impl<'m> Recording<'m> {
    /// A recording of `count` points of `series`; refused if the model does
    /// not declare the series.
    fn new(model: &'m DeviceModel, series: &str, count: usize) -> Result<Self, String> {
        let check = model.point_check(series)?;
        let stages = check.policies();
        let points = if stages.is_empty() {
            RecordedPoints::Checked(Points::with_capacity(count.min(FLUSH_POINTS)))
        } else {
            RecordedPoints::ForPolicies {
                samples: Vec::with_capacity(count.min(FLUSH_POINTS)),
                stages,
            }
        };
        Ok(Recording {
            check,
            now: now_ns(),
            points,
            index: 0,
        })
    }

    /// Start point `index`, of `fields` fields, taken at `at` (now if none).
    fn begin(
        &mut self,
        index: usize,
        at: Option<crate::bindings::Time>,
        fields: usize,
    ) -> Result<(), String> {
        self.index = index;
        let time = match at {
            Some(t) => time_to_ns(t)
                .and_then(|ns| plausible_time(ns, self.now))
                .map_err(|m| self.in_point(m))?,
            None => self.now,
        };
        self.check.begin(fields).map_err(|m| self.in_point(m))?;
        match &mut self.points {
            RecordedPoints::Checked(points) => points.begin(time),
            RecordedPoints::ForPolicies { samples, .. } => samples.push(Sample {
                time,
                values: Vec::with_capacity(fields),
            }),
        }
        Ok(())
    }

    /// Check and add one field of the point begun.
    fn field(&mut self, name: &str, value: Value) -> Result<(), String> {
        let (name, value) = match self.check.field(name, value) {
            Ok(checked) => checked,
            Err(m) => return Err(self.in_point(m)),
        };
        match &mut self.points {
            RecordedPoints::Checked(points) => points.field(name, &value),
            RecordedPoints::ForPolicies { samples, .. } => {
                let sample = samples.last_mut().expect("a point begun");
                sample.values.push((name.to_string(), value));
            }
        }
        Ok(())
    }

    /// Point `index`, whose fields are lifted already: [`begin`](Self::begin),
    /// then each [`field`](Self::field).
    fn point<N: AsRef<str>>(
        &mut self,
        index: usize,
        at: Option<crate::bindings::Time>,
        fields: impl IntoIterator<Item = (N, Value), IntoIter: ExactSizeIterator>,
    ) -> Result<(), String> {
        let fields = fields.into_iter();
        self.begin(index, at, fields.len())?;
        for (name, value) in fields {
            self.field(name.as_ref(), value)?;
        }
        Ok(())
    }

    /// An error about the point being read: the first point's as it is, a
    /// later one's naming it.
    fn in_point(&self, message: String) -> String {
        if self.index == 0 {
            message
        } else {
            format!("point {}: {message}", self.index)
        }
    }
}

/// A `point` of `wasmgate:device/types` as `record-batch` reads it: its
/// fields stay in the guest's memory until each is checked and kept.
/// Lifting the list into `Vec<Point>` cost a `String` per field name and a
/// `Vec` per point, about a third of a batch's cost on the host (P2 in
/// BENCHMARKS.md).
#[derive(ComponentType, Lift)]
#[component(record)]
struct PointInPlace {
    at: Option<crate::bindings::Time>,
    values: WasmList<(WasmStr, Value)>,
}

/// `device.record-batch`, linked in place of the generated binding (see
/// [`PointInPlace`]). The store is borrowed in turns: the app's state to
/// admit the call, the guest's memory to read the points into a
/// [`Recording`], the app's state again to store them.
fn record_in_place<T: HasCtx<Device>>(
    mut store: StoreContextMut<'_, T>,
    (handle, series, points): (Resource<DeviceHandle>, WasmStr, WasmList<PointInPlace>),
) -> wasmtime::Result<(Result<(), GuestError>,)> {
    let series = series.to_str(&store)?.into_owned();
    let (device, model) = {
        let state = store.data_mut().ctx();
        let device = state.table.get(&handle)?.id.clone();
        match state.ctx.admit_points(&device, &series, points.len()) {
            Ok(model) => (device, model),
            Err(error) => return Ok((Err(error),)),
        }
    };
    let mut recording = match Recording::new(&model, &series, points.len()) {
        Ok(recording) => recording,
        Err(m) => return Ok((Err(store.data_mut().ctx().ctx.refuse(&device, "record", m)),)),
    };
    let mut read = || -> wasmtime::Result<Result<(), String>> {
        // A point or a name out of the guest's memory traps, as the
        // generated lift would. The points are read one at a time, so a long
        // list is never copied whole; a point's fields, at most `model::MAX_FIELDS`
        // (checked by `begin` before they are read), with one iterator,
        // which sets up wasmtime's lift once rather than for each field.
        let mut fields = Vec::new();
        for index in 0..points.len() {
            let point = points.get(&mut store, index).expect("an index below len")?;
            if let Err(m) = recording.begin(index, point.at, point.values.len()) {
                return Ok(Err(m));
            }
            fields.clear();
            for field in point.values.iter(&mut store)? {
                fields.push(field?);
            }
            for (name, value) in fields.drain(..) {
                let name = name.to_str(&store)?;
                if let Err(m) = recording.field(&name, value) {
                    return Ok(Err(m));
                }
            }
        }
        Ok(Ok(()))
    };
    let read = read()?;
    let state = store.data_mut().ctx();
    Ok((match read {
        Ok(()) => state.ctx.store_recording(&device, &series, recording),
        Err(m) => Err(state.ctx.refuse(&device, "record", m)),
    },))
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

/// The device capability. Its gateway state: the outbox it writes to, the
/// signals it raises, and the directory registered devices are routed in.
pub struct Device {
    pub ingest: IngestSender,
    pub usage: Arc<Usage>,
    /// Signalled when a report or alert is in the outbox.
    pub outbox_signal: Arc<Notify>,
    /// Where registered devices are routed from, for the downlink.
    pub directory: Arc<dyn registration::Routes>,
    /// Signalled when an app registers or unregisters a device.
    pub status_signal: Arc<Notify>,
}

/// An app's device state, and the resource table its device handles live
/// in (its own: no other interface looks up a device handle).
pub struct DeviceState {
    ctx: DeviceCtx,
    table: ResourceTable,
}

impl DeviceState {
    /// Hand the points buffered during the call to the outbox writer.
    pub fn flush(&mut self) {
        self.ctx.flush();
    }
}

impl Capability for Device {
    type Ctx = DeviceState;
    const NAME: &'static str = "device";
    const SCHEMA: &'static str = registration::SCHEMA;

    fn report(&self, app: &ReportScope<'_>) -> Vec<Figure> {
        let registered = registration::count(app.db, app.app).unwrap_or_else(|e| {
            tracing::warn!(
                app = app.app,
                "cannot count the app's registered devices: {e}"
            );
            0
        });
        vec![Figure {
            name: "registered",
            help: "Devices the app registered (indirectly connected devices).",
            kind: FigureKind::Gauge,
            value: registered as u64,
        }]
    }

    fn instance(&self, app: &AppSetup<'_>) -> anyhow::Result<DeviceState> {
        let ctx = DeviceCtx::new(DeviceDeps {
            app: app.app.clone(),
            default_device: app.device.to_string(),
            model: app.model.clone(),
            db: app.conn.clone(),
            ingest: self.ingest.clone(),
            usage: self.usage.clone(),
            outbox_signal: self.outbox_signal.clone(),
            rates: app.rates.clone(),
            device_models: app.device_models.clone(),
            max_devices: app.config.max_devices,
            directory: self.directory.clone(),
            status_signal: self.status_signal.clone(),
        });
        Ok(DeviceState {
            ctx,
            table: ResourceTable::new(),
        })
    }

    fn add_to_linker<T: HasCtx<Device>>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
        fn view<T: HasCtx<Device>>(t: &mut T) -> DeviceView<'_> {
            let state = t.ctx();
            DeviceView {
                ctx: &mut state.ctx,
                table: &mut state.table,
            }
        }
        generated::add_to_linker::<T, DeviceData>(linker, view::<T>)?;
        // `record-batch` reads its points in place (see `PointInPlace`):
        // its generated binding is replaced.
        linker.allow_shadowing(true);
        linker
            .instance("wasmgate:device/device@0.1.0")?
            .func_wrap("[method]device.record-batch", record_in_place::<T>)?;
        linker.allow_shadowing(false);
        Ok(())
    }
}

impl DeviceView<'_> {
    fn id_of(&self, handle: &Resource<DeviceHandle>) -> wasmtime::Result<String> {
        Ok(self.table.get(handle)?.id.clone())
    }
}

impl DeviceView<'_> {
    fn handle(&mut self, id: String) -> wasmtime::Result<Resource<DeviceHandle>> {
        if self.ctx.handles >= MAX_HANDLES {
            wasmtime::bail!("the app holds {MAX_HANDLES} device handles without dropping them");
        }
        let handle = self.table.push(DeviceHandle { id })?;
        self.ctx.handles += 1;
        Ok(handle)
    }
}

impl Host for DeviceView<'_> {
    fn this_device(&mut self) -> wasmtime::Result<Resource<DeviceHandle>> {
        let id = self.ctx.deps.default_device.clone();
        self.handle(id)
    }

    fn register(
        &mut self,
        hardware_id: String,
        model: String,
        metadata: Vec<(String, String)>,
    ) -> wasmtime::Result<Result<Resource<DeviceHandle>, GuestError>> {
        match self.ctx.register(&hardware_id, &model, metadata) {
            Ok(id) => Ok(Ok(self.handle(id)?)),
            Err(e) => Ok(Err(e)),
        }
    }

    fn unregister(&mut self, hardware_id: String) -> wasmtime::Result<Result<(), GuestError>> {
        Ok(self.ctx.unregister(&hardware_id))
    }

    fn report_all(
        &mut self,
        reports: Vec<(Resource<DeviceHandle>, Vec<(String, Value)>)>,
    ) -> wasmtime::Result<Result<(), GuestError>> {
        let reports = reports
            .into_iter()
            .map(|(handle, attributes)| Ok((self.id_of(&handle)?, attributes)))
            .collect::<wasmtime::Result<Vec<_>>>()?;
        Ok(self.ctx.report_all(reports))
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
        Ok(self.ctx.twin_value(&id, TwinSide::Reported, &name))
    }

    fn desired(
        &mut self,
        handle: Resource<DeviceHandle>,
        name: String,
    ) -> wasmtime::Result<Option<Value>> {
        let id = self.id_of(&handle)?;
        Ok(self
            .ctx
            .twin_value(&id, TwinSide::Desired, &name)
            .or_else(|| {
                let model = self.ctx.model_of(&id).ok()?;
                model.default_of(&name).cloned()
            }))
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

    /// Not reached: `Device::add_to_linker` links `record_in_place` in
    /// its place. The generated trait needs it, and it gives the same
    /// result, through the same `Recording`.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_after_policies_are_encoded_as_the_protocol_documents_points() {
        let samples = [
            Sample {
                time: 7,
                values: vec![
                    ("t".into(), Value::Number(21.5)),
                    ("n".into(), Value::Integer(-3)),
                    ("on".into(), Value::Boolean(true)),
                    ("label".into(), Value::Text("a \"b\"\n".into())),
                    ("raw".into(), Value::Bytes(vec![0, 255])),
                    ("whole".into(), Value::Number(2.0)),
                ],
            },
            Sample {
                time: 8,
                values: vec![("t".into(), Value::Number(-1.0))],
            },
        ];
        let (json, ends) = points_of(&samples).to_json();
        let first = &json[..ends[0] as usize];
        let second = &json[ends[0] as usize..ends[1] as usize];
        assert_eq!(ends[1] as usize, json.len());
        let json: serde_json::Value = serde_json::from_slice(first).expect("valid JSON");
        assert_eq!(
            json,
            serde_json::json!({"time": 7, "values": {"t": 21.5, "n": -3, "on": true, "label": "a \"b\"\n", "raw": "AP8=", "whole": 2.0}})
        );
        assert!(
            String::from_utf8(first.to_vec())
                .expect("utf8")
                .contains("\"whole\":2.0"),
            "numbers stay numbers"
        );
        let json: serde_json::Value = serde_json::from_slice(second).expect("valid JSON");
        assert_eq!(json, serde_json::json!({"time": 8, "values": {"t": -1.0}}));
    }

    const MODEL: &str = r#"{"series": {
        "plain": {"fields": {"v": {"type": "number"}, "n": {"type": "integer", "range": [0, 9]}}},
        "sampled": {"fields": {"v": {"type": "number"}}, "policies": [{"sample": {"every": 2}}]}
    }}"#;

    /// Point `i`'s time in these tests: `T0 + i + 1`, plausibly recent.
    const T0: u64 = 1_764_000_000_000_000_000;

    /// Read points into a recording as `record` does.
    fn read<'m>(
        model: &'m DeviceModel,
        series: &str,
        points: &[&[(&str, Value)]],
    ) -> Result<Recording<'m>, String> {
        let mut recording = Recording::new(model, series, points.len())?;
        for (index, fields) in points.iter().enumerate() {
            recording.point(
                index,
                Some(crate::bindings::Time::Nanoseconds(T0 + index as u64 + 1)),
                fields.iter().map(|(name, value)| (*name, value.clone())),
            )?;
        }
        Ok(recording)
    }

    #[test]
    fn a_recording_keeps_each_point_as_it_is_read_with_integers_widened() {
        let model = DeviceModel::parse(MODEL).expect("model");
        let recording = read(
            &model,
            "plain",
            &[
                &[("v", Value::Integer(2)), ("n", Value::Integer(3))],
                &[("n", Value::Integer(4)), ("v", Value::Number(0.5))],
            ],
        )
        .expect("accepted");
        let RecordedPoints::Checked(points) = recording.points else {
            panic!("a series without policies is kept as read");
        };
        let (json, ends) = points.to_json();
        let text = String::from_utf8(json).expect("utf8");
        let first = format!(r#"{{"time":{},"values":{{"v":2.0,"n":3}}}}"#, T0 + 1);
        let second = format!(r#"{{"time":{},"values":{{"n":4,"v":0.5}}}}"#, T0 + 2);
        assert_eq!(text, format!("{first}{second}"));
        assert_eq!(ends, [first.len() as u32, text.len() as u32]);
    }

    #[test]
    fn a_recording_refuses_a_bad_field_naming_its_point_after_the_first() {
        let model = DeviceModel::parse(MODEL).expect("model");
        for (points, expected) in [
            (
                &[
                    &[("v", Value::Number(1.0))][..],
                    &[("n", Value::Integer(10))][..],
                ][..],
                "point 1: series `plain` field `n`: 10 is out of range [0, 9]",
            ),
            (
                &[&[("v", Value::Number(1.0)), ("v", Value::Number(2.0))][..]][..],
                "series `plain` field `v` given twice",
            ),
            (
                &[
                    &[("v", Value::Number(1.0))][..],
                    &[("w", Value::Number(1.0))][..],
                ][..],
                "point 1: unknown field of series `plain`: `w` (the model declares: n, v)",
            ),
            (
                &[&[("v", Value::Number(1.0))][..], &[][..]][..],
                "point 1: a point of series `plain` needs at least one field",
            ),
        ] {
            let error = read(&model, "plain", points).err().expect(expected);
            assert_eq!(error, expected);
        }
        let error = read(&model, "nope", &[]).err().expect("unknown series");
        assert!(error.starts_with("unknown series `nope`"), "{error}");
    }

    #[test]
    fn a_series_with_policies_keeps_its_points_as_samples_for_them() {
        let model = DeviceModel::parse(MODEL).expect("model");
        let recording = read(
            &model,
            "sampled",
            &[&[("v", Value::Integer(1))], &[("v", Value::Number(2.0))]],
        )
        .expect("accepted");
        let RecordedPoints::ForPolicies { samples, stages } = recording.points else {
            panic!("a series with policies keeps samples");
        };
        assert_eq!(stages.len(), 1);
        assert_eq!(
            samples
                .iter()
                .map(|s| (s.time, s.values.clone()))
                .collect::<Vec<_>>(),
            [
                (T0 + 1, vec![("v".to_string(), Value::Number(1.0))]),
                (T0 + 2, vec![("v".to_string(), Value::Number(2.0))]),
            ]
        );
    }
}

//! The bus-gateway example (examples/busgateway), after the Oracle device
//! client's `GatewayDevice`: the app reads a bus of simulated temperature
//! sensors and registers each one, by its hardware id, as a device of its
//! own. Each sensor then has its own twin, telemetry and actions under
//! `wg/v1/{gateway}/bus.{hardware id}/...`, and the cloud's desired changes
//! and actions for it come back to this app with the sensor's device id.
//!
//! On the bus device itself: `scan` registers the sensors again (what is
//! already registered keeps its id), `unplug(hardware id)` unregisters one.
//! On each sensor: the writable `label`, and the `identify` action (returns
//! the hardware id it was registered with).

use std::collections::BTreeMap;
use wasmgate_guest::{
    App, Config, Device, Fields, Timestamp, Value, field, info, register, report_all, this_device,
    unregister, warn,
};

/// The most reports the gateway takes in one `report_all`.
const MAX_REPORTS_PER_CALL: usize = 1000;

/// A sensor on the bus and the device it was registered as.
struct Sensor {
    hardware_id: String,
    device: Option<Device>,
    label: String,
    temperature: f64,
    step: u64,
}

struct BusGateway {
    /// By hardware id.
    sensors: BTreeMap<String, Sensor>,
}

impl Sensor {
    fn read(&mut self) -> f64 {
        self.step += 1;
        let phase = self.hardware_id.bytes().map(u64::from).sum::<u64>() as f64;
        self.temperature = 20.0 + 3.0 * ((self.step as f64 + phase) / 10.0).sin();
        (self.temperature * 100.0).round() / 100.0
    }
}

impl BusGateway {
    /// Register every sensor on the bus that is not registered yet.
    fn scan(&mut self) -> usize {
        let mut registered = 0;
        for (n, sensor) in self.sensors.values_mut().enumerate() {
            if sensor.device.is_some() {
                continue;
            }
            let metadata = [
                ("manufacturer".to_string(), "Acme Sensors".to_string()),
                ("model_number".to_string(), "TH-100".to_string()),
                ("serial_number".to_string(), format!("SN-{:04}", 1000 + n)),
            ];
            match register(&sensor.hardware_id, "sensor", &metadata) {
                Ok(device) => {
                    info!(
                        "sensor {} registered as {}",
                        sensor.hardware_id,
                        device.id()
                    );
                    sensor.device = Some(device);
                    registered += 1;
                }
                Err(e) => warn!(
                    "sensor {} not registered: {}: {}",
                    sensor.hardware_id,
                    e.kind(),
                    e.message()
                ),
            }
        }
        registered
    }

    fn by_device(&mut self, device: &str) -> Option<&mut Sensor> {
        self.sensors
            .values_mut()
            .find(|s| s.device.as_ref().is_some_and(|d| d.id() == device))
    }
}

impl App for BusGateway {
    fn init(config: Config, _previous: Option<Vec<u8>>) -> Result<Self, String> {
        let count: usize = config.parse_or("sensors", 4)?;
        let sensors = (1..=count)
            .map(|n| {
                let hardware_id = format!("th-{n:02}");
                let label = this_device_label(&hardware_id);
                (
                    hardware_id.clone(),
                    Sensor {
                        hardware_id,
                        device: None,
                        label,
                        temperature: 20.0,
                        step: 0,
                    },
                )
            })
            .collect();
        let mut app = BusGateway { sensors };
        let registered = app.scan();
        info!("bus scanned: {count} sensors, {registered} registered");
        Ok(app)
    }

    fn on_tick(&mut self, _now: Timestamp) {
        let mut online = 0i64;
        // The whole scan's reports go in one `report_all`: one step for the
        // gateway to store, however many sensors the bus has.
        let mut reports = Vec::with_capacity(self.sensors.len() + 1);
        for sensor in self.sensors.values_mut() {
            let value = sensor.read();
            let Some(device) = &sensor.device else {
                continue;
            };
            online += 1;
            if let Err(e) = device.record("temperature", None, &[field("celsius", value)]) {
                warn!("{}: record refused: {}", sensor.hardware_id, e.message());
            }
            let attributes = vec![
                field("temperature", value),
                field("label", sensor.label.as_str()),
            ];
            reports.push((device, attributes));
        }
        let bus = this_device();
        reports.push((&bus, vec![field("sensors", online)]));
        for chunk in reports.chunks(MAX_REPORTS_PER_CALL) {
            if let Err(e) = report_all(chunk) {
                warn!("bus scan's reports refused: {}", e.message());
            }
        }
    }

    fn on_desired(&mut self, device: String, changes: Fields) -> Result<(), String> {
        let sensor = self
            .by_device(&device)
            .ok_or_else(|| format!("{device} is not a sensor of this bus"))?;
        for (name, value) in changes {
            match (name.as_str(), value) {
                ("label", Value::Text(label)) => {
                    info!("{} ({device}) label: {label}", sensor.hardware_id);
                    sensor.label = label;
                }
                (other, _) => return Err(format!("{other} cannot be set")),
            }
        }
        Ok(())
    }

    fn on_action(
        &mut self,
        device: String,
        name: String,
        argument: Option<Value>,
    ) -> Result<Option<Value>, String> {
        let bus = this_device().id();
        match (name.as_str(), argument) {
            ("scan", _) if device == bus => Ok(Some(Value::Integer(self.scan() as i64))),
            ("unplug", Some(Value::Text(hardware_id))) if device == bus => {
                let sensor = self
                    .sensors
                    .get_mut(&hardware_id)
                    .ok_or_else(|| format!("no sensor {hardware_id} on the bus"))?;
                unregister(&hardware_id).map_err(|e| e.message().to_string())?;
                sensor.device = None;
                info!("sensor {hardware_id} unplugged");
                Ok(Some(Value::Text(hardware_id)))
            }
            ("identify", _) => {
                let sensor = self
                    .by_device(&device)
                    .ok_or_else(|| format!("{device} is not a sensor of this bus"))?;
                info!("{} ({device}) identifies itself", sensor.hardware_id);
                Ok(Some(Value::Text(sensor.hardware_id.clone())))
            }
            (other, _) => Err(format!("unknown action {other} on {device}")),
        }
    }
}

/// A sensor's label before the cloud sets one.
fn this_device_label(hardware_id: &str) -> String {
    format!("sensor {hardware_id}")
}

wasmgate_guest::app!(BusGateway);

//! {{name}}: a wasmgate app, made by `wasmgate new` as a place to start.
//!
//! A room thermostat: on every tick it heats the room while it is colder
//! than the setpoint (and lets it cool otherwise), records a `climate`
//! point and reports its attributes. The cloud may change `setpoint`; `save`
//! hands the room's temperature to the next instance.

use wasmgate_guest::{App, Config, Device, Fields, Timestamp, Value, field, info, warn};

struct Room {
    /// The app's own device: one handle for the app's life.
    device: Device,
    temperature: f64,
    setpoint: f64,
    heating: bool,
    ticks: i64,
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

impl App for Room {
    fn init(config: Config, previous: Option<Vec<u8>>) -> Result<Self, String> {
        let device = wasmgate_guest::this_device();
        let setpoint = device
            .desired("setpoint")
            .and_then(|v| v.as_f64())
            .unwrap_or(21.0);
        // The instance before this one handed over the room's temperature;
        // a first start takes it from the config.
        let temperature = match previous.and_then(|bytes| <[u8; 8]>::try_from(bytes).ok()) {
            Some(bytes) => f64::from_le_bytes(bytes),
            None => config.parse_or("start_temperature", 18.0)?,
        };
        info!(
            "started on {}: {temperature:.2} °C, setpoint {setpoint:.1} °C",
            device.id()
        );
        Ok(Room {
            device,
            temperature,
            setpoint,
            heating: false,
            ticks: 0,
        })
    }

    fn save(&mut self) -> Option<Vec<u8>> {
        Some(self.temperature.to_le_bytes().to_vec())
    }

    fn on_tick(&mut self, _now: Timestamp) {
        self.heating = self.temperature < self.setpoint;
        self.temperature = round2(self.temperature + if self.heating { 0.5 } else { -0.25 });
        self.ticks += 1;

        let point = [field("temperature", self.temperature)];
        if let Err(e) = self.device.record("climate", None, &point) {
            warn!("record refused: {}: {}", e.kind(), e.message());
        }
        let attributes = [
            field("temperature", self.temperature),
            field("heating", self.heating),
            field("setpoint", self.setpoint),
            field("ticks", self.ticks),
        ];
        if let Err(e) = self.device.report(&attributes) {
            warn!("report refused: {}: {}", e.kind(), e.message());
        }
        info!(
            "tick {}: {:.2} °C, heating {} (setpoint {:.1} °C)",
            self.ticks,
            self.temperature,
            if self.heating { "on" } else { "off" },
            self.setpoint
        );
    }

    fn on_desired(&mut self, _device: String, changes: Fields) -> Result<(), String> {
        for (name, value) in changes {
            match (name.as_str(), value.as_f64()) {
                ("setpoint", Some(setpoint)) => {
                    info!("setpoint changed {:.1} -> {setpoint:.1} °C", self.setpoint);
                    self.setpoint = setpoint;
                }
                _ => return Err(format!("cannot apply {name}")),
            }
        }
        Ok(())
    }

    fn on_action(
        &mut self,
        _device: String,
        name: String,
        _argument: Option<Value>,
    ) -> Result<Option<Value>, String> {
        Err(format!("no action {name}"))
    }
}

wasmgate_guest::app!(Room);

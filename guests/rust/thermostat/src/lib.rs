//! The thermostat example app.
//!
//! On every tick it reads the room's temperature and humidity, records a
//! `climate` point, switches the heating with a little hysteresis and
//! reports its attributes. The cloud can change the `setpoint` attribute and
//! call the `reset` action, which zeroes the tick counter kept in storage.
//!
//! The room is a real Modbus device when the config names one
//! (`modbus_endpoint`, and `modbus_unit`, 1 by default; the app must be
//! granted it): input registers 0 and 1 hold °C and % rh in tenths, and coil
//! 0 is the heating, as `wasmgate sim modbus` serves them. Otherwise it is
//! simulated inside the app.

use wasmgate_guest::modbus::{self, Unit};
use wasmgate_guest::{App, Config, Fields, Severity, Timestamp, Value, field, info, storage, warn};

/// Storage key of the tick counter (u64, little endian).
const TICKS_KEY: &str = "ticks";

struct Thermostat {
    sensor: Room,
    /// The room on Modbus, if the config names one.
    device: Option<Unit>,
    setpoint: f64,
    heating: bool,
    ticks: u64,
    overheat_at: f64,
}

/// A room whose temperature drifts toward the outside when the heating is off
/// and warms up when it is on; a deterministic pseudo-random wobble on top.
struct Room {
    temperature: f64,
    seed: u64,
    step: u64,
}

impl Room {
    fn next(&mut self, heating: bool) -> (f64, f64) {
        // xorshift64: deterministic, no imports needed.
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let noise = (self.seed % 1000) as f64 / 1000.0 - 0.5;
        self.step += 1;
        self.temperature += if heating { 0.4 } else { -0.25 } + noise * 0.1;
        let humidity = 45.0 + 8.0 * ((self.step as f64) / 10.0).sin() + noise;
        (round(self.temperature), round(humidity))
    }
}

/// Read temperature and humidity from the Modbus room.
fn read_room(device: &Unit) -> Result<(f64, f64), modbus::IoError> {
    let words = device.read_input_registers(0, 2)?;
    let tenths = |w: u16| f64::from(w as i16) / 10.0;
    match words[..] {
        [t, h] => Ok((tenths(t), tenths(h))),
        _ => Err(modbus::IoError::Closed(format!(
            "{} registers came back, not 2",
            words.len()
        ))),
    }
}

fn round(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn load_ticks() -> u64 {
    match storage::get(TICKS_KEY) {
        Ok(Some(bytes)) if bytes.len() == 8 => {
            u64::from_le_bytes(bytes.try_into().unwrap_or([0; 8]))
        }
        _ => 0,
    }
}

impl App for Thermostat {
    fn init(config: Config, previous: Option<Vec<u8>>) -> Result<Self, String> {
        let device = wasmgate_guest::this_device();
        let setpoint = device
            .desired("setpoint")
            .and_then(|v| v.as_f64())
            .unwrap_or(21.0);
        // A hot swap hands over the room temperature; otherwise start from config.
        let handed_over = previous.and_then(|bytes| <[u8; 8]>::try_from(bytes).ok());
        let temperature = match handed_over {
            Some(bytes) => f64::from_le_bytes(bytes),
            None => config.parse_or("start_temperature", 18.0)?,
        };
        let room = match config.get("modbus_endpoint") {
            Some(endpoint) => {
                let unit = config.parse_or("modbus_unit", 1u8)?;
                info!("the room is the Modbus device at {endpoint}, unit {unit}");
                Some(Unit::new(endpoint, unit))
            }
            None => None,
        };
        let app = Thermostat {
            device: room,
            sensor: Room {
                temperature,
                seed: config.parse_or("seed", 0x5eed_u64)?.max(1),
                step: 0,
            },
            setpoint,
            heating: false,
            ticks: load_ticks(),
            overheat_at: config.parse_or("overheat_at", 28.0)?,
        };
        info!(
            "thermostat on {}: setpoint {:.1} °C, {} ticks so far",
            device.id(),
            app.setpoint,
            app.ticks
        );
        Ok(app)
    }

    fn save(&mut self) -> Option<Vec<u8>> {
        Some(self.sensor.temperature.to_le_bytes().to_vec())
    }

    fn on_tick(&mut self, _now: Timestamp) {
        let device = wasmgate_guest::this_device();
        let (temperature, humidity) = match &self.device {
            None => self.sensor.next(self.heating),
            Some(room) => match read_room(room) {
                Ok(reading) => reading,
                Err(e) => {
                    // The device is away: nothing to record this tick; the
                    // next read connects again.
                    warn!("cannot read the room ({}): {e:?}", modbus::kind(&e));
                    return;
                }
            },
        };
        // Hysteresis of half a degree either side of the setpoint.
        let was_heating = self.heating;
        if temperature < self.setpoint - 0.5 {
            self.heating = true;
        } else if temperature > self.setpoint + 0.5 {
            self.heating = false;
        }
        if let Some(room) = &self.device
            && (self.heating != was_heating || self.ticks == 0)
            && let Err(e) = room.write_coil(0, self.heating)
        {
            warn!("cannot switch the heating ({}): {e:?}", modbus::kind(&e));
            self.heating = was_heating;
        }
        if self.device.is_some() {
            self.sensor.temperature = temperature;
        }
        self.ticks += 1;
        if let Err(e) = storage::set(TICKS_KEY, &self.ticks.to_le_bytes()) {
            warn!(
                "could not store the tick counter: {}: {}",
                e.kind(),
                e.message()
            );
        }

        let point = [
            field("temperature", temperature),
            field("humidity", humidity),
        ];
        if let Err(e) = device.record("climate", None, &point) {
            warn!("record refused: {}: {}", e.kind(), e.message());
        }
        let attributes = [
            field("temperature", temperature),
            field("heating", self.heating),
            field("setpoint", self.setpoint),
            field("ticks", self.ticks as i64),
        ];
        if let Err(e) = device.report(&attributes) {
            warn!("report refused: {}: {}", e.kind(), e.message());
        }
        if temperature > self.overheat_at {
            let values = [field("temperature", temperature)];
            if let Err(e) = device.alert("overheat", Severity::Warning, &values) {
                warn!("alert refused: {}: {}", e.kind(), e.message());
            }
        }
        info!(
            "tick {}: {temperature:.2} °C, {humidity:.1} % rh, heating {} (setpoint {:.1} °C)",
            self.ticks,
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
        match name.as_str() {
            "reset" => {
                let before = self.ticks;
                self.ticks = 0;
                storage::set(TICKS_KEY, &0u64.to_le_bytes())
                    .map_err(|e| e.message().to_string())?;
                info!("reset: tick counter was {before}");
                Ok(Some(Value::Integer(before as i64)))
            }
            other => Err(format!("unknown action {other}")),
        }
    }
}

wasmgate_guest::app!(Thermostat);

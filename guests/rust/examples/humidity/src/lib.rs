//! The humidity-sensor example (examples/humidity).
//!
//! Every tick it reads a simulated sensor, adds its calibration offset and
//! records the reading as a `humidity` point; the device model's `window`
//! policy makes the host send the mean of every 10 readings instead of each
//! one. It reports the last reading, the offset and how many readings it took.
//! Two actions: `calibrate(offset)` sets the offset added to later readings,
//! `reset` zeroes the reading counter and the offset. Both survive restarts
//! (they are kept in storage).

use wasmgate_guest::{App, Config, Timestamp, Value, field, info, storage, warn};

const OFFSET_KEY: &str = "offset";
const READINGS_KEY: &str = "readings";

struct Humidity {
    sensor: Sensor,
    offset: f64,
    readings: u64,
}

/// A sensor drifting slowly around 50 %RH, with a deterministic wobble.
struct Sensor {
    seed: u64,
    step: u64,
}

impl Sensor {
    fn read(&mut self) -> f64 {
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        self.step += 1;
        let noise = (self.seed % 1000) as f64 / 1000.0 - 0.5;
        50.0 + 10.0 * (self.step as f64 / 25.0).sin() + noise * 2.0
    }
}

fn round(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn load<const N: usize>(key: &str) -> Option<[u8; N]> {
    storage::get(key).ok().flatten()?.try_into().ok()
}

fn keep(key: &str, bytes: &[u8]) {
    if let Err(e) = storage::set(key, bytes) {
        warn!("could not store {key}: {}: {}", e.kind(), e.message());
    }
}

impl App for Humidity {
    fn init(config: Config, _previous: Option<Vec<u8>>) -> Result<Self, String> {
        let app = Humidity {
            sensor: Sensor {
                seed: config.parse_or("seed", 0x4d1d_u64)?.max(1),
                step: 0,
            },
            offset: load(OFFSET_KEY).map(f64::from_le_bytes).unwrap_or(0.0),
            readings: load(READINGS_KEY).map(u64::from_le_bytes).unwrap_or(0),
        };
        info!(
            "humidity sensor: offset {:+.2} %RH, {} readings so far",
            app.offset, app.readings
        );
        Ok(app)
    }

    fn on_tick(&mut self, _now: Timestamp) {
        let device = wasmgate_guest::this_device();
        let humidity = round((self.sensor.read() + self.offset).clamp(0.0, 100.0));
        self.readings += 1;
        keep(READINGS_KEY, &self.readings.to_le_bytes());
        if let Err(e) = device.record("humidity", None, &[field("humidity", humidity)]) {
            warn!("record refused: {}: {}", e.kind(), e.message());
        }
        let attributes = [
            field("humidity", humidity),
            field("offset", self.offset),
            field("readings", self.readings as i64),
        ];
        if let Err(e) = device.report(&attributes) {
            warn!("report refused: {}: {}", e.kind(), e.message());
        }
        info!(
            "reading {}: {humidity:.2} %RH (offset {:+.2})",
            self.readings, self.offset
        );
    }

    fn on_action(
        &mut self,
        _device: String,
        name: String,
        argument: Option<Value>,
    ) -> Result<Option<Value>, String> {
        match (name.as_str(), argument.as_ref().and_then(Value::as_f64)) {
            ("calibrate", Some(offset)) => {
                info!("calibrated: offset {:+.2} -> {offset:+.2} %RH", self.offset);
                self.offset = offset;
                keep(OFFSET_KEY, &offset.to_le_bytes());
                Ok(Some(Value::Number(offset)))
            }
            ("reset", _) => {
                let before = self.readings;
                self.readings = 0;
                self.offset = 0.0;
                keep(READINGS_KEY, &0u64.to_le_bytes());
                keep(OFFSET_KEY, &0f64.to_le_bytes());
                info!("reset: {before} readings, offset back to 0");
                Ok(Some(Value::Integer(before as i64)))
            }
            (other, _) => Err(format!("unknown action {other}")),
        }
    }
}

wasmgate_guest::app!(Humidity);

//! The data-logger example (examples/datalogger), after the iobeam client's
//! data stores: several time series recorded at a high rate with their own
//! timestamps, batched by the host, and kept in the outbox through a broker
//! outage.
//!
//! Every tick (100 ms by default) it records:
//! - `vibration`: `rate_hz` points (default 1000 a second, so 100 a tick)
//!   in one `record-batch`, each with its measurement time in microseconds,
//!   an acceleration and a sequence number;
//! - `temperature`: one point a tick, with a sequence number;
//! - `power`: one point every 10 ticks, with a sequence number.
//!
//! Sequence numbers restart at 0 with the app, so a consumer can check that
//! nothing was lost or reordered. Every 10 ticks it logs what it recorded.

use wasmgate_guest::{App, Config, Point, Time, Timestamp, Value, field, info, warn};

struct DataLogger {
    /// Vibration points a tick.
    per_tick: u64,
    /// Microseconds between two vibration points.
    spacing_us: u64,
    ticks: u64,
    vibration: u64,
    temperature: u64,
    power: u64,
    refused: u64,
}

impl App for DataLogger {
    fn init(config: Config, _previous: Option<Vec<u8>>) -> Result<Self, String> {
        let rate_hz: u64 = config.parse_or("rate_hz", 1000)?;
        let tick_ms: u64 = config.parse_or("tick_ms", 100)?;
        if rate_hz == 0 || tick_ms == 0 || !(rate_hz * tick_ms).is_multiple_of(1000) {
            return Err(format!(
                "rate_hz ({rate_hz}) × tick_ms ({tick_ms}) must be a whole number of points a tick"
            ));
        }
        info!("data logger: vibration at {rate_hz} Hz, a tick every {tick_ms} ms");
        Ok(DataLogger {
            per_tick: rate_hz * tick_ms / 1000,
            spacing_us: 1_000_000 / rate_hz,
            ticks: 0,
            vibration: 0,
            temperature: 0,
            power: 0,
            refused: 0,
        })
    }

    fn on_tick(&mut self, now: Timestamp) {
        let device = wasmgate_guest::this_device();
        let now_us = now / 1000;
        let start_us = now_us.saturating_sub(self.per_tick * self.spacing_us);
        let points: Vec<Point> = (0..self.per_tick)
            .map(|k| {
                let seq = self.vibration + k;
                let at = start_us + k * self.spacing_us;
                let accel = (seq as f64 * 0.05).sin() * 0.3;
                Point {
                    at: Some(Time::Microseconds(at)),
                    values: vec![field("accel", accel), field("seq", seq as i64)],
                }
            })
            .collect();
        match device.record_batch("vibration", &points) {
            Ok(()) => self.vibration += self.per_tick,
            Err(e) => {
                self.refused += self.per_tick;
                warn!("vibration refused: {}: {}", e.kind(), e.message());
            }
        }
        let celsius = 40.0 + (self.ticks as f64 / 50.0).sin() * 5.0;
        let point = [
            field("celsius", celsius),
            field("seq", self.temperature as i64),
        ];
        match device.record("temperature", None, &point) {
            Ok(()) => self.temperature += 1,
            Err(e) => warn!("temperature refused: {}: {}", e.kind(), e.message()),
        }
        if self.ticks.is_multiple_of(10) {
            let watts = 1200.0 + (self.ticks % 70) as f64;
            let point = [field("watts", watts), field("seq", self.power as i64)];
            match device.record("power", None, &point) {
                Ok(()) => self.power += 1,
                Err(e) => warn!("power refused: {}: {}", e.kind(), e.message()),
            }
        }
        self.ticks += 1;
        if self.ticks.is_multiple_of(10) {
            info!(
                "recorded vibration {} temperature {} power {} (refused {})",
                self.vibration, self.temperature, self.power, self.refused
            );
        }
    }

    fn on_action(
        &mut self,
        _device: String,
        name: String,
        _argument: Option<Value>,
    ) -> Result<Option<Value>, String> {
        match name.as_str() {
            "counts" => Ok(Some(Value::Text(format!(
                "vibration {} temperature {} power {}",
                self.vibration, self.temperature, self.power
            )))),
            other => Err(format!("unknown action {other}")),
        }
    }
}

wasmgate_guest::app!(DataLogger);

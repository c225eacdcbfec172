//! Test guest: one value per tick from its config (`values = "1,2.5,3"`),
//! recorded as the `readings` series (field `v`) at time
//! `start_ms + i * step_ms` (milliseconds, so the host's unit conversion is
//! used) and reported as the attribute `level`. Logs when it has replayed
//! them all.

use wasmgate_guest::{App, Config, Time, Timestamp, field, info, this_device, warn};

struct ReplayValues {
    values: Vec<f64>,
    next: usize,
    start_ms: u64,
    step_ms: u64,
}

impl App for ReplayValues {
    fn init(config: Config, _previous: Option<Vec<u8>>) -> Result<Self, String> {
        let values = config
            .get("values")
            .unwrap_or("")
            .split(',')
            .filter(|s| !s.trim().is_empty())
            .map(|s| {
                s.trim()
                    .parse::<f64>()
                    .map_err(|e| format!("bad value {s:?}: {e}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ReplayValues {
            values,
            next: 0,
            start_ms: config.parse_or("start_ms", 1_700_000_000_000)?,
            step_ms: config.parse_or("step_ms", 100)?,
        })
    }

    fn on_tick(&mut self, _now: Timestamp) {
        let Some(&v) = self.values.get(self.next) else {
            return;
        };
        let at = Time::Milliseconds(self.start_ms + self.next as u64 * self.step_ms);
        let device = this_device();
        if let Err(e) = device.record("readings", Some(at), &[field("v", v)]) {
            warn!("record refused: {}: {}", e.kind(), e.message());
        }
        if let Err(e) = device.report(&[field("level", v)]) {
            warn!("report refused: {}: {}", e.kind(), e.message());
        }
        self.next += 1;
        if self.next == self.values.len() {
            info!("replayed {} values", self.values.len());
        }
    }
}

wasmgate_guest::app!(ReplayValues);

//! Benchmark guest: on every tick records `calls` batches of `batch` points
//! of the `samples` series (fields `v`, a number, and `n`, an integer) with
//! `record-batch`, until `total` points are recorded; then logs "done".
//! With `series` = K > 1, the batches go to `samples0` .. `samples{K-1}` in
//! turn (the model must declare them).

use wasmgate_guest::{App, Config, Point, Time, Timestamp, Value, info, this_device, warn};

struct BenchIngest {
    total: u64,
    batch: u64,
    calls: u64,
    series: u64,
    batches: u64,
    recorded: u64,
}

impl App for BenchIngest {
    fn init(config: Config, _previous: Option<Vec<u8>>) -> Result<Self, String> {
        Ok(BenchIngest {
            total: config.parse_or("total", 1_000_000)?,
            batch: config.parse_or("batch", 1000)?,
            calls: config.parse_or("calls", 10)?,
            series: config.parse_or("series", 1)?,
            batches: 0,
            recorded: 0,
        })
    }

    fn on_tick(&mut self, now: Timestamp) {
        let device = this_device();
        for _ in 0..self.calls {
            if self.recorded >= self.total {
                return;
            }
            let n = self.batch.min(self.total - self.recorded);
            let points: Vec<Point> = (0..n)
                .map(|i| {
                    let k = self.recorded + i;
                    Point {
                        at: Some(Time::Nanoseconds(now + k)),
                        values: vec![
                            ("v".to_string(), Value::Number(k as f64 * 0.5)),
                            ("n".to_string(), Value::Integer(k as i64)),
                        ],
                    }
                })
                .collect();
            let series = if self.series > 1 {
                format!("samples{}", self.batches % self.series)
            } else {
                "samples".to_string()
            };
            if let Err(e) = device.record_batch(&series, &points) {
                warn!("record refused: {}: {}", e.kind(), e.message());
                return;
            }
            self.recorded += n;
            self.batches += 1;
            if self.recorded >= self.total {
                info!("done: recorded {} points", self.recorded);
            }
        }
    }
}

wasmgate_guest::app!(BenchIngest);

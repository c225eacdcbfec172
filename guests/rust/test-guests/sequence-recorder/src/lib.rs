//! Test guest: records the numbered sequence 1, 2, 3, ... as the `seq`
//! series (field `n`), `per_tick` points per tick in one `record-batch`,
//! and raises the `milestone` alert every `alert_every` points; with
//! `report_last = true` it reports the last number, as the attribute
//! `recorded`, once it has recorded `stop_after`. Its next
//! number is in storage, written before the points are recorded, so after a
//! crash it continues without reusing a number. It logs the last number
//! whose `record-batch` returned, and every refusal.

use wasmgate_guest::{
    App, Config, Point, Severity, Timestamp, field, info, storage, this_device, warn,
};

struct SequenceRecorder {
    next: i64,
    per_tick: i64,
    alert_every: i64,
    stop_after: i64,
    report_last: bool,
    refusals: u64,
}

impl App for SequenceRecorder {
    fn init(config: Config, _previous: Option<Vec<u8>>) -> Result<Self, String> {
        let next = match storage::get("next").map_err(|e| e.message().to_string())? {
            Some(bytes) => String::from_utf8_lossy(&bytes)
                .parse()
                .map_err(|e| format!("bad next: {e}"))?,
            None => 1,
        };
        info!("sequence-recorder starting at {next}");
        Ok(SequenceRecorder {
            next,
            per_tick: config.parse_or("per_tick", 1)?,
            alert_every: config.parse_or("alert_every", 0)?,
            stop_after: config.parse_or("stop_after", i64::MAX)?,
            report_last: config.parse_or("report_last", false)?,
            refusals: 0,
        })
    }

    fn on_tick(&mut self, _now: Timestamp) {
        if self.next > self.stop_after {
            return;
        }
        let first = self.next;
        let last = (first + self.per_tick - 1).min(self.stop_after);
        // Claim the numbers first: a crash after this never reuses them.
        if let Err(e) = storage::set("next", (last + 1).to_string().as_bytes()) {
            warn!("storage refused: {}: {}", e.kind(), e.message());
            return;
        }
        self.next = last + 1;
        let points: Vec<Point> = (first..=last)
            .map(|n| Point {
                at: None,
                values: vec![field("n", n)],
            })
            .collect();
        let device = this_device();
        match device.record_batch("seq", &points) {
            Ok(()) => info!("recorded through {last}"),
            Err(e) => {
                self.refusals += 1;
                warn!(
                    "record refused ({} so far): {}: {} (points {first}..={last})",
                    self.refusals,
                    e.kind(),
                    e.message()
                );
            }
        }
        if self.alert_every > 0 {
            for n in first..=last {
                if n % self.alert_every == 0
                    && let Err(e) = device.alert("milestone", Severity::Info, &[field("n", n)])
                {
                    warn!("alert refused: {}: {}", e.kind(), e.message());
                }
            }
        }
        if self.report_last
            && last == self.stop_after
            && let Err(e) = device.report(&[field("recorded", last)])
        {
            warn!("report refused: {}: {}", e.kind(), e.message());
        }
    }
}

wasmgate_guest::app!(SequenceRecorder);

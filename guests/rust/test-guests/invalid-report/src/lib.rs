//! Test guest: on every tick tries values its device model refuses (out of
//! range, wrong type, unknown name, not finite) next to one valid report, and
//! logs the error the host gave back for each; then the same through
//! `report-all`, several reports in one call, and through `record-batch`,
//! several points in one call.

use wasmgate_guest::{
    App, Config, Point, Severity, Timestamp, Value, field, info, report_all, this_device,
};

struct InvalidReport;

fn outcome(r: Result<(), wasmgate_guest::Error>) -> String {
    match r {
        Ok(()) => "accepted".to_string(),
        Err(e) => format!("refused ({}: {})", e.kind(), e.message()),
    }
}

impl App for InvalidReport {
    fn init(_config: Config, _previous: Option<Vec<u8>>) -> Result<Self, String> {
        Ok(InvalidReport)
    }

    fn on_tick(&mut self, _now: Timestamp) {
        let d = this_device();
        info!(
            "out-of-range: {}",
            outcome(d.report(&[field("level", 250.0)]))
        );
        info!(
            "wrong-type: {}",
            outcome(d.report(&[field("level", "high")]))
        );
        info!("unknown: {}", outcome(d.report(&[field("colour", "red")])));
        info!(
            "not-finite: {}",
            outcome(d.report(&[field("level", f64::NAN)]))
        );
        // One bad attribute spoils the whole report: `level` must not be stored.
        info!(
            "mixed: {}",
            outcome(d.report(&[field("level", 10.0), field("enabled", Value::Integer(1))]))
        );
        info!(
            "series-field: {}",
            outcome(d.record("levels", None, &[field("depth", 1.0)]))
        );
        info!(
            "series-unknown: {}",
            outcome(d.record("nope", None, &[field("level", 1.0)]))
        );
        info!(
            "alert-unknown: {}",
            outcome(d.alert("meltdown", Severity::Critical, &[]))
        );
        // A batch is all or nothing too, and its error names the device.
        info!(
            "batch-mixed: {}",
            outcome(report_all(&[
                (&d, vec![field("level", 10.0)]),
                (&d, vec![field("level", 250.0)]),
            ]))
        );
        // So is a batch of points: its error names the refused point, and the
        // valid first point is not stored.
        info!(
            "record-batch-mixed: {}",
            outcome(d.record_batch(
                "levels",
                &[
                    Point {
                        at: None,
                        values: vec![field("level", 1.0)],
                    },
                    Point {
                        at: None,
                        values: vec![field("level", 101.0)],
                    },
                ],
            ))
        );
        let too_many: Vec<_> = (0..1001)
            .map(|_| (&d, vec![field("level", 10.0)]))
            .collect();
        info!("batch-too-many: {}", outcome(report_all(&too_many)));
        info!(
            "batch-valid: {}",
            outcome(report_all(&[
                (&d, vec![field("level", 42.0)]),
                (&d, vec![field("level", 42.0)]),
            ]))
        );
        info!("valid: {}", outcome(d.report(&[field("level", 42.0)])));
    }
}

wasmgate_guest::app!(InvalidReport);

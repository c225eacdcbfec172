//! Test guest: on every tick, calls one host function in a tight loop for
//! the whole call (until the host's deadline or a refusal stops it), and
//! logs how far it got. `kind` is `record`, `report`, `log`, `storage`,
//! `alert`, `register` (a new hardware id each call; the app's config
//! must give it a model named `flood`) or `register-big` (the same, each
//! registration as large as allowed).

use wasmgate_guest::{
    App, Config, Level, Severity, Timestamp, field, info, log, register, storage, this_device,
};

struct Flood {
    kind: String,
    calls: u64,
}

impl App for Flood {
    fn init(config: Config, _previous: Option<Vec<u8>>) -> Result<Self, String> {
        Ok(Flood {
            kind: config.get("kind").unwrap_or("log").to_string(),
            calls: 0,
        })
    }

    fn on_tick(&mut self, _now: Timestamp) {
        let device = this_device();
        let mut refused = None;
        for i in 0..u64::MAX {
            let result = match self.kind.as_str() {
                "record" => device.record("flood", None, &[field("n", i as i64)]),
                "report" => device.report(&[field("n", i as i64)]),
                "storage" => storage::set(&format!("k{}", i % 1000), b"0123456789"),
                "alert" => device.alert("flooded", Severity::Info, &[field("n", i as i64)]),
                "register" => register(&format!("hw-{}", self.calls), "flood", &[]).map(drop),
                // As large as a registration may be: a 200-byte hardware
                // id and 32 metadata entries of 256 bytes.
                "register-big" => {
                    let metadata: Vec<(String, String)> = (0..32)
                        .map(|k| (format!("key-{k}"), "m".repeat(256)))
                        .collect();
                    register(&format!("{:0>200}", self.calls), "flood", &metadata).map(drop)
                }
                _ => {
                    log(Level::Info, &format!("flood line {i}"));
                    Ok(())
                }
            };
            self.calls += 1;
            if let Err(e) = result {
                refused = Some(format!("{}: {}", e.kind(), e.message()));
                break;
            }
        }
        info!(
            "flood {} stopped after {} calls: {refused:?}",
            self.kind, self.calls
        );
    }
}

wasmgate_guest::app!(Flood);

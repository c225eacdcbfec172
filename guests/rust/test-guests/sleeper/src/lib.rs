//! Test guest: on its first tick it sleeps (90 s unless `sleep_s` says
//! otherwise) through WASI clocks. No wasm runs while it waits in that host
//! call, so the epoch deadline never fires: the host must bound the call's
//! wall time itself.

use std::time::Duration;
use wasmgate_guest::{App, Config, Timestamp, info};

struct Sleeper {
    sleep: Duration,
}

impl App for Sleeper {
    fn init(config: Config, _previous: Option<Vec<u8>>) -> Result<Self, String> {
        let seconds: u64 = config
            .get("sleep_s")
            .and_then(|v| v.parse().ok())
            .unwrap_or(90);
        info!("sleeper started, sleeping {seconds} s on the first tick");
        Ok(Sleeper {
            sleep: Duration::from_secs(seconds),
        })
    }

    fn on_tick(&mut self, _now: Timestamp) {
        std::thread::sleep(self.sleep);
        info!("sleeper woke up");
    }
}

wasmgate_guest::app!(Sleeper);

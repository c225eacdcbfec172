//! Test guest: ticks normally `healthy_ticks` times (default 0), then panics
//! on every tick. The host must restart it with backoff, then quarantine it.

use wasmgate_guest::{App, Config, Timestamp, info};

struct TrapOnTick {
    healthy_ticks: u64,
    ticks: u64,
}

impl App for TrapOnTick {
    fn init(config: Config, _previous: Option<Vec<u8>>) -> Result<Self, String> {
        info!("trap-on-tick started");
        Ok(TrapOnTick {
            healthy_ticks: config.parse_or("healthy_ticks", 0)?,
            ticks: 0,
        })
    }

    fn on_tick(&mut self, _now: Timestamp) {
        self.ticks += 1;
        if self.ticks > self.healthy_ticks {
            panic!("boom on tick {}", self.ticks);
        }
    }
}

wasmgate_guest::app!(TrapOnTick);

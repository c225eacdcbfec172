//! Test guest: its first tick never returns. The host's per-call deadline
//! must interrupt it.

use wasmgate_guest::{App, Config, Timestamp, info};

struct LoopForever;

impl App for LoopForever {
    fn init(_config: Config, _previous: Option<Vec<u8>>) -> Result<Self, String> {
        info!("loop-forever started");
        Ok(LoopForever)
    }

    fn on_tick(&mut self, _now: Timestamp) {
        let mut x: u64 = 0;
        loop {
            x = std::hint::black_box(x.wrapping_add(1));
        }
    }
}

wasmgate_guest::app!(LoopForever);

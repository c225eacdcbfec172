//! Test guest: allocates 1 MiB blocks and keeps them until the host's memory
//! limit stops it.

use wasmgate_guest::{App, Config, Timestamp, info};

struct MemoryBomb {
    hoard: Vec<Vec<u8>>,
}

impl App for MemoryBomb {
    fn init(_config: Config, _previous: Option<Vec<u8>>) -> Result<Self, String> {
        info!("memory-bomb started");
        Ok(MemoryBomb { hoard: Vec::new() })
    }

    fn on_tick(&mut self, _now: Timestamp) {
        loop {
            // Touch every page so the allocation is real.
            self.hoard.push(vec![0xa5; 1 << 20]);
            if self.hoard.len().is_multiple_of(16) {
                info!("holding {} MiB", self.hoard.len());
            }
        }
    }
}

wasmgate_guest::app!(MemoryBomb);

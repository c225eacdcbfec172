//! Test guest: opens a file of its own 300 times a tick and keeps every
//! handle, to use up the host's file descriptors. The host must cap what one
//! app holds.

use wasmgate_guest::{App, Config, Timestamp, info};

struct FdHoarder {
    held: Vec<std::fs::File>,
}

impl App for FdHoarder {
    fn init(_config: Config, _previous: Option<Vec<u8>>) -> Result<Self, String> {
        std::fs::write("/hoard.txt", b"mine").map_err(|e| e.to_string())?;
        info!("fd-hoarder started");
        Ok(FdHoarder { held: Vec::new() })
    }

    fn on_tick(&mut self, _now: Timestamp) {
        for _ in 0..300 {
            match std::fs::File::open("/hoard.txt") {
                Ok(file) => self.held.push(file),
                Err(e) => {
                    info!("open refused after {} handles: {e}", self.held.len());
                    return;
                }
            }
        }
        info!("holding {} handles", self.held.len());
    }
}

wasmgate_guest::app!(FdHoarder);
